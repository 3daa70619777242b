/**
 * Several destinations against real Orthanc servers: a study leaves its source only once every
 * destination holds it; each destination's own listing says what it still lacks, so a retry
 * sends nothing again to one that has it; a refusal by one destination keeps the instance at the
 * source, the reason naming that destination.
 */
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../lambdas/core/config.ts';
import { createLog } from '../lambdas/core/log.ts';
import type { StudyOutcome } from '../lambdas/core/ports.ts';
import { LocalRunner } from '../lambdas/local/local-runner.ts';
import { openState } from '../lambdas/local/sqlite-state.ts';
import {
  type GeneratedInstance,
  generateStudies,
  SOP_CLASS_UID_TAG,
  withoutElements,
} from '../testbed/dicom-generator.ts';
import type { OrthancServer } from '../testbed/orthanc.ts';
import {
  captureLog,
  configFor,
  destinationEntry,
  expectAllAtDestination,
  heldUids,
  instanceCount,
  newInstanceChanges,
  shape,
  startServers,
  uidsOf,
  upload,
  useTestbed,
  withDestinations,
} from './support/harness.ts';

describe('several destinations', () => {
  const { fleet, workPath } = useTestbed('destinations');

  it('deletes at the source only what both hold; a destination down keeps everything, and the retry sends only to it', async () => {
    const [cloud, archive, source] = await startServers(fleet, ['cloud', 'archive', 'site-a']);
    const set = generateStudies(shape('two-destinations'));
    await upload(source, set.instances);
    const config = parseConfig(
      withDestinations(
        configFor([{ id: 'site-a', server: source }], cloud, {
          retry: { maxAttempts: 2, baseDelayMs: 100, maxDelayMs: 200 },
        }),
        [destinationEntry('cloud', cloud), destinationEntry('archive', archive)],
      ),
    );
    const state = openState(workPath('state.sqlite'), { maxReceives: config.retry.maxAttempts });
    const log = createLog({ level: 'SILENT' });
    const outcomes: StudyOutcome[] = [];
    const run = () =>
      new LocalRunner(config, state, log).run({ untilIdle: true, onOutcome: (o) => outcomes.push(o) });
    try {
      // The archive is down: the cloud gets everything, the source keeps everything.
      await archive.stop();
      const first = await run();
      expect(first.deadLettered).toBe(2);
      expect(await heldUids(source)).toEqual(uidsOf(set.instances));
      await expectAllAtDestination(cloud, set.instances);
      expect(await newInstanceChanges(cloud)).toBe(set.instances.length);
      for await (const letter of state.queue.deadLetters()) expect(letter.lastError).toMatch(/ECONNREFUSED/);

      // Back up: the retries send to the archive only, then delete.
      await archive.start();
      expect(await state.queue.redrive()).toBe(2);
      const second = await run();
      expect(second.deadLettered).toBe(0);
      expect(await instanceCount(source)).toBe(0);
      await expectAllAtDestination(archive, set.instances);
      expect(await newInstanceChanges(cloud)).toBe(set.instances.length);
      expect(await newInstanceChanges(archive)).toBe(set.instances.length);
      const moved = outcomes.filter((o) => o.result === 'moved');
      expect(moved).toHaveLength(2);
      // Each study: 6 instances sent to the archive, the cloud's 6 already there.
      for (const outcome of moved) expect(outcome).toMatchObject({ instances: 6, sent: 6, deleted: 6 });
      expect(await state.ledger.totals()).toMatchObject({
        moved: { studies: 2, instances: set.instances.length },
        deleted: set.instances.length,
      });
    } finally {
      state.close();
    }
  });

  it('keeps an instance one destination holds as another instance at the source, recording the conflict there', async () => {
    const [cloud, archive, source] = await startServers(fleet, ['cloud', 'archive', 'site-a']);
    const set = generateStudies(shape('one-refuses', { patients: 1 }));
    const disputed = set.instances[2] as GeneratedInstance;
    // The archive holds another file under the disputed instance's SOPInstanceUID.
    await upload(archive, [withoutElements(disputed, [SOP_CLASS_UID_TAG])]);
    await upload(source, set.instances);
    const orthancUrl = (server: OrthancServer) => ({ orthancUrl: server.url });
    const config = parseConfig(
      withDestinations(configFor([{ id: 'site-a', server: source }], cloud, { verify: 'md5' }), [
        destinationEntry('cloud', cloud, orthancUrl(cloud)),
        destinationEntry('archive', archive, orthancUrl(archive)),
      ]),
    );
    const state = openState(workPath('state.sqlite'), { maxReceives: config.retry.maxAttempts });
    try {
      const run = await new LocalRunner(config, state, createLog({ level: 'SILENT' })).run({
        untilIdle: true,
      });
      expect(run.deadLettered).toBe(0);
      expect(await heldUids(source)).toEqual([disputed.sopInstanceUid]);
      await expectAllAtDestination(cloud, set.instances);
      expect(await state.ledger.rejected('site-a')).toEqual([]);
      const conflicts = await state.ledger.conflicts({ sourceId: 'site-a' });
      expect(conflicts.map((c) => [c.sopInstanceUid, c.destinationId, c.attributes])).toEqual([
        [disputed.sopInstanceUid, 'archive', ['SOPClassUID']],
      ]);
    } finally {
      state.close();
    }
  });

  it('uses the alternate while the destination has been unreachable for longer than afterSeconds, and the destination again once it answers', async () => {
    const [cloud, standby, source] = await startServers(fleet, ['cloud', 'standby', 'site-a']);
    const configWith = (afterSeconds: number) =>
      parseConfig(
        configFor([{ id: 'site-a', server: source }], cloud, {
          retry: { maxAttempts: 2, baseDelayMs: 100, maxDelayMs: 200 },
          destination: {
            url: cloud.dicomWebUrl,
            username: cloud.username,
            password: cloud.password,
            alternate: {
              url: standby.dicomWebUrl,
              username: standby.username,
              password: standby.password,
              afterSeconds,
            },
          },
        }),
      );
    const state = openState(workPath('state.sqlite'), { maxReceives: 2 });
    const { log, entries } = captureLog();
    try {
      await cloud.stop();
      const first = generateStudies(shape('alternate-first', { patients: 1 }));
      await upload(source, first.instances);

      // Unreachable, but not for an hour yet: the study waits at the source.
      const waited = await new LocalRunner(configWith(3600), state, log).run({ untilIdle: true });
      expect(waited.deadLettered).toBe(1);
      expect(await heldUids(source)).toEqual(uidsOf(first.instances));
      expect(await instanceCount(standby)).toBe(0);

      // With afterSeconds 0 the first failure is enough: the standby is sent to and verified,
      // and the source emptied, while the cloud is still down.
      expect(await state.queue.redrive()).toBe(1);
      const failedOver = await new LocalRunner(configWith(0), state, log).run({ untilIdle: true });
      expect(failedOver.deadLettered).toBe(0);
      expect(await instanceCount(source)).toBe(0);
      await expectAllAtDestination(standby, first.instances);
      const switched = entries.filter(
        (e) => e.message === 'destination unreachable: its alternate serves this move',
      );
      expect(switched.length).toBeGreaterThan(0);
      expect(switched[0]).toMatchObject({
        destinationId: 'destination',
        server: cloud.url,
        alternate: standby.url,
      });

      // Once the cloud answers again, the next study goes to it.
      await cloud.start();
      const second = generateStudies(shape('alternate-second', { patients: 1 }));
      await upload(source, second.instances);
      const back = await new LocalRunner(configWith(0), state, log).run({ untilIdle: true });
      expect(back.deadLettered).toBe(0);
      expect(await instanceCount(source)).toBe(0);
      await expectAllAtDestination(cloud, second.instances);
      expect(await heldUids(cloud)).toEqual(uidsOf(second.instances));
      expect(await heldUids(standby)).toEqual(uidsOf(first.instances));
    } finally {
      state.close();
    }
  });
});
