/**
 * The stack as `cdk deploy` would ship it, run on this machine. The real CDK app is synthesized
 * as the CDK CLI runs it; each Lambda function is read from the template (handler, runtime,
 * timeout, memory, logging, environment) with its code from the asset CDK's bundling built, which
 * is copied where no node_modules lies above it, as Lambda unpacks it into /var/task. A
 * LambdaEnvironment stands in for one execution environment of a function: a child process of
 * the Node.js version the runtime names, with the variables Lambda would set, running the
 * bundle's handler through test/support/lambda-runtime.ts, warm from one invocation to the next.
 */
import { type ChildProcess, execFile, fork } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { cpSync, existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import {
  AssetManifestArtifact,
  CloudAssembly,
  type CloudFormationStackArtifact,
  CONTEXT_ENV,
  OUTDIR_ENV,
} from 'aws-cdk-lib/cx-api';
import type { ScheduledEvent } from 'aws-lambda';
import type { Invocation, RuntimeMessage } from './lambda-runtime.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
/** The project's Node 24, which cdk.json runs the app with too. */
const NODE = join(ROOT, 'node_modules/.bin/node');
const LAMBDA_RUNTIME = fileURLToPath(new URL('./lambda-runtime.ts', import.meta.url));

type Reference = { readonly Ref: string };
type GetAtt = { readonly 'Fn::GetAtt': readonly [string, string] };

interface FunctionProperties {
  readonly Handler: string;
  readonly Runtime: string;
  readonly Timeout: number;
  readonly MemorySize: number;
  readonly Code: { readonly S3Key: string };
  readonly Environment: { readonly Variables: Readonly<Record<string, string | Reference>> };
  readonly LoggingConfig?: { readonly LogFormat?: string; readonly ApplicationLogLevel?: string };
}

interface Resource {
  readonly Type: string;
  readonly Properties: unknown;
}

export interface DeployedFunction {
  readonly name: string;
  readonly properties: FunctionProperties;
  /** Its code as Lambda unpacks it: a copy of the asset, with no node_modules above it. */
  readonly taskRoot: string;
}

export interface DeployedStack {
  readonly account: string;
  readonly region: string;
  /** The function the schedule invokes, and the rule's logical ID. */
  readonly poller: DeployedFunction;
  readonly pollRule: string;
  /** The function the work queue's event source mapping invokes, and the mapping's batch size. */
  readonly forwarder: DeployedFunction;
  readonly batchSize: number;
  /** Logical IDs of the state table and the queues, which the environments' variables refer to. */
  readonly table: string;
  readonly queue: string;
  readonly backlogQueue: string;
  readonly deadLetterQueue: string;
  readonly visibilityTimeoutSeconds: number;
  readonly maxReceiveCount: number;
}

/**
 * Runs the app as `cdk synth` does: cdk.json's app command, with the context (cdk.json's, the
 * configuration file added) and the output folder in the variables the CLI passes them in.
 */
export const synthesize = async (
  configFile: string,
  outdir: string,
): Promise<CloudFormationStackArtifact> => {
  const cdk = JSON.parse(readFileSync(join(ROOT, 'cdk.json'), 'utf8')) as {
    app: string;
    context: Record<string, unknown>;
  };
  await promisify(execFile)('/bin/sh', ['-c', cdk.app], {
    cwd: ROOT,
    env: {
      ...process.env,
      [OUTDIR_ENV]: outdir,
      [CONTEXT_ENV]: JSON.stringify({ ...cdk.context, configFile }),
    },
    maxBuffer: 16 * 1024 * 1024,
  });
  const [stack, ...more] = new CloudAssembly(outdir).stacks;
  if (stack === undefined || more.length > 0) throw new Error(`expected one stack in ${outdir}`);
  return stack;
};

/**
 * A node_modules folder above `dir` holding a package, from which the bundle could resolve what
 * it lacks. One holding only dot-folders (a tool's cache) resolves nothing.
 */
const packagesAbove = (dir: string): string | undefined => {
  for (let at = dir; ; at = dirname(at)) {
    const folder = join(at, 'node_modules');
    if (existsSync(folder) && readdirSync(folder).some((entry) => !entry.startsWith('.'))) return folder;
    if (dirname(at) === at) return undefined;
  }
};

/** The folder of the asset the function's code is uploaded from, by its S3 key, in the asset manifest. */
const assetFolder = (stack: CloudFormationStackArtifact, s3Key: string): string => {
  const manifest = stack.dependencies.find(AssetManifestArtifact.isAssetManifestArtifact);
  const asset = Object.values(manifest?.contents.files ?? {}).find((file) =>
    Object.values(file.destinations).some((destination) => destination.objectKey === s3Key),
  );
  if (asset?.source.path === undefined || asset.source.packaging !== 'zip') {
    throw new Error(`no folder asset uploaded as ${s3Key} in the asset manifest`);
  }
  return join(stack.assembly.directory, asset.source.path);
};

/** Reads the synthesized stack and copies each function's code into `workDir`. */
export const readStack = (stack: CloudFormationStackArtifact, workDir: string): DeployedStack => {
  const template = stack.template.Resources as Record<string, Resource>;
  /** The one resource of a type (that matches), with its properties as the template has them. */
  const only = <Properties>(
    type: string,
    matches: (properties: Properties) => boolean = () => true,
  ): [string, Properties] => {
    const found = Object.entries(template).filter(
      ([, resource]) => resource.Type === type && matches(resource.Properties as Properties),
    );
    const [first] = found;
    if (first === undefined || found.length > 1)
      throw new Error(`expected one ${type}, found ${found.length}`);
    return [first[0], first[1].Properties as Properties];
  };
  const install = (logicalId: string): DeployedFunction => {
    const properties = template[logicalId]?.Properties as FunctionProperties;
    const taskRoot = join(workDir, logicalId);
    cpSync(assetFolder(stack, properties.Code.S3Key), taskRoot, { recursive: true });
    const packages = packagesAbove(taskRoot);
    if (packages !== undefined) throw new Error(`${packages} would resolve what the bundle lacks`);
    return { name: `${stack.stackName}-${logicalId}`, properties, taskRoot };
  };
  const [pollRule, rule] = only<{ Targets: [{ Arn: GetAtt }] }>('AWS::Events::Rule');
  type QueueProperties = {
    QueueName: string;
    RedrivePolicy: { deadLetterTargetArn: GetAtt; maxReceiveCount: number };
    VisibilityTimeout: number;
  };
  const [queue, work] = only<QueueProperties>('AWS::SQS::Queue', (q) => q.QueueName?.endsWith('-work'));
  const [backlogQueue] = only<QueueProperties>('AWS::SQS::Queue', (q) => q.QueueName?.endsWith('-backlog'));
  const [, mapping] = only<{ FunctionName: Reference; BatchSize: number; EventSourceArn: GetAtt }>(
    'AWS::Lambda::EventSourceMapping',
    (m) => m.EventSourceArn['Fn::GetAtt'][0] === queue,
  );
  const [table] = only('AWS::DynamoDB::Table');
  return {
    account: stack.environment.account,
    region: stack.environment.region,
    poller: install(rule.Targets[0].Arn['Fn::GetAtt'][0]),
    pollRule,
    forwarder: install(mapping.FunctionName.Ref),
    batchSize: mapping.BatchSize,
    table,
    queue,
    backlogQueue,
    deadLetterQueue: work.RedrivePolicy.deadLetterTargetArn['Fn::GetAtt'][0],
    visibilityTimeoutSeconds: work.VisibilityTimeout,
    maxReceiveCount: work.RedrivePolicy.maxReceiveCount,
  };
};

/** The event EventBridge sends on the poll schedule. */
export const scheduledEvent = (stack: DeployedStack): ScheduledEvent => ({
  version: '0',
  id: randomUUID(),
  'detail-type': 'Scheduled Event',
  source: 'aws.events',
  account: stack.account,
  time: new Date().toISOString(),
  region: stack.region,
  resources: [`arn:aws:events:${stack.region}:${stack.account}:rule/${stack.pollRule}`],
  detail: {},
});

/** A failed invocation, as Lambda reports it. */
export class LambdaError extends Error {
  readonly errorType: string;

  constructor(errorType: string, errorMessage: string) {
    super(`${errorType}: ${errorMessage}`);
    this.errorType = errorType;
  }
}

interface Waiting {
  readonly resolve: (value: unknown) => void;
  readonly reject: (error: Error) => void;
}

const running = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

export class LambdaEnvironment {
  private readonly child: ChildProcess;
  private readonly timeoutMs: number;
  private readonly waiting = new Map<number | 'init', Waiting>();
  private nextId = 0;
  private printed = '';

  private constructor(child: ChildProcess, fn: DeployedFunction) {
    this.child = child;
    this.timeoutMs = fn.properties.Timeout * 1000;
    const collect = (chunk: Buffer) => {
      this.printed += chunk.toString('utf8');
    };
    child.stdout?.on('data', collect);
    child.stderr?.on('data', collect);
    child.on('message', (message: RuntimeMessage) => this.settle(message));
    child.once('exit', (code, signal) => {
      running.delete(child);
      for (const { reject } of this.waiting.values()) {
        reject(new Error(`the environment exited (${signal ?? code}):\n${this.printed.slice(-4_000)}`));
      }
      this.waiting.clear();
    });
  }

  /**
   * A new execution environment of the function: Lambda's variables, the function's own (each
   * `Ref` resolved through `physicalIds`) and `variables` (endpoints, credentials) over them; its
   * init phase done, on the Node.js version of the function's runtime.
   */
  static async start(
    fn: DeployedFunction,
    options: { physicalIds: Readonly<Record<string, string>>; variables: Readonly<Record<string, string>> },
  ): Promise<LambdaEnvironment> {
    const own = Object.entries(fn.properties.Environment.Variables).map(([key, value]) => {
      if (typeof value === 'string') return [key, value];
      const physical = options.physicalIds[value.Ref];
      if (physical === undefined) throw new Error(`${fn.name} ${key}: nothing stands in for ${value.Ref}`);
      return [key, physical];
    });
    const { LogFormat, ApplicationLogLevel } = fn.properties.LoggingConfig ?? {};
    const child = fork(LAMBDA_RUNTIME, [], {
      execPath: NODE,
      execArgv: ['--disable-warning=ExperimentalWarning'],
      cwd: fn.taskRoot,
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
      env: {
        PATH: '/usr/local/bin:/usr/bin:/bin',
        TZ: ':UTC',
        LAMBDA_TASK_ROOT: fn.taskRoot,
        _HANDLER: fn.properties.Handler,
        AWS_EXECUTION_ENV: `AWS_Lambda_${fn.properties.Runtime}`,
        AWS_LAMBDA_FUNCTION_NAME: fn.name,
        AWS_LAMBDA_FUNCTION_VERSION: '$LATEST',
        AWS_LAMBDA_FUNCTION_MEMORY_SIZE: String(fn.properties.MemorySize),
        ...(LogFormat === undefined ? {} : { AWS_LAMBDA_LOG_FORMAT: LogFormat }),
        ...(ApplicationLogLevel === undefined ? {} : { AWS_LAMBDA_LOG_LEVEL: ApplicationLogLevel }),
        // A Lambda has no ~/.aws: nothing of this machine's AWS configuration may slip in.
        AWS_CONFIG_FILE: '/dev/null',
        AWS_SHARED_CREDENTIALS_FILE: '/dev/null',
        ...Object.fromEntries(own),
        ...options.variables,
      },
    });
    running.add(child);
    const environment = new LambdaEnvironment(child, fn);
    const node = (await environment.await('init')) as string;
    const wanted = /^nodejs(\d+)\.x$/.exec(fn.properties.Runtime)?.[1];
    if (node.split('.')[0] !== `v${wanted}`) {
      await environment.stop();
      throw new Error(`${fn.properties.Runtime} wants Node ${wanted}, the environment runs ${node}`);
    }
    return environment;
  }

  /** Everything the environment printed: its logs and metrics. */
  get output(): string {
    return this.printed;
  }

  /** One invocation; rejects with a LambdaError when the handler fails. */
  invoke<T>(event: unknown): Promise<T> {
    const id = this.nextId++;
    const answered = this.await(id);
    this.child.send({ id, event, timeoutMs: this.timeoutMs } satisfies Invocation);
    return answered as Promise<T>;
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise((resolve) => this.child.once('exit', resolve));
    this.child.kill('SIGKILL');
    await exited;
  }

  private await(key: number | 'init'): Promise<unknown> {
    return new Promise((resolve, reject) => this.waiting.set(key, { resolve, reject }));
  }

  private settle(message: RuntimeMessage): void {
    const key = message.type === 'ready' || message.type === 'init-error' ? 'init' : message.id;
    const waiting = this.waiting.get(key);
    this.waiting.delete(key);
    if (message.type === 'ready') waiting?.resolve(message.node);
    else if (message.type === 'result') waiting?.resolve(message.result);
    else waiting?.reject(new LambdaError(message.errorType, message.errorMessage));
  }
}
