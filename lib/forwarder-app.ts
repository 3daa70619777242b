/**
 * What the CDK app does, apart from `new App()` and `synth()`: load and validate the
 * configuration, add the stack, and check every synth with cdk-nag's AwsSolutions and HIPAA
 * Security rules (an unacknowledged finding fails the synth).
 */
import { type App, Validations } from 'aws-cdk-lib';
import { AwsSolutionsChecks, HIPAASecurityChecks } from 'cdk-nag';
import { ConfigError, type ForwarderConfig } from '../lambdas/core/config.ts';
import { loadConfigFile } from '../lambdas/local/load-config.ts';
import { ForwarderStack, type ForwarderStackProps } from './forwarder-stack.ts';
import { deployableConfig } from './orthanc-forwarder.ts';

/** The CDK context key naming the configuration file (cdk.json gives the default). */
export const CONFIG_FILE_CONTEXT = 'configFile';

export interface ForwarderAppOptions {
  /** The parsed configuration; by default the file the `configFile` context key names. */
  readonly config?: ForwarderConfig;
  /** For tests only: see OrthancForwarderProps.entries. */
  readonly entries?: ForwarderStackProps['entries'];
}

export const configFromContext = (app: App): ForwarderConfig => {
  const file: unknown = app.node.tryGetContext(CONFIG_FILE_CONTEXT);
  if (typeof file !== 'string' || file === '') {
    throw new ConfigError(
      `no configuration file: set the CDK context key ${CONFIG_FILE_CONTEXT} (cdk.json, or cdk synth -c ${CONFIG_FILE_CONTEXT}=path/to/config.json)`,
    );
  }
  return loadConfigFile(file);
};

export const addForwarder = (app: App, options: ForwarderAppOptions = {}): ForwarderStack => {
  const config = deployableConfig(options.config ?? configFromContext(app));
  const { account, region, stackName } = config.aws;
  const stack = new ForwarderStack(app, stackName, {
    config,
    ...(account !== undefined || region !== undefined ? { env: { account, region } } : {}),
    ...(options.entries === undefined ? {} : { entries: options.entries }),
  });
  Validations.of(app).addPlugins(new AwsSolutionsChecks(app), new HIPAASecurityChecks(app));
  return stack;
};
