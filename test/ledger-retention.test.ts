/**
 * Ledger retention against a real source: a local run prunes outcomes older than
 * `retention.outcomeDays` and the audit trail's deletions older than `retention.auditDays`, and
 * forgets an old refusal only once its source no longer holds the instance; a refusal of an
 * instance still at the source stays, so the instance is never sent again.
 */
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../lambdas/core/config.ts';
import { createEndpoint } from '../lambdas/core/http.ts';
import { OrthancClient } from '../lambdas/core/orthanc-client.ts';
import { DAY_MS, forgetGoneRefusals } from '../lambdas/core/retention.ts';
import { openState } from '../lambdas/local/sqlite-state.ts';
import { generateStudies } from '../testbed/dicom-generator.ts';
import { uploadToOrthanc } from '../testbed/upload.ts';
import {
  captureLog,
  configFor,
  heldUids,
  runUntilIdle,
  shape,
  startServers,
  uidsOf,
  useTestbed,
} from './support/harness.ts';
import { deletion, outcome, rejection } from './support/port-contract.ts';

describe('ledger retention', () => {
  const { fleet, workPath } = useTestbed('retention');

  it('a run prunes old outcomes and audited deletions, and forgets old refusals of instances gone from the source, and only those', async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    const set = generateStudies(
      shape('retention', { patients: 1, seriesPerStudy: 1, instancesPerSeries: 1 }),
    );
    const [uploaded] = await uploadToOrthanc(source, set.instances);
    const instanceId = uploaded?.orthancId ?? '';
    const { ID: studyId } = await source.rest<{ ID: string }>('GET', `/instances/${instanceId}/study`);
    const now = Date.now();
    const old = now - 100 * DAY_MS;
    const refusals = {
      // Still at the source: forgetting it would have the instance sent again.
      held: rejection({ sourceId: 'site-a', studyId, instanceId, rejectedAt: old }),
      gone: rejection({
        sourceId: 'site-a',
        studyId: 'gone-study',
        instanceId: 'gone-instance',
        rejectedAt: old,
      }),
      recent: rejection({
        sourceId: 'site-a',
        studyId: 'gone-study',
        instanceId: 'recent',
        rejectedAt: now - DAY_MS,
      }),
      // A source no longer configured cannot say: kept.
      unknown: rejection({ sourceId: 'retired', studyId: 'x', instanceId: 'y', rejectedAt: old }),
    };
    const state = openState(workPath('state.sqlite'));
    try {
      await state.ledger.record(outcome({ sourceId: 'site-a', finishedAt: old, sent: 3, bytes: 30 }));
      await state.ledger.record(
        outcome({ sourceId: 'site-a', finishedAt: now - DAY_MS, sent: 1, bytes: 10 }),
      );
      await state.ledger.recordRejected(Object.values(refusals));
      const deletions = [old, now - DAY_MS].map((at) => deletion({ sourceId: 'site-a', at }));
      for (const each of deletions) await state.ledger.recordDeletion(each);
      const totals = await state.ledger.totals();

      const config = parseConfig({
        ...configFor([{ id: 'site-a', server: source }], destination),
        retention: { outcomeDays: 30, refusalDays: 30, auditDays: 30 },
      });
      const { log, entries } = captureLog();
      await runUntilIdle(config, state, log);

      expect(entries.filter((entry) => entry.message === 'ledger pruned')).toEqual([
        expect.objectContaining({ outcomes: 1, deletionParts: 1, forgotten: 1, unchecked: 1 }),
      ]);
      // The audit trail keeps what is younger than retention.auditDays.
      const kept = await state.ledger.deletions({ since: 0, until: now }, { limit: 10 });
      expect(kept.deletions.map((d) => d.at)).toEqual([now - DAY_MS]);
      expect((await state.ledger.rejected()).map((r) => r.instanceId).sort()).toEqual(
        [refusals.held, refusals.recent, refusals.unknown].map((r) => r.instanceId).sort(),
      );
      expect(await state.ledger.totals()).toMatchObject({ moved: totals.moved, copied: totals.copied });
      // The refused instance stayed at the source, not sent again.
      expect(await heldUids(source)).toEqual(uidsOf(set.instances));
      expect(await heldUids(destination)).toEqual([]);
    } finally {
      state.close();
    }
  });

  it('keeps every old refusal of a source it cannot reach', async () => {
    const [source] = await startServers(fleet, ['site-a']);
    const state = openState(':memory:');
    const client = new OrthancClient(
      createEndpoint(
        { url: source.url, username: source.username, password: source.password },
        {
          connectMs: 2_000,
          headersMs: 5_000,
          bodyMs: 5_000,
        },
      ),
    );
    try {
      await state.ledger.recordRejected(
        ['i1', 'i2'].map((instanceId) => rejection({ instanceId, rejectedAt: 1 })),
      );
      await source.stop();
      expect(await forgetGoneRefusals(state.ledger, new Map([['a', client]]), 2)).toEqual({
        forgotten: 0,
        unchecked: 2,
      });
      expect(await state.ledger.rejected()).toHaveLength(2);
    } finally {
      state.close();
      await (await client.endpoint.dispatcher()).close();
    }
  });
});
