/**
 * Scale benchmark (issue 16): how grovefs's per-operation cost, memory and
 * start-up grow with the number of files, the number of snapshots and the
 * size of the volume.
 *
 *   npm run bench:scale -- [--files N] [--snapshots N] [--snapshot-files N]
 *                          [--sizes A,B,...] [--shapes tree,flat] [--skip files,snapshots,volume]
 *                          [--no-mount] [--keep] [--seed S] [--fragment N]
 *
 * Defaults: --files 1000000, --snapshots 10000, --snapshot-files 100000. A
 * smoke run: `--files 20000 --snapshots 50 --snapshot-files 2000`.
 *
 * Every measurement that the kernel does not change runs in-process through
 * the library (GroveFs's inode API, as the FUSE bridge calls it), each size in
 * its own child process, so that its peak RSS (getrusage maxrss, which is
 * what a mount daemon holding that volume would need) is its own. fsck runs
 * as the CLI (`grovefs fsck -n`) under /usr/bin/time for its time and peak
 * RSS. Mount time, the daemon's RSS and `.snapshots` readdir use a real mount
 * (as root with /dev/fuse; --no-mount skips them).
 *
 *   files      For each size S in --sizes (default 10k, 100k, 1M capped at
 *              --files): a fresh sparse image; S empty files in a tree
 *              /aNN/bNN/fNNN (100 entries per directory at every level,
 *              depth 3), then the same S files in one directory. Rates are
 *              per operation over the last 10k operations of each phase, so
 *              that the figure at 1M is the cost when the volume already
 *              holds 1M files: create (createAt + release, maintenance every
 *              256 as the mount's timer), stat (lookup of 10k random names
 *              after a close and reopen: cold node cache), readdir (every
 *              entry of the volume's directories, or of the first 100k
 *              entries), unlink (10k random names). Then fsck time and RSS,
 *              mount time and the daemon's RSS after statting 10k files.
 *   snapshots  A subvolume of --snapshot-files files; --snapshots times:
 *              rewrite one 4 KiB file, then take a read-only snapshot
 *              (createSubvolume, which commits). Snapshot create time is the
 *              median of 10 creations ending at 10, 1k, 10k, ... snapshots;
 *              at each such count: listSubvolumes time, RSS, space used.
 *              Then mount time, `.snapshots` readdir time through the mount,
 *              `grovefs snapshot list` time, fsck time and RSS; then deleting
 *              the 1,000 oldest snapshots: time (through finishDeletions and a
 *              commit) and space returned.
 *   volume     A 16 TiB sparse image: mkfs time (CLI), open time, a file
 *              written at 5 TiB (a sparse file larger than 4 TiB) read back,
 *              fsck time and RSS.
 *   fragment   Only with --fragment N (add --skip files,snapshots,volume to
 *              run it alone): N one-block files, then every other one deleted,
 *              so that free space is N/2 one-block holes. Then the
 *              allocator's in-memory free-extent set (alloc/extent_set.ts,
 *              loaded whole by FreeSpace at open): its extents, and the heap
 *              it holds, measured as the heap growth of building the same set
 *              after a gc (the worker runs with --expose-gc); the open time
 *              and the worker's peak RSS.
 *
 * The last line is `scale: create=R stat=R unlink=R rss_max_mib=N
 * snapshot_create=R`: per-operation cost at the largest size over the cost at
 * 10k files (goal ≤ 2: logarithmic growth), the peak RSS of any worker,
 * daemon or fsck in MiB (goal ≤ 256), and snapshot creation time at the
 * largest count over the time at 10 (goal about 1: O(1)).
 *
 * A benchmark, not a test: a figure off its goal does not fail the run.
 */
import { fork, spawnSync } from "node:child_process";
import { constants as C } from "node:fs";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { FileDevice, Prng } from "../kvstore/index.js";
import { ExtentSet, type FreeSpace } from "../alloc/index.js";
import { openVolume } from "../snapshot/index.js";
import { fsEdges } from "../fs/edges.js";
import { GroveFs, type Caller } from "../fs/index.js";
import { canDropCaches, dropCaches, findExecutable, median, nowMs } from "./bench_snapshot_tools.js";

const scriptPath = fileURLToPath(import.meta.url);
const repoRoot = path.resolve(path.dirname(scriptPath), "..");
const grovefsBin = path.join(repoRoot, "bin", "grovefs.mjs");
const owner: Caller = { uid: 0, gid: 0 };
const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const TiB = 1024 * GiB;
/** Operations at the end of each phase that its rate is measured over. */
const windowOps = 10_000;
const fanout = 100;
const maintenanceEvery = 256;
const rootIno = 1;

// ---------------------------------------------------------------- the work done in a child process

type WorkerTask =
  | { kind: "files"; image: string; files: number; shape: "tree" | "flat"; seed: number }
  | { kind: "snapshots"; image: string; files: number; snapshots: number; seed: number }
  | { kind: "volume"; image: string }
  | { kind: "fragment"; image: string; files: number };

