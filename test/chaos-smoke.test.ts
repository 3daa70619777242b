/**
 * The chaos runner in CI, short: fixed seeds and a few runs, each a random fault against real
 * Orthancs followed by recovery and a check that nothing was lost (scripts/chaos/runner.ts).
 * Seed 7's runs 2 and 3 are partial studies under a filter, with refusals (under `unrouted`
 * `delete` and `keep`) and a late report, run 2's moves cut by a deadline too: each kind of
 * scenario runs in CI. Seed 11's run 29 is a partial study under `trigger: "StableSeries"` with
 * `unrouted: "delete"`, which lost its report series while a series was routed on its own.
 */
import { describe, expect, it } from 'vitest';
import { type ChaosSummary, runChaos } from '../scripts/chaos/runner.ts';

const play = async (
  seed: number,
  first: number,
  runs: number,
): Promise<{ summary: ChaosSummary; context: string }> => {
  const lines: string[] = [];
  const summary = await runChaos({
    seed,
    first,
    runs,
    maxSeconds: 3_600,
    onProgress: (line) => lines.push(line),
  });
  const context = lines.join('\n');
  expect(summary.runs, context).toBe(runs);
  expect(summary.errors, context).toBe(0);
  expect(summary.lost, context).toBe(0);
  expect(summary.incomplete, context).toBe(0);
  expect(summary.deadLettered, context).toBe(0);
  expect(summary.instancesChecked).toBeGreaterThan(0);
  // The partial kind ran, and did what it is there for: a refusal kept.
  expect(summary.partialRuns, context).toBeGreaterThan(0);
  expect(summary.refused, context).toBeGreaterThan(0);
  return { summary, context };
};

describe('chaos runner', () => {
  it('plays 4 random faults with a fixed seed and loses nothing', async () => {
    const { summary, context } = await play(7, 1, 4);
    expect(summary.deadlineRuns, context).toBeGreaterThan(0);
    expect(summary.deadlineCuts, context).toBeGreaterThan(0);
  });

  it('replays a partial study under StableSeries with unrouted delete, and loses nothing', async () => {
    const { context } = await play(11, 29, 1);
    expect(context).toContain('StableSeries');
    expect(context).toContain('unrouted delete');
  });
});
