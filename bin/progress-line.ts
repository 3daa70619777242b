/**
 * `run`'s progress lines, for a person at a terminal: one per source, with what this run moved
 * from it, what it still holds, the rate inside its windows and the estimated time left
 * (lambdas/core/progress.ts, as `status` says them). Drawn on stderr and redrawn in place at most
 * once a second; what the source holds and the rate are asked again every REFRESH_MS. The logs
 * stay as they are: a log line clears the lines before it is written, and the next redraw puts
 * them back under it. Cleared when the run ends.
 */
import type { ForwarderConfig } from '../lambdas/core/config.ts';
import { createEndpoint } from '../lambdas/core/http.ts';
import { moveTiming } from '../lambdas/core/move-timing.ts';
import { OrthancClient } from '../lambdas/core/orthanc-client.ts';
import type { Ledger, StudyOutcome, Tally } from '../lambdas/core/ports.ts';
import { recentMoves, type SourceProgress, sourceProgress } from '../lambdas/core/progress.ts';
import { NO_TALLY, outcomeTotals } from '../lambdas/core/totals.ts';
import { formatEta, formatRate, formatSize } from './format.ts';

const REDRAW_MS = 1_000;
/** Each refresh asks every source GET /statistics: cheap, but not at every redraw. */
const REFRESH_MS = 15_000;

/**
 * Whether `run` shows its progress lines: as `--progress` or `--no-progress` says, else only when
 * its output is a terminal (a service's log pipe does not get them).
 */
export const showProgress = (flag: boolean | undefined, isTTY: boolean | undefined): boolean =>
  flag ?? isTTY === true;

/** One source's line: `site-a: moved 12 studies (1.2 GB), left 340 (45 GB), 2.1 GB/h, ETA in 3 h 20 min`. */
export const progressLine = (
  sourceId: string,
  moved: Tally,
  progress: SourceProgress,
  now: number,
): string => {
  const { left } = progress;
  return [
    `${sourceId}: moved ${moved.studies} studies (${formatSize(moved.bytes)})`,
    `left ${left === undefined ? '?' : `${left.studies} (${formatSize(left.bytes)})`}`,
    formatRate(progress),
    `ETA ${formatEta(progress, now)}`,
  ].join(', ');
};

const ESC = '\u001b[';

/** A stream's write as the process had it before the lines took it over. */
type Write = NodeJS.WriteStream['write'];

export class ProgressLines {
  readonly #config: ForwarderConfig;
  readonly #ledger: Pick<Ledger, 'movedSince'>;
  readonly #sources: ReadonlyMap<string, Pick<OrthancClient, 'holdings'>>;
  readonly #out: NodeJS.WriteStream;
  readonly #logs: readonly NodeJS.WriteStream[];
  readonly #now: () => number;
  readonly #every: { readonly redrawMs: number; readonly refreshMs: number };
  readonly #moved = new Map<string, Tally>();
  readonly #progress = new Map<string, SourceProgress>();
  readonly #writes = new Map<NodeJS.WriteStream, Write>();
  readonly #timers: NodeJS.Timeout[] = [];
  /** Lines on screen now: the next redraw goes up over them. */
  #drawn = 0;
  #stopped = false;

  constructor(options: {
    readonly config: ForwarderConfig;
    readonly ledger: Pick<Ledger, 'movedSince'>;
    /** Each source's client; by default one with 5-second timeouts, as `status` asks. */
    readonly sources?: ReadonlyMap<string, Pick<OrthancClient, 'holdings'>>;
    /** Where the lines go (stderr), and the streams the logs go to, whose writes clear them first. */
    readonly out?: NodeJS.WriteStream;
    readonly logs?: readonly NodeJS.WriteStream[];
    readonly now?: () => number;
    /** How often the lines are redrawn and the sources asked again. */
    readonly every?: { readonly redrawMs: number; readonly refreshMs: number };
  }) {
    const { config } = options;
    this.#config = config;
    this.#ledger = options.ledger;
    const timeouts = { ...config.timeouts, headersMs: 5_000, bodyMs: 5_000 };
    this.#sources =
      options.sources ??
      new Map(
        config.sources.map((source, index) => [
          source.id,
          new OrthancClient(createEndpoint(source, timeouts, { field: `sources[${index}]` })),
        ]),
      );
    this.#out = options.out ?? process.stderr;
    this.#logs = options.logs ?? [process.stdout, process.stderr];
    this.#now = options.now ?? Date.now;
    this.#every = options.every ?? { redrawMs: REDRAW_MS, refreshMs: REFRESH_MS };
  }