interface FilesResult {
  createPerOpUs: number;
  statPerOpUs: number;
  statColdPerOpUs: number;
  readdirPerEntryUs: number;
  unlinkPerOpUs: number;
  createTotalS: number;
  openMs: number;
  rssMaxMiB: number;
  usedMiB: number;
}

interface SnapshotPoint {
  count: number;
  createMs: number;
  listMs: number;
  rssMiB: number;
  usedMiB: number;
}

interface SnapshotsResult {
  points: SnapshotPoint[];
  deleteCount: number;
  deleteMs: number;
  freedMiB: number;
  rssMaxMiB: number;
}

interface FragmentResult {
  files: number;
  freeExtents: number;
  freeBlocks: number;
  setHeapBytes: number;
  openMs: number;
  rssMaxMiB: number;
}

interface VolumeResult {
  openMs: number;
  bigFileOk: boolean;
  bigFileSize: number;
  rssMaxMiB: number;
}

function rssMaxMiB(): number {
  return process.resourceUsage().maxRSS / 1024;
}

function usedMiB(grove: GroveFs): number {
  const st = grove.statfs();
  return ((st.blocks - st.bfree) * st.bsize) / MiB;
}

/** Leaf directory d of the tree shape: /aNN/bNN. */
function treeDirs(files: number): { a: number; b: number }[] {
  const leaves = Math.ceil(files / fanout);
  const dirs: { a: number; b: number }[] = [];
  for (let d = 0; d < leaves; d++) dirs.push({ a: Math.floor(d / fanout), b: d % fanout });
  return dirs;
}

const pad = (n: number, width: number): string => String(n).padStart(width, "0");

/** Where file i lives and its name, for both shapes. */
class Layout {
  readonly leafIno: number[] = [];

  constructor(
    readonly files: number,
    readonly shape: "tree" | "flat",
  ) {}

  build(grove: GroveFs): void {
    if (this.shape === "flat") {
      this.leafIno.push(grove.mkdirAt(rootIno, Buffer.from("flat"), 0o755, owner).ino);
      return;
    }
    const top = new Map<number, number>();
    for (const { a, b } of treeDirs(this.files)) {
      let aIno = top.get(a);
      if (aIno === undefined) {
        aIno = grove.mkdirAt(rootIno, Buffer.from(`a${pad(a, 2)}`), 0o755, owner).ino;
        top.set(a, aIno);
      }
      this.leafIno.push(grove.mkdirAt(aIno, Buffer.from(`b${pad(b, 2)}`), 0o755, owner).ino);
    }
  }

  parentOf(i: number): number {
    return this.shape === "flat" ? this.leafIno[0]! : this.leafIno[Math.floor(i / fanout)]!;
  }

  nameOf(i: number): Buffer {
    return Buffer.from(`f${pad(i, 7)}`);
  }
}

/** Microseconds per operation over the last `windowOps` of `count` operations. */
function runPhase(count: number, op: (i: number) => void, every?: () => void): { perOpUs: number; totalS: number } {
  const start = nowMs();
  const windowStart = Math.max(0, count - windowOps);
  let windowT0 = start;
  for (let i = 0; i < count; i++) {
    if (i === windowStart) windowT0 = nowMs();
    op(i);
    if (every !== undefined && i % maintenanceEvery === maintenanceEvery - 1) every();
  }
  const end = nowMs();
  return { perOpUs: ((end - windowT0) * 1000) / (count - windowStart), totalS: (end - start) / 1000 };
}

function sample(prng: Prng, count: number, take: number): number[] {
  const out: number[] = [];
  for (let k = 0; k < take; k++) out.push(prng.below(count));
  return out;
}

/**
 * Runs every phase once on a small scratch volume, so that the measured
 * phases see optimised code at every size (otherwise the smallest size pays
 * the JIT's warm-up and looks slower than the largest).
 */
function warmUp(image: string): void {
  GroveFs.format(FileDevice.createImage(image, GiB));
  const grove = GroveFs.open(FileDevice.open(image));
  const layout = new Layout(3000, "tree");
  layout.build(grove);
  for (let i = 0; i < 3000; i++) grove.release(grove.createAt(layout.parentOf(i), layout.nameOf(i), 0o644, C.O_WRONLY | C.O_CREAT, owner).fh);
  grove.sync();
  for (let i = 0; i < 3000; i++) grove.lookup(layout.parentOf(i), layout.nameOf(i));
  for (const dir of layout.leafIno) grove.readdirIno(dir, undefined, () => true);
  for (let i = 0; i < 3000; i++) grove.unlinkAt(layout.parentOf(i), layout.nameOf(i));
  grove.sync();
  grove.close();
  fs.rmSync(image, { force: true });
}

