/**
 * The HTTP timeouts of every AWS client, the Lambdas' and the CLI's. The SDK sets none by default,
 * and its request timeout only warns unless told to throw: a connection that stopped answering (a
 * NAT's idle timeout, an endpoint wedged under load) would hold a Lambda until its own timeout and
 * a CLI command for ever. Timed out, a call fails as a TimeoutError, which the SDK retries like
 * any transient error. 30 s is above SQS's longest long poll (20 s).
 */
export const AWS_REQUEST_HANDLER = {
  connectionTimeout: 5_000,
  requestTimeout: 30_000,
  throwOnRequestTimeout: true,
} as const;
