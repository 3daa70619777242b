/**
 * Bad input from the servers around the forwarder: each case gives a clear error (the server
 * named by its origin, the status or the problem, no password), is counted (a dead letter, a
 * failed source, a log line) and loses nothing (every instance still at the source, or verified at
 * the destination). Real Orthancs throughout; a small HTTP front (test/support/fronts.ts) in front
 * of one only for the answers a real Orthanc cannot be made to give.
 *
 * Covered elsewhere, not repeated here:
 * - DICOM files the destination refuses: test/local-mode.test.ts, "keeps an instance the
 *   destination refuses at the source, reports it, and does not retry it forever".
 * - A change feed that went backwards (the source's database wiped): test/local-faults.test.ts,
 *   "reads the feed from the start when the source database was reset, and moves the new studies".
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { type ForwarderConfig, parseConfig } from '../lambdas/core/config.ts';
import type { MoveStep } from '../lambdas/core/move-study.ts';
import { LocalRunner } from '../lambdas/local/local-runner.ts';
import { type LocalState, openState } from '../lambdas/local/sqlite-state.ts';
import { gatherStatus } from '../lambdas/local/status.ts';
import { generateStudies } from '../testbed/dicom-generator.ts';
import type { OrthancServer } from '../testbed/orthanc.ts';
import { type FakeAnswer, type FaultRule, HttpFront } from './support/fronts.ts';
import {
  captureLog,
  collect,
  configFor,
  expectAllAtDestination,
  heldUids,
  instanceCount,
  runUntilIdle,
  shape,
  startServers,
  uidsOf,
  upload,
  useTestbed,
} from './support/harness.ts';
import { type Credentials, expectClearError, expectNoSecret } from './support/no-leaks.ts';

const USERNAME = 'orthanc';
/** Distinctive, so that a search of every error and log line for it means something. */
const PASSWORD = `pw-bad-input-${randomBytes(8).toString('hex')}`;
const WRONG_PASSWORD = `wrong-${randomBytes(8).toString('hex')}`;
const CREDENTIALS: readonly Credentials[] = [
  { username: USERNAME, password: PASSWORD },
  { username: USERNAME, password: WRONG_PASSWORD },
];

/** Quick retries, one study at a time (no two attempts of a study at once), short timeouts. */
const SETTINGS = {
  concurrency: 1,
  retry: { maxAttempts: 3, baseDelayMs: 100, maxDelayMs: 300 },
  timeouts: { connectMs: 5_000, headersMs: 30_000, bodyMs: 30_000 },
};

// ---------------------------------------------------------------------------------------------
// Answers no real Orthanc gives

/** What a proxy or single-sign-on gateway in front of a server answers when it wants a login. */
const LOGIN_PAGE: FakeAnswer = {
  status: 200,
  headers: { 'content-type': 'text/html; charset=utf-8' },
  body:
    '<!DOCTYPE html><html><head><title>Sign in</title></head><body><form method="post">' +
    '<input name="username"><input name="password" type="password"></form></body></html>',
};

/** The answer cut in the middle, as a proxy that ran out of buffer would pass it on. */
const truncated = (real: FakeAnswer): FakeAnswer => {
  const body = Buffer.isBuffer(real.body) ? real.body : Buffer.from(real.body);
  // `[]` at the least: cut to `[`.
  expect(real.status).toBe(200);
  expect(body.length).toBeGreaterThanOrEqual(2);
  return { ...real, body: body.subarray(0, Math.floor(body.length / 2)) };
};

/** The JSON itself intact, labelled as plain text (a proxy rewriting content types). */
const relabelled = (real: FakeAnswer): FakeAnswer =>
  String(real.headers['content-type']).includes('json')
    ? { ...real, headers: { ...real.headers, 'content-type': 'text/plain; charset=utf-8' } }
    : real;

/** A 200 STOW-RS answer with neither ReferencedSOPSequence nor FailedSOPSequence. */
const STOW_WITHOUT_SEQUENCES: FakeAnswer = {
  status: 200,
  headers: { 'content-type': 'application/dicom+json' },
  body: JSON.stringify({ '00080005': { vr: 'CS', Value: ['ISO_IR 100'] } }),
};

