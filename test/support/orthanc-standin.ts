/**
 * A stand-in for an Orthanc source that answers the requests the change-feed reader makes, in
 * Orthanc 1.10's shapes, over HTTP on loopback: `/changes` (since, limit, last), `/studies` with
 * `expand` (always), `since` and `limit`, `/studies/{id}` and `/statistics`. It holds no DICOM: it is for
 * sources far larger than a real Orthanc can be filled with in a test (100,000 studies), and for
 * answers a real one gives only after 2^31 changes or in front of another server.
 *
 * As Orthanc does: changes get increasing sequence numbers, written as a 32-bit signed integer;
 * a page with rows reports its last row's Seq as Last, an empty one the newest change; deleting a
 * study erases its changes; studies are listed in the order they arrived, by position.
 *
 * Each answered request advances a virtual clock by `cost`, so that a test can give a poll a
 * budget in that clock and check it, with no wall-clock time involved.
 */
import { once } from 'node:events';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface StandInStudy {
  readonly id: string;
  isStable: boolean;
  lastUpdate: string;
}

interface StandInChange {
  readonly seq: number;
  readonly changeType: string;
  readonly id: string;
}

/** What an answer costs in virtual milliseconds: per request, and per listed item. */
export interface Costs {
  readonly request: number;
  readonly perItem: number;
}

/** The request kinds, counted. */
export type RequestKind = 'changes' | 'last' | 'list' | 'study' | 'statistics';

/** Orthanc writes a 64-bit sequence number as a C int. */
const asInt32 = (seq: number): number => seq | 0;

const json = (response: ServerResponse, status: number, body: unknown): void => {
  response.writeHead(status, { 'content-type': 'application/json' });
  response.end(JSON.stringify(body));
};

export class OrthancStandIn {
  readonly studies: StandInStudy[] = [];
  readonly requests = new Map<RequestKind, number>();
  /**
   * Virtual epoch ms, advanced by each answered request. It starts at the real time, since what
   * it stamps may be kept with a TTL (DynamoDB Local deletes items whose TTL has passed).
   */
  clock = Date.now();
  costs: Costs = { request: 0, perItem: 0 };
  /** Answers the next `/changes?since=` request instead of the data, once. */
  nextChangesAnswer: unknown;
  private readonly changes: StandInChange[] = [];
  private readonly byId = new Map<string, StandInStudy>();
  private lastSeq: number;
  private server: Server | undefined;

  /** `firstSeq`: the sequence number of the first change, to start near 2^31 without 2^31 changes. */
  constructor(options: { firstSeq?: number } = {}) {
    this.lastSeq = (options.firstSeq ?? 1) - 1;
  }

  get url(): string {
    const address = this.server?.address() as AddressInfo | undefined;
    if (address === undefined) throw new Error('the stand-in is not listening');
    return `http://127.0.0.1:${address.port}`;
  }

  get last(): number {
    return this.lastSeq;
  }

  async start(): Promise<void> {
    this.server = createServer((request, response) => this.answer(request, response));
    this.server.listen(0, '127.0.0.1');
    await once(this.server, 'listening');
  }

  async stop(): Promise<void> {
    const server = this.server;
    if (server === undefined) return;
    server.closeAllConnections();
    server.close();
    await once(server, 'close');
  }

  /** Adds a study, with the changes its arrival logged (none: changes lost with a wiped database). */
  addStudy(id: string, study: { isStable: boolean; lastUpdate: string; changes: readonly string[] }): void {
    const entry = { id, isStable: study.isStable, lastUpdate: study.lastUpdate };
    this.studies.push(entry);
    this.byId.set(id, entry);
    for (const changeType of study.changes) this.logChange(changeType, id);
  }

  logChange(changeType: string, id: string): void {
    this.lastSeq++;
    this.changes.push({ seq: this.lastSeq, changeType, id });
  }

  /** As Orthanc does, a deleted study's changes go with it. */
  deleteStudy(id: string): void {
    const study = this.byId.get(id);
    if (study === undefined) return;
    this.byId.delete(id);
    this.studies.splice(this.studies.indexOf(study), 1);
    for (let index = this.changes.length - 1; index >= 0; index--) {
      if (this.changes[index]?.id === id) this.changes.splice(index, 1);
    }
  }

