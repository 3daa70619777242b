/**
 * Fault injection against real Orthancs: network faults made by a TCP proxy between the forwarder
 * and each server, the forwarder SIGKILLed at moments seen on the wire or at steps of its own, and
 * Orthanc processes SIGKILLed, SIGSTOPped and restarted mid-move. Every scenario then recovers and
 * reruns, and checks that nothing was lost: each instance is at its source or, byte for byte, at
 * the destination, none at neither, none twice (test/support/fault-scenario.ts does the work).
 *
 * The faults already covered by local-faults.test.ts are not repeated here: the destination
 * stopped at 'sent', the forwarder SIGKILLed at 'sent', 'verified' and 'deleted', a source stopped
 * or paused for good, resume from the cursor, a restart before stable, a source database reset.
 */
import { appendFileSync } from 'node:fs';
import { createServer, connect as netConnect, type Server, type Socket } from 'node:net';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { generateStudies, withoutElements } from '../testbed/dicom-generator.ts';
import { OrthancFleet } from '../testbed/orthanc.ts';
import { uploadToOrthanc } from '../testbed/upload.ts';
import {
  describeReport,
  type Fault,
  REQUESTS,
  runScenario,
  type ScenarioReport,
  type ScenarioSpec,
} from './support/fault-scenario.ts';
import { shape } from './support/fixtures.ts';
import { checkNothingLost, findInstance } from './support/invariant.ts';
import { killChildren } from './support/processes.ts';
import { TcpProxy } from './support/tcp-proxy.ts';

// ---------------------------------------------------------------------------------------------
// The proxy itself, against a plain echo server

interface Echo {
  readonly port: number;
  /** What the server received, per connection. */
  readonly received: Buffer[][];
  close(): Promise<void>;
}

const startEcho = async (): Promise<Echo> => {
  const received: Buffer[][] = [];
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    const chunks: Buffer[] = [];
    received.push(chunks);
    sockets.add(socket);
    socket.on('error', () => undefined);
    socket.on('data', (chunk: Buffer) => {
      chunks.push(chunk);
      socket.write(chunk);
    });
    socket.on('close', () => sockets.delete(socket));
  });
  server.listen(0, '127.0.0.1');
  await new Promise((resolve) => server.once('listening', resolve));
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('no port');
  return {
    port: address.port,
    received,
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
};

interface Exchange {
  /** What came back until the connection closed, or until `expect` bytes came. */
  readonly data: Buffer;
  readonly error: string | undefined;
}

/** Connects, sends the chunks one by one, and collects the answer until close (or `until` bytes). */
const exchange = (port: number, chunks: readonly string[], until?: number): Promise<Exchange> =>
  new Promise((resolve) => {
    const socket = netConnect(port, '127.0.0.1');
    const data: Buffer[] = [];
    let error: string | undefined;
    let length = 0;
    socket.on('data', (chunk: Buffer) => {
      data.push(chunk);
      length += chunk.length;
      if (until !== undefined && length >= until) socket.end();
    });
    socket.on('error', (cause: NodeJS.ErrnoException) => {
      error = cause.code ?? cause.message;
    });
    socket.on('close', () => resolve({ data: Buffer.concat(data), error }));
    socket.on('connect', async () => {
      for (const chunk of chunks) {
        if (socket.destroyed) return;
        socket.write(chunk);
        await new Promise((next) => setImmediate(next));
      }
    });
  });

const untilTrue = async (condition: () => boolean): Promise<void> => {
  while (!condition()) await new Promise((resolve) => setTimeout(resolve, 10));
};

