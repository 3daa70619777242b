/**
 * Local mode: the poller and the forwarder in one process, on a SQLite state file. Each source
 * is polled on its own schedule (a failing one backs off without holding up the others) and a
 * fixed number of workers take studies from the queue.
 */
import { hostname } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { type FeedContext, type PollReport, pollSource } from '../core/changes-feed.ts';
import type { ForwarderConfig } from '../core/config.ts';
import type { Destination } from '../core/destinations.ts';
import { buildEngine, feedSettings } from '../core/engine.ts';
import {
  DestinationUnavailableError,
  describe,
  failureKind,
  NotYetError,
  WaitError,
} from '../core/errors.ts';
import { decideOnFailure } from '../core/failure-policy.ts';
import { type Engine, forwardWorkItem } from '../core/forward-work-item.ts';
import { warnOfPlainHttpAuth } from '../core/http.ts';
import type { Log } from '../core/log.ts';
import { type Metrics, noMetrics, recordFailure, recordOutcome, recordPoll } from '../core/metrics.ts';
import type { MoveContext } from '../core/move-study.ts';
import { moveTiming } from '../core/move-timing.ts';
import type { StudyOutcome } from '../core/ports.ts';
import { DAY_MS, forgetGoneRefusals } from '../core/retention.ts';
import { backoffDelay } from '../core/retry.ts';
import type { LocalState } from './sqlite-state.ts';

export interface RunOptions {
  /**
   * Return once every source is read to Done with no sweep under way, nothing waits to become
   * stable and the queue is empty.
   */
  readonly untilIdle: boolean;
  /** Stops the run: work in flight finishes, nothing new starts. */
  readonly signal?: AbortSignal;
  /** Called after each study outcome, for a progress display. */
  readonly onOutcome?: (outcome: StudyOutcome) => void;
}

/** What a runner is made of: the configuration, its state file (and where it is), its log. */
export interface RunParts {
  readonly config: ForwarderConfig;
  readonly state: LocalState;
  readonly statePath: string;
  readonly log: Log;
}

/** What a run tells, besides its summary: each step of a move (tests), and to the metrics. */
export interface RunnerObservers {
  readonly onStep?: MoveContext['onStep'];
  readonly onDelivery?: MoveContext['onDelivery'];
  readonly metrics?: Metrics;
}

export interface SourceStatus {
  lastPoll: PollReport | undefined;
  /** Successful polls so far, and when the last one ended (epoch ms). */
  polls: number;
  lastPollAt: number | undefined;
  consecutiveFailures: number;
  lastError: string | undefined;
}

export interface RunSummary {
  readonly studiesMoved: number;
  readonly instancesMoved: number;
  readonly bytesMoved: number;
  readonly rejected: number;
  readonly deadLettered: number;
  readonly failedSources: readonly string[];
  /** Sources paused when the run ended: their studies wait in the state file for a later run. */
  readonly pausedSources: readonly string[];
  /** Destinations refusing the forwarder as a whole when the run ended: the studies routed to them wait. */
  readonly unavailableDestinations: readonly string[];
  readonly durationMs: number;
}

const RUNNER_LEASE = 'local-runner';
const RUNNER_LEASE_MS = 15_000;
/** Longer than any move; in-flight messages of a crashed runner are reclaimed at start anyway. */
const VISIBILITY_TIMEOUT_MS = 30 * 60_000;
const IDLE_WAIT_MS = 200;
/**
 * Each poll's time: a sweep of a million studies, or a long feed, goes on across polls, each
 * reading the feed first, so that neither holds up new studies.
 */
export const POLL_BUDGET_MS = 10_000;

/** The poll's deadline stopped it, or a sweep is under way: the next poll follows at once. */
const unfinished = (poll: PollReport | undefined): boolean =>
  poll !== undefined && (poll.outOfTime || poll.sweeping);

const abortable = (ms: number, signal: AbortSignal) =>
  sleep(ms, undefined, { signal }).catch(() => undefined);

export class LocalRunner {
  private readonly config: ForwarderConfig;
  private readonly state: LocalState;
  private readonly log: Log;
  private readonly owner = `${hostname()}:${process.pid}`;
  private readonly sources = new Map<string, SourceStatus>();
  private readonly totals = {
    studiesMoved: 0,
    instancesMoved: 0,
    bytesMoved: 0,
    rejected: 0,
    deadLettered: 0,
  };
  private active = 0;
  private engine: Engine | undefined;
  private readonly metrics: Metrics;
  /**
   * The work items (bodies, with their source) whose last attempt ended waiting for a destination
   * that refuses us, or for a time (a transfer window, a minimum age): `--until-idle` does not wait
   * for them, since nothing in this run fixes the one and the other may be hours away.
   */
  private readonly longWaits = new Map<string, string | undefined>();

