/**
 * A destination that refuses the forwarder as a whole — a wrong password (401), a URL that is not
 * its DICOMweb root (STOW-RS answers 404), a certificate it cannot verify — pauses the work for
 * it instead of dead-lettering each study (lambdas/core/destination-faults.ts): real Orthancs, a
 * real TLS front, the local runner. The studies wait without using up retry.maxAttempts, nothing
 * leaves the source, the fault is logged once naming the setting to fix, and once it is fixed
 * everything moves.
 */
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../lambdas/core/config.ts';
import { LocalRunner } from '../lambdas/local/local-runner.ts';
import { generateStudies } from '../testbed/dicom-generator.ts';
import type { OrthancServer } from '../testbed/orthanc.ts';
import { TlsFront, useTestPki } from './support/fronts.ts';
import {
  captureLog,
  configFor,
  expectAllAtDestination,
  heldUids,
  instanceCount,
  pollOnce,
  runUntilIdle,
  shape,
  startServers,
  uidsOf,
  untilStudiesStable,
  upload,
  useTestbed,
} from './support/harness.ts';
import { expectNoSecret } from './support/no-leaks.ts';

const PASSWORD = 'destination-password';
const WRONG_PASSWORD = 'not-the-destination-password';
/** Few attempts, short waits: a study that used them up would be dead-lettered within the test. */
const RETRY = { maxAttempts: 2, baseDelayMs: 50, maxDelayMs: 200 };

type RawConfig = Record<string, unknown>;

interface Arranged {
  readonly broken: RawConfig;
  readonly fixed: RawConfig;
}

interface FaultCase {
  readonly name: string;
  readonly fault: 'credentials' | 'root' | 'tls';
  readonly field: string;
  readonly error: RegExp;
  arrange(base: RawConfig, destination: OrthancServer): Promise<Arranged>;
}

const withDestination = (raw: RawConfig, patch: RawConfig): RawConfig => ({
  ...raw,
  destination: { ...(raw.destination as object), ...patch },
});

