/**
 * The CLI as it ships: the bundle that `npm run build` writes (the global setup runs it), the
 * package that `npm pack` makes, and bin/orthanc-forwarder's choice between the bundle and the
 * TypeScript sources. Which of them a process runs is Node's own answer: a module preloaded
 * through NODE_OPTIONS prints the script and the flags that Node was started with.
 */
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  renameSync,
  rmSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI_BUNDLE } from '../scripts/bundle.ts';
import { type ProcessResult, runProcess } from './support/processes.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const STARTED = 'started:';
const observed: NodeJS.ProcessEnv = {
  ...process.env,
  NODE_OPTIONS: `--import=data:text/javascript,console.error('${STARTED}'+JSON.stringify({entry:process.argv[1],flags:process.execArgv}))`,
  // An installed copy runs the `node` on PATH: make it this Node 24.
  PATH: `${dirname(process.execPath)}:${process.env.PATH ?? ''}`,
};

const started = (result: ProcessResult): { entry: string; flags: string[] } => {
  const line = result.stderr.split('\n').find((text) => text.startsWith(STARTED));
  if (line === undefined) throw new Error(`Node did not start:\n${result.stderr}`);
  return JSON.parse(line.slice(STARTED.length)) as { entry: string; flags: string[] };
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

  beforeAll(() => {
    work = mkdtempSync(join(tmpdir(), 'orthanc-forwarder-cli-build-'));
    badConfig = join(work, 'forwarder.json');
    writeFileSync(
      badConfig,
      JSON.stringify({
        sources: [{ id: 'site-a', url: 'http://127.0.0.1:8042', username: 'orthanc', password: 'orthanc' }],
        destination: { url: 'http://127.0.0.1:8043/dicom-web', username: 'orthanc', password: 'orthanc' },
        concurrency: 0,
      }),
    );
    statusArgs = ['status', '--config', badConfig, '--state', join(work, 'state.sqlite')];
  });

  afterAll(() => {
    rmSync(work, { recursive: true, force: true });
  });

  const expectConfigError = (result: ProcessResult) => {
    expect(result.code).toBe(2);
    expect(result.stdout).toBe('');
    expect(result.stderr).toContain(`invalid ${badConfig}:\n  concurrency: `);
  };

  it('dist/cli.mjs runs: its help, and a configuration error that names the field (exit 2)', async () => {
    expect(existsSync(CLI_BUNDLE)).toBe(true);
    const help = await runProcess(process.execPath, [CLI_BUNDLE, '--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain('Usage: orthanc-forwarder');
    expect(help.stdout).toContain('demo [options]');
    expectConfigError(await runProcess(process.execPath, [CLI_BUNDLE, ...statusArgs]));
    const version = await runProcess(process.execPath, [CLI_BUNDLE, '--version']);
    expect({ code: version.code, stdout: version.stdout.trim() }).toEqual({
      code: 0,
      stdout: (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version,
    });
  });

  it('in a checkout, the wrapper runs the bundle; the sources once one is newer, or without a bundle', async () => {
    // A copy of the checkout, so that making a source newer disturbs no other test.
    const checkout = join(work, 'checkout');
    for (const path of ['bin', 'lambdas', 'testbed', 'package.json', 'package-lock.json', 'dist']) {
      cpSync(join(ROOT, path), join(checkout, path), { recursive: true });
    }
    symlinkSync(join(ROOT, 'node_modules'), join(checkout, 'node_modules'));
    const wrapper = join(checkout, 'bin', 'orthanc-forwarder');
    const bundle = join(checkout, 'dist', 'cli.mjs');
    touch(bundle, 60);

    const fromBundle = await runProcess(wrapper, statusArgs, observed);
    expect(started(fromBundle)).toEqual({
      entry: bundle,
      flags: expect.arrayContaining(['--optimize-for-size']) as string[],
    });
    expectConfigError(fromBundle);

    touch(join(checkout, 'lambdas', 'core', 'config.ts'), 120);
    const fromSources = await runProcess(wrapper, statusArgs, observed);
    expect(started(fromSources)).toEqual({
      entry: join(checkout, 'bin', 'cli.ts'),
      flags: expect.arrayContaining(['--optimize-for-size']) as string[],
    });
    expect(printed(fromSources)).toEqual(printed(fromBundle));

    rmSync(join(checkout, 'dist'), { recursive: true });
    const unbuilt = await runProcess(wrapper, statusArgs, observed);
    expect(started(unbuilt).entry).toBe(join(checkout, 'bin', 'cli.ts'));
    expect(printed(unbuilt)).toEqual(printed(fromBundle));
  });

  it('npm pack ships the wrapper, the bundle and the docs; installed, the wrapper runs the bundle', async () => {
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
        'bin/orthanc-forwarder',
        'dist/cli.mjs',
        'README.md',
        'docs/performance.md',
        'examples/aws-config.json',
        'package.json',
      ]),
    );
    expect(files.filter((file) => file.endsWith('.ts'))).toEqual([]);

    // Laid out as npm installs it, without the package's dependencies: the bundle holds them.
    const modules = join(work, 'installed', 'node_modules');
    mkdirSync(join(modules, '.bin'), { recursive: true });
    const untar = await runProcess('tar', ['-xzf', join(work, tarball.filename), '-C', modules]);
    expect(untar.code, untar.stderr).toBe(0);
    renameSync(join(modules, 'package'), join(modules, 'orthanc-forwarder'));
    symlinkSync('../orthanc-forwarder/bin/orthanc-forwarder', join(modules, '.bin', 'orthanc-forwarder'));

    const installed = await runProcess(join(modules, '.bin', 'orthanc-forwarder'), statusArgs, observed);
    expect(started(installed)).toEqual({
      entry: join(modules, 'orthanc-forwarder', 'dist', 'cli.mjs'),
      flags: expect.arrayContaining(['--optimize-for-size']) as string[],
    });
    expectConfigError(installed);
  });
});
