/**
 * The compression benchmark (bench:fs --compress): grovefs formatted with
 * `mkfs --compress lz4` ("lz4") against `mkfs --compress none` ("none"), both
 * through the real FUSE mount. Every measurement formats a fresh image and
 * mounts it; each is run --runs times (at least 3) alternating the two
 * targets in ABBA order (lz4 none, none lz4, lz4 none ...), so neither is
 * always first in a pair, and the table shows medians.
 *   tree     a real source tree: --tree (default the repo's node_modules),
 *            symlinks dereferenced, staged once into the temp dir and capped
 *            at --tree-size bytes of file data (files in sorted path order;
 *            one that would pass the cap is skipped). Timed: `cp -r` into
 *            the mount followed by `sync DIR`, an fsync of the copied
 *            directory, which makes grovefs write out and commit everything
 *            (`sync -f` does not reach a libfuse 2.9 filesystem); before it,
 *            caches are dropped and the staged tree is read once, so the
 *            source comes from the page cache for both targets. Then the
 *            target is unmounted, `grovefs info --json` gives the space used
 *            (minus what the freshly formatted image used), and after a
 *            remount and a cache drop `tar cf - | cat >/dev/null` reads the
 *            tree back (cat because tar skips reading files when its archive
 *            is /dev/null).
 *   random   fio writes a --size file of random bytes (`--refill_buffers`:
 *            fresh random contents for every write, so nothing compresses)
 *            in 1 MiB blocks with an fsync at the end; space as above; then a
 *            cold sequential read.
 * Goals: tree space none/lz4 ≥ 1.5×, tree write lz4/none ≥ 0.8×, random
 * write lz4/none ≥ 0.95×; the other ratios are shown without a goal.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { compressSync } from "lz4-napi";
import { aborting } from "./cleanup.js";
import type { CompressConfig } from "./config.js";
import { stageTree, type TreeSet } from "./data_set.js";
import { dropCaches } from "./host.js";
import { commandTimeoutMs, errorText, run, runOk, sh, tail, timed } from "./proc.js";
import { median } from "./stats.js";
import { grovefsInfo, grovefsMkfs, grovefsMount } from "./targets/grovefs.js";
import { expectBytes, fio } from "./workloads/fio.js";

const compressions = ["lz4", "none"] as const;
type Compression = (typeof compressions)[number];

const metrics = ["treeWrite", "treeRead", "treeSpace", "randomWrite", "randomRead", "randomSpace"] as const;
type Metric = (typeof metrics)[number];
type Samples = Record<Metric, number[]>;

const labels: Record<Metric, { label: string; unit: string }> = {
  treeWrite: { label: "tree write (cp -r + sync)", unit: "MB/s" },
  treeRead: { label: "tree read (tar, cold)", unit: "MB/s" },
  treeSpace: { label: "tree space on disk", unit: "MB" },
  randomWrite: { label: "random write (fio + fsync)", unit: "MB/s" },
  randomRead: { label: "random read (fio, cold)", unit: "MB/s" },
  randomSpace: { label: "random space on disk", unit: "MB" },
};
/** Throughput goals are lz4/none; space goals are none/lz4 (how many times smaller). */
const goals: Partial<Record<Metric, number>> = { treeWrite: 0.8, treeSpace: 1.5, randomWrite: 0.95 };

interface GroveInfo {
  inUse: boolean;
  usedBytes?: number;
  logicalUsedBytes?: number;
  compression?: string;
  compressed?: { extents: number; diskBytes: number; logicalBytes: number };
}

/** `grovefs info --json` of an unmounted image. */
async function groveInfo(img: string): Promise<GroveInfo & { usedBytes: number }> {
  const info = JSON.parse(await grovefsInfo(img)) as GroveInfo;
  if (info.inUse || info.usedBytes === undefined) throw new Error(`grovefs info ${img}: still in use after unmount`);
  return { ...info, usedBytes: info.usedBytes };
}

interface Context {
  cfg: CompressConfig;
  workDir: string;
  data: TreeSet;
  samples: Map<Compression, Samples>;
  /** What the lz4 volumes' info said about compressed extents, from the last run of each workload. */
  lastInfo: Map<string, GroveInfo>;
}

const mb = (bytes: number) => bytes / 1e6;

