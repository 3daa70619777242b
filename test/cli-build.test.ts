/**
 * The CLI as it ships: the bundle that `npm run build` writes (the global setup runs it), the
 * package that `npm pack` makes, installed by npm, and bin/orthanc-forwarder.mjs's choices: the
 * bundle or the TypeScript sources, which Node, and how it hands over. Which of them a process
 * runs is Node's own answer: a module preloaded through NODE_OPTIONS prints the script, the flags
 * and the version of every Node started (the entry's first, the CLI's last).
 */
import {
  cpSync,
  existsSync,
  mkdtempSync,
  readFileSync,
  realpathSync,
  rmSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI_BUNDLE } from '../scripts/bundle.ts';
import { type ProcessResult, runProcess, startProcess } from './support/processes.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const VERSION = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
/** The checkout's own Node (the `node` devDependency), which the entry prefers in a checkout. */
const CHECKOUT_NODE = realpathSync(join(ROOT, 'node_modules', '.bin', 'node'));
const STARTED = 'started:';
const observed: NodeJS.ProcessEnv = {
  ...process.env,
  NODE_OPTIONS: `--import=data:text/javascript,console.error('${STARTED}'+JSON.stringify({entry:process.argv[1],flags:process.execArgv,node:process.version}))`,
  // An installed copy runs the `node` on PATH: make it this Node 24.
  PATH: `${dirname(process.execPath)}${delimiter}${process.env.PATH ?? ''}`,
};
/** Node as Windows has it: no execve (preloaded, so that the entry sees it so). */
const WITHOUT_EXECVE = '--import=data:text/javascript,delete process.execve';

interface Started {
  entry: string;
  flags: string[];
  node: string;
}

/** The Node that ran the CLI: the last one started. */
const started = (result: ProcessResult): Started => {
  const line = result.stderr
    .split('\n')
    .filter((text) => text.startsWith(STARTED))
    .at(-1);
  if (line === undefined) throw new Error(`Node did not start:\n${result.stderr}`);
  return JSON.parse(line.slice(STARTED.length)) as Started;
};

/** How the CLI runs as it ships: the bundle, on Node 24, with V8 told to favour memory. */
const asShipped = (bundle: string): Started => ({
  entry: bundle,
  flags: expect.arrayContaining(['--optimize-for-size']) as string[],
  node: process.version,
});

/**
 * A Node that is not the checkout's: the system's, which runs npm (here older than 24, where the
 * entry cannot execve), found on the PATH outside node_modules.
 */
const otherNode = (): string => {
  for (const folder of (process.env.PATH ?? '').split(delimiter)) {
    const node = join(folder, 'node');
    if (!folder.includes('node_modules') && existsSync(node) && realpathSync(node) !== CHECKOUT_NODE)
      return node;
  }
  throw new Error(`no Node besides the checkout's on the PATH (${process.env.PATH})`);
};

/** What the process printed besides the preload's line. */
const printed = (result: ProcessResult) => ({
  code: result.code,
  stdout: result.stdout,
  stderr: result.stderr
    .split('\n')
    .filter((text) => !text.startsWith(STARTED))
    .join('\n'),
});

/** Sets a file's times `seconds` from now. */
const touch = (path: string, seconds: number): void => {
  const time = new Date(Date.now() + seconds * 1000);
  utimesSync(path, time, time);
};