function workFiles(task: Extract<WorkerTask, { kind: "files" }>): FilesResult {
  warmUp(`${task.image}.warmup`);
  GroveFs.format(FileDevice.createImage(task.image, imageBytesForFiles(task.files)));
  let grove = GroveFs.open(FileDevice.open(task.image));
  const layout = new Layout(task.files, task.shape);
  layout.build(grove);
  const flags = C.O_WRONLY | C.O_CREAT | C.O_EXCL;
  const create = runPhase(
    task.files,
    (i) => grove.release(grove.createAt(layout.parentOf(i), layout.nameOf(i), 0o644, flags, owner).fh),
    () => grove.maintenance(),
  );
  grove.sync();
  grove.close();
  dropCaches(canDropCaches());
  const t0 = nowMs();
  grove = GroveFs.open(FileDevice.open(task.image));
  const openMs = nowMs() - t0;
  const prng = new Prng(task.seed);
  const statNames = sample(prng, task.files, Math.min(windowOps, task.files));
  const lookup = (k: number): void => {
    const i = statNames[k]!;
    grove.lookup(layout.parentOf(i), layout.nameOf(i));
  };
  // Cold: the node cache starts empty. Warm: the same names again (what a per-operation cost is).
  const statCold = runPhase(statNames.length, lookup);
  const stat = runPhase(statNames.length, lookup);
  let entries = 0;
  const readdirCap = 100_000;
  const r0 = nowMs();
  for (const dir of layout.leafIno) {
    grove.readdirIno(dir, undefined, () => {
      entries++;
      return entries < readdirCap;
    });
    if (entries >= readdirCap) break;
  }
  const readdirPerEntryUs = ((nowMs() - r0) * 1000) / Math.max(1, entries);
  const unlinkNames = [...new Set(sample(prng, task.files, Math.min(windowOps, task.files)))];
  const unlink = runPhase(
    unlinkNames.length,
    (k) => {
      const i = unlinkNames[k]!;
      grove.unlinkAt(layout.parentOf(i), layout.nameOf(i));
    },
    () => grove.maintenance(),
  );
  grove.sync();
  const used = usedMiB(grove);
  grove.close();
  return {
    createPerOpUs: create.perOpUs,
    statPerOpUs: stat.perOpUs,
    statColdPerOpUs: statCold.perOpUs,
    readdirPerEntryUs,
    unlinkPerOpUs: unlink.perOpUs,
    createTotalS: create.totalS,
    openMs,
    rssMaxMiB: rssMaxMiB(),
    usedMiB: used,
  };
}

/** 10, 1k, 10k, ... up to `snapshots`, and `snapshots` itself. */
function checkpoints(snapshots: number): number[] {
  const points: number[] = [];
  for (let c = 10; c < snapshots; c *= 100) points.push(c);
  if (points[points.length - 1] !== snapshots) points.push(snapshots);
  return points.filter((c) => c >= Math.min(10, snapshots));
}

function workSnapshots(task: Extract<WorkerTask, { kind: "snapshots" }>): SnapshotsResult {
  GroveFs.format(FileDevice.createImage(task.image, imageBytesForFiles(task.files) + 16 * GiB));
  const grove = GroveFs.open(FileDevice.open(task.image));
  const layout = new Layout(task.files, "tree");
  layout.build(grove);
  const flags = C.O_WRONLY | C.O_CREAT | C.O_EXCL;
  const inos: number[] = [];
  runPhase(
    task.files,
    (i) => {
      const { fh, stat } = grove.createAt(layout.parentOf(i), layout.nameOf(i), 0o644, flags, owner);
      inos.push(stat.ino);
      grove.release(fh);
    },
    () => grove.maintenance(),
  );
  grove.sync();
  const block = Buffer.alloc(4 * KiB);
  const prng = new Prng(task.seed);
  const wanted = checkpoints(task.snapshots);
  const points: SnapshotPoint[] = [];
  const times: number[] = [];
  for (let k = 1; k <= task.snapshots; k++) {
    const ino = inos[prng.below(inos.length)]!;
    block.writeUInt32LE(k, 0);
    const fh = grove.openIno(ino, C.O_WRONLY);
    grove.write(fh, block, block.length, 0);
    grove.release(fh);
    const t0 = nowMs();
    grove.createSubvolume(`s${pad(k, 6)}`, { readOnly: true });
    times.push(nowMs() - t0);
    if (k % maintenanceEvery === 0) grove.maintenance();
    if (wanted.includes(k)) {
      const l0 = nowMs();
      const listed = grove.listSubvolumes().length;
      const listMs = nowMs() - l0;
      if (listed < k) throw new Error(`listSubvolumes found ${listed} subvolumes, expected at least ${k}`);
      points.push({ count: k, createMs: median(times.slice(-10)), listMs, rssMiB: process.memoryUsage().rss / MiB, usedMiB: usedMiB(grove) });
    }
  }
  grove.sync();
  const deleteCount = Math.min(1000, Math.floor(task.snapshots / 2));
  const before = usedMiB(grove);
  const d0 = nowMs();
  for (let k = 1; k <= deleteCount; k++) grove.deleteSubvolume(`s${pad(k, 6)}`);
  while (grove.pendingDeletions() > 0) grove.finishDeletions();
  grove.sync();
  const deleteMs = nowMs() - d0;
  const freedMiB = before - usedMiB(grove);
  grove.close();
  return { points, deleteCount, deleteMs, freedMiB, rssMaxMiB: rssMaxMiB() };
}

