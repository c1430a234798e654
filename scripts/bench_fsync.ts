/**
 * fsync benchmark (issue 13): grovefs against kernel btrfs and ext4 on loop
 * devices, through the kernel, in one interleaved run (ABBA: the target
 * order rotates and reverses run by run).
 *
 *   npm run bench:fsync -- [--runs N] [--ops N] [--files N] [--inserts N] [--commits N]
 *
 * Workloads, each done by a python3 child on the mount (it times itself):
 *   randwrite  4 KiB pwrite at a random 4 KiB-aligned offset of a 64 MiB
 *              file, fsync after each (what fio --fsync=1 does; python, so
 *              that the benchmark needs no fio);
 *   create     create + write 4 KiB + fsync + close of --files files;
 *   sqlite     sqlite3 (apt's CLI) inserts, one transaction each, with
 *              journal_mode=DELETE and synchronous=FULL;
 *   git        `git commit` of --commits small changes, git told to fsync
 *              everything it writes (core.fsync=all);
 *   limit      the randwrite loop with fdatasync, on a plain file in the
 *              directory that holds the images: one host flush per call.
 * Rates are operations per second, medians over runs. The last line is
 * `fsync vs btrfs: randwrite=R create=R sqlite=R git=R limit=R`: the first
 * four are grovefs/btrfs, `limit` is grovefs randwrite against the limit.
 * It is a benchmark, not a test: a missed goal does not fail the run.
 * mkfs.btrfs comes from Debian's btrfs-progs (installed with apt-get as root
 * if missing); CI does not run benchmarks, so the project's setup does not
 * install it.
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { cleanup, installSignalHandlers, registerCleanup, registerWorkDir } from "./bench/cleanup.js";
import { ensureCommands, loadAverage } from "./bench/host.js";
import { forceUnmount, isMounted, ourMountPoints } from "./bench/mounts.js";
import { GiB, errorText, isRoot, runOk } from "./bench/proc.js";
import { abbaOrder, median } from "./bench/stats.js";
import type { Mounted, Target, TargetEnv } from "./bench/target.js";
import { btrfs } from "./bench/targets/btrfs.js";
import { grovefs } from "./bench/targets/grovefs.js";

const commandTimeoutMs = 600_000;

/** Kernel ext4 on a loop device (mkfs.ext4 defaults), the second kernel reference. */
class Ext4Mount implements Mounted {
  readonly persistent = true;
  private loop = "";
  private unregister: () => void = () => undefined;
  constructor(
    readonly img: string,
    readonly mountpoint: string,
  ) {}

  async create(imageBytes: number): Promise<void> {
    fs.mkdirSync(this.mountpoint, { recursive: true });
    fs.closeSync(fs.openSync(this.img, "w"));
    fs.truncateSync(this.img, imageBytes);
    this.loop = (await runOk(["losetup", "-f", "--show", this.img], { timeoutMs: commandTimeoutMs })).stdout.trim();
    const loop = this.loop;
    const mnt = this.mountpoint;
    this.unregister = registerCleanup({
      async: async () => {
        await forceUnmount(mnt);
        await runOk(["losetup", "-d", loop], { timeoutMs: commandTimeoutMs });
      },
      sync: () => {
        if (isMounted(mnt)) spawnSync("umount", ["-l", mnt], { stdio: "ignore" });
        spawnSync("losetup", ["-d", loop], { stdio: "ignore" });
      },
    });
    await runOk(["mkfs.ext4", "-F", "-q", this.loop], { timeoutMs: commandTimeoutMs });
    ourMountPoints.add(mnt);
    await runOk(["mount", "-t", "ext4", this.loop, mnt], { timeoutMs: commandTimeoutMs });
  }

  async remount(): Promise<void> {
    await runOk(["umount", this.mountpoint], { timeoutMs: commandTimeoutMs });
    await runOk(["mount", "-t", "ext4", this.loop, this.mountpoint], { timeoutMs: commandTimeoutMs });
  }

