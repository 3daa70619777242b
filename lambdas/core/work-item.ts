/** The message that carries a work item through a queue, and its validation. */
import { z } from 'zod';
import { permanent } from './errors.ts';
import type { WorkItem, WorkPriority } from './ports.ts';

const orthancId = z.string().regex(/^[0-9a-f]{8}(-[0-9a-f]{8}){4}$/, 'must be an Orthanc ID');

export const workItemSchema = z.strictObject({
  sourceId: z.string().min(1).max(64),
  studyId: orthancId,
  /** Trigger StableSeries: only this series of the study is moved. */
  seriesId: orthancId.optional(),
  reason: z.enum(['stable', 'quiet', 'instance']),
  priority: z.enum(['new', 'backlog']).optional(),
});

/** The priority a message carries, or `new` for one without (queued before priorities, or by an operator). */
export const priorityOf = (body: string): WorkPriority => {
  try {
    return (JSON.parse(body) as { priority?: unknown }).priority === 'backlog' ? 'backlog' : 'new';
  } catch {
    return 'new';
  }
};

export const encodeWorkItem = (item: WorkItem): string => JSON.stringify(item);

/** A body that does not parse will never parse: the error is permanent, so it is dead-lettered at once. */
export const decodeWorkItem = (body: string): WorkItem => {
  let raw: unknown;
  try {
    raw = JSON.parse(body);
  } catch {
    throw permanent('malformed work item: not JSON');
  }
  const result = workItemSchema.safeParse(raw);
  if (!result.success) {
    const issue = result.error.issues[0];
    throw permanent(
      `malformed work item: ${issue?.path.join('.') || '(root)'}: ${issue?.message ?? 'invalid'}`,
    );
  }
  return result.data;
};
