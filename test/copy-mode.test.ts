/**
 * Copy mode (`deleteAfterForward: false`) against real Orthanc servers: every study is copied and
 * stays at its source; the ledger remembers what was copied, so that neither a sweep nor a
 * redelivered message sends or verifies an unchanged study again, while a study that changed is
 * copied again, sending only what is new.
 */
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../lambdas/core/config.ts';
import { buildEngine } from '../lambdas/core/engine.ts';
import { forwardWorkItem } from '../lambdas/core/forward-work-item.ts';
import { createLog } from '../lambdas/core/log.ts';
import type { StudyOutcome } from '../lambdas/core/ports.ts';
import { encodeWorkItem } from '../lambdas/core/work-item.ts';
import { LocalRunner } from '../lambdas/local/local-runner.ts';
import { openState } from '../lambdas/local/sqlite-state.ts';
import { type GeneratedInstance, generateStudies } from '../testbed/dicom-generator.ts';
import {
  configFor,
  expectAllAtDestination,
  heldUids,
  instanceCount,
  pollOnce,
  shape,
  startServers,
  uidsOf,
  until,
  upload,
  useTestbed,
} from './support/harness.ts';

describe('copy mode', () => {
  const { fleet, workPath } = useTestbed('copy');

  it('copies and deletes nothing; an unchanged study is neither queued by a sweep nor sent or verified again; a changed one sends only what is new', async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    const set = generateStudies(shape('copy-mode'));
    // The last instance of the second study arrives after the first copy.
    const late = set.instances.at(-1) as GeneratedInstance;
    const early = set.instances.slice(0, -1);
    await upload(source, early);

    const config = parseConfig(
      configFor([{ id: 'site-a', server: source }], destination, { deleteAfterForward: false }),
    );
    const state = openState(workPath('state.sqlite'), { maxReceives: config.retry.maxAttempts });
    const log = createLog({ level: 'SILENT' });
    const outcomes: StudyOutcome[] = [];
    const run = () =>
      new LocalRunner(config, state, log).run({
        untilIdle: true,
        onOutcome: (outcome) => outcomes.push(outcome),
      });
    try {
      await run();
      // The feed may queue a study twice (the watch list, then its StableStudy change): the
      // second move finds it copied and unchanged.
      const copied = outcomes.filter((o) => o.result !== 'unchanged');
      expect(copied.map((o) => o.result)).toEqual(['copied', 'copied']);
      expect(copied.map((o) => o.sent).sort()).toEqual([5, 6]);
      expect(await heldUids(source)).toEqual(uidsOf(early));
      expect(await instanceCount(destination)).toBe(early.length);
      await expectAllAtDestination(destination, early);
      expect(await state.ledger.totals()).toMatchObject({
        moved: { studies: 0, instances: 0, bytes: 0 },
        copied: {
          studies: 2,
          instances: early.length,
          bytes: early.reduce((sum, i) => sum + i.byteLength, 0),
        },
        deleted: 0,
      });
      const studyIds = await source.rest<string[]>('GET', '/studies');
      for (const studyId of studyIds) {
        expect(await state.ledger.settled('site-a', studyId, '')).toMatchObject({
          result: 'copied',
          instances: copied.find((o) => o.studyId === studyId)?.instances,
        });
      }

      // With the destination down, anything that tried to send or verify would fail.
      await destination.stop();

      // A sweep watches every study the source holds: the copied ones leave the watch list at
      // once, none is queued.
      const swept = await pollOnce(config, state, log);
      expect(swept).toMatchObject({ queued: 0, waiting: 0 });
      expect(await state.queue.stats()).toEqual({ waiting: 0, inFlight: 0, deadLetters: 0 });

      // A message for a copied study delivered again (its StableStudy change read twice, say)
      // finds it unchanged without asking the destination anything.
      const engine = buildEngine(config, { ledger: state.ledger, feed: state.feed, log, owner: 'test' });
      for (const studyId of studyIds) {
        const again = await forwardWorkItem(
          engine,
          encodeWorkItem({ sourceId: 'site-a', studyId, reason: 'stable' }),
        );
        expect(again).toMatchObject({ result: 'unchanged', sent: 0, deleted: 0 });
      }
      expect((await state.ledger.totals()).copied.studies).toBe(2);

      // A study that changed is copied again, sending only what the destination lacks.
      await destination.start();
      await upload(source, [late]);
      // A run stops once idle; it cannot know a StableStudy change is on its way.
      const stable = async (id: string) =>
        (await source.rest<{ IsStable: boolean }>('GET', `/studies/${id}`)).IsStable;
      await until(async () => (await Promise.all(studyIds.map(stable))).every(Boolean));
      outcomes.length = 0;
      await run();
      const moved = outcomes.filter((o) => o.result !== 'unchanged');
      expect(moved).toMatchObject([{ result: 'copied', instances: 6, sent: 1, deleted: 0 }]);
      expect(await heldUids(source)).toEqual(uidsOf(set.instances));
      expect(await instanceCount(destination)).toBe(set.instances.length);
      await expectAllAtDestination(destination, set.instances);
    } finally {
      state.close();
    }
  });
});
