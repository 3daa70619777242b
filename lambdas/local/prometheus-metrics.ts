/**
 * The engine's metrics (core/metrics.ts) as Prometheus metrics, for `run --listen`'s /metrics:
 * counters and gauges labelled by source or destination id, what the run knows at the moment of
 * a scrape (last successful poll, queue, destinations' health), and the process's own (RSS,
 * event-loop delay). Ids, counts, bytes and seconds only: no PHI.
 */
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import { dimensionOf, type MetricName, type Metrics, type MetricUnit } from '../core/metrics.ts';
import type { DeliveryReport } from '../core/move-study.ts';
import type { LocalRunner } from './local-runner.ts';
import type { LocalState } from './sqlite-state.ts';

const PREFIX = 'orthanc_forwarder_';

type Kind = 'counter' | 'gauge' | 'histogram';

/** Each engine metric's Prometheus name (without the prefix), kind and help. */
const SERIES: Readonly<Record<MetricName, readonly [name: string, kind: Kind, help: string]>> = {
  ChangesRead: ['changes_read_total', 'counter', 'Changes read from the source’s change feed.'],
  StudiesQueued: ['studies_queued_total', 'counter', 'Studies queued to be moved.'],
  CursorLag: ['feed_lag_changes', 'gauge', 'Changes of the source not read yet, at the last poll.'],
  StudiesWaiting: ['studies_waiting', 'gauge', 'Studies waiting to become stable, at the last poll.'],
  SourceUnreachable: ['source_unreachable', 'gauge', '1 when the last poll of the source failed.'],
  SourceReset: ['source_resets_total', 'counter', 'Times the source’s change feed went back (a reset).'],
  LookupFailures: ['lookup_failures_total', 'counter', 'Studies the poll could not look up.'],
  StudiesMoved: ['studies_moved_total', 'counter', 'Studies moved (or copied) whole.'],
  InstancesMoved: ['instances_moved_total', 'counter', 'Instances sent, summed over the destinations.'],
  BytesMoved: ['moved_bytes_total', 'counter', 'Bytes sent, summed over the destinations.'],
  MoveDuration: ['move_duration_seconds', 'histogram', 'How long a study’s move took.'],
  InstancesRejected: ['instances_rejected_total', 'counter', 'Instances refused for good by a destination.'],
  Conflicts: ['conflicts_total', 'counter', 'Instances held at the source by a conflict, per move.'],
  VerificationFailures: [
    'verification_failures_total',
    'counter',
    'Moves whose destination did not list what it was sent.',
  ],
  InstancesDeleted: ['instances_deleted_total', 'counter', 'Instances deleted at the source.'],
  Retries: ['retries_total', 'counter', 'Failed attempts at a study, to be retried.'],
  DeadLettered: ['dead_lettered_total', 'counter', 'Studies dead-lettered.'],
  DestinationUnavailable: [
    'destination_unavailable_total',
    'counter',
    'Moves that found the destination refusing the forwarder as a whole.',
  ],
  StudiesLeft: ['studies_left', 'gauge', 'Studies the source still holds.'],
  InstancesLeft: ['instances_left', 'gauge', 'Instances the source still holds.'],
  BytesLeft: ['left_bytes', 'gauge', 'Bytes the source still holds.'],
  MoveRate: ['move_rate_bytes_per_second', 'gauge', 'Bytes leaving the source per second lately.'],
  SecondsToFinish: ['seconds_to_finish', 'gauge', 'Estimated seconds until the source holds nothing more.'],
};

/** Prometheus counts time in seconds. */
const inBaseUnit = (value: number, unit: MetricUnit): number =>
  unit === 'Milliseconds' ? value / 1_000 : value;

const labelOf = (name: MetricName): 'source' | 'destination' =>
  dimensionOf(name) === 'DestinationId' ? 'destination' : 'source';

type Series = Counter<string> | Gauge<string> | Histogram<string>;

export class PrometheusMetrics implements Metrics {
  readonly registry = new Registry();
  private readonly series = new Map<MetricName, Series>();
  private readonly delivery: { sent: Counter<string>; verified: Counter<string>; errors: Counter<string> };

