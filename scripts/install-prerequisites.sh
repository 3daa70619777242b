#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks for the tests, the demo and the benchmark:
# Orthanc with its DICOMweb plugin (real servers on loopback), a Java runtime (DynamoDB Local), and
# python3-pydicom for the DICOM files it ships (test/pydicom-corpus.test.ts: real-world files), and
# Chromium, which test/monitoring.test.ts drives headless (playwright-core, never a downloaded browser).
# Run as root, or with sudo available. Safe to run again.
set -euo pipefail

packages=(orthanc orthanc-dicomweb python3-pydicom chromium)
command -v java >/dev/null 2>&1 || packages+=(default-jre-headless)

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "prerequisites: already installed (${packages[*]})"
  exit 0
fi

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "prerequisites: installing ${missing[*]}"
$sudo apt-get update -qq
# The orthanc package would start a system service where one can run: the tests start their own servers.
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
