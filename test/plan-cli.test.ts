/**
 * `plan`, run as the real CLI against real Orthanc servers: it moves nothing (the source, the
 * destinations and the state file are as they were), and what it counts per destination is what
 * a run then moves there, since both route with the same code (routing.ts).
 */
import { existsSync, writeFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { formatSize, type PlanReport } from '../bin/format.ts';
import type { SourcePlan } from '../lambdas/core/plan.ts';
import { generateStudies } from '../testbed/dicom-generator.ts';
import type { OrthancServer } from '../testbed/orthanc.ts';
import {
  cli,
  configFor,
  destinationEntry,
  holdings,
  shape,
  startServers,
  tallyOf,
  untilStudiesStable,
  upload,
  useTestbed,
  withDestinations,
} from './support/harness.ts';

/** What a server holds (GET /statistics), and every instance ID: what must not change. */
const snapshot = async (server: OrthancServer) => ({
  statistics: await server.rest<Record<string, unknown>>('GET', '/statistics'),
  instances: (await server.rest<string[]>('GET', '/instances')).sort(),
});

describe('plan', () => {
  const { fleet, workPath } = useTestbed('plan');

  it('moves nothing, and counts per destination what a run then moves there', async () => {
    const [cloud, research, source] = await startServers(fleet, ['cloud', 'research', 'site-a']);
    const ct = generateStudies(shape('plan-ct'));
    const mr = generateStudies(shape('plan-mr', { patients: 1, modality: 'MR' }));
    const us = generateStudies(shape('plan-us', { patients: 1, modality: 'US' }));
    await upload(source, [...ct.instances, ...mr.instances, ...us.instances]);
    await untilStudiesStable(source);
    // CT goes to the cloud, CT and MR to research; the US study to neither.
    const configPath = workPath('forwarder.json');
    writeFileSync(
      configPath,
      JSON.stringify(
        withDestinations(configFor([{ id: 'site-a', server: source }], cloud), [
          destinationEntry('cloud', cloud, { filter: { modalities: ['CT'] } }),
          destinationEntry('research', research, { filter: { modalities: ['MR', 'CT'] } }),
        ]),
      ),
    );
    const servers = [source, cloud, research];
    const before = await Promise.all(servers.map(snapshot));

    const json = await cli(['plan', '--config', configPath, '--json']);
    const text = await cli(['plan', '--config', configPath]);
    for (const result of [json, text]) {
      expect(result.stderr).toBe('');
      expect(result.code).toBe(0);
    }
    expect(await Promise.all(servers.map(snapshot))).toEqual(before);
    expect(existsSync(workPath('forwarder.state.sqlite'))).toBe(false);

    const report = JSON.parse(json.stdout) as PlanReport;
    expect(report).toMatchObject({ deleteAfterForward: true, unrouted: 'keep' });
    const [site] = report.sources as SourcePlan[];
    const both = tallyOf(2, ct.instances);
    const mrTally = tallyOf(1, mr.instances);
    expect(site).toMatchObject({
      sourceId: 'site-a',
      studies: 4,
      listed: 4,
      destinations: [
        { id: 'cloud', ...both },
        {
          id: 'research',
          studies: 3,
          instances: both.instances + mrTally.instances,
          bytes: both.bytes + mrTally.bytes,
        },
      ],
      unrouted: tallyOf(1, us.instances),
      notStable: 0,
      tooYoung: 0,
      windowOpen: true,
    });
    const lines = text.stdout.split('\n');
    expect(lines[1]).toMatch(/^SOURCE +DESTINATION +STUDIES +INSTANCES +SIZE$/);
    expect(lines[2]).toMatch(new RegExp(`^site-a +cloud +2 +${both.instances} +${formatSize(both.bytes)}$`));
    expect(lines[4]).toMatch(/^site-a +unrouted \(kept at the source\) +1 +/);
    expect(text.stdout).toContain(
      'site-a: looked at 4 of its 4 studies; not yet: 0 not stable, 0 younger than the minimum age; its windows are open now',
    );

    // The first study only, and the plan says how many it left unlooked at.
    const limited = await cli(['plan', '--config', configPath, '--json', '--limit', '1']);
    expect(limited.code, limited.stderr).toBe(0);
    const [first] = (JSON.parse(limited.stdout) as PlanReport).sources as SourcePlan[];
    expect(first).toMatchObject({ studies: 4, listed: 1 });
    // Every study goes to research or nowhere: the one looked at is counted once there.
    expect((first?.destinations[1]?.studies ?? 0) + (first?.unrouted.studies ?? 0)).toBe(1);

    // A run moves exactly what the plan said, to each destination; the unrouted study stays.
    const run = await cli(['run', '--config', configPath, '--until-idle']);
    expect(run.code, run.stderr).toBe(0);
    expect(await holdings(cloud)).toEqual(both);
    const { id: _research, ...toResearch } = site?.destinations[1] ?? { id: '' };
    expect(await holdings(research)).toEqual(toResearch);
    expect(await holdings(source)).toEqual(site?.unrouted);
  });

  it('names a source the configuration does not have, and says so of a source it cannot reach', async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    const configPath = workPath('forwarder.json');
    const raw = configFor([{ id: 'site-a', server: source }], destination);
    // Nobody listens there.
    const gone = { id: 'site-gone', url: 'http://127.0.0.1:9', username: 'orthanc', password: 'orthanc' };
    writeFileSync(configPath, JSON.stringify({ ...raw, sources: [...(raw.sources as object[]), gone] }));
    const unknown = await cli(['plan', '--config', configPath, '--source', 'site-x']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain(
      '--source site-x names no source of the configuration (site-a, site-gone)',
    );

    const planned = await cli(['plan', '--config', configPath]);
    expect(planned.code).toBe(1);
    expect(planned.stdout).toMatch(/^site-gone +\? +\? +\? +\?$/m);
    expect(planned.stdout).toMatch(/^site-gone: no plan: .*127\.0\.0\.1:9/m);
    expect(planned.stdout).toMatch(/^site-a: looked at 0 of its 0 studies/m);
  });
});
