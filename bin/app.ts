/**
 * The CDK app: `npm run synth`, or `npx cdk synth|diff|deploy -c configFile=my-config.json`.
 * The configuration file is the one local mode reads, with its `aws` section.
 */
import { App } from 'aws-cdk-lib';
import { ConfigError } from '../lambdas/core/config.ts';
import { addForwarder } from '../lib/forwarder-app.ts';

const app = new App();
try {
  addForwarder(app);
} catch (error) {
  if (!(error instanceof ConfigError)) throw error;
  process.stderr.write(`${error.message}\n`);
  process.exit(1);
}
app.synth();
