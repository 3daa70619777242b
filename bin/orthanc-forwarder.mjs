#!/usr/bin/env node
/**
 * The `orthanc-forwarder` command. npm's shims run it with `node` on every platform (a shell
 * script could not start on Windows). It chooses the Node, the script and the memory settings,
 * then hands over:
 *
 * - Node: an installed copy runs on the `node` that started it, which must be recent enough; a
 *   checkout prefers the Node that its `node` devDependency installed, where the system's may be older.
 * - The script: dist/cli.mjs, the bundle that `npm run build` writes (npm ci and npm pack run it),
 *   which keeps local mode within its memory target (docs/performance.md, "Memory"); in a checkout
 *   whose sources or locked dependencies changed since the build, bin/cli.ts, so that an edit runs
 *   without a rebuild.
 * - Memory: V8's `--optimize-for-size` (Node refuses it in NODE_OPTIONS) and glibc's
 *   MALLOC_ARENA_MAX=2, which glibc reads once, at start. Both need a fresh process, so on POSIX
 *   this one becomes it (execve: the same pid, so signals and the exit code are the CLI's own).
 *
 * Plain JavaScript that an older Node still parses, so that it gets as far as naming the version
 * it needs, or as starting the checkout's own Node.
 */
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, realpathSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { setFlagsFromString } from 'node:v8';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
/** npm installs the package under node_modules; anywhere else it is a checkout. */
const INSTALLED = ROOT.split(/[\\/]/).includes('node_modules');
const NODE_FLAGS = ['--optimize-for-size', '--disable-warning=ExperimentalWarning'];

/** The oldest Node major that package.json's `engines` accepts (`>=24`). */
const requiredMajor = () => {
  const { engines } = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'));
  return Number(/^>=\s*(\d+)/.exec(engines.node)?.[1]);
};

/**
 * The Node to run on: the checkout's own (the `node` devDependency) if it has one, else this one.
 * npm's .bin/node on Windows is a shell shim, not Node, so there it is always this one.
 */
const chooseNode = () => {
  const pinned = join(ROOT, 'node_modules', '.bin', 'node');
  return !INSTALLED && process.platform !== 'win32' && existsSync(pinned)
    ? realpathSync(pinned)
    : realpathSync(process.execPath);
};

/** Whether a `.ts` file under the folders the bundle is built from, or the lockfile, is newer than `time`. */
const sourcesNewerThan = (/** @type {number} */ time) =>
  [
    join(ROOT, 'package-lock.json'),
    ...['bin', 'lambdas', 'testbed'].flatMap((folder) =>
      readdirSync(join(ROOT, folder), { recursive: true, encoding: 'utf8' })
        .filter((name) => name.endsWith('.ts'))
        .map((name) => join(ROOT, folder, name)),
    ),
  ].some((path) => (statSync(path, { throwIfNoEntry: false })?.mtimeMs ?? 0) > time);

/** The bundle, except in a checkout without one or whose sources changed since it was built. */
const chooseScript = () => {
  const bundle = join(ROOT, 'dist', 'cli.mjs');
  if (INSTALLED) return bundle;
  const built = statSync(bundle, { throwIfNoEntry: false })?.mtimeMs;
  return built === undefined || sourcesNewerThan(built) ? join(ROOT, 'bin', 'cli.ts') : bundle;
};

/** Becomes `node args`; returns only where the platform has no execve (Windows). */
const execInPlace = (
  /** @type {string} */ node,
  /** @type {string[]} */ args,
  /** @type {NodeJS.ProcessEnv} */ env,
) => {
  // Node < 22.15 has no execve.
  if (typeof process.execve !== 'function') return;
  try {
    process.execve(node, [node, ...args], env);
  } catch (error) {
    if (/** @type {NodeJS.ErrnoException} */ (error).code !== 'ERR_FEATURE_UNAVAILABLE_ON_PLATFORM')
      throw error;
  }
};

/**
 * Runs the checkout's Node as a child, for an older Node that cannot become it: its exit code or
 * signal becomes ours. SIGTERM and SIGHUP, sent to this process, are passed on. SIGINT is not:
 * Ctrl-C reaches the child anyway (the terminal signals the whole process group), and a second
 * SIGINT would make `run` quit at once instead of finishing its work in flight.
 */
const runChild = (
  /** @type {string} */ node,
  /** @type {string[]} */ args,
  /** @type {NodeJS.ProcessEnv} */ env,
) => {
  const child = spawn(node, args, { stdio: 'inherit', env });
  const pass = (/** @type {NodeJS.Signals} */ signal) => child.kill(signal);
  process
    .on('SIGTERM', pass)
    .on('SIGHUP', pass)
    .on('SIGINT', () => {});
  child.once('error', (error) => {
    process.stderr.write(`orthanc-forwarder: cannot start ${node}: ${error.message}\n`);
    process.exit(1);
  });
  child.once('exit', (code, signal) => {
    if (signal === null) process.exit(code ?? 1);
    process.removeAllListeners(signal);
    process.kill(process.pid, signal);
  });
};

/**
 * Windows: the CLI runs in this process. V8's flag is set before the CLI loads (the heap it
 * configures at start keeps the defaults); glibc's arenas do not apply. Node's printer of warnings
 * is told to skip the experimental ones, as `--disable-warning=ExperimentalWarning` does.
 */
const runHere = async (/** @type {string} */ script) => {
  setFlagsFromString('--optimize-for-size');
  for (const printer of process.listeners('warning')) {
    process.off('warning', printer).on('warning', (warning) => {
      if (warning.name !== 'ExperimentalWarning') printer(warning);
    });
  }
  await import(pathToFileURL(script).href);
};

/** Stops here, naming the version needed, when this Node is older than package.json's `engines`. */
const refuseOldNode = (/** @type {string} */ thisNode) => {
  const required = requiredMajor();
  if (Number(process.versions.node.split('.')[0]) >= required) return;
  process.stderr.write(
    `orthanc-forwarder: needs Node.js ${required} or later; this is Node.js ${process.version} (${thisNode}). ` +
      'Install a newer Node.js, or put it first on the PATH.\n',
  );
  process.exit(2);
};

const node = chooseNode();
const thisNode = realpathSync(process.execPath);
if (node === thisNode) refuseOldNode(thisNode);
const script = chooseScript();
const env = { ...process.env, MALLOC_ARENA_MAX: process.env.MALLOC_ARENA_MAX ?? '2' };
const args = [
  ...process.execArgv.filter((flag) => !NODE_FLAGS.includes(flag)),
  ...NODE_FLAGS,
  script,
  ...process.argv.slice(2),
];
execInPlace(node, args, env);
if (node === thisNode) await runHere(script);
else runChild(node, args, env);
