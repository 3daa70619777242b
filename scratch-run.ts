import { describeReport, runScenario, type ScenarioSpec } from './test/support/fault-scenario.ts';
const specs: ScenarioSpec[] = JSON.parse(process.argv[2] ?? '[]');
for (const spec of specs) {
  const report = await runScenario(spec, { childTimeoutMs: 120_000 });
  console.log(describeReport(report));
  console.log(JSON.stringify({ refused: report.refused, rejected: report.stateAfterReruns.rejected.length, cuts: report.faultRun.deadlineCuts, faultOutcomes: report.faultRun.outcomes, reruns: report.reruns.map(r => ({code: r.code, settled: r.settled, outcomes: r.outcomes, tail: r.code !== 0 ? r.tail.slice(-1500) : ''})), final: report.final }, null, 1));
}
process.exit(0);