describe('tcp proxy', () => {
  let echo: Echo;
  let proxy: TcpProxy;
  const fresh = async () => {
    echo = await startEcho();
    proxy = await TcpProxy.start(echo.port);
  };
  afterEach(async () => {
    await proxy?.close();
    await echo?.close();
  });

  it('passes both ways, and counts a text split across chunks', async () => {
    await fresh();
    proxy.count('abc');
    const answer = await exchange(proxy.port, ['xxab', 'cab', 'c--'], 10);
    expect(answer.data.toString()).toBe('xxabcabc--');
    expect(proxy.counted('abc')).toBe(2);
    expect(proxy.stats.bytes).toEqual({ up: 10, down: 10 });
    expect(proxy.hasTriggered).toBe(false);
  });

  it('drops new connections', async () => {
    await fresh();
    proxy.setMode({ kind: 'drop' });
    const answer = await exchange(proxy.port, ['hello']);
    expect(answer.data.length).toBe(0);
    expect(proxy.stats.dropped).toBe(1);
    expect(proxy.hasTriggered).toBe(true);
    expect(echo.received).toEqual([]);
  });

  it('delays each chunk and keeps their order', async () => {
    await fresh();
    proxy.setMode({ kind: 'delay', ms: 5 });
    const answer = await exchange(proxy.port, ['one,', 'two,', 'three'], 13);
    expect(answer.data.toString()).toBe('one,two,three');
    expect(proxy.hasTriggered).toBe(true);
  });

  it('resets a connection after N bytes upstream, counted from the match', async () => {
    await fresh();
    proxy.setMode({ kind: 'reset', direction: 'up', afterBytes: 10, match: 'GO' });
    const answer = await exchange(proxy.port, ['hello ', `GO${'x'.repeat(50)}`, 'y'.repeat(50)]);
    // The proxy sends an RST; the client sees it as ECONNRESET, or as a plain end (Linux may report either).
    expect(proxy.stats.resets).toBe(1);
    expect([undefined, 'ECONNRESET', 'EPIPE']).toContain(answer.error);
    await untilTrue(() => Buffer.concat(echo.received[0] ?? []).length >= 16);
    expect(Buffer.concat(echo.received[0] ?? []).toString()).toBe(`hello GO${'x'.repeat(8)}`);
  });

  it('resets a connection after N bytes of the answer', async () => {
    await fresh();
    proxy.setMode({ kind: 'reset', direction: 'down', afterBytes: 7 });
    const answer = await exchange(proxy.port, ['0123456789abcdef']);
    expect(answer.data.toString()).toBe('0123456');
    expect(proxy.stats.resets).toBe(1);
    expect([undefined, 'ECONNRESET']).toContain(answer.error);
  });

  it('black-holes a request from its match on: the server never sees it, the client hangs until healed', async () => {
    await fresh();
    proxy.setMode({ kind: 'black-hole', match: 'GO' });
    const pending = exchange(proxy.port, ['abc', 'GO and more']);
    await untilTrue(() => proxy.hasTriggered);
    proxy.heal();
    const answer = await pending;
    expect(Buffer.concat(echo.received[0] ?? []).toString()).toBe('abc');
    expect(answer.data.toString()).not.toContain('GO');
  });

  it('black-holes an answer: the server gets the request, the client never the answer', async () => {
    await fresh();
    proxy.setMode({ kind: 'black-hole', direction: 'down', match: 'GO' });
    const pending = exchange(proxy.port, ['GO request']);
    await untilTrue(() => proxy.hasTriggered);
    await untilTrue(() => Buffer.concat(echo.received[0] ?? []).length === 10);
    proxy.heal();
    const answer = await pending;
    expect(answer.data.length).toBe(0);
  });

  it('black-holes whole connections without a match: nothing reaches the server', async () => {
    await fresh();
    proxy.setMode({ kind: 'black-hole' });
    const pending = exchange(proxy.port, ['anything']);
    await untilTrue(() => proxy.hasTriggered && proxy.stats.bytes.up === 8);
    proxy.heal();
    expect((await pending).data.length).toBe(0);
    expect(echo.received).toEqual([]);
  });

  it('taps: passes everything, and triggers once N bytes went by', async () => {
    await fresh();
    let fired = 0;
    proxy.setMode({ kind: 'tap', direction: 'up', afterBytes: 5, match: 'GO' });
    proxy.onTrigger(() => fired++);
    const answer = await exchange(proxy.port, ['abcdef', 'GO12', '345678'], 16);
    expect(answer.data.toString()).toBe('abcdefGO12345678');
    expect(fired).toBe(1);
  });
});

