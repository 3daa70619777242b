/** The deployable stack: the pipeline construct, named and placed by the configuration. */
import { Stack, type StackProps } from 'aws-cdk-lib';
import type { Construct } from 'constructs';
import type { ForwarderConfig } from '../lambdas/core/config.ts';
import { OrthancForwarder, type OrthancForwarderProps } from './orthanc-forwarder.ts';

export interface ForwarderStackProps extends StackProps {
  readonly config: ForwarderConfig;
  readonly logLevel?: OrthancForwarderProps['logLevel'];
  /** For tests only: see OrthancForwarderProps.entries. */
  readonly entries?: OrthancForwarderProps['entries'];
}

export class ForwarderStack extends Stack {
  readonly forwarder: OrthancForwarder;

  constructor(scope: Construct, id: string, props: ForwarderStackProps) {
    const { config, logLevel, entries, ...stackProps } = props;
    super(scope, id, {
      description:
        'Orthanc forwarder: moves DICOM studies from on-premises Orthanc servers to a DICOMweb destination',
      ...stackProps,
    });
    this.forwarder = new OrthancForwarder(this, 'Forwarder', {
      config,
      ...(logLevel === undefined ? {} : { logLevel }),
      ...(entries === undefined ? {} : { entries }),
    });
  }
}
