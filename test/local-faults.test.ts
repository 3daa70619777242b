/**
 * Fault tests of local mode, against real Orthanc servers: the destination going down mid-move,
 * the forwarder killed between two steps of a move, a source that is down or frozen, restarts of
 * the forwarder and of a source, and a source whose database was reset. In every one, an
 * instance is at any moment at its source or at the destination, and a rerun converges without
 * sending again what the destination already holds.
 */
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../lambdas/core/config.ts';
import type { MoveStep } from '../lambdas/core/move-study.ts';
import type { StudyOutcome } from '../lambdas/core/ports.ts';
import { type LocalState, openState } from '../lambdas/local/sqlite-state.ts';
import {
  type GeneratedInstance,
  generateStudies,
  SOP_CLASS_UID_TAG,
  withoutElements,
} from '../testbed/dicom-generator.ts';
import type { OrthancServer } from '../testbed/orthanc.ts';
import {
  CRASH_AT,
  captureLog,
  cli,
  configFor,
  expectEachSomewhere,
  heldUids,
  instanceCount,
  logLines,
  newInstanceChanges,
  runProcess,
  runUntilIdle,
  shape,
  startServers,
  uidsOf,
  until,
  upload,
  useTestbed,
} from './support/harness.ts';

// ---------------------------------------------------------------------------------------------
// Helpers

/** The generated instances of the study that a source knows under an Orthanc ID. */
const instancesOfStudy = async (
  server: OrthancServer,
  studyId: string,
  instances: readonly GeneratedInstance[],
): Promise<GeneratedInstance[]> => {
  const study = await server.rest<{ MainDicomTags: { StudyInstanceUID: string } }>(
    'GET',
    `/studies/${studyId}`,
  );
  const found = instances.filter((i) => i.studyInstanceUid === study.MainDicomTags.StudyInstanceUID);
  expect(found.length).toBeGreaterThan(0);
  return found;
};

interface ChangesAnswer {
  readonly Changes: readonly { ChangeType: string; ID: string; ResourceType: string; Seq: number }[];
  readonly Done: boolean;
  readonly Last: number;
}

const changesSince = (server: OrthancServer, since: number): Promise<ChangesAnswer> =>
  server.rest<ChangesAnswer>('GET', `/changes?since=${since}&limit=100000`);

const sum = (outcomes: readonly StudyOutcome[], field: 'sent' | 'alreadyPresent' | 'deleted'): number =>
  outcomes.reduce((total, outcome) => total + outcome[field], 0);

// ---------------------------------------------------------------------------------------------

