/**
 * `audit export`, the audit trail of deletions, end to end on real Orthancs: studies moved from
 * two sources to two destinations (an instance both refuse, another held by a conflict, then
 * deleted on the operator's decision), and the export, run as the real CLI on the state file and
 * with `--aws` on DynamoDB Local, checked against the sources and the ledger: every deleted
 * instance once, nothing that was not deleted, no patient value, CSV quoted as RFC 4180 says.
 * Then how the trail converges when a move stops between its deletion and its outcome.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AUDIT_COLUMNS, csvCell } from '../bin/audit.ts';
import { DynamoLedger } from '../lambdas/aws/dynamo-ledger.ts';
import { parseConfig } from '../lambdas/core/config.ts';
import { buildEngine } from '../lambdas/core/engine.ts';
import { forwardWorkItem } from '../lambdas/core/forward-work-item.ts';
import { createLog } from '../lambdas/core/log.ts';
import type { AuditedDeletion, DeletionRecord, Ledger } from '../lambdas/core/ports.ts';
import { openState } from '../lambdas/local/sqlite-state.ts';
import {
  type GeneratedInstance,
  generateStudies,
  SOP_CLASS_UID_TAG,
  withChanges,
  withoutElements,
} from '../testbed/dicom-generator.ts';
import { type DynamoDbLocal, startDynamoDbLocal } from '../testbed/dynamodb-local.ts';
import type { OrthancServer } from '../testbed/orthanc.ts';
import { emulatorEnv } from '../testbed/sqs-emulator.ts';
import { HttpFront } from './support/fronts.ts';
import {
  CRASH_AT,
  cli,
  configFor,
  destinationEntry,
  findInstance,
  runProcess,
  runUntilIdle,
  shape,
  startServers,
  upload,
  useTestbed,
  withDestinations,
} from './support/harness.ts';
import { expectNoPhi } from './support/no-leaks.ts';

const log = createLog({ level: 'SILENT' });

const CORRECTED_NAME = 'CORRECTED^NAME^AFTER^REVIEW';

/** An RFC 4180 reader: CRLF between records, quoted fields with doubled quotes inside. */
const parseCsv = (text: string): string[][] => {
  const records: string[][] = [];
  let record: string[] = [];
  let field = '';
  let quoted = false;
  for (let index = 0; index < text.length; index++) {
    const char = text[index];
    if (quoted) {
      if (char === '"' && text[index + 1] === '"') {
        field += '"';
        index++;
      } else if (char === '"') quoted = false;
      else field += char;
    } else if (char === '"') quoted = true;
    else if (char === ',') {
      record.push(field);
      field = '';
    } else if (char === '\r' && text[index + 1] === '\n') {
      records.push([...record, field]);
      record = [];
      field = '';
      index++;
    } else field += char;
  }
  expect(quoted, 'a quoted field left open').toBe(false);
  expect(`${record.join(',')}${field}`, 'text after the last CRLF').toBe('');
  return records;
};

/** The CSV's rows as objects by column, checking the header. */
const csvRows = (text: string, columns: readonly string[]): Record<string, string>[] => {
  const [header, ...rows] = parseCsv(text);
  expect(header).toEqual(columns);
  return rows.map((row) => {
    expect(row).toHaveLength(columns.length);
    return Object.fromEntries(columns.map((column, index) => [column, row[index] ?? '']));
  });
};

const jsonLines = (text: string): Record<string, unknown>[] =>
  text
    .split('\n')
    .filter((line) => line !== '')
    .map((line) => JSON.parse(line) as Record<string, unknown>);

interface Held {
  readonly studyId: string;
  readonly seriesId: string;
  readonly sopInstanceUid: string;
  readonly studyInstanceUid: string;
}

