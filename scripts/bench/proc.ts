/** What the kernel says about a process (CPU time used so far, the machine's load), and CPU pinning. */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { loadavg } from 'node:os';

let ticksPerSecond: number | undefined;

const clockTicks = (): number => {
  if (ticksPerSecond === undefined) {
    try {
      ticksPerSecond = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      ticksPerSecond = 100;
    }
  }
  return ticksPerSecond;
};

/** User + system CPU seconds a process has used (utime + stime of /proc/<pid>/stat). */
export const cpuSeconds = (pid: number | undefined): number => {
  if (pid === undefined) return 0;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name may contain spaces: fields are counted after its closing parenthesis.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const utime = Number(fields[11]);
    const stime = Number(fields[12]);
    return (utime + stime) / clockTicks();
  } catch {
    return 0;
  }
};

/**
 * Binds a process and all its threads to one CPU (Linux `taskset`); threads and children it
 * starts later inherit the binding.
 */
export const pinToCpu = (pid: number, cpu: number): void => {
  execFileSync('taskset', ['--all-tasks', '--pid', '--cpu-list', String(cpu), String(pid)], {
    stdio: 'ignore',
  });
};

/** The load averages over 1, 5 and 15 minutes, rounded. */
export const machineLoad = (): number[] => loadavg().map((value) => Number(value.toFixed(2)));
