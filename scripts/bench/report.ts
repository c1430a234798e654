/**
 * The sweep's report: a table per workload (each target's median over the
 * runs, and the runs themselves), grovefs's ratios against the references,
 * the goals, and one machine-readable line.
 *
 * Every ratio is "how many times better grovefs is" (>1: grovefs is
 * faster): rate/rate for rates, time/time the other way round for seconds.
 * It is taken within each run, from figures measured minutes apart in the
 * same sweep, and the median of those per-run ratios is shown: a ratio of
 * medians would mix runs the machine's noise treated differently.
 */
import { formatValue, type Samples, type SweepResult } from "./runner.js";
import { median } from "./stats.js";
import { higherIsBetter, type Workload } from "./workload.js";

const subject = "grovefs";
/** The ratio columns: [label, the target grovefs (or `of`) is compared with, the target compared]. */
const ratioColumns: { label: string; of: string; against: string }[] = [
  { label: "vs fuse2fs", of: subject, against: "fuse2fs" },
  { label: "vs c-ceiling", of: subject, against: "c-ceiling" },
  { label: "vs btrfs", of: subject, against: "btrfs" },
  { label: "fuse-native vs grovefs", of: "grovefs-fuse-native", against: subject },
];

function runsOf(samples: Samples, target: string, workload: string): (number | undefined)[] {
  return samples.get(target)?.get(workload) ?? [];
}

/** The median over runs of `of`'s figure against `against`'s in the same run (>1: `of` is better). */
export function ratio(samples: Samples, w: Workload, of: string, against: string): number | undefined {
  const a = runsOf(samples, of, w.name);
  const b = runsOf(samples, against, w.name);
  const perRun: number[] = [];
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    const x = a[i];
    const y = b[i];
    if (x === undefined || y === undefined || x <= 0 || y <= 0) continue;
    perRun.push(higherIsBetter(w.unit) ? x / y : y / x);
  }
  return median(perRun);
}

const times = (r: number | undefined) => (r === undefined ? "—" : `${r.toFixed(2)}×`);

export function printWorkloadTables(result: SweepResult, workloads: readonly Workload[], targetNames: readonly string[]): void {
  const samples = result.samples;
  for (const w of workloads) {
    console.log(`\n${w.label} — ${w.unit}, ${higherIsBetter(w.unit) ? "higher" : "lower"} is better`);
    for (const t of targetNames) {
      const runs = runsOf(samples, t, w.name);
      const got = runs.filter((v): v is number => v !== undefined);
      const shown = runs.length > 1 ? `   runs: ${runs.map((v) => formatValue(w.unit, v)).join(" ")}` : "";
      const na = result.notApplicable.get(`${t}/${w.name}`);
      const cell = got.length === 0 && na !== undefined ? `n/a (${na})` : formatValue(w.unit, median(got)).padStart(10);
      console.log(`  ${t.padEnd(20)} ${cell}${shown}`);
    }
    const cells = ratioColumns.map((c) => `${c.label} ${times(ratio(samples, w, c.of, c.against))}`);
    console.log(`  ratios (>1: the first is faster): ${cells.join("   ")}`);
  }
}

export interface GoalResult {
  workload: string;
  against: string;
  min: number;
  ratio: number | undefined;
  met: boolean | undefined;
}

export function evaluateGoals(samples: Samples, workloads: readonly Workload[]): GoalResult[] {
  return workloads.flatMap((w) =>
    w.goals.map((g) => {
      const r = ratio(samples, w, subject, g.against);
      return { workload: w.name, against: g.against, min: g.min, ratio: r, met: r === undefined ? undefined : Number(r.toFixed(2)) >= g.min };
    }),
  );
}

export function printGoals(goals: readonly GoalResult[], workloads: readonly Workload[], skipped: Map<string, string>): void {
  console.log("\nGoals (grovefs against the reference, ratios within one run, median over runs)");
  const labelOf = new Map(workloads.map((w) => [w.name, w.label]));
  for (const g of goals) {
    const verdict = g.met === undefined ? `n/a (${skipped.has(g.against) ? `${g.against} skipped` : "no figure"})` : g.met ? "ok" : "MISS";
    console.log(`  ${labelOf.get(g.workload)!.padEnd(28)} vs ${g.against.padEnd(10)} ≥ ${String(g.min).padEnd(4)} ${times(g.ratio).padStart(8)}  ${verdict}`);
  }
  const met = goals.filter((g) => g.met === true).length;
  const missed = goals.filter((g) => g.met === false).length;
  console.log(`  ${met} ok, ${missed} MISS, ${goals.length - met - missed} n/a`);
}

/** One line of JSON: the goals, grovefs's ratios and every target's medians. */
export function summaryLine(result: SweepResult, workloads: readonly Workload[], goals: readonly GoalResult[], runs: number, quick: boolean): string {
  const round = (v: number | undefined) => (v === undefined ? null : Number(v.toPrecision(4)));
  const medians: Record<string, Record<string, number | null>> = {};
  for (const [target, byWorkload] of result.samples) {
    medians[target] = Object.fromEntries(
      workloads.map((w) => [w.name, round(median((byWorkload.get(w.name) ?? []).filter((v): v is number => v !== undefined)))]),
    );
  }
  const ratios = Object.fromEntries(
    workloads.map((w) => [w.name, Object.fromEntries(ratioColumns.map((c) => [`${c.of}/${c.against}`, round(ratio(result.samples, w, c.of, c.against))]))]),
  );
  return JSON.stringify({
    bench: "fs",
    runs,
    quick,
    goals: {
      ok: goals.filter((g) => g.met === true).length,
      miss: goals.filter((g) => g.met === false).length,
      na: goals.filter((g) => g.met === undefined).length,
      missed: goals.filter((g) => g.met === false).map((g) => `${g.workload}/${g.against}`),
    },
    ratios,
    medians,
    skipped: Object.fromEntries(result.skipped),
    errors: result.errors.length,
  });
}
