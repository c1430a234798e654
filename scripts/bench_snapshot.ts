/**
 * Snapshot benchmark (issue 4): snapshot creation, snapshot deletion and fsck,
 * each against a baseline measured in the same run on this machine.
 *
 *   npm run bench:snapshot -- [--files N] [--small-files N] [--snapshots K]
 *                             [--fsck-runs R] [--delete-rounds D] [--seed S]
 *                             [--quick] [--keep]
 *
 * Everything runs through the library, in this process, on real image files
 * in a fresh directory under the OS temp dir (no FUSE, no root needed; as root
 * the page cache is dropped before the cold measurements). The tree is
 * scripts/bench_snapshot_tree.ts: N files of 0–16 KiB in directories of 1000.
 *
 *   create   Snapshot creation (`createSubvolume(name, {readOnly: true})`,
 *            which commits, snapshots and commits again) on a volume of
 *            --small-files (1k) and of --files (100k) files. Before each
 *            snapshot one file is rewritten and committed (untimed), so that
 *            every snapshot is of a new generation; the first snapshot is a
 *            warm-up, and the figure is the median of the next K. Ratio
 *            100k / 1k: O(1) snapshots make it about 1. The rewrite after
 *            each snapshot is timed too (with its commit): it pays what the
 *            snapshot deferred, copying the now-shared path down to the leaf.
 *   delete   On the 100k volume (the creation snapshots deleted first, so
 *            nothing else shares its blocks), D rounds of: snapshot S1, then
 *            rewrite 1% of the files (a contiguous range: one directory), so
 *            S1 shares all but those files' data and the few tree nodes
 *            holding them; delete S1. Then snapshot S2 and unlink every file
 *            of the live subvolume, so S2 shares nothing; delete S2; write
 *            the tree again for the next round. Each deletion is timed from
 *            `deleteSubvolume` through `finishDeletions` and a commit, after a
 *            close and reopen (and a dropped page cache as root), and reports
 *            the blocks it freed: freed(S1) / freed(S2) is the fraction of S1
 *            that was really unshared. Ratio time(S1) / time(S2): deletion
 *            that touches only unshared blocks makes it about that fraction.
 *   fsck     The same tree (names, sizes, bytes, directory shape) copied into
 *            an ext4 image of the same size with `mkfs.ext4 -d` from a
 *            directory under the temp dir. Timed, each run after a dropped page
 *            cache when root, runs interleaved: `e2fsck -fn IMG`; grovefs's
 *            checker in-process after one untimed warm-up run
 *            (`checkFilesystem(device, {verifyData: true})`,
 *            which also reads and checksums every data block, which e2fsck
 *            never reads, and again without verifyData); and the CLI
 *            `grovefs fsck -n IMG` once it exists (its time includes node and
 *            tsx start-up, printed separately). Also: grovefs's fsck (the CLI
 *            if it exists, else the in-process checker) with S1 present (two
 *            subvolumes sharing 99%), against a copy of the image made just
 *            before S1 was taken, runs alternating: 1 if the checker visits
 *            shared subtrees once, 2 if twice.
 *
 * Figures are medians over the runs (--snapshots, --fsck-runs,
 * --delete-rounds). --quick: --files 10000 --small-files 200 --snapshots 5
 * --fsck-runs 1 --delete-rounds 1 unless given. --keep leaves the temp
 * directory (images) in place.
 *
 * It is a benchmark, not a test: a ratio off its goal does not fail the run.
 * A measurement that cannot run (the subvolume API not implemented yet) is
 * reported as not measured and the run exits 1 after the table; missing
 * e2fsprogs skips the e2fsck rows with a message.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { parseArgs } from "node:util";
import { FileDevice, GroveError, blockSizeBytes } from "../kvstore/index.js";
import { GroveFs, checkFilesystem } from "../fs/index.js";
import {
  TreeSpec,
  filesPerDir,
  makeTree,
  maxFileBytes,
  populateDirectory,
  populateGrove,
  removeAllGrove,
  rewriteGrove,
  writeGroveFile,
} from "./bench_snapshot_tree.js";
import {
  E2fsprogs,
  canDropCaches,
  copySparse,
  dropCaches,
  findE2fsprogs,
  grovefsFsckCommand,
  grovefsStartupMs,
  median,
  mkfsExt4Args,
  nowMs,
  runMkfsExt4,
  timeChild,
  timed,
} from "./bench_snapshot_tools.js";

const MiB = 1024 * 1024;
/** Share of the files rewritten after S1 is taken. */
const unsharedFraction = 0.01;

