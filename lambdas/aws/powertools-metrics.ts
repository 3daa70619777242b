/** The engine's metrics as CloudWatch EMF records, through Powertools Metrics. */
import { MetricUnit, Metrics as PowertoolsMetrics } from '@aws-lambda-powertools/metrics';
import { dimensionOf, type Metrics } from '../core/metrics.ts';

const UNITS = {
  Count: MetricUnit.Count,
  Bytes: MetricUnit.Bytes,
  Milliseconds: MetricUnit.Milliseconds,
  Seconds: MetricUnit.Seconds,
  BytesPerSecond: MetricUnit.BytesPerSecond,
} as const;

/**
 * Every data point lands in the invocation's one record, whose only dimension is Powertools'
 * `service` (POWERTOOLS_SERVICE_NAME): the all-sources series that alarms and totals use (an
 * alarm cannot sum a SEARCH over sources). A per-source (or per-destination) data point is also
 * written at once as its own record with the dimensions `service` and `SourceId` (or
 * `DestinationId`), so the sets never mix.
 * lib/forwarder-monitoring.ts names these exact dimension sets.
 */
export const createPowertoolsMetrics = (): { metrics: Metrics; publish: () => void } => {
  const powertools = new PowertoolsMetrics({
    namespace: process.env.POWERTOOLS_METRICS_NAMESPACE ?? 'OrthancForwarder',
  });
  return {
    metrics: {
      add(name, value, unit, id) {
        powertools.addMetric(name, UNITS[unit], value);
        if (id === undefined) return;
        const single = powertools.singleMetric();
        single.addDimension(dimensionOf(name), id);
        single.addMetric(name, UNITS[unit], value);
      },
    },
    publish: () => {
      if (powertools.hasStoredMetrics()) powertools.publishStoredMetrics();
    },
  };
};