  private readonly observers: RunnerObservers;
  private startedAt: number | undefined;

  constructor(config: ForwarderConfig, state: LocalState, log: Log, observers: RunnerObservers = {}) {
    this.config = config;
    this.state = state;
    this.log = log;
    this.observers = observers;
    this.metrics = observers.metrics ?? noMetrics;
    for (const source of config.sources) {
      this.sources.set(source.id, {
        lastPoll: undefined,
        polls: 0,
        lastPollAt: undefined,
        consecutiveFailures: 0,
        lastError: undefined,
      });
    }
  }

  async run(options: RunOptions): Promise<RunSummary> {
    const started = Date.now();
    this.startedAt = started;
    // A configuration error only the endpoints reveal (an unset passwordEnv, an unreadable PEM)
    // fails here, before the run holds the state file's lease or starts a loop it would leave running.
    this.engine = {
      ...buildEngine(this.config, {
        ledger: this.state.ledger,
        feed: this.state.feed,
        log: this.log,
        owner: this.owner,
      }),
      onStep: this.observers.onStep,
      onDelivery: this.observers.onDelivery,
    };
    warnOfPlainHttpAuth(this.config, this.log);
    const stop = new AbortController();
    const onAbort = () => stop.abort();
    options.signal?.addEventListener('abort', onAbort, { once: true });
    await this.takeOver(stop.signal);
    const heartbeat = setInterval(() => {
      void this.state.ledger.acquireLease(RUNNER_LEASE, this.owner, RUNNER_LEASE_MS, Date.now());
    }, RUNNER_LEASE_MS / 3);
    const workers = Array.from({ length: this.config.concurrency }, (_, index) =>
      this.workLoop(`${this.owner}:w${index}`, stop.signal, options),
    );
    const pollers = this.config.sources.map((source) => this.pollLoop(source.id, stop.signal));
    if (options.untilIdle) void this.stopWhenIdle(stop);
    await Promise.all([...workers, ...pollers, this.pruneLoop(stop.signal)]);
    clearInterval(heartbeat);
    options.signal?.removeEventListener('abort', onAbort);
    await this.state.ledger.releaseLease(RUNNER_LEASE, this.owner);
    return {
      ...this.totals,
      failedSources: [...this.sources].filter(([, s]) => s.consecutiveFailures > 0).map(([id]) => id),
      pausedSources: this.pausedSources(),
      unavailableDestinations: this.engine.destinations
        .filter((destination) => destination.health.faults !== undefined)
        .map((destination) => destination.id),
      durationMs: Date.now() - started,
    };
  }

  /**
   * One runner per state file. Once we hold the runner lease, any study lease or in-flight
   * message belongs to a runner that is gone: take them back instead of waiting for them to expire.
   */
  private async takeOver(signal: AbortSignal): Promise<void> {
    const deadline = Date.now() + RUNNER_LEASE_MS + 1_000;
    while (!(await this.state.ledger.acquireLease(RUNNER_LEASE, this.owner, RUNNER_LEASE_MS, Date.now()))) {
      const holder = this.state.ledger.leaseHolder(RUNNER_LEASE);
      if (holder !== undefined && localProcess(holder) === 'dead') {
        // A run on this machine that was killed: no need to wait for its lease to expire.
        this.state.ledger.dropLeaseOf(RUNNER_LEASE, holder);
        continue;
      }
      // A live run of this machine will not let go: say so at once. One of another machine (a
      // shared state file) may be gone without a trace: its lease is waited out.
      if (holder !== undefined && localProcess(holder) === 'alive') throw new StateInUseError(holder);
      if (Date.now() > deadline || signal.aborted) throw new StateInUseError(holder);
      await abortable(500, signal);
    }
    const reclaimed = this.state.reclaim(this.owner);
    if (reclaimed.messages > 0 || reclaimed.leases > 0) {
      this.log.warn('resuming after an interrupted run', { ...reclaimed });
    }
  }

  private feedContext(sourceId: string, engine: Engine): FeedContext {
    const client = engine.sources.get(sourceId);
    if (client === undefined) throw new Error(`unknown source ${sourceId}`);
    return {
      sourceId,
      source: client,
      store: this.state.feed,
      sink: this.state.queue,
      log: this.log,
      ...feedSettings(this.config, this.state.ledger),
      timing: moveTiming(this.config, sourceId),
    };
  }

  /** The run's one engine, under a worker's own lease owner: the workers share its clients and what it learns. */
  private engineFor(owner: string): Engine {
    if (this.engine === undefined) throw new Error('the engine is built when the run starts');
    return { ...this.engine, owner };
  }