const isStow = (request: { method: string; path: string }) =>
  request.method === 'POST' && /^\/dicom-web\/studies\/?(\?|$)/.test(request.path);

// ---------------------------------------------------------------------------------------------

type RawConfig = Record<string, unknown>;

/** The configuration with one server's entry changed. */
const patched = (
  raw: RawConfig,
  server: 'source' | 'destination',
  patch: Readonly<Record<string, unknown>>,
): RawConfig => {
  if (server === 'destination') {
    return { ...raw, destination: { ...(raw.destination as object), ...patch } };
  }
  const [first, ...rest] = raw.sources as object[];
  return { ...raw, sources: [{ ...first, ...patch }, ...rest] };
};

interface Servers {
  readonly source: OrthancServer;
  readonly destination: OrthancServer;
}

interface Arranged {
  /** The configuration of the run that meets the bad input. */
  readonly config: RawConfig;
  /** The origin of the server the forwarder sees misbehave, as its errors must name it. */
  readonly origin: string;
  /** Removes the fault; returns the configuration of the run that must then move everything. */
  readonly heal: () => RawConfig;
  readonly front?: HttpFront;
}

/** Hands a front back, to be closed after the test. */
type KeepFront = (front: HttpFront) => HttpFront;

interface BadInputCase {
  readonly name: string;
  readonly arrange: (servers: Servers, keep: KeepFront) => Promise<Arranged>;
  readonly kind: 'transient' | 'permanent';
  /** The work item's error: what failed and why. */
  readonly work: RegExp;
  /** When the fault also stops the change feed: the poll's error, and the one `status` shows. */
  readonly poll?: { readonly feed: RegExp; readonly status: RegExp };
}

const baseConfig = ({ source, destination }: Servers): RawConfig =>
  configFor([{ id: 'site-a', server: source }], destination, SETTINGS);

/** A real Orthanc seen through a front that fakes the answers the rule picks. */
const throughFront =
  (server: 'source' | 'destination', rule: FaultRule) =>
  async (servers: Servers, keep: KeepFront): Promise<Arranged> => {
    const front = keep(await HttpFront.start(servers[server].url, rule));
    // The forwarder reads a source's REST API, and a destination's DICOMweb API under its own path.
    const url = front.urlFor(server === 'source' ? servers.source.url : servers.destination.dicomWebUrl);
    const config = patched(baseConfig(servers), server, { url });
    return {
      config,
      origin: front.origin,
      heal: () => {
        front.rule = undefined;
        return config;
      },
      front,
    };
  };

/** A real Orthanc, configured with a wrong password. */
const wrongPassword =
  (server: 'source' | 'destination') =>
  async (servers: Servers): Promise<Arranged> => ({
    config: patched(baseConfig(servers), server, { password: WRONG_PASSWORD }),
    origin: new URL(servers[server].url).origin,
    heal: () => baseConfig(servers),
  });