describe('the built CLI', () => {
  let work: string;
  let badConfig: string;
  let statusArgs: string[];
  /** Servers that refuse connections: `run` goes on and retries them, `run --until-idle` stops (exit 1). */
  let unreachable: string;

  /** A configuration of servers that refuse connections (port 1), with `extra` settings. */
  const writeConfig = (name: string, extra: Record<string, unknown> = {}): string => {
    const path = join(work, name);
    writeFileSync(
      path,
      JSON.stringify({
        sources: [{ id: 'site-a', url: 'http://127.0.0.1:1', username: 'orthanc', password: 'orthanc' }],
        destination: { url: 'http://127.0.0.1:1/dicom-web', username: 'orthanc', password: 'orthanc' },
        ...extra,
      }),
    );
    return path;
  };

  beforeAll(() => {
    work = mkdtempSync(join(tmpdir(), 'orthanc-forwarder-cli-build-'));
    badConfig = writeConfig('forwarder.json', { concurrency: 0 });
    statusArgs = ['status', '--config', badConfig, '--state', join(work, 'state.sqlite')];
    unreachable = writeConfig('unreachable.json');
  });

  afterAll(() => {
    rmSync(work, { recursive: true, force: true });
  });

  const expectConfigError = (result: ProcessResult) => {
    expect(result.code).toBe(2);
    expect(result.stdout).toBe('');
    expect(result.stderr).toContain(`invalid ${badConfig}:\n  concurrency: `);
  };

  /** A copy of the checkout whose bundle is newer than its sources, so that no other test disturbs it. */
  const copyCheckout = (name: string): string => {
    const checkout = join(work, name);
    for (const path of ['bin', 'lambdas', 'testbed', 'package.json', 'package-lock.json', 'dist']) {
      cpSync(join(ROOT, path), join(checkout, path), { recursive: true, verbatimSymlinks: true });
    }
    symlinkSync(join(ROOT, 'node_modules'), join(checkout, 'node_modules'));
    touch(join(checkout, 'dist', 'cli.mjs'), 60);
    return checkout;
  };

  it('dist/cli.mjs runs: its help, and a configuration error that names the field (exit 2)', async () => {
    expect(existsSync(CLI_BUNDLE)).toBe(true);
    const help = await runProcess(process.execPath, [CLI_BUNDLE, '--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain('Usage: orthanc-forwarder');
    expect(help.stdout).toContain('demo [options]');
    expectConfigError(await runProcess(process.execPath, [CLI_BUNDLE, ...statusArgs]));
    const version = await runProcess(process.execPath, [CLI_BUNDLE, '--version']);
    expect({ code: version.code, stdout: version.stdout.trim() }).toEqual({ code: 0, stdout: VERSION });
  });

  it('in a checkout, the entry runs the bundle; the sources once one is newer, or without a bundle', async () => {
    const checkout = copyCheckout('checkout');
    // bin/orthanc-forwarder, the name the documents use in a checkout, is the entry under another name.
    const entry = join(checkout, 'bin', 'orthanc-forwarder');
    expect(realpathSync(entry)).toBe(join(checkout, 'bin', 'orthanc-forwarder.mjs'));

    const fromBundle = await runProcess(entry, statusArgs, observed);
    expect(started(fromBundle)).toEqual(asShipped(join(checkout, 'dist', 'cli.mjs')));
    expectConfigError(fromBundle);

    touch(join(checkout, 'lambdas', 'core', 'config.ts'), 120);
    const fromSources = await runProcess(entry, statusArgs, observed);
    expect(started(fromSources)).toEqual(asShipped(join(checkout, 'bin', 'cli.ts')));
    expect(printed(fromSources)).toEqual(printed(fromBundle));

    rmSync(join(checkout, 'dist'), { recursive: true });
    const unbuilt = await runProcess(entry, statusArgs, observed);
    expect(started(unbuilt).entry).toBe(join(checkout, 'bin', 'cli.ts'));
    expect(printed(unbuilt)).toEqual(printed(fromBundle));
  });

  it("in a checkout, another Node hands over to the checkout's; without execve to a child, which SIGTERM reaches", async () => {
    const checkout = copyCheckout('checkout-other-node');
    const entry = join(checkout, 'bin', 'orthanc-forwarder.mjs');
    const bundle = join(checkout, 'dist', 'cli.mjs');
    const node = otherNode();

    const handedOver = await runProcess(node, [entry, ...statusArgs], observed);
    expect(started(handedOver)).toEqual(asShipped(bundle));
    expectConfigError(handedOver);
    const asChild = await runProcess(node, [WITHOUT_EXECVE, entry, ...statusArgs], observed);
    expect(started(asChild)).toEqual(asShipped(bundle));
    expect(printed(asChild)).toEqual(printed(handedOver));

    // A service that cannot reach its servers goes on; SIGTERM to the entry stops the CLI cleanly.
    let running: () => void = () => {};
    const checked = new Promise<void>((resolve) => {
      running = resolve;
    });
    const service = startProcess(
      node,
      [WITHOUT_EXECVE, entry, 'run', '--config', unreachable, '--state', join(work, 'service.sqlite')],
      { env: observed, onLine: (line) => line.includes('"start-up check done"') && running() },
    );
    await checked;
    service.child.kill('SIGTERM');
    const stopped = await service.done;
    expect(started(stopped)).toEqual(asShipped(bundle));
    expect(stopped.code, stopped.stderr).toBe(0);
    expect(stopped.stderr).toContain('SIGTERM: finishing the work in flight');
    expect(stopped.stdout).toContain('"message":"run finished"');
  });

  it('npm installs the packed entry: it runs on Node alone (no shell), or names the Node it needs', async () => {
    const packed = await runProcess('npm', [
      'pack',
      '--ignore-scripts',
      '--json',
      '--pack-destination',
      work,
      ROOT,
    ]);
    expect(packed.code, packed.stderr).toBe(0);
    const [tarball] = JSON.parse(packed.stdout) as { filename: string; files: { path: string }[] }[];
    if (tarball === undefined) throw new Error(`npm pack printed no package:\n${packed.stdout}`);
    const files = tarball.files.map((file) => file.path);
    expect(files).toEqual(
      expect.arrayContaining([
        'bin/orthanc-forwarder.mjs',
        'dist/cli.mjs',
        'README.md',
        'docs/performance.md',
        'examples/aws-config.json',
        'examples/orthanc-forwarder.service',
        'package.json',
      ]),
    );
    expect(files.filter((file) => file.startsWith('bin/'))).toEqual(['bin/orthanc-forwarder.mjs']);
    expect(files.filter((file) => file.endsWith('.ts'))).toEqual([]);

    // As README.md's "Running as a service" installs it: offline, since the package depends on
    // nothing (a hospital host may have no registry to ask).
    const prefix = join(work, 'prefix');
    const install = await runProcess('npm', [
      'install',
      '--global',
      '--prefix',
      prefix,
      '--offline',
      '--no-audit',
      '--no-fund',
      join(work, tarball.filename),
    ]);
    expect(install.code, install.stderr).toBe(0);
    const command = join(prefix, 'bin', 'orthanc-forwarder');
    const installed = join(prefix, 'lib', 'node_modules', 'orthanc-forwarder');
    expect(realpathSync(command)).toBe(join(installed, 'bin', 'orthanc-forwarder.mjs'));
    expect(readFileSync(command, 'utf8').split('\n')[0]).toBe('#!/usr/bin/env node');

    // A PATH of the command and Node only: no shell could be found, none is needed.
    const nodeOnly = { ...observed, PATH: `${join(prefix, 'bin')}${delimiter}${dirname(process.execPath)}` };
    const help = await runProcess('orthanc-forwarder', ['--help'], nodeOnly);
    expect(printed(help)).toMatchObject({
      code: 0,
      stdout: expect.stringContaining('Usage: orthanc-forwarder'),
    });
    expect(started(help)).toEqual(asShipped(join(installed, 'dist', 'cli.mjs')));
    const version = await runProcess('orthanc-forwarder', ['--version'], nodeOnly);
    expect(printed(version)).toEqual({ code: 0, stdout: `${VERSION}\n`, stderr: '' });
    const status = await runProcess(process.execPath, [command, ...statusArgs], nodeOnly);
    expect(started(status)).toEqual(asShipped(join(installed, 'dist', 'cli.mjs')));
    expectConfigError(status);

    // Windows has no execve: the CLI runs in the entry's own process, its output the same, without
    // the warning that the bundle alone prints for node:sqlite.
    const inProcess = await runProcess(process.execPath, [WITHOUT_EXECVE, command, ...statusArgs], nodeOnly);
    expect(started(inProcess)).toEqual({
      entry: command,
      flags: [WITHOUT_EXECVE],
      node: process.version,
    });
    expect(printed(inProcess)).toEqual(printed(status));
    const untilIdle = [
      'run',
      '--until-idle',
      '--config',
      unreachable,
      '--state',
      join(work, 'until-idle.sqlite'),
    ];
    const bundleAlone = await runProcess(process.execPath, [
      join(installed, 'dist', 'cli.mjs'),
      ...untilIdle,
    ]);
    expect(bundleAlone.stderr).toContain('ExperimentalWarning: SQLite');
    const withoutWarning = await runProcess(process.execPath, [WITHOUT_EXECVE, command, ...untilIdle]);
    expect(withoutWarning.code).toBe(1);
    expect(withoutWarning.stderr).toContain('orthanc-forwarder: not started: a server is unreachable');
    expect(withoutWarning.stderr).not.toContain('Warning');

    const tooOld = await runProcess(process.execPath, [
      "--import=data:text/javascript,Object.defineProperty(process,'version',{value:'v22.14.0'});Object.defineProperty(process.versions,'node',{value:'22.14.0'})",
      command,
      '--help',
    ]);
    expect(tooOld).toMatchObject({
      code: 2,
      stdout: '',
      stderr: expect.stringMatching(
        /^orthanc-forwarder: needs Node\.js 24 or later; this is Node\.js v22\.14\.0 /,
      ),
    });
  }, 300_000);
});