function workVolume(task: Extract<WorkerTask, { kind: "volume" }>): VolumeResult {
  const t0 = nowMs();
  const grove = GroveFs.open(FileDevice.open(task.image));
  const openMs = nowMs() - t0;
  const offset = 5 * TiB;
  const data = Buffer.from("grovefs at five tebibytes\n");
  const { fh } = grove.createAt(rootIno, Buffer.from("big"), 0o644, C.O_RDWR | C.O_CREAT | C.O_EXCL, owner);
  grove.write(fh, data, data.length, offset);
  grove.release(fh);
  grove.sync();
  const rfh = grove.openIno(grove.lookup(rootIno, Buffer.from("big")).ino, C.O_RDONLY);
  const back = Buffer.alloc(data.length);
  const n = grove.read(rfh, back, back.length, offset);
  const hole = Buffer.alloc(16, 1);
  grove.read(rfh, hole, hole.length, 4 * TiB);
  grove.release(rfh);
  const size = grove.lookup(rootIno, Buffer.from("big")).size;
  grove.close();
  return {
    openMs,
    bigFileOk: n === data.length && back.equals(data) && hole.every((b) => b === 0),
    bigFileSize: size,
    rssMaxMiB: rssMaxMiB(),
  };
}

/** N one-block files, every other one deleted; then the allocator's free-extent set, measured. */
function workFragment(task: Extract<WorkerTask, { kind: "fragment" }>): FragmentResult {
  GroveFs.format(FileDevice.createImage(task.image, Math.max(4 * GiB, task.files * 16 * KiB)));
  const grove = GroveFs.open(FileDevice.open(task.image));
  const flags = C.O_WRONLY | C.O_CREAT | C.O_EXCL;
  const block = Buffer.alloc(4096, 0x5a);
  const dirs = Math.ceil(task.files / 1000);
  for (let d = 0; d < dirs; d++) grove.mkdirAt(rootIno, Buffer.from(`d${d}`), 0o755, owner);
  const dirIno = (i: number): number => grove.lookup(rootIno, Buffer.from(`d${Math.floor(i / 1000)}`)).ino;
  let dir = 0;
  for (let i = 0; i < task.files; i++) {
    if (i % 1000 === 0) dir = dirIno(i);
    const { fh } = grove.createAt(dir, Buffer.from(`f${i}`), 0o644, flags, owner);
    grove.write(fh, block, block.length, 0);
    grove.release(fh);
    if (i % maintenanceEvery === 0) grove.maintenance();
  }
  grove.sync();
  for (let i = 0; i < task.files; i += 2) {
    if (i % 1000 === 0 || i % 1000 === 1) dir = dirIno(i);
    grove.unlinkAt(dir, Buffer.from(`f${i}`));
    if (i % maintenanceEvery === 0) grove.maintenance();
  }
  grove.sync();
  grove.sync();
  grove.close();
  const t0 = nowMs();
  const { store, space } = openSpaceOf(task.image);
  const openMs = nowMs() - t0;
  const extents = space.targetExtents();
  store.close();
  const gc = (globalThis as { gc?: () => void }).gc;
  if (gc === undefined) throw new Error("the fragment worker needs --expose-gc");
  // The heap a second copy of the set adds, with the first built and everything else settled: what one set holds.
  const build = (): ExtentSet => {
    const set = new ExtentSet({ bestFit: true });
    for (const e of extents) set.add(e.start, e.length);
    return set;
  };
  const settled = (): number => {
    for (let i = 0; i < 3; i++) gc();
    return process.memoryUsage().heapUsed;
  };
  const set = build();
  const before = settled();
  const copy = build();
  const setHeapBytes = settled() - before;
  // The list the sets were built from, and both sets, stay alive until after the measurement.
  if (extents.length === 0 || copy.size !== set.size) throw new Error("the free-extent sets differ");
  const freeBlocks = set.blocks;
  return { files: task.files, freeExtents: set.size, freeBlocks, setHeapBytes, openMs, rssMaxMiB: rssMaxMiB() };
}

/** The kvstore and allocator of an image, as a mount opens them (read-only here). */
function openSpaceOf(image: string): { store: { close(): void }; space: FreeSpace } {
  const { store, space } = openVolume(FileDevice.open(image, { readOnly: true }), { readOnly: true, edges: fsEdges });
  return { store, space };
}

/** Empty files cost their inode record and entry (a few hundred bytes with copy-on-write slack); sparse anyway. */
function imageBytesForFiles(files: number): number {
  return Math.max(4 * GiB, Math.ceil((files * 2 * KiB) / GiB) * GiB * 4);
}

