/**
 * The machine the benchmark runs on: its caches, its load, and the Debian
 * packages the targets and workloads need (installed with apt-get as root,
 * `apt-get update` at most once per run; otherwise the run says what to
 * install).
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import { commandExists, isRoot, runOk } from "./proc.js";

const cacheDropTimeoutMs = 300_000;

/**
 * Syncs the filesystem holding `dir` (the images' dirty pages), then, as
 * root, drops page, dentry and inode caches. Never a global sync(1): that
 * would also wait on every FUSE mount.
 */
export async function dropCaches(dir: string): Promise<void> {
  await runOk(["sync", "-f", dir], { timeoutMs: cacheDropTimeoutMs });
  if (isRoot) await runOk(["sh", "-c", "echo 3 > /proc/sys/vm/drop_caches"], { timeoutMs: cacheDropTimeoutMs });
}

export function loadAverage(): string {
  return os.loadavg().map((l) => l.toFixed(2)).join(" ");
}

let aptUpdated = false;

/**
 * Makes sure nothing is `missing()`, installing `packages` with apt-get if
 * something is. Returns null when all is there, else why not (so a target
 * can be skipped with that message instead of failing the run).
 */
export function ensureInstalled(missing: () => string[], packages: string[]): string | null {
  if (missing().length === 0) return null;
  const install = ["apt-get", "install", "-y", "--no-install-recommends", ...packages];
  if (!isRoot) return `missing ${missing().join(", ")}: run \`${install.join(" ")}\` as root`;
  console.log(`  installing ${packages.join(" ")} (missing: ${missing().join(", ")})`);
  const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
  const apt = (argv: string[]) => spawnSync(argv[0], argv.slice(1), { stdio: ["ignore", "inherit", "inherit"], env }).status === 0;
  if (!apt(install)) {
    if (!aptUpdated) {
      aptUpdated = true;
      apt(["apt-get", "update"]);
    }
    if (!apt(install)) return `\`${install.join(" ")}\` failed`;
  }
  const still = missing();
  return still.length === 0 ? null : `still missing after installing ${packages.join(" ")}: ${still.join(", ")}`;
}

export function ensureCommands(commands: string[], packages: string[]): string | null {
  return ensureInstalled(() => commands.filter((c) => !commandExists(c)), packages);
}

/** Whether the kernel can mount `fstype`, loading its module if it is not in /proc/filesystems yet. */
export function kernelHasFilesystem(fstype: string): boolean {
  const listed = () => {
    const text = fs.readFileSync("/proc/filesystems", "utf8");
    return text.split("\n").some((line) => line.trim().split(/\s+/).pop() === fstype);
  };
  if (listed()) return true;
  if (commandExists("modprobe")) spawnSync("modprobe", [fstype], { stdio: "ignore" });
  return listed();
}
