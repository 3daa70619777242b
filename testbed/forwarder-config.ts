/** A forwarder configuration for servers the test bed started: what the demo and the tests run. */
import type { OrthancServer } from './orthanc.ts';

export interface SourceEntry {
  readonly id: string;
  readonly server: OrthancServer;
}

/** The raw (unvalidated) configuration: sources and destination with their credentials, plus `extra`. */
export const forwarderConfigFor = (
  sources: readonly SourceEntry[],
  destination: OrthancServer,
  extra: Readonly<Record<string, unknown>> = {},
): Record<string, unknown> => ({
  sources: sources.map(({ id, server }) => ({
    id,
    url: server.url,
    username: server.username,
    password: server.password,
  })),
  destination: {
    url: destination.dicomWebUrl,
    username: destination.username,
    password: destination.password,
  },
  ...extra,
});

export const instanceCount = async (server: OrthancServer): Promise<number> =>
  (await server.rest<{ CountInstances: number }>('GET', '/statistics')).CountInstances;