function runWorker(task: WorkerTask): unknown {
  switch (task.kind) {
    case "files":
      return workFiles(task);
    case "snapshots":
      return workSnapshots(task);
    case "volume":
      return workVolume(task);
    case "fragment":
      return workFragment(task);
  }
}

/** Runs a task in a child process (same tsx loader), so its peak RSS is its own. */
function inChild<T>(task: WorkerTask): Promise<T> {
  return new Promise((resolve, reject) => {
    const execArgv = task.kind === "fragment" ? [...process.execArgv, "--expose-gc"] : process.execArgv;
    const child = fork(scriptPath, ["--worker", JSON.stringify(task)], { stdio: ["ignore", "inherit", "inherit", "ipc"], execArgv });
    let result: T | undefined;
    child.on("message", (message) => {
      result = message as T;
    });
    child.on("error", reject);
    child.on("exit", (code, signal) => {
      if (result !== undefined && code === 0) resolve(result);
      else reject(new Error(`${task.kind} worker failed (${code ?? signal})`));
    });
  });
}

// ---------------------------------------------------------------- CLI children

interface Timed {
  s: number;
  rssMiB: number;
  status: number | null;
  output: string;
}

/** Runs the grovefs CLI under /usr/bin/time: wall time and peak RSS. */
function grovefsTimed(args: string[]): Timed {
  const time = findExecutable("time") ?? "/usr/bin/time";
  const child = spawnSync(time, ["-f", "\n%e %M", process.execPath, grovefsBin, ...args], {
    encoding: "utf8",
    maxBuffer: 256 * MiB,
  });
  const lines = (child.stderr ?? "").trimEnd().split("\n");
  const [seconds, kib] = (lines.pop() ?? "").split(" ").map(Number);
  return { s: seconds ?? NaN, rssMiB: (kib ?? NaN) / 1024, status: child.status, output: `${child.stdout}${lines.join("\n")}` };
}

function fsckTimed(image: string): Timed {
  const result = grovefsTimed(["fsck", "-n", image]);
  if (result.status !== 0) log(`  fsck -n ${image} exited ${result.status}:\n${result.output.trim()}`);
  return result;
}

const canMount = (): boolean => process.getuid?.() === 0 && fs.existsSync("/dev/fuse");

interface MountFigures {
  mountS: number;
  daemonRssMiB: number;
  extraMs: number;
}

/** Mounts the image, runs `body` on the mountpoint (timed), reads the daemon's VmHWM, unmounts. */
function withMount(image: string, dir: string, body: (mnt: string) => void): MountFigures | null {
  if (!canMount()) return null;
  const mnt = path.join(dir, "mnt");
  fs.mkdirSync(mnt, { recursive: true });
  const t0 = nowMs();
  const mount = spawnSync(process.execPath, [grovefsBin, "mount", image, mnt], { encoding: "utf8" });
  const mountS = (nowMs() - t0) / 1000;
  if (mount.status !== 0) {
    log(`  mount failed (${mount.status}): ${mount.stderr.trim()}`);
    return null;
  }
  try {
    const b0 = nowMs();
    body(mnt);
    const extraMs = nowMs() - b0;
    return { mountS, daemonRssMiB: daemonPeakRssMiB(image), extraMs };
  } finally {
    const um = spawnSync(process.execPath, [grovefsBin, "umount", mnt], { encoding: "utf8" });
    if (um.status !== 0) log(`  umount failed (${um.status}): ${um.stderr.trim()}`);
  }
}

/** The mount daemon's peak RSS: the process whose command line names the image and "mount". */
function daemonPeakRssMiB(image: string): number {
  let best = NaN;
  for (const pid of fs.readdirSync("/proc").filter((p) => /^\d+$/.test(p))) {
    let cmdline: string;
    try {
      cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, "utf8");
    } catch {
      continue;
    }
    const argv = cmdline.split("\0");
    if (Number(pid) === process.pid || !argv.includes(image) || !argv.some((a) => a === "mount" || a === "--daemon")) continue;
    const status = fs.readFileSync(`/proc/${pid}/status`, "utf8");
    const hwm = /VmHWM:\s+(\d+) kB/.exec(status);
    if (hwm !== null) best = Number.isNaN(best) ? Number(hwm[1]) / 1024 : Math.max(best, Number(hwm[1]) / 1024);
  }
  return best;
}

// ---------------------------------------------------------------- the run

const startMs = nowMs();

function log(message: string): void {
  console.log(`[${((nowMs() - startMs) / 1000).toFixed(1).padStart(7)}s] ${message}`);
}

const f1 = (n: number): string => (Number.isFinite(n) ? n.toFixed(1) : "-");
const f2 = (n: number): string => (Number.isFinite(n) ? n.toFixed(2) : "-");

interface Config {
  files: number;
  sizes: number[];
  shapes: Array<"tree" | "flat">;
  /** Sections left out: files, snapshots, volume. */
  skip: Set<string>;
  snapshots: number;
  snapshotFiles: number;
  mount: boolean;
  keep: boolean;
  seed: number;
  /** 0: no fragment section. */
  fragment: number;
}

