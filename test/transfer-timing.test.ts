/**
 * Transfer windows and the minimum age with real Orthancs, on an injected clock (the feed's and
 * the engine's `now`, the queue's): outside its window a source's feed is read but its studies are
 * held back, and one queued already waits, uncounted, exactly until the window opens, when a sweep
 * queues what was held and everything moves; a study younger than the minimum age stays until it
 * is old enough; one received in the last liveHours moves outside the window.
 */
import { describe, expect, it } from 'vitest';
import { pollSource } from '../lambdas/core/changes-feed.ts';
import { type ForwarderConfig, parseConfig } from '../lambdas/core/config.ts';
import { buildEngine, feedSettings } from '../lambdas/core/engine.ts';
import { describe as describeError, NotYetError } from '../lambdas/core/errors.ts';
import { decideOnFailure } from '../lambdas/core/failure-policy.ts';
import { forwardWorkItem } from '../lambdas/core/forward-work-item.ts';
import { moveTiming } from '../lambdas/core/move-timing.ts';
import type { StudyOutcome } from '../lambdas/core/ports.ts';
import { nextOpening } from '../lambdas/core/transfer-window.ts';
import { type LocalState, openState } from '../lambdas/local/sqlite-state.ts';
import { generateStudies } from '../testbed/dicom-generator.ts';
import type { OrthancServer } from '../testbed/orthanc.ts';
import {
  captureLog,
  configFor,
  expectAllAtDestination,
  heldUids,
  instanceCount,
  shape,
  startServers,
  uidsOf,
  untilStudiesStable,
  upload,
  useTestbed,
} from './support/harness.ts';

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const EVERY_DAY = ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'] as const;
/** HH:MM in UTC of an instant. */
const clockTime = (at: number): string => new Date(at).toISOString().slice(11, 16);

const { fleet, workPath } = useTestbed('transfer-timing');

/**
 * The forwarder's parts on a clock the test turns: a poll of site-a, and one worker's turn as the
 * local runner takes it (receive, move, ack; on a failure, what the failure policy decides).
 */
const onClock = (config: ForwarderConfig, start: number) => {
  const clock = { now: start };
  const now = () => clock.now;
  const state: LocalState = openState(workPath('state.sqlite'), {
    maxReceives: config.retry.maxAttempts,
    now,
  });
  const capture = captureLog();
  const engine = {
    ...buildEngine(config, { ledger: state.ledger, feed: state.feed, log: capture.log, owner: 'test' }),
    now,
  };
  const source = engine.sources.get('site-a');
  if (source === undefined) throw new Error('no site-a');
  const poll = (sweepNow = false) =>
    pollSource(
      {
        sourceId: 'site-a',
        source,
        store: state.feed,
        sink: state.queue,
        log: capture.log,
        ...feedSettings(config, state.ledger),
        timing: moveTiming(config, 'site-a'),
        now,
      },
      { sweepNow },
    );
  const work = async (): Promise<
    { outcome?: StudyOutcome; error?: unknown; receiveCount: number } | undefined
  > => {
    const [message] = await state.queue.receive(1, HOUR);
    if (message === undefined) return undefined;
    try {
      const outcome = await forwardWorkItem(engine, message.body, { attempt: message.receiveCount });
      await state.queue.ack(message.handle);
      return { outcome, receiveCount: message.receiveCount };
    } catch (error) {
      const decision = decideOnFailure(error, message.receiveCount, config.retry);
      if (decision.action === 'dead-letter')
        await state.queue.deadLetter(message.handle, describeError(error));
      else
        await state.queue.release(message.handle, describeError(error), decision.delayMs, {
          counted: decision.counted,
        });
      return { error, receiveCount: message.receiveCount };
    }
  };
  return { clock, state, poll, work, entries: capture.entries };
};

const setUp = async (seed: string, extra: Record<string, unknown>) => {
  const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
  const set = generateStudies(shape(seed));
  await upload(source, set.instances);
  await untilStudiesStable(source);
  // Few attempts: a wait that was counted would dead-letter the study at once.
  const config = parseConfig(
    configFor([{ id: 'site-a', server: source }], destination, {
      retry: { maxAttempts: 1, baseDelayMs: 100, maxDelayMs: 200 },
      ...extra,
    }),
  );
  return { destination, source, set, config };
};

/** The next two turns move both studies; then nothing is left at the source, on the queue or in the dead letters. */
const expectBothMove = async (
  parts: ReturnType<typeof onClock>,
  { destination, source, set }: Awaited<ReturnType<typeof setUp>>,
) => {
  const moved = [await parts.work(), await parts.work()];
  expect(moved.map((turn) => turn?.outcome?.result)).toEqual(['moved', 'moved']);
  expect(await parts.work()).toBeUndefined();
  expect(await parts.state.queue.stats()).toEqual({ waiting: 0, inFlight: 0, deadLetters: 0 });
  expect(await instanceCount(source)).toBe(0);
  await expectAllAtDestination(destination, set.instances);
  return moved;
};

