/**
 * Shared machinery for the end-to-end suites: a real image, mounted through
 * the kernel by the CLI (`grovefs mount`, daemon mode), driven only by child
 * processes.
 *
 * Why child processes only: a process that makes a synchronous fs call on a
 * FUSE mount blocks until the daemon answers, and a hung or killed daemon
 * would hang the vitest worker in the kernel. Every command here runs
 * asynchronously with a timeout and SIGKILL. The only files this process
 * touches itself are outside the mount (the image when it is not mounted,
 * trees in the tmp dir) and /proc (the mount table, the daemon's pid).
 *
 * Cleanup is paranoid: `E2eVolume.cleanup` lazily unmounts whatever is still
 * mounted under the volume's tmp dir and SIGKILLs every process that still
 * holds its image open, then removes the tmp dir only when nothing is mounted
 * under it any more.
 */
import { execFile, spawn, type ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as fsp from "node:fs/promises";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { expect } from "vitest";
import { dir as tmpDir } from "tmp-promise";
import { FileDevice } from "../kvstore/index.js";
import { checkFilesystem, type FsReport } from "../fs/index.js";

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

const commandTimeoutMs = 120_000;

/**
 * Why the end-to-end suites cannot run here, or null when they can: they mount
 * through the kernel, which needs /dev/fuse and (without fusermount) root.
 */
export const e2eSkipReason: string | null = (() => {
  // CI runs as root with /dev/fuse: there the suites must run, and fail if they cannot mount.
  if (process.env.CI === "true") return null;
  if (process.getuid?.() !== 0) return "they need root (mount and umount -l without fusermount)";
  if (!fs.existsSync("/dev/fuse")) return "there is no /dev/fuse";
  return null;
})();
if (e2eSkipReason !== null) process.stderr.write(`e2e suites skipped: ${e2eSkipReason}\n`);

export interface RunResult {
  code: number;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  cwd?: string;
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
  input?: string;
}

/** Runs a command asynchronously; never throws for a non-zero exit (see `ok`). */
export function run(cmd: string, args: string[], options: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve) => {
    const child = execFile(
      cmd,
      args,
      {
        cwd: options.cwd,
        env: options.env ?? process.env,
        timeout: options.timeoutMs ?? commandTimeoutMs,
        killSignal: "SIGKILL",
        maxBuffer: 64 * 1024 * 1024,
        encoding: "utf8",
      },
      (error, stdout, stderr) => {
        const err = error as (NodeJS.ErrnoException & { code?: number | string; signal?: NodeJS.Signals }) | null;
        let code = 0;
        if (err) code = typeof err.code === "number" ? err.code : err.signal ? 128 : 127;
        if (err && typeof err.code === "string") stderr += `\n[spawn failed: ${err.message}]`;
        resolve({ code, signal: err?.signal ?? null, stdout, stderr });
      },
    );
    if (options.input !== undefined) child.stdin?.end(options.input);
    else child.stdin?.end();
  });
}

function describeRun(what: string, r: RunResult): string {
  return `${what} exited ${r.code}${r.signal ? ` (${r.signal})` : ""}\n--- stdout:\n${r.stdout.slice(-4000)}\n--- stderr:\n${r.stderr.slice(-4000)}`;
}

/** Runs a command and fails the test, with its output, unless it exits 0. Returns stdout. */
export async function ok(cmd: string, args: string[], options: RunOptions = {}): Promise<string> {
  const r = await run(cmd, args, options);
  if (r.code !== 0) throw new Error(describeRun(`${cmd} ${args.join(" ")}`, r));
  return r.stdout;
}

/** `sh -ec script` (with $1.. = args), failing the test unless it exits 0. Returns stdout. */
export function sh(script: string, args: string[] = [], options: RunOptions = {}): Promise<string> {
  return ok("sh", ["-ec", script, "sh", ...args], options);
}

/** `sh -c script` without failing: for commands that are meant to fail. */
export function shRun(script: string, args: string[] = [], options: RunOptions = {}): Promise<RunResult> {
  return run("sh", ["-c", script, "sh", ...args], options);
}

// ---------------------------------------------------------------------------
// The CLI

/** How to start the CLI: the published bin if it is there, else the TypeScript entry point through tsx. */
export function cliCommand(): string[] {
  const bin = path.join(repoRoot, "bin", "grovefs.mjs");
  if (fs.existsSync(bin)) return [process.execPath, bin];
  return [process.execPath, "--import", "tsx", path.join(repoRoot, "cli", "main.ts")];
}