  async teardown(): Promise<void> {
    if (isMounted(this.mountpoint)) await runOk(["umount", this.mountpoint], { timeoutMs: commandTimeoutMs });
    ourMountPoints.delete(this.mountpoint);
    if (this.loop) await runOk(["losetup", "-d", this.loop], { timeoutMs: commandTimeoutMs });
    this.unregister();
    fs.rmSync(this.img, { force: true });
  }
}

const ext4: Target = {
  name: "ext4",
  describe: () => "kernel ext4 on a loop device over an image file (mkfs.ext4 defaults)",
  prepare: async () => (isRoot ? ensureCommands(["mkfs.ext4", "losetup"], ["e2fsprogs", "mount"]) : "needs root (losetup, mount)"),
  setup: async (env, dir) => {
    const mount = new Ext4Mount(path.join(dir, "ext4.img"), path.join(dir, "mnt"));
    await mount.create(env.imageBytes);
    return mount;
  },
};

/** The workloads, as one python3 program: `python3 -c DRIVER WORKLOAD DIR N` prints the seconds its loop took. */
const driver = String.raw`
import os, random, subprocess, sys, time
work, d, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(13)
block = os.urandom(4096)
def randwrite(path, sync):
    size = 64 << 20
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    os.ftruncate(fd, size)
    for off in range(0, size, 1 << 20):
        os.pwrite(fd, os.urandom(1 << 20), off)
    os.fsync(fd)
    start = time.perf_counter()
    for _ in range(n):
        os.pwrite(fd, block, rng.randrange(size // 4096) * 4096)
        sync(fd)
    took = time.perf_counter() - start
    os.close(fd)
    os.unlink(path)
    return took
if work == "randwrite":
    took = randwrite(os.path.join(d, "rand.bin"), os.fsync)
elif work == "limit":
    took = randwrite(os.path.join(d, "limit.bin"), os.fdatasync)
elif work == "create":
    sub = os.path.join(d, "files")
    os.makedirs(sub, exist_ok=True)
    start = time.perf_counter()
    for i in range(n):
        fd = os.open(os.path.join(sub, "f%06d" % i), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, block)
        os.fsync(fd)
        os.close(fd)
    took = time.perf_counter() - start
elif work == "sqlite":
    db = os.path.join(d, "bench.db")
    sql = "PRAGMA journal_mode=DELETE;\nPRAGMA synchronous=FULL;\nCREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT);\n"
    sql += "".join("INSERT INTO t(v) VALUES ('%s');\n" % ("v%d" % i * 8) for i in range(n))
    start = time.perf_counter()
    subprocess.run(["sqlite3", db], input=sql.encode(), check=True, stdout=subprocess.DEVNULL)
    took = time.perf_counter() - start
elif work == "git":
    repo = os.path.join(d, "repo")
    os.makedirs(repo, exist_ok=True)
    env = dict(os.environ, GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@b", GIT_COMMITTER_NAME="b", GIT_COMMITTER_EMAIL="b@b")
    git = lambda *a: subprocess.run(["git", "-c", "core.fsync=all", "-c", "core.fsyncMethod=fsync", *a], cwd=repo, env=env, check=True, stdout=subprocess.DEVNULL)
    git("init", "-q")
    for i in range(20):
        with open(os.path.join(repo, "file%d.txt" % i), "w") as f:
            f.write("line\n" * 50)
    git("add", "-A")
    git("commit", "-q", "-m", "base")
    start = time.perf_counter()
    for i in range(n):
        with open(os.path.join(repo, "file%d.txt" % (i % 20)), "a") as f:
            f.write("change %d\n" % i)
        git("commit", "-q", "-a", "-m", "change %d" % i)
    took = time.perf_counter() - start
print(took)
`;

interface Config {
  runs: number;
  ops: number;
  files: number;
  inserts: number;
  commits: number;
}

function parseArgs(argv: string[]): Config {
  const config: Config = { runs: 2, ops: 2000, files: 2000, inserts: 1000, commits: 100 };
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i]!.replace(/^--/, "") as keyof Config;
    if (!(key in config)) throw new Error(`unknown option ${argv[i]}`);
    const value = Number(argv[++i]);
    if (!Number.isInteger(value) || value <= 0) throw new Error(`--${key} takes a positive integer`);
    config[key] = value;
  }
  return config;
}