  private async pollLoop(sourceId: string, signal: AbortSignal): Promise<void> {
    const status = this.sources.get(sourceId) as SourceStatus;
    const context = this.feedContext(sourceId, this.engineFor(this.owner));
    while (!signal.aborted) {
      try {
        const wasPaused = status.lastPoll?.paused === true;
        status.lastPoll = await pollSource({ ...context, deadline: Date.now() + POLL_BUDGET_MS });
        status.polls++;
        status.lastPollAt = Date.now();
        recordPoll(this.metrics, sourceId, status.lastPoll);
        if (status.lastPoll.paused !== wasPaused) {
          const change = status.lastPoll.paused
            ? 'source paused: not polled, its studies wait'
            : 'source resumed';
          this.log.info(change, { sourceId });
        }
        if (status.consecutiveFailures > 0) this.log.info('source reachable again', { sourceId });
        status.consecutiveFailures = 0;
        status.lastError = undefined;
        if (status.lastPoll.changesRead > 0 || status.lastPoll.queued > 0 || status.lastPoll.swept > 0) {
          this.log.info('source polled', { sourceId, ...status.lastPoll });
        }
      } catch (error) {
        status.consecutiveFailures++;
        status.lastError = describe(error);
        this.metrics.add('SourceUnreachable', 1, 'Count', sourceId);
        this.log.error('source poll failed', {
          sourceId,
          error: status.lastError,
          consecutiveFailures: status.consecutiveFailures,
        });
      }
      const interval = this.config.pollIntervalSeconds * 1000;
      const delay =
        status.consecutiveFailures === 0
          ? unfinished(status.lastPoll)
            ? 0
            : interval
          : Math.max(interval, backoffDelay(status.consecutiveFailures, this.config.retry));
      await abortable(delay, signal);
    }
  }

  /** Prunes the ledger at the start of the run and once a day after: retention is counted in days. */
  private async pruneLoop(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      await this.prune();
      await abortable(DAY_MS, signal);
    }
  }

  private async prune(): Promise<void> {
    const { outcomeDays, refusalDays, auditDays } = this.config.retention;
    const now = Date.now();
    try {
      const outcomes = this.state.ledger.pruneOutcomes(now - outcomeDays * DAY_MS);
      const deletions = this.state.ledger.pruneDeletions(now - auditDays * DAY_MS);
      const sources = this.engineFor(this.owner).sources;
      const refusals = await forgetGoneRefusals(this.state.ledger, sources, now - refusalDays * DAY_MS);
      if (outcomes > 0 || deletions > 0 || refusals.forgotten > 0 || refusals.unchecked > 0) {
        this.log.info('ledger pruned', { outcomes, deletionParts: deletions, ...refusals });
      }
    } catch (error) {
      this.log.warn('pruning the ledger failed; the next run or day tries again', { error: describe(error) });
    }
  }

  private async workLoop(owner: string, signal: AbortSignal, options: RunOptions): Promise<void> {
    const engine = this.engineFor(owner);
    while (!signal.aborted) {
      const [message] = await this.state.queue.receive(1, VISIBILITY_TIMEOUT_MS);
      if (message === undefined) {
        await abortable(IDLE_WAIT_MS, signal);
        continue;
      }
      this.active++;
      try {
        const outcome = await forwardWorkItem(engine, message.body, { attempt: message.receiveCount });
        await this.state.queue.ack(message.handle);
        this.longWaits.delete(message.body);
        this.count(outcome);
        recordOutcome(this.metrics, outcome);
        options.onOutcome?.(outcome);
      } catch (error) {
        await this.fail(message, error);
      } finally {
        this.active--;
      }
    }
  }

  private async fail(message: { handle: string; body: string; receiveCount: number }, error: unknown) {
    const reason = describe(error);
    const decision = decideOnFailure(error, message.receiveCount, this.config.retry);
    recordFailure(this.metrics, error, decision, safeIds(message.body).sourceId);
    if (error instanceof DestinationUnavailableError || error instanceof NotYetError)
      this.longWaits.set(message.body, safeIds(message.body).sourceId);
    else this.longWaits.delete(message.body);
    const attributes = {
      error: reason,
      kind: failureKind(error),
      receiveCount: message.receiveCount,
      ...safeIds(message.body),
    };
    // A wait (a paused source, a destination refusing us) is logged once where it is found.
    if (error instanceof WaitError) this.log.debug('work item waits', attributes);
    else
      this.log.error(
        decision.action === 'dead-letter' ? 'work item dead-lettered' : 'work item failed, will retry',
        attributes,
      );
    if (decision.action === 'dead-letter') {
      await this.state.queue.deadLetter(message.handle, reason);
      this.totals.deadLettered++;
    } else {
      await this.state.queue.release(message.handle, reason, decision.delayMs, { counted: decision.counted });
    }
  }

  private count(outcome: StudyOutcome): void {
    if (outcome.result === 'moved' || outcome.result === 'copied') {
      this.totals.studiesMoved++;
    }
    this.totals.instancesMoved += outcome.sent;
    this.totals.bytesMoved += outcome.bytes;
    this.totals.rejected += outcome.rejected;
  }

  /** The sources the last poll found paused. */
  private pausedSources(): string[] {
    return [...this.sources].filter(([, s]) => s.lastPoll?.paused === true).map(([id]) => id);
  }

  /**
   * Idle: every source read to Done with nothing waiting and no sweep under way (or given up on,
   * or paused), and no work queued or running but what waits for an operator: a paused source's
   * (until its resume), what waits for a destination that refuses us (until it is fixed), and
   * what waits for its transfer window or its minimum age.
   */
  private async isIdle(): Promise<boolean> {
    for (const status of this.sources.values()) {
      const givenUp = status.consecutiveFailures >= this.config.retry.maxAttempts;
      const drained =
        status.consecutiveFailures === 0 &&
        status.lastPoll !== undefined &&
        (status.lastPoll.paused || (status.lastPoll.waiting === 0 && !unfinished(status.lastPoll)));
      if (!givenUp && !drained) return false;
    }
    const paused = this.pausedSources();
    const stats = await this.state.queue.stats({ exceptSources: paused });
    const waitingLong = [...this.longWaits.values()].filter(
      (sourceId) => sourceId === undefined || !paused.includes(sourceId),
    ).length;
    return stats.waiting + stats.inFlight <= waitingLong && this.active === 0;
  }

  private pollCounts(): number[] {
    return [...this.sources.values()].map((status) => status.polls + status.consecutiveFailures);
  }

  /**
   * Stops the run once it has been idle across a further poll of every source, so that a study
   * queued or deleted just before the first check is not missed.
   */
  private async stopWhenIdle(stop: AbortController): Promise<void> {
    let idleSince: number[] | undefined;
    while (!stop.signal.aborted) {
      if (!(await this.isIdle())) {
        idleSince = undefined;
      } else if (idleSince === undefined) {
        idleSince = this.pollCounts();
      } else if (this.pollCounts().every((count, index) => count > (idleSince?.[index] ?? count))) {
        stop.abort();
      }
      await abortable(IDLE_WAIT_MS, stop.signal);
    }
  }

  sourceStatus(): ReadonlyMap<string, SourceStatus> {
    return this.sources;
  }

  /** When the run started (epoch ms); undefined before. */
  runStartedAt(): number | undefined {
    return this.startedAt;
  }

  /** The run's destinations and what this process saw of their health; none before the run starts. */
  destinationHealth(): readonly Pick<Destination, 'id' | 'health'>[] {
    return this.engine?.destinations ?? [];
  }
}

