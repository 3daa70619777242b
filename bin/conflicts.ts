/**
 * `conflicts resolve`, the same on the state file and on the deployed stack: the operator's
 * decision goes into the ledger, and the study back on the work queue, because only a move acts
 * on a decision (it deletes at the source or at the destination, or stops holding the instance).
 */
import { createInterface } from 'node:readline/promises';
import { InvalidArgumentError, Option } from 'commander';
import type { ForwarderConfig } from '../lambdas/core/config.ts';
import { describe } from '../lambdas/core/errors.ts';
import type { FeedStateStore } from '../lambdas/core/ports.ts';
import {
  CONFLICT_RESOLUTIONS,
  type Conflict,
  type ConflictResolution,
  type Ledger,
  type WorkItem,
  type WorkSink,
} from '../lambdas/core/ports.ts';
import { describeConflict, formatDecisions } from './format.ts';

const RESOLUTION_HELP: Record<ConflictResolution, string> = {
  'keep-source': 'leave the source’s copy where it is, and stop reporting the conflict',
  'accept-destination': 'let the destination’s copy stand and delete the source’s (asks first, or --yes)',
  'replace-destination':
    'delete the destination’s copy, send the source’s, verify it, then delete at the source (needs the destination’s orthancUrl)',
};

/** One flag per decision: `--keep-source`, `--accept-destination`, `--replace-destination`. */
export const resolutionOptions = CONFLICT_RESOLUTIONS.map(
  (resolution) => [resolution, new Option(`--${resolution}`, RESOLUTION_HELP[resolution])] as const,
);

export const chosenResolution = (options: object): ConflictResolution => {
  const given = new Map(Object.entries(options));
  const chosen = resolutionOptions.filter(([, option]) => given.get(option.attributeName()) === true);
  const [only] = chosen;
  if (only === undefined || chosen.length > 1) {
    throw new InvalidArgumentError(
      `conflicts resolve needs exactly one of ${CONFLICT_RESOLUTIONS.map((r) => `--${r}`).join(', ')}`,
    );
  }
  return only[0];
};

export interface ConflictSelection {
  readonly source?: string;
  readonly study?: string;
  readonly instance?: string;
  readonly destination?: string;
  /** Every open conflict (narrowed by the filters given). */
  readonly all?: boolean;
}

/** Deciding every open conflict at once must be asked for: a mistyped command must not do it. */
export const checkSelection = (selection: ConflictSelection): void => {
  const { source, study, instance, destination, all } = selection;
  if (all === true || [source, study, instance, destination].some((filter) => filter !== undefined)) return;
  throw new InvalidArgumentError(
    'conflicts resolve needs --source, --study, --instance or --destination, or --all for every open conflict',
  );
};

const selectOpenConflicts = async (ledger: Ledger, selection: ConflictSelection): Promise<Conflict[]> =>
  (await ledger.conflicts({ sourceId: selection.source, studyId: selection.study, openOnly: true })).filter(
    (c) =>
      (selection.instance ?? c.instanceId) === c.instanceId &&
      (selection.destination ?? c.destinationId) === c.destinationId,
  );

/**
 * DICOMweb cannot delete: the forwarder replaces the destination's copy only through the
 * destination's Orthanc REST root. Checked for every conflict before any is decided.
 */
const checkReplaceable = (config: ForwarderConfig, conflicts: readonly Conflict[]): void => {
  for (const id of new Set(conflicts.map((c) => c.destinationId))) {
    const destination = config.destinations.find((d) => d.id === id);
    if (destination?.orthancUrl !== undefined) continue;
    throw new InvalidArgumentError(
      destination === undefined
        ? `--replace-destination: the destination ${id} is not in the configuration`
        : `--replace-destination: the destination ${id} has no orthancUrl, and the forwarder can delete at a destination only through its Orthanc REST root (DICOMweb has no delete): resolve these conflicts otherwise, or at the destination`,
    );
  }
};

/**
 * --accept-destination deletes the source's copies: someone at a terminal confirms it, or --yes
 * does; a script without --yes is refused rather than left waiting for an answer.
 */
