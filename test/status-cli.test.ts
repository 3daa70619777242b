/**
 * What `status` says of each source, run as the real CLI on a state file against real Orthanc
 * servers: what the source holds by its own statistics, what left it and what was copied from it
 * by the ledger, in studies, instances and sizes; and that the two add up to what the source held
 * before, after a partial move (a filter keeps some studies) and after a copy and then a move.
 */
import { writeFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { formatSize } from '../bin/format.ts';
import type { Tally } from '../lambdas/core/ports.ts';
import type { StatusReport } from '../lambdas/core/status.ts';
import { generateStudies } from '../testbed/dicom-generator.ts';
import {
  cli,
  configFor,
  destinationEntry,
  holdings,
  shape,
  startServers,
  tallyOf,
  upload,
  useTestbed,
  withDestinations,
} from './support/harness.ts';

const add = (a: Tally, b: Tally): Tally => ({
  studies: a.studies + b.studies,
  instances: a.instances + b.instances,
  bytes: a.bytes + b.bytes,
});

const none: Tally = { studies: 0, instances: 0, bytes: 0 };

/** A table cell as status prints it. */
const cell = (t: Tally) => `${t.studies} / ${t.instances} / ${formatSize(t.bytes)}`;

describe('status', () => {
  const { fleet, workPath } = useTestbed('status');

  const runAndReport = async (config: object): Promise<{ report: StatusReport; text: string }> => {
    const configPath = workPath('forwarder.json');
    writeFileSync(configPath, JSON.stringify(config));
    const files = ['--config', configPath, '--state', workPath('state.sqlite')];
    const run = await cli(['run', ...files, '--until-idle']);
    expect(run.code, run.stderr).toBe(0);
    const json = await cli(['status', ...files, '--json']);
    const text = await cli(['status', ...files]);
    for (const result of [json, text]) {
      expect(result.stderr).toBe('');
      expect(result.code).toBe(0);
    }
    return { report: JSON.parse(json.stdout) as StatusReport, text: text.stdout };
  };

  it('after a partial move: what is left by the source’s own count, what left it by the ledger, adding up to what it held', async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    const ct = generateStudies(shape('status-ct'));
    const mr = generateStudies(shape('status-mr', { patients: 1, modality: 'MR' }));
    await upload(source, [...ct.instances, ...mr.instances]);
    const before = await holdings(source);
    expect(before).toEqual(add(tallyOf(2, ct.instances), tallyOf(1, mr.instances)));

    // Only the CT studies have a destination: the MR study stays (unrouted: keep).
    const { report, text } = await runAndReport(
      withDestinations(configFor([{ id: 'site-a', server: source }], destination), [
        destinationEntry('cloud', destination, { filter: { modalities: ['CT'] } }),
      ]),
    );
    const [site] = report.sources;
    const left = await holdings(source);
    expect(left).toEqual(tallyOf(1, mr.instances));
    expect(site).toMatchObject({
      id: 'site-a',
      atSource: left,
      moved: tallyOf(2, ct.instances),
      copied: none,
      deletedUnrouted: 0,
      rejected: 0,
      openConflicts: 0,
      waitingToBecomeStable: 0,
      feed: { lag: 0 },
    });
    expect(site?.unknown).toBeUndefined();
    expect(add(site?.atSource ?? none, site?.moved ?? none)).toEqual(before);
    expect(report.totals.moved).toEqual(tallyOf(2, ct.instances));
    // All of it left within the hour: the rate is the hour's, and the MR study would be gone soon.
    expect(site?.progress).toMatchObject({
      left,
      lastHour: tallyOf(2, ct.instances),
      lastDay: tallyOf(2, ct.instances),
      rate: { over: 'hour' },
    });
    expect(site?.progress.finishAt).toBeGreaterThan(report.at);

    // One row per source, the sizes as people read them; the feed's sequence numbers are not in it.
    const lines = text.split('\n');
    expect(lines[0]).toMatch(
      /^SOURCE +AT SOURCE +MOVED +LAST HOUR +LAST DAY +RATE +ETA +COPIED +REJECTED +CONFLICTS +WAITING +STATE$/,
    );
    const moved = cell(tallyOf(2, ct.instances));
    expect(lines[1]).toMatch(
      new RegExp(
        `^site-a +${cell(left)} +${moved} +${moved} +${moved} +\\d+(\\.\\d)? KB/h +in \\d+ (min|h \\d+ min) +0 / 0 / 0 B +0 +0 +0 +reachable$`,
      ),
    );
    expect(formatSize(left.bytes)).toMatch(/^\d+(\.\d)? KB$/);
    expect(text).toContain('queue: 0 waiting, 0 in flight');
    expect(text).toContain(
      `all sources so far: moved 2 studies, ${ct.instances.length} instances, ${formatSize(tallyOf(2, ct.instances).bytes)}; copied 0 studies`,
    );
  });

  it('after a copy and then a move: each counted once, as what it was, and the source empty', async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    const set = generateStudies(shape('status-copy-move'));
    await upload(source, set.instances);
    const before = await holdings(source);
    const all = tallyOf(2, set.instances);
    expect(before).toEqual(all);
    const raw = configFor([{ id: 'site-a', server: source }], destination);

    const copied = await runAndReport({ ...raw, deleteAfterForward: false });
    expect(copied.report.sources[0]).toMatchObject({ atSource: before, moved: none, copied: all });
    // A copy takes nothing from the source: no rate, no estimate.
    expect(copied.report.sources[0]?.progress).toEqual({ left: before, lastHour: none, lastDay: none });
    expect(copied.text.split('\n')[1]).toMatch(/ +- +- +/);

    const moved = await runAndReport(raw);
    expect(await holdings(source)).toEqual(none);
    expect(moved.report.sources[0]).toMatchObject({ atSource: none, moved: all, copied: all });
    expect(moved.report.sources[0]?.progress).toMatchObject({
      left: none,
      lastHour: all,
      finishAt: moved.report.at,
    });
    expect(moved.text.split('\n')[1]).toMatch(/ KB\/h +done +/);
    // Not 4 studies: the copy is a copy, and the move is one move of each.
    expect(moved.report.totals).toMatchObject({ moved: all, copied: all, deleted: set.instances.length });
    expect(moved.text).toContain(
      `all sources so far: moved 2 studies, ${set.instances.length} instances, ${formatSize(all.bytes)}; copied 2 studies, ${set.instances.length} instances, ${formatSize(all.bytes)}`,
    );
  });
});