/** The source and study IDs of a message, when it has them: safe to log, unlike an arbitrary body. */
const safeIds = (body: string): { sourceId?: string; studyId?: string } => {
  try {
    const parsed = JSON.parse(body) as { sourceId?: unknown; studyId?: unknown };
    return {
      ...(typeof parsed.sourceId === 'string' ? { sourceId: parsed.sourceId.slice(0, 64) } : {}),
      ...(typeof parsed.studyId === 'string' ? { studyId: parsed.studyId.slice(0, 44) } : {}),
    };
  } catch {
    return {};
  }
};

/** A lease owner `host:pid` naming a process of this machine that no longer exists. */
/** A second run on a state file: the operator's to sort out, told who holds it. */
export class StateInUseError extends Error {
  override name = 'StateInUseError';

  constructor(holder: string | undefined) {
    const [host, pid] = (holder ?? '').split(':');
    super(
      `another orthanc-forwarder run${pid === undefined ? '' : ` (pid ${pid} on ${host})`} is using this state file: stop it first, or give this run another --state`,
    );
  }
}

/**
 * What becomes of a lease holder `host:pid`: a process of this machine that is `alive` or `dead`
 * (signal 0 answers ESRCH), or `unknown` (another machine's, this very process, or not a pid).
 */
const localProcess = (owner: string): 'alive' | 'dead' | 'unknown' => {
  const [host, pid] = owner.split(':');
  if (host !== hostname() || pid === undefined || !/^\d+$/.test(pid) || Number(pid) === process.pid)
    return 'unknown';
  try {
    process.kill(Number(pid), 0);
    return 'alive';
  } catch (error) {
    // EPERM: it exists, another user's.
    const code = (error as NodeJS.ErrnoException).code;
    return code === 'ESRCH' ? 'dead' : code === 'EPERM' ? 'alive' : 'unknown';
  }
};