interface Config {
  files: number;
  smallFiles: number;
  snapshots: number;
  fsckRuns: number;
  deletionRounds: number;
  seed: number;
  keep: boolean;
  quick: boolean;
}

function parseConfig(): Config {
  const { values } = parseArgs({
    options: {
      files: { type: "string" },
      "small-files": { type: "string" },
      snapshots: { type: "string" },
      "fsck-runs": { type: "string" },
      "delete-rounds": { type: "string" },
      seed: { type: "string", default: "1" },
      quick: { type: "boolean", default: false },
      keep: { type: "boolean", default: false },
      help: { type: "boolean", default: false },
    },
    strict: true,
  });
  if (values.help) {
    console.log(
      "usage: npm run bench:snapshot -- [--files N] [--small-files N] [--snapshots K] [--fsck-runs R]\n" +
        "                                 [--delete-rounds D] [--seed S] [--quick] [--keep]\n" +
        "defaults: --files 100000 --small-files 1000 --snapshots 15 --fsck-runs 5 --delete-rounds 3\n" +
        "--quick:  --files 10000 --small-files 200 --snapshots 5 --fsck-runs 1 --delete-rounds 1 unless given",
    );
    process.exit(0);
  }
  const quick = values.quick!;
  const int = (name: string, text: string | undefined, fallback: number, min: number): number => {
    if (text === undefined) return fallback;
    const n = Number(text);
    if (!Number.isSafeInteger(n) || n < min) throw new Error(`--${name} must be an integer >= ${min}, got "${text}"`);
    return n;
  };
  const files = int("files", values.files, quick ? 10_000 : 100_000, 100);
  return {
    files,
    smallFiles: Math.min(files, int("small-files", values["small-files"], quick ? 200 : 1000, 1)),
    snapshots: int("snapshots", values.snapshots, quick ? 5 : 15, 1),
    fsckRuns: int("fsck-runs", values["fsck-runs"], quick ? 1 : 5, 1),
    deletionRounds: int("delete-rounds", values["delete-rounds"], quick ? 1 : 3, 1),
    seed: int("seed", values.seed, 1, 0),
    keep: values.keep!,
    quick,
  };
}

// ---------------------------------------------------------------- logging and formatting

const startMs = nowMs();

function log(message: string): void {
  const s = ((nowMs() - startMs) / 1000).toFixed(1).padStart(6);
  console.log(`[${s}s] ${message}`);
}

function fmtMs(ms: number): string {
  if (!Number.isFinite(ms)) return "-";
  if (ms >= 10_000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms >= 1000) return `${(ms / 1000).toFixed(2)} s`;
  if (ms >= 100) return `${ms.toFixed(0)} ms`;
  if (ms >= 10) return `${ms.toFixed(1)} ms`;
  return `${ms.toFixed(2)} ms`;
}

function fmtRatio(r: number): string {
  if (!Number.isFinite(r)) return "-";
  return r >= 10 ? `${r.toFixed(1)}x` : r >= 0.1 ? `${r.toFixed(2)}x` : `${r.toFixed(3)}x`;
}

function fmtMB(bytes: number): string {
  return `${(bytes / 1e6).toFixed(1)} MB`;
}

/** "median 4.1 ms (min 3.9, max 6.0, n=9)". */
function fmtSamples(samples: number[]): string {
  if (samples.length === 1) return fmtMs(samples[0]);
  const lo = Math.min(...samples);
  const hi = Math.max(...samples);
  return `median ${fmtMs(median(samples))} (min ${fmtMs(lo)}, max ${fmtMs(hi)}, n=${samples.length})`;
}

/** Images get room for the tree twice (snapshot plus rewrites) and some slack; ext4 gets the same size. */
function imageBytesFor(tree: TreeSpec): number {
  const quantum = 256 * MiB;
  return Math.ceil((2 * tree.totalBytes + 2 * quantum) / quantum) * quantum;
}

// ---------------------------------------------------------------- an image with a GroveFs on it

class BenchVolume {
  fs: GroveFs | null = null;

  private constructor(readonly image: string) {}

  static create(image: string, sizeBytes: number): BenchVolume {
    GroveFs.format(FileDevice.createImage(image, sizeBytes));
    const volume = new BenchVolume(image);
    volume.open();
    return volume;
  }

