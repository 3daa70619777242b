/**
 * The read-ahead of a STOW batch's files (lambdas/core/read-ahead.ts), on files held in memory:
 * which requests go when, how many are ahead and how many bytes they come to, what happens to a
 * large file, a failed request, a part opened twice; and when it is worth it at all. Its effect over a link with a real Orthanc is
 * in test/read-ahead-link.test.ts; its speed, in `npm run bench -- --link` (docs/performance.md).
 */
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { AnswerTimes } from '../lambdas/core/http.ts';
import {
  READ_AHEAD_WHEN_SLOWER_THAN_MS,
  type ReadAheadItem,
  readAhead,
  worthReadingAhead,
} from '../lambdas/core/read-ahead.ts';
import type { StowPart } from '../lambdas/core/stow-client.ts';

interface Item extends ReadAheadItem {
  readonly index: number;
}

const itemsOf = (sizes: readonly number[]): Item[] =>
  sizes.map((fileSize, index) => ({ index, sopInstanceUid: `1.2.3.${index}`, fileSize }));

const fileOf = (item: Item) => Buffer.alloc(item.fileSize, item.index % 251);

/** A source in memory that records each read: which item, whether ahead, and when it ended. */
const memorySource = (options: { fail?: ReadonlySet<number>; gone?: ReadonlySet<number> } = {}) => {
  const reads: { index: number; ahead: boolean }[] = [];
  /** Reads ahead started and not yet handed to their part, and their bytes, at their highest. */
  const held = new Set<Item>();
  const peak = { reads: 0, bytes: 0 };
  const open = async (item: Item, ahead: boolean): Promise<Readable | undefined> => {
    reads.push({ index: item.index, ahead });
    if (ahead) {
      held.add(item);
      peak.reads = Math.max(peak.reads, held.size);
      peak.bytes = Math.max(
        peak.bytes,
        [...held].reduce((sum, each) => sum + each.fileSize, 0),
      );
    }
    await new Promise((resolve) => setImmediate(resolve));
    if (ahead && options.fail?.has(item.index)) throw new Error(`connection closed under ${item.index}`);
    if (options.gone?.has(item.index)) return undefined;
    return Readable.from([fileOf(item)]);
  };
  const handedOver = (item: Item) => held.delete(item);
  return { reads, peak, open, handedOver };
};

const readPart = async (part: StowPart): Promise<Buffer | undefined> => {
  const stream = await part.open();
  if (stream === undefined) return undefined;
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
};

/** Opens the parts in order as the multipart body does, each once; the files or undefined. */
const sendAll = async (
  parts: readonly StowPart[],
  items: readonly Item[],
  handedOver: (item: Item) => void,
) => {
  const files: (Buffer | undefined)[] = [];
  for (const [index, part] of parts.entries()) {
    files.push(await readPart(part));
    handedOver(items[index] as Item);
  }
  return files;
};