/** cp -r of the staged tree + fsync of the copy (grovefs commits everything on it); returns seconds. */
async function treeWrite(ctx: Context, mnt: string): Promise<number> {
  await dropCaches(ctx.workDir);
  // Read the source once so that both targets copy it from the page cache.
  await runOk(sh('tar cf - -C "$1" . | cat > /dev/null', ctx.data.dir), { timeoutMs: commandTimeoutMs });
  return timed(sh('cp -r "$1" "$2/tree" && sync "$2/tree"', ctx.data.dir, mnt));
}

/** Reads the whole tree back (tar into a pipe: tar skips the reads when writing to /dev/null itself), then checks it untimed. */
async function treeRead(ctx: Context, mnt: string): Promise<number> {
  const seconds = await timed(sh('tar cf - -C "$1" tree | cat > /dev/null', mnt));
  const diff = await run(["diff", "-rq", ctx.data.dir, path.join(mnt, "tree")], { timeoutMs: commandTimeoutMs });
  if (diff.code !== 0) throw new Error(`the tree read back differs from the source: ${tail(diff.stdout + diff.stderr)}`);
  return seconds;
}

/** One measurement: a fresh image, the write, space from `grovefs info`, a remount, the cold read. */
async function measure(ctx: Context, workload: "tree" | "random", compress: Compression, runIndex: number): Promise<void> {
  const dir = path.join(ctx.workDir, `${workload}-${compress}-${runIndex}`);
  fs.mkdirSync(dir);
  const mount = grovefsMount(`grovefs-${compress}`, dir, []);
  const figures: Partial<Record<Metric, number>> = {};
  let detail = "";
  try {
    await grovefsMkfs(mount.img, ctx.cfg.imageBytes, compress);
    const empty = (await groveInfo(mount.img)).usedBytes;
    await mount.mount();
    let bytes: number;
    if (workload === "tree") {
      bytes = ctx.data.bytes;
      figures.treeWrite = mb(bytes) / (await treeWrite(ctx, mount.mountpoint));
    } else {
      bytes = ctx.cfg.dataBytes;
      const file = path.join(mount.mountpoint, "random");
      await dropCaches(ctx.workDir);
      const w = await fio(ctx.workDir, "randomdata", [`--filename=${file}`, "--rw=write", "--bs=1M", `--size=${bytes}`, "--refill_buffers", "--end_fsync=1"]);
      expectBytes("random write", w.write.io_bytes, bytes);
      figures.randomWrite = w.write.bw_bytes / 1e6;
    }
    await mount.unmount();
    const info = await groveInfo(mount.img);
    figures[workload === "tree" ? "treeSpace" : "randomSpace"] = mb(info.usedBytes - empty);
    const c = info.compressed;
    if (c !== undefined) detail = ` (${c.extents} lz4 extents: ${mb(c.diskBytes).toFixed(1)} MB on disk for ${mb(c.logicalBytes).toFixed(1)} MB)`;
    ctx.lastInfo.set(`${workload}-${compress}`, { ...info, usedBytes: info.usedBytes - empty, logicalUsedBytes: (info.logicalUsedBytes ?? info.usedBytes) - empty });
    await mount.mount();
    await dropCaches(ctx.workDir);
    if (workload === "tree") figures.treeRead = mb(bytes) / (await treeRead(ctx, mount.mountpoint));
    else {
      const r = await fio(ctx.workDir, "randomread", [`--filename=${path.join(mount.mountpoint, "random")}`, "--rw=read", "--bs=1M", "--allow_file_create=0"]);
      expectBytes("random read", r.read.io_bytes, bytes);
      figures.randomRead = r.read.bw_bytes / 1e6;
    }
  } finally {
    await mount.teardown();
    fs.rmSync(dir, { recursive: true, force: true });
  }
  const samples = ctx.samples.get(compress)!;
  const shown: string[] = [];
  for (const metric of metrics) {
    const value = figures[metric];
    if (value === undefined) continue;
    samples[metric].push(value);
    shown.push(`${labels[metric].label} ${value.toFixed(1)} ${labels[metric].unit}`);
  }
  console.log(`  run ${runIndex} ${compress.padEnd(4)} ${shown.join(", ")}${detail}`);
}

