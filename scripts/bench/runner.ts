/**
 * The sweep: every selected target through every selected workload, --runs
 * times, interleaved. A job is one group of workloads (workload.ts) on one
 * fresh filesystem of one target; each run goes through the jobs in order,
 * and within a job through the targets in ABBA order (stats.ts), so that a
 * machine that drifts (a noisy neighbour, a warming disk) drifts for every
 * target alike and every ratio can be taken within one run.
 *
 * A failing workload is recorded and ends its job (the ones after it would
 * start from a broken state); the sweep goes on. A target that cannot set up
 * a filesystem is dropped for the rest of the sweep.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { aborting } from "./cleanup.js";
import type { DataSets } from "./data_set.js";
import { dropCaches } from "./host.js";
import { errorText, runOk } from "./proc.js";
import { abbaOrder } from "./stats.js";
import { TargetUnavailable, type Mounted, type Target, type TargetEnv } from "./target.js";
import type { Params, Unit, Workload, WorkloadContext } from "./workload.js";

const syncTimeoutMs = 300_000;

export interface Job {
  group: string;
  workloads: Workload[];
}

/** samples.get(target)?.get(workload)?.[runIndex]: undefined where it failed or did not run. */
export type Samples = Map<string, Map<string, (number | undefined)[]>>;

export interface SweepResult {
  samples: Samples;
  /** Targets that could not run at all, with why. */
  skipped: Map<string, string>;
  /** "target/workload" → why the workload does not apply to the target (it lacks something the workload needs). */
  notApplicable: Map<string, string>;
  errors: string[];
}

export interface Sweep {
  env: TargetEnv;
  params: Params;
  data: DataSets;
  targets: Target[];
  workloads: Workload[];
  runs: number;
}

/** Consecutive workloads of one group form one job. */
export function jobsOf(workloads: readonly Workload[]): Job[] {
  const jobs: Job[] = [];
  for (const w of workloads) {
    const last = jobs[jobs.length - 1];
    if (last?.group === w.group) last.workloads.push(w);
    else jobs.push({ group: w.group, workloads: [w] });
  }
  return jobs;
}

export function formatValue(unit: Unit, value: number | undefined): string {
  if (value === undefined) return "—";
  if (unit === "s") return value < 10 ? value.toFixed(3) : value.toFixed(2);
  return unit === "MB/s" ? value.toFixed(1) : Math.round(value).toString();
}

/** Runs `prepare` on every target; returns the ones that can run. */
export async function prepareTargets(s: Sweep, result: SweepResult): Promise<Target[]> {
  const ready: Target[] = [];
  for (const t of s.targets) {
    const why = await t.prepare(s.env).catch((err: unknown) => `prepare failed: ${errorText(err)}`);
    if (why === null) ready.push(t);
    else {
      result.skipped.set(t.name, why);
      console.log(`  skipping ${t.name}: ${why}`);
    }
  }
  return ready;
}

export async function runSweep(s: Sweep, ready: Target[], result: SweepResult): Promise<void> {
  const jobs = jobsOf(s.workloads);
  const dropped = new Set<string>();
  for (let runIndex = 0; runIndex < s.runs; runIndex++) {
    for (const [jobIndex, job] of jobs.entries()) {
      const order = abbaOrder(ready, runIndex, jobIndex).filter((t) => !dropped.has(t.name));
      console.log(`\nrun ${runIndex + 1}/${s.runs}, ${job.group} (${job.workloads.map((w) => w.name).join(", ")}): ${order.map((t) => t.name).join(" → ")}`);
      for (const target of order) {
        if (aborting()) return;
        const ok = await runJob(s, target, job, runIndex, result);
        if (!ok) dropped.add(target.name);
      }
    }
  }
}

/** The job's workloads the target can run; the others are recorded as not applicable. */
function applicable(target: Target, job: Job, result: SweepResult): Workload[] {
  return job.workloads.filter((w) => {
    const lacking = (w.needs ?? []).filter((n) => target.lacks?.includes(n));
    if (lacking.length === 0) return true;
    result.notApplicable.set(`${target.name}/${w.name}`, `${target.name} has no ${lacking.join(", ")}`);
    return false;
  });
}

/** One target through one job; false if the target could not set up a filesystem (it is then dropped). */
async function runJob(s: Sweep, target: Target, job: Job, runIndex: number, result: SweepResult): Promise<boolean> {
  const runnable = applicable(target, job, result);
  const left = job.workloads.filter((w) => !runnable.includes(w));
  for (const w of left) console.log(`  ${target.name.padEnd(20)} ${w.label.padEnd(28)} n/a: ${result.notApplicable.get(`${target.name}/${w.name}`)}`);
  if (runnable.length === 0) return true;
  const dir = path.join(s.env.workDir, `r${runIndex + 1}-${job.group}-${target.name}`);
  fs.mkdirSync(dir);
  let mounted: Mounted;
  try {
    mounted = await target.setup(s.env, dir);
  } catch (err) {
    if (aborting()) return true;
    if (err instanceof TargetUnavailable) {
      result.skipped.set(target.name, err.message);
      console.log(`  skipping ${target.name} from now on: ${err.message}`);
    } else {
      result.errors.push(`${target.name}: setting up for ${job.group} failed, dropped from the sweep: ${errorText(err)}`);
      console.log(`  error: ${target.name} setup: ${errorText(err)} (dropped from the sweep)`);
    }
    fs.rmSync(dir, { recursive: true, force: true });
    return false;
  }
  try {
    await runWorkloads(s, target, mounted, runnable, runIndex, result);
  } finally {
    await mounted.teardown().catch((err: unknown) => result.errors.push(`${target.name} ${job.group} teardown: ${errorText(err)}`));
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return true;
}

async function runWorkloads(s: Sweep, target: Target, mounted: Mounted, list: Workload[], runIndex: number, result: SweepResult): Promise<void> {
  const ctx: WorkloadContext = { mnt: mounted.mountpoint, scratch: s.env.workDir, params: s.params, data: s.data };
  for (const [i, w] of list.entries()) {
    if (aborting()) return;
    try {
      if (i === 0 && w.prepare) await w.prepare(ctx);
      if (w.cold && mounted.persistent) await mounted.remount();
      await runOk(["sync", "-f", mounted.mountpoint], { timeoutMs: syncTimeoutMs });
      await dropCaches(s.env.workDir);
      const value = await w.run(ctx);
      record(result.samples, target.name, w.name, runIndex, value);
      console.log(`  ${target.name.padEnd(20)} ${w.label.padEnd(28)} ${formatValue(w.unit, value).padStart(10)} ${w.unit}`);
    } catch (err) {
      if (aborting()) return;
      const rest = list.slice(i + 1).map((x) => x.name);
      const msg = `${target.name} ${w.name} (run ${runIndex + 1}): ${errorText(err)}${rest.length > 0 ? ` (not run after it: ${rest.join(", ")})` : ""}`;
      result.errors.push(msg);
      console.log(`  error: ${msg}`);
      return;
    }
  }
}

function record(samples: Samples, target: string, workload: string, runIndex: number, value: number): void {
  let byWorkload = samples.get(target);
  if (!byWorkload) samples.set(target, (byWorkload = new Map()));
  let runs = byWorkload.get(workload);
  if (!runs) byWorkload.set(workload, (runs = []));
  runs[runIndex] = value;
}
