/**
 * Runs one timed operation in a process of its own, so that its CPU time and peak RSS are not
 * mixed with the benchmark's. Usage: child.ts JOB.json; prints one line `BENCH-RESULT {json}`.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { type ChildJob, type ChildResult, countConnections, runOperation } from './operations.ts';

export const RESULT_PREFIX = 'BENCH-RESULT ';

const megabytes = (bytes: number): number => Number((bytes / 1e6).toFixed(1));

/** VmHWM, the kernel's high-water mark of the resident set (maxRSS is the same in KiB). */
const peakRssBytes = (): number => {
  try {
    const match = /^VmHWM:\s+(\d+) kB/m.exec(readFileSync('/proc/self/status', 'utf8'));
    if (match?.[1] !== undefined) return Number(match[1]) * 1024;
  } catch {
    // Not Linux: fall through.
  }
  return process.resourceUsage().maxRSS * 1024;
};

/** Resets VmHWM to the current RSS (Linux >= 4.0), so that the operation's own peak can be read. */
const resetPeakRss = (): boolean => {
  try {
    writeFileSync('/proc/self/clear_refs', '5');
    return true;
  } catch {
    return false;
  }
};

/** Samples V8's heap and the memory of Buffers every 100 ms: where a high RSS comes from. */
const sampleMemory = () => {
  const peaks = { heapTotal: 0, heapUsed: 0, external: 0, arrayBuffers: 0 };
  const sample = () => {
    const usage = process.memoryUsage();
    for (const key of Object.keys(peaks) as (keyof typeof peaks)[]) {
      peaks[key] = Math.max(peaks[key], megabytes(usage[key]));
    }
  };
  const timer = setInterval(sample, 100);
  return {
    peaks,
    stop: () => {
      clearInterval(timer);
      sample();
    },
  };
};

const main = async (): Promise<void> => {
  const path = process.argv[2];
  if (path === undefined) throw new Error('usage: child.ts JOB.json');
  const job = JSON.parse(readFileSync(path, 'utf8')) as ChildJob;
  const connections = countConnections();
  const baselineRssMb = megabytes(process.memoryUsage.rss());
  const startupPeak = peakRssBytes();
  const reset = resetPeakRss();
  const cpuStart = process.cpuUsage();
  const memory = sampleMemory();
  const result = await runOperation(job).finally(memory.stop);
  const cpu = result.cpu ?? process.cpuUsage(cpuStart);
  const operationPeak = peakRssBytes();
  const output: ChildResult = {
    ...result,
    cpuSeconds: (cpu.user + cpu.system) / 1e6,
    cpuSystemSeconds: cpu.system / 1e6,
    peakRssMb: megabytes(Math.max(startupPeak, operationPeak)),
    startupPeakRssMb: megabytes(startupPeak),
    operationPeakRssMb: reset ? megabytes(operationPeak) : undefined,
    baselineRssMb,
    memoryPeaksMb: memory.peaks,
    connections,
  };
  process.stdout.write(`${RESULT_PREFIX}${JSON.stringify(output)}\n`);
};

if (import.meta.main) {
  main().catch((error: unknown) => {
    process.stderr.write(`${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
    process.exit(1);
  });
}
