/**
 * What Lambda's Node.js runtime does in an execution environment, for a deployed bundle run as a
 * child process (test/support/deployed-stack.ts starts it): the init phase imports the module
 * `_HANDLER` names from LAMBDA_TASK_ROOT, once; then each message from the parent is one
 * invocation of its handler, in this same process (a warm environment), with a Lambda-shaped
 * context, answered with the result or with the error as Lambda reports it (errorType,
 * errorMessage). Only a relative import of a dependency-free module: nothing of the
 * repository's node_modules is loaded beside the bundle.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { lambdaContext } from '../../testbed/lambda-context.ts';

export interface Invocation {
  readonly id: number;
  readonly event: unknown;
  readonly timeoutMs: number;
}

export type RuntimeMessage =
  | { readonly type: 'ready'; readonly node: string }
  | { readonly type: 'init-error'; readonly errorType: string; readonly errorMessage: string }
  | { readonly type: 'result'; readonly id: number; readonly result: unknown }
  | {
      readonly type: 'error';
      readonly id: number;
      readonly errorType: string;
      readonly errorMessage: string;
    };

const send = (message: RuntimeMessage) => process.send?.(message);

const reported = (error: unknown) =>
  error instanceof Error
    ? { errorType: error.name, errorMessage: error.message }
    : { errorType: 'Error', errorMessage: String(error) };

const handlerOf = async (): Promise<(event: unknown, context: unknown) => Promise<unknown>> => {
  const root = process.env.LAMBDA_TASK_ROOT ?? '';
  const [moduleName, exportName] = (process.env._HANDLER ?? '').split('.');
  const file = ['.mjs', '.js', '.cjs']
    .map((extension) => join(root, `${moduleName}${extension}`))
    .find(existsSync);
  if (file === undefined || exportName === undefined) {
    throw new Error(`no module for _HANDLER ${process.env._HANDLER} in ${root}`);
  }
  const handler = (await import(pathToFileURL(file).href))[exportName];
  if (typeof handler !== 'function') throw new Error(`${file} exports no function ${exportName}`);
  return handler;
};

try {
  const handler = await handlerOf();
  process.on('message', async ({ id, event, timeoutMs }: Invocation) => {
    try {
      const context = lambdaContext(process.env.AWS_LAMBDA_FUNCTION_NAME ?? 'function', timeoutMs);
      send({ type: 'result', id, result: await handler(event, context) });
    } catch (error) {
      send({ type: 'error', id, ...reported(error) });
    }
  });
  send({ type: 'ready', node: process.version });
} catch (error) {
  send({ type: 'init-error', ...reported(error) });
  process.disconnect();
}
