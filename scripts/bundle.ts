/**
 * Bundles our Node code into JavaScript: the CLI that ships (`npm run build` runs this module,
 * writing dist/cli.mjs), and the benchmark's child. From a bundle Node compiles no TypeScript
 * and loads few modules, which is most of what keeps local mode within its memory target
 * (docs/performance.md, "Memory"). What is imported dynamically (the CLI's `--aws` commands)
 * goes to chunks beside the entry: inlined, it would cost every command about 10 MB of RSS to
 * parse, although never run.
 */
import { randomUUID } from 'node:crypto';
import { mkdir, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, extname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import { ESM_BUNDLE } from '../lib/bundling.ts';

const fromRoot = (path: string) => fileURLToPath(new URL(`../${path}`, import.meta.url));

/** What bin/orthanc-forwarder runs when it is not older than the sources. */
export const CLI_BUNDLE = fromRoot('dist/cli.mjs');

/**
 * A chunk of an earlier build is kept this long: a process started from the previous entry
 * imports its `--aws` chunks only when it gets there, and a build running beside this one may
 * have written its chunks and not yet its entry.
 */
const STALE_CHUNK_MS = 10 * 60_000;

/** A temporary file renamed over `path`: a process that starts meanwhile never reads half a file. */
const writeAtomically = async (path: string, contents: Uint8Array): Promise<void> => {
  await mkdir(dirname(path), { recursive: true });
  const partial = `${path}.${randomUUID()}.partial`;
  try {
    await writeFile(partial, contents);
    await rename(partial, path);
  } finally {
    await rm(partial, { force: true });
  }
};

const removeStaleChunks = async (folder: string, keep: ReadonlySet<string>): Promise<void> => {
  const cutoff = Date.now() - STALE_CHUNK_MS;
  for (const name of await readdir(folder).catch(() => [])) {
    const path = join(folder, name);
    const modified = (await stat(path).catch(() => undefined))?.mtimeMs;
    if (!keep.has(path) && modified !== undefined && modified < cutoff) await rm(path, { force: true });
  }
};

/** Bundles `entry` into `outfile`, and its dynamic imports into the folder `<outfile's name>.chunks`. */
export const bundle = async (entry: string, outfile: string): Promise<void> => {
  const target = resolve(outfile);
  const extension = extname(target);
  const name = basename(target, extension);
  const { outputFiles } = await build({
    entryPoints: [entry],
    outdir: dirname(target),
    entryNames: name,
    chunkNames: `${name}.chunks/[name]-[hash]`,
    outExtension: { '.js': extension },
    splitting: true,
    write: false,
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: ESM_BUNDLE.target,
    mainFields: [...ESM_BUNDLE.mainFields],
    banner: { js: ESM_BUNDLE.requireBanner },
    minify: true,
    logLevel: 'warning',
  });
  // The entry last: until then, a process that starts runs the previous entry and its chunks.
  const entryLast = outputFiles.toSorted((a, b) => Number(a.path === target) - Number(b.path === target));
  for (const file of entryLast) await writeAtomically(file.path, file.contents);
  await removeStaleChunks(
    join(dirname(target), `${name}.chunks`),
    new Set(entryLast.map((file) => file.path)),
  );
};

export const buildCli = (): Promise<void> => bundle(fromRoot('bin/cli.ts'), CLI_BUNDLE);

if (import.meta.main) await buildCli();
