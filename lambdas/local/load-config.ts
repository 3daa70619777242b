/** Reads the local mode's JSON configuration file. */
import { readFileSync } from 'node:fs';
import { ConfigError, type ForwarderConfig, parseConfig } from '../core/config.ts';

export const loadConfigFile = (path: string): ForwarderConfig => {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    throw new ConfigError(
      `cannot read the configuration file ${path} (${(error as NodeJS.ErrnoException).code})`,
    );
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (error) {
    throw new ConfigError(`${path} is not valid JSON: ${(error as Error).message}`);
  }
  return parseConfig(raw, path);
};

/** The state file that goes with a configuration file unless one is named. */
export const defaultStatePath = (configPath: string): string =>
  configPath.replace(/(\.json)?$/, '.state.sqlite');