describe('local mode under faults', () => {
  const { fleet, workPath } = useTestbed('faults');

  const openLocalState = (maxReceives: number): LocalState =>
    openState(workPath('state.sqlite'), { maxReceives });

  it('deletes nothing unverified while the destination is down, and the rerun resends nothing it holds', async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    const set = generateStudies(shape('destination-down'));
    await upload(source, set.instances);
    const config = parseConfig(configFor([{ id: 'site-a', server: source }], destination));
    const state = openLocalState(config.retry.maxAttempts);
    try {
      // The destination goes down once the first study is sent and before anything is verified.
      // Every move waits at 'sent' until it is down, so no verification can slip in before.
      let stopped: Promise<void> | undefined;
      let firstStudy: string | undefined;
      const onStep = async (step: MoveStep, studyId: string) => {
        if (step !== 'sent') return;
        if (stopped === undefined) {
          firstStudy = studyId;
          stopped = destination.stop();
        }
        await stopped;
      };
      // The run is stopped (as by Ctrl-C) once a move has failed for it.
      const stop = new AbortController();
      const first = captureLog((entry) => {
        if (entry.message === 'work item failed, will retry') stop.abort();
      });
      const during = await runUntilIdle(config, state, first.log, { onStep, signal: stop.signal });

      expect(firstStudy).toBeDefined();
      expect(during.outcomes).toEqual([]);
      expect(during.summary.studiesMoved).toBe(0);
      const failures = first.entries.filter((entry) => entry.message === 'work item failed, will retry');
      expect(failures.length).toBeGreaterThan(0);
      for (const failure of failures) {
        expect(failure).toMatchObject({ kind: 'transient', sourceId: 'site-a' });
        expect(String(failure.error)).toContain(new URL(destination.url).origin);
      }
      // Nothing was verified, so nothing left the source, although the first study was all sent.
      expect(await heldUids(source)).toEqual(uidsOf(set.instances));

      await destination.start();
      const firstInstances = await instancesOfStudy(source, firstStudy as string, set.instances);
      const heldBeforeRerun = await heldUids(destination);
      expect(heldBeforeRerun).toEqual(expect.arrayContaining(uidsOf(firstInstances)));
      await expectEachSomewhere(set.instances, [source, destination]);

      const rerun = await runUntilIdle(config, state, captureLog().log);

      expect(await instanceCount(source)).toBe(0);
      expect(await heldUids(destination)).toEqual(uidsOf(set.instances));
      // What the destination held was verified and deleted, not sent again; the rest was sent once.
      expect(rerun.outcomes.find((outcome) => outcome.studyId === firstStudy)).toMatchObject({
        result: 'moved',
        instances: firstInstances.length,
        sent: 0,
        alreadyPresent: firstInstances.length,
        deleted: firstInstances.length,
      });
      expect(sum(rerun.outcomes, 'alreadyPresent')).toBe(heldBeforeRerun.length);
      expect(sum(rerun.outcomes, 'sent')).toBe(set.instances.length - heldBeforeRerun.length);
      expect(sum(rerun.outcomes, 'deleted')).toBe(set.instances.length);
      expect(await newInstanceChanges(destination)).toBe(set.instances.length);
      expect((await state.queue.stats()).deadLetters).toBe(0);
    } finally {
      state.close();
    }
  });

  for (const step of ['sent', 'verified', 'deleted'] as const) {
    it(`converges after the forwarder is SIGKILLed at '${step}', without resending what the destination holds`, async () => {
      const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
      const set = generateStudies(shape(`crash-at-${step}`));
      await upload(source, set.instances);
      const configPath = workPath('forwarder.json');
      const statePath = workPath('state.sqlite');
      const markerPath = workPath('crashed.json');
      writeFileSync(
        configPath,
        JSON.stringify(configFor([{ id: 'site-a', server: source }], destination, { concurrency: 1 })),
      );

      const crash = await runProcess(process.execPath, [
        '--disable-warning=ExperimentalWarning',
        CRASH_AT,
        configPath,
        statePath,
        step,
        markerPath,
      ]);
      expect(crash.signal, crash.stderr).toBe('SIGKILL');
      const marker = JSON.parse(readFileSync(markerPath, 'utf8')) as { step: string; studyId: string };
      expect(marker.step).toBe(step);

      // Nothing lost. One move at a time: the crashed study is all at the destination and nothing
      // else is; it is still at the source unless the crash came after its deletion.
      await expectEachSomewhere(set.instances, [source, destination]);
      // Orthanc derives a study's ID from its DICOM identifiers: the same ID at both ends.
      const crashed = await instancesOfStudy(destination, marker.studyId, set.instances);
      const heldBeforeRerun = await heldUids(destination);
      expect(heldBeforeRerun).toEqual(uidsOf(crashed));
      const leftAtSource = await heldUids(source);
      expect(leftAtSource).toEqual(
        uidsOf(step === 'deleted' ? set.instances.filter((i) => !crashed.includes(i)) : set.instances),
      );

      const rerun = await cli(['run', '--config', configPath, '--state', statePath, '--until-idle']);
      expect(rerun.code, rerun.stderr).toBe(0);
      expect(await instanceCount(source)).toBe(0);
      expect(await heldUids(destination)).toEqual(uidsOf(set.instances));

      // Powertools writes INFO lines to stdout, WARN and ERROR lines to stderr.
      const lines = logLines(`${rerun.stdout}\n${rerun.stderr}`);
      expect(lines.find((line) => line.message === 'resuming after an interrupted run')).toBeDefined();
      const outcomes = lines.filter((line) => line.message === 'study outcome') as unknown as StudyOutcome[];
      const ofCrashed = outcomes.filter((outcome) => outcome.studyId === marker.studyId);
      expect(ofCrashed.length).toBeGreaterThan(0);
      for (const outcome of ofCrashed) expect(outcome.sent).toBe(0);
      if (step === 'deleted') {
        // Its instances were gone from the source: the redelivered message found the deletion's
        // intent open and recorded the crashed move from it (later deliveries find it gone).
        expect(ofCrashed[0]).toMatchObject({ result: 'moved', deleted: crashed.length, sent: 0 });
        for (const outcome of ofCrashed.slice(1)) expect(outcome.result).toBe('gone');
      } else {
        expect(ofCrashed[0]).toMatchObject({
          result: 'moved',
          instances: crashed.length,
          sent: 0,
          alreadyPresent: crashed.length,
          deleted: crashed.length,
        });
      }
      // Across the rerun: what the destination held was not sent again; the rest was sent once.
      expect(sum(outcomes, 'sent')).toBe(set.instances.length - heldBeforeRerun.length);
      expect(await newInstanceChanges(destination)).toBe(set.instances.length);
      // The ledger in the state file: every deletion is counted, as moved, once.
      const state = openState(statePath);
      try {
        const totals = await state.ledger.totals();
        expect(totals.moved.instances).toBe(set.instances.length);
        expect(totals.deleted).toBe(set.instances.length);
        expect((await state.queue.stats()).deadLetters).toBe(0);
      } finally {
        state.close();
      }
    });
  }

  for (const fault of ['stopped', 'paused'] as const) {
    it(`moves a healthy source while another is ${fault}, and gives up on that one after retry.maxAttempts polls`, async () => {
      const [destination, healthy, bad] = await startServers(fleet, [
        'destination',
        'site-healthy',
        'site-bad',
      ]);
      const healthySet = generateStudies(shape(`healthy-${fault}`));
      const badSet = generateStudies(shape(`bad-${fault}`));
      await upload(healthy, healthySet.instances);
      await upload(bad, badSet.instances);
      const config = parseConfig(
        configFor(
          [
            { id: 'healthy', server: healthy },
            { id: 'bad', server: bad },
          ],
          destination,
          {
            retry: { maxAttempts: 3, baseDelayMs: 200, maxDelayMs: 1_000 },
            timeouts: { connectMs: 2_000, headersMs: 2_000, bodyMs: 2_000 },
          },
        ),
      );
      if (fault === 'stopped') await bad.stop();
      else await bad.pause();
      const state = openLocalState(config.retry.maxAttempts);
      try {
        const capture = captureLog();
        const { summary, outcomes } = await runUntilIdle(config, state, capture.log);

        expect(summary.failedSources).toEqual(['bad']);
        expect(await instanceCount(healthy)).toBe(0);
        expect(await heldUids(destination)).toEqual(uidsOf(healthySet.instances));
        expect(outcomes.every((outcome) => outcome.sourceId === 'healthy')).toBe(true);
        expect(summary.studiesMoved).toBe(2);
        const pollFailures = capture.entries.filter(
          (entry) => entry.message === 'source poll failed' && entry.sourceId === 'bad',
        );
        expect(pollFailures.length).toBeGreaterThanOrEqual(config.retry.maxAttempts);
        expect(pollFailures.at(-1)?.consecutiveFailures).toBeGreaterThanOrEqual(config.retry.maxAttempts);
        expect(String(pollFailures[0]?.error)).toContain(new URL(bad.url).origin);

        if (fault === 'stopped') await bad.start();
        else bad.resume();
        expect(await heldUids(bad)).toEqual(uidsOf(badSet.instances));
      } finally {
        state.close();
      }
    });
  }

  it('resumes from its stored cursor after a restart, reading only the changes since', async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    // The first study keeps one instance at the source (the destination refuses it), so that the
    // source's change feed keeps a history that a full re-read would read again, and queue again.
    const first = generateStudies(shape('resume-first', { patients: 1 })).instances.map((instance, index) =>
      index === 2 ? withoutElements(instance, [SOP_CLASS_UID_TAG]) : instance,
    );
    await upload(source, first);
    const config = parseConfig(configFor([{ id: 'site-a', server: source }], destination));
    const state = openLocalState(config.retry.maxAttempts);
    try {
      const run1 = await runUntilIdle(config, state, captureLog().log);
      expect(run1.outcomes[0]).toMatchObject({ result: 'partial', rejected: 1 });
      const [firstStudy] = await source.rest<string[]>('GET', '/studies');
      const cursorBefore = await state.feed.getCursor('site-a');
      const history = await changesSince(source, 0);
      expect(history.Changes.at(-1)?.Seq).toBeLessThanOrEqual(cursorBefore as number);
      expect(history.Changes.length).toBeGreaterThan(0);

      const second = generateStudies(shape('resume-second', { patients: 1 }));
      await upload(source, second.instances);
      // Every change of the new study is in the feed before the forwarder starts again.
      const stableChanges = (changes: ChangesAnswer) =>
        changes.Changes.filter((change) => change.ChangeType.startsWith('Stable')).length;
      // StableSeries for each of its 2 series, StableStudy, StablePatient.
      await until(async () => stableChanges(await changesSince(source, cursorBefore as number)) === 4);
      const newChanges = await changesSince(source, cursorBefore as number);
      const allChanges = await changesSince(source, 0);
      expect(allChanges.Changes.length).toBe(history.Changes.length + newChanges.Changes.length);

      const capture = captureLog();
      const run2 = await runUntilIdle(config, state, capture.log);

      const firstPoll = capture.entries.find((entry) => entry.message === 'source polled');
      expect(firstPoll).toMatchObject({
        sourceId: 'site-a',
        reset: false,
        changesRead: newChanges.Changes.length,
        cursor: newChanges.Last,
      });
      expect(firstPoll?.changesRead).toBeLessThan(allChanges.Changes.length);
      // Deleting the moved study erased its changes at the source; no later poll took that for a reset.
      expect(
        capture.entries.filter((entry) => entry.message.startsWith('source database was reset')),
      ).toEqual([]);
      // The first study was not queued again: only the new one was moved.
      expect(run2.outcomes.length).toBeGreaterThan(0);
      expect(run2.outcomes.filter((outcome) => outcome.studyId === firstStudy)).toEqual([]);
      expect(run2.outcomes[0]).toMatchObject({
        result: 'moved',
        sent: second.instances.length,
        deleted: second.instances.length,
      });
      // Nothing changed at the source since but deletions, which add no change.
      expect(await state.feed.getCursor('site-a')).toBe(newChanges.Last);
      expect(newChanges.Last).toBeGreaterThan(cursorBefore as number);
      expect(await heldUids(source)).toEqual([first[2]?.sopInstanceUid]);
      expect(await heldUids(destination)).toEqual(
        uidsOf([...first.filter((_, index) => index !== 2), ...second.instances]),
      );
    } finally {
      state.close();
    }
  });

  it('moves a study whose source restarted before calling it stable, with no StableStudy ever', async () => {
    const [destination, source] = await startServers(fleet, [
      'destination',
      // Stable only 30 s after its last instance: the restart comes long before.
      { name: 'site-a', stableAge: 30 },
    ]);
    const set = generateStudies(shape('restart-before-stable', { patients: 1 }));
    await upload(source, set.instances);
    const [studyId] = await source.rest<string[]>('GET', '/studies');
    // The first run only watches (it would wait an hour for quiet); the second may move.
    const watchOnly = parseConfig(
      configFor([{ id: 'site-a', server: source }], destination, { quietSeconds: 3_600 }),
    );
    const config = parseConfig(configFor([{ id: 'site-a', server: source }], destination));
    const state = openLocalState(config.retry.maxAttempts);
    try {
      // One poll, which reads NewStudy and watches the study; the run is stopped right after it.
      const stop = new AbortController();
      const capture = captureLog((entry) => {
        if (entry.message === 'source polled') stop.abort();
      });
      const watching = await runUntilIdle(watchOnly, state, capture.log, { signal: stop.signal });
      expect(watching.outcomes).toEqual([]);
      expect(capture.entries.find((entry) => entry.message === 'source polled')).toMatchObject({
        queued: 0,
        waiting: 1,
      });
      expect((await state.feed.watched('site-a')).map((entry) => entry.studyId)).toEqual([studyId]);
      expect(await instanceCount(destination)).toBe(0);

      await source.restart();
      const afterRestart = await changesSince(source, 0);
      expect(afterRestart.Changes.filter((change) => change.ID === studyId).map((c) => c.ChangeType)).toEqual(
        ['NewStudy'],
      );

      const run = await runUntilIdle(config, state, captureLog().log);

      expect(run.outcomes.filter((outcome) => outcome.result === 'moved')).toEqual([
        expect.objectContaining({ studyId, sent: set.instances.length, deleted: set.instances.length }),
      ]);
      expect(await instanceCount(source)).toBe(0);
      expect(await heldUids(destination)).toEqual(uidsOf(set.instances));
      // The source never announced the study stable: no StableStudy was ever in its feed.
      const changes = await changesSince(source, 0);
      expect(changes.Changes.filter((change) => change.ChangeType === 'StableStudy')).toEqual([]);
      expect(await state.feed.watched('site-a')).toEqual([]);
    } finally {
      state.close();
    }
  });

  it('reads the feed from the start when the source database was reset, and moves the new studies', async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    const before = generateStudies(shape('reset-before'));
    await upload(source, before.instances);
    const config = parseConfig(configFor([{ id: 'site-a', server: source }], destination));
    const state = openLocalState(config.retry.maxAttempts);
    try {
      await runUntilIdle(config, state, captureLog().log);
      expect(await instanceCount(source)).toBe(0);
      const cursorBefore = (await state.feed.getCursor('site-a')) as number;
      expect(cursorBefore).toBe((await changesSince(source, 0)).Last);

      // The source's database is wiped (same server, same URL, empty storage).
      await source.stop();
      rmSync(join(source.dir, 'storage'), { recursive: true, force: true });
      await source.start();
      expect((await changesSince(source, 0)).Last).toBe(0);
      // A smaller study: its changes end below the stored cursor, so the reset shows.
      const after = generateStudies(
        shape('reset-after', { patients: 1, seriesPerStudy: 1, instancesPerSeries: 2 }),
      );
      await upload(source, after.instances);
      const [studyId] = await source.rest<string[]>('GET', '/studies');
      expect((await changesSince(source, 0)).Last).toBeLessThan(cursorBefore);

      const capture = captureLog();
      const run = await runUntilIdle(config, state, capture.log);

      const resets = capture.entries.filter((entry) => entry.message.startsWith('source database was reset'));
      expect(resets[0]).toMatchObject({ level: 'warn', sourceId: 'site-a', cursor: cursorBefore });
      expect(resets[0]?.last).toBeLessThan(cursorBefore);
      expect(run.outcomes.filter((outcome) => outcome.result === 'moved')).toEqual([
        expect.objectContaining({ studyId, sent: after.instances.length, deleted: after.instances.length }),
      ]);
      expect(await instanceCount(source)).toBe(0);
      expect(await heldUids(destination)).toEqual(uidsOf([...before.instances, ...after.instances]));
      const cursorAfter = (await state.feed.getCursor('site-a')) as number;
      expect(cursorAfter).toBe((await changesSince(source, 0)).Last);
      expect(cursorAfter).toBeLessThan(cursorBefore);
    } finally {
      state.close();
    }
  });
});
