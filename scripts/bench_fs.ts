/**
 * Filesystem benchmark: grovefs against fuse2fs and an in-memory FUSE
 * "ceiling", through the kernel, on the same machine, in one run.
 *
 *   npm run bench:fs -- [--size 1G] [--image-size 4G] [--rand-size 256M]
 *                       [--files 10000] [--only grovefs,fuse2fs,ceiling]
 *                       [--quick] [--verbose]
 *   npm run bench:fs -- --compress [--size 1G] [--tree-size 300M]
 *                       [--tree node_modules] [--runs 3] [--image-size ...]
 *                       [--quick] [--verbose]
 *
 * With --compress it runs the compression benchmark instead of the groups
 * below (see "Compression benchmark" further down); without it, this: 
 * Targets (each FUSE server is a child process of this script):
 *   grovefs  `grovefs mkfs IMG --size BYTES`, then `grovefs mount IMG MNT -f`
 *            (see grovefsCommands below; the one place to adjust the CLI).
 *   fuse2fs  ext4 on an image of the same size (`mkfs.ext4 -F -q -b 4096`:
 *            4 KiB blocks like grovefs, also for the small --quick images,
 *            where mkfs.ext4 would pick 1 KiB), served by
 *            `fuse2fs IMG MNT -f -o big_writes` (Debian's fuse2fs 1.47 already
 *            adds kernel_cache,use_ino,attr_timeout=0,big_writes by itself).
 *            fuse2fs does not write ext4's journal: it warns, then writes in
 *            place.
 *   ceiling  scripts/ceiling_fs.ts: a trivial in-memory fuse-native
 *            filesystem, the most any fuse-native filesystem can do here.
 *
 * Workloads, each group on a freshly formatted image and a fresh mount:
 *   seq      fio: write SIZE in 1 MiB blocks with fsync at the end (the
 *            fsync is inside fio's runtime), then read the file back in
 *            1 MiB blocks → MB/s (10^6 bytes/s).
 *   rand     fio writes a RAND-SIZE file (untimed, fsynced); then random 4 KiB
 *            reads, then random 4 KiB writes (fsync at the end, timed) → IOPS.
 *            Each job is one pass over the file under fio's random map, so
 *            every 4 KiB block is touched exactly once, and fio's default
 *            invalidate=1 drops the file's cached pages first: no read can
 *            hit the page cache. fio's default fadvise_hint sets
 *            POSIX_FADV_RANDOM, which turns readahead off, so each read is
 *            one 4 KiB FUSE read (checked with strace on fuse2fs: no larger
 *            reads). Capped at 60 s per job (IOPS of what ran).
 *   meta     scripts/bench_fs_worker.ts in a child process: create, stat,
 *            unlink of FILES empty files in one directory → ops/s per phase.
 * All fio jobs: ioengine=psync, direct=0, one job, fallocate=none (no
 * preallocation, which fuse-native filesystems may not implement).
 *
 * Caches: before every timed phase the image's filesystem is synced and, as
 * root, `echo 3 > /proc/sys/vm/drop_caches` drops page, dentry and inode
 * caches. In addition the persistent targets (grovefs, fuse2fs) are unmounted
 * and mounted again between a write phase and the read phase that follows
 * (seq read, rand read, stat), so their own caches start cold too and the
 * data read back is what reached the image. The ceiling keeps everything in
 * its memory and cannot be remounted: only the kernel caches are dropped.
 *
 * Every byte of I/O on a mount is done by a child (fio or the worker), never
 * by this process, and servers run in their own process groups so that a
 * Ctrl-C reaches this script first, which then stops the servers, unmounts
 * anything left mounted (`umount`, then `umount -l`) and deletes its temp
 * directory under /tmp.
 *
 * Output: one table of figures per target, then grovefs/fuse2fs and
 * grovefs/ceiling per workload against the goals (sequential write and read
 * ≥ 3× fuse2fs and ≥ 0.7× ceiling; metadata ≥ 0.7× ceiling). It is a
 * benchmark, not a test: a missed goal does not fail the run; a target that
 * errors does (exit 1, after the table).
 *
 * Compression benchmark (--compress): grovefs formatted with
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
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { parseArgs } from "node:util";
import { compressSync } from "lz4-napi";

const repoRoot = path.resolve(path.dirname(new URL(import.meta.url).pathname), "..");
const workerScript = path.join(repoRoot, "scripts", "bench_fs_worker.ts");
const ceilingScript = path.join(repoRoot, "scripts", "ceiling_fs.ts");
const grovefsCli = path.join(repoRoot, "cli", "main.ts");
/** Runs a TypeScript file in one process (no npx or tsx wrapper in between, so SIGTERM reaches it). */
const tsNode = [process.execPath, "--import", "tsx"];

const MiB = 1024 ** 2;
const GiB = 1024 ** 3;
const mountTimeoutMs = 60_000;
const stopTimeoutMs = 60_000;
const fioRuntimeCapSeconds = 60;
const fioCommon = ["--ioengine=psync", "--direct=0", "--numjobs=1", "--fallocate=none"];

/**
 * How grovefs is formatted and mounted: the one place to adjust if its CLI
 * changes. Same as `npx tsx cli/main.ts ...`, minus the wrappers.
 */
function grovefsCommands(
  img: string,
  mnt: string,
  imageBytes: number,
  compress?: "lz4" | "none",
): { mkfs: string[]; mount: string[]; info: string[] } {
  return {
    mkfs: [...tsNode, grovefsCli, "mkfs", img, "--size", String(imageBytes), ...(compress ? ["--compress", compress] : [])],
    mount: [...tsNode, grovefsCli, "mount", img, mnt, "-f"],
    info: [...tsNode, grovefsCli, "info", img, "--json"],
  };
}

// ---------------------------------------------------------------- configuration

const targetNames = ["grovefs", "fuse2fs", "ceiling"] as const;
type TargetName = (typeof targetNames)[number];

interface Config {
  dataBytes: number;
  imageBytes: number;
  randBytes: number;
  files: number;
  targets: TargetName[];
  verbose: boolean;
  /** Set by --compress: the compression benchmark runs instead of the workload groups. */
  compress: CompressConfig | null;
}

