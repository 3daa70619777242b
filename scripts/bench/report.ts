/** The benchmark's figures as text tables, for a person to read. */
import type { LinkFigures, LinkResult } from './link.ts';
import type { SettingsPoint, VerifyModeFigures } from './modes.ts';
import { type RelaySettings, relayRunLabel, verifyModeName } from './options.ts';
import type { PerStudy, PollerResult } from './poller.ts';
import type { AwsTally } from './poller-job.ts';
import type { BenchResult, SetResult } from './run.ts';
import type { MethodFigures } from './stats.ts';

const pad = (text: string, width: number): string => text.padEnd(width);
const num = (value: number | undefined, digits = 1): string =>
  value === undefined || Number.isNaN(value) ? '-' : value.toFixed(digits);

const header = (first: string): string =>
  `${pad(first, 34)}${pad('inst/s (min-max)', 22)}${pad('MB/s (min-max)', 20)}` +
  `${pad('CPU-s/1000 ours/src/dst', 26)}peak RSS`;

const row = (label: string, f: MethodFigures, ours = true): string =>
  `${pad(label, 34)}` +
  `${pad(`${num(f.instancesPerSecond)} (${num(f.min.instancesPerSecond)}-${num(f.max.instancesPerSecond)})`, 22)}` +
  `${pad(`${num(f.mbPerSecond)} (${num(f.min.mbPerSecond)}-${num(f.max.mbPerSecond)})`, 20)}` +
  `${pad(
    `${ours ? num(f.cpuSecondsPer1000.ours, 2) : '-'}/${num(f.cpuSecondsPer1000.source, 2)}/${num(f.cpuSecondsPer1000.destination, 2)}`,
    26,
  )}` +
  `${num(f.peakRssMb)} MB${f.allMoved ? '' : '  (NOT ALL MOVED)'}`;

/** Requests made and connections opened by our process over a method's trials. */
const sockets = (f: MethodFigures): string => {
  let requests = 0;
  let connections = 0;
  for (const trial of f.trials) {
    for (const server of Object.values(trial.connections)) {
      requests += server.requests;
      connections += server.connections;
    }
  }
  return `${requests} requests on ${connections} connections`;
};

const tuning = (settings: RelaySettings): string =>
  `${settings.maxInstances}/${settings.parallel}/${settings.concurrency}`;

/** As the tables' footnote says: stow.maxInstances/stow.parallel/concurrency verify. */
const relayLabel = (settings: RelaySettings): string => `${tuning(settings)} ${verifyModeName(settings)}`;

const phases = ({ phasesMs }: Pick<SettingsPoint, 'phasesMs'>): string =>
  `${phasesMs.sendMs}/${phasesMs.verifyMs}/${phasesMs.deleteMs}`;

const PHASES = 'phases ms send/verify/delete';
/** A row's width with its peak RSS, so that columns after it line up. */
const WIDE = 114;

const setSection = (set: SetResult, repetitions: number): string[] => [
  `Set '${set.set.name}': ${set.set.instances} instances of ${set.set.sizeKb} KiB ` +
    `(${(set.set.bytes / 1e6).toFixed(1)} MB) in ${set.set.studies} studies, ${repetitions} trial(s) each`,
  header('method'),
  ...Object.entries(set.ceiling.byConcurrency).map(([c, f]) =>
    row(`ceiling, ${c} uploads at once${Number(c) === set.ceiling.concurrency ? ' *' : ''}`, f),
  ),
  row('push (Orthanc DICOMweb client)', set.push),
  row(`relay (${relayLabel(set.relay.settings)})`, set.relay),
  `relay/push ${num(set.ratios.relayVsPush, 2)}   relay/ceiling ${num(set.ratios.relayVsCeiling, 2)}` +
    '   (* best ceiling; relay settings: stow.maxInstances/stow.parallel/concurrency verify)',
  `connection reuse: relay ${sockets(set.relay)}; ceiling ${sockets(set.ceiling)}`,
  '',
];

