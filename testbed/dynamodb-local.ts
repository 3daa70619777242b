/**
 * DynamoDB Local for the tests and the benchmark: the jar that amplify-dynamodb-simulator ships,
 * started with java directly (the package's launcher is broken), in memory, on a free loopback
 * port. Full fidelity for what the adapters use: conditions, transactions, TTL, reserved words.
 */

import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { createServer } from 'node:net';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  CreateTableCommand,
  DeleteTableCommand,
  DynamoDBClient,
  ListTablesCommand,
  UpdateTimeToLiveCommand,
} from '@aws-sdk/client-dynamodb';
import { TESTBED_MARKER } from './orthanc.ts';

export interface DynamoDbLocal {
  /** A client of this instance, with fake credentials. */
  readonly client: DynamoDBClient;
  /** A table created at start, with the state table's layout. */
  readonly tableName: string;
  readonly endpoint: string;
  /** Creates another table with the same layout: a fresh, empty state for one test. */
  createTable(name: string): Promise<void>;
  deleteTable(name: string): Promise<void>;
  /** Kills the java process; safe to call twice. */
  stop(): Promise<void>;
}

const CREDENTIALS = { accessKeyId: 'local', secretAccessKey: 'local' };
const REGION = 'us-east-1';
const READY_TIMEOUT_MS = 30_000;
const INSTALL_HINT =
  'DynamoDB Local needs a Java runtime: `sudo apt-get install -y default-jre-headless` ' +
  '(or `sudo scripts/install-prerequisites.sh`)';

const emulatorDir = (): string =>
  join(
    dirname(createRequire(import.meta.url).resolve('amplify-dynamodb-simulator/package.json')),
    'emulator',
  );

const assertJava = (): void => {
  const probe = spawnSync('java', ['-version'], { stdio: 'ignore' });
  if (probe.error !== undefined || probe.status !== 0) throw new Error(INSTALL_HINT);
};

/** A port free right now; DynamoDB Local cannot be told to pick one and report it. */
const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() =>
        typeof address === 'object' && address !== null ? resolve(address.port) : reject(),
      );
    });
  });

export const localClient = (endpoint: string, options: { probe?: boolean } = {}): DynamoDBClient =>
  new DynamoDBClient({
    endpoint,
    region: REGION,
    credentials: CREDENTIALS,
    // A readiness probe must fail fast rather than retry against a port nobody listens on yet.
    ...(options.probe
      ? { maxAttempts: 1, requestHandler: { connectionTimeout: 1_000, requestTimeout: 2_000 } }
      : {}),
  });

const startJava = (port: number): { child: ChildProcess; output: () => string } => {
  const child = spawn(
    'java',
    [
      // Marks the process for the test run's sweep of leftovers (test/global-setup.ts).
      `-D${TESTBED_MARKER}=${process.env.ORTHANC_TESTBED_ROOT ?? ''}`,
      '-Djava.library.path=./DynamoDBLocal_lib',
      '-jar',
      'DynamoDBLocal.jar',
      '-inMemory',
      '-port',
      String(port),
      '-disableTelemetry',
    ],
    { cwd: emulatorDir(), stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let output = '';
  // Drained (and capped) so that a chatty JVM never blocks on a full pipe.
  const collect = (chunk: Buffer) => {
    output = (output + String(chunk)).slice(-4_000);
  };
  child.stdout?.on('data', collect);
  child.stderr?.on('data', collect);
  return { child, output: () => output };
};

const hasExited = (child: ChildProcess) => child.exitCode !== null || child.signalCode !== null;

/** Most likely the free port was taken between the probe and java's bind: worth another port. */
class ExitedWhileStarting extends Error {}

/** Polls ListTables until it answers; fails at once if java exits (e.g. the port was taken meanwhile). */
const waitUntilReady = async (child: ChildProcess, endpoint: string, output: () => string): Promise<void> => {
  const probe = localClient(endpoint, { probe: true });
  const deadline = Date.now() + READY_TIMEOUT_MS;
  try {
    for (;;) {
      if (hasExited(child))
        throw new ExitedWhileStarting(`DynamoDB Local exited while starting:\n${output()}`);
      try {
        await probe.send(new ListTablesCommand({}));
        return;
      } catch (error) {
        if (Date.now() > deadline) {
          throw new Error(`DynamoDB Local did not answer within ${READY_TIMEOUT_MS} ms:\n${output()}`, {
            cause: error,
          });
        }
        await sleep(200);
      }
    }
  } finally {
    probe.destroy();
  }
};

const kill = async (child: ChildProcess): Promise<void> => {
  if (hasExited(child)) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  // In memory, nothing to flush: SIGKILL, so that a wedged JVM cannot outlive the tests.
  child.kill('SIGKILL');
  await exited;
};

/** The state table's layout, as the CDK stack creates it. */
export const createStateTable = async (client: DynamoDBClient, name: string): Promise<void> => {
  await client.send(
    new CreateTableCommand({
      TableName: name,
      AttributeDefinitions: [
        { AttributeName: 'pk', AttributeType: 'S' },
        { AttributeName: 'sk', AttributeType: 'S' },
      ],
      KeySchema: [
        { AttributeName: 'pk', KeyType: 'HASH' },
        { AttributeName: 'sk', KeyType: 'RANGE' },
      ],
      BillingMode: 'PAY_PER_REQUEST',
    }),
  );
  await client.send(
    new UpdateTimeToLiveCommand({
      TableName: name,
      TimeToLiveSpecification: { AttributeName: 'ttl', Enabled: true },
    }),
  );
};

const launch = async (tableName: string): Promise<DynamoDbLocal> => {
  const port = await freePort();
  const endpoint = `http://127.0.0.1:${port}`;
  const { child, output } = startJava(port);
  // Synchronous kill at exit, in case a test run dies before afterAll.
  const onExit = () => child.kill('SIGKILL');
  process.once('exit', onExit);
  const client = localClient(endpoint);
  const stop = async () => {
    client.destroy();
    process.off('exit', onExit);
    await kill(child);
  };
  try {
    await waitUntilReady(child, endpoint, output);
    await createStateTable(client, tableName);
  } catch (error) {
    await stop();
    throw error;
  }
  return {
    client,
    tableName,
    endpoint,
    createTable: (name) => createStateTable(client, name),
    deleteTable: async (name) => {
      await client.send(new DeleteTableCommand({ TableName: name }));
    },
    stop,
  };
};

/** Starts DynamoDB Local with one state table; the caller must stop() it (an exit hook is the backstop). */
export const startDynamoDbLocal = async (tableName = 'forwarder-state'): Promise<DynamoDbLocal> => {
  assertJava();
  for (let attempt = 1; ; attempt++) {
    try {
      return await launch(tableName);
    } catch (error) {
      if (!(error instanceof ExitedWhileStarting) || attempt >= 3) throw error;
    }
  }
};