const studyIdsOf = async (server: OrthancServer): Promise<string[]> =>
  server.rest<string[]>('GET', '/studies');

describe('transfer windows and minimum age, on real Orthancs', () => {
  it('outside the window: the feed is read, nothing moves, a queued study waits uncounted until the window opens; then everything moves', async () => {
    const realNow = Date.now();
    // A window that opens three hours from now, every day, in UTC.
    const schedule = {
      timeZone: 'UTC',
      windows: [{ days: EVERY_DAY, from: clockTime(realNow + 3 * HOUR), to: clockTime(realNow + 5 * HOUR) }],
    };
    const servers = await setUp('window', { schedule });
    const { source, set, config } = servers;
    const opens = nextOpening(schedule, realNow);
    expect(opens - realNow).toBeGreaterThan(3 * HOUR - MINUTE);
    const parts = onClock(config, realNow);
    const { clock, state, poll, work, entries } = parts;
    try {
      // Closed: the feed is read to its end, and its studies are held back.
      const closed = await poll(true);
      expect(closed).toMatchObject({ queued: 0, held: 2, swept: 0, sweeping: false });
      expect(closed.changesRead).toBeGreaterThan(0);
      expect(closed.cursor).toBe(closed.last);

      // A study queued before the window closed waits, uncounted, exactly until it opens.
      const [first] = await studyIdsOf(source);
      await state.queue.enqueue([{ sourceId: 'site-a', studyId: first ?? '', reason: 'stable' }]);
      const waited = await work();
      expect(waited?.error).toBeInstanceOf(NotYetError);
      expect(waited?.error).toMatchObject({ waitsFor: 'window', at: opens, delayMs: opens - realNow });
      expect(await state.queue.stats()).toEqual({ waiting: 0, inFlight: 1, deadLetters: 0 });
      expect(await heldUids(source)).toEqual(uidsOf(set.instances));

      // A second before it opens: still nothing.
      clock.now = opens - 1_000;
      expect(await poll()).toMatchObject({ queued: 0, swept: 0, sweeping: false });
      expect(await work()).toBeUndefined();

      // Open: the sweep queues what was held back, and both studies move.
      clock.now = opens;
      const open = await poll();
      expect(open).toMatchObject({ swept: 2, held: 0 });
      expect(entries).toContainEqual(
        expect.objectContaining({
          message: 'the transfer window opened: every study of the source is looked at again',
          sourceId: 'site-a',
        }),
      );
      const moved = await expectBothMove(parts, servers);
      // The study that waited comes back with its receive given back: its wait used up no attempt.
      expect(moved.map((turn) => turn?.receiveCount)).toEqual([1, 1]);
    } finally {
      state.close();
    }
  });

  it('a study younger than the minimum age stays at the source, and moves once it is old enough', async () => {
    const servers = await setUp('minimum-age', { minimumAge: { hours: 2 } });
    const { source, set, config } = servers;
    const parts = onClock(config, Date.now());
    const { clock, state, poll, work } = parts;
    try {
      expect(await poll()).toMatchObject({ queued: 0, held: 2 });
      const [first] = await studyIdsOf(source);
      await state.queue.enqueue([{ sourceId: 'site-a', studyId: first ?? '', reason: 'stable' }]);
      const young = (await work())?.error;
      expect(young).toBeInstanceOf(NotYetError);
      expect(young).toMatchObject({ waitsFor: 'minimumAge' });
      const delayMs = (young as NotYetError).delayMs ?? 0;
      // Orthanc's LastUpdate counts whole seconds, in UTC.
      expect(delayMs).toBeGreaterThan(2 * HOUR - 2 * MINUTE);
      expect(delayMs).toBeLessThanOrEqual(2 * HOUR);
      expect(await heldUids(source)).toEqual(uidsOf(set.instances));

      // Old enough, both (the second may have reached the source a second after the first): the
      // next sweep (due sweepIntervalSeconds after the last) queues them.
      clock.now += delayMs + MINUTE;
      expect(await poll()).toMatchObject({ swept: 2, held: 0 });
      await expectBothMove(parts, servers);
    } finally {
      state.close();
    }
  });

  it('a study received in the last liveHours moves outside the window', async () => {
    const realNow = Date.now();
    const schedule = {
      timeZone: 'Asia/Tokyo',
      windows: [
        { days: EVERY_DAY, from: clockTime(realNow + 10 * HOUR), to: clockTime(realNow + 11 * HOUR) },
      ],
      liveHours: 1,
    };
    const servers = await setUp('live', { schedule });
    const parts = onClock(servers.config, realNow);
    try {
      expect(await parts.poll()).toMatchObject({ queued: 2, held: 0 });
      await expectBothMove(parts, servers);
    } finally {
      parts.state.close();
    }
  });
});
