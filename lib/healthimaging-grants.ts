/**
 * What the forwarder's role may do at an AWS HealthImaging destination: store (STOW-RS), search
 * (QIDO-RS) and read metadata and instances (WADO-RS, for identity and checksum verification),
 * on the one data store each destination's URL names and nothing else.
 */
import { ArnFormat, Stack } from 'aws-cdk-lib';
import { PolicyStatement } from 'aws-cdk-lib/aws-iam';
import type { IFunction } from 'aws-cdk-lib/aws-lambda';
import { ConfigError, destinationServers, type ForwarderConfig } from '../lambdas/core/config.ts';

/** The IAM actions of the DICOMweb operations the forwarder makes (Service Authorization Reference). */
export const HEALTHIMAGING_ACTIONS = [
  'medical-imaging:StoreDICOM',
  'medical-imaging:StoreDICOMStudy',
  'medical-imaging:SearchDICOMStudies',
  'medical-imaging:SearchDICOMSeries',
  'medical-imaging:SearchDICOMInstances',
  'medical-imaging:GetDICOMSeriesMetadata',
  'medical-imaging:GetDICOMInstanceMetadata',
  'medical-imaging:GetDICOMInstance',
] as const;

/** https://dicom-medical-imaging.{region}.amazonaws.com/datastore/{datastoreId} */
const DATASTORE_PATH = /^\/datastore\/([0-9a-z]{32})$/;
const REGION_HOST = /^dicom-medical-imaging\.([a-z0-9-]+)\.amazonaws\.com$/;

/** The data store's region and ID, from its DICOMweb URL (the region may be given in `auth.region`). */
const datastoreOf = (url: string, region: string | undefined, field: string) => {
  const { hostname, pathname } = new URL(url);
  const id = DATASTORE_PATH.exec(pathname)?.[1];
  const at = region ?? REGION_HOST.exec(hostname)?.[1];
  if (id === undefined || at === undefined) {
    throw new ConfigError(
      `invalid configuration for AWS:\n  ${field}.url: a HealthImaging destination's URL is https://dicom-medical-imaging.<region>.amazonaws.com/datastore/<datastoreId> (or give auth.region)`,
    );
  }
  return { id, region: at };
};

/** Grants `fn` the DICOMweb actions on the data store of every HealthImaging destination (and alternate). */
export const grantHealthImaging = (fn: IFunction, config: Pick<ForwarderConfig, 'destinations'>): void => {
  const stack = Stack.of(fn);
  const arns = new Set(
    destinationServers(config).flatMap(({ field, server }) => {
      if (server.kind !== 'healthimaging') return [];
      const region = server.auth?.kind === 'aws-sigv4' ? server.auth.region : undefined;
      const datastore = datastoreOf(server.url, region, field);
      return [
        stack.formatArn({
          service: 'medical-imaging',
          region: datastore.region,
          resource: 'datastore',
          resourceName: datastore.id,
          arnFormat: ArnFormat.SLASH_RESOURCE_NAME,
        }),
      ];
    }),
  );
  if (arns.size === 0) return;
  fn.addToRolePolicy(
    new PolicyStatement({
      sid: 'HealthImagingDicomWeb',
      actions: [...HEALTHIMAGING_ACTIONS],
      resources: [...arns],
    }),
  );
};