describe('read-ahead', () => {
  it('hands over every file in order, having read at most `instances` ahead of the part being sent', async () => {
    const items = itemsOf(Array.from({ length: 40 }, () => 1000));
    const source = memorySource();
    const parts = readAhead(items, source.open, { instances: 8, bytes: 1_000_000 });
    // The first reads start at once, before the request asks for its first part.
    await new Promise((resolve) => setImmediate(resolve));
    expect(source.reads.map((read) => read.index)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);

    const files = await sendAll(parts, items, source.handedOver);
    expect(files).toEqual(items.map(fileOf));
    expect(source.reads).toEqual(items.map((item) => ({ index: item.index, ahead: true })));
    // Eight ahead of the part being sent, and that part's own read.
    expect(source.peak.reads).toBe(9);
  });

  it('holds at most `bytes` ahead, and streams a file larger than that in its turn, reading nothing past it before', async () => {
    const items = itemsOf([300, 300, 300, 300, 5000, 300, 300]);
    const source = memorySource();
    const parts = readAhead(items, source.open, { instances: 16, bytes: 1000 });
    await new Promise((resolve) => setImmediate(resolve));
    // 3 × 300 fit in 1000 bytes, a fourth does not.
    expect(source.reads.map((read) => read.index)).toEqual([0, 1, 2]);

    const files = await sendAll(parts, items, source.handedOver);
    expect(files).toEqual(items.map(fileOf));
    expect(source.peak.bytes).toBeLessThanOrEqual(1000 + 300);
    expect(source.reads.find((read) => read.index === 4)).toEqual({ index: 4, ahead: false });
    const order = source.reads.map((read) => read.index);
    expect(order.indexOf(5)).toBeGreaterThan(order.indexOf(4));
  });

  it('reads a file again, on its own, when its read ahead failed; a file gone at the source stays gone', async () => {
    const items = itemsOf([100, 100, 100, 100]);
    const source = memorySource({ fail: new Set([1]), gone: new Set([2]) });
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    try {
      const parts = readAhead(items, source.open, { instances: 4, bytes: 10_000 });
      // The failure happens before anybody asks for part 1: it must not surface as unhandled.
      await new Promise((resolve) => setTimeout(resolve, 20));
      const files = await sendAll(parts, items, source.handedOver);
      expect(files).toEqual([
        fileOf(items[0] as Item),
        fileOf(items[1] as Item),
        undefined,
        fileOf(items[3] as Item),
      ]);
      expect(source.reads.filter((read) => read.index === 1)).toEqual([
        { index: 1, ahead: true },
        { index: 1, ahead: false },
      ]);
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
    expect(unhandled).toEqual([]);
  });

  it('fails the part whose file cannot be read at all, when that part is opened', async () => {
    const items = itemsOf([100, 100]);
    const open = async (item: Item, ahead: boolean) => {
      if (item.index === 1) throw new Error(ahead ? 'ahead failed' : 'read in turn failed');
      return Readable.from([fileOf(item)]);
    };
    const parts = readAhead(items, open, { instances: 4, bytes: 10_000 });
    expect(await readPart(parts[0] as StowPart)).toEqual(fileOf(items[0] as Item));
    await expect((parts[1] as StowPart).open()).rejects.toThrow('read in turn failed');
  });

  it('reads afresh, in its turn, a part opened a second time (a batch split and sent again)', async () => {
    const items = itemsOf([100, 100, 100]);
    const source = memorySource();
    const parts = readAhead(items, source.open, { instances: 4, bytes: 10_000 });
    await sendAll(parts, items, source.handedOver);
    expect(await readPart(parts[1] as StowPart)).toEqual(fileOf(items[1] as Item));
    expect(source.reads.filter((read) => read.index === 1)).toEqual([
      { index: 1, ahead: true },
      { index: 1, ahead: false },
    ]);
  });

  it('is worth it only where the source is slow to answer: its quickest recent answer, about the round trip', () => {
    const answers = new AnswerTimes();
    // Before any answer: nothing says the source is near.
    expect(worthReadingAhead(answers.quickest())).toBe(true);
    // On loopback or the LAN: answers in well under a millisecond, a slow one now and then.
    for (const ms of [0.4, 0.3, 12, 0.5]) answers.record(ms);
    expect(answers.quickest()).toBe(0.3);
    expect(worthReadingAhead(answers.quickest())).toBe(false);
    // Across a 20 ms link (the source moved, or the near answers are older than the last 16).
    for (let i = 0; i < AnswerTimes.KEPT; i++) answers.record(20 + i);
    expect(answers.quickest()).toBe(20);
    expect(worthReadingAhead(answers.quickest())).toBe(true);
    expect(worthReadingAhead(READ_AHEAD_WHEN_SLOWER_THAN_MS - 0.1)).toBe(false);
  });

  it('with `instances: 0`, reads each file in its turn and nothing before', async () => {
    const items = itemsOf([100, 100, 100]);
    const source = memorySource();
    const parts = readAhead(items, source.open, { instances: 0, bytes: 10_000 });
    await new Promise((resolve) => setImmediate(resolve));
    expect(source.reads).toEqual([]);
    expect(await sendAll(parts, items, source.handedOver)).toEqual(items.map(fileOf));
    expect(source.reads).toEqual(items.map((item) => ({ index: item.index, ahead: false })));
  });
});