function parseConfig(): Config {
  const { values } = parseArgs({
    options: {
      files: { type: "string" },
      sizes: { type: "string" },
      snapshots: { type: "string" },
      "snapshot-files": { type: "string" },
      shapes: { type: "string", default: "tree,flat" },
      skip: { type: "string" },
      "no-mount": { type: "boolean", default: false },
      keep: { type: "boolean", default: false },
      seed: { type: "string", default: "1" },
      fragment: { type: "string" },
      help: { type: "boolean", default: false },
    },
    strict: true,
  });
  if (values.help) {
    console.log(
      "usage: npm run bench:scale -- [--files N] [--snapshots N] [--snapshot-files N] [--sizes A,B,...] [--shapes tree,flat]\n" +
        "                              [--skip files,snapshots,volume] [--no-mount] [--keep] [--seed S] [--fragment N]\n" +
        "defaults: --files 1000000 --snapshots 10000 --snapshot-files 100000 --sizes 10000,100000,1000000 (capped at --files)",
    );
    process.exit(0);
  }
  const int = (name: string, text: string | undefined, fallback: number, min: number): number => {
    if (text === undefined) return fallback;
    const n = Number(text);
    if (!Number.isSafeInteger(n) || n < min) throw new Error(`--${name} must be an integer >= ${min}, got "${text}"`);
    return n;
  };
  const files = int("files", values.files, 1_000_000, 1000);
  const listed = values.sizes === undefined ? [10_000, 100_000, 1_000_000] : values.sizes.split(",").map((s) => int("sizes", s, 0, 1000));
  const sizes = [...new Set([...listed.filter((s) => s <= files), files])].sort((a, b) => a - b);
  const shapes = values.shapes!.split(",");
  for (const shape of shapes) if (shape !== "tree" && shape !== "flat") throw new Error(`--shapes takes tree and flat, got "${shape}"`);
  return {
    files,
    sizes,
    shapes: shapes as Array<"tree" | "flat">,
    skip: new Set((values.skip ?? "").split(",").filter((s) => s !== "")),
    snapshots: int("snapshots", values.snapshots, 10_000, 10),
    snapshotFiles: int("snapshot-files", values["snapshot-files"], 100_000, 100),
    mount: !values["no-mount"],
    keep: values.keep!,
    seed: int("seed", values.seed, 1, 0),
    fragment: values.fragment === undefined ? 0 : int("fragment", values.fragment, 0, 1000),
  };
}

interface FilesRow extends FilesResult {
  files: number;
  shape: string;
  fsck: Timed;
  mount: MountFigures | null;
}

async function benchFiles(config: Config, dir: string): Promise<FilesRow[]> {
  const rows: FilesRow[] = [];
  for (const shape of config.shapes) {
    for (const files of config.sizes) {
      const image = path.join(dir, `files-${shape}-${files}.img`);
      log(`files: ${files} in ${shape === "tree" ? "a tree (100 entries per directory, depth 3)" : "one directory"}`);
      const result = await inChild<FilesResult>({ kind: "files", image, files, shape, seed: config.seed });
      const fsck = fsckTimed(image);
      const prng = new Prng(config.seed + 1);
      const layout = new Layout(files, shape);
      const mount = config.mount
        ? withMount(image, dir, (mnt) => {
            // The unlink phase removed some names: stat what is there, count what is not.
            for (let k = 0; k < Math.min(windowOps, files); k++) {
              const i = prng.below(files);
              const rel =
                shape === "flat"
                  ? `flat/${layout.nameOf(i).toString()}`
                  : `a${pad(Math.floor(i / fanout / fanout), 2)}/b${pad(Math.floor(i / fanout) % fanout, 2)}/${layout.nameOf(i).toString()}`;
              fs.statSync(path.join(mnt, rel), { throwIfNoEntry: false });
            }
          })
        : null;
      rows.push({ files, shape, ...result, fsck, mount });
      log(
        `  create ${f1(result.createPerOpUs)} µs/op, stat ${f1(result.statPerOpUs)} (cold ${f1(result.statColdPerOpUs)}), readdir ${f2(result.readdirPerEntryUs)} µs/entry, ` +
          `unlink ${f1(result.unlinkPerOpUs)}; worker RSS ${f1(result.rssMaxMiB)} MiB; fsck ${f1(fsck.s)} s ${f1(fsck.rssMiB)} MiB` +
          (mount === null ? "" : `; mount ${f2(mount.mountS)} s, daemon ${f1(mount.daemonRssMiB)} MiB`),
      );
      if (!config.keep) fs.rmSync(image, { force: true });
    }
  }
  return rows;
}

interface SnapshotsRow extends SnapshotsResult {
  fsck: Timed;
  list: Timed;
  mount: MountFigures | null;
}