const CASES: readonly BadInputCase[] = [
  {
    name: 'a source behind a login page (HTML for every request)',
    arrange: throughFront('source', () => ({ answer: LOGIN_PAGE })),
    kind: 'transient',
    work: /reading a study at \S+: expected JSON, got text\/html/,
    poll: {
      feed: /reading the change feed at \S+: expected JSON, got text\/html/,
      status: /reading the last change at \S+: expected JSON, got text\/html/,
    },
  },
  {
    name: 'a source whose JSON answers come labelled text/plain',
    arrange: throughFront('source', () => ({ rewrite: relabelled })),
    kind: 'transient',
    work: /reading a study at \S+: expected JSON, got text\/plain/,
    poll: {
      feed: /reading the change feed at \S+: expected JSON, got text\/plain/,
      status: /reading the last change at \S+: expected JSON, got text\/plain/,
    },
  },
  {
    name: "a source answering truncated JSON for a study's instances",
    arrange: throughFront('source', ({ path }) =>
      /^\/studies\/[^/]+\/instances(\?|$)/.test(path) ? { rewrite: truncated } : undefined,
    ),
    kind: 'transient',
    work: /listing a study's instances at \S+: the JSON answer is truncated or malformed/,
  },
  {
    name: 'a source answering an HTML page (200) instead of an instance file',
    arrange: throughFront('source', ({ path }) =>
      /^\/instances\/[^/]+\/file(\?|$)/.test(path) ? { answer: LOGIN_PAGE } : undefined,
    ),
    kind: 'transient',
    work: /reading an instance at \S+: expected DICOM, got text\/html/,
  },
  {
    name: 'a destination answering truncated JSON to QIDO-RS',
    arrange: throughFront('destination', ({ method, path }) =>
      method === 'GET' && /^\/dicom-web\/studies\/[^/]+\/instances(\?|$)/.test(path)
        ? { rewrite: truncated }
        : undefined,
    ),
    kind: 'transient',
    work: /QIDO-RS at \S+: the JSON answer is truncated or malformed/,
  },
  {
    name: 'a destination answering STOW-RS without its sequences (the files dropped)',
    arrange: throughFront('destination', (request) =>
      isStow(request) ? { answer: STOW_WITHOUT_SEQUENCES } : undefined,
    ),
    kind: 'transient',
    work: /STOW-RS at \S+ answered 200 without a result/,
  },
  {
    name: 'a source refusing the credentials (401)',
    arrange: wrongPassword('source'),
    kind: 'permanent',
    work: /reading a study at \S+ answered 401/,
    poll: {
      feed: /reading the change feed at \S+ answered 401/,
      status: /reading the last change at \S+ answered 401/,
    },
  },
  // A destination refusing the credentials is not bad input: its studies wait for the fix instead
  // of being dead-lettered (test/destination-faults.test.ts).
];

// ---------------------------------------------------------------------------------------------

