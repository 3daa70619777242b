/**
 * The poller at hospital scale (issue 13, item 2): a source of 100,000 studies, polled on a
 * schedule, each poll with a budget. A real Orthanc cannot be filled with that many studies in a
 * test, so the source is the stand-in of test/support/orthanc-standin.ts, which answers in
 * Orthanc 1.10's shapes and counts each request's cost in a virtual clock: the budget is checked
 * in that clock, never in wall-clock time. Its studies: most announced stable by the feed, a
 * tenth whose stability a restart forgot (watch list), a tenth whose changes a wiped database
 * lost (sweep only); between polls the forwarder moves some queued studies away and new ones
 * arrive. The same runs on DynamoDB Local with 2,000 studies.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DynamoFeedStore } from '../lambdas/aws/dynamo-feed-store.ts';
import { DynamoLedger } from '../lambdas/aws/dynamo-ledger.ts';
import type { FeedStateStore, Ledger } from '../lambdas/core/ports.ts';
import { openState } from '../lambdas/local/sqlite-state.ts';
import { type DynamoDbLocal, localClient, startDynamoDbLocal } from '../testbed/dynamodb-local.ts';
import { OrthancStandIn } from './support/orthanc-standin.ts';
import {
  COSTS,
  expectBoundedHeadway,
  fillSource,
  pollUntil,
  queuedCounts,
  type ScaleRun,
  scaleRun,
} from './support/scale-run.ts';

const STUDIES = Number(process.env.FEED_SCALE_STUDIES ?? 100_000);

const queuedTwice = (run: ScaleRun): string[] =>
  [...queuedCounts(run.items)].flatMap(([id, count]) => (count > 1 ? [id] : []));

/** The feed is read at every poll: what arrives during a sweep is queued by the next poll. */
const expectFeedNotHeldUp = (run: ScaleRun, arrivalsPerPoll: number): void => {
  const sweeping = run.reports.filter((_, index) => run.reports[index - 1]?.sweeping === true);
  expect(sweeping.length).toBeGreaterThan(0);
  for (const report of sweeping) expect(report.changesRead).toBeGreaterThanOrEqual(2 * arrivalsPerPoll);
};

const scenario = async (
  store: FeedStateStore,
  ledger: Ledger,
  options: {
    studies: number;
    budgetMs: number;
    polls: number;
    arrivalsPerPoll: number;
    listPageSize?: number;
  },
) => {
  const standIn = new OrthancStandIn();
  standIn.costs = COSTS;
  await standIn.start();
  try {
    const source = fillSource(standIn, options.studies);
    const { arrivalsPerPoll } = options;
    const run = scaleRun(source, store, ledger, { ...options, movesPerPoll: 20 });
    const everyStudyQueued = () => queuedCounts(run.items).size === source.created.size;
    await pollUntil(run, everyStudyQueued, options.polls);

    expectBoundedHeadway(run);
    expectFeedNotHeldUp(run, arrivalsPerPoll);
    expect(queuedTwice(run)).toEqual([]);
    expect(new Set(queuedCounts(run.items).keys())).toEqual(source.created);
    const firstPolls = run.reports.length;

    // Another sweep finds every study queued in the state it is in: it queues none again.
    await run.poll({ sweepNow: true });
    await pollUntil(run, everyStudyQueued, options.polls);
    expect(queuedTwice(run)).toEqual([]);

    // Other settings: every study still at the source is looked at again, once.
    const present = new Set(standIn.studies.map((study) => study.id));
    run.settings = 'other settings';
    await pollUntil(run, everyStudyQueued, options.polls);
    for (const [id, count] of queuedCounts(run.items))
      expect({ id, count }).toEqual({ id, count: present.has(id) ? 2 : 1 });
    expectBoundedHeadway(run);
    return {
      polls: firstPolls,
      requests: Object.fromEntries(standIn.requests),
      virtualSeconds: run.used.slice(0, firstPolls).reduce((total, used) => total + used, 0) / 1000,
      longestPollMs: Math.max(...run.used),
      budgetMs: run.budgetMs,
      sweepingPolls: run.reports.filter((report) => report.sweeping).length,
    };
  } finally {
    await standIn.stop();
  }
};

describe('poller at scale', () => {
  it(`queues each of ${STUDIES} studies exactly once across polls, each within its budget (SQLite)`, async () => {
    const state = openState(':memory:');
    try {
      const figures = await scenario(state.feed, state.ledger, {
        studies: STUDIES,
        budgetMs: 10_000,
        polls: 400,
        arrivalsPerPoll: 50,
      });
      console.log(`poller at scale, SQLite: ${JSON.stringify(figures)}`);
    } finally {
      state.close();
    }
  }, 900_000);

  describe('on DynamoDB Local', () => {
    let dynamo: DynamoDbLocal | undefined;
    beforeAll(async () => {
      dynamo = await startDynamoDbLocal();
    });
    afterAll(async () => {
      await dynamo?.stop();
    });

    it('queues each of 2,000 studies exactly once across polls, each within its budget', async () => {
      const local = dynamo as DynamoDbLocal;
      await local.createTable('scale');
      const client = localClient(local.endpoint);
      try {
        const figures = await scenario(
          new DynamoFeedStore(client, 'scale'),
          new DynamoLedger(client, 'scale'),
          {
            studies: 2_000,
            budgetMs: 600,
            polls: 300,
            arrivalsPerPoll: 10,
            // Pages of 200: the sweep then takes several polls, as 100,000 studies do in pages of 1,000.
            listPageSize: 200,
          },
        );
        console.log(`poller at scale, DynamoDB: ${JSON.stringify(figures)}`);
      } finally {
        client.destroy();
      }
    }, 600_000);
  });
});
