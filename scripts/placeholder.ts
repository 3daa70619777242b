/**
 * Stands in for an npm script whose issue has not landed yet: it says what is missing and
 * fails, so that nobody mistakes it for a working command.
 */
const missing: Record<string, string> = {
  bench: 'the side-by-side benchmark (issue "Fast and lean")',
};
const name = process.argv[2] ?? '';
process.stderr.write(`npm run ${name}: not implemented yet: ${missing[name] ?? 'unknown script'}\n`);
process.exit(1);
