/**
 * The operator's side of conflicts (bin/conflicts.ts, bin/format.ts): `conflicts list`,
 * `conflicts resolve` and what `status` says of them, run as the real CLI, the same cases on a
 * state file and with `--aws` on DynamoDB Local and local-aws-sqs. The conflicts are recorded through the
 * ledger, as a move records them; what a move then does with a decision is the move protocol's
 * tests' business.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  CreateQueueCommand,
  DeleteMessageCommand,
  GetQueueAttributesCommand,
  ReceiveMessageCommand,
  SQSClient,
} from '@aws-sdk/client-sqs';
import { createSqsServer } from 'local-aws-sqs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DynamoLedger } from '../lambdas/aws/dynamo-ledger.ts';
import type { Conflict, Ledger, WorkItem } from '../lambdas/core/ports.ts';
import { decodeWorkItem } from '../lambdas/core/work-item.ts';
import { type LocalState, openState } from '../lambdas/local/sqlite-state.ts';
import { type DynamoDbLocal, startDynamoDbLocal } from '../testbed/dynamodb-local.ts';
import { emulatorEnv, LOCAL_CREDENTIALS, LOCAL_REGION } from '../testbed/sqs-emulator.ts';
import { BIN, cli, type ProcessResult } from './support/processes.ts';

const study = (n: number) => `${String(n).padStart(8, '0')}-0a1b2c3d-0a1b2c3d-0a1b2c3d-0a1b2c3d`;
const instance = (n: number) => `${String(n).padStart(8, '0')}-11111111-22222222-33333333-44444444`;
const DETECTED = Date.parse('2030-01-02T03:04:05.000Z');

const conflict = (
  sourceId: string,
  studyN: number,
  instanceN: number,
  destinationId: string,
  attributes: string[],
): Conflict => ({
  sourceId,
  studyId: study(studyN),
  instanceId: instance(instanceN),
  destinationId,
  sopInstanceUid: `1.2.826.0.1.3680043.2.1143.${instanceN}`,
  attributes,
  detectedAt: DETECTED + instanceN * 1000,
});

/** `archive` is an Orthanc (the forwarder can delete there), `cloud` only DICOMweb. */
const CONFLICTS = [
  conflict('site-a', 1, 1, 'archive', ['PatientName', 'PatientID']),
  conflict('site-a', 1, 2, 'archive', ['PatientName']),
  conflict('site-a', 2, 3, 'cloud', ['content']),
  conflict('site-b', 4, 4, 'cloud', ['StudyDate']),
];

const CONFIG = {
  sources: [
    { id: 'site-a', url: 'http://127.0.0.1:9' },
    { id: 'site-b', url: 'http://127.0.0.1:9' },
  ],
  destinations: [
    { id: 'archive', url: 'http://127.0.0.1:9/dicom-web', orthancUrl: 'http://127.0.0.1:9' },
    { id: 'cloud', url: 'http://127.0.0.1:9/dicom-web' },
  ],
};

/** A fresh state holding some conflicts, and the CLI pointed at it. */
interface Fixture {
  /** `--config` and the options that name this state. */
  readonly stateArgs: readonly string[];
  /** Runs the CLI with stateArgs, and the variables that name this state. */
  run(args: readonly string[], env?: Record<string, string>): Promise<ProcessResult>;
  readonly ledger: Ledger;
  /** How many work items wait on the queue, and what they are (taken off it). */
  takeQueued(): Promise<{ waiting: number; items: WorkItem[] }>;
}

interface Mode {
  readonly name: string;
  fixture(conflicts: readonly Conflict[]): Promise<Fixture>;
}

const work = mkdtempSync(join(tmpdir(), 'orthanc-forwarder-conflicts-'));
const configPath = join(work, 'forwarder.json');
writeFileSync(configPath, JSON.stringify(CONFIG));
const baseEnv = { PATH: process.env.PATH, HOME: work };
let fixtures = 0;
const states: LocalState[] = [];

