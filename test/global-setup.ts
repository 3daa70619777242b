import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildCli } from '../scripts/bundle.ts';
import { sweepLeftovers, TESTBED_MARKER } from '../testbed/orthanc.ts';

/**
 * The CLI is built first, so that the tests that run bin/orthanc-forwarder run the bundle that
 * ships (or, for a source edited during the run, the sources: see bin/orthanc-forwarder.mjs).
 *
 * One folder for every server this test run starts, so that teardown can find and kill any
 * Orthanc a crashed worker left behind, and delete all their storage.
 */
export default async function setup(): Promise<() => void> {
  await buildCli();
  const root = mkdtempSync(join(tmpdir(), `${TESTBED_MARKER}-run-`));
  process.env.ORTHANC_TESTBED_ROOT = root;
  return () => {
    const killed = sweepLeftovers(root);
    if (killed > 0) console.warn(`killed ${killed} Orthanc process(es) left behind by a test`);
    rmSync(root, { recursive: true, force: true });
  };
}