  /**
   * Takes over the log streams' writes, asks the sources and draws (what it returns: the run need
   * not wait for it), then redraws once a second.
   */
  start(): Promise<void> {
    for (const stream of this.#logs) {
      const write = stream.write;
      this.#writes.set(stream, write);
      stream.write = ((...args: Parameters<Write>) => {
        this.clear();
        return write.apply(stream, args);
      }) as Write;
    }
    // A second Ctrl-C exits at once: the lines must not stay under the shell's prompt.
    process.once('exit', this.stop);
    this.#timers.push(
      setInterval(() => this.redraw(), this.#every.redrawMs).unref(),
      setInterval(() => void this.refresh(), this.#every.refreshMs).unref(),
    );
    return this.refresh().then(() => this.redraw());
  }

  /** What the run moved: counted at once, shown at the next redraw. */
  readonly onOutcome = (outcome: StudyOutcome): void => {
    const { moved } = outcomeTotals(outcome);
    const sum = this.#moved.get(outcome.sourceId) ?? NO_TALLY;
    this.#moved.set(outcome.sourceId, {
      studies: sum.studies + moved.studies,
      instances: sum.instances + moved.instances,
      bytes: sum.bytes + moved.bytes,
    });
  };

  /**
   * Asks every source what it holds and the ledger what left it lately. A source not reached shows
   * `?` until the next refresh (the run's own logs say why); a ledger that fails keeps the last.
   */
  async refresh(): Promise<void> {
    const now = this.#now();
    await Promise.all(
      this.#config.sources.map(async (source) => {
        const client = this.#sources.get(source.id);
        if (client === undefined) return;
        try {
          const [left, recent] = await Promise.all([
            client.holdings().catch(() => undefined),
            recentMoves(this.#ledger, source.id, now),
          ]);
          const schedule = moveTiming(this.#config, source.id)?.schedule;
          this.#progress.set(source.id, sourceProgress(left, recent, schedule, now));
        } catch {
          // The next refresh asks again.
        }
      }),
    );
  }

  /** Draws the lines anew over the ones on screen. */
  redraw(): void {
    if (this.#stopped) return;
    const now = this.#now();
    const lines = this.#config.sources.map((source) =>
      progressLine(
        source.id,
        this.#moved.get(source.id) ?? NO_TALLY,
        this.#progress.get(source.id) ?? { left: undefined, lastHour: NO_TALLY, lastDay: NO_TALLY },
        now,
      ),
    );
    const up = this.#drawn > 1 ? `${ESC}${this.#drawn - 1}A` : '';
    // A line wider than the terminal would wrap, and the next redraw would go up too few lines.
    const width = this.#out.columns === undefined ? Number.POSITIVE_INFINITY : this.#out.columns - 1;
    this.#write(`${up}\r${lines.map((line) => `${ESC}2K${line.slice(0, width)}`).join('\n')}`);
    this.#drawn = lines.length;
  }

  /** Takes the lines off the screen, leaving the cursor where they began. */
  clear(): void {
    if (this.#drawn === 0) return;
    this.#write(`${this.#drawn > 1 ? `${ESC}${this.#drawn - 1}A` : ''}\r${ESC}J`);
    this.#drawn = 0;
  }

  /** Clears the lines for good and gives the log streams their writes back. */
  readonly stop = (): void => {
    process.off('exit', this.stop);
    this.#stopped = true;
    for (const timer of this.#timers) clearInterval(timer);
    this.#timers.length = 0;
    this.clear();
    for (const [stream, write] of this.#writes) stream.write = write;
    this.#writes.clear();
  };

  #write(text: string): void {
    (this.#writes.get(this.#out) ?? this.#out.write).call(this.#out, text);
  }
}
