/**
 * `run --listen`: the CLI moving real studies between real Orthancs while /metrics is scraped
 * (its counters checked against the ledger, as `status --json` reads it), /readyz following a
 * source frozen with SIGSTOP and thawed, and the status page read in headless Chromium (Debian's,
 * never a downloaded browser) against what `status --json` says.
 */
import { writeFileSync } from 'node:fs';
import { chromium } from 'playwright-core';
import { describe, expect, it } from 'vitest';
import { parseListen } from '../bin/listen.ts';
import { MONITOR_TOKEN_ENV } from '../bin/monitoring-server.ts';
import type { StatusReport } from '../lambdas/core/status.ts';
import { PrometheusMetrics } from '../lambdas/local/prometheus-metrics.ts';
import { generateStudies } from '../testbed/dicom-generator.ts';
import type { OrthancServer } from '../testbed/orthanc.ts';
import { BIN, cli, configFor, shape, startServers, until, upload, useTestbed } from './support/harness.ts';
import { parseLogLine, startProcess } from './support/processes.ts';

const { fleet, workPath } = useTestbed('monitoring');

const TOKEN = 'monitoring-test-token';
const SOURCES = ['site-a', 'site-b'] as const;

/** The CLI running with --listen on a free loopback port, once the studies are uploaded. */
const startListeningRun = async () => {
  const [destination, ...sources] = await startServers(fleet, ['destination', ...SOURCES]);
  const sets = SOURCES.map((source) => generateStudies(shape(`monitoring-${source}`)));
  await Promise.all(sources.map((source, index) => upload(source, sets[index]?.instances ?? [])));
  const configPath = workPath('forwarder.json');
  const statePath = workPath('state.sqlite');
  writeFileSync(
    configPath,
    JSON.stringify(
      configFor(
        sources.map((server, index) => ({ id: SOURCES[index] as string, server })),
        destination as OrthancServer,
      ),
    ),
  );
  const env = { ...process.env, [MONITOR_TOKEN_ENV]: TOKEN };
  const stateArgs = ['-c', configPath, '-s', statePath];
  let url: string | undefined;
  const run = startProcess(BIN, ['run', ...stateArgs, '--listen', '0', '--no-check'], {
    env,
    onLine: (line) => {
      const entry = parseLogLine(line);
      if (entry?.message === 'monitoring listening') url = entry.url as string;
    },
  });
  await until(async () => url !== undefined);
  const get = (path: string, headers: Record<string, string> = { authorization: `Bearer ${TOKEN}` }) =>
    fetch(`${url}${path}`, { headers });
  const status = async (): Promise<StatusReport> => {
    const result = await cli(['status', '--json', ...stateArgs], env);
    expect(result.code).toBe(0);
    return JSON.parse(result.stdout) as StatusReport;
  };
  const instances = sets.flatMap((set) => set.instances);
  return {
    url: url as string,
    run,
    get,
    status,
    destination: destination as OrthancServer,
    env,
    stateArgs,
    sources,
    sets,
    instances,
  };
};

