import { afterAll, describe, expect, it } from 'vitest';
import { OrthancFleet } from '../testbed/orthanc.ts';

describe('Orthanc launcher', () => {
  const fleet = new OrthancFleet();
  afterAll(() => fleet.destroyAll());

  it('starts servers with authentication and the DICOMweb plugin, and restarts one on the same storage', async () => {
    const server = await fleet.start({ name: 'launcher', stableAge: 1 });
    const system = await server.rest<{ Name: string; Version: string }>('GET', '/system');
    expect(system.Name).toBe('launcher');
    const anonymous = await fetch(`${server.url}/system`);
    expect(anonymous.status).toBe(401);
    const plugins = await server.rest<string[]>('GET', '/plugins');
    expect(plugins).toContain('dicom-web');
    const pid = server.pid;
    await server.restart();
    expect(server.pid).not.toBe(pid);
    expect((await server.rest<{ Name: string }>('GET', '/system')).Name).toBe('launcher');
  });
});
