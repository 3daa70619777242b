/** The deployable stack: the pipeline construct, named, placed and tagged by the configuration. */
import { CfnOutput, Fn, Stack, type StackProps, Tags } from 'aws-cdk-lib';
import type { Construct } from 'constructs';
import type { ForwarderConfig } from '../lambdas/core/config.ts';
import { ForwarderMonitoring } from './forwarder-monitoring.ts';
import { deployableConfig, OrthancForwarder, type OrthancForwarderProps } from './orthanc-forwarder.ts';

export interface ForwarderStackProps extends StackProps {
  readonly config: ForwarderConfig;
  /** For tests only: see OrthancForwarderProps.entries. */
  readonly entries?: OrthancForwarderProps['entries'];
}

export class ForwarderStack extends Stack {
  readonly forwarder: OrthancForwarder;
  /** Dashboard, alarms and their SNS topic. */
  readonly monitoring: ForwarderMonitoring;

  constructor(scope: Construct, id: string, props: ForwarderStackProps) {
    const { config, entries, ...stackProps } = props;
    super(scope, id, {
      description:
        'Orthanc forwarder: moves DICOM studies from on-premises Orthanc servers to a DICOMweb destination',
      ...stackProps,
    });
    this.forwarder = new OrthancForwarder(this, 'Forwarder', {
      config,
      ...(entries === undefined ? {} : { entries }),
    });
    const deployable = deployableConfig(config);
    this.monitoring = new ForwarderMonitoring(this, 'Monitoring', {
      forwarder: this.forwarder,
      config: deployable,
    });
    for (const [key, value] of Object.entries(deployable.aws.tags)) Tags.of(this).add(key, value);

    // What the CLI's AWS mode needs (docs/operations.md): copy CliOptions, or export the three
    // variables the Lambdas themselves read.
    const { queue, backlogQueue, deadLetterQueue, table } = this.forwarder;
    new CfnOutput(this, 'QueueUrl', { description: 'Work queue (QUEUE_URL)', value: queue.queueUrl });
    new CfnOutput(this, 'BacklogQueueUrl', {
      description: 'Backlog queue (BACKLOG_QUEUE_URL)',
      value: backlogQueue.queueUrl,
    });
    new CfnOutput(this, 'DeadLetterQueueUrl', {
      description: 'Dead-letter queue (DLQ_URL)',
      value: deadLetterQueue.queueUrl,
    });
    new CfnOutput(this, 'StateTableName', {
      description: 'State table (STATE_TABLE)',
      value: table.tableName,
    });
    new CfnOutput(this, 'AlarmTopicArn', {
      description: 'SNS topic of the alarms',
      value: this.monitoring.alarmTopic.topicArn,
    });
    new CfnOutput(this, 'DashboardName', {
      description: 'CloudWatch dashboard',
      value: this.monitoring.dashboard.dashboardName,
    });
    // What the first checks and a pause need (docs/deploy.md): the generated names.
    const { pollerFunction, forwarderFunction, pollerLogGroup, forwarderLogGroup } = this.forwarder;
    new CfnOutput(this, 'PollerFunctionName', { value: pollerFunction.functionName });
    new CfnOutput(this, 'ForwarderFunctionName', { value: forwarderFunction.functionName });
    new CfnOutput(this, 'PollerLogGroupName', { value: pollerLogGroup.logGroupName });
    new CfnOutput(this, 'ForwarderLogGroupName', { value: forwarderLogGroup.logGroupName });
    new CfnOutput(this, 'CliOptions', {
      description: 'Options for `orthanc-forwarder status|dlq list|redrive --aws --config <file>`',
      value: Fn.join(' ', [
        '--region',
        this.region,
        '--queue-url',
        queue.queueUrl,
        '--backlog-queue-url',
        backlogQueue.queueUrl,
        '--dlq-url',
        deadLetterQueue.queueUrl,
        '--table',
        table.tableName,
      ]),
    });
  }
}
