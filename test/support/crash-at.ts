/**
 * A forwarder that dies by SIGKILL at a chosen step of its first move, for the crash tests:
 *
 *   node crash-at.ts CONFIG STATE STEP MARKER
 *
 * Runs local mode (the real runner on the real state file) until idle; the first time a move
 * reaches STEP ('snapshot-taken', 'sent', 'verified' or 'deleted'), it writes the step and the
 * study's ID to MARKER and kills itself with SIGKILL: no handler, no cleanup, as after a power cut.
 * If no move ever reaches STEP it exits 3, so that the test can tell.
 */
import { writeFileSync } from 'node:fs';
import { createLog } from '../../lambdas/core/log.ts';
import type { MoveStep } from '../../lambdas/core/move-study.ts';
import { loadConfigFile } from '../../lambdas/local/load-config.ts';
import { LocalRunner } from '../../lambdas/local/local-runner.ts';
import { openState } from '../../lambdas/local/sqlite-state.ts';

const STEPS: readonly MoveStep[] = ['snapshot-taken', 'sent', 'verified', 'deleted'];

const [configPath, statePath, step, markerPath] = process.argv.slice(2);
if (
  configPath === undefined ||
  statePath === undefined ||
  markerPath === undefined ||
  !STEPS.includes(step as MoveStep)
) {
  process.stderr.write(`usage: crash-at.ts CONFIG STATE ${STEPS.join('|')} MARKER\n`);
  process.exit(2);
}

const config = loadConfigFile(configPath);
const state = openState(statePath, { maxReceives: config.retry.maxAttempts });
const onStep = (reached: MoveStep, studyId: string): void => {
  if (reached !== step) return;
  // Synchronous, so that the marker is on disk before the process is gone.
  writeFileSync(markerPath, JSON.stringify({ step: reached, studyId }));
  process.kill(process.pid, 'SIGKILL');
};
await new LocalRunner(config, state, createLog({ level: 'INFO' }), { onStep }).run({ untilIdle: true });
state.close();
process.stderr.write(`crash-at: no move reached '${step}'\n`);
process.exit(3);