/** `methodTrials`: the trials of the methods' comparison printed above it, if any. */
const verifySection = (
  modes: Readonly<Record<string, VerifyModeFigures>>,
  methodTrials: number | undefined,
): string[] => {
  const all = Object.entries(modes);
  const [first] = all.map(([, f]) => f);
  const trials = first?.trials.length ?? 0;
  const fewer =
    methodTrials !== undefined && trials < methodTrials
      ? ` (fewer than the ${methodTrials} above, to keep the run short)`
      : '';
  return [
    `Verification modes on the default set, relay ${first === undefined ? '' : tuning(first.settings)}, ` +
      `${trials} trial(s) each${fewer}`,
    `${pad(header('mode'), WIDE)}${pad('studies/s', 11)}${pad('/qido', 7)}${PHASES}`,
    ...all.map(
      ([name, f]) =>
        `${pad(row(name, f), WIDE)}${pad(num(f.studiesPerSecond, 2), 11)}${pad(num(f.ratioToQido, 2), 7)}${phases(f)}`,
    ),
    "checksum-wado: the destination's bytes retrieved with WADO-RS (no orthancUrl); " +
      "checksum-orthanc: its MD5s through Orthanc's REST API (orthancUrl set); phases summed over the studies",
    '',
  ];
};

const linkSection = (label: string, link: LinkResult): string[] => {
  const line = (name: string, f: LinkFigures) =>
    `${pad(row(name, f), WIDE)}${pad(num(f.linkFraction, 2), 9)}${pad(num(f.cpuSecondsPer1000.bench, 2), 11)}` +
    (f.busySecondsPerGB === undefined ? '' : `${pad(num(f.busySecondsPerGB, 1), 11)}${f.lambdaUsdPerGB}`);
  return [
    `Over a link of ${link.rttMs} ms round trip and ${link.mbit} Mbit/s each way (${label}: ` +
      `${num(link.capacityMBps)} MB/s), ${link.repetitions} trial(s) each`,
    ...link.sets.flatMap((set) => [
      `  set '${set.set.name}': ${set.set.instances} instances of ${set.set.sizeKb} KiB`,
      `${pad(header('method'), WIDE)}${pad('of link', 9)}${pad('emulator', 11)}${pad('busy s/GB', 11)}Lambda USD/GB`,
      line('push (source across the link)', set.push),
      line('relay, link at the source (AWS)', set.relaySourceLink),
      line('relay, link at the destination', set.relayDestinationLink),
      `  relay/push: link at the source ${num(set.ratios.relaySourceLinkVsPush, 2)}, ` +
        `at the destination ${num(set.ratios.relayDestinationLinkVsPush, 2)}`,
      "  emulator: its CPU-s per 1,000 instances; busy: the studies' move durations summed, per GB",
    ]),
    '',
  ];
};

const tallyLines = (tally: AwsTally, who: string): string[] =>
  Object.entries(tally).map(
    ([operation, t]) =>
      `    ${pad(`${who} ${operation}`, 44)} ${pad(String(t.requests), 8)}` +
      `${pad(t.failed === 0 ? '' : `(${t.failed} refused)`, 16)}${pad(String(t.items), 10)}` +
      `${t.writeCapacityUnits > 0 ? `${num(t.writeCapacityUnits, 0)} WRU` : ''}` +
      `${t.readCapacityUnits > 0 ? `${num(t.readCapacityUnits, 0)} RRU` : ''}`,
  );

const perStudyLine = (label: string, p: PerStudy): string =>
  `  ${pad(label, 22)} DynamoDB ${num(p.dynamodbRequests, 2)} requests, ${num(p.writeRequestUnits, 2)} WRU, ` +
  `${num(p.readRequestUnits, 2)} RRU; SQS ${num(p.sqsRequests, 2)} requests; Orthanc ${num(p.orthancRequests, 2)} requests`;

const pollerSection = (p: PollerResult): string[] => [
  `Poller: a feed of ${p.changes} changes (${p.studies} studies of ${p.instances / p.studies} instances), ` +
    `read by the poller handler on DynamoDB Local and fauxqs (invocations of ${p.invocationSeconds} s)`,
  `  ${p.poller.invocations} invocation(s), ${num(p.poller.seconds, 1)} s, ${num(p.poller.changesPerSecond, 0)} changes/s; ` +
    `${p.poller.orthancRequests} requests to Orthanc on ${p.poller.orthancConnections} connections; ` +
    `CPU-s per 1,000 changes: poller ${num(p.poller.cpuSecondsPer1000Changes.poller, 3)}, ` +
    `source ${num(p.poller.cpuSecondsPer1000Changes.source, 3)}`,
  `  each invocation: ${p.poller.reports
    .map(
      (r) =>
        `${r.changesRead} changes read, ${r.queued} queued, ${r.waiting} watched${r.outOfTime === true ? ', out of time' : ''}`,
    )
    .join('; ')}`,
  `  queued: ${p.queued.messages} messages, ${p.queued.distinctStudies} distinct studies, ` +
    `${p.queued.duplicates} duplicates, ${p.queued.missing} missing`,
  `  then the forwarder moved ${p.forwarder.studies} of them in ${p.forwarder.invocations} invocations, ${num(p.forwarder.seconds, 1)} s`,
  `    ${pad('AWS requests', 44)} ${pad('calls', 8)}${pad('', 16)}${pad('items', 10)}capacity`,
  ...tallyLines(p.poller.aws, 'poller'),
  ...tallyLines(p.forwarder.aws, 'forwarder'),
  ...tallyLines(p.forwarder.eventSourceMapping, 'event source mapping'),
  '  per study:',
  perStudyLine('poller', p.poller.perStudy),
  perStudyLine('forwarder (+ mapping)', p.forwarder.perStudy),
];

