/**
 * Acceptance tests of local mode: real Orthanc servers, the real CLI as a child process (or the
 * real runner in-process where a test must act between two steps of a move).
 */
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../lambdas/core/config.ts';
import { createLog } from '../lambdas/core/log.ts';
import type { MoveStep } from '../lambdas/core/move-study.ts';
import type { StatusReport } from '../lambdas/core/status.ts';
import { openState } from '../lambdas/local/sqlite-state.ts';
import {
  type GeneratedInstance,
  generateStudies,
  SOP_CLASS_UID_TAG,
  withoutElements,
} from '../testbed/dicom-generator.ts';
import {
  cli,
  collect,
  configFor,
  expectAllAtDestination,
  findInstance,
  heldUids,
  instanceCount,
  logLines,
  md5Of,
  runUntilIdle,
  shape,
  startServers,
  storedMd5,
  upload,
  useTestbed,
} from './support/harness.ts';
import { expectNoPhi } from './support/no-leaks.ts';

// ---------------------------------------------------------------------------------------------
// Helpers

const statusOf = async (configPath: string, statePath: string): Promise<StatusReport> => {
  const result = await cli(['status', '--config', configPath, '--state', statePath, '--json']);
  expect(result.stderr).toBe('');
  expect(result.code).toBe(0);
  return JSON.parse(result.stdout) as StatusReport;
};

const ORTHANC_ID = /^[0-9a-f]{8}(-[0-9a-f]{8}){4}$/;

/** The state file's dead letters, bodies included (what `dlq list` never prints). */
const deadLettersIn = async (statePath: string) => {
  const state = openState(statePath);
  try {
    return await collect(state.queue.deadLetters());
  } finally {
    state.close();
  }
};

const sizeOf = (instances: readonly GeneratedInstance[]) =>
  instances.reduce((sum, instance) => sum + instance.byteLength, 0);

// ---------------------------------------------------------------------------------------------

