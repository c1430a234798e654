/**
 * Filesystem benchmark: grovefs against fuse2fs, kernel btrfs and two FUSE
 * ceilings, through the kernel, on the same machine, in one interleaved
 * sweep.
 *
 *   npm run bench:fs -- [--quick] [--runs N] [--targets a,b,...] [--workloads x,y,...]
 *                       [--size 512M] [--rand-size 128M] [--files 10000]
 *                       [--tree DIR] [--tree-size 300M] [--git-repo DIR]
 *                       [--image-size BYTES] [--runtime 30] [--verbose]
 *   npm run bench:fs -- --compress [...]   (scripts/bench/compress.ts)
 *
 * This file is the entry point; the pieces live under scripts/bench/:
 *   targets/    how each filesystem is made, mounted and torn down
 *               (target.ts is the interface): grovefs with its default
 *               transport, grovefs-fuse-native, grovefs-kernel (not in the
 *               default sweep), fuse2fs, ceiling (in-memory, fuse-native),
 *               c-ceiling (libfuse 3 low-level passthrough of tmpfs, built
 *               from c_ceiling/passthrough_ll.c) and btrfs (kernel, loop
 *               device);
 *   workloads/  what is measured (workload.ts is the interface): fio seq
 *               write and cold read, 4 KiB random cold read and write +
 *               fsync; create, stat, unlink rates (scripts/bench_fs_worker.ts);
 *               cp -a of a staged tree + sync, cold tar, du, find and rm -rf
 *               of it; git clone of a local repository and a cold git status;
 *   runner.ts   the sweep: each run goes through the jobs (a group of
 *               workloads on one fresh filesystem), each job through the
 *               targets in ABBA order rotated per job;
 *   report.ts   a table per workload (medians over runs), grovefs's ratios
 *               against fuse2fs, the C ceiling and btrfs, the goals, and a
 *               one-line JSON summary.
 *
 * Every byte of I/O on a mount is done by a child process (fio, cp, tar,
 * git, the worker), never by this process, and FUSE servers run in their
 * own process groups, so a Ctrl-C reaches this script first, which then
 * stops the servers, unmounts anything left mounted, detaches its loop
 * devices and deletes its temp directories. It is a benchmark, not a test:
 * a missed goal does not fail the run; a workload that errors does (exit 1,
 * after the report).
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { cleanup, installSignalHandlers, registerWorkDir } from "./bench/cleanup.js";
import { compressBench } from "./bench/compress.js";
import { parseConfig, usage, type SweepConfig } from "./bench/config.js";
import { stageGitRepo, stageTree, type DataSets } from "./bench/data_set.js";
import { ensureCommands, loadAverage } from "./bench/host.js";
import { evaluateGoals, printGoals, printWorkloadTables, summaryLine } from "./bench/report.js";
import { jobsOf, prepareTargets, runSweep, type Sweep, type SweepResult } from "./bench/runner.js";
import { GiB, MiB, errorText, isRoot, setVerbose } from "./bench/proc.js";
import { fioCommon } from "./bench/workloads/fio.js";
import { targets } from "./bench/targets/index.js";
import { workloads } from "./bench/workloads/index.js";

const size = (b: number) => (b >= GiB && b % GiB === 0 ? `${b / GiB} GiB` : `${b / MiB} MiB`);
const mb = (bytes: number) => (bytes / 1e6).toFixed(1);

function printMachine(): void {
  console.log(`bench:fs on ${os.cpus().length} CPUs, ${(os.totalmem() / GiB).toFixed(1)} GiB RAM, Linux ${os.release()}, Node ${process.version}`);
  console.log(`  load average at start: ${loadAverage()}`);
  console.log(
    "  noise: on this small shared machine single runs of the same job differ by up to 3×; compare ratios within one run\n" +
      "  (the sweep interleaves the targets for that), trust medians over --runs more than any one figure",
  );
}

/** A directory on tmpfs for the staged data and the C ceiling's backing files; under the work dir if there is no /dev/shm. */
function makeShmDir(workDir: string): string {
  const shm = "/dev/shm";
  const dir = fs.statSync(shm, { throwIfNoEntry: false })?.isDirectory() ? fs.mkdtempSync(path.join(shm, "bench_fs-")) : path.join(workDir, "shm");
  fs.mkdirSync(dir, { recursive: true });
  registerWorkDir(dir);
  return dir;
}

async function stageData(cfg: SweepConfig, shmDir: string, groups: Set<string>): Promise<DataSets> {
  const data: DataSets = { tree: null, git: null };
  if (groups.has("tree")) {
    const started = performance.now();
    const tree = stageTree(cfg.treeSource, path.join(shmDir, "tree"), cfg.treeCapBytes);
    data.tree = tree;
    const capped = tree.skipped > 0 ? ` (capped at ${mb(cfg.treeCapBytes)} MB: ${tree.skipped} files left out)` : "";
    console.log(`  tree: ${tree.files} files in ${tree.dirs} directories, ${mb(tree.bytes)} MB${capped}, from ${tree.source} (symlinks followed),`);
    console.log(`        staged on tmpfs in ${((performance.now() - started) / 1000).toFixed(1)} s`);
  }
  if (groups.has("git")) {
    data.git = await stageGitRepo(cfg.gitSource, path.join(shmDir, "repo.git"));
    console.log(`  git: a bare copy of ${data.git.source} on tmpfs, ${data.git.files} files in HEAD`);
  }
  return data;
}

