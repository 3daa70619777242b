/**
 * Structured JSON logging through Powertools Logger. Attributes are Orthanc IDs, counts, bytes,
 * durations and status codes only: nothing here ever receives a DICOM tag value.
 */
import { Logger } from '@aws-lambda-powertools/logger';

export type LogAttributes = Readonly<Record<string, string | number | boolean | undefined>>;

/** The logging the core needs; Powertools' Logger satisfies it, and tests can capture it. */
export interface Log {
  debug(message: string, ...attributes: LogAttributes[]): void;
  info(message: string, ...attributes: LogAttributes[]): void;
  warn(message: string, ...attributes: LogAttributes[]): void;
  error(message: string, ...attributes: LogAttributes[]): void;
}

export type LogLevel = 'DEBUG' | 'INFO' | 'WARN' | 'ERROR' | 'SILENT';

export const createLog = (options: { level?: LogLevel; mode?: 'local' | 'aws' } = {}): Logger =>
  new Logger({
    serviceName: 'orthanc-forwarder',
    logLevel: options.level ?? 'INFO',
    persistentKeys: { mode: options.mode ?? 'local' },
  });
