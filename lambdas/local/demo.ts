/**
 * The demo: two source Orthancs and a destination on loopback, a few generated studies on each
 * source, the local pipeline run until idle, and a summary. Everything it starts, it stops.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateStudies } from '../../testbed/dicom-generator.ts';
import { forwarderConfigFor, instanceCount } from '../../testbed/forwarder-config.ts';
import { OrthancFleet, type OrthancServer } from '../../testbed/orthanc.ts';
import { uploadToOrthanc } from '../../testbed/upload.ts';
import { type ForwarderConfig, parseConfig } from '../core/config.ts';
import type { Log } from '../core/log.ts';
import type { StudyOutcome } from '../core/ports.ts';
import type { LocalRunner, RunParts } from './local-runner.ts';
import { type LocalState, openState } from './sqlite-state.ts';

export interface DemoSummary {
  readonly studiesMoved: number;
  readonly instancesMoved: number;
  readonly bytesMoved: number;
  readonly megabytesPerSecond: number;
  readonly durationSeconds: number;
  readonly sourcesEmpty: boolean;
  readonly sourceInstancesLeft: number;
  readonly destinationInstances: number;
  readonly instancesUploaded: number;
  readonly deadLetters: number;
  readonly rejected: number;
}

export interface DemoOptions {
  readonly log: Log;
  readonly onProgress?: (message: string) => void;
  readonly signal?: AbortSignal;
  /** Hands the run its runner (`demo --listen`: one the status page and metrics report on). */
  readonly withRunner: <T>(parts: RunParts, use: (runner: LocalRunner) => Promise<T>) => Promise<T>;
}

const SHAPE = {
  patients: 2,
  studiesPerPatient: 1,
  seriesPerStudy: 3,
  instancesPerSeries: 8,
  pixelBytes: 256 * 1024,
};

const demoConfig = (sources: readonly OrthancServer[], destination: OrthancServer): ForwarderConfig =>
  parseConfig(
    forwarderConfigFor(
      sources.map((server, index) => ({ id: `site-${String.fromCharCode(97 + index)}`, server })),
      destination,
      { pollIntervalSeconds: 0.5, quietSeconds: 3 },
    ),
  );

export const runDemo = async (options: DemoOptions): Promise<DemoSummary> => {
  const progress = options.onProgress ?? (() => undefined);
  const fleet = new OrthancFleet();
  const work = mkdtempSync(join(tmpdir(), 'orthanc-forwarder-demo-'));
  let state: LocalState | undefined;
  try {
    progress('starting two source Orthancs and a destination on 127.0.0.1');
    const [destination, ...sources] = await Promise.all([
      fleet.start({ name: 'destination', stableAge: 1 }),
      fleet.start({ name: 'site-a', stableAge: 1 }),
      fleet.start({ name: 'site-b', stableAge: 1 }),
    ]);
    if (destination === undefined) throw new Error('no destination');
    let uploaded = 0;
    for (const [index, source] of sources.entries()) {
      const set = generateStudies({ ...SHAPE, seed: `demo-${index}` });
      const results = await uploadToOrthanc(source, set.instances);
      const failed = results.filter((result) => result.status !== 200);
      if (failed.length > 0) throw new Error(`uploading to ${source.name}: ${failed.length} files refused`);
      uploaded += results.length;
      progress(`uploaded ${results.length} instances in ${set.patients.length} studies to ${source.name}`);
    }
    const config = demoConfig(sources, destination);
    const statePath = join(work, 'state.sqlite');
    state = openState(statePath, { maxReceives: config.retry.maxAttempts });
    const parts = { config, state, statePath, log: options.log };
    let done = 0;
    const onOutcome = (outcome: StudyOutcome) => {
      done += outcome.sent;
      progress(
        `${outcome.sourceId}: study ${outcome.studyId} ${outcome.result} (${done}/${uploaded} instances)`,
      );
    };
    progress('moving until idle');
    const summary = await options.withRunner(parts, (runner) =>
      runner.run({
        untilIdle: true,
        onOutcome,
        ...(options.signal === undefined ? {} : { signal: options.signal }),
      }),
    );
    const left = (await Promise.all(sources.map(instanceCount))).reduce((a, b) => a + b, 0);
    const seconds = summary.durationMs / 1000;
    return {
      studiesMoved: summary.studiesMoved,
      instancesMoved: summary.instancesMoved,
      bytesMoved: summary.bytesMoved,
      megabytesPerSecond: Number((summary.bytesMoved / 1e6 / seconds).toFixed(2)),
      durationSeconds: Number(seconds.toFixed(2)),
      sourcesEmpty: left === 0,
      sourceInstancesLeft: left,
      destinationInstances: await instanceCount(destination),
      instancesUploaded: uploaded,
      deadLetters: (await state.queue.stats()).deadLetters,
      rejected: summary.rejected,
    };
  } finally {
    state?.close();
    await fleet.destroyAll();
    rmSync(work, { recursive: true, force: true });
  }
};
