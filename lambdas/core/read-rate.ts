/**
 * A source's read rate cap (`maxReadMBps`): one token bucket for every instance file read from the
 * source by the moves of one process, so that a migration leaves the hospital's Orthanc and its
 * network the rest. Each stream passes its chunks as the bucket allows, holding at most the one
 * chunk it waits with: nothing is buffered beyond the streams' own high-water marks.
 */
import { pipeline, type Readable, Transform } from 'node:stream';

/** Bytes a bucket may pass at once after a pause: a tenth of a second's worth, so that an average holds from the start. */
const BURST_SECONDS = 0.1;
/** MB/s counts in decimal megabytes, as network links are rated. */
const MEGABYTE = 1_000_000;

export class ReadRate {
  readonly bytesPerSecond: number;
  readonly #now: () => number;
  /** When the bytes passed so far are paid for, at the rate (the generic cell rate algorithm's TAT). */
  #paidUntil = Number.NEGATIVE_INFINITY;

  constructor(megabytesPerSecond: number, now: () => number = performance.now.bind(performance)) {
    this.bytesPerSecond = megabytesPerSecond * MEGABYTE;
    this.#now = now;
  }

  /** Takes `bytes` from the bucket; returns how many ms the caller must wait before passing them. */
  take(bytes: number): number {
    const now = this.#now();
    // Time not used while idle is not saved up beyond the burst.
    this.#paidUntil = Math.max(this.#paidUntil, now) + (bytes / this.bytesPerSecond) * 1000;
    return Math.max(0, this.#paidUntil - now - BURST_SECONDS * 1000);
  }

  /** The stream, read no faster than the bucket allows; an error or an abort of either side ends both. */
  throttle(stream: Readable): Readable {
    const limited = new Transform({
      transform: (chunk: Buffer, _encoding, done) => {
        const wait = this.take(chunk.length);
        if (wait === 0) done(null, chunk);
        else setTimeout(() => done(null, chunk), wait);
      },
    });
    return pipeline(stream, limited, () => {
      // pipeline destroys both on an error; the reader of `limited` sees it.
    });
  }
}