const localMode: Mode = {
  name: 'local mode',
  fixture: async (conflicts) => {
    const statePath = join(work, `state-${++fixtures}.sqlite`);
    const state = openState(statePath);
    const stateArgs = ['--config', configPath, '--state', statePath];
    states.push(state);
    await state.ledger.recordConflicts(conflicts);
    return {
      stateArgs,
      run: (args, env = {}) => cli([...args, ...stateArgs], { ...baseEnv, ...env }),
      ledger: state.ledger,
      takeQueued: async () => {
        const { waiting } = await state.queue.stats();
        const messages = await state.queue.receive(100, 60_000);
        for (const message of messages) await state.queue.ack(message.handle);
        return { waiting, items: messages.map((message) => decodeWorkItem(message.body)) };
      },
    };
  },
};

let dynamo: DynamoDbLocal;
/**
 * local-aws-sqs rather than fauxqs: the SDK cannot parse fauxqs's queue URLs as endpoints
 * (`sqs.<region>.127.0.0.1`) and prints a trace, and these tests want an empty stderr.
 */
let sqsServer: Server;
let sqsEndpoint: string;
let sqs: SQSClient;

const awsMode: Mode = {
  name: 'on AWS (--aws)',
  fixture: async (conflicts) => {
    const n = ++fixtures;
    const table = `conflicts-${n}`;
    await dynamo.createTable(table);
    const ledger = new DynamoLedger(dynamo.client, table);
    await ledger.recordConflicts(conflicts);
    const queueUrl = (await sqs.send(new CreateQueueCommand({ QueueName: `work-${n}` }))).QueueUrl ?? '';
    const stackEnv = {
      ...baseEnv,
      ...emulatorEnv({ dynamodb: dynamo.endpoint, sqs: sqsEndpoint }),
      QUEUE_URL: queueUrl,
    };
    const stateArgs = ['--config', configPath, '--aws', '--table', table, '--dlq-url', queueUrl];
    return {
      stateArgs,
      run: (args, env = {}) => cli([...args, ...stateArgs], { ...stackEnv, ...env }),
      ledger,
      takeQueued: async () => {
        const attributes = await sqs.send(
          new GetQueueAttributesCommand({
            QueueUrl: queueUrl,
            AttributeNames: ['ApproximateNumberOfMessages'],
          }),
        );
        const answer = await sqs.send(
          new ReceiveMessageCommand({ QueueUrl: queueUrl, MaxNumberOfMessages: 10, WaitTimeSeconds: 0 }),
        );
        const messages = answer.Messages ?? [];
        for (const { ReceiptHandle } of messages) {
          await sqs.send(new DeleteMessageCommand({ QueueUrl: queueUrl, ReceiptHandle }));
        }
        return {
          waiting: Number(attributes.Attributes?.ApproximateNumberOfMessages),
          items: messages.map((message) => decodeWorkItem(message.Body ?? '')),
        };
      },
    };
  },
};

beforeAll(async () => {
  [dynamo, sqsServer] = await Promise.all([
    startDynamoDbLocal(),
    createSqsServer({ port: 0, hostname: '127.0.0.1' }),
  ]);
  sqsEndpoint = `http://127.0.0.1:${(sqsServer.address() as AddressInfo).port}`;
  sqs = new SQSClient({ endpoint: sqsEndpoint, region: LOCAL_REGION, credentials: LOCAL_CREDENTIALS });
});

afterAll(async () => {
  for (const state of states) state.close();
  sqs?.destroy();
  await Promise.allSettled([dynamo?.stop(), new Promise((resolve) => sqsServer?.close(resolve))]);
  rmSync(work, { recursive: true, force: true });
});

const ok = (result: ProcessResult) => {
  expect(result.stderr).toBe('');
  expect(result.code).toBe(0);
  return result.stdout;
};