export const formatReport = (result: BenchResult, repetitions: number): string => {
  const lines: string[] = [
    `Machine: ${result.machine.cpus} CPUs, Node ${result.machine.node}, load average ` +
      `${result.machine.loadBefore.join(' ')} before, ${result.machine.loadAfter.join(' ')} after` +
      `${result.machine.pinned ? '; the destination pinned to CPU 1, everything else to CPU 0' : ''}`,
    '',
  ];
  for (const set of result.sets) lines.push(...setSection(set, repetitions));
  if (result.verify !== undefined)
    lines.push(...verifySection(result.verify, result.sets.length > 0 ? repetitions : undefined));
  const cap = result.rateCap;
  if (cap !== undefined) {
    lines.push(
      `Read rate cap: the relay on the default set with maxReadMBps ${num(cap.capMBps)} (half its uncapped speed)`,
      `  achieved ${num(cap.achievedMBps)} MB/s end to end in ${num(cap.seconds, 1)} s: ${num(cap.ratio, 3)} of the cap; ` +
        `${num(cap.sendingMBps)} MB/s while sending: ${num(cap.sendingRatio, 3)} of the cap` +
        `${cap.allMoved ? '' : '  (NOT ALL MOVED)'}`,
      '',
    );
  }
  const big = result.bigStudy;
  if (big !== undefined) {
    lines.push(
      `Big study: one study of ${big.instances} instances, ${(big.bytes / 1e9).toFixed(2)} GB, moved by the relay`,
    );
    for (const run of big.runs) {
      lines.push(
        `  ${pad(relayRunLabel(run), 30)} ${num(run.seconds, 1)} s, ${num(run.mbPerSecond)} MB/s; peak RSS ` +
          `${num(run.peakRssMb)} MB (startup ${num(run.startupPeakRssMb)}, moving ${num(run.movePeakRssMb)}; ` +
          `heap ${num(run.memoryPeaksMb.heapTotal)}, buffers ${num(run.memoryPeaksMb.arrayBuffers)}); ` +
          `CPU-s/1000 ${num(run.cpuSecondsPer1000.ours, 2)}${run.allMoved ? '' : '  (NOT ALL MOVED)'}`,
      );
    }
    lines.push('');
  }
  if (result.sweep !== undefined) {
    lines.push('Relay sweep', `${pad(header('maxInst/parallel/conc. verify'), WIDE)}${PHASES}`);
    for (const point of result.sweep)
      lines.push(`${pad(row(relayLabel(point.settings), point.relay), WIDE)}${phases(point)}`);
    lines.push('');
  }
  if (result.wado !== undefined) {
    const reader = { wado: 'WADO-RS per series', instances: 'GET per instance', ahead: 'GET, read ahead' };
    lines.push(
      'Reading every series from the source',
      `${header('where, mode')}   requests/connections  of link`,
    );
    for (const point of result.wado) {
      lines.push(
        `${row(`${point.link}, ${reader[point.mode]}, ${point.concurrency} at once`, point.figures)}` +
          `   ${pad(`${point.requests}/${point.connections}`, 22)}${point.linkFraction === undefined ? '' : num(point.linkFraction, 2)}`,
      );
    }
    lines.push('');
  }
  for (const [label, link] of Object.entries(result.link ?? {})) lines.push(...linkSection(label, link));
  if (result.poller !== undefined) lines.push(...pollerSection(result.poller), '');
  const measured = result.targets.filter((target) => target.met !== undefined);
  if (measured.length > 0) {
    lines.push('Targets');
    for (const target of measured) {
      lines.push(`  ${target.met ? 'MET   ' : 'MISSED'} ${pad(target.target, 58)} ${num(target.value, 2)}`);
    }
    lines.push('');
  }
  lines.push(`Took ${num(result.durationSeconds, 0)} s.`);
  return lines.join('\n');
};