/** The samples of a metric in the text format, by their labels as written: `source="site-a"` → value. */
const samples = (text: string, name: string): Map<string, number> =>
  new Map(
    text
      .split('\n')
      .filter((line) => line.startsWith(`${name}{`) || line.startsWith(`${name} `))
      .map((line) => {
        const match = /^[^{ ]+(?:\{(.*)\})? (\S+)$/.exec(line);
        return [match?.[1] ?? '', Number(match?.[2])] as const;
      }),
  );

describe('run --listen', () => {
  it('listens on loopback unless a host is given, and names a wrong address', () => {
    expect(parseListen('9464')).toEqual({ host: '127.0.0.1', port: 9464 });
    expect(parseListen('0.0.0.0:9464')).toEqual({ host: '0.0.0.0', port: 9464 });
    expect(parseListen('[::1]:9464')).toEqual({ host: '::1', port: 9464 });
    for (const wrong of ['', 'host', '9464:host', '70000', '1.2.3.4:']) {
      expect(() => parseListen(wrong), wrong).toThrow('give PORT or HOST:PORT');
    }
  });

  it('names each engine metric in Prometheus style, labelled by source or destination', async () => {
    const metrics = new PrometheusMetrics({ sources: [{ id: 'site-a' }], destinations: [{ id: 'archive' }] });
    metrics.add('DeadLettered', 1, 'Count', 'site-a');
    metrics.add('CursorLag', 7, 'Count', 'site-a');
    metrics.add('MoveDuration', 1_500, 'Milliseconds', 'site-a');
    metrics.add('DestinationUnavailable', 1, 'Count', 'archive');
    metrics.delivered({ destinationId: 'archive', sent: 3, verified: 2, failed: true });
    const { body, contentType } = await metrics.scrape();
    expect(contentType).toContain('text/plain');
    // Counters of every configured id start at 0, so that rate() sees the first increase.
    expect(samples(body, 'orthanc_forwarder_studies_moved_total')).toEqual(new Map([['source="site-a"', 0]]));
    expect(samples(body, 'orthanc_forwarder_dead_lettered_total').get('source="site-a"')).toBe(1);
    expect(samples(body, 'orthanc_forwarder_feed_lag_changes').get('source="site-a"')).toBe(7);
    expect(samples(body, 'orthanc_forwarder_move_duration_seconds_sum').get('source="site-a"')).toBe(1.5);
    expect(
      samples(body, 'orthanc_forwarder_destination_unavailable_total').get('destination="archive"'),
    ).toBe(1);
    expect(
      samples(body, 'orthanc_forwarder_destination_instances_sent_total').get('destination="archive"'),
    ).toBe(3);
    expect(
      samples(body, 'orthanc_forwarder_destination_instances_verified_total').get('destination="archive"'),
    ).toBe(2);
    expect(samples(body, 'orthanc_forwarder_destination_errors_total').get('destination="archive"')).toBe(1);
  });

  it('serves metrics that match the ledger, and a readiness that follows a frozen source and a stopped destination', async () => {
    const { run, get, status, destination, sources, sets, instances, env, stateArgs } =
      await startListeningRun();
    // The token guards all but the liveness probe, as a bearer token or as basic auth's password.
    expect((await get('/healthz', {})).status).toBe(200);
    expect((await get('/metrics', {})).status).toBe(401);
    const basic = `Basic ${Buffer.from(`prometheus:${TOKEN}`).toString('base64')}`;
    expect((await get('/metrics', { authorization: basic })).status).toBe(200);
    expect((await get('/metrics', { authorization: 'Bearer wrong' })).status).toBe(401);

    // Scraped during the move, until every study left its source.
    const scrapes: string[] = [];
    const scrape = async () => {
      const response = await get('/metrics');
      expect(response.status).toBe(200);
      expect(response.headers.get('content-type')).toContain('text/plain');
      const text = await response.text();
      scrapes.push(text);
      return text;
    };
    const movedOf = (text: string) =>
      [...samples(text, 'orthanc_forwarder_studies_moved_total').values()].reduce((a, b) => a + b, 0);
    const studies = sets.reduce((sum, set) => sum + set.patients.length, 0);
    await until(async () => movedOf(await scrape()) === studies);
    expect(scrapes.some((text) => movedOf(text) < studies)).toBe(true);

    const text = await scrape();
    const report = await status();
    for (const source of SOURCES) {
      const label = `source="${source}"`;
      const ledger = report.totals.sources[source];
      expect(ledger?.moved.studies).toBeGreaterThan(0);
      expect(samples(text, 'orthanc_forwarder_studies_moved_total').get(label)).toBe(ledger?.moved.studies);
      expect(samples(text, 'orthanc_forwarder_instances_deleted_total').get(label)).toBe(
        ledger?.moved.instances,
      );
      expect(samples(text, 'orthanc_forwarder_instances_moved_total').get(label)).toBe(
        ledger?.moved.instances,
      );
      expect(samples(text, 'orthanc_forwarder_moved_bytes_total').get(label)).toBe(ledger?.moved.bytes);
      expect(samples(text, 'orthanc_forwarder_dead_lettered_total').get(label)).toBe(0);
      expect(samples(text, 'orthanc_forwarder_changes_read_total').get(label)).toBeGreaterThan(0);
      expect(
        samples(text, 'orthanc_forwarder_last_successful_poll_timestamp_seconds').get(label),
      ).toBeGreaterThan(0);
    }
    const destinationLabel = 'destination="destination"';
    expect(samples(text, 'orthanc_forwarder_destination_instances_sent_total').get(destinationLabel)).toBe(
      instances.length,
    );
    expect(
      samples(text, 'orthanc_forwarder_destination_instances_verified_total').get(destinationLabel),
    ).toBe(instances.length);
    expect(samples(text, 'orthanc_forwarder_destination_errors_total').get(destinationLabel)).toBe(0);
    expect(samples(text, 'orthanc_forwarder_destination_up').get(destinationLabel)).toBe(1);
    expect(samples(text, 'orthanc_forwarder_queue_messages').get('state="dead_letters"')).toBe(0);
    expect(samples(text, 'process_resident_memory_bytes').get('')).toBeGreaterThan(0);
    expect(samples(text, 'nodejs_eventloop_lag_seconds').size).toBe(1);
    for (const value of sets.flatMap((set) => set.phiValues()))
      expect(scrapes.join('\n')).not.toContain(value);

    // Ready; not ready once a source stops answering its polls; ready again once it answers.
    await until(async () => (await get('/readyz')).status === 200);
    const frozen = sources[1] as OrthancServer;
    await frozen.pause();
    await until(async () => (await get('/readyz')).status === 503);
    const notReady = (await (await get('/readyz')).json()) as { ready: boolean; reasons: string[] };
    expect(notReady.ready).toBe(false);
    expect(notReady.reasons).toEqual([expect.stringMatching(/^source site-b: no successful poll for \d+ s/)]);
    frozen.resume();
    await until(async () => (await get('/readyz')).status === 200);
    expect(await (await get('/readyz')).json()).toEqual({ ready: true, reasons: [] });

    // Not ready either while the destination is down and studies wait for it; ready once it is back.
    await destination.stop();
    await upload(
      sources[0] as OrthancServer,
      generateStudies(shape('monitoring-late', { patients: 1 })).instances,
    );
    await until(async () => (await get('/readyz')).status === 503);
    const down = (await (await get('/readyz')).json()) as { reasons: string[] };
    expect(down.reasons).toEqual([expect.stringMatching(/^destination destination: /)]);
    expect(samples(await scrape(), 'orthanc_forwarder_destination_up').get(destinationLabel)).toBe(0);
    await destination.start();
    // The destination is known to be back once a move reaches it: here, the study its attempts
    // dead-lettered meanwhile, put back.
    await until(async () => (await status()).queue.deadLetters === 1);
    expect((await cli(['dlq', 'redrive', ...stateArgs], env)).code).toBe(0);
    await until(async () => (await get('/readyz')).status === 200);
    expect(samples(await scrape(), 'orthanc_forwarder_destination_up').get(destinationLabel)).toBe(1);

    run.child.kill('SIGTERM');
    expect((await run.done).code).toBe(0);
  });

  it('shows a status page with the numbers `status --json` gives', async () => {
    const { url, run, status, sets } = await startListeningRun();
    const studies = sets.reduce((sum, set) => sum + set.patients.length, 0);
    await until(async () => (await status()).totals.moved.studies === studies);
    const report = await status();
    const browser = await chromium.launch({
      executablePath: '/usr/bin/chromium',
      args: ['--headless', '--no-sandbox', '--disable-background-networking'],
    });
    try {
      const context = await browser.newContext({
        httpCredentials: { username: 'operator', password: TOKEN },
      });
      const page = await context.newPage();
      const requested: string[] = [];
      page.on('request', (request) => requested.push(request.url()));
      const response = await page.goto(`${url}/`);
      expect(response?.status()).toBe(200);
      // Self-contained: the page itself and nothing else.
      expect(requested).toEqual([`${url}/`]);
      expect(await page.locator('meta[http-equiv="refresh"]').getAttribute('content')).toMatch(/^\d+$/);
      const field = (name: string, source?: string) =>
        page
          .locator(`${source === undefined ? '' : `[data-source="${source}"] `}[data-field="${name}"]`)
          // biome-ignore lint/performance/useDomNodeTextContent: the text as a reader sees it is the point
          .innerText();
      for (const source of report.sources) {
        const [movedStudies, movedInstances] = (await field('moved', source.id)).split(' / ');
        expect(Number(movedStudies)).toBe(source.moved.studies);
        expect(Number(movedInstances)).toBe(source.moved.instances);
        expect(Number(await field('conflicts', source.id))).toBe(source.openConflicts);
        expect(Number(await field('rejected', source.id))).toBe(source.rejected);
        expect(Number(await field('waiting', source.id))).toBe(source.waitingToBecomeStable);
        expect(await field('last-poll', source.id)).toMatch(/^\d{4}-\d\d-\d\dT/);
        expect(await field('last-error', source.id)).toBe('-');
      }
      expect(Number(await field('queue-dead-letters'))).toBe(report.queue.deadLetters);
      expect(Number(await field('open-conflicts'))).toBe(report.conflicts.length);
      expect(Number(await field('total-moved-studies'))).toBe(report.totals.moved.studies);
      expect(Number(await field('total-moved-instances'))).toBe(report.totals.moved.instances);
      const screenshot = await page.screenshot({ path: workPath('status-page.png'), fullPage: true });
      // A PNG of a rendered page.
      expect(screenshot.subarray(1, 4).toString('latin1')).toBe('PNG');
      expect(screenshot.length).toBeGreaterThan(10_000);
    } finally {
      await browser.close();
    }
    run.child.kill('SIGTERM');
    expect((await run.done).code).toBe(0);
  });
});
