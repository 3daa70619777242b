/**
 * The randomized fault run against real Orthancs on loopback:
 *
 *   npm run chaos -- --seed N --runs M [--max-seconds S] [--first K] [--json]
 *
 * Each run picks a fault and a small data set from (N, run) — now and then partial studies under
 * a filter, or moves cut by a deadline — plays it, recovers, reruns the forwarder until idle and
 * checks that every instance is at its source or at the destination.
 * Prints a line per run and a summary (or, with --json, the summary as one JSON object on stdout).
 * Exits 0 when nothing was lost, no run failed and every move completed; 1 otherwise; 2 on a
 * usage error. No run starts after --max-seconds (default 300); --first K replays from run K.
 */
import { parseArgs } from 'node:util';
import { chaosPassed, runChaos } from './chaos/runner.ts';

const usage =
  'usage: npm run chaos -- --seed N --runs M [--max-seconds S] [--first K] [--json]\n' +
  '  N, M, S, K: whole numbers (M, K >= 1); defaults: seed 1, runs 10, max-seconds 300, first 1\n';

const number = (value: string | undefined, fallback: number, name: string, min: number): number => {
  if (value === undefined) return fallback;
  const parsed = Number(value);
  if (!Number.isSafeInteger(parsed) || parsed < min) {
    process.stderr.write(`--${name} must be a whole number >= ${min}, got ${value}\n${usage}`);
    process.exit(2);
  }
  return parsed;
};

const parse = () =>
  parseArgs({
    options: {
      seed: { type: 'string' },
      runs: { type: 'string' },
      'max-seconds': { type: 'string' },
      first: { type: 'string' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
    strict: true,
  });
let parsed: ReturnType<typeof parse>;
try {
  parsed = parse();
} catch (error) {
  process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n${usage}`);
  process.exit(2);
}
if (parsed.values.help) {
  process.stdout.write(usage);
  process.exit(0);
}
const seed = number(parsed.values.seed, 1, 'seed', 0);
const runs = number(parsed.values.runs, 10, 'runs', 1);
const maxSeconds = number(parsed.values['max-seconds'], 300, 'max-seconds', 1);
const first = number(parsed.values.first, 1, 'first', 1);
const json = parsed.values.json === true;

// Ctrl-C: the run in progress finishes (and cleans up after itself), no new one starts; a second
// one exits at once (the test bed's exit hooks still kill every Orthanc and child it started).
const stop = new AbortController();
const onSignal = (signal: NodeJS.Signals) => {
  if (stop.signal.aborted) process.exit(130);
  process.stderr.write(`${signal}: finishing the current run (again to quit at once)\n`);
  stop.abort();
};
process.on('SIGINT', onSignal);
process.on('SIGTERM', onSignal);

const out = json ? process.stderr : process.stdout;
out.write(`chaos: seed ${seed}, runs ${first}..${first + runs - 1}, at most ${maxSeconds} s\n`);
const summary = await runChaos({
  seed,
  runs,
  first,
  maxSeconds,
  signal: stop.signal,
  onProgress: (line) => out.write(`${line}\n`),
});
if (json) {
  process.stdout.write(`${JSON.stringify(summary)}\n`);
} else {
  const lines = [
    `scenarios run: ${summary.runs} of ${summary.runsRequested}` +
      (summary.skipped > 0 ? ` (${summary.skipped} not started: time limit or interrupted)` : ''),
    `faults that took effect: ${summary.triggered}`,
    `instances checked: ${summary.instancesChecked}`,
    `scenarios of partial studies under a filter: ${summary.partialRuns} (instances refused, to stay at their source: ${summary.refused})`,
    `scenarios of deadline-cut moves: ${summary.deadlineRuns} (attempts cut: ${summary.deadlineCuts})`,
    `instances lost: ${summary.lost}`,
    `instances re-sent: ${summary.resent}`,
    `moves not completed: ${summary.incomplete}`,
    `work items dead-lettered: ${summary.deadLettered}`,
    `errors: ${summary.errors}`,
    `seconds: ${summary.seconds}`,
  ];
  for (const line of lines) out.write(`${line}\n`);
}
process.exitCode = chaosPassed(summary) ? 0 : 1;
