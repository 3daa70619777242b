/**
 * A server of the test bed on a free port of 127.0.0.1, the port the kernel gave it: for the
 * launcher's spare ports, the link emulator, and the tests' fronts and proxies alike.
 */
import { once } from 'node:events';
import type { Server } from 'node:net';

export const listenOnLoopback = async (server: Server): Promise<number> => {
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('no port from the kernel');
  return address.port;
};
