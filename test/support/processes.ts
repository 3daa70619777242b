/**
 * Child processes for the tests and the chaos runner (no vitest here, so that scripts can use it):
 * run one to its end, or start one and watch its log lines as they come; SIGKILL every one still
 * running when the test or the script is done.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export const BIN = fileURLToPath(new URL('../../bin/orthanc-forwarder.mjs', import.meta.url));
/** The forwarder that SIGKILLs itself at a chosen step (see crash-at.ts). */
export const CRASH_AT = fileURLToPath(new URL('./crash-at.ts', import.meta.url));
/** The steps crash-at.ts can die at: two of the change-feed reader's, then the move protocol's. */
export const CRASH_STEPS = [
  'queued',
  'cursor-advanced',
  'snapshot-taken',
  'sent',
  'verified',
  'deleted',
] as const;
export type CrashStep = (typeof CRASH_STEPS)[number];

/** The CLI's TypeScript entry, for a child that needs Node options of its own (MOVE_DEADLINE). */
export const CLI = fileURLToPath(new URL('../../bin/cli.ts', import.meta.url));

/**
 * Imported first (`--import`) into a local-mode forwarder child (the CLI or crash-at.ts), gives
 * each attempt of a move a deadline that passes once its Nth STOW-RS request was answered, N
 * from the environment variable MOVE_DEADLINE_AFTER_STOWS (see move-deadline.ts).
 */
export const MOVE_DEADLINE = new URL('./move-deadline.ts', import.meta.url).href;
export const MOVE_DEADLINE_AFTER_STOWS = 'MOVE_DEADLINE_AFTER_STOWS';

/** One forwarder Lambda invocation that SIGKILLs itself at a point of its move (see lambda-crash-at.ts). */
export const LAMBDA_CRASH_AT = fileURLToPath(new URL('./lambda-crash-at.ts', import.meta.url));
/** Where lambda-crash-at.ts can die, as its HTTP client sees the move on the wire. */
export const LAMBDA_CRASH_POINTS = ['stow-answered', 'delete-requested', 'delete-answered'] as const;
export type LambdaCrashPoint = (typeof LAMBDA_CRASH_POINTS)[number];

/**
 * How the crash drivers die: the marker written synchronously, so that it is on disk before the
 * process is gone, then SIGKILL: no handler, no cleanup.
 */
export const dieWithMarker = (markerPath: string, marker: Readonly<Record<string, unknown>>): never => {
  writeFileSync(markerPath, JSON.stringify(marker));
  process.kill(process.pid, 'SIGKILL');
  throw new Error('SIGKILL did not end the process');
};

export interface ProcessResult {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

export interface RunningProcess {
  readonly child: ChildProcess;
  /** Settles when the process has ended (by itself or killed), with everything it printed. */
  readonly done: Promise<ProcessResult>;
}

const children = new Set<ChildProcess>();

/**
 * Starts a child process. `onLine` sees each complete line of its stdout and stderr as it is
 * printed (Powertools writes INFO to stdout, WARN and ERROR to stderr).
 */
export const startProcess = (
  command: string,
  args: readonly string[],
  options: { env?: NodeJS.ProcessEnv; onLine?: (line: string) => void } = {},
): RunningProcess => {
  const child = spawn(command, args, { env: options.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  const stdout: Buffer[] = [];
  const stderr: Buffer[] = [];
  const lineReader = () => {
    let rest = '';
    return (chunk: Buffer) => {
      if (options.onLine === undefined) return;
      const lines = (rest + chunk.toString('utf8')).split('\n');
      rest = lines.pop() ?? '';
      for (const line of lines) options.onLine(line);
    };
  };
  const outLines = lineReader();
  const errLines = lineReader();
  child.stdout?.on('data', (chunk: Buffer) => {
    stdout.push(chunk);
    outLines(chunk);
  });
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr.push(chunk);
    errLines(chunk);
  });
  const done = new Promise<ProcessResult>((resolve, reject) => {
    child.once('error', (error) => {
      children.delete(child);
      reject(error);
    });
    child.once('close', (code, signal) => {
      children.delete(child);
      resolve({
        code,
        signal,
        stdout: Buffer.concat(stdout).toString('utf8'),
        stderr: Buffer.concat(stderr).toString('utf8'),
      });
    });
  });
  return { child, done };
};

/**
 * Longer than any command the tests run takes on a loaded machine, shorter than a test's timeout:
 * a child that hangs fails its test with what it printed, rather than a bare timeout.
 */
const RUN_TIMEOUT_MS = 60_000;

/**
 * Runs a child process to its end (or its death) and collects what it printed; SIGKILLs it, and
 * says so on its stderr, if it has not ended within RUN_TIMEOUT_MS.
 */
export const runProcess = async (
  command: string,
  args: readonly string[],
  env: NodeJS.ProcessEnv = process.env,
): Promise<ProcessResult> => {
  const { child, done } = startProcess(command, args, { env });
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    child.kill('SIGKILL');
  }, RUN_TIMEOUT_MS);
  try {
    const result = await done;
    if (!timedOut) return result;
    return {
      ...result,
      stderr: `${result.stderr}\n[test harness: SIGKILLed after ${RUN_TIMEOUT_MS} ms: ${args.join(' ')}]\n`,
    };
  } finally {
    clearTimeout(timer);
  }
};

/** Runs the CLI's entry (bin/orthanc-forwarder.mjs) to its end. */
export const cli = (args: readonly string[], env: NodeJS.ProcessEnv = process.env): Promise<ProcessResult> =>
  runProcess(BIN, args, env);

/** Only for a test that failed with a child still running: nothing outlives the test. */
export const killChildren = (): void => {
  for (const child of children) child.kill('SIGKILL');
  children.clear();
};

/** Last resort for a script that exits without its cleanup. */
process.once('exit', killChildren);

/** The JSON log lines of a run's output (Powertools writes one object per line). */
export const logLines = (output: string): Record<string, unknown>[] =>
  output
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as Record<string, unknown>);

/** One JSON log line, or undefined for anything else a process printed. */
export const parseLogLine = (line: string): Record<string, unknown> | undefined => {
  if (!line.startsWith('{')) return undefined;
  try {
    return JSON.parse(line) as Record<string, unknown>;
  } catch {
    return undefined;
  }
};