const confirmAcceptance = async (conflicts: readonly Conflict[], yes: boolean): Promise<boolean> => {
  if (yes) return true;
  const what = `--accept-destination deletes the source's copy of ${conflicts.length} instance(s)`;
  if (process.stdin.isTTY !== true) {
    throw new InvalidArgumentError(`${what}: add --yes to confirm when not at a terminal`);
  }
  process.stderr.write(`${conflicts.map(describeConflict).join('\n')}\n`);
  const prompt = createInterface({ input: process.stdin, output: process.stderr });
  try {
    return /^y(es)?$/i.test((await prompt.question(`${what} at their next move. Go on? [y/N] `)).trim());
  } finally {
    prompt.close();
  }
};

/** A conflict decided meanwhile by someone else keeps that decision (`skipped`). */
const recordDecisions = async (
  ledger: Ledger,
  conflicts: readonly Conflict[],
  resolution: ConflictResolution,
): Promise<{ resolved: Conflict[]; skipped: Conflict[] }> => {
  const at = Date.now();
  const resolved: Conflict[] = [];
  const skipped: Conflict[] = [];
  for (const c of conflicts) {
    const { sourceId, studyId, instanceId, destinationId } = c;
    const key = { sourceId, studyId, instanceId, destinationId };
    ((await ledger.resolveConflict(key, resolution, at)) ? resolved : skipped).push(c);
  }
  return { resolved, skipped };
};

/** The studies of these conflicts, each once, as work items like the change feed's. */
const studiesOf = (conflicts: readonly Conflict[]): WorkItem[] => [
  ...new Map(
    conflicts.map(({ sourceId, studyId }): [string, WorkItem] => [
      `${sourceId}/${studyId}`,
      { sourceId, studyId, reason: 'stable' },
    ]),
  ).values(),
];

/**
 * Decides the selected open conflicts, then queues their studies again, printing each step; false
 * when nothing was decided or the studies could not be queued. Decided first: a move that ran
 * before the decision was recorded would only hold the instance once more.
 */
export const resolveSelected = async (
  ports: {
    readonly ledger: Ledger;
    readonly queue: WorkSink;
    readonly feed: Pick<FeedStateStore, 'forgetQueued'>;
  },
  config: ForwarderConfig,
  options: ConflictSelection & { readonly yes?: boolean },
  resolution: ConflictResolution,
): Promise<boolean> => {
  const selected = await selectOpenConflicts(ports.ledger, options);
  if (selected.length === 0) {
    process.stdout.write('no open conflict matches: nothing resolved\n');
    return false;
  }
  if (resolution === 'replace-destination') checkReplaceable(config, selected);
  if (resolution === 'accept-destination' && !(await confirmAcceptance(selected, options.yes === true))) {
    process.stdout.write('not confirmed: nothing resolved\n');
    return false;
  }
  const decisions = await recordDecisions(ports.ledger, selected, resolution);
  process.stdout.write(`${formatDecisions(resolution, decisions)}\n`);
  const studies = studiesOf(decisions.resolved);
  try {
    // The feed forgets having queued them first: should the queueing fail, the next sweep does it.
    for (const [sourceId, items] of Map.groupBy(studies, (study) => study.sourceId)) {
      await ports.feed.forgetQueued(
        sourceId,
        items.map((study) => study.studyId),
      );
    }
  } catch (error) {
    process.stderr.write(
      `orthanc-forwarder: the decisions stand, but the state could not be updated (${describe(error)}): their studies are queued again when they next change\n`,
    );
    return false;
  }
  try {
    await ports.queue.enqueue(studies);
  } catch (error) {
    process.stderr.write(
      `orthanc-forwarder: the decisions stand, but their studies could not be queued again (${describe(error)}): the next sweep (sweepIntervalSeconds) queues them\n`,
    );
    return false;
  }
  process.stdout.write(`queued ${studies.length} study(ies) again: their next move applies the decision\n`);
  return decisions.resolved.length > 0;
};
