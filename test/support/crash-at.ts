/**
 * A forwarder that dies by SIGKILL at a chosen step of its first move, for the crash tests:
 *
 *   node crash-at.ts CONFIG STATE STEP MARKER
 *
 * Runs local mode (the real runner on the real state file) until idle; the first time a move
 * reaches STEP ('snapshot-taken', 'sent', 'verified' or 'deleted'), it writes the step and the
 * study's ID to MARKER and kills itself with SIGKILL: no handler, no cleanup, as after a power cut.
 * Two steps of the change-feed reader too: 'queued', once work items are committed to the queue
 * and before the cursor moves past their changes; 'cursor-advanced', once a cursor moved.
 * If no move ever reaches STEP it exits 3, so that the test can tell.
 */
import { createLog } from '../../lambdas/core/log.ts';
import type { MoveStep } from '../../lambdas/core/move-study.ts';
import { loadConfigFile } from '../../lambdas/local/load-config.ts';
import { LocalRunner } from '../../lambdas/local/local-runner.ts';
import { openState } from '../../lambdas/local/sqlite-state.ts';
import { CRASH_STEPS, type CrashStep, dieWithMarker } from './processes.ts';

const [configPath, statePath, step, markerPath] = process.argv.slice(2);
if (
  configPath === undefined ||
  statePath === undefined ||
  markerPath === undefined ||
  !CRASH_STEPS.includes(step as CrashStep)
) {
  process.stderr.write(`usage: crash-at.ts CONFIG STATE ${CRASH_STEPS.join('|')} MARKER\n`);
  process.exit(2);
}

const config = loadConfigFile(configPath);
const state = openState(statePath, { maxReceives: config.retry.maxAttempts });
const crash = (reached: CrashStep, details: Record<string, unknown>): void => {
  if (reached === step) dieWithMarker(markerPath, { step: reached, ...details });
};
const onStep = (reached: MoveStep, studyId: string): void => crash(reached, { studyId });
// The feed reader's writes, seen from the state it is given: each resolves once committed.
const { queue, feed } = state;
const enqueue = queue.enqueue.bind(queue);
queue.enqueue = async (items) => {
  await enqueue(items);
  if (items.length > 0) crash('queued', { studyIds: items.map((item) => item.studyId) });
};
const advanceCursor = feed.advanceCursor.bind(feed);
feed.advanceCursor = async (sourceId, expected, next) => {
  const advanced = await advanceCursor(sourceId, expected, next);
  if (advanced && next !== expected) crash('cursor-advanced', { sourceId, cursor: next });
  return advanced;
};
await new LocalRunner(config, state, createLog({ level: 'INFO' }), { onStep }).run({ untilIdle: true });
state.close();
process.stderr.write(`crash-at: no move reached '${step}'\n`);
process.exit(3);
