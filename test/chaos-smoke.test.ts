/**
 * The chaos runner in CI, short: a fixed seed and a few runs, each a random fault against real
 * Orthancs followed by recovery and a check that nothing was lost (scripts/chaos/runner.ts).
 * Seed 7's runs 2 and 3 are partial studies under a filter, with refusals (under `unrouted`
 * `delete` and `keep`) and a late report, run 2's moves cut by a deadline too: each kind of
 * scenario runs in CI.
 */
import { describe, expect, it } from 'vitest';
import { runChaos } from '../scripts/chaos/runner.ts';

const RUNS = 4;

describe('chaos runner', () => {
  it(`plays ${RUNS} random faults with a fixed seed and loses nothing`, async () => {
    const lines: string[] = [];
    const summary = await runChaos({
      seed: 7,
      runs: RUNS,
      maxSeconds: 3_600,
      onProgress: (line) => lines.push(line),
    });
    const context = lines.join('\n');
    expect(summary.runs, context).toBe(RUNS);
    expect(summary.errors, context).toBe(0);
    expect(summary.lost, context).toBe(0);
    expect(summary.incomplete, context).toBe(0);
    expect(summary.deadLettered, context).toBe(0);
    expect(summary.instancesChecked).toBeGreaterThan(0);
    // The kinds ran, and did what they are there for: a refusal kept, attempts cut.
    expect(summary.partialRuns, context).toBeGreaterThan(0);
    expect(summary.refused, context).toBeGreaterThan(0);
    expect(summary.deadlineRuns, context).toBeGreaterThan(0);
    expect(summary.deadlineCuts, context).toBeGreaterThan(0);
  });
});
