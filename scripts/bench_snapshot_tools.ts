/**
 * What the snapshot benchmark runs outside its own process, and its clock:
 * e2fsprogs (mkfs.ext4 -d, e2fsck -fn), the grovefs fsck CLI when it exists,
 * and the kernel's page cache (dropped before a cold measurement when this
 * process may write /proc/sys/vm/drop_caches, i.e. as root).
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";

export const repoRoot = path.resolve(path.dirname(new URL(import.meta.url).pathname), "..");
const grovefsBin = path.join(repoRoot, "bin", "grovefs.mjs");
/** Where e2fsprogs lives on Debian, which a non-root PATH (e.g. under npm run) may leave out. */
const sbinDirs = ["/usr/sbin", "/sbin"];
const dropCachesPath = "/proc/sys/vm/drop_caches";

/** Milliseconds since an arbitrary origin, from the monotonic high-resolution clock. */
export function nowMs(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}

/** Runs `body` and returns how long it took in ms, with its result. */
export function timed<T>(body: () => T): { ms: number; result: T } {
  const start = nowMs();
  const result = body();
  return { ms: nowMs() - start, result };
}

export function median(samples: number[]): number {
  if (samples.length === 0) return NaN;
  const sorted = [...samples].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** The absolute path of an executable named `name`, looked for on PATH and in the sbin directories. */
export function findExecutable(name: string): string | null {
  const dirs = [...(process.env.PATH ?? "").split(path.delimiter).filter((d) => d !== ""), ...sbinDirs];
  for (const dir of dirs) {
    const full = path.join(dir, name);
    try {
      fs.accessSync(full, fs.constants.X_OK);
      return full;
    } catch {
      // not here
    }
  }
  return null;
}

export interface E2fsprogs {
  mkfs: string;
  e2fsck: string;
  version: string;
}

/** mkfs.ext4 and e2fsck, or the reason they cannot be used. */
export function findE2fsprogs(): E2fsprogs | string {
  const mkfs = findExecutable("mkfs.ext4");
  const e2fsck = findExecutable("e2fsck");
  if (mkfs === null || e2fsck === null) {
    return "mkfs.ext4 or e2fsck not found (Debian: apt-get install e2fsprogs)";
  }
  const probe = spawnSync(e2fsck, ["-V"], { encoding: "utf8" });
  const version = `${probe.stderr ?? ""}${probe.stdout ?? ""}`.split("\n")[0].trim();
  return { mkfs, e2fsck, version };
}

/** The mkfs.ext4 arguments that copy `sourceDir` into a new ext4 image of `imageBytes`. */
export function mkfsExt4Args(image: string, sourceDir: string, imageBytes: number, inodes: number): string[] {
  // 4 KiB blocks like grovefs; -N only when the default inode ratio (one per 16 KiB) would not fit the tree.
  const args = ["-F", "-q", "-b", "4096", "-d", sourceDir];
  if (inodes > Math.floor(imageBytes / 16384)) args.push("-N", String(inodes));
  return [...args, image, `${Math.floor(imageBytes / 1024)}k`];
}

export function runMkfsExt4(tools: E2fsprogs, args: string[]): void {
  const child = spawnSync(tools.mkfs, args, { encoding: "utf8" });
  if (child.status !== 0) {
    throw new Error(`mkfs.ext4 ${args.join(" ")} failed (${child.status ?? child.signal}): ${child.stderr.trim()}`);
  }
}

export interface ChildTiming {
  ms: number;
  status: number | null;
  output: string;
}

/** Runs a command to completion and times it from spawn to exit (so it includes process start-up). */
export function timeChild(command: string, args: string[]): ChildTiming {
  const start = nowMs();
  const child = spawnSync(command, args, { encoding: "utf8", maxBuffer: 64 * 1024 * 1024 });
  const ms = nowMs() - start;
  if (child.error) throw child.error;
  return { ms, status: child.status, output: `${child.stdout ?? ""}${child.stderr ?? ""}` };
}

/**
 * The grovefs fsck CLI, if it is there. `grovefs fsck --help` exits 0 even
 * without an fsck command (commander then prints the program's help), so the
 * help text must be fsck's own.
 */
export function grovefsFsckCommand(): string[] | null {
  const probe = spawnSync(process.execPath, [grovefsBin, "fsck", "--help"], { encoding: "utf8" });
  if (probe.status !== 0) return null;
  if (!/Usage: grovefs fsck\b/.test(probe.stdout ?? "")) return null;
  return [process.execPath, grovefsBin, "fsck", "-n"];
}

/** The start-up cost of the grovefs CLI (node + tsx loading cli/main.ts): `grovefs --version`. */
export function grovefsStartupMs(): number {
  return timeChild(process.execPath, [grovefsBin, "--version"]).ms;
}

/** Copies a file, keeping it sparse (an image is mostly holes). */
export function copySparse(from: string, to: string): void {
  const child = spawnSync("cp", ["--sparse=always", from, to], { encoding: "utf8" });
  if (child.status !== 0) throw new Error(`cp ${from} ${to} failed (${child.status ?? child.signal}): ${child.stderr.trim()}`);
}

/** Whether dropCaches() can work here (root, with a writable /proc). */
export function canDropCaches(): boolean {
  try {
    fs.accessSync(dropCachesPath, fs.constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

/** Writes back dirty pages, then drops the page, dentry and inode caches, if allowed. */
export function dropCaches(enabled: boolean): void {
  if (!enabled) return;
  spawnSync("sync");
  fs.writeFileSync(dropCachesPath, "3\n");
}