describe('bad input', () => {
  const { fleet, workPath, closeAfterTest } = useTestbed('bad-input');

  const startSourceAndDestination = async (): Promise<Servers> => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a'], {
      username: USERNAME,
      password: PASSWORD,
    });
    return { source, destination };
  };

  const openLocalState = (config: ForwarderConfig): LocalState =>
    openState(workPath('state.sqlite'), { maxReceives: config.retry.maxAttempts });

  for (const [index, badCase] of CASES.entries()) {
    it(`${badCase.name}: a clear error, counted, nothing lost`, async () => {
      const servers = await startSourceAndDestination();
      const { source, destination } = servers;
      // Two studies of two series of three instances.
      const set = generateStudies(shape(`bad-input-${index}`));
      await upload(source, set.instances);
      const studyIds = (await source.rest<string[]>('GET', '/studies')).sort();
      expect(studyIds).toHaveLength(2);
      const arranged = await badCase.arrange(servers, closeAfterTest);
      const config = parseConfig(arranged.config);
      const state = openLocalState(config);
      try {
        // A fault that stops the feed would leave the workers nothing to do: queue the studies as
        // the feed would have, so that the move meets the fault too.
        if (badCase.poll !== undefined) {
          await state.queue.enqueue(
            studyIds.map((studyId) => ({ sourceId: 'site-a', studyId, reason: 'stable' })),
          );
        }
        const capture = captureLog();
        const { summary, outcomes } = await runUntilIdle(config, state, capture.log);
        if (arranged.front !== undefined) {
          expect(arranged.front.faked).toBeGreaterThan(0);
          expect(arranged.front.errors).toEqual([]);
        }

        // Nothing lost: nothing left the source, nothing reached the destination, and nothing was
        // taken for a refusal for good (that would never be sent again).
        expect(outcomes).toEqual([]);
        expect(await heldUids(source)).toEqual(uidsOf(set.instances));
        expect(await instanceCount(destination)).toBe(0);
        expect(await state.ledger.rejected()).toEqual([]);

        // Counted: every study dead-lettered with a clear error, and the log says so.
        const deadLetters = await collect(state.queue.deadLetters());
        expect(
          [
            ...new Set(deadLetters.map((letter) => (JSON.parse(letter.body) as { studyId: string }).studyId)),
          ].sort(),
        ).toEqual(studyIds);
        for (const letter of deadLetters) {
          expectClearError(letter.lastError, arranged.origin, badCase.work, CREDENTIALS);
          // A permanent failure is not retried; a transient one is, until retry.maxAttempts.
          expect(letter.receiveCount).toBe(badCase.kind === 'permanent' ? 1 : config.retry.maxAttempts);
        }
        expect(summary.deadLettered).toBe(deadLetters.length);
        const deadLettered = capture.entries.filter((entry) => entry.message === 'work item dead-lettered');
        expect(deadLettered).toHaveLength(deadLetters.length);
        for (const entry of deadLettered) {
          expect(entry).toMatchObject({ level: 'error', kind: badCase.kind, sourceId: 'site-a' });
          expectClearError(String(entry.error), arranged.origin, badCase.work, CREDENTIALS);
        }

        if (badCase.poll === undefined) {
          expect(summary.failedSources).toEqual([]);
        } else {
          // The source counted as failed, each poll's failure logged, and `status` says why.
          expect(summary.failedSources).toEqual(['site-a']);
          const pollFailures = capture.entries.filter((entry) => entry.message === 'source poll failed');
          expect(pollFailures.length).toBeGreaterThanOrEqual(config.retry.maxAttempts);
          for (const entry of pollFailures) {
            expectClearError(String(entry.error), arranged.origin, badCase.poll.feed, CREDENTIALS);
          }
          const status = await gatherStatus(config, state);
          expectClearError(status.sources[0]?.unknown, arranged.origin, badCase.poll.status, CREDENTIALS);
        }
        expectNoSecret(JSON.stringify(capture.entries), CREDENTIALS);

        // Once the fault is gone, the dead letters redriven: everything moves, byte for byte.
        const healed = parseConfig(arranged.heal());
        expect(await state.queue.redrive()).toBe(deadLetters.length);
        const after = await new LocalRunner(healed, state, captureLog().log).run({ untilIdle: true });
        expect(after.deadLettered).toBe(0);
        expect(after.failedSources).toEqual([]);
        expect(await instanceCount(source)).toBe(0);
        expect(await heldUids(destination)).toEqual(uidsOf(set.instances));
        await expectAllAtDestination(destination, set.instances);
      } finally {
        state.close();
      }
    });
  }

  for (const verify of ['qido', 'stow'] as const) {
    it(`a STOW-RS answer without its sequences for files the destination did store: nothing deleted unverified (verify ${verify})`, async () => {
      const servers = await startSourceAndDestination();
      const { source, destination } = servers;
      const set = generateStudies(shape(`stow-stored-${verify}`, { patients: 1 }));
      await upload(source, set.instances);
      // The files reach the destination; only its answer is replaced.
      const front = closeAfterTest(
        await HttpFront.start(destination.url, (request) =>
          isStow(request) ? { rewrite: () => STOW_WITHOUT_SEQUENCES } : undefined,
        ),
      );
      const config = parseConfig(
        patched({ ...baseConfig(servers), verify }, 'destination', {
          url: front.urlFor(destination.dicomWebUrl),
        }),
      );
      const state = openLocalState(config);
      try {
        const capture = captureLog();
        const { summary, outcomes } = await runUntilIdle(config, state, capture.log);
        expect(front.faked).toBeGreaterThan(0);
        expect(front.errors).toEqual([]);

        const failures = capture.entries.filter((entry) => entry.message === 'work item failed, will retry');
        if (verify === 'stow') {
          // Trusting STOW answers, an answer that names nothing verifies nothing: the attempt fails,
          // nothing is deleted, and the retry finds the files with QIDO-RS before sending any.
          expect(failures.length).toBeGreaterThan(0);
          for (const entry of failures) {
            expect(entry.kind).toBe('transient');
            expectClearError(
              String(entry.error),
              front.origin,
              /STOW-RS at \S+ answered 200 without a result/,
              CREDENTIALS,
            );
          }
          expect(outcomes[0]).toMatchObject({
            result: 'moved',
            sent: 0,
            alreadyPresent: set.instances.length,
          });
        } else {
          // QIDO-RS verifies what the answer did not say: moved in one attempt.
          expect(failures).toEqual([]);
          expect(outcomes[0]).toMatchObject({ result: 'moved', instances: set.instances.length });
        }
        expect(outcomes[0]?.deleted).toBe(set.instances.length);
        expect(summary.deadLettered).toBe(0);
        expect(await instanceCount(source)).toBe(0);
        await expectAllAtDestination(destination, set.instances);
        expectNoSecret(JSON.stringify(capture.entries), CREDENTIALS);
      } finally {
        state.close();
      }
    });
  }

  const deletions = [
    ['snapshot-taken', 'study'],
    ['snapshot-taken', 'series'],
    ['sent', 'study'],
  ] as const;
  for (const [step, scope] of deletions) {
    it(`a ${scope} deleted at the source by someone else at '${step}': no error, no dead letter, nothing lost`, async () => {
      const { source, destination } = await startSourceAndDestination();
      // One study of two series of three instances.
      const set = generateStudies(shape(`deleted-${scope}-at-${step}`, { patients: 1 }));
      await upload(source, set.instances);
      const [studyId] = await source.rest<string[]>('GET', '/studies');
      const config = parseConfig(configFor([{ id: 'site-a', server: source }], destination, SETTINGS));
      const state = openLocalState(config);
      try {
        let deletedUids: string[] | undefined;
        const onStep = async (at: MoveStep, id: string) => {
          if (at !== step || deletedUids !== undefined) return;
          const { Series: series } = await source.rest<{ Series: string[] }>('GET', `/studies/${id}`);
          const path = scope === 'study' ? `/studies/${id}` : `/series/${series[0]}`;
          const doomed = await source.rest<{ MainDicomTags: { SOPInstanceUID: string } }[]>(
            'GET',
            `${path}/instances`,
          );
          deletedUids = doomed.map((instance) => instance.MainDicomTags.SOPInstanceUID).sort();
          await source.rest('DELETE', path);
        };
        const capture = captureLog();
        const { summary, outcomes } = await runUntilIdle(config, state, capture.log, { onStep });
        expect(deletedUids).toHaveLength(scope === 'study' ? 6 : 3);

        // Without error: no failed attempt, no dead letter, no refusal.
        expect(capture.entries.filter((entry) => entry.level === 'error')).toEqual([]);
        expect(summary.deadLettered).toBe(0);
        expect(await state.queue.stats()).toEqual({ waiting: 0, inFlight: 0, deadLetters: 0 });
        expect(await state.ledger.rejected()).toEqual([]);

        // Nothing lost: what someone else deleted before it was sent is gone by their hand; every
        // other instance is at the destination, byte for byte, and no longer at the source.
        const deleted = new Set(deletedUids);
        const kept = set.instances.filter(
          (instance) => step === 'sent' || !deleted.has(instance.sopInstanceUid),
        );
        expect(await instanceCount(source)).toBe(0);
        expect(await heldUids(destination)).toEqual(uidsOf(kept));
        await expectAllAtDestination(destination, kept);

        const [first, ...later] = outcomes;
        expect(first).toMatchObject({
          studyId,
          instances: set.instances.length,
          sent: kept.length,
          // What the forwarder deleted itself: what someone else deleted after it was verified
          // was gone when the forwarder listed the study again before deleting.
          deleted: kept.filter((instance) => !deleted.has(instance.sopInstanceUid)).length,
          rejected: 0,
        });
        // Nothing sent and nothing verified: the study went by someone else's hand.
        expect(first?.result).toBe(kept.length === 0 ? 'gone' : 'moved');
        // The feed may queue the study again: it is gone by then.
        for (const outcome of later) expect(outcome).toMatchObject({ studyId, result: 'gone' });
      } finally {
        state.close();
      }
    });
  }
});