// ---------------------------------------------------------------------------------------------
// The invariant checker, on losses made by hand: it is not vacuous

describe('the invariant checker', () => {
  const fleet = new OrthancFleet();
  afterAll(() => fleet.destroyAll());

  it('sees an instance at neither end, and a copy at the destination whose bytes differ', async () => {
    const [source, destination] = await Promise.all([
      fleet.start({ name: 'site-a' }),
      fleet.start({ name: 'destination' }),
    ]);
    const set = generateStudies(shape('checker', { patients: 1, seriesPerStudy: 1, instancesPerSeries: 4 }));
    const [kept, copied, corrupted, deleted] = set.instances;
    if (kept === undefined || copied === undefined || corrupted === undefined || deleted === undefined)
      throw new Error('4 instances');
    const stored = await uploadToOrthanc(source, set.instances);
    expect(stored.map((result) => result.status)).toEqual([200, 200, 200, 200]);
    // Copied: at both ends. Corrupted: at the destination with other bytes (StudyDescription,
    // 0008,1030, left out), gone from the source. Deleted: gone from the source, never copied.
    const copies = await uploadToOrthanc(destination, [copied, withoutElements(corrupted, [0x00081030])]);
    expect(copies.map((result) => result.status)).toEqual([200, 200]);
    for (const instance of [corrupted, deleted]) {
      await source.rest('DELETE', `/instances/${await findInstance(source, instance.sopInstanceUid)}`);
    }

    const report = await checkNothingLost({
      instances: set.instances,
      sources: [source],
      destinations: [destination],
    });

    expect(report).toMatchObject({
      checked: 4,
      atSources: 2,
      atDestination: 1,
      atBoth: 1,
      duplicates: [],
      corrupt: [corrupted.sopInstanceUid],
      destinationCounts: [2],
    });
    expect([...report.lost].sort()).toEqual([corrupted.sopInstanceUid, deleted.sopInstanceUid].sort());
  });
});

// ---------------------------------------------------------------------------------------------
// Scenarios against real Orthancs

/** One study of the default shape: 1 patient × 2 series × 3 instances. */
const STUDY_INSTANCES = 6;

const expectNothingLost = (report: ScenarioReport): void => {
  const context = `${describeReport(report)}\n--- the forwarder during the fault:\n${report.faultRun.tail}\n--- the last rerun:\n${report.reruns.at(-1)?.tail}`;
  expect(report.triggered, context).toBe(true);
  for (const check of [report.afterFault, report.final]) {
    expect(check.lost, context).toEqual([]);
    expect(check.duplicates, context).toEqual([]);
    expect(check.corrupt, context).toEqual([]);
  }
  expect(report.lost).toBe(0);
  expect(report.stateAfterFault.integrity).toBe('ok');
  // Undone at the first failure, no fault lasts long enough to use up a work item's attempts.
  expect(report.deadLettered, context).toBe(0);
  // One rerun after recovery completes the move: the sources are empty, the destination holds every
  // instance once, byte for byte, and nothing else.
  expect(
    report.reruns.map((run) => run.code),
    context,
  ).toEqual([0]);
  expect(report.complete, context).toBe(true);
  expect(report.final.destinationCounts).toEqual(report.final.destinationCounts.map(() => report.instances));
  if (process.env.FAULT_INJECTION_REPORT !== undefined) {
    appendFileSync(process.env.FAULT_INJECTION_REPORT, `${JSON.stringify(summaryOf(report))}\n`);
  }
};

const summaryOf = (report: ScenarioReport) => ({
  name: report.name,
  instances: report.instances,
  felt: report.felt,
  faultRun: report.faultRun.signal ?? report.faultRun.code,
  afterFault: { atSources: report.afterFault.atSources, atDestination: report.afterFault.atDestination },
  lost: report.lost,
  partsSent: report.partsSent,
  resent: report.resent,
});

