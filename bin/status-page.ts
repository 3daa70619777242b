/**
 * `run --listen`'s page: the `status` report (core/status.ts) as one self-contained HTML page,
 * with what only the running process knows (each source's last poll and error). Read-only, no
 * script, no external asset; it reloads itself. The same cells as `status` (format.ts).
 */
import type { StatusReport } from '../lambdas/core/status.ts';
import { describeConflict, formatSize, SOURCE_COLUMNS } from './format.ts';

/** How often the page reloads itself. */
export const REFRESH_SECONDS = 5;

/** How many open conflicts the page lists. */
const PAGE_CONFLICTS = 10;

/** What the running process knows of a source beyond the report. */
export interface SourceLiveness {
  readonly lastPollAt: number | undefined;
  readonly lastError: string | undefined;
}

const ESCAPES: Readonly<Record<string, string>> = {
  '&': '&amp;',
  '<': '&lt;',
  '>': '&gt;',
  '"': '&quot;',
  "'": '&#39;',
};

const escapeHtml = (text: string): string => text.replace(/[&<>"']/g, (c) => ESCAPES[c] ?? c);

const iso = (epochMs: number | undefined) => (epochMs === undefined ? '-' : new Date(epochMs).toISOString());

/** A cell named for the test and for anyone reading the source of the page. */
const cell = (field: string, text: string, tag = 'td') =>
  `<${tag} data-field="${field}">${escapeHtml(text)}</${tag}>`;

const fieldName = (header: string) => header.toLowerCase().replace(/ /g, '-');

const sourcesTable = (report: StatusReport, live: ReadonlyMap<string, SourceLiveness>): string => {
  const headers = [...SOURCE_COLUMNS.map(([header]) => header), 'LAST POLL', 'LAST ERROR'];
  const rows = report.sources.map((source) => {
    const known = live.get(source.id);
    const cells = [
      ...SOURCE_COLUMNS.map(([header, text]) => cell(fieldName(header), text(source, report.at))),
      cell('last-poll', iso(known?.lastPollAt)),
      cell('last-error', known?.lastError ?? '-'),
    ];
    return `<tr data-source="${escapeHtml(source.id)}">${cells.join('')}</tr>`;
  });
  return [
    '<table><thead><tr>',
    ...headers.map((header) => `<th>${escapeHtml(header)}</th>`),
    '</tr></thead><tbody>',
    ...rows,
    '</tbody></table>',
    '<p class="note">studies / instances / size. AT SOURCE: what the source holds now; MOVED: what left it, verified at every destination; RATE: per hour its windows were open; WAITING: studies not stable yet.</p>',
  ].join('');
};

const queueSection = (report: StatusReport): string => {
  const { queue } = report;
  const groups = (report.deadLetterGroups ?? []).map(
    (group) => `<li>${group.count} × ${escapeHtml(group.error)} (newest ${iso(group.newestAt)})</li>`,
  );
  return [
    '<h2>Queue</h2><p>',
    cell('queue-waiting', String(queue.waiting), 'span'),
    ' waiting, ',
    cell('queue-in-flight', String(queue.inFlight), 'span'),
    ' in flight, ',
    cell('queue-dead-letters', String(queue.deadLetters), 'span'),
    ' dead letters</p>',
    groups.length === 0
      ? ''
      : `<ul>${groups.join('')}</ul><p class="note">dlq list --group-by error; dlq redrive</p>`,
  ].join('');
};

const conflictsSection = (report: StatusReport): string => {
  const shown = report.conflicts
    .slice(0, PAGE_CONFLICTS)
    .map((c) => `<li>${escapeHtml(describeConflict(c))}</li>`);
  const more = report.conflicts.length - shown.length;
  return [
    '<h2>Open conflicts: ',
    cell('open-conflicts', String(report.conflicts.length), 'span'),
    '</h2>',
    shown.length === 0 ? '' : `<ul>${shown.join('')}${more > 0 ? `<li>and ${more} more</li>` : ''}</ul>`,
    '<h2>Rejected instances: ',
    cell('rejected', String(report.rejected.length), 'span'),
    '</h2>',
  ].join('');
};

const totalsSection = (report: StatusReport): string => {
  const { moved, copied } = report.totals;
  return [
    '<h2>All sources so far</h2><p>moved ',
    cell('total-moved-studies', String(moved.studies), 'span'),
    ' studies, ',
    cell('total-moved-instances', String(moved.instances), 'span'),
    ` instances, ${escapeHtml(formatSize(moved.bytes))}; copied ${copied.studies} studies, ${copied.instances} instances, ${escapeHtml(formatSize(copied.bytes))}</p>`,
  ].join('');
};

const STYLE = [
  'body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}',
  'table{border-collapse:collapse}',
  'th,td{border:1px solid #ccc;padding:.3rem .5rem;text-align:left;font-size:.9rem;white-space:nowrap}',
  'th{background:#f3f3f3}',
  '.note{color:#666;font-size:.8rem}',
].join('');

export const renderStatusPage = (report: StatusReport, live: ReadonlyMap<string, SourceLiveness>): string =>
  [
    '<!doctype html><html lang="en"><head><meta charset="utf-8">',
    `<meta http-equiv="refresh" content="${REFRESH_SECONDS}">`,
    '<meta name="viewport" content="width=device-width, initial-scale=1">',
    `<title>orthanc-forwarder status</title><style>${STYLE}</style></head><body>`,
    `<h1>orthanc-forwarder</h1><p class="note">as of ${iso(report.at)}; reloads every ${REFRESH_SECONDS} s</p>`,
    sourcesTable(report, live),
    queueSection(report),
    conflictsSection(report),
    totalsSection(report),
    '</body></html>',
  ].join('');