/** Runs `grovefs ARGS...`; never throws for a non-zero exit. */
export function grove(args: string[], options: RunOptions = {}): Promise<RunResult> {
  const [cmd, ...pre] = cliCommand();
  return run(cmd!, [...pre, ...args], { cwd: repoRoot, ...options });
}


// ---------------------------------------------------------------------------
// /proc: the mount table and the daemon

export interface MountInfo {
  mountpoint: string;
  fstype: string;
  source: string;
  options: string;
}

const unescapeMountinfo = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));

export async function readMountinfo(): Promise<MountInfo[]> {
  const text = await fsp.readFile("/proc/self/mountinfo", "utf8");
  const mounts: MountInfo[] = [];
  for (const line of text.split("\n")) {
    const fields = line.split(" ");
    const dash = fields.indexOf("-");
    if (dash < 0) continue;
    mounts.push({
      mountpoint: unescapeMountinfo(fields[4]!),
      options: fields[5]!,
      fstype: fields[dash + 1]!,
      source: unescapeMountinfo(fields[dash + 2] ?? ""),
    });
  }
  return mounts;
}

export async function mountsAt(mountpoint: string): Promise<MountInfo[]> {
  return (await readMountinfo()).filter((m) => m.mountpoint === mountpoint);
}

/** Pids of the processes (other than this one) that hold `file` open: the mount daemon holds its image. */
export async function pidsHolding(file: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await fsp.readdir("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const pid = Number(entry);
    if (pid === process.pid) continue;
    let fds: string[];
    try {
      fds = await fsp.readdir(`/proc/${pid}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      let target: string;
      try {
        target = await fsp.readlink(`/proc/${pid}/fd/${fd}`);
      } catch {
        continue;
      }
      if (target === file) {
        pids.push(pid);
        break;
      }
    }
  }
  return pids;
}

export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  // A zombie still answers kill 0; it is dead for our purposes.
  try {
    return !/^\S+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return false;
  }
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `probe` every 50 ms until it returns true or `timeoutMs` passes; returns its last answer. */
export async function waitFor(probe: () => Promise<boolean> | boolean, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await probe()) return true;
    if (Date.now() > deadline) return false;
    await sleep(50);
  }
}

// ---------------------------------------------------------------------------
// A volume under test

export class E2eVolume {
  /** Processes spawned by a test that must die before cleanup. */
  readonly children = new Set<ChildProcess>();

  private constructor(
    readonly dir: string,
    readonly image: string,
    readonly mnt: string,
    private readonly removeDir: () => Promise<void>,
  ) {}

  /** A tmp dir holding IMAGE (not yet formatted) and an empty mountpoint MNT. */
  static async create(prefix: string): Promise<E2eVolume> {
    const tmp = await tmpDir({ prefix: `grovefs-${prefix}-`, unsafeCleanup: true });
    // realpath: the mount table and /proc/*/fd spell canonical paths.
    const dir = await fsp.realpath(tmp.path);
    const mnt = path.join(dir, "mnt");
    await fsp.mkdir(mnt);
    return new E2eVolume(dir, path.join(dir, "image.grove"), mnt, tmp.cleanup);
  }

  /** A fresh volume, formatted (`mkfs --size size`) and mounted. */
  static async mounted(prefix: string, size = "2G"): Promise<E2eVolume> {
    const volume = await E2eVolume.create(prefix);
    try {
      await volume.mkfs(size);
      await volume.mount();
    } catch (error) {
      await volume.cleanup();
      throw error;
    }
    return volume;
  }

  /** Unmounts with the CLI, then runs the full checker over the image. */
  async finish(): Promise<void> {
    await this.umount();
    this.check();
  }

  /** A path in the tmp dir, outside the mount. */
  out(...parts: string[]): string {
    return path.join(this.dir, ...parts);
  }

  /** A path inside the mount (for child processes only). */
  in(...parts: string[]): string {
    return path.join(this.mnt, ...parts);
  }

  /**
   * The CLI's environment: its pid records and daemon logs go to this volume's
   * tmp dir (GROVEFS_RUN_DIR), not to /run/grovefs.
   */
  get env(): NodeJS.ProcessEnv {
    return { ...process.env, GROVEFS_RUN_DIR: this.out("run"), GROVEFS_STATE_DIR: this.out("state") };
  }

  /** `grovefs ARGS...` with this volume's environment; never throws for a non-zero exit. */
  grove(args: string[], options: RunOptions = {}): Promise<RunResult> {
    return grove(args, { env: this.env, ...options });
  }

  /** `grovefs ARGS...`, failing the test (with the daemon logs) unless it exits 0. */
  async groveOk(args: string[], options: RunOptions = {}): Promise<RunResult> {
    const r = await this.grove(args, options);
    if (r.code !== 0) throw new Error(`${describeRun(`grovefs ${args.join(" ")}`, r)}\n${await this.daemonLogs()}`);
    return r;
  }

  /** The daemon logs in the run dir (bug reports only, in normal operation). */
  async daemonLogs(): Promise<string> {
    const runDir = this.out("run");
    let names: string[] = [];
    try {
      names = (await fsp.readdir(runDir)).filter((name) => name.endsWith(".log"));
    } catch {
      return "(no daemon logs)";
    }
    const parts: string[] = [];
    for (const name of names) parts.push(`--- ${name}:\n${(await fsp.readFile(path.join(runDir, name), "utf8")).slice(-8000)}`);
    return parts.join("\n") || "(no daemon logs)";
  }

  /** The pid record the CLI wrote for MNT, if any. */
  async pidRecord(mountpoint = this.mnt): Promise<{ pid: number; image: string; mountpoint: string } | null> {
    const runDir = this.out("run");
    try {
      for (const name of await fsp.readdir(runDir)) {
        if (!name.endsWith(".pid")) continue;
        const record = JSON.parse(await fsp.readFile(path.join(runDir, name), "utf8"));
        if (record.mountpoint === mountpoint) return record;
      }
    } catch {
      // no run dir yet
    }
    return null;
  }

  /** `grovefs mkfs IMAGE --size size [extra]` (e.g. `["--compress", "lz4"]`). */
  async mkfs(size = "4G", extra: string[] = []): Promise<void> {
    await this.groveOk(["mkfs", this.image, "--size", size, ...extra]);
  }

  /**
   * The transport every mount of these suites uses: the CLI's default (the
   * kernel protocol, as root) unless a suite sets it, as the fuse-native
   * conformance subset does, or GROVE_TRANSPORT names one.
   */
  static transport: "kernel" | "fuse-native" | undefined =
    process.env.GROVE_TRANSPORT === "kernel" || process.env.GROVE_TRANSPORT === "fuse-native" ? process.env.GROVE_TRANSPORT : undefined;

  /** `grovefs mount IMAGE MNT [extra]`; once it returns, the mount must be in the mount table and usable. */
  async mount(extra: string[] = []): Promise<void> {
    const transport = E2eVolume.transport === undefined ? [] : ["-o", `transport=${E2eVolume.transport}`];
    await this.groveOk(["mount", this.image, this.mnt, ...transport, ...extra]);
    const mounts = await mountsAt(this.mnt);
    expect(mounts.length, `grovefs mount returned but nothing is mounted at ${this.mnt}`).toBeGreaterThan(0);
    expect(mounts.at(-1)!.fstype).toMatch(/^fuse/);
    // Usable right away: a child can list the root.
    await ok("ls", ["-a", this.mnt], { timeoutMs: 30_000 });
  }

  /** `grovefs umount MNT`: commits, unmounts, and the daemon has exited when it returns. */
  async umount(): Promise<void> {
    await this.groveOk(["umount", this.mnt]);
    expect(await mountsAt(this.mnt), "still mounted after grovefs umount").toEqual([]);
    expect(await pidsHolding(this.image), "a process still holds the image after grovefs umount").toEqual([]);
  }

  /** The mount daemon: the one process holding the image open, which is also the one in the CLI's pid record. */
  async daemonPid(): Promise<number> {
    const pids = await pidsHolding(this.image);
    expect(pids.length, `processes holding ${this.image}: ${pids.join(", ")}`).toBe(1);
    const record = await this.pidRecord();
    expect(record?.pid, "the pid record names the process that holds the image").toBe(pids[0]);
    return pids[0]!;
  }

  /** The full checker, with data checksums, over the unmounted image: no problems. */
  check(): FsReport {
    const device = FileDevice.open(this.image, { readOnly: true });
    let report: FsReport;
    try {
      report = checkFilesystem(device, { verifyData: true });
    } finally {
      device.close();
    }
    if (report.problems.length > 0) {
      throw new Error(`checkFilesystem found ${report.problems.length} problems:\n${report.problems.slice(0, 30).join("\n")}`);
    }
    return report;
  }

  /** Spawns a long-running child (e.g. a writer); it is SIGKILLed at cleanup if still alive. */
  spawn(cmd: string, args: string[], options: { cwd?: string } = {}): ChildProcess {
    const child = spawn(cmd, args, { cwd: options.cwd, stdio: ["ignore", "pipe", "pipe"] });
    this.children.add(child);
    child.on("exit", () => this.children.delete(child));
    return child;
  }

  /** Lazy-unmounts everything under the tmp dir, kills leftover daemons and children, removes the tmp dir. */
  async cleanup(): Promise<void> {
    for (const child of this.children) {
      if (child.pid !== undefined && child.exitCode === null) child.kill("SIGKILL");
    }
    const leftovers = (await readMountinfo()).filter((m) => m.mountpoint === this.mnt || m.mountpoint.startsWith(this.dir + "/"));
    for (const m of leftovers.reverse()) await run("umount", ["-l", m.mountpoint], { timeoutMs: 30_000 });
    for (const pid of await pidsHolding(this.image).catch(() => [])) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // already gone
      }
    }
    const stillMounted = (await readMountinfo()).some((m) => m.mountpoint === this.mnt || m.mountpoint.startsWith(this.dir + "/"));
    if (stillMounted) {
      process.stderr.write(`e2e cleanup: ${this.dir} still has a mount under it; leaving it in place\n`);
      return;
    }
    await this.removeDir().catch((error: unknown) => {
      process.stderr.write(`e2e cleanup: cannot remove ${this.dir}: ${(error as Error).message}\n`);
    });
  }
}

// ---------------------------------------------------------------------------
// Trees and checksums (always through child processes when they are in the mount)

/** `sha256sum` of every regular file under `root`, keyed by relative path. */
export async function checksums(root: string): Promise<Map<string, string>> {
  const out = await sh(`cd "$1" && find . -type f -print0 | sort -z | xargs -0 -r sha256sum`, [root], { timeoutMs: 300_000 });
  const sums = new Map<string, string>();
  for (const line of out.split("\n")) {
    if (line === "") continue;
    const match = /^([0-9a-f]{64}) {2}(.*)$/.exec(line);
    if (!match) throw new Error(`unexpected sha256sum line: ${line}`);
    sums.set(match[2]!, match[1]!);
  }
  return sums;
}

/**
 * One line per entry under `root` (not `root` itself): path, type, mode,
 * owner, size (not for directories: that is filesystem-specific), mtime with
 * nanoseconds, link count, symlink target. Sorted.
 */
export async function treeListing(root: string): Promise<string[]> {
  const out = await sh(`cd "$1" && find . -mindepth 1 -printf '%p|%y|%m|%U:%G|%s|%T@|%n|%l\\n' | LC_ALL=C sort`, [root]);
  return out
    .split("\n")
    .filter((line) => line !== "")
    .map((line) => {
      const fields = line.split("|");
      if (fields[1] === "d") fields[4] = "-";
      return fields.join("|");
    });
}

/** Maps a Map to a plain object, for readable diffs in expect(). */
export function asObject<V>(map: Map<string, V>): Record<string, V> {
  return Object.fromEntries([...map].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

/**
 * Deterministic "random-ish" file contents: xorshift32 fills a pool once; each
 * 4 KiB block of a file is a slice of the pool at an offset derived from the
 * file's seed and block index, with both stamped in its first 16 bytes, so a
 * misplaced or swapped block changes the checksum.
 */
export class ContentGenerator {
  private readonly pool: Buffer;

  constructor(seed: number, poolBytes = 1 << 20) {
    this.pool = Buffer.alloc(poolBytes + 8192);
    let x = seed >>> 0 || 0x9e3779b9;
    for (let i = 0; i < this.pool.length; i += 4) {
      x ^= x << 13;
      x >>>= 0;
      x ^= x >>> 17;
      x ^= x << 5;
      x >>>= 0;
      this.pool.writeUInt32LE(x, i);
    }
  }

  /** Writes `size` bytes of file `fileSeed` to `file` (outside any mount) in 4 MiB chunks. */
  async writeFile(file: string, size: number, fileSeed: number): Promise<void> {
    const handle = await fsp.open(file, "w");
    try {
      const chunkBytes = 4 << 20;
      const chunk = Buffer.alloc(chunkBytes);
      for (let offset = 0; offset < size; offset += chunkBytes) {
        const n = Math.min(chunkBytes, size - offset);
        for (let b = 0; b < n; b += 4096) {
          const block = (offset + b) / 4096;
          const from = ((block * 7919 + fileSeed * 104729) % (this.pool.length - 8192 - 4096)) & ~3;
          this.pool.copy(chunk, b, from, from + 4096);
          chunk.writeUInt32LE(fileSeed >>> 0, b);
          chunk.writeUInt32LE(block >>> 0, b + 4);
        }
        await handle.write(chunk, 0, n, offset);
      }
    } finally {
      await handle.close();
    }
  }
}

/** Writes `data` over block `lba` of the image file, durably: damage made under grovefs's feet. */
export function overwriteBlock(image: string, lba: number, data: Buffer): void {
  const fd = fs.openSync(image, "r+");
  try {
    fs.writeSync(fd, data, 0, data.length, lba * 4096);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}
