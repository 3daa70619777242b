/**
 * What a worker does with one queued message, in local mode and in the forwarder Lambda alike:
 * validate it, take the study's lease, run the move protocol, record and log the outcome.
 */
import { permanent, transient } from './errors.ts';
import type { Log } from './log.ts';
import { type MoveContext, type MoveOptions, moveStudy } from './move-study.ts';
import type { OrthancClient } from './orthanc-client.ts';
import type { Ledger, StudyOutcome } from './ports.ts';
import type { QidoClient } from './qido-client.ts';
import type { StowClient } from './stow-client.ts';
import { decodeWorkItem } from './work-item.ts';

export interface Engine {
  readonly sources: ReadonlyMap<string, OrthancClient>;
  readonly stow: StowClient;
  readonly qido: QidoClient;
  readonly destinationOrthanc?: OrthancClient | undefined;
  readonly ledger: Ledger;
  readonly options: MoveOptions;
  readonly log: Log;
  /** Who holds leases taken by this worker. */
  readonly owner: string;
  /** How long a lease lasts: longer than one move may take, short enough to outlive a crash. */
  readonly leaseMs: number;
  readonly now?: () => number;
  readonly onStep?: MoveContext['onStep'];
}

const leaseKey = (sourceId: string, studyId: string) => `study#${sourceId}#${studyId}`;

export const forwardWorkItem = async (
  engine: Engine,
  body: string,
  limits: { readonly signal?: AbortSignal; readonly deadline?: number } = {},
): Promise<StudyOutcome> => {
  const item = decodeWorkItem(body);
  const source = engine.sources.get(item.sourceId);
  if (source === undefined) throw permanent(`work item names an unknown source '${item.sourceId}'`);
  const now = engine.now ?? Date.now;
  const key = leaseKey(item.sourceId, item.studyId);
  if (!(await engine.ledger.acquireLease(key, engine.owner, engine.leaseMs, now()))) {
    throw transient('the study is being moved by another worker');
  }
  try {
    const context: MoveContext = {
      sourceId: item.sourceId,
      source,
      stow: engine.stow,
      qido: engine.qido,
      destinationOrthanc: engine.destinationOrthanc,
      ledger: engine.ledger,
      options: engine.options,
      log: engine.log,
      now,
      onStep: engine.onStep,
      deadline: limits.deadline,
      ...(limits.signal === undefined ? {} : { signal: limits.signal }),
    };
    const outcome = await moveStudy(context, item.studyId);
    await engine.ledger.record(outcome);
    engine.log.info('study outcome', { ...outcome });
    return outcome;
  } finally {
    await engine.ledger.releaseLease(key, engine.owner);
  }
};