async function benchSnapshots(config: Config, dir: string): Promise<SnapshotsRow> {
  const image = path.join(dir, "snapshots.img");
  log(`snapshots: ${config.snapshots} of a ${config.snapshotFiles}-file subvolume, one 4 KiB rewrite before each`);
  const result = await inChild<SnapshotsResult>({
    kind: "snapshots",
    image,
    files: config.snapshotFiles,
    snapshots: config.snapshots,
    seed: config.seed,
  });
  const list = grovefsTimed(["snapshot", "list", image]);
  const fsck = fsckTimed(image);
  const mount = config.mount
    ? withMount(image, dir, (mnt) => {
        const names = fs.readdirSync(path.join(mnt, ".snapshots"));
        if (names.length === 0) log("  .snapshots is empty through the mount");
      })
    : null;
  if (!config.keep) fs.rmSync(image, { force: true });
  return { ...result, fsck, list, mount };
}

interface VolumeRow extends VolumeResult {
  size: string;
  mkfs: Timed;
  fsck: Timed;
}

async function benchVolume(dir: string): Promise<VolumeRow> {
  const image = path.join(dir, "volume-16t.img");
  log("volume: 16 TiB sparse image");
  let size = "16T";
  let mkfs = grovefsTimed(["mkfs", image, "--size", size]);
  if (mkfs.status !== 0 && /cannot make a file/.test(mkfs.output)) {
    // ext4 (this machine's /tmp) stops at 16 TiB - 4 KiB: a GiB less is the largest round size it takes.
    size = "16383G";
    log(`  the host filesystem cannot hold 16 TiB; using ${size}`);
    mkfs = grovefsTimed(["mkfs", image, "--size", size]);
  }
  if (mkfs.status !== 0) throw new Error(`mkfs of ${size} failed: ${mkfs.output.trim()}`);
  const result = await inChild<VolumeResult>({ kind: "volume", image });
  const fsck = fsckTimed(image);
  if (!process.argv.includes("--keep")) fs.rmSync(image, { force: true });
  return { ...result, mkfs, fsck, size };
}

/** The fragment section at N/10 and N files: the free-extent set's size and heap, and how they grow. */
async function benchFragment(config: Config, dir: string): Promise<FragmentResult[]> {
  const rows: FragmentResult[] = [];
  for (const files of [...new Set([Math.max(1000, Math.round(config.fragment / 10)), config.fragment])]) {
    const image = path.join(dir, `fragment-${files}.img`);
    log(`fragment: ${files} one-block files, every other one deleted`);
    rows.push(await inChild<FragmentResult>({ kind: "fragment", image, files }));
    if (!config.keep) fs.rmSync(image, { force: true });
  }
  return rows;
}

function ratio(at: number, base: number): number {
  return base > 0 ? at / base : NaN;
}

