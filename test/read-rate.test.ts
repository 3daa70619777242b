/**
 * A source's read rate cap (`maxReadMBps`): one bucket shared by every move of the source in a
 * process. The arithmetic on a clock the test turns, then the cap measured on a real Orthanc
 * serving a few hundred MB to four readers at once: bytes over time, compared to the cap as a
 * ratio.
 */
import { describe, expect, it } from 'vitest';
import { runBounded } from '../lambdas/core/concurrency.ts';
import { parseConfig } from '../lambdas/core/config.ts';
import { buildEngine } from '../lambdas/core/engine.ts';
import { ReadRate } from '../lambdas/core/read-rate.ts';
import { openState } from '../lambdas/local/sqlite-state.ts';
import { generateStudies } from '../testbed/dicom-generator.ts';
import { captureLog, configFor, startServers, upload, useTestbed } from './support/harness.ts';

const MB = 1_000_000;

describe('read rate', () => {
  it('passes a tenth of a second’s worth at once, then one chunk per its share of a second, whoever asks', () => {
    let now = 0;
    const rate = new ReadRate(10, () => now); // 10 MB/s: 1 MB per 100 ms
    expect(rate.take(MB)).toBe(0);
    expect(rate.take(MB)).toBe(100);
    expect(rate.take(MB / 2)).toBe(150);
    // Time passes as the waits said: each next chunk waits its own share only.
    now = 150;
    expect(rate.take(MB / 2)).toBe(50);
    // Idle for long saves up no more than the burst.
    now = 10_000;
    expect(rate.take(MB)).toBe(0);
    expect(rate.take(MB)).toBe(100);
  });

  describe('on a real Orthanc', () => {
    const { fleet } = useTestbed('read-rate');

    it('holds the cap within 10 % for every read of the source together', async () => {
      const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
      // 60 instances of 4 MB: about 250 MB.
      const set = generateStudies({
        patients: 1,
        studiesPerPatient: 2,
        seriesPerStudy: 3,
        instancesPerSeries: 10,
        pixelBytes: 4 * 1024 * 1024,
        seed: 'read-rate',
      });
      await upload(source, set.instances);
      const cap = 40;
      const config = parseConfig(
        configFor([{ id: 'site-a', server: source }], destination, { maxReadMBps: cap }),
      );
      const state = openState(':memory:');
      const engine = buildEngine(config, { ledger: state.ledger, log: captureLog().log, owner: 'test' });
      state.close();
      const client = engine.sources.get('site-a');
      if (client === undefined) throw new Error('no site-a');
      const studies = await source.rest<string[]>('GET', '/studies');
      const instances = (await Promise.all(studies.map((id) => client.studyInstances(id)))).flatMap(
        (listed) => listed ?? [],
      );
      expect(instances).toHaveLength(60);

      // Bytes as they arrive, at four readers at once, as four moves of the source would read.
      const arrivals: { at: number; bytes: number }[] = [];
      let total = 0;
      await runBounded(instances, 4, async (instance) => {
        for await (const chunk of await client.openInstance(instance.id)) {
          total += (chunk as Buffer).length;
          arrivals.push({ at: performance.now(), bytes: total });
        }
      });
      expect(total).toBe(instances.reduce((sum, instance) => sum + instance.fileSize, 0));
      expect(total).toBeGreaterThan(240 * MB);

      const first = arrivals[0] as { at: number; bytes: number };
      const last = arrivals.at(-1) as { at: number; bytes: number };
      const achieved = (last.bytes - first.bytes) / MB / ((last.at - first.at) / 1000);
      expect(achieved / cap).toBeGreaterThan(0.9);
      expect(achieved / cap).toBeLessThan(1.1);
      // Over any two seconds too, not just on average.
      for (const from of arrivals.filter((arrival) => arrival.at <= last.at - 2_000)) {
        const until = arrivals.findLast((arrival) => arrival.at <= from.at + 2_000) ?? from;
        expect((until.bytes - from.bytes) / MB / 2 / cap).toBeLessThan(1.1);
      }
    });
  });
});