  /** Every configured source and destination (only their ids are read). */
  constructor(config: {
    readonly sources: readonly { readonly id: string }[];
    readonly destinations: readonly { readonly id: string }[];
  }) {
    collectDefaultMetrics({ register: this.registry });
    for (const [metric, [name, kind, help]] of Object.entries(SERIES) as [
      MetricName,
      (typeof SERIES)[MetricName],
    ][]) {
      const options = {
        name: `${PREFIX}${name}`,
        help,
        labelNames: [labelOf(metric)],
        registers: [this.registry],
      };
      this.series.set(
        metric,
        kind === 'counter'
          ? new Counter(options)
          : kind === 'gauge'
            ? new Gauge(options)
            : new Histogram(options),
      );
    }
    const perDestination = (name: string, help: string) =>
      new Counter({
        name: `${PREFIX}${name}`,
        help,
        labelNames: ['destination'],
        registers: [this.registry],
      });
    this.delivery = {
      sent: perDestination('destination_instances_sent_total', 'Instances the destination stored.'),
      verified: perDestination(
        'destination_instances_verified_total',
        'Instances the destination was verified to hold.',
      ),
      errors: perDestination('destination_errors_total', 'Moves in which the destination failed.'),
    };
    // Counters start at 0 for every configured id, so that rate() sees the first increase.
    for (const [metric, series] of this.series) {
      if (!(series instanceof Counter)) continue;
      const ids = labelOf(metric) === 'source' ? config.sources : config.destinations;
      for (const { id } of ids) series.inc({ [labelOf(metric)]: id }, 0);
    }
    for (const { id } of config.destinations)
      for (const counter of Object.values(this.delivery)) counter.inc({ destination: id }, 0);
  }

  add(name: MetricName, value: number, unit: MetricUnit, id?: string): void {
    const series = this.series.get(name);
    const labels = id === undefined ? {} : { [labelOf(name)]: id };
    const measured = inBaseUnit(value, unit);
    if (series instanceof Counter) series.inc(labels, measured);
    else if (series instanceof Gauge) series.set(labels, measured);
    else series?.observe(labels, measured);
  }

  /** One move's work at one destination (MoveContext.onDelivery). */
  readonly delivered = (report: DeliveryReport): void => {
    const labels = { destination: report.destinationId };
    this.delivery.sent.inc(labels, report.sent);
    this.delivery.verified.inc(labels, report.verified);
    if (report.failed) this.delivery.errors.inc(labels);
  };

  /** What the run and its state file hold at the moment of a scrape. */
  watch(runner: LocalRunner, state: LocalState): void {
    const registers = [this.registry];
    new Gauge({
      name: `${PREFIX}last_successful_poll_timestamp_seconds`,
      help: 'When the last successful poll of the source ended (Unix time).',
      labelNames: ['source'],
      registers,
      collect() {
        for (const [source, status] of runner.sourceStatus())
          if (status.lastPollAt !== undefined) this.set({ source }, status.lastPollAt / 1_000);
      },
    });
    new Gauge({
      name: `${PREFIX}queue_messages`,
      help: 'Work items in the queue: waiting, in flight, dead letters.',
      labelNames: ['state'],
      registers,
      async collect() {
        const stats = await state.queue.stats();
        this.set({ state: 'waiting' }, stats.waiting);
        this.set({ state: 'in_flight' }, stats.inFlight);
        this.set({ state: 'dead_letters' }, stats.deadLetters);
      },
    });
    new Gauge({
      name: `${PREFIX}destination_up`,
      help: '0 while this process finds the destination unreachable or refusing it as a whole, else 1.',
      labelNames: ['destination'],
      registers,
      collect() {
        for (const { id, health } of runner.destinationHealth())
          this.set(
            { destination: id },
            health.unreachableSince === undefined && health.faults === undefined ? 1 : 0,
          );
      },
    });
  }

  /** The text format, and its content type, for GET /metrics. */
  async scrape(): Promise<{ body: string; contentType: string }> {
    return { body: await this.registry.metrics(), contentType: this.registry.contentType };
  }
}
