/**
 * `run`'s progress lines: when they are shown (a function of the flags and of whether stdout is a
 * terminal, since a test gets no terminal), what a line says, how they are redrawn in place and
 * cleared around the log lines; and, with the real CLI against real Orthancs, that `--progress`
 * draws them on stderr while the JSON logs on stdout stay as they were, and that a pipe does not
 * get them by default.
 */
import { writeFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { formatSize } from '../bin/format.ts';
import { ProgressLines, progressLine, showProgress } from '../bin/progress-line.ts';
import { parseConfig } from '../lambdas/core/config.ts';
import type { Tally } from '../lambdas/core/ports.ts';
import { HOUR_MS } from '../lambdas/core/progress.ts';
import { NO_TALLY } from '../lambdas/core/totals.ts';
import { openState } from '../lambdas/local/sqlite-state.ts';
import { generateStudies } from '../testbed/dicom-generator.ts';
import { cli, configFor, logLines, shape, startServers, upload, useTestbed } from './support/harness.ts';
import { outcome } from './support/port-contract.ts';

const ESC = '\u001b[';
const GB = 1024 ** 3;
const tally = (studies: number, instances: number, bytes: number): Tally => ({ studies, instances, bytes });

/** A stream that keeps what is written to it. */
const stream = () => {
  const chunks: string[] = [];
  const write = (chunk: string | Uint8Array) => {
    chunks.push(String(chunk));
    return true;
  };
  return { chunks, stream: { write } as unknown as NodeJS.WriteStream };
};

describe('progress lines', () => {
  const { fleet, workPath } = useTestbed('progress');

  it('are shown as --progress or --no-progress says, else only when stdout is a terminal', () => {
    expect(showProgress(undefined, true)).toBe(true);
    expect(showProgress(undefined, false)).toBe(false);
    expect(showProgress(undefined, undefined)).toBe(false);
    expect(showProgress(true, false)).toBe(true);
    expect(showProgress(true, undefined)).toBe(true);
    expect(showProgress(false, true)).toBe(false);
  });

  it('say per source what this run moved, what is left, the rate and the estimated time', () => {
    const now = Date.parse('2025-06-04T12:00:00Z');
    const progress = {
      left: tally(340, 3_400, 45 * GB),
      lastHour: tally(2, 20, 2 * GB),
      lastDay: tally(2, 20, 2 * GB),
      rate: { bytesPerHour: 2 * GB, instancesPerHour: 20, over: 'hour' as const },
      finishAt: now + 22 * HOUR_MS + 30 * 60_000,
    };
    expect(progressLine('site-a', tally(12, 120, 1.2 * GB), progress, now)).toBe(
      'site-a: moved 12 studies (1.2 GB), left 340 (45 GB), 2.0 GB/h, ETA in 22 h 30 min',
    );
    expect(
      progressLine('site-b', NO_TALLY, { left: undefined, lastHour: NO_TALLY, lastDay: NO_TALLY }, now),
    ).toBe('site-b: moved 0 studies (0 B), left ?, -, ETA ?');
  });

  it('are redrawn in place, cleared before a log line and at the end, from the source and the ledger', async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    const set = generateStudies(shape('progress-lines', { patients: 1 }));
    await upload(source, set.instances);
    const held = tally(1, set.instances.length, set.totalBytes);
    const config = parseConfig(
      // A second source nobody answers for: its line says `?`.
      configFor([{ id: 'site-a', server: source }], destination, {
        sources: [
          { id: 'site-a', url: source.url, username: source.username, password: source.password },
          { id: 'site-b', url: 'http://127.0.0.1:9', username: 'orthanc', password: 'orthanc' },
        ],
      }),
    );
    const state = openState(':memory:');
    const moved = outcome({ sourceId: 'site-a', deleted: 4, deletedBytes: 4_000, finishedAt: Date.now() });
    await state.ledger.record(moved);
    const out = stream();
    const log = stream();
    const lines = new ProgressLines({
      config,
      ledger: state.ledger,
      out: out.stream,
      logs: [log.stream, out.stream],
      // Drawn when the test says: no timer draws meanwhile.
      every: { redrawMs: 3_600_000, refreshMs: 3_600_000 },
    });
    try {
      await lines.start();
      expect(out.chunks).toHaveLength(1);
      lines.onOutcome(moved);
      lines.redraw();
      const [site, other] = (out.chunks.at(-1) ?? '').split('\n');
      // Up over the two lines on screen, then each line cleared and written anew.
      expect(site?.startsWith(`${ESC}1A\r${ESC}2Ksite-a: moved 1 studies (3.9 KB), `), site).toBe(true);
      expect(site).toContain(`left ${held.studies} (${formatSize(held.bytes)})`);
      expect(site).toMatch(/, \d+(\.\d)? KB\/h, ETA in /);
      expect(other).toBe(`${ESC}2Ksite-b: moved 0 studies (0 B), left ?, -, ETA ?`);

      log.stream.write('{"level":"INFO","message":"source polled"}\n');
      expect(out.chunks.at(-1)).toBe(`${ESC}1A\r${ESC}J`);
      expect(log.chunks).toEqual(['{"level":"INFO","message":"source polled"}\n']);
      // The lines are off the screen: the next redraw starts where the log line ended.
      lines.redraw();
      expect(out.chunks.at(-1)?.startsWith(`\r${ESC}2Ksite-a: `)).toBe(true);

      lines.stop();
      expect(out.chunks.at(-1)).toBe(`${ESC}1A\r${ESC}J`);
      const written = out.chunks.length;
      log.stream.write('after\n');
      lines.redraw();
      expect(out.chunks).toHaveLength(written);
    } finally {
      lines.stop();
      state.close();
    }
  });

  it('with --progress, run draws them on stderr and its JSON logs stay as they were; a pipe does not get them by default', async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    await upload(source, generateStudies(shape('progress-run')).instances);
    const configPath = workPath('forwarder.json');
    writeFileSync(configPath, JSON.stringify(configFor([{ id: 'site-a', server: source }], destination)));

    const shown = await cli(['run', '--config', configPath, '--until-idle', '--progress']);
    expect(shown.code, shown.stderr).toBe(0);
    // Each line drawn anew after the control sequence that clears it.
    const drawn = shown.stderr.split(`${ESC}2K`).slice(1);
    expect(drawn.length).toBeGreaterThan(0);
    for (const line of drawn) expect(line).toMatch(/^site-a: moved \d+ studies \(.+\), left .+, ETA /);
    // Cleared at the end: nothing is left of the lines.
    expect(shown.stderr.endsWith(`\r${ESC}J`)).toBe(true);
    const stdout = shown.stdout.split('\n').filter((line) => line !== '');
    expect(stdout.length).toBeGreaterThan(0);
    expect(logLines(shown.stdout)).toHaveLength(stdout.length);
    expect(logLines(shown.stdout).at(-1)).toMatchObject({ message: 'run finished', studiesMoved: 2 });

    await upload(source, generateStudies(shape('progress-run-2')).instances);
    const piped = await cli(['run', '--config', configPath, '--until-idle']);
    expect(piped.code, piped.stderr).toBe(0);
    expect(logLines(piped.stdout).at(-1)).toMatchObject({ message: 'run finished', studiesMoved: 2 });
    expect(piped.stderr).not.toContain('site-a: moved');
    expect(piped.stderr).not.toContain(ESC);
  });
});
