/**
 * Operating the pipeline: one CloudWatch dashboard, the alarms of docs/operations.md, and the
 * encrypted SNS topic they notify (with an optional email subscription from `aws.alarms.email`).
 *
 * cdk-monitoring-constructs draws the standard parts and their alarms: the work queue and its
 * DLQ (depth, age of the oldest message; the alarms "DLQ not empty" and "oldest message too
 * old"), both functions (invocations, duration, errors, throttles; the alarms "poller errors",
 * throttles of each, and the forwarder's duration near its timeout) and the state table
 * (consumed capacity, latency, throttles, errors). Its fault-rate alarm is a rate per second, not a share of attempts, and it knows
 * nothing of our EMF metrics; so the rest is written here as plain CloudWatch metrics and math
 * with the exact dimension sets lambdas/aws/powertools-metrics.ts emits (`service` alone, or
 * `service` and `SourceId` or `DestinationId`), and handed to the library's custom monitoring so that every alarm
 * shares one naming scheme, one action and the dashboard's annotations.
 *
 * The topic's key is a customer managed KMS key, unlike the stack's other resources (see
 * lib/orthanc-forwarder.ts): CloudWatch can publish to an encrypted topic only if the key policy
 * lets cloudwatch.amazonaws.com use the key, which the AWS managed `aws/sns` key never does.
 */
import { Duration, RemovalPolicy, Stack } from 'aws-cdk-lib';
import {
  type AlarmBase,
  ComparisonOperator,
  type Dashboard,
  MathExpression,
  Metric,
  TreatMissingData,
} from 'aws-cdk-lib/aws-cloudwatch';
import { PolicyStatement, ServicePrincipal } from 'aws-cdk-lib/aws-iam';
import { Key } from 'aws-cdk-lib/aws-kms';
import { Topic } from 'aws-cdk-lib/aws-sns';
import { EmailSubscription } from 'aws-cdk-lib/aws-sns-subscriptions';
import { DefaultDashboardFactory, MonitoringFacade, SnsAlarmActionStrategy } from 'cdk-monitoring-constructs';
import { Construct } from 'constructs';
import { dimensionOf, type MetricName } from '../lambdas/core/metrics.ts';
import {
  type DeployableConfig,
  METRICS_NAMESPACE,
  type OrthancForwarder,
  SERVICE_NAME,
} from './orthanc-forwarder.ts';

/** The alarms, by the name they carry after the stack name (`<stackName>-<name>`). */
export const ALARM_NAMES = {
  deadLetterQueueNotEmpty: 'DeadLetterQueueNotEmpty',
  oldestMessageTooOld: 'OldestMessageTooOld',
  pollerErrors: 'PollerErrors',
  noSuccessfulPoll: 'NoSuccessfulPoll',
  forwarderErrorRate: 'ForwarderErrorRate',
  instancesRejected: 'InstancesRejected',
  conflicts: 'Conflicts',
  pollerThrottles: 'PollerThrottles',
  forwarderThrottles: 'ForwarderThrottles',
  forwarderDurationNearTimeout: 'ForwarderDurationNearTimeout',
} as const;
/** One per source: `<stackName>-SourceUnreachable-<sourceId>`. */
export const sourceUnreachableAlarmName = (sourceId: string) => `SourceUnreachable-${sourceId}`;
/** One per destination: `<stackName>-DestinationUnavailable-<destinationId>`. */
export const destinationUnavailableAlarmName = (destinationId: string) =>
  `DestinationUnavailable-${destinationId}`;

/** The period of the dashboard's graphs and of the alarms that do not set their own. */
const PERIOD = Duration.minutes(5);
/**
 * Periods on end for the alarms whose metric crosses its threshold now and then in normal work:
 * the forwarder's error rate, the poller's throttles (a tick that came while a poll still ran)
 * and the forwarder's duration (a study too large for one invocation uses it up, by design).
 */
const SUSTAINED_PERIODS = 3;
/** The forwarder's duration alarm: p99 above this share of its timeout. */
const NEAR_TIMEOUT_PERCENT = 80;
/**
 * DestinationUnavailable's window: a study waiting for a destination comes back at least every 15
 * minutes (SQS's longest delay), so a fault that goes on has a data point in every window.
 */
const DESTINATION_FAULT_PERIOD = Duration.minutes(15);

export interface ForwarderMonitoringProps {
  readonly forwarder: OrthancForwarder;
  readonly config: DeployableConfig;
}

