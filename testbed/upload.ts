/**
 * Loads DICOM files into an Orthanc server through its REST API, the way a modality's archive
 * feed would: one streamed POST per file, a few at a time, every outcome reported.
 */
import * as fs from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { Agent, request } from 'undici';
import type { GeneratedInstance } from './dicom-generator.ts';

export interface OrthancTarget {
  /** Base URL of the REST API, e.g. http://127.0.0.1:8042 */
  readonly url: string;
  readonly username: string;
  readonly password: string;
}

/** A file on disk, or a generated instance streamed straight from memory-free generation. */
export type UploadItem = string | GeneratedInstance;

export interface UploadResult {
  readonly sopInstanceUid?: string;
  readonly path?: string;
  /** HTTP status, or 0 when no answer came (connection refused, timeout, unreadable file). */
  readonly status: number;
  readonly orthancId?: string;
  /** Orthanc's verdict on a 200: "Success" or "AlreadyStored". */
  readonly orthancStatus?: string;
  readonly error?: string;
}

export interface UploadOptions {
  /** Files in flight at once; 4 by default. */
  readonly concurrency?: number;
  /** Longest silence allowed while connecting, sending or awaiting the answer; 120 s by default. */
  readonly timeoutMs?: number;
}

interface OrthancStored {
  readonly ID?: string;
  readonly Status?: string;
}

const identify = (item: UploadItem): Pick<UploadResult, 'sopInstanceUid' | 'path'> =>
  typeof item === 'string' ? { path: item } : { sopInstanceUid: item.sopInstanceUid };

/** Opens the file first, so that a missing one fails here and not later as an unhandled stream error. */
const open = async (item: UploadItem): Promise<Readable> =>
  typeof item === 'string' ? (await fs.open(item)).createReadStream() : item.stream();

const uploadOne = async (
  target: OrthancTarget,
  agent: Agent,
  authorization: string,
  item: UploadItem,
): Promise<UploadResult> => {
  let body: Readable | undefined;
  try {
    body = await open(item);
    // No content-length: undici sends the stream chunked, so nothing is buffered whole.
    const response = await request(`${target.url.replace(/\/+$/, '')}/instances`, {
      method: 'POST',
      dispatcher: agent,
      headers: { authorization, 'content-type': 'application/dicom' },
      body,
    });
    const text = await response.body.text();
    if (response.statusCode !== 200) {
      return { ...identify(item), status: response.statusCode, error: text.slice(0, 500) };
    }
    const stored = JSON.parse(text) as OrthancStored;
    return { ...identify(item), status: 200, orthancId: stored.ID, orthancStatus: stored.Status };
  } catch (error) {
    return { ...identify(item), status: 0, error: error instanceof Error ? error.message : String(error) };
  } finally {
    body?.destroy();
  }
};

/**
 * Uploads every item with `POST {url}/instances`. Never throws for one bad file or a refused
 * request: each outcome is in the result, in the order of `items`.
 */
export const uploadToOrthanc = async (
  target: OrthancTarget,
  items: readonly UploadItem[],
  options: UploadOptions = {},
): Promise<UploadResult[]> => {
  const concurrency = Math.max(1, options.concurrency ?? 4);
  const timeoutMs = options.timeoutMs ?? 120_000;
  const agent = new Agent({
    connections: concurrency,
    connectTimeout: Math.min(timeoutMs, 10_000),
    headersTimeout: timeoutMs,
    bodyTimeout: timeoutMs,
  });
  const authorization = `Basic ${Buffer.from(`${target.username}:${target.password}`).toString('base64')}`;
  const results: UploadResult[] = new Array(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    for (let index = next++; index < items.length; index = next++) {
      results[index] = await uploadOne(target, agent, authorization, items[index] as UploadItem);
    }
  };
  try {
    await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, worker));
  } finally {
    await agent.close();
  }
  return results;
};