  open(): GroveFs {
    if (this.fs === null) this.fs = GroveFs.open(FileDevice.open(this.image));
    return this.fs;
  }

  close(): void {
    this.fs?.close();
    this.fs = null;
  }

  /** Close, drop the page cache (as root), open again: the next operation starts with every cache cold. */
  reopenCold(drop: boolean): GroveFs {
    this.close();
    dropCaches(drop);
    return this.open();
  }

  get live(): GroveFs {
    if (this.fs === null) throw new Error(`${this.image} is not open`);
    return this.fs;
  }

  /** Blocks in use in the last commit (pending frees count as free). */
  usedBlocks(): number {
    return this.live.space.usage().usedBlocks;
  }
}

// ---------------------------------------------------------------- measurements

/** A measurement that could not run, and why. */
interface NotMeasured {
  notMeasured: string;
}

function isNotMeasured(value: unknown): value is NotMeasured {
  return typeof value === "object" && value !== null && "notMeasured" in value;
}

/** Runs a measurement; EOPNOTSUPP (an API not implemented yet) makes it NotMeasured instead of an error. */
function unlessUnsupported<T>(what: string, body: () => T): T | NotMeasured {
  try {
    return body();
  } catch (error) {
    if (error instanceof GroveError && error.code === "EOPNOTSUPP") {
      log(`${what}: not measured: ${error.detail}: ${error.message}`);
      return { notMeasured: `${error.detail} (${error.message})` };
    }
    throw error;
  }
}

interface CreateResult {
  files: number;
  warmupMs: number;
  samples: number[];
  /**
   * The one-file rewrite and commit that follows each snapshot: where the
   * work an O(1) snapshot defers is paid (copying the shared path to the leaf).
   */
  firstWrite: number[];
  names: string[];
}

/** One warm-up snapshot, then `count` timed ones, each after a one-file rewrite and commit. */
function measureCreate(volume: BenchVolume, tree: TreeSpec, count: number, prefix: string): CreateResult {
  const fs = volume.live;
  const names: string[] = [];
  const times: number[] = [];
  const firstWrite: number[] = [];
  for (let k = 0; k <= count; k++) {
    const write = timed(() => {
      writeGroveFile(fs, tree, (k * 7919) % tree.files, k + 1);
      fs.sync();
    });
    if (k > 0) firstWrite.push(write.ms);
    const name = `${prefix}${k}`;
    times.push(timed(() => fs.createSubvolume(name, { readOnly: true })).ms);
    names.push(name);
  }
  log(`  ${tree.files} files: warm-up ${fmtMs(times[0])}, then ${fmtSamples(times.slice(1))}`);
  log(`  ${tree.files} files: first write + commit after a snapshot: ${fmtSamples(firstWrite)}`);
  return { files: tree.files, warmupMs: times[0], samples: times.slice(1), firstWrite, names };
}

interface DeleteResult {
  name: string;
  ms: number;
  deleteMs: number;
  finishMs: number;
  freedBlocks: number;
  usedBeforeBlocks: number;
}

/** Deletes `name` and times it to completion: deleteSubvolume, finishDeletions, commit. */
function timeDeletion(volume: BenchVolume, name: string, drop: boolean): DeleteResult {
  const fs = volume.reopenCold(drop);
  const usedBeforeBlocks = volume.usedBlocks();
  const del = timed(() => fs.deleteSubvolume(name));
  const finish = timed(() => {
    fs.finishDeletions();
    fs.sync();
  });
  const freedBlocks = usedBeforeBlocks - volume.usedBlocks();
  const result = { name, ms: del.ms + finish.ms, deleteMs: del.ms, finishMs: finish.ms, freedBlocks, usedBeforeBlocks };
  log(
    `  deleted ${name} in ${fmtMs(result.ms)} (deleteSubvolume ${fmtMs(del.ms)}, finishDeletions + commit ` +
      `${fmtMs(finish.ms)}), freed ${freedBlocks} of ${usedBeforeBlocks} used blocks; ` +
      `pending deletions left: ${fs.pendingDeletions()}`,
  );
  return result;
}

interface DeletionResult {
  changedFiles: number;
  /** One deletion of S1 (shares all but `changedFiles` files) and of S2 (shares nothing) per round. */
  shared: DeleteResult[];
  alone: DeleteResult[];
  /**
   * First round: grovefs fsck times with S1 present (after the rewrite), and on
   * a copy of the image made just before S1 was taken; runs alternate between the two.
   */
  fsckWithoutSnapshot: number[];
  fsckWithSnapshot: number[];
}