export class ForwarderMonitoring extends Construct {
  /** Every alarm notifies this topic, on ALARM and back to OK. */
  readonly alarmTopic: Topic;
  readonly alarmTopicKey: Key;
  readonly dashboard: Dashboard;
  /** The alarms by their name (ALARM_NAMES, sourceUnreachableAlarmName, destinationUnavailableAlarmName). */
  readonly alarms: ReadonlyMap<string, AlarmBase>;

  constructor(scope: Construct, id: string, props: ForwarderMonitoringProps) {
    super(scope, id);
    const { forwarder, config } = props;
    const { alarms: thresholds } = config.aws;
    const stack = Stack.of(this);
    const prefix = config.aws.stackName;
    const runbook = (anchor: string) => `Runbook: docs/operations.md, section "${anchor}".`;

    // --- The topic -------------------------------------------------------------------------
    const cloudwatch = new ServicePrincipal('cloudwatch.amazonaws.com', {
      conditions: { StringEquals: { 'aws:SourceAccount': stack.account } },
    });
    this.alarmTopicKey = new Key(this, 'AlarmTopicKey', {
      description: `${prefix}: encrypts the alarm topic; CloudWatch may use it to publish alarms`,
      enableKeyRotation: true,
      // It encrypts only notifications in transit through SNS: nothing outlives the stack.
      removalPolicy: RemovalPolicy.DESTROY,
      pendingWindow: Duration.days(7),
    });
    this.alarmTopicKey.grant(cloudwatch, 'kms:Decrypt', 'kms:GenerateDataKey*');
    this.alarmTopic = new Topic(this, 'AlarmTopic', {
      displayName: `${prefix} alarms`,
      masterKey: this.alarmTopicKey,
      enforceSSL: true,
    });
    this.alarmTopic.addToResourcePolicy(
      new PolicyStatement({
        sid: 'CloudWatchAlarmsOfThisAccount',
        principals: [new ServicePrincipal('cloudwatch.amazonaws.com')],
        actions: ['sns:Publish'],
        resources: [this.alarmTopic.topicArn],
        conditions: {
          StringEquals: { 'aws:SourceAccount': stack.account },
          ArnLike: {
            'aws:SourceArn': `arn:${stack.partition}:cloudwatch:${stack.region}:${stack.account}:alarm:${prefix}-*`,
          },
        },
      }),
    );
    if (thresholds.email !== undefined) {
      this.alarmTopic.addSubscription(new EmailSubscription(thresholds.email));
    }

    // --- Metrics -------------------------------------------------------------------------------
    /**
     * An EMF metric of the handlers: all sources (`service` only) or one (`service`, `SourceId`),
     * or one destination (`service`, `DestinationId`) for the destinations' metrics.
     */
    const emf = (name: MetricName, statistic: string, label: string, id?: string) =>
      new Metric({
        namespace: METRICS_NAMESPACE,
        metricName: name,
        dimensionsMap:
          id === undefined ? { service: SERVICE_NAME } : { service: SERVICE_NAME, [dimensionOf(name)]: id },
        statistic,
        period: PERIOD,
        label,
      });
    const perSource = (name: MetricName, statistic: string) =>
      config.sources.map((source) => emf(name, statistic, source.id, source.id));

    const poller = forwarder.pollerFunction;
    const forwarderFn = forwarder.forwarderFunction;
    const noPollPeriod = Duration.minutes(thresholds.noPollMinutes);
    const successfulPolls = new MathExpression({
      expression: 'FILL(invocations, 0) - FILL(errors, 0)',
      usingMetrics: {
        invocations: poller.metricInvocations({ statistic: 'Sum', period: noPollPeriod }),
        errors: poller.metricErrors({ statistic: 'Sum', period: noPollPeriod }),
      },
      period: noPollPeriod,
      label: 'Successful poller invocations',
    });
    // An attempt is one work item taken by the forwarder: it ends in an outcome (MoveDuration is
    // recorded once per outcome), a retry, a dead letter, or the function failing outright.
    const failureRate = new MathExpression({
      expression:
        '100 * (FILL(retries, 0) + FILL(deadLettered, 0) + FILL(errors, 0)) / ' +
        '(FILL(outcomes, 0) + FILL(retries, 0) + FILL(deadLettered, 0) + FILL(errors, 0))',
      usingMetrics: {
        outcomes: emf('MoveDuration', 'SampleCount', 'Outcomes'),
        retries: emf('Retries', 'Sum', 'Retries'),
        deadLettered: emf('DeadLettered', 'Sum', 'Dead-lettered'),
        errors: forwarderFn.metricErrors({ statistic: 'Sum', period: PERIOD }),
      },
      period: PERIOD,
      label: 'Failed attempts (%)',
    });

    // --- Dashboard and alarms ----------------------------------------------------------------
    const facade = new MonitoringFacade(this, 'Monitoring', {
      metricFactoryDefaults: { namespace: METRICS_NAMESPACE, period: PERIOD },
      alarmFactoryDefaults: {
        alarmNamePrefix: prefix,
        actionsEnabled: true,
        action: new SnsAlarmActionStrategy({ onAlarmTopic: this.alarmTopic, onOkTopic: this.alarmTopic }),
        datapointsToAlarm: 1,
        evaluationPeriods: 1,
      },
      dashboardFactory: new DefaultDashboardFactory(this, 'Dashboards', {
        dashboardNamePrefix: prefix,
        createDashboard: true,
        createSummaryDashboard: false,
        createAlarmDashboard: false,
      }),
    });
    const alarm = (name: string, description: string) => ({
      alarmNameOverride: `${prefix}-${name}`,
      alarmDescriptionOverride: description,
    });

    facade.addLargeHeader(`Orthanc forwarder (${prefix})`);
    facade.monitorCustom({
      alarmFriendlyName: 'Throughput',
      humanReadableName: 'Throughput, all sources',
      metricGroups: [
        {
          title: 'Studies and instances moved',
          metrics: [emf('StudiesMoved', 'Sum', 'Studies'), emf('InstancesMoved', 'Sum', 'Instances')],
        },
        {
          title: 'Bytes moved',
          metrics: [emf('BytesMoved', 'Sum', 'Bytes')],
        },
        {
          title: 'Instances rejected by the destination, verification failures',
          metrics: [
            {
              metric: emf('InstancesRejected', 'Sum', 'Instances rejected'),
              alarmFriendlyName: 'InstancesRejected',
              addAlarm: {
                Critical: {
                  ...alarm(
                    ALARM_NAMES.instancesRejected,
                    `The destination refused instances: they stay at their source and are not sent again. ${runbook('InstancesRejected')}`,
                  ),
                  threshold: 0,
                  comparisonOperator: ComparisonOperator.GREATER_THAN_THRESHOLD,
                  treatMissingDataOverride: TreatMissingData.NOT_BREACHING,
                },
              },
            },
            emf('VerificationFailures', 'Sum', 'Verification failures'),
          ],
        },
        {
          title: 'Conflicts: instances held at the source, the destination holds another under their UID',
          metrics: [
            {
              metric: emf('Conflicts', 'Sum', 'Instances held by a conflict'),
              alarmFriendlyName: 'Conflicts',
              addAlarm: {
                Critical: {
                  ...alarm(
                    ALARM_NAMES.conflicts,
                    `The destination holds another instance under the SOPInstanceUID of instances at a source: they stay there until an operator resolves each conflict. ${runbook('Conflicts')}`,
                  ),
                  threshold: 0,
                  comparisonOperator: ComparisonOperator.GREATER_THAN_THRESHOLD,
                  treatMissingDataOverride: TreatMissingData.NOT_BREACHING,
                },
              },
            },
          ],
        },
        {
          title: 'Retries and dead letters',
          metrics: [emf('Retries', 'Sum', 'Retries'), emf('DeadLettered', 'Sum', 'Dead-lettered')],
        },
        {
          title: 'Studies waiting for a destination that refuses the forwarder (credentials, TLS, URL)',
          metrics: config.destinations.map((destination) => ({
            metric: emf('DestinationUnavailable', 'Sum', destination.id, destination.id).with({
              period: DESTINATION_FAULT_PERIOD,
            }),
            alarmFriendlyName: destinationUnavailableAlarmName(destination.id),
            addAlarm: {
              Critical: {
                ...alarm(
                  destinationUnavailableAlarmName(destination.id),
                  `The destination ${destination.id} refuses the forwarder as a whole (credentials, TLS, URL): the studies routed to it wait, none is dead-lettered. ${runbook('DestinationUnavailable')}`,
                ),
                threshold: 0,
                comparisonOperator: ComparisonOperator.GREATER_THAN_THRESHOLD,
                treatMissingDataOverride: TreatMissingData.NOT_BREACHING,
                period: DESTINATION_FAULT_PERIOD,
              },
            },
          })),
        },
        {
          title: 'Work items in flight (being moved, or waiting out a retry delay)',
          metrics: [
            forwarder.queue.metricApproximateNumberOfMessagesNotVisible({
              statistic: 'Maximum',
              period: PERIOD,
              label: 'In flight',
            }),
          ],
        },
        {
          title: 'Forwarder: failed attempts (%)',
          metrics: [
            {
              metric: failureRate,
              alarmFriendlyName: 'ForwarderErrorRate',
              addAlarm: {
                Critical: {
                  ...alarm(
                    ALARM_NAMES.forwarderErrorRate,
                    `More than ${thresholds.forwarderErrorRatePercent}% of the forwarder's attempts failed for ${SUSTAINED_PERIODS * PERIOD.toMinutes()} minutes. ${runbook('ForwarderErrorRate')}`,
                  ),
                  threshold: thresholds.forwarderErrorRatePercent,
                  comparisonOperator: ComparisonOperator.GREATER_THAN_THRESHOLD,
                  treatMissingDataOverride: TreatMissingData.NOT_BREACHING,
                  evaluationPeriods: SUSTAINED_PERIODS,
                  datapointsToAlarm: SUSTAINED_PERIODS,
                },
              },
            },
          ],
        },
      ],
    });

    facade.monitorCustom({
      alarmFriendlyName: 'Sources',
      humanReadableName: 'Sources: lag, reachability, studies waiting to become stable',
      metricGroups: [
        {
          title: 'Cursor lag (changes not read yet)',
          metrics: perSource('CursorLag', 'Maximum'),
        },
        {
          title: 'Source unreachable (1: every poll in the period failed)',
          metrics: config.sources.map((source) => ({
            metric: emf('SourceUnreachable', 'Minimum', source.id, source.id).with({
              period: Duration.minutes(thresholds.sourceUnreachableMinutes),
            }),
            alarmFriendlyName: sourceUnreachableAlarmName(source.id),
            addAlarm: {
              Critical: {
                ...alarm(
                  sourceUnreachableAlarmName(source.id),
                  `Every poll of the source ${source.id} failed for ${thresholds.sourceUnreachableMinutes} minutes. ${runbook('SourceUnreachable')}`,
                ),
                threshold: 1,
                comparisonOperator: ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                // No poll at all is NoSuccessfulPoll's business.
                treatMissingDataOverride: TreatMissingData.NOT_BREACHING,
                period: Duration.minutes(thresholds.sourceUnreachableMinutes),
              },
            },
          })),
        },
        {
          title: 'Studies waiting to become stable',
          metrics: perSource('StudiesWaiting', 'Maximum'),
        },
        {
          title: 'Changes read, studies queued',
          metrics: [emf('ChangesRead', 'Sum', 'Changes read'), emf('StudiesQueued', 'Sum', 'Studies queued')],
        },
        {
          title: 'Lookups a source refused (each left for the sweep)',
          metrics: perSource('LookupFailures', 'Sum'),
        },
      ],
    });

    facade.monitorCustom({
      alarmFriendlyName: 'Progress',
      humanReadableName: 'Progress: what each source still holds, the move rate, the estimated time left',
      metricGroups: [
        { title: 'Bytes left at the source', metrics: perSource('BytesLeft', 'Minimum') },
        { title: 'Instances left at the source', metrics: perSource('InstancesLeft', 'Minimum') },
        {
          title: 'Move rate inside the transfer windows (bytes/s, over the last hour or day)',
          metrics: perSource('MoveRate', 'Average'),
        },
        {
          title: 'Estimated time until the source holds nothing more (s)',
          metrics: perSource('SecondsToFinish', 'Minimum'),
        },
      ],
    });

    facade.monitorSqsQueueWithDlq({
      queue: forwarder.queue,
      deadLetterQueue: forwarder.deadLetterQueue,
      alarmFriendlyName: 'WorkQueue',
      humanReadableName: 'Work queue and dead-letter queue',
      addQueueMaxMessageAgeAlarm: {
        Critical: {
          ...alarm(
            ALARM_NAMES.oldestMessageTooOld,
            `A work item has waited more than ${thresholds.oldestMessageAgeMinutes} minutes on the queue. ${runbook('OldestMessageTooOld')}`,
          ),
          maxAgeInSeconds: thresholds.oldestMessageAgeMinutes * 60,
        },
      },
      addDeadLetterQueueMaxSizeAlarm: {
        Critical: {
          ...alarm(
            ALARM_NAMES.deadLetterQueueNotEmpty,
            `Work items were dead-lettered: their studies stay at their sources until redriven (or queued again by the sweep). ${runbook('DeadLetterQueueNotEmpty')}`,
          ),
          maxMessageCount: 0,
        },
      },
    });

    // No age alarm: the backlog waits behind new studies, and outside the transfer windows, by design.
    facade.monitorSqsQueue({
      queue: forwarder.backlogQueue,
      alarmFriendlyName: 'BacklogQueue',
      humanReadableName: 'Backlog queue (studies found by the sweep or the first read of a source)',
    });

    facade.monitorLambdaFunction({
      lambdaFunction: poller,
      isIterator: false,
      alarmFriendlyName: 'Poller',
      humanReadableName: 'Poller function',
      addThrottlesCountAlarm: {
        Critical: {
          ...alarm(
            ALARM_NAMES.pollerThrottles,
            `Ticks of the schedule found the poller still running (its reserved concurrency is 1) in each of ${SUSTAINED_PERIODS} periods of 5 minutes on end: polls take longer than pollScheduleMinutes. ${runbook('PollerThrottles')}`,
          ),
          maxErrorCount: 0,
          evaluationPeriods: SUSTAINED_PERIODS,
          datapointsToAlarm: SUSTAINED_PERIODS,
        },
      },
      addFaultCountAlarm: {
        Critical: {
          ...alarm(
            ALARM_NAMES.pollerErrors,
            `The poller function failed (it does not fail for a source that is down: that is SourceUnreachable). ${runbook('PollerErrors')}`,
          ),
          maxErrorCount: 0,
        },
      },
    });
    facade.monitorCustom({
      alarmFriendlyName: 'Polls',
      humanReadableName: 'Poller: successful invocations',
      metricGroups: [
        {
          title: `Successful poller invocations per ${thresholds.noPollMinutes} minutes`,
          metrics: [
            {
              metric: successfulPolls,
              alarmFriendlyName: 'NoSuccessfulPoll',
              addAlarm: {
                Critical: {
                  ...alarm(
                    ALARM_NAMES.noSuccessfulPoll,
                    `No invocation of the poller succeeded for ${thresholds.noPollMinutes} minutes: no change feed is read. ${runbook('NoSuccessfulPoll')}`,
                  ),
                  threshold: 1,
                  comparisonOperator: ComparisonOperator.LESS_THAN_THRESHOLD,
                  treatMissingDataOverride: TreatMissingData.BREACHING,
                  period: noPollPeriod,
                },
              },
            },
          ],
        },
      ],
    });
    facade.monitorLambdaFunction({
      lambdaFunction: forwarderFn,
      isIterator: false,
      alarmFriendlyName: 'Forwarder',
      humanReadableName: 'Forwarder function',
      addThrottlesCountAlarm: {
        Critical: {
          ...alarm(
            ALARM_NAMES.forwarderThrottles,
            `Lambda throttled the forwarder: the account's concurrency ran out, and a throttled work item comes back later with its receive count raised. ${runbook('ForwarderThrottles')}`,
          ),
          maxErrorCount: 0,
        },
      },
      addLatencyP99Alarm: {
        Critical: {
          ...alarm(
            ALARM_NAMES.forwarderDurationNearTimeout,
            `The forwarder's p99 duration stayed above ${NEAR_TIMEOUT_PERCENT}% of its timeout for ${SUSTAINED_PERIODS * PERIOD.toMinutes()} minutes: moves keep needing more than one invocation, or a server is slow. ${runbook('ForwarderDurationNearTimeout')}`,
          ),
          maxLatencyPercentageOfTimeout: NEAR_TIMEOUT_PERCENT,
          evaluationPeriods: SUSTAINED_PERIODS,
          datapointsToAlarm: SUSTAINED_PERIODS,
        },
      },
    });
    facade.monitorDynamoTable({
      table: forwarder.table,
      alarmFriendlyName: 'StateTable',
      humanReadableName: 'State table',
    });

    const dashboard = facade.createdDashboard();
    if (dashboard === undefined) throw new Error('cdk-monitoring-constructs created no dashboard');
    this.dashboard = dashboard;
    this.alarms = new Map(
      facade.createdAlarms().map((created) => [created.alarmName.replace(`${prefix}-`, ''), created.alarm]),
    );
  }
}