describe('a destination that refuses the forwarder as a whole', () => {
  const { fleet, closeAfterTest, withState } = useTestbed('destination-faults');
  const pki = useTestPki();

  const CASES: readonly FaultCase[] = [
    {
      name: 'a wrong password (401)',
      fault: 'credentials',
      field: 'destination.password',
      error: /QIDO-RS at \S+ answered 401/,
      arrange: async (base) => ({ broken: withDestination(base, { password: WRONG_PASSWORD }), fixed: base }),
    },
    {
      name: 'a URL that is not its DICOMweb root (STOW-RS answers 404)',
      fault: 'root',
      field: 'destination.url',
      error: /STOW-RS at \S+ answered 404/,
      arrange: async (base, destination) => ({
        broken: withDestination(base, { url: `${destination.url}/dicom-wb` }),
        fixed: base,
      }),
    },
    {
      name: 'a certificate it cannot verify (TLS)',
      fault: 'tls',
      field: 'destination.caFile',
      error: /QIDO-RS at \S+: UNABLE_TO_VERIFY_LEAF_SIGNATURE \(TLS\)/,
      arrange: async (base, destination) => {
        const front = closeAfterTest(await TlsFront.start(destination.url, pki.server));
        const broken = withDestination(base, { url: front.urlFor(destination.dicomWebUrl) });
        return { broken, fixed: withDestination(broken, { caFile: pki.caFile }) };
      },
    },
  ];

  for (const faultCase of CASES) {
    it(`${faultCase.name}: nothing dead-lettered or deleted, logged once naming ${faultCase.field}; fixed, everything moves`, async () => {
      const [destination, source] = await startServers(fleet, ['destination', 'site-a'], {
        password: PASSWORD,
      });
      const set = generateStudies(shape(`destination-${faultCase.fault}`));
      await upload(source, set.instances);
      const base = configFor([{ id: 'site-a', server: source }], destination, { retry: RETRY });
      const { broken, fixed } = await faultCase.arrange(base, destination);
      const config = parseConfig(broken);

      await withState(config, async (state) => {
        // Both studies queued, as the feed queues them once they are stable.
        await untilStudiesStable(source);
        expect((await pollOnce(config, state, captureLog().log)).queued).toBe(2);

        // Each study is tried more often than retry.maxAttempts allows, and waits each time.
        const waits = new Map<string, number>();
        const stop = new AbortController();
        const capture = captureLog((entry) => {
          if (entry.message !== 'work item waits') return;
          const study = String(entry.studyId);
          waits.set(study, (waits.get(study) ?? 0) + 1);
          const tried = [...waits.values()];
          if (tried.length === 2 && tried.every((count) => count > RETRY.maxAttempts)) stop.abort();
        });
        const summary = await new LocalRunner(config, state, capture.log).run({
          untilIdle: false,
          signal: stop.signal,
        });

        expect(summary.deadLettered).toBe(0);
        expect(summary.unavailableDestinations).toEqual(['destination']);
        expect((await state.queue.stats()).deadLetters).toBe(0);
        expect(await heldUids(source)).toEqual(uidsOf(set.instances));
        expect(await instanceCount(destination)).toBe(0);
        // Reported once, naming the setting, not once per study or attempt.
        const reported = capture.entries.filter((entry) =>
          entry.message.startsWith('destination unavailable'),
        );
        expect(reported).toHaveLength(1);
        expect(reported[0]).toMatchObject({
          level: 'error',
          destinationId: 'destination',
          fault: faultCase.fault,
          field: faultCase.field,
        });
        expect(String(reported[0]?.error)).toMatch(faultCase.error);
        const failures = capture.entries.filter(
          (entry) => entry.level !== 'debug' && /work item|destination failed/.test(entry.message),
        );
        expect(failures).toEqual([]);
        expectNoSecret(JSON.stringify(capture.entries), [
          { username: destination.username, password: PASSWORD },
          { username: destination.username, password: WRONG_PASSWORD },
        ]);

        // `--until-idle` does not wait for a fix no run can make: it ends, the studies still queued.
        const idle = await runUntilIdle(config, state, captureLog().log);
        expect(idle.outcomes).toEqual([]);
        expect(idle.summary).toMatchObject({ deadLettered: 0, unavailableDestinations: ['destination'] });
        const { waiting, inFlight, deadLetters } = await state.queue.stats();
        expect({ queued: waiting + inFlight, deadLetters }).toEqual({ queued: 2, deadLetters: 0 });

        // Fixed: the studies that waited move, with no redrive; the fault is over.
        const healed = captureLog();
        const after = await runUntilIdle(parseConfig(fixed), state, healed.log);
        expect(after.summary).toMatchObject({ deadLettered: 0, unavailableDestinations: [] });
        expect(after.outcomes.map((outcome) => outcome.result)).toEqual(['moved', 'moved']);
        expect(await instanceCount(source)).toBe(0);
        await expectAllAtDestination(destination, set.instances);
        expect(healed.entries.filter((entry) => entry.message.startsWith('destination unavailable'))).toEqual(
          [],
        );
      });
    });
  }

  it('with two destinations, one refusing: the other gets every study, the source keeps it until both hold it', async () => {
    const [archive, cloud, source] = await startServers(fleet, ['archive', 'cloud', 'site-a'], {
      password: PASSWORD,
    });
    const set = generateStudies(shape('destination-one-of-two'));
    await upload(source, set.instances);
    const { destination: _one, ...base } = configFor([{ id: 'site-a', server: source }], archive, {
      retry: RETRY,
    });
    const entry = (id: string, server: OrthancServer, password: string) => ({
      id,
      url: server.dicomWebUrl,
      username: server.username,
      password,
    });
    const raw = (cloudPassword: string) => ({
      ...base,
      destinations: [entry('archive', archive, PASSWORD), entry('cloud', cloud, cloudPassword)],
    });
    const config = parseConfig(raw(WRONG_PASSWORD));
    await withState(config, async (state) => {
      await untilStudiesStable(source);
      expect((await pollOnce(config, state, captureLog().log)).queued).toBe(2);
      const capture = captureLog();
      const { summary, outcomes } = await runUntilIdle(config, state, capture.log);
      expect(outcomes).toEqual([]);
      expect(summary).toMatchObject({ deadLettered: 0, unavailableDestinations: ['cloud'] });
      expect(await heldUids(archive)).toEqual(uidsOf(set.instances));
      expect(await instanceCount(cloud)).toBe(0);
      expect(await heldUids(source)).toEqual(uidsOf(set.instances));
      expect(
        capture.entries.filter((e) => e.message.startsWith('destination unavailable')).map((e) => e.field),
      ).toEqual(['destinations[1].password']);

      const after = await runUntilIdle(parseConfig(raw(PASSWORD)), state, captureLog().log);
      expect(after.summary).toMatchObject({ deadLettered: 0, unavailableDestinations: [] });
      expect(await instanceCount(source)).toBe(0);
      await expectAllAtDestination(cloud, set.instances);
      await expectAllAtDestination(archive, set.instances);
    });
  });
});