interface DeletionPlan {
  rounds: number;
  drop: boolean;
  fsckRuns: number;
  fsckOnce: (image: string) => number;
}

/**
 * Each round starts with the tree in the live subvolume: S1, rewrite 1% of
 * the files (another directory each round), delete S1; then S2, unlink
 * everything, delete S2; then the tree is written again for the next round.
 */
function measureDeletion(volume: BenchVolume, tree: TreeSpec, plan: DeletionPlan): DeletionResult {
  const changedFiles = Math.max(1, Math.round(tree.files * unsharedFraction));
  const result: DeletionResult = { changedFiles, shared: [], alone: [], fsckWithoutSnapshot: [], fsckWithSnapshot: [] };
  for (let round = 0; round < plan.rounds; round++) {
    log(`  round ${round + 1} of ${plan.rounds}:`);
    if (round > 0) {
      const t = timed(() => populateGrove(volume.live, tree));
      log(`  wrote the ${tree.files} files again in ${fmtMs(t.ms)}`);
    }
    const s1 = `bench-s1-${round}`;
    const withoutCopy = round === 0 ? copyImage(volume, `${volume.image}.no-snapshot`) : null;
    volume.live.createSubvolume(s1, { readOnly: true });
    const from = (round * changedFiles) % (tree.files - changedFiles + 1);
    log(`  took ${s1}, rewriting files ${from}..${from + changedFiles - 1} (${unsharedFraction * 100}%) in the live subvolume`);
    rewriteGrove(volume.live, tree, from, from + changedFiles, 1000 + round);
    if (withoutCopy !== null) fsckWithAndWithout(volume, withoutCopy, plan, result);
    result.shared.push(timeDeletion(volume, s1, plan.drop));

    const s2 = `bench-s2-${round}`;
    volume.live.createSubvolume(s2, { readOnly: true });
    const unlink = timed(() => removeAllGrove(volume.live, tree));
    log(`  took ${s2}, unlinked all ${tree.files} files of the live subvolume in ${fmtMs(unlink.ms)}`);
    result.alone.push(timeDeletion(volume, s2, plan.drop));
  }
  return result;
}

/** A sparse copy of the closed volume's image, as it is now. */
function copyImage(volume: BenchVolume, copy: string): string {
  volume.close();
  const t = timed(() => copySparse(volume.image, copy));
  log(`  copied the image (no snapshot yet) in ${fmtMs(t.ms)}, for the fsck comparison`);
  volume.open();
  return copy;
}

/** grovefs fsck on the image (S1 present) and on the copy without it, alternating; then the copy goes. */
function fsckWithAndWithout(volume: BenchVolume, withoutCopy: string, plan: DeletionPlan, result: DeletionResult): void {
  volume.close();
  for (let r = 0; r < plan.fsckRuns; r++) {
    result.fsckWithoutSnapshot.push(plan.fsckOnce(withoutCopy));
    result.fsckWithSnapshot.push(plan.fsckOnce(volume.image));
  }
  fs.rmSync(withoutCopy, { force: true });
  log(`  grovefs fsck without a snapshot: ${fmtSamples(result.fsckWithoutSnapshot)}`);
  log(`  grovefs fsck with S1 present: ${fmtSamples(result.fsckWithSnapshot)}`);
  volume.open();
}

/** Deletes the creation benchmark's snapshots (untimed for the table; logged). */
function deleteAll(volume: BenchVolume, names: string[]): void {
  const t = timed(() => {
    for (const name of names) volume.live.deleteSubvolume(name);
    volume.live.finishDeletions();
    volume.live.sync();
  });
  log(`  deleted the ${names.length} creation snapshots (each shares all but one file) in ${fmtMs(t.ms)}`);
}

// ---------------------------------------------------------------- fsck

interface FsckResult {
  e2fsck: number[] | NotMeasured;
  grovefsData: number[];
  grovefsMeta: number[];
  grovefsCli: number[] | NotMeasured;
  /** The grovefs fsck CLI command (without the image), or null while there is none. */
  cli: string[] | null;
  cliStartupMs: number;
  /** How the ext4 image was made (empty if it was not). */
  ext4: string;
  problems: string[];
}