/** Every instance a source holds, by Orthanc ID: where it is and its UIDs. */
const inventory = async (server: OrthancServer): Promise<Map<string, Held>> => {
  const held = new Map<string, Held>();
  for (const studyId of await server.rest<string[]>('GET', '/studies')) {
    const study = await server.rest<{ MainDicomTags: { StudyInstanceUID: string } }>(
      'GET',
      `/studies/${studyId}`,
    );
    const instances = await server.rest<
      { ID: string; ParentSeries: string; MainDicomTags: { SOPInstanceUID: string } }[]
    >('GET', `/studies/${studyId}/instances`);
    for (const instance of instances) {
      held.set(instance.ID, {
        studyId,
        seriesId: instance.ParentSeries,
        sopInstanceUid: instance.MainDicomTags.SOPInstanceUID,
        studyInstanceUid: study.MainDicomTags.StudyInstanceUID,
      });
    }
  }
  return held;
};

/** What the sources hold, by `<source id>/<Orthanc ID>`. */
const inventoryOf = async (
  sources: readonly (readonly [string, OrthancServer])[],
): Promise<Map<string, Held>> =>
  new Map(
    (
      await Promise.all(
        sources.map(async ([sourceId, server]) =>
          [...(await inventory(server))].map(([id, held]) => [`${sourceId}/${id}`, held] as const),
        ),
      )
    ).flat(),
  );

/** Every part of every deletion the ledger holds for the period. */
const ledgerDeletions = async (ledger: Ledger, since: number): Promise<AuditedDeletion[]> => {
  const parts: AuditedDeletion[] = [];
  let after: string | undefined;
  do {
    const page = await ledger.deletions({ since, until: Date.now() + 1 }, { after, limit: 3 });
    parts.push(...page.deletions);
    after = page.next;
  } while (after !== undefined);
  return parts;
};

/** Where a mode keeps its ledger, and how it moves and decides there. */
interface Target {
  /** What `audit export` needs to find this ledger, besides `--config`. */
  readonly args: readonly string[];
  readonly env: NodeJS.ProcessEnv;
  /** Moves every study of the sources. */
  moveAll(): Promise<void>;
  /** The operator lets the destination's copy of every open conflict stand, and its study is moved again. */
  acceptConflicts(): Promise<void>;
  /** Reads the ledger through its port. */
  withLedger<T>(use: (ledger: Ledger) => Promise<T>): Promise<T>;
}

interface Mode {
  readonly name: string;
  target(
    configPath: string,
    statePath: string,
    sources: readonly (readonly [string, OrthancServer])[],
  ): Promise<Target>;
}

const localMode: Mode = {
  name: 'local mode',
  target: async (configPath, statePath) => {
    const stateArgs = ['--config', configPath, '--state', statePath];
    return {
      args: ['--state', statePath],
      env: process.env,
      moveAll: async () => {
        // 1: a refusal stays (and, before the decision, a conflict is open).
        expect((await cli(['run', ...stateArgs, '--until-idle'])).code).toBe(1);
      },
      acceptConflicts: async () => {
        const resolved = await cli([
          'conflicts',
          'resolve',
          ...stateArgs,
          '--accept-destination',
          '--all',
          '--yes',
        ]);
        expect(resolved.code, resolved.stderr).toBe(0);
        expect((await cli(['run', ...stateArgs, '--until-idle'])).code).toBe(1);
      },
      withLedger: async (use) => {
        const state = openState(statePath);
        try {
          return await use(state.ledger);
        } finally {
          state.close();
        }
      },
    };
  },
};

let dynamo: DynamoDbLocal | undefined;
let tables = 0;