/** The forwarder survived the fault and completed the move in the same run. */
const expectConvergedDuringFault = (report: ScenarioReport): void => {
  expect(report.faultRun.code, report.faultRun.tail).toBe(0);
  expect(report.afterFault.atSources).toBe(0);
  expect(report.afterFault.atDestination).toBe(report.instances);
  // The rerun found nothing to do.
  expect(report.reruns[0]?.outcomes).toEqual([]);
};

const scenario = (name: string, fault: Fault, rest: Partial<ScenarioSpec> = {}): ScenarioSpec => ({
  name,
  fault,
  ...rest,
});

describe('fault injection against real Orthancs', () => {
  afterEach(() => killChildren());
  afterAll(() => killChildren());

  describe('network faults the forwarder rides out', () => {
    it('a STOW-RS request cut mid-body (connection reset): nothing deleted unverified, the cut parts are sent again', async () => {
      const report = await runScenario(
        scenario('stow-request-reset', {
          kind: 'network',
          at: 'destination',
          mode: { kind: 'reset', direction: 'up', afterBytes: 8_000, match: REQUESTS.stow },
        }),
      );
      expectNothingLost(report);
      expect(report.felt).toBe(true);
      expectConvergedDuringFault(report);
      expect(report.resent).toBeGreaterThan(0);
    });

    it('a STOW-RS answer cut after its first bytes: the destination stored the batch, QIDO-RS verifies it, nothing is sent twice', async () => {
      const report = await runScenario(
        scenario('stow-answer-reset', {
          kind: 'network',
          at: 'destination',
          mode: { kind: 'reset', direction: 'down', afterBytes: 12, match: REQUESTS.stow },
        }),
      );
      expectNothingLost(report);
      expectConvergedDuringFault(report);
      expect(report.resent).toBe(0);
    });

    it('a destination that swallows STOW-RS requests and never answers: timed out, nothing deleted, sent again once healed', async () => {
      const report = await runScenario(
        scenario('stow-black-hole', {
          kind: 'network',
          at: 'destination',
          mode: { kind: 'black-hole', match: REQUESTS.stow },
        }),
      );
      expectNothingLost(report);
      expect(report.felt).toBe(true);
      expectConvergedDuringFault(report);
      expect(report.resent).toBeGreaterThan(0);
    });

    it('a destination that refuses connections: every move fails before sending, then completes', async () => {
      const report = await runScenario(
        scenario('destination-drop', { kind: 'network', at: 'destination', mode: { kind: 'drop' } }),
      );
      expectNothingLost(report);
      expect(report.felt).toBe(true);
      expectConvergedDuringFault(report);
      expect(report.resent).toBe(0);
    });

    it('a slow source (latency on every chunk): moved in one go, nothing sent twice', async () => {
      const report = await runScenario(
        scenario('source-delay', { kind: 'network', at: 'source', mode: { kind: 'delay', ms: 2 } }),
      );
      expectNothingLost(report);
      expect(report.felt).toBe(false);
      expectConvergedDuringFault(report);
      expect(report.resent).toBe(0);
    });

    it('two destinations, the first black-holing STOW-RS: nothing leaves the source before both hold it, the second is sent nothing twice', async () => {
      const report = await runScenario(
        scenario(
          'two-destinations-one-black-hole',
          { kind: 'network', at: 'destination', mode: { kind: 'black-hole', match: REQUESTS.stow } },
          { destinations: 2 },
        ),
      );
      expectNothingLost(report);
      expect(report.felt).toBe(true);
      expectConvergedDuringFault(report);
      const [first, second] = report.partsSentPerDestination;
      expect(first).toBeGreaterThan(report.instances);
      expect(second).toBe(report.instances);
    });

    it("push mode: the source's own STOW-RS to the destination cut mid-body: its job fails, the retry pushes again", async () => {
      const report = await runScenario(
        scenario(
          'push-stow-reset',
          {
            kind: 'network',
            at: 'destination',
            mode: { kind: 'reset', direction: 'up', afterBytes: 8_000, match: REQUESTS.stow },
          },
          { transfer: 'push' },
        ),
      );
      expectNothingLost(report);
      expect(report.felt).toBe(true);
      expectConvergedDuringFault(report);
      expect(report.resent).toBeGreaterThan(0);
    });

    it("a source connection reset while an instance's file streams into a STOW-RS body: the STOW fails, is retried", async () => {
      const report = await runScenario(
        scenario('instance-download-reset', {
          kind: 'network',
          at: 'source',
          mode: { kind: 'reset', direction: 'down', afterBytes: 4_000, match: REQUESTS.instanceFile },
        }),
      );
      expectNothingLost(report);
      expect(report.felt).toBe(true);
      expectConvergedDuringFault(report);
    });
  });

  describe('the forwarder SIGKILLed', () => {
    it('during STOW-RS, 20 KB into a request body: nothing was deleted; the rerun sends and deletes everything', async () => {
      const report = await runScenario(
        scenario('kill-during-stow', {
          kind: 'kill-forwarder',
          at: 'destination',
          when: { kind: 'tap', direction: 'up', afterBytes: 20_000, match: REQUESTS.stow },
        }),
      );
      expectNothingLost(report);
      expect(report.faultRun.signal).toBe('SIGKILL');
      expect(report.afterFault.atSources).toBe(report.instances);
      const outcomes = report.reruns[0]?.outcomes ?? [];
      expect(outcomes.reduce((sum, o) => sum + o.sent + o.alreadyPresent, 0)).toBe(report.instances);
      expect(outcomes.reduce((sum, o) => sum + o.deleted, 0)).toBe(report.instances);
    });

    it('while its bulk-delete request is held on the way: the source kept everything; the rerun resends nothing', async () => {
      const report = await runScenario(
        scenario(
          'kill-during-delete-request',
          {
            kind: 'kill-forwarder',
            at: 'source',
            when: { kind: 'black-hole', match: REQUESTS.bulkDelete },
          },
          { concurrency: 1 },
        ),
      );
      expectNothingLost(report);
      expect(report.faultRun.signal).toBe('SIGKILL');
      // The first study was sent and verified; its deletion never reached the source.
      expect(report.afterFault).toMatchObject({
        atSources: report.instances,
        atDestination: STUDY_INSTANCES,
        atBoth: STUDY_INSTANCES,
      });
      const outcomes = report.reruns[0]?.outcomes ?? [];
      expect(outcomes.filter((o) => o.alreadyPresent > 0)).toEqual([
        expect.objectContaining({ result: 'moved', sent: 0, alreadyPresent: STUDY_INSTANCES }),
      ]);
      expect(report.resent).toBe(0);
    });

    it('after the source deleted but before its answer came: the rerun records the deletion from its intent and resends nothing', async () => {
      const report = await runScenario(
        scenario(
          'kill-during-delete-answer',
          {
            kind: 'kill-forwarder',
            at: 'source',
            when: { kind: 'black-hole', direction: 'down', match: REQUESTS.bulkDelete },
          },
          { concurrency: 1 },
        ),
      );
      expectNothingLost(report);
      expect(report.faultRun.signal).toBe('SIGKILL');
      expect(report.afterFault).toMatchObject({
        atSources: report.instances - STUDY_INSTANCES,
        atDestination: STUDY_INSTANCES,
        atBoth: 0,
      });
      // The crashed move's deletion intent was open: the rerun records that move, not `gone`.
      const outcomes = report.reruns[0]?.outcomes ?? [];
      expect(outcomes.filter((o) => o.result === 'gone')).toHaveLength(0);
      expect(
        outcomes.filter((o) => o.result === 'moved' && o.sent === 0 && o.deleted === STUDY_INSTANCES),
      ).toHaveLength(1);
      expect(report.resent).toBe(0);
    });

    it('once work items are queued, before the cursor moves past their changes: the state file is intact, the rerun queues them again and moves each study once', async () => {
      const report = await runScenario(scenario('crash-at-queued', { kind: 'crash-at', step: 'queued' }));
      expectNothingLost(report);
      expect(report.faultRun.signal).toBe('SIGKILL');
      expect(report.marker?.step).toBe('queued');
      const studies = [...(report.studyIds[0] ?? [])].sort();
      expect(report.stateAfterFault.cursors).toEqual({});
      expect(report.stateAfterFault.queued.map((item) => item.studyId).sort()).toEqual(studies);
      expect(report.afterFault.atSources).toBe(report.instances);
      // The rerun reads the feed from the start and queues each study again while its first message
      // is in flight: a duplicate finds the study gone. Each study is moved once, nothing sent twice.
      const outcomes = report.reruns[0]?.outcomes ?? [];
      const moved = outcomes.filter((o) => o.result === 'moved');
      expect(moved.map((o) => o.studyId).sort()).toEqual(studies);
      expect(outcomes.filter((o) => o.result !== 'moved').every((o) => o.result === 'gone')).toBe(true);
      expect(report.resent).toBe(0);
    });

    it('right after the cursor moved: every study whose StableStudy change it passed is on the queue', async () => {
      const report = await runScenario(
        scenario('crash-at-cursor-advanced', { kind: 'crash-at', step: 'cursor-advanced' }),
      );
      expectNothingLost(report);
      expect(report.marker?.step).toBe('cursor-advanced');
      expect(report.stateAfterFault.cursors).toEqual({ 'site-0': report.sourceLast[0] });
      expect(report.stateAfterFault.queued.map((item) => item.studyId).sort()).toEqual(
        [...(report.studyIds[0] ?? [])].sort(),
      );
      expect(report.afterFault.atSources).toBe(report.instances);
      expect(report.resent).toBe(0);
    });

    it('as the answer to its first change-feed read arrives: the state file is intact, the rerun reads the feed again', async () => {
      const report = await runScenario(
        scenario('kill-at-changes-answer', {
          kind: 'kill-forwarder',
          at: 'source',
          when: { kind: 'tap', direction: 'down', afterBytes: 1, match: REQUESTS.changes },
        }),
      );
      expectNothingLost(report);
      expect(report.faultRun.signal).toBe('SIGKILL');
      expect(report.afterFault.atSources).toBe(report.instances);
      const cursor = report.stateAfterFault.cursors['site-0'];
      if (cursor !== undefined) expect(cursor).toBeLessThanOrEqual(report.sourceLast[0] as number);
    });
  });

  describe('Orthanc processes killed, frozen and restarted mid-move', () => {
    it('the destination SIGKILLed 20 KB into a STOW-RS body, started again: the move completes in the same run', async () => {
      const report = await runScenario(
        scenario('destination-sigkill-during-stow', {
          kind: 'server',
          at: 'destination',
          when: { kind: 'tap', direction: 'up', afterBytes: 20_000, match: REQUESTS.stow },
          server: 'destination',
          action: 'kill',
        }),
      );
      expectNothingLost(report);
      expect(report.felt).toBe(true);
      expectConvergedDuringFault(report);
    });

    it('the source SIGKILLed as the bulk-delete request reaches it, started again: nothing lost, whatever it did', async () => {
      const report = await runScenario(
        scenario('source-sigkill-during-delete', {
          kind: 'server',
          at: 'source',
          when: { kind: 'tap', direction: 'up', afterBytes: 0, match: REQUESTS.bulkDelete },
          server: 'source',
          action: 'kill',
        }),
      );
      expectNothingLost(report);
      expect(report.felt).toBe(true);
      expectConvergedDuringFault(report);
    });

    it('one of two sources SIGSTOPped while an instance streams from it, SIGCONTed once the forwarder timed out', async () => {
      const report = await runScenario(
        scenario(
          'source-sigstop-during-download',
          {
            kind: 'server',
            at: 'source',
            when: { kind: 'tap', direction: 'down', afterBytes: 2_000, match: REQUESTS.instanceFile },
            server: 'source',
            action: 'pause',
          },
          { sources: 2 },
        ),
      );
      expectNothingLost(report);
      expect(report.felt).toBe(true);
      expectConvergedDuringFault(report);
      expect(report.instances).toBe(4 * STUDY_INSTANCES);
    });
  });
});
