/** The engine's metrics as CloudWatch EMF records, through Powertools Metrics. */
import { MetricUnit, Metrics as PowertoolsMetrics } from '@aws-lambda-powertools/metrics';
import type { Metrics } from '../core/metrics.ts';

const UNITS = {
  Count: MetricUnit.Count,
  Bytes: MetricUnit.Bytes,
  Milliseconds: MetricUnit.Milliseconds,
} as const;

export const createPowertoolsMetrics = (): { metrics: Metrics; publish: () => void } => {
  const powertools = new PowertoolsMetrics({
    namespace: process.env.POWERTOOLS_METRICS_NAMESPACE ?? 'OrthancForwarder',
  });
  return {
    metrics: {
      add(name, value, unit, sourceId) {
        if (sourceId === undefined) {
          powertools.addMetric(name, UNITS[unit], value);
          return;
        }
        // A per-source data point gets its own EMF record, so dimensions never mix.
        const single = powertools.singleMetric();
        single.addDimension('SourceId', sourceId);
        single.addMetric(name, UNITS[unit], value);
      },
    },
    publish: () => {
      if (powertools.hasStoredMetrics()) powertools.publishStoredMetrics();
    },
  };
};