/** The forwarder Lambda's work, done by its core (forwardWorkItem) on the DynamoDB ledger. */
const awsMode: Mode = {
  name: 'on AWS (--aws, DynamoDB Local)',
  target: async (configPath, _statePath, sources) => {
    if (dynamo === undefined) throw new Error('DynamoDB Local is not running');
    const table = `audit-${++tables}`;
    await dynamo.createTable(table);
    const ledger = new DynamoLedger(dynamo.client, table);
    const engine = buildEngine(parseConfig(JSON.parse(readFileSync(configPath, 'utf8'))), {
      ledger,
      log,
      owner: 'test',
    });
    const move = (sourceId: string, studyId: string) =>
      forwardWorkItem(engine, JSON.stringify({ sourceId, studyId, reason: 'stable' }));
    return {
      args: ['--aws', '--table', table],
      env: { PATH: process.env.PATH, HOME: process.env.HOME, ...emulatorEnv({ dynamodb: dynamo.endpoint }) },
      moveAll: async () => {
        for (const [sourceId, server] of sources) {
          for (const studyId of await server.rest<string[]>('GET', '/studies')) await move(sourceId, studyId);
        }
      },
      acceptConflicts: async () => {
        for (const conflict of await ledger.conflicts({ openOnly: true })) {
          expect(await ledger.resolveConflict(conflict, 'accept-destination', Date.now())).toBe(true);
          await move(conflict.sourceId, conflict.studyId);
        }
      },
      withLedger: (use) => use(ledger),
    };
  },
};

beforeAll(async () => {
  dynamo = await startDynamoDbLocal();
});

afterAll(async () => {
  await dynamo?.stop();
});