interface CompressConfig {
  /** The source tree to copy (symlinks followed). */
  treeSource: string;
  /** At most this many bytes of file data are staged from it. */
  treeCapBytes: number;
  /** Runs of each measurement per target (at least 3). */
  runs: number;
}

/** "1G", "64M", "512k", "1GiB", or a plain byte count. */
function parseBytes(name: string, text: string): number {
  const m = /^(\d+)\s*([kmgt]?)(i?b)?$/i.exec(text.trim());
  if (!m) throw new Error(`--${name}: cannot read "${text}" as a size (e.g. 1G, 64M, 1048576)`);
  const unit = { "": 1, k: 1024, m: MiB, g: GiB, t: 1024 * GiB }[m[2].toLowerCase() as "" | "k" | "m" | "g" | "t"];
  const bytes = Number(m[1]) * unit;
  if (!Number.isSafeInteger(bytes) || bytes < MiB || bytes % MiB !== 0) {
    throw new Error(`--${name}: must be a whole number of MiB, at least 1 MiB, got "${text}"`);
  }
  return bytes;
}

const usage =
  "usage: npm run bench:fs -- [--size 1G] [--image-size 4×size] [--rand-size 256M] [--files 10000]\n" +
  "                          [--only grovefs,fuse2fs,ceiling] [--quick] [--verbose]\n" +
  "       npm run bench:fs -- --compress [--size 1G] [--tree-size 300M] [--tree node_modules] [--runs 3]\n" +
  "                          [--image-size 4×max(size,tree-size)] [--quick] [--verbose]\n" +
  "--quick: --size 64M --rand-size 16M --files 1000 (--compress: --size 64M --tree-size 64M) unless given\n" +
  "--compress: grovefs with mkfs --compress lz4 against --compress none: a source tree (cp -r, space, read)\n" +
  "            and a --size file of random bytes, medians of --runs runs alternating the two";

function parseConfig(): Config {
  const { values } = parseArgs({
    options: {
      size: { type: "string" },
      "image-size": { type: "string" },
      "rand-size": { type: "string" },
      files: { type: "string" },
      only: { type: "string" },
      compress: { type: "boolean", default: false },
      tree: { type: "string" },
      "tree-size": { type: "string" },
      runs: { type: "string" },
      quick: { type: "boolean", default: false },
      verbose: { type: "boolean", default: false },
      help: { type: "boolean", default: false },
    },
    strict: true,
  });
  if (values.help) {
    console.log(usage);
    process.exit(0);
  }
  const quick = values.quick!;
  const dataBytes = parseBytes("size", values.size ?? (quick ? "64M" : "1G"));
  if (values.compress) return parseCompressConfig(values, dataBytes, quick);
  for (const flag of ["tree", "tree-size", "runs"] as const) {
    if (values[flag] !== undefined) throw new Error(`--${flag} applies only with --compress`);
  }
  const imageBytes = values["image-size"] ? parseBytes("image-size", values["image-size"]) : 4 * dataBytes;
  const randBytes = parseBytes("rand-size", values["rand-size"] ?? (quick ? "16M" : "256M"));
  const files = Number(values.files ?? (quick ? "1000" : "10000"));
  if (!Number.isSafeInteger(files) || files < 1) throw new Error(`--files must be a positive integer, got "${values.files}"`);
  if (imageBytes < 2 * Math.max(dataBytes, randBytes)) {
    throw new Error(`--image-size must be at least twice --size and --rand-size`);
  }
  const targets = (values.only ?? targetNames.join(",")).split(",").map((s) => s.trim()).filter(Boolean);
  for (const t of targets) {
    if (!targetNames.includes(t as TargetName)) throw new Error(`--only: unknown target "${t}" (known: ${targetNames.join(", ")})`);
  }
  if (targets.length === 0) throw new Error("--only: no target");
  const uniqueTargets = [...new Set(targets)] as TargetName[];
  return { dataBytes, imageBytes, randBytes, files, targets: uniqueTargets, verbose: values.verbose!, compress: null };
}

function parseCompressConfig(values: Record<string, string | boolean | undefined>, dataBytes: number, quick: boolean): Config {
  for (const flag of ["only", "files", "rand-size"]) {
    if (values[flag] !== undefined) throw new Error(`--${flag} does not apply with --compress (it compares grovefs lz4 with grovefs none)`);
  }
  const treeCapBytes = parseBytes("tree-size", (values["tree-size"] as string | undefined) ?? (quick ? "64M" : "300M"));
  const treeSource = path.resolve((values.tree as string | undefined) ?? path.join(repoRoot, "node_modules"));
  if (!fs.statSync(treeSource, { throwIfNoEntry: false })?.isDirectory()) throw new Error(`--tree: ${treeSource} is not a directory`);
  const runs = Number(values.runs ?? "3");
  if (!Number.isSafeInteger(runs) || runs < 3) throw new Error(`--runs must be an integer of at least 3 (medians), got "${values.runs}"`);
  const imageSize = values["image-size"] as string | undefined;
  const imageBytes = imageSize ? parseBytes("image-size", imageSize) : 4 * Math.max(dataBytes, treeCapBytes);
  if (imageBytes < 2 * Math.max(dataBytes, treeCapBytes)) throw new Error(`--image-size must be at least twice --size and --tree-size`);
  return {
    dataBytes,
    imageBytes,
    randBytes: 0,
    files: 0,
    targets: ["grovefs"],
    verbose: values.verbose as boolean,
    compress: { treeSource, treeCapBytes, runs },
  };
}

// ---------------------------------------------------------------- child processes

let verbose = false;
const isRoot = process.getuid?.() === 0;

interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Short-lived children (fio, workers, mountpoint, ...), killed first when the run is interrupted. */
const runningCommands = new Set<ChildProcess>();

