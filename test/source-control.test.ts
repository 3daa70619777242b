/**
 * What an operator asks of one source (bin/source-control.ts): `pause`, `resume` and `sweep`, run
 * as the real CLI on a state file and with `--aws` on DynamoDB Local; then what a local run does
 * with them, with real Orthancs: a paused source is not polled and its queued studies wait without
 * using up attempts, the other sources go on; resumed, everything moves, what arrived meanwhile
 * too; a sweep asked for starts at the next poll and is then forgotten.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DynamoFeedStore } from '../lambdas/aws/dynamo-feed-store.ts';
import { parseConfig } from '../lambdas/core/config.ts';
import type { FeedStateStore } from '../lambdas/core/ports.ts';
import { LocalRunner } from '../lambdas/local/local-runner.ts';
import { type LocalState, openState } from '../lambdas/local/sqlite-state.ts';
import { generateStudies } from '../testbed/dicom-generator.ts';
import { type DynamoDbLocal, startDynamoDbLocal } from '../testbed/dynamodb-local.ts';
import { emulatorEnv } from '../testbed/sqs-emulator.ts';
import {
  captureLog,
  cli,
  configFor,
  expectAllAtDestination,
  heldUids,
  instanceCount,
  type ProcessResult,
  pollOnce,
  runUntilIdle,
  shape,
  startServers,
  uidsOf,
  untilStudiesStable,
  upload,
  useTestbed,
} from './support/harness.ts';

const CONFIG = {
  sources: [
    { id: 'site-a', url: 'http://127.0.0.1:9' },
    { id: 'site-b', url: 'http://127.0.0.1:9' },
  ],
  destination: { url: 'http://127.0.0.1:9/dicom-web' },
};

const work = mkdtempSync(join(tmpdir(), 'orthanc-forwarder-source-control-'));
const configPath = join(work, 'forwarder.json');
writeFileSync(configPath, JSON.stringify(CONFIG));
const baseEnv = { PATH: process.env.PATH, HOME: work };
let dynamo: DynamoDbLocal;
let fixtures = 0;
const states: LocalState[] = [];

interface Fixture {
  run(args: readonly string[]): Promise<ProcessResult>;
  readonly feed: FeedStateStore;
}

const modes: readonly { readonly name: string; fixture(): Promise<Fixture> }[] = [
  {
    name: 'on a state file',
    fixture: async () => {
      const statePath = join(work, `state-${++fixtures}.sqlite`);
      const state = openState(statePath);
      states.push(state);
      return {
        run: (args) => cli([...args, '--config', configPath, '--state', statePath], baseEnv),
        feed: state.feed,
      };
    },
  },
  {
    name: 'on the stack (--aws, DynamoDB Local)',
    fixture: async () => {
      const table = `source-control-${++fixtures}`;
      await dynamo.createTable(table);
      const env = { ...baseEnv, ...emulatorEnv({ dynamodb: dynamo.endpoint }) };
      return {
        run: (args) => cli([...args, '--config', configPath, '--aws', '--table', table], env),
        feed: new DynamoFeedStore(dynamo.client, table),
      };
    },
  },
];

beforeAll(async () => {
  dynamo = await startDynamoDbLocal();
});

afterAll(async () => {
  for (const state of states) state.close();
  await dynamo?.stop();
  rmSync(work, { recursive: true, force: true });
});

const ok = (result: ProcessResult): string => {
  expect(result.stderr).toBe('');
  expect(result.code).toBe(0);
  return result.stdout;
};

const ISO = /\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z/;

describe.each(modes)('pause, resume and sweep $name', (mode) => {
  it('keep what they ask in the state, say what they did, are safe to repeat, and refuse an unknown source (2)', async () => {
    const fixture = await mode.fixture();
    const before = Date.now();
    expect(ok(await fixture.run(['pause', 'site-a']))).toMatch(/^site-a paused: it is not polled/);
    const { pausedAt } = await fixture.feed.control('site-a');
    expect(pausedAt).toBeGreaterThanOrEqual(before);
    expect(pausedAt).toBeLessThanOrEqual(Date.now());
    expect(ok(await fixture.run(['pause', 'site-a']))).toBe(
      `site-a was already paused, since ${new Date(pausedAt as number).toISOString()}\n`,
    );
    expect(await fixture.feed.control('site-b')).toEqual({});

    expect(ok(await fixture.run(['sweep', 'site-a']))).toMatch(
      /^sweep of site-a requested: it starts once site-a is resumed \(paused now\)\n$/,
    );
    expect(ok(await fixture.run(['sweep', 'site-a']))).toMatch(
      new RegExp(`^a sweep of site-a was already requested, at ${ISO.source}`),
    );
    const { sweepRequestedAt } = await fixture.feed.control('site-a');
    expect(sweepRequestedAt).toBeGreaterThanOrEqual(pausedAt as number);

    expect(ok(await fixture.run(['resume', 'site-a']))).toMatch(/^site-a resumed: /);
    expect(ok(await fixture.run(['resume', 'site-a']))).toBe('site-a was not paused\n');
    expect(await fixture.feed.control('site-a')).toEqual({ sweepRequestedAt });

    for (const action of ['pause', 'resume', 'sweep']) {
      const unknown = await fixture.run([action, 'site-z']);
      expect(unknown.code).toBe(2);
      expect(unknown.stderr).toContain("unknown source 'site-z': the configuration has site-a, site-b");
    }
    expect(await fixture.feed.control('site-z')).toEqual({});
  });
});

describe('on the stack, without the table', () => {
  it('names the option to give, as a usage error (2)', async () => {
    const result = await cli(['pause', 'site-a', '--config', configPath, '--aws'], baseEnv);
    expect(result.code).toBe(2);
    expect(result.stderr).toContain('--aws needs --table (STATE_TABLE)');
  });
});

describe('a local run', () => {
  const { fleet, workPath, withState } = useTestbed('source-control');
  /** Few attempts and short waits: a study whose waits were counted would be dead-lettered at once. */
  const RETRY = { maxAttempts: 2, baseDelayMs: 50, maxDelayMs: 200 };

  it('leaves a paused source alone while the other moves, its queued studies waiting uncounted; resumed, moves them and what arrived meanwhile', async () => {
    const [destination, siteA, siteB] = await startServers(fleet, ['destination', 'site-a', 'site-b']);
    const setA = generateStudies(shape('paused-a'));
    const setB = generateStudies(shape('paused-b'));
    await upload(siteA, setA.instances);
    await upload(siteB, setB.instances);
    const raw = configFor(
      [
        { id: 'site-a', server: siteA },
        { id: 'site-b', server: siteB },
      ],
      destination,
      { retry: RETRY },
    );
    const path = workPath('forwarder.json');
    writeFileSync(path, JSON.stringify(raw));
    const config = parseConfig(raw);
    const control = (action: string) =>
      cli([action, 'site-a', '--config', path, '--state', workPath('state.sqlite')], process.env);

    await withState(config, async (state) => {
      // site-a's studies are queued, then it is paused.
      await untilStudiesStable(siteA);
      expect((await pollOnce(config, state, captureLog().log)).queued).toBe(2);
      const cursor = await state.feed.getCursor('site-a');
      ok(await control('pause'));
      const late = generateStudies(shape('paused-late', { patients: 1 }));
      await upload(siteA, late.instances);

      // A run moves site-b; each of site-a's studies comes back more often than maxAttempts
      // allows, and waits each time.
      const waits = new Map<string, number>();
      let movedB = 0;
      const stop = new AbortController();
      const stopOnceDone = () => {
        const waited = waits.size === 2 && [...waits.values()].every((count) => count > RETRY.maxAttempts);
        if (waited && movedB === 2) stop.abort();
      };
      const capture = captureLog((entry) => {
        if (entry.message !== 'work item waits' || entry.sourceId !== 'site-a') return;
        waits.set(String(entry.studyId), (waits.get(String(entry.studyId)) ?? 0) + 1);
        stopOnceDone();
      });
      const summary = await new LocalRunner(config, state, capture.log).run({
        untilIdle: false,
        signal: stop.signal,
        onOutcome: (outcome) => {
          if (outcome.sourceId === 'site-b' && outcome.result === 'moved') movedB++;
          stopOnceDone();
        },
      });
      expect(summary).toMatchObject({ deadLettered: 0, pausedSources: ['site-a'] });
      expect(capture.entries).toContainEqual(
        expect.objectContaining({
          message: 'source paused: not polled, its studies wait',
          sourceId: 'site-a',
        }),
      );
      expect(await instanceCount(siteB)).toBe(0);
      expect(await heldUids(siteA)).toEqual(uidsOf([...setA.instances, ...late.instances]));
      expect(await state.feed.getCursor('site-a')).toBe(cursor);
      expect((await state.queue.stats()).deadLetters).toBe(0);

      // `--until-idle` does not wait for a paused source.
      const idle = await runUntilIdle(config, state, captureLog().log);
      expect(idle.outcomes).toEqual([]);
      expect(idle.summary).toMatchObject({ deadLettered: 0, pausedSources: ['site-a'] });

      // Resumed: the queued studies move, and the feed, read from where it stopped, brings the late one.
      ok(await control('resume'));
      const resumed = await runUntilIdle(config, state, captureLog().log);
      expect(resumed.summary).toMatchObject({ deadLettered: 0, pausedSources: [] });
      expect(resumed.outcomes.filter((outcome) => outcome.result === 'moved')).toHaveLength(3);
      expect(await instanceCount(siteA)).toBe(0);
      await expectAllAtDestination(destination, [...setA.instances, ...late.instances, ...setB.instances]);
    });
  });

  it('starts a sweep asked for at the next poll, though none is due, and then forgets the request', async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    const set = generateStudies(shape('swept'));
    await upload(source, set.instances);
    // A day between sweeps, and a cursor past every change (as if the changes had been lost):
    // only a sweep finds these studies.
    const raw = configFor([{ id: 'site-a', server: source }], destination, { sweepIntervalSeconds: 86_400 });
    const path = workPath('forwarder.json');
    writeFileSync(path, JSON.stringify(raw));
    const config = parseConfig(raw);
    const last = (await source.rest<{ Last: number }>('GET', '/changes?last')).Last;

    await withState(config, async (state) => {
      expect(await state.feed.advanceCursor('site-a', undefined, last)).toBe(true);
      const unswept = await runUntilIdle(config, state, captureLog().log);
      expect(unswept.outcomes).toEqual([]);
      expect(await heldUids(source)).toEqual(uidsOf(set.instances));

      ok(await cli(['sweep', 'site-a', '--config', path, '--state', workPath('state.sqlite')], process.env));
      expect((await state.feed.control('site-a')).sweepRequestedAt).toBeDefined();
      const capture = captureLog();
      const swept = await runUntilIdle(config, state, capture.log);
      expect(swept.outcomes.map((outcome) => outcome.result)).toEqual(['moved', 'moved']);
      expect(capture.entries).toContainEqual(
        expect.objectContaining({ message: 'the sweep an operator asked for started', sourceId: 'site-a' }),
      );
      expect(await state.feed.control('site-a')).toEqual({});
      expect(await instanceCount(source)).toBe(0);
      await expectAllAtDestination(destination, set.instances);
    });
  });
});