async function main(): Promise<void> {
  const config = parseConfig();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "grovefs-scale-"));
  log(`bench:scale in ${dir}: sizes ${config.sizes.join(", ")}; ${config.snapshots} snapshots of ${config.snapshotFiles} files; mount ${config.mount && canMount() ? "yes" : "no"}`);
  try {
    const files = config.skip.has("files") ? [] : await benchFiles(config, dir);
    const snaps = config.skip.has("snapshots") ? null : await benchSnapshots(config, dir);
    const volume = config.skip.has("volume") ? null : await benchVolume(dir);
    const fragment = config.fragment === 0 ? [] : await benchFragment(config, dir);
    const rss: number[] = [];

    if (files.length > 0) {
      console.log("\nfiles (per-operation cost over the last 10k operations; growth = cost / cost at the smallest size)");
      console.log("shape  files      create µs  stat µs  (cold)  readdir µs/e  unlink µs  open ms  worker MiB  used MiB  fsck s  fsck MiB  mount s  daemon MiB");
      for (const r of files) {
        console.log(
          `${r.shape.padEnd(6)} ${String(r.files).padEnd(10)} ${f1(r.createPerOpUs).padStart(9)}  ${f1(r.statPerOpUs).padStart(7)}  ${f1(r.statColdPerOpUs).padStart(6)}  ${f2(r.readdirPerEntryUs).padStart(12)}  ${f1(r.unlinkPerOpUs).padStart(9)}  ${f1(r.openMs).padStart(7)}  ${f1(r.rssMaxMiB).padStart(10)}  ${f1(r.usedMiB).padStart(8)}  ${f1(r.fsck.s).padStart(6)}  ${f1(r.fsck.rssMiB).padStart(8)}  ${f2(r.mount?.mountS ?? NaN).padStart(7)}  ${f1(r.mount?.daemonRssMiB ?? NaN).padStart(10)}`,
        );
        rss.push(r.rssMaxMiB, r.fsck.rssMiB, r.mount?.daemonRssMiB ?? 0);
      }
      for (const shape of config.shapes) {
        const rs = files.filter((r) => r.shape === shape);
        const lo = rs[0]!;
        const hi = rs[rs.length - 1]!;
        console.log(
          `growth ${shape} ${hi.files} vs ${lo.files}: create ${f2(ratio(hi.createPerOpUs, lo.createPerOpUs))}x, stat ${f2(ratio(hi.statPerOpUs, lo.statPerOpUs))}x ` +
            `(cold ${f2(ratio(hi.statColdPerOpUs, lo.statColdPerOpUs))}x), readdir ${f2(ratio(hi.readdirPerEntryUs, lo.readdirPerEntryUs))}x, ` +
            `unlink ${f2(ratio(hi.unlinkPerOpUs, lo.unlinkPerOpUs))}x, fsck time ${f2(ratio(hi.fsck.s, lo.fsck.s))}x for ${f1(hi.files / lo.files)}x the files`,
        );
      }
    }

    if (snaps !== null) {
      console.log(`\nsnapshots (${config.snapshotFiles} files; create = median of the 10 creations ending at the count)`);
      console.log("count   create ms  list ms  RSS MiB  used MiB");
      for (const p of snaps.points) {
        console.log(`${String(p.count).padEnd(7)} ${f2(p.createMs).padStart(9)}  ${f2(p.listMs).padStart(7)}  ${f1(p.rssMiB).padStart(7)}  ${f1(p.usedMiB).padStart(8)}`);
      }
      console.log(
        `at ${config.snapshots}: snapshot list (CLI) ${f2(snaps.list.s)} s, fsck ${f1(snaps.fsck.s)} s ${f1(snaps.fsck.rssMiB)} MiB` +
          (snaps.mount === null ? "" : `, mount ${f2(snaps.mount.mountS)} s, .snapshots readdir ${f1(snaps.mount.extraMs)} ms, daemon ${f1(snaps.mount.daemonRssMiB)} MiB`) +
          `; worker peak ${f1(snaps.rssMaxMiB)} MiB`,
      );
      console.log(`deleting ${snaps.deleteCount}: ${f2(snaps.deleteMs / 1000)} s, ${f1(snaps.freedMiB)} MiB returned`);
      rss.push(snaps.rssMaxMiB, snaps.fsck.rssMiB, snaps.mount?.daemonRssMiB ?? 0);
    }

    if (volume !== null) {
      console.log(
        `\nvolume ${volume.size}: mkfs ${f2(volume.mkfs.s)} s (CLI), open ${f1(volume.openMs)} ms, file at 5 TiB ${volume.bigFileOk ? "reads back" : "WRONG"} ` +
          `(size ${volume.bigFileSize}), fsck ${f2(volume.fsck.s)} s ${f1(volume.fsck.rssMiB)} MiB (exit ${volume.fsck.status})`,
      );
      rss.push(volume.rssMaxMiB, volume.fsck.rssMiB);
    }

    if (fragment.length > 0) {
      console.log("\nfragment (free space after deleting every other one-block file: the allocator's in-memory free-extent set)");
      console.log("files      free extents  free blocks  set heap MiB  bytes/extent  open ms  worker MiB");
      for (const r of fragment) {
        console.log(
          `${String(r.files).padEnd(10)} ${String(r.freeExtents).padStart(12)}  ${String(r.freeBlocks).padStart(11)}  ${f1(r.setHeapBytes / MiB).padStart(12)}  ${f1(r.setHeapBytes / r.freeExtents).padStart(12)}  ${f1(r.openMs).padStart(7)}  ${f1(r.rssMaxMiB).padStart(10)}`,
        );
        rss.push(r.rssMaxMiB);
      }
      const lo = fragment[0]!;
      const hi = fragment[fragment.length - 1]!;
      console.log(`growth ${hi.files} vs ${lo.files}: set heap ${f2(ratio(hi.setHeapBytes, lo.setHeapBytes))}x for ${f1(hi.files / lo.files)}x the files`);
    }

    const tree = files.filter((r) => r.shape === config.shapes[0]);
    const lo = tree[0];
    const hi = tree[tree.length - 1];
    const growth = (pick: (r: FilesRow) => number): string => (lo === undefined || hi === undefined ? "-" : f2(ratio(pick(hi), pick(lo))));
    const first = snaps?.points[0];
    const last = snaps?.points[snaps.points.length - 1];
    console.log(
      `scale: create=${growth((r) => r.createPerOpUs)} stat=${growth((r) => r.statPerOpUs)} unlink=${growth((r) => r.unlinkPerOpUs)} ` +
        `rss_max_mib=${Math.round(Math.max(0, ...rss))} snapshot_create=${first === undefined || last === undefined ? "-" : f2(ratio(last.createMs, first.createMs))}`,
    );
  } finally {
    if (!config.keep) fs.rmSync(dir, { recursive: true, force: true });
    else log(`kept ${dir}`);
  }
}

if (process.argv[2] === "--worker") {
  const task = JSON.parse(process.argv[3]!) as WorkerTask;
  const result = runWorker(task);
  process.send!(result, () => process.exit(0));
} else {
  main().catch((error: unknown) => {
    console.error(`bench:scale: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
    process.exit(1);
  });
}
