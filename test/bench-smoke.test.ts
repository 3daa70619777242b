/**
 * The benchmark's measurement functions on a tiny data set: the figures have the documented
 * shape and every instance moved. No timing is asserted: the machine's load decides those.
 */
import { describe, expect, it } from 'vitest';
import { type BenchOptions, DEFAULT_OPTIONS } from '../scripts/bench/options.ts';
import { formatReport } from '../scripts/bench/report.ts';
import { runBenchmark } from '../scripts/bench/run.ts';

const TINY: BenchOptions = {
  ...DEFAULT_OPTIONS,
  main: { name: 'default', instances: 20, sizeKb: 16, studies: 2, seriesPerStudy: 2 },
  small: undefined,
  repetitions: 1,
  ceilingConcurrency: [2],
  // About 5 MB: 16 instances of 512 KiB in one study, enough to exercise the memory run.
  bigGb: 0.005,
};

const expectFigures = (figures: unknown) => {
  expect(figures).toMatchObject({
    instancesPerSecond: expect.any(Number),
    mbPerSecond: expect.any(Number),
    peakRssMb: expect.any(Number),
    median: { instancesPerSecond: expect.any(Number), mbPerSecond: expect.any(Number) },
    min: { instancesPerSecond: expect.any(Number), mbPerSecond: expect.any(Number) },
    max: { instancesPerSecond: expect.any(Number), mbPerSecond: expect.any(Number) },
    cpuSecondsPer1000: {
      ours: expect.any(Number),
      source: expect.any(Number),
      destination: expect.any(Number),
    },
    allMoved: true,
  });
};

describe('benchmark', () => {
  it('measures the ceiling, the push and the relay on a tiny set, and every instance moves', async () => {
    const result = JSON.parse(JSON.stringify(await runBenchmark(TINY)));

    for (const method of ['ceiling', 'push', 'relay']) {
      expectFigures(result[method]);
      expect(result[method].trials).toHaveLength(1);
      expect(result[method].trials[0].destinationInstances).toBe(20);
      expect(result[method].peakRssMb).toBeGreaterThan(0);
    }
    // Push and relay move: nothing is left at the source.
    expect(result.push.trials[0].sourceInstancesLeft).toBe(0);
    expect(result.relay.trials[0].sourceInstancesLeft).toBe(0);
    expect(result.relay.trials[0].counts).toMatchObject({ studies: 2, instances: 20, deadLettered: 0 });
    expect(result.ceiling.trials[0].counts).toMatchObject({ success: 20, alreadyStored: 0, failed: 0 });
    expect(result.ratios).toEqual({ relayVsPush: expect.any(Number), relayVsCeiling: expect.any(Number) });

    expect(result.bigStudy).toMatchObject({
      bytes: expect.any(Number),
      peakRssMb: expect.any(Number),
      instances: 16,
      allMoved: true,
    });
    expect(result.bigStudy.bytes).toBeGreaterThan(5e6);

    // The memory run moves it once per variant: from the TypeScript sources, then from the bundle.
    expect(result.bigStudy.runs.map((run: { runtime: string }) => run.runtime)).toEqual(['ts', 'bundle']);
    for (const run of result.bigStudy.runs)
      expect(run).toMatchObject({ allMoved: true, peakRssMb: expect.any(Number) });

    expect(result.targets.map((target: { name: string }) => target.name)).toEqual([
      'relayVsPush',
      'relayVsCeiling',
      'smallRelayVsPush',
      'bigStudyPeakRss',
      'bigStudyPeakRss[bundle:--optimize-for-size]',
      'relayCpuPer1000',
    ]);
    expect(formatReport(result, 1)).toContain('relay/push');
  });
});
