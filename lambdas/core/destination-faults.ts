/**
 * A destination that refuses us as a whole (a ServerFault: its credentials, its certificate, a
 * root that is not there) would fail every study alike, and dead-lettering each would turn one
 * wrong setting into as many dead letters as there are studies. Instead each study routed to it
 * waits (DestinationUnavailableError: uncounted, its backoff growing with the moves in a row that
 * met the fault), nothing of it leaves the source (a deletion needs every destination's
 * verification), and the fault is logged once per period, naming the setting to fix. The first
 * move the destination serves again ends it.
 */
import type { Destination, DestinationServer } from './destinations.ts';
import { DestinationUnavailableError, ForwarderError, serverFaultOf } from './errors.ts';
import type { Log } from './log.ts';

/** A fault that goes on is logged again after this long, so that the logs keep saying so. */
export const FAULT_REPORT_PERIOD_MS = 5 * 60_000;

/** The destination's server (or its alternate) whose fault the error is, if it is one. */
const faultyServer = (destination: Destination, error: unknown): DestinationServer | undefined => {
  const fault = serverFaultOf(error);
  if (fault === undefined) return undefined;
  return [destination.primary, destination.alternate?.server].find((server) =>
    server?.origins.has(fault.server),
  );
};

export const isDestinationFault = (destination: Destination, error: unknown): boolean =>
  faultyServer(destination, error) !== undefined;

/**
 * What a move that failed with `error` at this destination throws: a DestinationUnavailableError
 * when the error is a fault of the destination as a whole (counted, and logged once per period),
 * or undefined when it is an ordinary failure (or a fault of the source, met while sending).
 */
export const destinationUnavailable = (
  context: { readonly log: Log; readonly now: () => number; readonly sourceId: string },
  destination: Destination,
  error: unknown,
): DestinationUnavailableError | undefined => {
  const server = faultyServer(destination, error);
  const fault = serverFaultOf(error);
  if (server === undefined || fault === undefined || !(error instanceof ForwarderError)) return undefined;
  const now = context.now();
  const faults = destination.health.faults ?? { count: 0, reportedAt: Number.NEGATIVE_INFINITY };
  faults.count++;
  destination.health.faults = faults;
  const unavailable = new DestinationUnavailableError(
    { id: destination.id, field: server.faultFields[fault.kind] },
    faults.count,
    error,
  );
  if (now - faults.reportedAt >= FAULT_REPORT_PERIOD_MS) {
    faults.reportedAt = now;
    context.log.error('destination unavailable: the studies routed to it wait, none is dead-lettered', {
      destinationId: destination.id,
      server: server.label,
      fault: fault.kind,
      field: unavailable.field,
      status: error.status,
      error: error.message,
      movesInARow: faults.count,
      sourceId: context.sourceId,
    });
  }
  return unavailable;
};

/** The destination served a move: a fault it had is over. */
export const destinationServed = (log: Log, destination: Destination): void => {
  const { faults } = destination.health;
  if (faults === undefined) return;
  destination.health.faults = undefined;
  log.info('destination available again: the studies waiting for it move', {
    destinationId: destination.id,
    movesInARow: faults.count,
  });
};
