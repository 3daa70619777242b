import { randomScenario } from './scripts/chaos/runner.ts';
const [from, to, runs] = process.argv.slice(2).map(Number);
for (let seed = from; seed <= to; seed++) {
  const out: string[] = [];
  for (let r = 1; r <= runs; r++) {
    const s = randomScenario(seed, r);
    const n = (s.sources ?? 1) * (s.shape?.patients ?? 1) * (s.shape?.seriesPerStudy ?? 1) * (s.shape?.instancesPerSeries ?? 1);
    out.push(`${s.partial ? 'P' : '-'}${s.deadlineAfterStows ? 'D' : '-'}${s.partial && s.trigger === 'StableSeries' ? 'S' : ''}${s.partial?.lateReport ? 'L' : ''}${s.partial?.refused.length ? 'R' : ''}${s.partial?.unrouted?.[0] ?? ''}:${s.fault.kind[0]}${n}`);
  }
  console.log(seed, out.join(' '));
}
