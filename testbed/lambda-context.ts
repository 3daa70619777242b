/**
 * The context Lambda's Node.js runtime passes a handler, with the invocation's time budget. Its
 * own module, free of dependencies, so that a process standing in for a Lambda execution
 * environment (test/support/lambda-runtime.ts) loads nothing from the repository but this.
 */
import { randomUUID } from 'node:crypto';
import type { Context } from 'aws-lambda';

export const lambdaContext = (functionName: string, remainingMs = 300_000): Context => {
  const deadline = Date.now() + remainingMs;
  return {
    callbackWaitsForEmptyEventLoop: false,
    functionName,
    functionVersion: '$LATEST',
    invokedFunctionArn: `arn:aws:lambda:us-east-1:000000000000:function:${functionName}`,
    memoryLimitInMB: '1024',
    awsRequestId: randomUUID(),
    logGroupName: `/aws/lambda/${functionName}`,
    logStreamName: 'test',
    getRemainingTimeInMillis: () => deadline - Date.now(),
    done: () => undefined,
    fail: () => undefined,
    succeed: () => undefined,
  };
};
