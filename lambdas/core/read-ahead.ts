/**
 * Asks the source for a STOW-RS batch's instance files ahead of the one being sent. One request
 * at a time pays a round trip to the source before each file's first byte: on loopback nothing,
 * across a VPN tens of milliseconds, most of a small instance's time on the link
 * (docs/performance.md, "Over a link"). Up to `instances` files of at most `bytes` each and
 * `bytes` together are asked for ahead of the part being sent, pipelined on the batch's own
 * connection (its lane), and read in order as their turn comes: until then their bytes wait in
 * the network and the socket's buffers, not in this process (files read ahead into buffers cost
 * its garbage collector half as much CPU again, measured). A larger file is asked for in its
 * turn, as without read-ahead; and every file is, where the source answers at once
 * (`worthReadingAhead`).
 */
import type { Readable } from 'node:stream';
import type { StowPart } from './stow-client.ts';

export interface ReadAheadLimits {
  /** Instances asked for beyond the one being sent; 0 asks for each in its turn. */
  readonly instances: number;
  /** Bytes those may come to (their declared sizes), and the largest file asked for ahead. */
  readonly bytes: number;
}

/**
 * A read-ahead costs this process some CPU (pipelined requests on a connection of their own:
 * about a tenth more per GB, measured on loopback) and gains nothing where the source answers at
 * once, on the LAN or this machine; across a VPN a round trip is several milliseconds.
 */
export const READ_AHEAD_WHEN_SLOWER_THAN_MS = 3;

/**
 * Whether to ask ahead at a source whose quickest recent answer (Endpoint.answers) took this
 * long: about its round trip. Yes before any answer.
 */
export const worthReadingAhead = (quickestAnswerMs: number | undefined): boolean =>
  quickestAnswerMs === undefined || quickestAnswerMs >= READ_AHEAD_WHEN_SLOWER_THAN_MS;

/** The configured read-ahead, or none where the source answers at once (worthReadingAhead). */
export const readAheadLimits = (
  stow: { readonly readAheadInstances: number; readonly readAheadBytes: number },
  quickestAnswerMs: number | undefined,
): ReadAheadLimits => ({
  instances: worthReadingAhead(quickestAnswerMs) ? stow.readAheadInstances : 0,
  bytes: stow.readAheadBytes,
});

export interface ReadAheadItem {
  readonly sopInstanceUid: string;
  /** The size the source declares: the part's length, and what it counts against `bytes`. */
  readonly fileSize: number;
}

/**
 * Opens an item's file: `ahead` on the batch's lane, its answer read only once the parts before
 * it are; resolves undefined when the item no longer exists at the source.
 */
export type OpenItem<T> = (item: T, ahead: boolean) => Promise<Readable | undefined>;

const AGAIN: unique symbol = Symbol('ask again');

/** An answer left unread when its batch ends fails with it: that failure concerns nobody. */
const ignore = () => undefined;

/**
 * The items as STOW parts whose files are asked for ahead. Parts are opened in order, each once,
 * by the multipart body; a part opened again (a batch split and sent again) is asked for afresh.
 * Answers still ahead when the batch ends are the caller's to drop (by destroying its lane).
 */
export const readAhead = <T extends ReadAheadItem>(
  items: readonly T[],
  open: OpenItem<T>,
  limits: ReadAheadLimits,
): StowPart[] => {
  const reads = new Map<number, Promise<Readable | undefined>>();
  /** The next item to ask for ahead, and the last one opened. */
  let next = 0;
  let opened = -1;
  let heldBytes = 0;

  const fill = () => {
    next = Math.max(next, opened + 1);
    for (; next < items.length && next - opened <= limits.instances; next++) {
      const { fileSize } = items[next] as T;
      // A large file waits for its turn, and so does everything after it: the window is in order.
      if (fileSize > limits.bytes || (heldBytes > 0 && heldBytes + fileSize > limits.bytes)) return;
      heldBytes += fileSize;
      const read = open(items[next] as T, true).then((stream) => stream?.on('error', ignore));
      // Its failure is dealt with when its part is opened; a batch that ends first never asks.
      read.catch(ignore);
      reads.set(next, read);
    }
  };

  // The first requests go now, while the request to the destination connects.
  fill();
  return items.map((item, index) => ({
    sopInstanceUid: item.sopInstanceUid,
    size: item.fileSize,
    open: async () => {
      opened = Math.max(opened, index);
      const read = reads.get(index);
      reads.delete(index);
      if (read === undefined) {
        const stream = open(item, false);
        fill();
        return stream;
      }
      try {
        // A pipelined request is the first to fail when the server closes the connection it
        // was sent on (Orthanc with KeepAlive off): ask again, on its own, before giving up.
        const stream = await read.catch((): typeof AGAIN => AGAIN);
        return stream === AGAIN ? await open(item, false) : stream;
      } finally {
        heldBytes -= item.fileSize;
        fill();
      }
    },
  }));
};
