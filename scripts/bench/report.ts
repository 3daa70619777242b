/** The benchmark's figures as text tables, for a person to read. */
import { relayRunLabel } from './options.ts';
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

const setSection = (set: SetResult, repetitions: number): string[] => [
  `Set '${set.set.name}': ${set.set.instances} instances of ${set.set.sizeKb} KiB ` +
    `(${(set.set.bytes / 1e6).toFixed(1)} MB) in ${set.set.studies} studies, ${repetitions} trial(s) each`,
  header('method'),
  ...Object.entries(set.ceiling.byConcurrency).map(([c, f]) =>
    row(`ceiling, ${c} uploads at once${Number(c) === set.ceiling.concurrency ? ' *' : ''}`, f),
  ),
  row('push (Orthanc DICOMweb client)', set.push),
  row(
    `relay (${set.relay.settings.maxInstances}/${set.relay.settings.parallel}/${set.relay.settings.concurrency}` +
      `${set.relay.settings.verify === 'qido' ? '' : ` ${set.relay.settings.verify}`})`,
    set.relay,
  ),
  `relay/push ${num(set.ratios.relayVsPush, 2)}   relay/ceiling ${num(set.ratios.relayVsCeiling, 2)}` +
    '   (* best ceiling; relay settings: stow.maxInstances/stow.parallel/concurrency)',
  `connection reuse: relay ${sockets(set.relay)}; ceiling ${sockets(set.ceiling)}`,
  '',
];

export const formatReport = (result: BenchResult, repetitions: number): string => {
  const lines: string[] = [
    `Machine: ${result.machine.cpus} CPUs, Node ${result.machine.node}, load average ` +
      `${result.machine.loadBefore.join(' ')} before, ${result.machine.loadAfter.join(' ')} after`,
    '',
  ];
  for (const set of result.sets) lines.push(...setSection(set, repetitions));
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
    lines.push('Relay sweep', header('settings'));
    for (const point of result.sweep)
      lines.push(row(point.label.replaceAll('maxInstances', 'maxInst'), point.relay));
    lines.push('');
  }
  if (result.wado !== undefined) {
    lines.push('Reading every series from the source', `${header('mode')}   requests/connections`);
    for (const point of result.wado) {
      lines.push(
        `${row(`${point.mode === 'wado' ? 'WADO-RS per series' : 'GET per instance'}, ${point.concurrency} at once`, point.figures)}` +
          `   ${point.requests}/${point.connections}`,
      );
    }
    lines.push('');
  }
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
