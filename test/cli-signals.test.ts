/**
 * `run` stopped by SIGTERM, as a service manager stops it: the CLI (bin/orthanc-forwarder, the
 * shipped bundle) finishes or returns what it holds, exits 0, and frees the state file.
 */
import { writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { describe, expect, it } from 'vitest';
import { openState } from '../lambdas/local/sqlite-state.ts';
import { generateStudies } from '../testbed/dicom-generator.ts';
import {
  BIN,
  cli,
  configFor,
  instanceCount,
  logLines,
  shape,
  startServers,
  until,
  upload,
  useTestbed,
} from './support/harness.ts';
import { startProcess } from './support/processes.ts';

describe('run under SIGTERM', () => {
  const { fleet, workPath } = useTestbed('signals');

  it('a second run on a state file in use says at once who holds it, without a stack trace', async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    const configPath = workPath('forwarder.json');
    const statePath = workPath('state.sqlite');
    writeFileSync(configPath, JSON.stringify(configFor([{ id: 'site-a', server: source }], destination)));
    const first = startProcess(BIN, ['run', '--config', configPath, '--state', statePath]);
    const held = () => {
      const state = openState(statePath);
      try {
        return state.ledger.leaseHolder('local-runner') !== undefined;
      } finally {
        state.close();
      }
    };
    try {
      await until(async () => held());
      const second = await cli(['run', '--config', configPath, '--state', statePath, '--until-idle']);
      expect(second.code).toBe(1);
      expect(second.stderr).toMatch(
        new RegExp(
          `^orthanc-forwarder: another orthanc-forwarder run \\(pid \\d+ on ${hostname()}\\) is using this state file`,
        ),
      );
      expect(second.stderr).not.toMatch(/\n\s+at /);
    } finally {
      first.child.kill('SIGTERM');
      await first.done;
    }
  });

  it('stops cleanly: exits 0, leaves nothing in flight and releases the state file', async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    const set = generateStudies(shape('signals'));
    await upload(source, set.instances);
    const configPath = workPath('forwarder.json');
    const statePath = workPath('state.sqlite');
    writeFileSync(configPath, JSON.stringify(configFor([{ id: 'site-a', server: source }], destination)));

    const run = startProcess(BIN, ['run', '--config', configPath, '--state', statePath]);
    await until(async () => (await instanceCount(source)) === 0);
    run.child.kill('SIGTERM');
    const { code, stdout, stderr } = await run.done;
    expect(code).toBe(0);
    expect(stderr).toContain('SIGTERM: finishing the work in flight');
    const finished = [...logLines(stdout), ...logLines(stderr)].find(
      (line) => line.message === 'run finished',
    );
    expect(finished).toMatchObject({ studiesMoved: 2 });
    expect(await instanceCount(destination)).toBe(set.instances.length);

    // The next run takes the state file at once: the lease was released, nothing is in flight.
    const state = openState(statePath);
    try {
      expect(await state.queue.stats()).toEqual({ waiting: 0, inFlight: 0, deadLetters: 0 });
      expect(await state.ledger.acquireLease('local-runner', 'next-run', 15_000, Date.now())).toBe(true);
    } finally {
      state.close();
    }
  });
});
