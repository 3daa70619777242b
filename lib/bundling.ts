/**
 * How our Node code is bundled into ES modules, the same for the Lambda functions
 * (lib/orthanc-forwarder.ts, through CDK's esbuild) and the CLI (scripts/bundle.ts): the
 * runtime both run on, and the banner that gives the bundle a `require`, which the CommonJS
 * dependencies inside an ES module bundle still call for Node's built-ins.
 */
export const ESM_BUNDLE = {
  target: 'node24',
  mainFields: ['module', 'main'],
  requireBanner:
    "import { createRequire as __bundleCreateRequire } from 'node:module'; const require = __bundleCreateRequire(import.meta.url);",
} as const;