  /** A database wiped (or replaced): no studies, and changes numbered from 1 again. */
  wipe(): void {
    this.studies.length = 0;
    this.byId.clear();
    this.changes.length = 0;
    this.lastSeq = 0;
  }

  has(id: string): boolean {
    return this.byId.has(id);
  }

  private count(kind: RequestKind, items: number): void {
    this.requests.set(kind, (this.requests.get(kind) ?? 0) + 1);
    this.clock += Math.ceil(this.costs.request + items * this.costs.perItem);
  }

  private answer(request: IncomingMessage, response: ServerResponse): void {
    const url = new URL(request.url ?? '/', 'http://stand-in');
    const path = url.pathname;
    const study = /^\/studies\/([^/]+)$/.exec(path);
    if (path === '/changes') this.answerChanges(url, response);
    else if (path === '/statistics') {
      this.count('statistics', 0);
      json(response, 200, { CountStudies: this.studies.length, CountInstances: this.studies.length });
    } else if (path === '/studies') this.answerList(url, response);
    else if (study !== null) this.answerStudy(decodeURIComponent(study[1] ?? ''), response);
    else json(response, 404, { Message: 'Unknown resource' });
  }

  private answerChanges(url: URL, response: ServerResponse): void {
    const row = (change: StandInChange) => ({
      ChangeType: change.changeType,
      Date: '20240101T000000',
      ID: change.id,
      Path: `/studies/${change.id}`,
      ResourceType: 'Study',
      Seq: asInt32(change.seq),
    });
    if (url.searchParams.has('last')) {
      this.count('last', 0);
      const newest = this.changes.at(-1);
      json(response, 200, {
        Changes: newest === undefined ? [] : [row(newest)],
        Done: true,
        Last: asInt32(this.lastSeq),
      });
    } else if (this.nextChangesAnswer !== undefined) {
      this.count('changes', 0);
      json(response, 200, this.nextChangesAnswer);
      this.nextChangesAnswer = undefined;
    } else {
      this.answerPage(url, response, row);
    }
  }

  private answerPage(url: URL, response: ServerResponse, row: (change: StandInChange) => unknown): void {
    const since = Number(url.searchParams.get('since') ?? '0');
    const limit = Number(url.searchParams.get('limit') ?? '100');
    const start = this.firstAfter(since);
    const rows = this.changes.slice(start, start + limit);
    this.count('changes', rows.length);
    json(response, 200, {
      Changes: rows.map(row),
      Done: start + limit >= this.changes.length,
      Last: asInt32(rows.at(-1)?.seq ?? this.lastSeq),
    });
  }

  /** The index of the first change after `since` (binary search: sequence numbers increase). */
  private firstAfter(since: number): number {
    let low = 0;
    let high = this.changes.length;
    while (low < high) {
      const middle = (low + high) >> 1;
      if ((this.changes[middle]?.seq ?? 0) <= since) low = middle + 1;
      else high = middle;
    }
    return low;
  }

  private answerList(url: URL, response: ServerResponse): void {
    const since = Number(url.searchParams.get('since') ?? '0');
    const limit = Number(url.searchParams.get('limit') ?? String(this.studies.length));
    const page = this.studies.slice(since, since + limit);
    this.count('list', page.length);
    json(
      response,
      200,
      page.map((study) => ({
        ID: study.id,
        IsStable: study.isStable,
        LastUpdate: study.lastUpdate,
        Type: 'Study',
      })),
    );
  }

  private answerStudy(id: string, response: ServerResponse): void {
    this.count('study', 0);
    const study = this.byId.get(id);
    if (study === undefined) json(response, 404, { Message: 'Unknown resource' });
    else
      json(response, 200, {
        ID: study.id,
        IsStable: study.isStable,
        LastUpdate: study.lastUpdate,
        MainDicomTags: { StudyInstanceUID: `2.25.${study.id.replace(/\D/g, '') || '0'}` },
        Type: 'Study',
      });
  }
}