/** grovefs's checker in-process on a closed image; returns ms, adding any problem found to `problems`. */
function checkInProcess(image: string, verifyData: boolean, problems: string[]): number {
  const device = FileDevice.open(image, { readOnly: true });
  try {
    const t = timed(() => checkFilesystem(device, { verifyData }));
    for (const p of t.result.problems.slice(0, 5)) problems.push(`grovefs checker: ${p}`);
    return t.ms;
  } finally {
    device.close();
  }
}

function timeFsckChild(name: string, command: string, args: string[], problems: string[]): number {
  const t = timeChild(command, args);
  if (t.status !== 0) problems.push(`${name} exited ${t.status}: ${t.output.trim().split("\n").slice(-3).join(" | ")}`);
  return t.ms;
}

/** Copies the tree into an ext4 image through a directory under `tmp`; returns the mkfs arguments. */
function buildExt4(tools: E2fsprogs, tmp: string, tree: TreeSpec, imageBytes: number): { args: string[]; ms: number } {
  const source = path.join(tmp, "ext4-source");
  const image = path.join(tmp, "ext4.img");
  const start = nowMs();
  fs.mkdirSync(source);
  const args = mkfsExt4Args(image, source, imageBytes, tree.files + tree.dirs + 64);
  try {
    populateDirectory(source, tree);
    runMkfsExt4(tools, args);
  } finally {
    fs.rmSync(source, { recursive: true, force: true });
  }
  const ms = nowMs() - start;
  log(`  ext4 image built in ${fmtMs(ms)}: mkfs.ext4 ${args.join(" ")}`);
  return { args, ms };
}

function measureFsck(cfg: Config, tmp: string, image: string, tree: TreeSpec, imageBytes: number, drop: boolean): FsckResult {
  const cli = grovefsFsckCommand();
  const result: FsckResult = {
    e2fsck: [],
    grovefsData: [],
    grovefsMeta: [],
    grovefsCli: cli === null ? { notMeasured: "no `grovefs fsck` command yet (fsck --help shows no fsck usage)" } : [],
    cli,
    cliStartupMs: median([0, 1, 2].map(() => grovefsStartupMs())),
    ext4: "",
    problems: [],
  };
  const ext4 = prepareExt4(tmp, tree, imageBytes, result);
  // One untimed run first, so that the in-process figures are of JIT-compiled code, as in a long-lived checker.
  checkInProcess(image, true, []);
  for (let r = 0; r < cfg.fsckRuns; r++) fsckRound(result, image, ext4, drop);
  const show = (name: string, v: number[] | NotMeasured) => log(`  ${name}: ${describe(v)}`);
  show("e2fsck -fn", result.e2fsck);
  show("grovefs checkFilesystem verifyData", result.grovefsData);
  show("grovefs checkFilesystem metadata only", result.grovefsMeta);
  show("grovefs fsck -n (CLI)", result.grovefsCli);
  for (const p of result.problems) log(`  PROBLEM: ${p}`);
  return result;
}

/** Builds the ext4 image; on failure (no e2fsprogs, mkfs error) marks e2fsck not measured and returns null. */
function prepareExt4(tmp: string, tree: TreeSpec, imageBytes: number, result: FsckResult): { image: string; e2fsck: string } | null {
  const tools = findE2fsprogs();
  try {
    if (typeof tools === "string") throw new Error(tools);
    const built = buildExt4(tools, tmp, tree, imageBytes);
    result.ext4 = `${tools.version}; mkfs.ext4 ${built.args.join(" ")} (tree copied and image built in ${fmtMs(built.ms)})`;
    return { image: path.join(tmp, "ext4.img"), e2fsck: tools.e2fsck };
  } catch (error) {
    const why = (error as Error).message;
    log(`  e2fsck rows skipped: ${why}`);
    result.e2fsck = { notMeasured: why };
    return null;
  }
}

/** One run of each checker, interleaved, each after a dropped page cache (as root). */
function fsckRound(result: FsckResult, image: string, ext4: { image: string; e2fsck: string } | null, drop: boolean): void {
  const problems = result.problems;
  if (ext4 !== null && Array.isArray(result.e2fsck)) {
    dropCaches(drop);
    result.e2fsck.push(timeFsckChild("e2fsck -fn", ext4.e2fsck, ["-fn", ext4.image], problems));
  }
  dropCaches(drop);
  result.grovefsData.push(checkInProcess(image, true, problems));
  dropCaches(drop);
  result.grovefsMeta.push(checkInProcess(image, false, problems));
  if (result.cli !== null && Array.isArray(result.grovefsCli)) {
    dropCaches(drop);
    const cli = result.cli;
    result.grovefsCli.push(timeFsckChild("grovefs fsck -n", cli[0], [...cli.slice(1), image], problems));
  }
}

