import { randomScenario } from './scripts/chaos/runner.ts';
const [seed, from, to] = process.argv.slice(2).map(Number);
for (let r = from; r <= to; r++) { const s = randomScenario(seed, r); console.log(s.name); console.log(JSON.stringify({shape: s.shape, partial: s.partial, d: s.deadlineAfterStows, p: s.stowParallel, src: s.sources, dst: s.destinations})); }