const openIds = async (fixture: Fixture) =>
  (await fixture.ledger.conflicts({ openOnly: true })).map((c) => c.instanceId);

describe.each([localMode, awsMode])('conflicts $name', (mode) => {
  it('lists the open conflicts, one line each with the attributes’ names; --source, --all, --json', async () => {
    const fixture = await mode.fixture(CONFLICTS);
    const lines = ok(await fixture.run(['conflicts', 'list']))
      .trimEnd()
      .split('\n');
    expect(lines[0]).toBe(
      'SOURCE\tSTUDY\tINSTANCE\tSOP_INSTANCE_UID\tDESTINATION\tDIFFERS\tDETECTED\tRESOLUTION',
    );
    expect(lines.slice(1)).toEqual([
      `site-a\t${study(1)}\t${instance(1)}\t1.2.826.0.1.3680043.2.1143.1\tarchive\tPatientName,PatientID\t2030-01-02T03:04:06.000Z\topen`,
      `site-a\t${study(1)}\t${instance(2)}\t1.2.826.0.1.3680043.2.1143.2\tarchive\tPatientName\t2030-01-02T03:04:07.000Z\topen`,
      `site-a\t${study(2)}\t${instance(3)}\t1.2.826.0.1.3680043.2.1143.3\tcloud\tcontent\t2030-01-02T03:04:08.000Z\topen`,
      `site-b\t${study(4)}\t${instance(4)}\t1.2.826.0.1.3680043.2.1143.4\tcloud\tStudyDate\t2030-01-02T03:04:09.000Z\topen`,
    ]);

    const siteB = ok(await fixture.run(['conflicts', 'list', '--source', 'site-b']))
      .trimEnd()
      .split('\n');
    expect(siteB.slice(1).map((line) => line.split('\t')[2])).toEqual([instance(4)]);

    await fixture.ledger.resolveConflict(CONFLICTS[0] as Conflict, 'keep-source', DETECTED + 60_000);
    const json = JSON.parse(ok(await fixture.run(['conflicts', 'list', '--json']))) as Conflict[];
    expect(json).toEqual(CONFLICTS.slice(1).map((c) => expect.objectContaining({ ...c })));
    const all = ok(await fixture.run(['conflicts', 'list', '--all']))
      .trimEnd()
      .split('\n');
    expect(all).toHaveLength(5);
    expect(all[1]).toMatch(/\tkeep-source 2030-01-02T03:05:05\.000Z$/);
    expect(ok(await fixture.run(['conflicts', 'list', '--source', 'site-c']))).toBe('no open conflicts\n');
  });

  it('refuses, as a usage error (2), to resolve without a filter or --all, or without exactly one decision', async () => {
    const fixture = await mode.fixture(CONFLICTS);
    const unfiltered = await fixture.run(['conflicts', 'resolve', '--keep-source']);
    expect(unfiltered.code).toBe(2);
    expect(unfiltered.stderr).toMatch(/needs --source, --study, --instance or --destination, or --all/);
    for (const decisions of [[], ['--keep-source', '--accept-destination']]) {
      const result = await fixture.run(['conflicts', 'resolve', ...decisions, '--all']);
      expect(result.code).toBe(2);
      expect(result.stderr).toContain(
        'needs exactly one of --keep-source, --accept-destination, --replace-destination',
      );
    }
    expect(await openIds(fixture)).toHaveLength(4);
    expect((await fixture.takeQueued()).waiting).toBe(0);
  });

  it('keep-source: records the decision on the selected conflicts and queues each study once', async () => {
    const fixture = await mode.fixture(CONFLICTS);
    const before = Date.now();
    const stdout = ok(await fixture.run(['conflicts', 'resolve', '--keep-source', '--study', study(1)]));
    expect(stdout).toContain(
      `keep-source: site-a study ${study(1)} instance ${instance(1)} at archive (differs: PatientName, PatientID)`,
    );
    expect(stdout).toContain(
      'resolved 2 conflict(s)\nqueued 1 study(ies) again: their next move applies the decision\n',
    );
    expect(await openIds(fixture)).toEqual([instance(3), instance(4)]);
    const decided = (await fixture.ledger.conflicts()).filter((c) => c.resolution !== undefined);
    expect(decided.map((c) => [c.instanceId, c.resolution])).toEqual([
      [instance(1), 'keep-source'],
      [instance(2), 'keep-source'],
    ]);
    for (const c of decided) expect(c.resolvedAt).toBeGreaterThanOrEqual(before);
    expect(await fixture.takeQueued()).toEqual({
      waiting: 1,
      items: [{ sourceId: 'site-a', studyId: study(1), reason: 'stable' }],
    });

    const again = await fixture.run(['conflicts', 'resolve', '--keep-source', '--study', study(1)]);
    expect(again.code).toBe(1);
    expect(again.stdout).toBe('no open conflict matches: nothing resolved\n');
    expect((await fixture.takeQueued()).waiting).toBe(0);
  });

  it('accept-destination: refused without --yes when not at a terminal; with it, resolved and queued', async () => {
    const fixture = await mode.fixture(CONFLICTS);
    const args = ['conflicts', 'resolve', '--accept-destination', '--source', 'site-b'];
    const unconfirmed = await fixture.run(args);
    expect(unconfirmed.code).toBe(2);
    expect(unconfirmed.stderr).toContain(
      "--accept-destination deletes the source's copy of 1 instance(s): add --yes to confirm when not at a terminal",
    );
    expect(await openIds(fixture)).toContain(instance(4));

    const stdout = ok(await fixture.run([...args, '--yes']));
    expect(stdout).toContain(`accept-destination: site-b study ${study(4)} instance ${instance(4)} at cloud`);
    expect(await openIds(fixture)).not.toContain(instance(4));
    expect((await fixture.takeQueued()).items).toEqual([
      { sourceId: 'site-b', studyId: study(4), reason: 'stable' },
    ]);
  });

  it('replace-destination: refused for a destination without orthancUrl, naming it; done for one with it', async () => {
    const fixture = await mode.fixture(CONFLICTS);
    const refused = await fixture.run([
      'conflicts',
      'resolve',
      '--replace-destination',
      '--source',
      'site-a',
    ]);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain('--replace-destination: the destination cloud has no orthancUrl');
    expect(refused.stderr).toContain('only through its Orthanc REST root');
    expect(await openIds(fixture)).toHaveLength(4);
    expect((await fixture.takeQueued()).waiting).toBe(0);

    ok(await fixture.run(['conflicts', 'resolve', '--replace-destination', '--destination', 'archive']));
    expect(await openIds(fixture)).toEqual([instance(3), instance(4)]);
    expect((await fixture.takeQueued()).items).toEqual([
      { sourceId: 'site-a', studyId: study(1), reason: 'stable' },
    ]);
  });

  it('status: the count of open conflicts, ten of them, and where to see the rest', async () => {
    const many = Array.from({ length: 12 }, (_, n) => conflict('site-a', 7, n + 1, 'archive', ['PatientID']));
    const fixture = await mode.fixture(many);
    await fixture.ledger.resolveConflict(many[0] as Conflict, 'keep-source', DETECTED);
    const text = (await fixture.run(['status'])).stdout;
    expect(text).toContain(
      'open conflicts: 11 (held at their source: the destination holds another instance under the same SOPInstanceUID)',
    );
    const listed = text.split('\n').filter((line) => line.startsWith(`  site-a study ${study(7)}`));
    expect(listed).toHaveLength(10);
    expect(listed[0]).toBe(
      `  site-a study ${study(7)} instance ${instance(2)} at archive (differs: PatientID)`,
    );
    expect(text).toContain('  and 1 more\n  see them with `conflicts list`, decide with `conflicts resolve`');
    const report = JSON.parse((await fixture.run(['status', '--json'])).stdout) as { conflicts: Conflict[] };
    expect(report.conflicts.map((c) => c.instanceId)).toEqual(many.slice(1).map((c) => c.instanceId));
  });
});