// ---------------------------------------------------------------- report

interface Row {
  measurement: string;
  grovefs: string;
  baseline: string;
  ratio: string;
  goal: string;
}

function row(measurement: string, value: number, baselineName: string, baseline: number, goal: string): Row {
  return {
    measurement,
    grovefs: fmtMs(value),
    baseline: `${fmtMs(baseline)} ${baselineName}`,
    ratio: fmtRatio(value / baseline),
    goal,
  };
}

function missingRow(measurement: string, why: string): Row {
  return { measurement, grovefs: "not measured", baseline: why, ratio: "-", goal: "" };
}

function printTable(rows: Row[]): void {
  const cols: Array<keyof Row> = ["measurement", "grovefs", "baseline", "ratio", "goal"];
  const width = (c: keyof Row) => Math.max(c.length, ...rows.map((r) => r[c].length));
  const line = (r: Row) => cols.map((c) => r[c].padEnd(width(c))).join("  ").trimEnd();
  const header: Row = { measurement: "measurement", grovefs: "grovefs", baseline: "baseline", ratio: "ratio", goal: "goal" };
  console.log(line(header));
  console.log(cols.map((c) => "-".repeat(width(c))).join("  "));
  for (const r of rows) console.log(line(r));
}

interface Results {
  small: CreateResult | NotMeasured;
  large: CreateResult | NotMeasured;
  deletion: DeletionResult | NotMeasured;
  fsck: FsckResult;
}

function createRows(res: Results, cfg: Config): Row[] {
  const label = `snapshot create, ${cfg.files} files vs ${cfg.smallFiles} (median of ${cfg.snapshots})`;
  if (isNotMeasured(res.small) || isNotMeasured(res.large)) {
    return [missingRow(label, (isNotMeasured(res.small) ? res.small : (res.large as NotMeasured)).notMeasured)];
  }
  const small = `(${cfg.smallFiles} files)`;
  const writeLabel = `  then: rewrite 1 file + commit, ${cfg.files} vs ${cfg.smallFiles} files`;
  return [
    row(label, median(res.large.samples), small, median(res.small.samples), "about 1 (O(1))"),
    row(writeLabel, median(res.large.firstWrite), small, median(res.small.firstWrite), "small (a path copy)"),
  ];
}

function deletionRows(res: Results): Row[] {
  const label = "delete snapshot sharing 99% (S1) vs sharing none (S2)";
  if (isNotMeasured(res.deletion)) return [missingRow(label, res.deletion.notMeasured)];
  const d = res.deletion;
  const ms = (xs: DeleteResult[]) => median(xs.map((x) => x.ms));
  return [row(label, ms(d.shared), "(S2)", ms(d.alone), `about ${fmtRatio(unsharedShare(d))} (S1 freed / S2 freed blocks)`)];
}

/** The share of S1's blocks that deleting it freed, against S2 (which shares nothing). */
function unsharedShare(d: DeletionResult): number {
  const freed = (xs: DeleteResult[]) => xs.reduce((sum, x) => sum + x.freedBlocks, 0);
  return freed(d.shared) / freed(d.alone);
}

function fsckRows(res: Results): Row[] {
  const f = res.fsck;
  const rows: Row[] = [];
  const e2 = isNotMeasured(f.e2fsck) ? NaN : median(f.e2fsck);
  const vs = (label: string, samples: number[] | NotMeasured) => {
    if (isNotMeasured(samples)) rows.push(missingRow(label, samples.notMeasured));
    else if (isNotMeasured(f.e2fsck)) rows.push(missingRow(label, f.e2fsck.notMeasured));
    else rows.push(row(label, median(samples), "(e2fsck -fn)", e2, ""));
  };
  vs("fsck: grovefs fsck -n (CLI, with start-up) vs e2fsck -fn", f.grovefsCli);
  vs("fsck: checkFilesystem verifyData (in-process) vs e2fsck", f.grovefsData);
  vs("fsck: checkFilesystem metadata only vs e2fsck", f.grovefsMeta);
  if (!isNotMeasured(res.deletion) && res.deletion.fsckWithSnapshot.length > 0) {
    const d = res.deletion;
    const which = isNotMeasured(f.grovefsCli) ? "checkFilesystem verifyData" : "fsck -n CLI";
    const label = `fsck with S1 (99% shared) vs just before S1 (${which})`;
    const goal = "1 (shared parts checked once) to 2 (twice)";
    rows.push(row(label, median(d.fsckWithSnapshot), "(no snapshot)", median(d.fsckWithoutSnapshot), goal));
  }
  return rows;
}

