/**
 * `--listen [host:]port` of `run` and `demo`: where the monitoring server (monitoring-server.ts)
 * listens. It is imported only when the option is given: prom-client stays out of every other
 * command's memory.
 */
import { once } from 'node:events';
import { InvalidArgumentError, Option } from 'commander';
import { LocalRunner, type RunParts } from '../lambdas/local/local-runner.ts';

export interface ListenAddress {
  readonly host: string;
  readonly port: number;
}

/** Where a bare port listens: nobody else on the network reads the page unless told so. */
export const LOOPBACK = '127.0.0.1';

/** `9464` (on loopback), `0.0.0.0:9464`, `[::1]:9464`. */
export const parseListen = (value: string): ListenAddress => {
  const match = /^(?:(\[[^\]]+\]|[^:]+):)?(\d{1,5})$/.exec(value.trim());
  const port = Number(match?.[2]);
  if (match === null || port > 65_535)
    throw new InvalidArgumentError('give PORT or HOST:PORT, e.g. 9464 or 127.0.0.1:9464');
  return { host: (match[1] ?? LOOPBACK).replace(/^\[|\]$/g, ''), port };
};

export const listenOption = () =>
  new Option(
    '--listen <[host:]port>',
    'serve /metrics, /healthz, /readyz and a status page at / (host: 127.0.0.1 unless given)',
  ).argParser(parseListen);

/**
 * What hands a run its runner: with an address, one the monitoring server reports on while the
 * run lasts (`onListening` is told its URL), and after it until `stayUntil` aborts (the demo: a
 * newcomer gets to read the page); without, a plain one.
 */
export const runnerFor =
  (
    address: ListenAddress | undefined,
    options: { readonly onListening?: (url: string) => void; readonly stayUntil?: AbortSignal } = {},
  ) =>
  async <T>(parts: RunParts, use: (runner: LocalRunner) => Promise<T>): Promise<T> => {
    if (address === undefined) return use(new LocalRunner(parts.config, parts.state, parts.log));
    const { withMonitoring } = await import('./monitoring-server.ts');
    const { stayUntil } = options;
    const runThenStay = async (runner: LocalRunner) => {
      const result = await use(runner);
      if (stayUntil !== undefined && !stayUntil.aborted) await once(stayUntil, 'abort');
      return result;
    };
    return withMonitoring(address, parts, runThenStay, options.onListening);
  };