async function sweepMain(cfg: SweepConfig, workDir: string): Promise<number> {
  const started = performance.now();
  printMachine();
  const selectedWorkloads = workloads.filter((w) => cfg.workloads.includes(w.name));
  const selectedTargets = targets.filter((t) => cfg.targets.includes(t.name));
  const shmDir = makeShmDir(workDir);
  const p = cfg.params;
  console.log(`  ${cfg.runs} run(s)${cfg.quick ? " (--quick)" : ""}; work dir ${workDir}, tmpfs dir ${shmDir}`);
  console.log(`  fio: seq file ${size(p.seqBytes)}, rand file ${size(p.randBytes)} (random jobs capped at ${p.fioRuntimeCapSeconds} s), ${fioCommon.join(" ")}`);
  console.log(`  metadata: ${p.files} files; images ${size(cfg.imageBytes)}; MB = 10^6 bytes`);
  console.log(
    `  caches: ${isRoot ? "sync + drop_caches (echo 3) before every timed workload" : "NOT dropped (not root)"}; ` +
      "cold workloads also remount the target first (all but the in-memory ceiling)",
  );
  const data = await stageData(cfg, shmDir, new Set(selectedWorkloads.map((w) => w.group)));

  const env = { workDir, shmDir, imageBytes: cfg.imageBytes };
  const sweep: Sweep = { env, params: p, data, targets: selectedTargets, workloads: selectedWorkloads, runs: cfg.runs };
  const result: SweepResult = { samples: new Map(), skipped: new Map(), notApplicable: new Map(), errors: [] };
  console.log("\nTargets");
  let ready;
  try {
    ready = await prepareTargets(sweep, result);
    for (const t of ready) console.log(`  ${t.name.padEnd(20)} ${t.describe()}`);
    console.log(`  jobs per run: ${jobsOf(selectedWorkloads).map((j) => j.group).join(", ")}`);
    await runSweep(sweep, ready, result);
  } finally {
    await cleanup();
  }

  const shown = selectedTargets.map((t) => t.name).filter((n) => !result.skipped.has(n) || result.samples.has(n));
  console.log(`\nResults: median of ${cfg.runs} run(s) per target`);
  printWorkloadTables(result, selectedWorkloads, shown);
  const goals = evaluateGoals(result.samples, selectedWorkloads);
  printGoals(goals, selectedWorkloads, result.skipped);
  for (const [name, why] of result.skipped) console.log(`  skipped ${name}: ${why}`);
  if (result.errors.length > 0) {
    console.log(`\n${result.errors.length} error(s):`);
    for (const e of result.errors) console.log(`  ${e}`);
  }
  console.log(`\nload average at end: ${loadAverage()}; took ${((performance.now() - started) / 60_000).toFixed(1)} min`);
  console.log(`bench:fs summary ${summaryLine(result, selectedWorkloads, goals, cfg.runs, cfg.quick)}`);
  return result.errors.length > 0 ? 1 : 0;
}

async function compressMain(cfg: Parameters<typeof compressBench>[0], workDir: string): Promise<number> {
  printMachine();
  console.log(`  compression: grovefs mkfs --compress lz4 against --compress none; work dir ${workDir}`);
  console.log(`  ${cfg.runs} runs per target alternating (lz4 none, none lz4, ...), each on a fresh image of ${size(cfg.imageBytes)}`);
  console.log(`  caches: ${isRoot ? "sync + drop_caches (echo 3) before every timed phase" : "NOT dropped (not root)"}; remounted before each read phase`);
  console.log(`  fio ${fioCommon.join(" ")}; MB = 10^6 bytes\n`);
  let outcome;
  try {
    outcome = await compressBench(cfg, workDir);
  } finally {
    await cleanup();
  }
  outcome.report();
  console.log(`\nload average at end: ${loadAverage()}`);
  if (outcome.errors.length > 0) {
    console.log(`\n${outcome.errors.length} error(s):`);
    for (const e of outcome.errors) console.log(`  ${e}`);
    return 1;
  }
  return 0;
}

async function main(): Promise<number> {
  const cfg = parseConfig(process.argv.slice(2));
  if (cfg === "help") {
    console.log(usage);
    return 0;
  }
  setVerbose(cfg.verbose);
  const needsGit = cfg.mode === "sweep" && cfg.sweep.workloads.some((n) => n.startsWith("git-"));
  const missing = ensureCommands(["fio", "mountpoint", "umount", "sync", "tar", "cp", "diff", ...(needsGit ? ["git"] : [])], ["fio", ...(needsGit ? ["git"] : [])]);
  if (missing !== null) {
    console.error(`bench:fs: ${missing}`);
    return 1;
  }
  installSignalHandlers();
  const workDir = fs.mkdtempSync(path.join(os.tmpdir(), "bench_fs-"));
  registerWorkDir(workDir);
  return cfg.mode === "compress" ? compressMain(cfg.compress, workDir) : sweepMain(cfg.sweep, workDir);
}

main().then(
  (code) => process.exit(code),
  async (err: unknown) => {
    console.error(`bench:fs: ${errorText(err)}`);
    await cleanup();
    process.exit(1);
  },
);