function describe(samples: number[] | NotMeasured): string {
  return isNotMeasured(samples) ? samples.notMeasured : fmtSamples(samples);
}

function printReport(res: Results, cfg: Config): void {
  console.log("");
  printTable([...createRows(res, cfg), ...deletionRows(res), ...fsckRows(res)]);
  console.log("");
  for (const c of [res.small, res.large]) {
    if (isNotMeasured(c)) continue;
    console.log(`create ${c.files} files: ${fmtSamples(c.samples)}; warm-up ${fmtMs(c.warmupMs)}`);
    console.log(`  then rewrite 1 file + commit: ${fmtSamples(c.firstWrite)}`);
  }
  if (!isNotMeasured(res.deletion)) {
    const d = res.deletion;
    for (const x of [...d.shared, ...d.alone]) {
      console.log(
        `delete ${x.name}: ${fmtMs(x.ms)} (deleteSubvolume ${fmtMs(x.deleteMs)} + finishDeletions and commit ` +
          `${fmtMs(x.finishMs)}); freed ${x.freedBlocks} blocks (${fmtMB(x.freedBlocks * blockSizeBytes)})`,
      );
    }
    const share = fmtRatio(unsharedShare(d));
    console.log(`S1: ${d.changedFiles} files rewritten after it was taken; S1 freed ${share} of what S2 freed`);
  }
  const f = res.fsck;
  const show = (name: string, v: number[] | NotMeasured) => console.log(`${name}: ${describe(v)}`);
  show("e2fsck -fn", f.e2fsck);
  show("grovefs fsck -n (CLI)", f.grovefsCli);
  show("grovefs checkFilesystem verifyData", f.grovefsData);
  show("grovefs checkFilesystem metadata only", f.grovefsMeta);
  if (!isNotMeasured(res.deletion)) {
    show("grovefs fsck on a copy made just before S1", res.deletion.fsckWithoutSnapshot);
    show("grovefs fsck with S1 present", res.deletion.fsckWithSnapshot);
  }
  console.log(`grovefs CLI start-up (grovefs --version, median of 3): ${fmtMs(f.cliStartupMs)}`);
  if (f.ext4 !== "") console.log(`ext4: ${f.ext4}`);
  for (const p of f.problems) console.log(`PROBLEM: ${p}`);
}

// ---------------------------------------------------------------- main

function printHeader(cfg: Config, tree: TreeSpec, imageBytes: number, drop: boolean, tmp: string): void {
  const cpus = os.cpus();
  console.log("grovefs snapshot benchmark (issue 4): snapshot create, snapshot delete, fsck");
  const gib = (os.totalmem() / 1024 ** 3).toFixed(0);
  const load = os.loadavg().map((l) => l.toFixed(2)).join(" ");
  console.log(
    `machine: ${cpus.length} x ${cpus[0]?.model ?? "unknown CPU"}, ${gib} GiB RAM, ` +
      `Linux ${os.release()}, node ${process.version}, load average ${load}`,
  );
  console.log(
    `parameters: ${cfg.quick ? "--quick, " : ""}files ${cfg.smallFiles} and ${cfg.files} ` +
      `(sizes uniform 0-${maxFileBytes / 1024} KiB, ${filesPerDir} a directory, /dNNNN/fNNNNNN; ` +
      `${cfg.files} files = ${fmtMB(tree.totalBytes)} in ${tree.dirs} dirs), seed ${cfg.seed},\n` +
      `            ${cfg.snapshots} timed snapshots a size after 1 warm-up, ${cfg.fsckRuns} fsck run(s) each, ` +
      `${cfg.deletionRounds} deletion round(s), ${unsharedFraction * 100}% of files rewritten after S1,\n` +
      `            images ${fmtMB(imageBytes)} (sparse) in ${tmp} (removed at the end; a Ctrl-C leaves it)`,
  );
  const caches = drop
    ? "page cache dropped (sync; echo 3 > drop_caches) before each fsck run and timed deletion"
    : "warm (not root: cannot drop the page cache)";
  console.log(`caches: ${caches}`);
  console.log(
    "noise: wall-clock times on a small shared machine (2 cores here) vary between runs, often by 20% or more and most\n" +
      "       on the millisecond figures (a snapshot is a couple of commits, so fdatasync latency dominates). Read the\n" +
      "       ratios, each taken within this one run, rather than the absolute figures, and repeat a run before\n" +
      "       trusting a difference under about 1.5x.",
  );
  console.log("");
}