describe('conflicts on AWS only', () => {
  it('names the missing work queue before deciding anything', async () => {
    const fixture = await awsMode.fixture(CONFLICTS);
    const result = await fixture.run(['conflicts', 'resolve', '--keep-source', '--all'], { QUEUE_URL: '' });
    expect(result.code).toBe(2);
    expect(result.stderr).toContain('--aws needs --queue-url (QUEUE_URL)');
    expect(await openIds(fixture)).toHaveLength(4);
  });

  it('says that the decisions stand when their studies cannot be queued again', async () => {
    const fixture = await awsMode.fixture(CONFLICTS);
    const result = await fixture.run(['conflicts', 'resolve', '--keep-source', '--source', 'site-b'], {
      QUEUE_URL: `${sqsEndpoint}/000000000000/no-such-queue`,
    });
    expect(result.code).toBe(1);
    expect(result.stdout).toContain('resolved 1 conflict(s)');
    expect(result.stderr).toMatch(
      /^orthanc-forwarder: the decisions stand, but their studies could not be queued again \(.+\): the next sweep \(sweepIntervalSeconds\) queues them\n$/,
    );
    expect(await openIds(fixture)).not.toContain(instance(4));
  });
});

/**
 * The CLI at a terminal, which script(1) gives it, answering its question once it is asked;
 * resolves with the exit code and everything the terminal showed.
 */