function printReport(ctx: Context): void {
  const lz4 = ctx.samples.get("lz4")!;
  const none = ctx.samples.get("none")!;
  console.log(`\nCompression: medians of ${ctx.cfg.runs} runs per target (MB = 10^6 bytes; ratio: lz4/none for speed, none/lz4 for space)`);
  console.log(`  ${"measurement".padEnd(28)} ${"unit".padEnd(5)} ${"lz4".padStart(9)} ${"none".padStart(9)}   ratio`);
  for (const metric of metrics) {
    const a = median(lz4[metric]);
    const b = median(none[metric]);
    const space = metric.endsWith("Space");
    const r = a === undefined || b === undefined ? undefined : space ? (a > 0 ? b / a : undefined) : b > 0 ? a / b : undefined;
    const goal = goals[metric];
    const verdict = goal === undefined || r === undefined ? "" : Number(r.toFixed(2)) >= goal ? " ok" : " MISS";
    const ratioText = (r === undefined ? "—" : `${r.toFixed(2)}×${space ? " smaller" : ""}`) + (goal === undefined ? "" : ` (goal ≥${goal}${verdict})`);
    const cell = (v: number | undefined) => (v === undefined ? "—" : v.toFixed(1)).padStart(9);
    const { label, unit } = labels[metric];
    console.log(`  ${label.padEnd(28)} ${unit.padEnd(5)} ${cell(a)} ${cell(b)}   ${ratioText}`);
  }
  for (const workload of ["tree", "random"] as const) {
    const a = median(lz4[`${workload}Space`]);
    const b = median(none[`${workload}Space`]);
    if (a !== undefined && b !== undefined && a > 0) {
      console.log(`  ${workload} space: compressed ${a.toFixed(1)} MB vs uncompressed ${b.toFixed(1)} MB = ${(b / a).toFixed(2)}× smaller`);
    }
    const info = ctx.lastInfo.get(`${workload}-lz4`);
    if (info?.compressed !== undefined) {
      const c = info.compressed;
      console.log(
        `  ${workload} on lz4 (grovefs info, last run): ${c.extents} compressed extents, ${mb(c.diskBytes).toFixed(1)} MB on disk ` +
          `for ${mb(c.logicalBytes).toFixed(1)} MB; logical used ${mb(info.logicalUsedBytes ?? 0).toFixed(1)} MB`,
      );
    }
  }
}

/** The compression benchmark: both targets, each measurement `runs` times, alternating; prints the report and returns the errors. */
export async function compressBench(cfg: CompressConfig, workDir: string): Promise<{ errors: string[]; report: () => void }> {
  const errors: string[] = [];
  const started = performance.now();
  const data = stageTree(cfg.treeSource, path.join(workDir, "dataset"), cfg.treeCapBytes, (d) => Math.min(d.length, compressSync(d).length));
  const stageSeconds = (performance.now() - started) / 1000;
  console.log(
    `  data set: ${cfg.treeSource} (symlinks followed), ${data.files} files in ${data.dirs} directories, ` +
      `${mb(data.bytes).toFixed(1)} MB${data.skipped > 0 ? ` (capped at ${mb(cfg.treeCapBytes).toFixed(0)} MB: ${data.skipped} files left out)` : ""}; ` +
      `staged in ${stageSeconds.toFixed(1)} s`,
  );
  console.log(`  lz4-napi on each file of it: ${mb(data.lz4Bytes).toFixed(1)} MB (${(data.bytes / Math.max(1, data.lz4Bytes)).toFixed(2)}×, no block rounding)`);
  console.log(`  random file: ${mb(cfg.dataBytes).toFixed(1)} MB of fio --refill_buffers data\n`);
  const samples = new Map<Compression, Samples>();
  for (const c of compressions) samples.set(c, Object.fromEntries(metrics.map((m) => [m, [] as number[]])) as Samples);
  const ctx: Context = { cfg, workDir, data, samples, lastInfo: new Map() };
  for (const workload of ["tree", "random"] as const) {
    try {
      for (let runIndex = 1; runIndex <= cfg.runs; runIndex++) {
        // ABBA order: whichever target runs first in a pair (warmer or colder machine, page cache) is not always the same one.
        const order = runIndex % 2 === 1 ? compressions : [...compressions].reverse();
        for (const c of order) {
          if (aborting()) return { errors, report: () => printReport(ctx) };
          await measure(ctx, workload, c, runIndex);
        }
      }
    } catch (err) {
      if (aborting()) break;
      const msg = `${workload}: ${errorText(err)}`;
      errors.push(msg);
      console.log(`  error: ${msg} (skipping the rest of ${workload})`);
    }
  }
  return { errors, report: () => printReport(ctx) };
}