function runSmall(cfg: Config, tmp: string): CreateResult | NotMeasured {
  const tree = makeTree(cfg.smallFiles, cfg.seed);
  const volume = BenchVolume.create(path.join(tmp, "small.img"), imageBytesFor(tree));
  try {
    const t = timed(() => populateGrove(volume.live, tree));
    log(`populated ${tree.files} files (${fmtMB(tree.totalBytes)}) into grovefs in ${fmtMs(t.ms)}; snapshot creation:`);
    return unlessUnsupported("snapshot create", () => measureCreate(volume, tree, cfg.snapshots, "bench-small-"));
  } finally {
    volume.close();
    fs.rmSync(volume.image, { force: true });
  }
}

function runLarge(cfg: Config, tmp: string, tree: TreeSpec, imageBytes: number, drop: boolean): Omit<Results, "small"> {
  const volume = BenchVolume.create(path.join(tmp, "large.img"), imageBytes);
  const freshBlocks = volume.usedBlocks();
  const t = timed(() => populateGrove(volume.live, tree));
  const used = volume.usedBlocks();
  log(`populated ${tree.files} files (${fmtMB(tree.totalBytes)}) into grovefs in ${fmtMs(t.ms)}; ${used} blocks used`);
  volume.close();
  log("fsck on the same tree:");
  const fsckResult = measureFsck(cfg, tmp, volume.image, tree, imageBytes, drop);
  const cli = fsckResult.cli;
  const fsckOnce = (image: string) => {
    dropCaches(drop);
    if (cli === null) return checkInProcess(image, true, fsckResult.problems);
    return timeFsckChild("grovefs fsck -n", cli[0], [...cli.slice(1), image], fsckResult.problems);
  };
  volume.open();
  log("snapshot creation:");
  const large = unlessUnsupported("snapshot create", () => {
    const r = measureCreate(volume, tree, cfg.snapshots, "bench-large-");
    deleteAll(volume, r.names);
    return r;
  });
  log("snapshot deletion:");
  const plan: DeletionPlan = { rounds: cfg.deletionRounds, drop, fsckRuns: cfg.fsckRuns, fsckOnce };
  const deletion = isNotMeasured(large)
    ? large
    : unlessUnsupported("snapshot delete", () => measureDeletion(volume, tree, plan));
  log(`used blocks now ${volume.usedBlocks()} (a freshly formatted volume: ${freshBlocks})`);
  volume.close();
  finalCheck(volume.image, fsckResult.problems);
  return { large, deletion, fsck: fsckResult };
}

function finalCheck(image: string, problems: string[]): void {
  const before = problems.length;
  const ms = checkInProcess(image, true, problems);
  const verdict = problems.length === before ? "clean" : "PROBLEMS";
  log(`final checkFilesystem (verifyData) of the large image: ${verdict} (${fmtMs(ms)})`);
}

function main(): void {
  const cfg = parseConfig();
  const tree = makeTree(cfg.files, cfg.seed);
  const imageBytes = imageBytesFor(tree);
  const drop = canDropCaches();
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "grovefs-bench-snapshot-"));
  const cleanup = () => {
    if (!cfg.keep) fs.rmSync(tmp, { recursive: true, force: true });
  };
  try {
    printHeader(cfg, tree, imageBytes, drop, tmp);
    const small = runSmall(cfg, tmp);
    const rest = runLarge(cfg, tmp, tree, imageBytes, drop);
    const results: Results = { small, ...rest };
    printReport(results, cfg);
    if (results.fsck.problems.length > 0) {
      console.log(`\nfailed: ${results.fsck.problems.length} problem(s) found by a checker (listed above)`);
      process.exitCode = 1;
    }
    const missing = [results.small, results.large, results.deletion].filter(isNotMeasured);
    if (missing.length > 0) {
      console.log(`\nincomplete: ${missing.length} snapshot measurement(s) not measured (${missing[0].notMeasured})`);
      process.exitCode = 1;
    }
  } finally {
    cleanup();
    if (cfg.keep) console.log(`kept ${tmp}`);
  }
}

main();