const atTerminal = (
  args: readonly string[],
  answer: string,
): Promise<{ code: number | null; shown: string }> =>
  new Promise((resolve, reject) => {
    const command = [BIN, ...args].map((arg) => `'${arg}'`).join(' ');
    const child = spawn('script', ['-qec', command, '/dev/null'], { env: baseEnv });
    const killer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    let shown = '';
    child.stdout.on('data', (chunk: Buffer) => {
      const asked = !shown.includes('[y/N]');
      shown += chunk.toString('utf8');
      if (asked && shown.includes('[y/N]')) child.stdin.write(`${answer}\r`);
    });
    child.once('error', reject);
    child.once('close', (code) => {
      clearTimeout(killer);
      resolve({ code, shown });
    });
  });

describe('conflicts in local mode only', () => {
  it('asks at a terminal before --accept-destination, listing what it would decide', async () => {
    const fixture = await localMode.fixture(CONFLICTS);
    const withState = [
      'conflicts',
      'resolve',
      '--accept-destination',
      '--study',
      study(2),
      ...fixture.stateArgs,
    ];
    const declined = await atTerminal(withState, 'n');
    expect(declined.shown).toContain(
      `site-a study ${study(2)} instance ${instance(3)} at cloud (differs: content)`,
    );
    expect(declined.shown).toContain(
      "--accept-destination deletes the source's copy of 1 instance(s) at their next move. Go on? [y/N]",
    );
    expect(declined.shown).toContain('not confirmed: nothing resolved');
    expect(declined.code).toBe(1);
    expect(await openIds(fixture)).toContain(instance(3));

    const confirmed = await atTerminal(withState, 'y');
    expect(confirmed.code).toBe(0);
    expect(await openIds(fixture)).not.toContain(instance(3));
    expect((await fixture.takeQueued()).items).toEqual([
      { sourceId: 'site-a', studyId: study(2), reason: 'stable' },
    ]);
  });

  it('exits 2 for commander’s own usage errors too', async () => {
    const unknown = await cli(
      ['conflicts', 'resolve', '--keep-source', '--al', '--config', configPath],
      baseEnv,
    );
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/unknown option '--al'/);
    const noConfig = await cli(['conflicts', 'list'], baseEnv);
    expect(noConfig.code).toBe(2);
    expect(noConfig.stderr).toMatch(/required option '-c, --config <file>' not specified/);
  });
});
