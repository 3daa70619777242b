import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openState } from '../lambdas/local/sqlite-state.ts';
import { generateStudies } from '../testbed/dicom-generator.ts';
import { OrthancFleet } from '../testbed/orthanc.ts';
import {
  BIN,
  configFor,
  instanceCount,
  killChildren,
  logLines,
  shape,
  until,
  upload,
} from './support/harness.ts';

describe('run under SIGTERM', () => {
  const fleet = new OrthancFleet();
  const work = mkdtempSync(join(tmpdir(), 'orthanc-forwarder-signals-'));
  afterAll(async () => {
    killChildren();
    await fleet.destroyAll();
    rmSync(work, { recursive: true, force: true });
  });

  it('stops cleanly: exits 0, leaves nothing in flight and releases the state file', async () => {
    const [destination, source] = await Promise.all([
      fleet.start({ name: 'destination' }),
      fleet.start({ name: 'site-a', stableAge: 1 }),
    ]);
    if (destination === undefined || source === undefined) throw new Error('no servers');
    const set = generateStudies(shape('signals'));
    await upload(source, set.instances);
    const configPath = join(work, 'forwarder.json');
    const statePath = join(work, 'state.sqlite');
    writeFileSync(configPath, JSON.stringify(configFor([{ id: 'site-a', server: source }], destination)));

    const child = spawn(BIN, ['run', '--config', configPath, '--state', statePath], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk.toString('utf8');
    });
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString('utf8');
    });
    try {
      await until(async () => (await instanceCount(source)) === 0);
      const exited = once(child, 'close');
      child.kill('SIGTERM');
      const [code] = await exited;
      expect(code).toBe(0);
    } finally {
      child.kill('SIGKILL');
    }
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
