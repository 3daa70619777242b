/** The issue's targets, checked against the figures (reported, never asserted by a test). */
import type { VerifyModeFigures } from './modes.ts';
import { relayRunLabel } from './options.ts';
import type { BigStudyResult, BigStudyRun, SetResult } from './run.ts';

export interface TargetResult {
  readonly name: string;
  /** What is compared with what, in words. */
  readonly target: string;
  readonly value: number | undefined;
  /** undefined when the run did not measure it (a set or the big study skipped). */
  readonly met: boolean | undefined;
}

const check = (name: string, target: string, value: number | undefined, ok: (v: number) => boolean) => ({
  name,
  target,
  value,
  met: value === undefined ? undefined : ok(value),
});

export const evaluateTargets = (
  sets: readonly SetResult[],
  bigStudy: BigStudyResult | undefined,
  verify: Readonly<Record<string, VerifyModeFigures>> | undefined,
): TargetResult[] => {
  const main = sets.find((set) => set.set.name === 'default') ?? sets[0];
  const small = sets.find((set) => set.set.name === 'small');
  const mainIs512 = main !== undefined && main.set.sizeKb === 512;
  return [
    check('relayVsPush', 'relay >= 1.2 x push (default set)', main?.ratios.relayVsPush, (v) => v >= 1.2),
    check(
      'relayVsCeiling',
      'relay >= 0.9 x ceiling (default set)',
      main?.ratios.relayVsCeiling,
      (v) => v >= 0.9,
    ),
    check(
      'smallRelayVsPush',
      'relay >= 1.0 x push (small-instance set)',
      small?.ratios.relayVsPush,
      (v) => v >= 1.0,
    ),
    ...(bigStudy?.runs ?? [undefined]).map((run: BigStudyRun | undefined, index) =>
      check(
        index === 0 ? 'bigStudyPeakRss' : `bigStudyPeakRss[${relayRunLabel(run as BigStudyRun)}]`,
        `our peak RSS <= 128 MB moving the big study${run === undefined ? '' : ` (${relayRunLabel(run)})`}`,
        run?.peakRssMb,
        (v) => v <= 128,
      ),
    ),
    check(
      'relayCpuPer1000',
      'our CPU <= 2 CPU-seconds per 1,000 instances of 512 KB',
      mainIs512 ? main?.relay.cpuSecondsPer1000.ours : undefined,
      (v) => v <= 2,
    ),
    check(
      'identityVsQido',
      'verify identity >= 0.9 x qido (default set)',
      verify?.identity?.ratioToQido,
      (v) => v >= 0.9,
    ),
  ];
};