/** Runs a command to completion, capturing its output. */
function run(argv: string[], opts: { timeoutMs?: number } = {}): Promise<RunResult> {
  if (verbose) console.log(`  $ ${argv.join(" ")}`);
  return new Promise((resolve, reject) => {
    const child = spawn(argv[0], argv.slice(1), { cwd: repoRoot, stdio: ["ignore", "pipe", "pipe"] });
    runningCommands.add(child);
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const timer = opts.timeoutMs ? setTimeout(() => child.kill("SIGKILL"), opts.timeoutMs) : undefined;
    child.on("error", (err) => {
      clearTimeout(timer);
      runningCommands.delete(child);
      reject(err);
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      runningCommands.delete(child);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** Runs a command that must succeed; on failure the error carries its stderr. */
async function runOk(argv: string[], opts: { timeoutMs?: number } = {}): Promise<RunResult> {
  const r = await run(argv, opts);
  if (r.code !== 0) {
    const why = r.signal ? `killed by ${r.signal}` : `exit ${r.code}`;
    throw new Error(`${path.basename(argv[0])} ${argv.slice(1, 3).join(" ")} ... failed (${why}): ${tail(r.stderr || r.stdout)}`);
  }
  return r;
}

function tail(text: string, lines = 6): string {
  return text.trim().split("\n").slice(-lines).join(" | ");
}

function commandExists(name: string): boolean {
  return spawnSync("sh", ["-c", `command -v ${name}`], { stdio: "ignore" }).status === 0;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- mounts

/** Mount points in this mount namespace, from /proc/self/mountinfo (no call reaches a FUSE server). */
function mountedPaths(): Set<string> {
  const text = fs.readFileSync("/proc/self/mountinfo", "utf8");
  const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  return new Set(text.split("\n").filter(Boolean).map((line) => unescape(line.split(" ")[4])));
}

const isMounted = (mnt: string) => mountedPaths().has(mnt);

/** Unmounts whatever is at mnt: umount, then lazy umount, then fusermount if there is one. */
async function forceUnmount(mnt: string): Promise<void> {
  const attempts = [["umount", mnt], ["umount", "-l", mnt]];
  if (commandExists("fusermount")) attempts.push(["fusermount", "-uz", mnt]);
  for (const argv of attempts) {
    if (!isMounted(mnt)) return;
    await run(argv, { timeoutMs: 30_000 }).catch(() => undefined);
  }
  if (isMounted(mnt)) throw new Error(`could not unmount ${mnt}`);
}

/** A running FUSE server (a child process in its own process group) and its mount point. */
interface Server {
  target: string;
  mnt: string;
  child: ChildProcess;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  done: boolean;
  logPath: string;
  stopping?: Promise<void>;
}

const liveServers = new Set<Server>();
const ourMountPoints = new Set<string>();
/** Set once a signal starts the cleanup: no new server starts, no new phase runs. */
let aborting = false;

function startServer(target: string, argv: string[], mnt: string, logPath: string): Server {
  if (aborting) throw new Error("interrupted");
  if (verbose) console.log(`  $ ${argv.join(" ")} &`);
  const log = fs.openSync(logPath, "a");
  const child = spawn(argv[0], argv.slice(1), { cwd: repoRoot, stdio: ["ignore", log, log], detached: true });
  fs.closeSync(log);
  ourMountPoints.add(mnt);
  const server: Server = {
    target,
    mnt,
    child,
    logPath,
    done: false,
    exited: new Promise((resolve) => {
      child.on("error", (err) => {
        fs.appendFileSync(logPath, `spawn failed: ${err.message}\n`);
        resolve({ code: null, signal: null });
      });
      child.on("exit", (code, signal) => resolve({ code, signal }));
    }),
  };
  void server.exited.then(() => {
    server.done = true;
    liveServers.delete(server);
  });
  liveServers.add(server);
  return server;
}

function logTail(server: Server): string {
  try {
    return tail(fs.readFileSync(server.logPath, "utf8")) || "(no output)";
  } catch {
    return "(no log)";
  }
}

/** Waits until `mountpoint -q MNT` succeeds, i.e. the kernel mount exists and the server answers. */
async function waitMounted(server: Server): Promise<void> {
  const deadline = Date.now() + mountTimeoutMs;
  for (;;) {
    if (server.done) {
      const { code, signal } = await server.exited;
      throw new Error(`${server.target} server exited (${signal ?? `code ${code}`}) before mounting: ${logTail(server)}`);
    }
    if (isMounted(server.mnt)) {
      const r = await run(["mountpoint", "-q", server.mnt], { timeoutMs: 10_000 });
      if (r.code === 0) return;
    }
    if (Date.now() > deadline) throw new Error(`${server.target} did not mount within ${mountTimeoutMs / 1000} s: ${logTail(server)}`);
    await sleep(100);
  }
}

/**
 * SIGTERM, wait for exit (SIGKILL to its group after a timeout), then unmount
 * whatever it left behind. Idempotent: a second call waits for the first, so
 * a server never gets a second SIGTERM (libfuse restores the default handler
 * after the first, and a second one would kill it mid-flush).
 */
function stopServer(server: Server): Promise<void> {
  server.stopping ??= stopServerOnce(server);
  return server.stopping;
}

async function stopServerOnce(server: Server): Promise<void> {
  let warning = "";
  if (!server.done) {
    server.child.kill("SIGTERM");
    const timeout = sleep(stopTimeoutMs).then(() => "timeout" as const);
    if ((await Promise.race([server.exited, timeout])) === "timeout") {
      warning = `did not exit within ${stopTimeoutMs / 1000} s of SIGTERM, killed`;
      killGroup(server, "SIGKILL");
      await server.exited;
    } else {
      const { code, signal } = await server.exited;
      if (code !== 0 || signal) warning = `exited with ${signal ?? `code ${code}`} after SIGTERM`;
    }
  }
  if (isMounted(server.mnt)) {
    warning += `${warning ? "; " : ""}left ${server.mnt} mounted, unmounted with umount`;
    await forceUnmount(server.mnt);
  }
  if (warning) console.log(`  warning: ${server.target} ${warning}: ${logTail(server)}`);
}

function killGroup(server: Server, signal: NodeJS.Signals): void {
  try {
    if (server.child.pid) process.kill(-server.child.pid, signal);
  } catch {
    // already gone
  }
}

// ---------------------------------------------------------------- targets

interface Target {
  /** A TargetName, or grovefs-lz4 / grovefs-none in the compression benchmark. */
  name: string;
  /** Survives unmount and mount (the ceiling lives in its server's memory and does not). */
  persistent: boolean;
  /** Makes a fresh, empty filesystem at img (nothing for the ceiling). */
  format(img: string, imageBytes: number): Promise<void>;
  serverArgv(img: string, mnt: string): string[];
}

function makeTarget(name: TargetName, imageBytes: number): Target {
  switch (name) {
    case "grovefs":
      return {
        name,
        persistent: true,
        format: async (img) => {
          if (!fs.existsSync(grovefsCli)) throw new Error(`${path.relative(repoRoot, grovefsCli)} does not exist`);
          await runOk(grovefsCommands(img, "", imageBytes).mkfs, { timeoutMs: 300_000 });
        },
        serverArgv: (img, mnt) => grovefsCommands(img, mnt, imageBytes).mount,
      };
    case "fuse2fs":
      return {
        name,
        persistent: true,
        format: async (img) => {
          fs.closeSync(fs.openSync(img, "w"));
          fs.truncateSync(img, imageBytes);
          await runOk(["mkfs.ext4", "-F", "-q", "-b", "4096", img], { timeoutMs: 300_000 });
        },
        serverArgv: (img, mnt) => ["fuse2fs", img, mnt, "-f", "-o", "big_writes"],
      };
    case "ceiling":
      return {
        name,
        persistent: false,
        format: async () => {
          if (!fs.existsSync(ceilingScript)) throw new Error(`${path.relative(repoRoot, ceilingScript)} does not exist`);
        },
        serverArgv: (_img, mnt) => [...tsNode, ceilingScript, mnt],
      };
  }
}

/** One target's filesystem for one workload group: a fresh image, mounted, remountable. */
class Session {
  server: Server | undefined;
  readonly img: string;
  readonly mnt: string;
  readonly logPath: string;

  constructor(
    readonly target: Target,
    workDir: string,
    group: string,
  ) {
    const base = path.join(workDir, `${target.name}-${group}`);
    this.img = `${base}.img`;
    this.mnt = `${base}.mnt`;
    this.logPath = `${base}.log`;
  }

  /** Formats a fresh image and mounts it. */
  async open(imageBytes: number): Promise<void> {
    await this.format(imageBytes);
    await this.mount();
  }

  /** Formats a fresh image and makes its mount point, without mounting. */
  async format(imageBytes: number): Promise<void> {
    fs.mkdirSync(this.mnt);
    await this.target.format(this.img, imageBytes);
  }

  async mount(): Promise<void> {
    this.server = startServer(this.target.name, this.target.serverArgv(this.img, this.mnt), this.mnt, this.logPath);
    await waitMounted(this.server);
  }

  async unmount(): Promise<void> {
    if (this.server) await stopServer(this.server);
    this.server = undefined;
  }

  /** Makes the next phase start cold: remount (persistent targets only), then drop the kernel caches. */
  async coldStart(): Promise<void> {
    if (this.target.persistent) {
      await this.unmount();
      await this.mount();
    }
    await dropCaches(path.dirname(this.img));
  }

  /** Unmounts and deletes the image. */
  async close(): Promise<void> {
    await this.unmount();
    fs.rmSync(this.img, { force: true });
  }
}

/** Syncs the temp directory's filesystem (the images' dirty pages), then drops page, dentry and inode caches (root only). */
async function dropCaches(dir: string): Promise<void> {
  await runOk(["sync", "-f", dir], { timeoutMs: 300_000 });
  if (isRoot) await runOk(["sh", "-c", "echo 3 > /proc/sys/vm/drop_caches"], { timeoutMs: 300_000 });
}

// ---------------------------------------------------------------- workloads

const metrics = ["seqWrite", "seqRead", "randRead", "randWrite", "create", "stat", "unlink"] as const;
type Metric = (typeof metrics)[number];
type Figures = Partial<Record<Metric, number>>;

interface FioJob {
  error: number;
  read: { io_bytes: number; bw_bytes: number; iops: number };
  write: { io_bytes: number; bw_bytes: number; iops: number };
}

async function fio(workDir: string, name: string, args: string[]): Promise<FioJob> {
  const out = path.join(workDir, `fio-${name}.json`);
  await runOk(["fio", `--name=${name}`, ...fioCommon, ...args, "--output-format=json", `--output=${out}`], {
    timeoutMs: (fioRuntimeCapSeconds + 600) * 1000,
  });
  const job = (JSON.parse(fs.readFileSync(out, "utf8")) as { jobs: FioJob[] }).jobs[0];
  fs.rmSync(out);
  if (job.error !== 0) throw new Error(`fio ${name}: error ${job.error}`);
  return job;
}

function expectBytes(what: string, got: number, want: number): void {
  if (got !== want) throw new Error(`${what}: fio moved ${got} bytes, expected ${want}`);
}

interface Context {
  cfg: Config;
  workDir: string;
  report: (metric: Metric, value: number) => void;
}

async function seqGroup(ctx: Context, s: Session): Promise<void> {
  const file = path.join(s.mnt, "seq");
  const size = ctx.cfg.dataBytes;
  await dropCaches(ctx.workDir);
  const w = await fio(ctx.workDir, "seqwrite", [`--filename=${file}`, "--rw=write", "--bs=1M", `--size=${size}`, "--end_fsync=1"]);
  expectBytes("seq write", w.write.io_bytes, size);
  ctx.report("seqWrite", w.write.bw_bytes / 1e6);

  await s.coldStart();
  const r = await fio(ctx.workDir, "seqread", [`--filename=${file}`, "--rw=read", "--bs=1M", "--allow_file_create=0"]);
  expectBytes("seq read", r.read.io_bytes, size);
  ctx.report("seqRead", r.read.bw_bytes / 1e6);
}

async function randGroup(ctx: Context, s: Session): Promise<void> {
  const file = path.join(s.mnt, "rand");
  const size = ctx.cfg.randBytes;
  const prep = await fio(ctx.workDir, "randprep", [`--filename=${file}`, "--rw=write", "--bs=1M", `--size=${size}`, "--end_fsync=1"]);
  expectBytes("rand prep", prep.write.io_bytes, size);

  const oneRandomPass = ["--bs=4k", "--allow_file_create=0", "--randrepeat=1", `--runtime=${fioRuntimeCapSeconds}`];
  await s.coldStart();
  const r = await fio(ctx.workDir, "randread", [`--filename=${file}`, "--rw=randread", ...oneRandomPass]);
  ctx.report("randRead", r.read.iops);

  await dropCaches(ctx.workDir);
  const w = await fio(ctx.workDir, "randwrite", [`--filename=${file}`, "--rw=randwrite", ...oneRandomPass, "--end_fsync=1"]);
  ctx.report("randWrite", w.write.iops);
}

async function metaGroup(ctx: Context, s: Session): Promise<void> {
  const dir = path.join(s.mnt, "meta");
  const phase = async (name: "create" | "stat" | "unlink") => {
    const r = await runOk([...tsNode, workerScript, name, dir, String(ctx.cfg.files)], { timeoutMs: 3_600_000 });
    const { ops, seconds } = JSON.parse(r.stdout.trim().split("\n").pop()!) as { ops: number; seconds: number };
    ctx.report(name, ops / seconds);
  };
  await dropCaches(ctx.workDir);
  await phase("create");
  await s.coldStart();
  await phase("stat");
  await dropCaches(ctx.workDir);
  await phase("unlink");
}

const groups = [
  { name: "seq", run: seqGroup },
  { name: "rand", run: randGroup },
  { name: "meta", run: metaGroup },
] as const;

/** Runs every workload group on one target; a failing group is recorded and the next one still runs. */
async function benchTarget(cfg: Config, workDir: string, name: TargetName, errors: string[]): Promise<Figures> {
  const target = makeTarget(name, cfg.imageBytes);
  const figures: Figures = {};
  const ctx: Context = {
    cfg,
    workDir,
    report: (metric, value) => {
      figures[metric] = value;
      console.log(`  ${name.padEnd(8)} ${labels[metric].padEnd(26)} ${format(metric, value).padStart(10)} ${units[metric]}`);
    },
  };
  for (const group of groups) {
    if (aborting) break;
    const session = new Session(target, workDir, group.name);
    let opened = false;
    try {
      await session.open(cfg.imageBytes);
      opened = true;
      await group.run(ctx, session);
    } catch (err) {
      if (aborting) break;
      const msg = `${name} ${group.name}: ${err instanceof Error ? err.message : String(err)}`;
      errors.push(msg);
      console.log(`  error: ${msg}`);
      if (!opened) {
        // A target that cannot format or mount a fresh image will not do so for the next group either.
        errors.push(`${name}: skipped the workloads after ${group.name}`);
        break;
      }
    } finally {
      await session.close().catch((err: unknown) => errors.push(`${name} ${group.name} cleanup: ${String(err)}`));
    }
  }
  return figures;
}

// ---------------------------------------------------------------- report

const labels: Record<Metric, string> = {
  seqWrite: "seq write 1M + fsync",
  seqRead: "seq read 1M (cold)",
  randRead: "rand read 4k (cold)",
  randWrite: "rand write 4k + fsync",
  create: "create",
  stat: "stat (cold)",
  unlink: "unlink",
};
const units: Record<Metric, string> = {
  seqWrite: "MB/s",
  seqRead: "MB/s",
  randRead: "IOPS",
  randWrite: "IOPS",
  create: "ops/s",
  stat: "ops/s",
  unlink: "ops/s",
};
/** The goals: grovefs/fuse2fs at least `fuse2fs`, grovefs/ceiling at least `ceiling`. */
const goals: Partial<Record<Metric, { fuse2fs?: number; ceiling?: number }>> = {
  seqWrite: { fuse2fs: 3, ceiling: 0.7 },
  seqRead: { fuse2fs: 3, ceiling: 0.7 },
  create: { ceiling: 0.7 },
  stat: { ceiling: 0.7 },
  unlink: { ceiling: 0.7 },
};

function format(metric: Metric, value: number | undefined): string {
  if (value === undefined) return "—";
  return units[metric] === "MB/s" ? value.toFixed(1) : Math.round(value).toString();
}

function printReport(cfg: Config, results: Map<TargetName, Figures>): void {
  const names = cfg.targets;
  console.log("\nResults");
  console.log(`  ${"workload".padEnd(24)} ${"unit".padEnd(6)} ${names.map((n) => n.padStart(10)).join(" ")}`);
  for (const m of metrics) {
    console.log(`  ${labels[m].padEnd(24)} ${units[m].padEnd(6)} ${names.map((n) => format(m, results.get(n)?.[m]).padStart(10)).join(" ")}`);
  }

  const g = results.get("grovefs");
  if (!g) return;
  const ratio = (m: Metric, other: TargetName) => {
    const a = g[m];
    const b = results.get(other)?.[m];
    return a !== undefined && b !== undefined && b > 0 ? a / b : undefined;
  };
  const cell = (r: number | undefined, goal: number | undefined) =>
    (r === undefined ? "—" : `${r.toFixed(2)}×`) + (goal === undefined ? "" : ` (≥${goal}${r === undefined ? "" : Number(r.toFixed(2)) >= goal ? " ok" : " MISS"})`);
  console.log("\nRatios (goal in parentheses)");
  console.log(`  ${"workload".padEnd(24)} ${"grovefs/fuse2fs".padEnd(20)} grovefs/ceiling`);
  for (const m of metrics) {
    const goal = goals[m] ?? {};
    console.log(`  ${labels[m].padEnd(24)} ${cell(ratio(m, "fuse2fs"), goal.fuse2fs).padEnd(20)} ${cell(ratio(m, "ceiling"), goal.ceiling)}`);
  }
}

// ---------------------------------------------------------------- compression benchmark (--compress)

const compressions = ["lz4", "none"] as const;
type Compression = (typeof compressions)[number];

const compressMetrics = ["treeWrite", "treeRead", "treeSpace", "randomWrite", "randomRead", "randomSpace"] as const;
type CompressMetric = (typeof compressMetrics)[number];
type Samples = Record<CompressMetric, number[]>;

const compressLabels: Record<CompressMetric, { label: string; unit: string }> = {
  treeWrite: { label: "tree write (cp -r + sync)", unit: "MB/s" },
  treeRead: { label: "tree read (tar, cold)", unit: "MB/s" },
  treeSpace: { label: "tree space on disk", unit: "MB" },
  randomWrite: { label: "random write (fio + fsync)", unit: "MB/s" },
  randomRead: { label: "random read (fio, cold)", unit: "MB/s" },
  randomSpace: { label: "random space on disk", unit: "MB" },
};
/** Throughput goals are lz4/none; space goals are none/lz4 (how many times smaller). */
const compressGoals: Partial<Record<CompressMetric, number>> = { treeWrite: 0.8, treeSpace: 1.5, randomWrite: 0.95 };

function grovefsTarget(compress: Compression, imageBytes: number): Target {
  return {
    name: `grovefs-${compress}`,
    persistent: true,
    format: async (img) => {
      if (!fs.existsSync(grovefsCli)) throw new Error(`${path.relative(repoRoot, grovefsCli)} does not exist`);
      await runOk(grovefsCommands(img, "", imageBytes, compress).mkfs, { timeoutMs: 300_000 });
    },
    serverArgv: (img, mnt) => grovefsCommands(img, mnt, imageBytes).mount,
  };
}

interface GroveInfo {
  inUse: boolean;
  usedBytes?: number;
  logicalUsedBytes?: number;
  compression?: string;
  compressed?: { extents: number; diskBytes: number; logicalBytes: number };
}

/** `grovefs info --json` of an unmounted image. */
async function groveInfo(img: string): Promise<GroveInfo & { usedBytes: number }> {
  const r = await runOk(grovefsCommands(img, "", 0).info, { timeoutMs: 300_000 });
  const info = JSON.parse(r.stdout) as GroveInfo;
  if (info.inUse || info.usedBytes === undefined) throw new Error(`grovefs info ${img}: still in use after unmount`);
  return { ...info, usedBytes: info.usedBytes };
}

/** The tree copied into each mount, staged once outside the mounts. */
interface DataSet {
  dir: string;
  bytes: number;
  files: number;
  dirs: number;
  /** Files left out because they would have passed the cap. */
  skipped: number;
  /** lz4-napi's block compression of each file, summed: the compressor's own ratio on this data. */
  lz4Bytes: number;
}

/** Copies `source` to `dest`, following symlinks (each directory once), up to `capBytes` of file data. */
function stageTree(source: string, dest: string, capBytes: number): DataSet {
  const set: DataSet = { dir: dest, bytes: 0, files: 0, dirs: 0, skipped: 0, lz4Bytes: 0 };
  const seen = new Set<string>();
  const walk = (from: string, to: string) => {
    seen.add(fs.realpathSync(from));
    fs.mkdirSync(to);
    set.dirs++;
    for (const name of fs.readdirSync(from).sort()) {
      const src = path.join(from, name);
      const stat = fs.statSync(src, { throwIfNoEntry: false });
      if (stat === undefined) continue; // a dangling symlink
      if (stat.isDirectory()) {
        if (!seen.has(fs.realpathSync(src))) walk(src, path.join(to, name));
      } else if (stat.isFile()) {
        if (set.bytes + stat.size > capBytes) {
          set.skipped++;
          continue;
        }
        const data = fs.readFileSync(src);
        fs.writeFileSync(path.join(to, name), data);
        set.bytes += data.length;
        set.files++;
        set.lz4Bytes += Math.min(data.length, compressSync(data).length);
      }
    }
  };
  walk(source, dest);
  return set;
}

interface CompressContext {
  cfg: Config;
  compress: CompressConfig;
  workDir: string;
  data: DataSet;
  samples: Map<Compression, Samples>;
  /** What the lz4 volumes' info said about compressed extents, from the last run of each workload. */
  lastInfo: Map<string, GroveInfo>;
}

const mb = (bytes: number) => bytes / 1e6;

async function timed(argv: string[]): Promise<number> {
  const started = performance.now();
  await runOk(argv, { timeoutMs: 3_600_000 });
  return (performance.now() - started) / 1000;
}

/** cp -r of the staged tree + fsync of the copy (grovefs commits everything on it); returns seconds. */
async function treeWrite(ctx: CompressContext, s: Session): Promise<number> {
  await dropCaches(ctx.workDir);
  // Read the source once so that both targets copy it from the page cache.
  await runOk(["sh", "-c", 'tar cf - -C "$1" . | cat > /dev/null', "sh", ctx.data.dir], { timeoutMs: 3_600_000 });
  return timed(["sh", "-c", 'cp -r "$1" "$2/tree" && sync "$2/tree"', "sh", ctx.data.dir, s.mnt]);
}

/** Reads the whole tree back (tar into a pipe: tar skips the reads when writing to /dev/null itself), then checks it untimed. */
async function treeRead(ctx: CompressContext, s: Session): Promise<number> {
  const seconds = await timed(["sh", "-c", 'tar cf - -C "$1" tree | cat > /dev/null', "sh", s.mnt]);
  const diff = await run(["diff", "-rq", ctx.data.dir, path.join(s.mnt, "tree")], { timeoutMs: 3_600_000 });
  if (diff.code !== 0) throw new Error(`the tree read back differs from the source: ${tail(diff.stdout + diff.stderr)}`);
  return seconds;
}

/** One measurement: a fresh image, the write, space from `grovefs info`, a remount, the cold read. */
async function compressRun(ctx: CompressContext, workload: "tree" | "random", compress: Compression, runIndex: number): Promise<void> {
  const session = new Session(grovefsTarget(compress, ctx.cfg.imageBytes), ctx.workDir, `${workload}-${runIndex}`);
  const figures: Partial<Record<CompressMetric, number>> = {};
  let detail = "";
  try {
    await session.format(ctx.cfg.imageBytes);
    const empty = (await groveInfo(session.img)).usedBytes;
    await session.mount();
    let bytes: number;
    if (workload === "tree") {
      bytes = ctx.data.bytes;
      figures.treeWrite = mb(bytes) / (await treeWrite(ctx, session));
    } else {
      bytes = ctx.cfg.dataBytes;
      const file = path.join(session.mnt, "random");
      await dropCaches(ctx.workDir);
      const w = await fio(ctx.workDir, "randomdata", [`--filename=${file}`, "--rw=write", "--bs=1M", `--size=${bytes}`, "--refill_buffers", "--end_fsync=1"]);
      expectBytes("random write", w.write.io_bytes, bytes);
      figures.randomWrite = w.write.bw_bytes / 1e6;
    }
    await session.unmount();
    const info = await groveInfo(session.img);
    figures[workload === "tree" ? "treeSpace" : "randomSpace"] = mb(info.usedBytes - empty);
    const c = info.compressed;
    if (c !== undefined) detail = ` (${c.extents} lz4 extents: ${mb(c.diskBytes).toFixed(1)} MB on disk for ${mb(c.logicalBytes).toFixed(1)} MB)`;
    ctx.lastInfo.set(`${workload}-${compress}`, { ...info, usedBytes: info.usedBytes - empty, logicalUsedBytes: (info.logicalUsedBytes ?? info.usedBytes) - empty });
    await session.coldStart();
    if (workload === "tree") figures.treeRead = mb(bytes) / (await treeRead(ctx, session));
    else {
      const r = await fio(ctx.workDir, "randomread", [`--filename=${path.join(session.mnt, "random")}`, "--rw=read", "--bs=1M", "--allow_file_create=0"]);
      expectBytes("random read", r.read.io_bytes, bytes);
      figures.randomRead = r.read.bw_bytes / 1e6;
    }
  } finally {
    await session.close();
  }
  const samples = ctx.samples.get(compress)!;
  const shown: string[] = [];
  for (const metric of compressMetrics) {
    const value = figures[metric];
    if (value === undefined) continue;
    samples[metric].push(value);
    shown.push(`${compressLabels[metric].label} ${value.toFixed(1)} ${compressLabels[metric].unit}`);
  }
  console.log(`  run ${runIndex} ${compress.padEnd(4)} ${shown.join(", ")}${detail}`);
}

function median(values: number[]): number | undefined {
  if (values.length === 0) return undefined;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

function printCompressReport(ctx: CompressContext): void {
  const lz4 = ctx.samples.get("lz4")!;
  const none = ctx.samples.get("none")!;
  console.log(`\nCompression: medians of ${ctx.compress.runs} runs per target (MB = 10^6 bytes; ratio: lz4/none for speed, none/lz4 for space)`);
  console.log(`  ${"measurement".padEnd(28)} ${"unit".padEnd(5)} ${"lz4".padStart(9)} ${"none".padStart(9)}   ratio`);
  for (const metric of compressMetrics) {
    const a = median(lz4[metric]);
    const b = median(none[metric]);
    const space = metric.endsWith("Space");
    const r = a === undefined || b === undefined ? undefined : space ? (a > 0 ? b / a : undefined) : b > 0 ? a / b : undefined;
    const goal = compressGoals[metric];
    const verdict = goal === undefined || r === undefined ? "" : Number(r.toFixed(2)) >= goal ? " ok" : " MISS";
    const ratioText = (r === undefined ? "—" : `${r.toFixed(2)}×${space ? " smaller" : ""}`) + (goal === undefined ? "" : ` (goal ≥${goal}${verdict})`);
    const cell = (v: number | undefined) => (v === undefined ? "—" : v.toFixed(1)).padStart(9);
    const { label, unit } = compressLabels[metric];
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

/** The compression benchmark: both targets, each measurement `runs` times, alternating. */
async function compressBench(cfg: Config, compress: CompressConfig, workDir: string, errors: string[]): Promise<CompressContext> {
  const started = performance.now();
  const data = stageTree(compress.treeSource, path.join(workDir, "dataset"), compress.treeCapBytes);
  const stageSeconds = (performance.now() - started) / 1000;
  console.log(
    `  data set: ${compress.treeSource} (symlinks followed), ${data.files} files in ${data.dirs} directories, ` +
      `${mb(data.bytes).toFixed(1)} MB${data.skipped > 0 ? ` (capped at ${mb(compress.treeCapBytes).toFixed(0)} MB: ${data.skipped} files left out)` : ""}; ` +
      `staged in ${stageSeconds.toFixed(1)} s`,
  );
  console.log(`  lz4-napi on each file of it: ${mb(data.lz4Bytes).toFixed(1)} MB (${(data.bytes / Math.max(1, data.lz4Bytes)).toFixed(2)}×, no block rounding)`);
  console.log(`  random file: ${mb(cfg.dataBytes).toFixed(1)} MB of fio --refill_buffers data\n`);
  const samples = new Map<Compression, Samples>();
  for (const c of compressions) samples.set(c, Object.fromEntries(compressMetrics.map((m) => [m, [] as number[]])) as Samples);
  const ctx: CompressContext = { cfg, compress, workDir, data, samples, lastInfo: new Map() };
  for (const workload of ["tree", "random"] as const) {
    try {
      for (let runIndex = 1; runIndex <= compress.runs; runIndex++) {
        // ABBA order: whichever target runs first in a pair (warmer or colder machine, page cache) is not always the same one.
        const order = runIndex % 2 === 1 ? compressions : [...compressions].reverse();
        for (const c of order) {
          if (aborting) return ctx;
          await compressRun(ctx, workload, c, runIndex);
        }
      }
    } catch (err) {
      if (aborting) return ctx;
      const msg = `${workload}: ${err instanceof Error ? err.message : String(err)}`;
      errors.push(msg);
      console.log(`  error: ${msg} (skipping the rest of ${workload})`);
    }
  }
  return ctx;
}

// ---------------------------------------------------------------- prerequisites

/** fio always; fuse2fs and mkfs.ext4 when fuse2fs is a target (tar, cp and diff come with Debian). Installs them as root, else says what to install. */
function ensureTools(cfg: Config): void {
  const needed = [
    "fio",
    "mountpoint",
    "umount",
    "sync",
    ...(cfg.targets.includes("fuse2fs") ? ["fuse2fs", "mkfs.ext4"] : []),
    ...(cfg.compress !== null ? ["tar", "cp", "diff"] : []),
  ];
  const missing = needed.filter((c) => !commandExists(c));
  if (missing.length === 0) return;
  const install = ["apt-get", "install", "-y", "fuse2fs", "fio"];
  if (!isRoot) {
    console.error(`bench:fs needs ${missing.join(", ")}: run \`${install.join(" ")}\` as root`);
    process.exit(1);
  }
  console.log(`installing fuse2fs and fio (missing: ${missing.join(", ")})`);
  if (spawnSync(install[0], install.slice(1), { stdio: "inherit" }).status !== 0) {
    spawnSync("apt-get", ["update"], { stdio: "inherit" });
    if (spawnSync(install[0], install.slice(1), { stdio: "inherit" }).status !== 0) {
      console.error(`bench:fs: \`${install.join(" ")}\` failed`);
      process.exit(1);
    }
  }
  const still = needed.filter((c) => !commandExists(c));
  if (still.length > 0) {
    console.error(`bench:fs: still missing after the install: ${still.join(", ")}`);
    process.exit(1);
  }
}

// ---------------------------------------------------------------- cleanup

let workDir: string | undefined;
let cleaning: Promise<void> | undefined;

/** Stops every server, unmounts every mount point of ours, then deletes the temp dir if nothing is mounted under it. */
function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    for (const child of runningCommands) child.kill("SIGKILL");
    await Promise.all([...liveServers].map((s) => stopServer(s).catch((err: unknown) => console.error(`cleanup: ${String(err)}`))));
    for (const mnt of ourMountPoints) await forceUnmount(mnt).catch((err: unknown) => console.error(`cleanup: ${String(err)}`));
    removeWorkDir();
  })();
  return cleaning;
}

function removeWorkDir(): void {
  if (!workDir || !fs.existsSync(workDir)) return;
  const prefix = workDir + path.sep;
  const stillMounted = [...mountedPaths()].filter((p) => p.startsWith(prefix));
  if (stillMounted.length > 0) {
    console.error(`cleanup: leaving ${workDir}: still mounted: ${stillMounted.join(", ")}`);
    return;
  }
  fs.rmSync(workDir, { recursive: true, force: true });
}

/** Last resort when the process exits without the async cleanup having finished. */
function cleanupSync(): void {
  for (const child of runningCommands) child.kill("SIGKILL");
  for (const s of liveServers) killGroup(s, "SIGKILL");
  for (const mnt of ourMountPoints) {
    if (isMounted(mnt)) spawnSync("umount", ["-l", mnt], { stdio: "ignore", timeout: 30_000 });
  }
  removeWorkDir();
}

function installSignalHandlers(): void {
  for (const [signal, code] of [["SIGINT", 130], ["SIGTERM", 143], ["SIGHUP", 129]] as const) {
    process.on(signal, () => {
      if (aborting) return;
      aborting = true;
      console.error(`\n${signal}: cleaning up`);
      void cleanup().finally(() => process.exit(code));
    });
  }
  process.on("exit", cleanupSync);
}

// ---------------------------------------------------------------- main

async function main(): Promise<number> {
  const cfg = parseConfig();
  verbose = cfg.verbose;
  ensureTools(cfg);
  installSignalHandlers();
  workDir = fs.mkdtempSync(path.join(os.tmpdir(), "bench_fs-"));

  const mib = (b: number) => (b >= GiB && b % GiB === 0 ? `${b / GiB} GiB` : `${b / MiB} MiB`);
  console.log(`bench:fs on ${os.cpus().length} CPUs, ${(os.totalmem() / GiB).toFixed(1)} GiB RAM, Linux ${os.release()}, Node ${process.version}`);
  if (cfg.compress !== null) {
    console.log(`  compression: grovefs mkfs --compress lz4 against --compress none; work dir ${workDir}`);
    console.log(`  ${cfg.compress.runs} runs per target alternating (lz4 none, none lz4, ...), each on a fresh image of ${mib(cfg.imageBytes)}`);
  } else {
    console.log(`  targets: ${cfg.targets.join(", ")}; work dir ${workDir}`);
    console.log(`  seq file ${mib(cfg.dataBytes)}, rand file ${mib(cfg.randBytes)}, ${cfg.files} files, images ${mib(cfg.imageBytes)}`);
  }
  console.log(
    `  caches: ${isRoot ? "sync + drop_caches (echo 3) before every timed phase" : "NOT dropped (not root)"}; ` +
      (cfg.compress !== null ? "remounted before each read phase" : "grovefs and fuse2fs remounted before each read phase, ceiling (in-memory) not"),
  );
  console.log(`  fio ${fioCommon.join(" ")}; MB = 10^6 bytes\n`);

  const errors: string[] = [];
  if (cfg.compress !== null) {
    let ctx: CompressContext | undefined;
    try {
      ctx = await compressBench(cfg, cfg.compress, workDir, errors);
    } finally {
      await cleanup();
    }
    printCompressReport(ctx);
  } else {
    const results = new Map<TargetName, Figures>();
    try {
      for (const name of cfg.targets) results.set(name, await benchTarget(cfg, workDir, name, errors));
    } finally {
      await cleanup();
    }
    printReport(cfg, results);
  }
  if (errors.length > 0) {
    console.log(`\n${errors.length} error(s):`);
    for (const e of errors) console.log(`  ${e}`);
    return 1;
  }
  return 0;
}

main().then(
  (code) => process.exit(code),
  async (err: unknown) => {
    console.error(`bench:fs: ${err instanceof Error ? err.message : String(err)}`);
    await cleanup();
    process.exit(1);
  },
);
