/**
 * One invocation of the real forwarder Lambda handler that dies by SIGKILL at a chosen point of its
 * move, for the AWS fault tests (what crash-at.ts is for local mode):
 *
 *   node lambda-crash-at.ts POINT MARKER
 *
 * The environment is the Lambda's (FORWARDER_CONFIG with the credentials inline, STATE_TABLE,
 * QUEUE_URL, DLQ_URL) with the AWS SDK pointed at the emulators. It takes one message from the
 * work queue as the event source mapping does (testbed/event-source-mapping.ts) and invokes the
 * handler with it. The point is seen on undici's diagnostics channels, that is on the handler's own
 * HTTP client, without a hook in the product:
 * - 'stow-answered': the first STOW-RS answer arrived (the destination stored that batch; nothing
 *   verified nor deleted);
 * - 'delete-requested': the bulk delete is about to leave (everything sent and verified, nothing
 *   deleted);
 * - 'delete-answered': the source answered the bulk delete (deleted there; no outcome recorded,
 *   the lease still held).
 * There it writes MARKER (the point, the message's ID, receipt handle and receive count) and kills
 * itself: no handler, no cleanup, as when Lambda ends a sandbox at its timeout. If the invocation
 * ends without reaching the point, it prints the mapping's report and exits 3, so that the test
 * can tell.
 */
import { subscribe } from 'node:diagnostics_channel';
import type { SQSRecord } from 'aws-lambda';
import { createRuntime } from '../../lambdas/aws/runtime.ts';
import { createForwarderHandler } from '../../lambdas/handlers/forwarder.ts';
import { deliverOnce } from '../../testbed/event-source-mapping.ts';
import { dieWithMarker, LAMBDA_CRASH_POINTS, type LambdaCrashPoint } from './processes.ts';

const [point, markerPath] = process.argv.slice(2);
if (markerPath === undefined || !LAMBDA_CRASH_POINTS.includes(point as LambdaCrashPoint)) {
  process.stderr.write(`usage: lambda-crash-at.ts ${LAMBDA_CRASH_POINTS.join('|')} MARKER\n`);
  process.exit(2);
}

interface UndiciRequest {
  readonly method: string;
  readonly path: string;
}

let record: SQSRecord | undefined;
const crash = (reached: LambdaCrashPoint): void => {
  if (reached !== point) return;
  dieWithMarker(markerPath, {
    point: reached,
    messageId: record?.messageId,
    receiptHandle: record?.receiptHandle,
    receiveCount: Number(record?.attributes.ApproximateReceiveCount),
  });
};
const isStow = (request: UndiciRequest) => request.method === 'POST' && request.path.endsWith('/studies');
const isBulkDelete = (request: UndiciRequest) =>
  request.method === 'POST' && request.path.endsWith('/tools/bulk-delete');
subscribe('undici:request:create', (message) => {
  if (isBulkDelete((message as { request: UndiciRequest }).request)) crash('delete-requested');
});
subscribe('undici:request:headers', (message) => {
  const { request } = message as { request: UndiciRequest };
  if (isStow(request)) crash('stow-answered');
  if (isBulkDelete(request)) crash('delete-answered');
});

const runtime = await createRuntime();
const handler = createForwarderHandler(async () => runtime);
const report = await deliverOnce({
  sqs: runtime.sqs,
  queueUrl: runtime.queueUrl,
  handler: (event, context) => {
    record = event.Records[0];
    return handler(event, context);
  },
});
process.stdout.write(`${JSON.stringify(report)}\n`);
process.stderr.write(`lambda-crash-at: the invocation never reached '${point}'\n`);
process.exit(3);