describe('audit export', () => {
  const { fleet, workPath, withState } = useTestbed('audit');

  /** The day of the run (UTC), as --since takes it. */
  const today = () => new Date().toISOString().slice(0, 10);

  /** `audit export` of today on the test's state file. */
  const exportToday = async (configPath: string, options: readonly string[] = []): Promise<string> => {
    const result = await cli([
      'audit',
      'export',
      '--config',
      configPath,
      '--state',
      workPath('state.sqlite'),
      '--since',
      today(),
      ...options,
    ]);
    expect(result.code, result.stderr).toBe(0);
    return result.stdout;
  };

  describe.each([localMode, awsMode])('$name', (mode) => {
    it('lists every deleted instance once, and nothing else, with its UIDs, destinations and levels, and no patient value', async () => {
      const [cloud, archive, siteA, siteB] = await startServers(fleet, [
        'cloud',
        'archive',
        'site-a',
        'site-b',
      ]);
      const setA = generateStudies(shape('audit-a'));
      const setB = generateStudies(shape('audit-b', { patients: 1 }));
      // Both destinations refuse an instance without its SOP class; the cloud holds an earlier
      // version of another (its patient's name was corrected since): a conflict there.
      const refused = withoutElements(setA.instances[4] as GeneratedInstance, [SOP_CLASS_UID_TAG]);
      const original = setA.instances[0] as GeneratedInstance;
      const corrected = withChanges(original, { patient: { patientName: CORRECTED_NAME } });
      await upload(cloud, [original]);
      await upload(siteA, [corrected, ...setA.instances.slice(1, 4), refused, ...setA.instances.slice(5)]);
      await upload(siteB, setB.instances);
      const sites = [
        ['site-a', siteA],
        ['site-b', siteB],
      ] as const;
      const before = await inventoryOf(sites);
      const configPath = workPath('forwarder.json');
      writeFileSync(
        configPath,
        JSON.stringify(
          withDestinations(
            configFor(
              [
                { id: 'site-a', server: siteA },
                { id: 'site-b', server: siteB },
              ],
              cloud,
            ),
            [
              destinationEntry('cloud', cloud, { verify: 'identity' }),
              destinationEntry('archive', archive, { verify: 'qido' }),
            ],
          ),
        ),
      );
      const started = Date.now();
      const target = await mode.target(configPath, workPath('state.sqlite'), sites);
      const exportRun = async (args: readonly string[]) => {
        const result = await cli(
          ['audit', 'export', '--config', configPath, ...target.args, ...args],
          target.env,
        );
        expect(result.stderr).toBe('');
        expect(result.code).toBe(0);
        return result.stdout;
      };

      await target.moveAll();
      const after = await inventoryOf(sites);
      // The refused and the conflicting instance stayed; everything else left.
      expect([...after.values()].map((held) => held.sopInstanceUid).sort()).toEqual(
        [refused.sopInstanceUid, corrected.sopInstanceUid].sort(),
      );
      const deletedKeys = [...before.keys()].filter((key) => !after.has(key)).sort();
      expect(deletedKeys).toHaveLength(setA.instances.length + setB.instances.length - 2);

      const csv = await exportRun(['--since', today()]);
      expect(csv.slice(0, csv.indexOf('\r\n'))).toBe(
        'deletedAt,status,sourceId,studyId,seriesId,instanceId,studyInstanceUid,sopInstanceUid,destinations,basis',
      );
      const rows = csvRows(csv, AUDIT_COLUMNS.instance);
      // Every deleted instance once, and nothing that was not deleted.
      expect(rows.map((row) => `${row.sourceId}/${row.instanceId}`).sort()).toEqual(deletedKeys);
      for (const row of rows) {
        const held = before.get(`${row.sourceId}/${row.instanceId}`);
        expect(row).toEqual({
          deletedAt: expect.stringMatching(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/),
          status: 'deleted',
          sourceId: row.sourceId,
          studyId: held?.studyId,
          seriesId: held?.seriesId,
          instanceId: row.instanceId,
          studyInstanceUid: held?.studyInstanceUid,
          sopInstanceUid: held?.sopInstanceUid,
          destinations: 'cloud:identity,archive:qido',
          basis: 'verified',
        });
        expect(Date.parse(row.deletedAt ?? '')).toBeGreaterThanOrEqual(started);
      }
      // The two destinations share a cell: quoted, since it holds a comma; records end in CRLF.
      expect(csv).toContain(',"cloud:identity,archive:qido",verified\r\n');

      // The ledger says the same: its parts, and what its totals count as deleted.
      await target.withLedger(async (ledger) => {
        const parts = await ledgerDeletions(ledger, started);
        expect(parts.flatMap((p) => p.instances.map((i) => `${p.sourceId}/${i.instanceId}`)).sort()).toEqual(
          deletedKeys,
        );
        expect((await ledger.totals()).deleted).toBe(deletedKeys.length);
      });

      // JSON lines: the same rows, the destinations as objects.
      const jsonl = await exportRun(['--since', today(), '--format', 'jsonl']);
      expect(
        jsonLines(jsonl).map((row) => ({
          ...row,
          destinations: (row.destinations as { destinationId: string; verify: string }[])
            .map((d) => `${d.destinationId}:${d.verify}`)
            .join(','),
        })),
      ).toEqual(rows);

      // Per study: one row per deletion, its counts those of its instances' rows.
      const studies = csvRows(await exportRun(['--since', today(), '--per', 'study']), AUDIT_COLUMNS.study);
      expect(studies.map((s) => `${s.sourceId}/${s.studyId}`).sort()).toEqual(
        [...new Set(rows.map((r) => `${r.sourceId}/${r.studyId}`))].sort(),
      );
      for (const study of studies) {
        const ofStudy = rows.filter((r) => r.sourceId === study.sourceId && r.studyId === study.studyId);
        expect(study).toMatchObject({
          status: 'deleted',
          series: String(new Set(ofStudy.map((r) => r.seriesId)).size),
          instances: String(ofStudy.length),
          verified: String(ofStudy.length),
          accepted: '0',
          unrouted: '0',
          destinations: 'cloud:identity,archive:qido',
        });
      }

      // One source's; a period that ends before the moves: nothing.
      const siteBOnly = jsonLines(
        await exportRun(['--since', today(), '--source', 'site-b', '--format', 'jsonl']),
      );
      expect(siteBOnly.map((row) => row.instanceId).sort()).toEqual(
        rows
          .filter((r) => r.sourceId === 'site-b')
          .map((r) => r.instanceId)
          .sort(),
      );
      expect(await exportRun(['--since', today(), '--until', new Date(started - 1).toISOString()])).toBe(
        `${AUDIT_COLUMNS.instance.join(',')}\r\n`,
      );

      // The operator lets the cloud's copy stand: the source's is deleted, on that decision.
      await target.acceptConflicts();
      const decided = csvRows(await exportRun(['--since', today()]), AUDIT_COLUMNS.instance);
      const accepted = decided.filter((row) => row.basis === 'accepted');
      expect(accepted.map((row) => row.sopInstanceUid)).toEqual([corrected.sopInstanceUid]);
      expect(decided.filter((row) => row.basis === 'verified')).toEqual(rows);
      const study = csvRows(
        await exportRun(['--since', today(), '--per', 'study', '--source', 'site-a']),
        AUDIT_COLUMNS.study,
      ).find((row) => row.accepted === '1');
      expect(study).toMatchObject({ instances: '1', verified: '0', studyId: accepted[0]?.studyId });

      expectNoPhi([csv, jsonl, JSON.stringify(studies), JSON.stringify(decided)].join('\n'), [setA, setB]);
      expect(csv + jsonl).not.toContain('CORRECTED');
    });
  });

  it('quotes a CSV cell as RFC 4180 says: with a comma, a quote or a line break, its quotes doubled', () => {
    const cells = ['plain', 'a,b', 'say "hi"', 'two\r\nlines', 42];
    expect(cells.map(csvCell)).toEqual(['plain', '"a,b"', '"say ""hi"""', '"two\r\nlines"', '42']);
    expect(parseCsv(`${cells.map(csvCell).join(',')}\r\n`)).toEqual([cells.map(String)]);
  });

  it('refuses a period it cannot read, naming the option', async () => {
    const configPath = workPath('forwarder.json');
    writeFileSync(
      configPath,
      JSON.stringify({
        sources: [{ id: 'site-a', url: 'http://127.0.0.1:9' }],
        destination: { url: 'http://127.0.0.1:9/dicom-web' },
      }),
    );
    const args = ['audit', 'export', '--config', configPath, '--state', workPath('state.sqlite')];
    for (const [options, error] of [
      [['--since', '31/01/2025'], /--since/],
      [['--since', '2025-02-30'], /--since/],
      [['--since', '2025-01-31T08:00:00'], /--since.*zone/],
      [['--since', '2025-02-01', '--until', '2025-01-31'], /--since must be before --until/],
      [['--since', '2025-01-31', '--format', 'xml'], /--format/],
    ] as const) {
      const result = await cli([...args, ...options]);
      expect(result.code).toBe(2);
      expect(result.stderr).toMatch(error);
      expect(result.stdout).toBe('');
    }
  });

  it('records a study deleted as unrouted, with no destination, and routes what arrives in it later anew', async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    const set = generateStudies(shape('audit-unrouted', { patients: 1, modality: 'CT' }));
    await upload(source, set.instances);
    const before = await inventory(source);
    const configPath = workPath('forwarder.json');
    writeFileSync(
      configPath,
      JSON.stringify(
        withDestinations(configFor([{ id: 'site-a', server: source }], destination, { unrouted: 'delete' }), [
          destinationEntry('mr-archive', destination, { filter: { modalities: ['MR'] } }),
        ]),
      ),
    );
    const config = parseConfig(JSON.parse(readFileSync(configPath, 'utf8')));
    const first = await withState(config, (state) => runUntilIdle(config, state, log));
    expect(first.outcomes.filter((o) => o.deleted > 0)).toMatchObject([
      { result: 'skipped', deleted: before.size },
    ]);

    // An MR series arrives in the study: the filter takes it, whatever became of the rest.
    const late = withChanges(set.instances[0] as GeneratedInstance, {
      study: { modality: 'MR' },
      series: { seriesInstanceUid: `${set.instances[0]?.seriesInstanceUid}.9`, seriesNumber: 9 },
    });
    await upload(source, [late]);
    const [lateId] = [...(await inventory(source)).keys()];
    const second = await withState(config, (state) => runUntilIdle(config, state, log));
    expect(second.outcomes.filter((o) => o.deleted > 0)).toMatchObject([{ result: 'moved', deleted: 1 }]);
    expect(await findInstance(destination, late.sopInstanceUid)).toBeDefined();

    const rows = jsonLines(await exportToday(configPath, ['--format', 'jsonl']));
    // In the order of the deletions: the unrouted one first.
    const described = rows.map((row) => [row.instanceId, row.basis, row.destinations, row.status]);
    expect(described.slice(0, before.size).sort()).toEqual(
      [...before.keys()].sort().map((id) => [id, 'unrouted', [], 'deleted']),
    );
    expect(described.slice(before.size)).toEqual([
      [lateId, 'verified', [{ destinationId: 'mr-archive', verify: 'identity' }], 'deleted'],
    ]);
  });

  it('shows a deletion as deleting while its move is cut off after it, and once deleted after the rerun', async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    const set = generateStudies(shape('audit-crash', { patients: 1 }));
    await upload(source, set.instances);
    const before = await inventory(source);
    const configPath = workPath('forwarder.json');
    const statePath = workPath('state.sqlite');
    writeFileSync(
      configPath,
      JSON.stringify(configFor([{ id: 'site-a', server: source }], destination, { concurrency: 1 })),
    );
    const exportRows = async () => csvRows(await exportToday(configPath), AUDIT_COLUMNS.instance);

    // SIGKILL once the source deleted the study, before its outcome is recorded.
    const crash = await runProcess(process.execPath, [
      '--disable-warning=ExperimentalWarning',
      CRASH_AT,
      configPath,
      statePath,
      'deleted',
      workPath('crashed.json'),
    ]);
    expect(crash.signal, crash.stderr).toBe('SIGKILL');
    const cut = await exportRows();
    expect(cut.map((row) => row.instanceId).sort()).toEqual([...before.keys()].sort());
    expect(new Set(cut.map((row) => row.status))).toEqual(new Set(['deleting']));

    const rerun = await cli(['run', '--config', configPath, '--state', statePath, '--until-idle']);
    expect(rerun.code, rerun.stderr).toBe(0);
    expect(await exportRows()).toEqual(cut.map((row) => ({ ...row, status: 'deleted' })));
  });

  it('keeps a deletion the source refused out of the trail: the retry that deletes records it, once', async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    const set = generateStudies(shape('audit-refused-delete', { patients: 1 }));
    await upload(source, set.instances);
    const before = await inventory(source);
    // The source fails its first bulk delete, as an Orthanc out of disk or restarting would.
    let refusals = 0;
    const front = await HttpFront.start(source.url, (request) =>
      request.method === 'POST' && request.path === '/tools/bulk-delete' && refusals++ === 0
        ? { answer: { status: 500, headers: { 'content-type': 'application/json' }, body: '{}' } }
        : undefined,
    );
    try {
      const raw = configFor([{ id: 'site-a', server: source }], destination);
      const configPath = workPath('forwarder.json');
      writeFileSync(
        configPath,
        JSON.stringify({ ...raw, sources: [{ ...(raw.sources as object[])[0], url: front.origin }] }),
      );
      const config = parseConfig(JSON.parse(readFileSync(configPath, 'utf8')));
      const { outcomes, recorded } = await withState(config, async (state) => {
        // What the move records, seen on its way to the ledger.
        const records: DeletionRecord[] = [];
        const record = state.ledger.recordDeletion.bind(state.ledger);
        state.ledger.recordDeletion = async (deletion) => {
          records.push(deletion);
          await record(deletion);
        };
        const run = await runUntilIdle(config, state, log);
        return { outcomes: run.outcomes, recorded: records };
      });
      expect(front.faked).toBe(1);
      expect(outcomes.filter((o) => o.result === 'moved').map((o) => o.deleted)).toEqual([before.size]);
      // The refused deletion was recorded, then dropped by the retry, which recorded its own.
      expect(recorded.map((r) => r.instances.length)).toEqual([before.size, before.size]);
      const output = await exportToday(configPath, ['--format', 'jsonl']);
      const rows = jsonLines(output);
      expect(rows.map((row) => row.instanceId).sort()).toEqual([...before.keys()].sort());
      expect(new Set(rows.map((row) => row.deletedAt))).toEqual(
        new Set([new Date(recorded[1]?.at ?? 0).toISOString()]),
      );
      expect(new Set(rows.map((row) => row.status))).toEqual(new Set(['deleted']));
      expectNoPhi(output, [set]);
    } finally {
      await front.close();
    }
  });
});