type Workload = "randwrite" | "create" | "sqlite" | "git";
const workloadNames: Workload[] = ["randwrite", "create", "sqlite", "git"];

async function measure(work: Workload | "limit", dir: string, n: number): Promise<number> {
  const r = await runOk(["python3", "-c", driver, work, dir, String(n)], { timeoutMs: commandTimeoutMs });
  return n / Number(r.stdout.trim());
}

async function main(): Promise<void> {
  installSignalHandlers();
  const config = parseArgs(process.argv.slice(2));
  const missing = ensureCommands(["sqlite3", "git", "python3"], ["sqlite3", "git", "python3"]);
  if (missing !== null) throw new Error(missing);
  const workDir = fs.mkdtempSync(path.join(os.tmpdir(), "grove-bench-fsync-"));
  registerWorkDir(workDir);
  const env: TargetEnv = { workDir, shmDir: workDir, imageBytes: 2 * GiB };
  console.log(`bench:fsync on ${os.cpus().length} CPUs, Linux ${os.release()}, Node ${process.version}; load average ${loadAverage()}`);
  console.log(`  ${config.runs} runs; randwrite ${config.ops} ops, create ${config.files} files, sqlite ${config.inserts} inserts, git ${config.commits} commits`);
  const targets: Target[] = [];
  for (const t of [grovefs, btrfs, ext4]) {
    const why = await t.prepare(env);
    if (why === null) targets.push(t);
    console.log(`  ${t.name}: ${why === null ? t.describe() : `skipped: ${why}`}`);
  }
  const rates = new Map<string, number[]>();
  const add = (key: string, rate: number) => rates.set(key, [...(rates.get(key) ?? []), rate]);
  const sizes: Record<Workload, number> = { randwrite: config.ops, create: config.files, sqlite: config.inserts, git: config.commits };
  for (let run = 0; run < config.runs; run++) {
    // The plain-file limit is measured in every run, between the targets' turns.
    add("limit/host", await measure("limit", workDir, config.ops));
    for (const [job, work] of workloadNames.entries()) {
      for (const target of abbaOrder(targets, run, job)) {
        const dir = fs.mkdtempSync(path.join(workDir, `${target.name}-`));
        const mounted = await target.setup(env, dir);
        try {
          const rate = await measure(work, mounted.mountpoint, sizes[work]);
          add(`${work}/${target.name}`, rate);
          console.log(`  run ${run + 1} ${work} ${target.name}: ${rate.toFixed(0)}/s`);
        } finally {
          await mounted.teardown();
          fs.rmSync(dir, { recursive: true, force: true });
        }
      }
    }
  }
  const med = (key: string) => median(rates.get(key) ?? []) ?? Number.NaN;
  console.log("\nmedian rates (operations/s):");
  console.log(`  ${"workload".padEnd(10)} ${targets.map((t) => t.name.padStart(10)).join(" ")}`);
  for (const work of workloadNames) console.log(`  ${work.padEnd(10)} ${targets.map((t) => med(`${work}/${t.name}`).toFixed(0).padStart(10)).join(" ")}`);
  console.log(`  ${"limit".padEnd(10)} ${med("limit/host").toFixed(0).padStart(10)} (plain file, fdatasync, on the images' disk)`);
  const ratio = (work: Workload) => (med(`${work}/grovefs`) / med(`${work}/btrfs`)).toFixed(2);
  console.log(`goals: randwrite >= 1.5x btrfs and >= 0.6x limit; create, sqlite, git >= 1x btrfs`);
  console.log(
    `fsync vs btrfs: randwrite=${ratio("randwrite")} create=${ratio("create")} sqlite=${ratio("sqlite")} git=${ratio("git")} ` +
      `limit=${(med("randwrite/grovefs") / med("limit/host")).toFixed(2)}`,
  );
}

main()
  .catch((err: unknown) => {
    console.error(`bench:fsync failed: ${errorText(err)}`);
    process.exitCode = 1;
  })
  .finally(() => cleanup());