describe('local mode', () => {
  const { fleet, workPath } = useTestbed('local');

  const writeConfig = (config: object): { configPath: string; statePath: string } => {
    const configPath = workPath('forwarder.json');
    writeFileSync(configPath, JSON.stringify(config, null, 2));
    return { configPath, statePath: workPath('state.sqlite') };
  };

  it('moves every study of two sources byte for byte, empties them, reports, and a rerun is a no-op', async () => {
    const [destination, siteA, siteB] = await startServers(fleet, ['destination', 'site-a', 'site-b']);
    const setA = generateStudies(shape('two-sources-a'));
    const setB = generateStudies(shape('two-sources-b'));
    await upload(siteA, setA.instances);
    await upload(siteB, setB.instances);
    const all = [...setA.instances, ...setB.instances];
    // The sources store the generated files as they are: the MD5s below compare like with like.
    for (const instance of setA.instances) {
      const id = await findInstance(siteA, instance.sopInstanceUid);
      expect(await storedMd5(siteA, id as string)).toBe(await md5Of(instance));
    }
    const { configPath, statePath } = writeConfig(
      configFor(
        [
          { id: 'site-a', server: siteA },
          { id: 'site-b', server: siteB },
        ],
        destination,
      ),
    );

    const run = await cli(['run', '--config', configPath, '--state', statePath, '--until-idle']);
    expect(run.code, run.stderr).toBe(0);

    expect(await instanceCount(siteA)).toBe(0);
    expect(await instanceCount(siteB)).toBe(0);
    expect(await instanceCount(destination)).toBe(all.length);
    await expectAllAtDestination(destination, all);

    const status = await statusOf(configPath, statePath);
    expect(status.queue).toEqual({ waiting: 0, inFlight: 0, deadLetters: 0 });
    expect(status.deadLetterGroups).toEqual([]);
    expect(status.rejected).toEqual([]);
    const none = { studies: 0, instances: 0, bytes: 0 };
    const movedFrom = (set: { instances: readonly GeneratedInstance[] }) => ({
      moved: { studies: 2, instances: set.instances.length, bytes: sizeOf(set.instances) },
      copied: none,
      deleted: set.instances.length,
    });
    expect(status.totals).toEqual({
      moved: { studies: 4, instances: all.length, bytes: sizeOf(all) },
      copied: none,
      deleted: all.length,
      rejected: 0,
      sources: { 'site-a': movedFrom(setA), 'site-b': movedFrom(setB) },
    });
    expect(status.sources.map((source) => source.id)).toEqual(['site-a', 'site-b']);
    for (const source of status.sources) {
      expect(source.unknown).toBeUndefined();
      expect(source.feed.lag).toBe(0);
      expect(source.waitingToBecomeStable).toBe(0);
      expect(source.atSource).toEqual(none);
    }

    const again = await cli(['run', '--config', configPath, '--state', statePath, '--until-idle']);
    expect(again.code, again.stderr).toBe(0);
    const finished = logLines(again.stdout).find((line) => line.message === 'run finished');
    expect(finished).toMatchObject({ studiesMoved: 0, instancesMoved: 0, bytesMoved: 0, deadLetters: 0 });
    expect(logLines(again.stdout).filter((line) => line.message === 'study outcome')).toEqual([]);
    expect((await statusOf(configPath, statePath)).totals).toEqual(status.totals);
    expect(await instanceCount(destination)).toBe(all.length);
  });

  it('leaves an instance that arrives during a move at the source, and moves it in a later round', async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    // One study of 2 series of 4 instances; the last one is held back and arrives mid-move.
    const set = generateStudies(
      shape('late-arrival', { patients: 1, seriesPerStudy: 2, instancesPerSeries: 4 }),
    );
    const late = set.instances.at(-1) as GeneratedInstance;
    const early = set.instances.slice(0, -1);
    expect(late.studyInstanceUid).toBe(early[0]?.studyInstanceUid);
    expect(late.seriesInstanceUid).toBe(early.at(-1)?.seriesInstanceUid);
    await upload(source, early);

    const config = parseConfig(configFor([{ id: 'site-a', server: source }], destination));
    const state = openState(workPath('state.sqlite'), { maxReceives: config.retry.maxAttempts });
    const log = createLog({ level: 'SILENT' });
    try {
      const steps: MoveStep[] = [];
      let leftAfterFirstMove: string[] | undefined;
      const onStep = async (step: MoveStep) => {
        steps.push(step);
        if (step === 'sent' && steps.filter((s) => s === 'sent').length === 1) await upload(source, [late]);
        if (step === 'deleted' && leftAfterFirstMove === undefined)
          leftAfterFirstMove = await heldUids(source);
      };
      const { outcomes } = await runUntilIdle(config, state, log, { onStep });

      // The first move sent, verified and deleted the seven instances of its snapshot, not the eighth.
      expect(outcomes[0]).toMatchObject({ result: 'moved', instances: 7, sent: 7, deleted: 7, rejected: 0 });
      expect(leftAfterFirstMove).toEqual([late.sopInstanceUid]);

      // A later round of the same run moves the late arrival once Orthanc calls the study stable
      // again: --until-idle does not call the source drained while the study waits for that.
      expect(await instanceCount(source)).toBe(0);
      expect(await instanceCount(destination)).toBe(set.instances.length);
      await expectAllAtDestination(destination, set.instances);
      expect(outcomes.filter((o) => o.result === 'moved').map((o) => o.deleted)).toEqual([7, 1]);

      // And a further run finds nothing to do.
      const further = await runUntilIdle(config, state, log);
      expect(further.outcomes.filter((o) => o.result !== 'gone')).toEqual([]);
      expect(await instanceCount(source)).toBe(0);
      expect(await instanceCount(destination)).toBe(set.instances.length);
      expect((await state.queue.stats()).deadLetters).toBe(0);
    } finally {
      state.close();
    }
  });

  it('keeps an instance the destination refuses at the source, reports it, and does not retry it forever', async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    const set = generateStudies(shape('refused', { patients: 1 }));
    // Without SOPClassUID in its data set: Orthanc's REST API stores it, its STOW-RS refuses it.
    const refusedIndex = 4;
    const instances = set.instances.map((instance, index) =>
      index === refusedIndex ? withoutElements(instance, [SOP_CLASS_UID_TAG]) : instance,
    );
    const refused = instances[refusedIndex] as GeneratedInstance;
    const accepted = instances.filter((instance) => instance !== refused);
    await upload(source, instances);
    const [studyId] = await source.rest<string[]>('GET', '/studies');
    const { configPath, statePath } = writeConfig(configFor([{ id: 'site-a', server: source }], destination));

    const run = await cli(['run', '--config', configPath, '--state', statePath, '--until-idle']);
    expect(run.code, run.stderr).toBe(1);

    expect(await heldUids(source)).toEqual([refused.sopInstanceUid]);
    expect(await findInstance(destination, refused.sopInstanceUid)).toBeUndefined();
    expect(await instanceCount(destination)).toBe(accepted.length);
    await expectAllAtDestination(destination, accepted);
    const [outcome, ...more] = logLines(run.stdout).filter((line) => line.message === 'study outcome');
    expect(outcome).toMatchObject({
      sourceId: 'site-a',
      studyId,
      result: 'partial',
      instances: instances.length,
      sent: accepted.length,
      deleted: accepted.length,
      rejected: 1,
    });
    // The feed may queue the study a second time (its StableStudy change read after the watch list
    // already queued it): such a move sends nothing and ends at once.
    for (const line of more) {
      expect(line).toMatchObject({
        studyId,
        result: 'partial',
        instances: 1,
        sent: 0,
        deleted: 0,
        rejected: 1,
      });
    }

    const status = await statusOf(configPath, statePath);
    expect(status.rejected).toHaveLength(1);
    expect(status.rejected[0]).toMatchObject({
      sourceId: 'site-a',
      studyId,
      sopInstanceUid: refused.sopInstanceUid,
    });
    expect(status.rejected[0]?.reason).toMatch(/destination/);
    // Refused for good is not a failure to retry: nothing waits, nothing was dead-lettered.
    expect(status.queue).toEqual({ waiting: 0, inFlight: 0, deadLetters: 0 });
    const text = await cli(['status', '--config', configPath, '--state', statePath]);
    expect(text.stdout).toContain('rejected instances: 1');
    expect(text.stdout).toContain(status.rejected[0]?.reason);
    const redrive = await cli(['redrive', '--config', configPath, '--state', statePath]);
    expect(redrive.stdout).toBe('redrove 0 message(s)\n');

    // The study queued again (as a sweep or a later instance would): the refused instance is not
    // sent again, the run ends, and it still stays where it is.
    const state = openState(statePath);
    await state.queue.enqueue([{ sourceId: 'site-a', studyId: studyId as string, reason: 'stable' }]);
    state.close();
    const rerun = await cli(['run', '--config', configPath, '--state', statePath, '--until-idle']);
    expect(rerun.code, rerun.stderr).toBe(1);
    const outcomes = logLines(rerun.stdout).filter((line) => line.message === 'study outcome');
    expect(outcomes).toHaveLength(1);
    expect(outcomes[0]).toMatchObject({ result: 'partial', instances: 1, sent: 0, deleted: 0, rejected: 1 });
    expect(await heldUids(source)).toEqual([refused.sopInstanceUid]);
    expect(await findInstance(destination, refused.sopInstanceUid)).toBeUndefined();
    const after = await statusOf(configPath, statePath);
    expect(after.rejected).toHaveLength(1);
    expect(after.queue).toEqual({ waiting: 0, inFlight: 0, deadLetters: 0 });

    expectNoPhi(
      [run.stdout, run.stderr, rerun.stdout, rerun.stderr, text.stdout, JSON.stringify(after)].join('\n'),
      [set],
    );
  });

  it('never logs PHI, even at DEBUG, and logs one outcome per study', async () => {
    const [destination, siteA, siteB] = await startServers(fleet, ['destination', 'site-a', 'site-b']);
    const setA = generateStudies(shape('phi-a', { patients: 3, studiesPerPatient: 2, modality: 'MR' }));
    const setB = generateStudies(shape('phi-b', { patients: 2 }));
    await upload(siteA, setA.instances);
    await upload(siteB, setB.instances);
    const studiesA = await siteA.rest<string[]>('GET', '/studies');
    const studiesB = await siteB.rest<string[]>('GET', '/studies');
    expect(studiesA).toHaveLength(6);
    const { configPath, statePath } = writeConfig(
      configFor(
        [
          { id: 'site-a', server: siteA },
          { id: 'site-b', server: siteB },
        ],
        destination,
      ),
    );

    const run = await cli([
      'run',
      '--config',
      configPath,
      '--state',
      statePath,
      '--until-idle',
      '--log-level',
      'DEBUG',
    ]);
    expect(run.code, run.stderr).toBe(0);
    const status = await cli(['status', '--config', configPath, '--state', statePath, '--json']);
    const statusText = await cli(['status', '--config', configPath, '--state', statePath]);
    expect(await instanceCount(siteA)).toBe(0);
    expect(await instanceCount(siteB)).toBe(0);

    expectNoPhi([run.stdout, run.stderr, status.stdout, status.stderr, statusText.stdout].join('\n'), [
      setA,
      setB,
    ]);

    const outcomes = logLines(`${run.stdout}\n${run.stderr}`).filter(
      (line) => line.message === 'study outcome',
    );
    const expected = [
      ...studiesA.map((studyId) => `site-a/${studyId}`),
      ...studiesB.map((studyId) => `site-b/${studyId}`),
    ].sort();
    // One outcome per study moved. The feed may queue a study a second time (its StableStudy change
    // read just after the watch list queued it): such a move finds it gone and says so.
    const moved = outcomes.filter((line) => line.result !== 'gone');
    expect(moved.map((line) => `${line.sourceId}/${line.studyId}`).sort()).toEqual(expected);
    for (const line of moved) {
      expect(line.studyId).toMatch(ORTHANC_ID);
      expect(line.result).toBe('moved');
      expect(line.instances).toBe(6);
      expect(line.bytes).toBeGreaterThan(6 * 16 * 1024);
      expect(line.durationMs).toEqual(expect.any(Number));
    }
    for (const line of outcomes.filter((l) => l.result === 'gone')) {
      expect(expected).toContain(`${line.sourceId}/${line.studyId}`);
      expect(line).toMatchObject({ instances: 0, bytes: 0, durationMs: expect.any(Number) });
    }
  });

  it('dead-letters malformed messages on their first receive while valid work proceeds; redrive puts them back', async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    const set = generateStudies(shape('poison', { patients: 2 }));
    await upload(source, set.instances);
    const { configPath, statePath } = writeConfig(configFor([{ id: 'site-a', server: source }], destination));
    const poison = [
      'not json',
      JSON.stringify({ source: 'site-a', study: '0c6dbbd3-5d7bc8a4-e2d0ef44-6d7a5e1c-8f2b3a4d' }),
      JSON.stringify({ sourceId: 'site-a', studyId: 'not-an-orthanc-id', reason: 'stable' }),
    ];
    const state = openState(statePath);
    for (const body of poison) await state.queue.enqueueRaw(body);
    state.close();

    const run = await cli(['run', '--config', configPath, '--state', statePath, '--until-idle']);
    expect(run.code, run.stderr).toBe(1);
    expect(await instanceCount(source)).toBe(0);
    await expectAllAtDestination(destination, set.instances);

    const status = await statusOf(configPath, statePath);
    expect(status.queue).toEqual({ waiting: 0, inFlight: 0, deadLetters: 3 });
    const deadLetters = await deadLettersIn(statePath);
    expect(deadLetters.map((letter) => letter.body)).toEqual(poison);
    expect(deadLetters.map((letter) => letter.receiveCount)).toEqual([1, 1, 1]);
    expect(deadLetters.map((letter) => letter.lastError)).toEqual([
      'malformed work item: not JSON',
      expect.stringMatching(/^malformed work item: (sourceId|studyId|reason)/),
      'malformed work item: studyId: must be an Orthanc ID',
    ]);
    expect(status.deadLetterGroups?.map((group) => group.count)).toEqual([1, 1, 1]);
    const deadLettered = logLines(`${run.stdout}\n${run.stderr}`).filter(
      (line) => line.message === 'work item dead-lettered',
    );
    expect(deadLettered).toHaveLength(3);
    for (const line of deadLettered) expect(line).toMatchObject({ kind: 'permanent', receiveCount: 1 });
    expect(status.totals.moved.studies).toBe(2);

    const redrive = await cli(['redrive', '--config', configPath, '--state', statePath]);
    expect(redrive.code).toBe(0);
    expect(redrive.stdout).toBe('redrove 3 message(s)\n');
    const redriven = await statusOf(configPath, statePath);
    expect(redriven.queue).toEqual({ waiting: 3, inFlight: 0, deadLetters: 0 });
    expect(redriven.deadLetterGroups).toEqual([]);

    // Back on the queue with a fresh receive count: dead-lettered again on the first receive.
    const rerun = await cli(['run', '--config', configPath, '--state', statePath, '--until-idle']);
    expect(rerun.code, rerun.stderr).toBe(1);
    expect((await deadLettersIn(statePath)).map((letter) => [letter.body, letter.receiveCount])).toEqual(
      poison.map((body) => [body, 1]),
    );
    expectNoPhi([run.stdout, run.stderr, rerun.stdout, rerun.stderr].join('\n'), [set]);
  });

  it('runs the demo end to end as one JSON summary and leaves no Orthanc running', async () => {
    // The demo's servers live under a folder of their own (inside the test run's, so that the
    // global teardown would sweep them too): any process whose command line names it is one.
    const parent = process.env.ORTHANC_TESTBED_ROOT ?? tmpdir();
    const root = join(parent, `demo-${process.pid}`);
    mkdirSync(root, { recursive: true });
    const demo = await cli(['demo', '--json'], { ...process.env, ORTHANC_TESTBED_ROOT: root });
    expect(demo.code, demo.stderr).toBe(0);
    const lines = demo.stdout.trim().split('\n');
    expect(lines).toHaveLength(1);
    const summary = JSON.parse(lines[0] as string) as Record<string, unknown>;
    expect(summary.studiesMoved).toBeGreaterThan(0);
    expect(summary.instancesMoved).toBe(summary.destinationInstances);
    expect(summary.instancesMoved).toBe(summary.instancesUploaded);
    expect(summary.sourcesEmpty).toBe(true);
    expect(summary.deadLetters).toBe(0);

    const leftovers = readdirSync('/proc')
      .filter((entry) => /^\d+$/.test(entry))
      .filter((pid) => {
        try {
          return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(root);
        } catch {
          return false;
        }
      });
    expect(leftovers).toEqual([]);
    expect(readdirSync(root)).toEqual([]);
    rmSync(root, { recursive: true, force: true });
  });
});
