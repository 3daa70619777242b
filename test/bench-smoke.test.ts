/**
 * The benchmark's measurement functions on a tiny data set: the figures have the documented
 * shape, every instance moved (at every verification mode too), every study was queued once, and
 * the AWS requests are counted. No timing is asserted: the machine's load decides those.
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
  verifyRepetitions: 1,
  // About 5 MB: 16 instances of 512 KiB in one study, enough to exercise the memory run.
  bigGb: 0.005,
  // A feed of 60 changes (6 studies of 4 instances); the forwarder then moves 3 of its studies.
  poller: { studies: 6, instancesPerStudy: 4, forwardStudies: 3 },
  // One short link: push and the relay both ways across it, once each.
  links: [{ rttMs: 2, mbit: 400 }],
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
  it('measures the ceiling, the push and the relay on a tiny set, and over a link, and every instance moves; then the poller on the emulators', async () => {
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

    // The relay once more, capped at half its speed: everything moves, the ratio is reported.
    expect(result.rateCap).toMatchObject({
      capMBps: expect.any(Number),
      achievedMBps: expect.any(Number),
      ratio: expect.any(Number),
      sendingMBps: expect.any(Number),
      sendingRatio: expect.any(Number),
      allMoved: true,
    });
    expect(result.rateCap.capMBps).toBeCloseTo(result.relay.mbPerSecond / 2, 0);

    expect(result.bigStudy).toMatchObject({
      bytes: expect.any(Number),
      peakRssMb: expect.any(Number),
      instances: 16,
      allMoved: true,
    });
    expect(result.bigStudy.bytes).toBeGreaterThan(5e6);

    // The memory run moves it once per variant: as the wrapper runs it (the bundle), then from
    // the TypeScript sources (its fallback).
    expect(result.bigStudy.runs.map((run: { runtime: string }) => run.runtime)).toEqual(['bundle', 'ts']);
    for (const run of result.bigStudy.runs)
      expect(run).toMatchObject({ allMoved: true, peakRssMb: expect.any(Number) });

    // Each verification mode moves the set, and its throughput is set against qido's.
    expect(Object.keys(result.verify)).toEqual([
      'stow',
      'qido',
      'identity',
      'checksum-wado',
      'checksum-orthanc',
    ]);
    for (const mode of Object.values(result.verify) as { trials: { counts: unknown }[] }[]) {
      expectFigures(mode);
      expect(mode).toMatchObject({
        studiesPerSecond: expect.any(Number),
        ratioToQido: expect.any(Number),
        phasesMs: { sendMs: expect.any(Number), verifyMs: expect.any(Number), deleteMs: expect.any(Number) },
      });
      expect(mode.trials).toHaveLength(1);
      expect(mode.trials[0]?.counts).toMatchObject({ studies: 2, instances: 20, deadLettered: 0 });
    }
    expect(result.verify.qido.ratioToQido).toBe(1);
    expect(result.verify['checksum-orthanc'].settings).toMatchObject({
      verify: 'checksum',
      orthancRest: true,
    });

    expect(result.targets.map((target: { name: string }) => target.name)).toEqual([
      'relayVsPush',
      'relayVsCeiling',
      'smallRelayVsPush',
      'bigStudyPeakRss',
      'bigStudyPeakRss[ts:--optimize-for-size]',
      'relayCpuPer1000',
      'identityVsQido',
    ]);

    // The poller run: every study queued once, and the forwarder's AWS requests per study as the
    // README's cost estimate counts them (the source's pause flag read, lease put, conflicts and
    // refused-instances queries, the deletion intents' query, the new intent's put, the audit
    // record of the deletion, outcome transaction, the intent's completion, lease release;
    // receive and delete by the event source mapping).
    expect(result.poller).toMatchObject({
      studies: 6,
      instances: 24,
      changes: 60,
      queued: { messages: 6, distinctStudies: 6, duplicates: 0, missing: 0 },
    });
    expect(result.poller.poller.orthancRequests).toBeGreaterThan(0);
    expect(result.poller.poller.aws['sqs:SendMessageBatch']).toMatchObject({ requests: 1, items: 6 });
    expect(result.poller.forwarder.studies).toBe(3);
    expect(Object.keys(result.poller.forwarder.aws).sort()).toEqual([
      'dynamodb:BatchWriteItem',
      'dynamodb:DeleteItem',
      'dynamodb:GetItem',
      'dynamodb:PutItem',
      'dynamodb:Query',
      'dynamodb:TransactWriteItems',
      'dynamodb:UpdateItem',
    ]);
    // The audit record: one batch write of one item (1 WRU) per study that deletes.
    expect(result.poller.forwarder.aws['dynamodb:BatchWriteItem']).toMatchObject({ requests: 3, items: 3 });
    expect(result.poller.forwarder.perStudy).toMatchObject({
      dynamodbRequests: 10,
      writeRequestUnits: 9,
      sqsRequests: 2,
    });

    // Over the link: push, and the relay with the link at the source and at the destination, all
    // move the set; each figure is set against the link's 50 MB/s.
    expect(result.link['2:400']).toMatchObject({ rttMs: 2, mbit: 400, capacityMBps: 50, repetitions: 1 });
    const [overLink] = result.link['2:400'].sets;
    expect(overLink.set).toMatchObject({ name: 'default', instances: 20 });
    for (const method of ['push', 'relaySourceLink', 'relayDestinationLink']) {
      expectFigures(overLink[method]);
      expect(overLink[method].linkFraction).toBeCloseTo(overLink[method].mbPerSecond / 50, 2);
    }
    // The relay's busy time (its studies' durations summed) per GB, and what Lambda would bill for it.
    for (const method of ['relaySourceLink', 'relayDestinationLink']) {
      const { busySecondsPerGB, lambdaUsdPerGB } = overLink[method];
      expect(busySecondsPerGB).toBeGreaterThan(0);
      expect(lambdaUsdPerGB).toBeCloseTo(busySecondsPerGB * 0.0000133334, 5);
    }
    expect(overLink.push.busySecondsPerGB).toBeUndefined();
    expect(overLink.ratios).toEqual({
      relaySourceLinkVsPush: expect.any(Number),
      relayDestinationLinkVsPush: expect.any(Number),
    });

    const report = formatReport(result, 1);
    expect(report).toContain('relay/push');
    expect(report).toContain('Verification modes on the default set');
    expect(report).toContain('Poller: a feed of 60 changes');
    expect(report).toContain('Over a link of 2 ms round trip and 400 Mbit/s each way');
  });

  it('reads every series from the source three ways, on loopback and across a link (--wado --link)', async () => {
    const result = await runBenchmark({ ...TINY, wado: true, linkOnly: true });
    const points = result.wado ?? [];
    expect(points.map((point) => `${point.link} ${point.mode} x${point.concurrency}`)).toEqual(
      ['loopback', '2:400'].flatMap((link) =>
        ['wado x1', 'instances x1', 'wado x4', 'instances x4', 'ahead x4'].map(
          (variant) => `${link} ${variant}`,
        ),
      ),
    );
    for (const point of points) {
      expect(point.figures.mbPerSecond).toBeGreaterThan(0);
      // One request per series with WADO-RS (4 series), one per instance otherwise (20).
      expect(point.requests).toBe(point.mode === 'wado' ? 4 : 20);
      expect(point.linkFraction === undefined).toBe(point.link === 'loopback');
    }
    // The relay's links were not run: --wado reads across them instead.
    expect(result.link).toBeUndefined();
    expect(formatReport(result, 1)).toContain('2:400, GET, read ahead, 4 at once');
  });
});
