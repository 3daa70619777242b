import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sweepLeftovers, TESTBED_MARKER } from '../testbed/orthanc.ts';

/**
 * One folder for every server this test run starts, so that teardown can find and kill any
 * Orthanc a crashed worker left behind, and delete all their storage.
 */
export default function setup(): () => void {
  const root = mkdtempSync(join(tmpdir(), `${TESTBED_MARKER}-run-`));
  process.env.ORTHANC_TESTBED_ROOT = root;
  return () => {
    const killed = sweepLeftovers(root);
    if (killed > 0) console.warn(`killed ${killed} Orthanc process(es) left behind by a test`);
    rmSync(root, { recursive: true, force: true });
  };
}
