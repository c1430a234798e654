/**
 * Cleaning up after the benchmark, on a normal end, an error or a signal:
 * kill the short-lived children, run every registered hook (the FUSE
 * servers stop, loop devices are detached), unmount any mount point of ours
 * still mounted, and delete the work directories, unless something is still
 * mounted under one (then it is left, and said so).
 *
 * A signal sets `aborting()` first, so that no new server starts and no new
 * phase runs while the cleanup is under way.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { forceUnmount, isMounted, mountedPaths, ourMountPoints } from "./mounts.js";
import { runningCommands } from "./proc.js";
import { spawnSync } from "node:child_process";

export interface CleanupHook {
  /** Runs during the normal (async) cleanup. */
  async(): Promise<void>;
  /** Last resort when the process exits before the async cleanup finished: kill, never wait. */
  sync(): void;
}

const hooks = new Set<CleanupHook>();
const workDirs: string[] = [];
let abortingRun = false;
let cleaning: Promise<void> | undefined;
const lazyUnmountTimeoutMs = 30_000;

export const aborting = (): boolean => abortingRun;

/** Registers a hook; returns the function that removes it again. */
export function registerCleanup(hook: CleanupHook): () => void {
  hooks.add(hook);
  return () => hooks.delete(hook);
}

/** Registers a directory to delete at the end (after everything under it is unmounted). */
export function registerWorkDir(dir: string): void {
  workDirs.push(dir);
}

export function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    for (const child of runningCommands) child.kill("SIGKILL");
    for (const hook of [...hooks].reverse()) await hook.async().catch((err: unknown) => console.error(`cleanup: ${String(err)}`));
    for (const mnt of ourMountPoints) await forceUnmount(mnt).catch((err: unknown) => console.error(`cleanup: ${String(err)}`));
    removeWorkDirs();
  })();
  return cleaning;
}

function removeWorkDirs(): void {
  const mounted = [...mountedPaths()];
  for (const dir of workDirs) {
    if (!fs.existsSync(dir)) continue;
    const stillMounted = mounted.filter((p) => p.startsWith(dir + path.sep));
    if (stillMounted.length > 0) {
      console.error(`cleanup: leaving ${dir}: still mounted: ${stillMounted.join(", ")}`);
      continue;
    }
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function cleanupSync(): void {
  for (const child of runningCommands) child.kill("SIGKILL");
  for (const hook of [...hooks].reverse()) hook.sync();
  for (const mnt of ourMountPoints) {
    if (isMounted(mnt)) spawnSync("umount", ["-l", mnt], { stdio: "ignore", timeout: lazyUnmountTimeoutMs });
  }
  removeWorkDirs();
}

export function installSignalHandlers(): void {
  for (const [signal, code] of [["SIGINT", 130], ["SIGTERM", 143], ["SIGHUP", 129]] as const) {
    process.on(signal, () => {
      if (abortingRun) return;
      abortingRun = true;
      console.error(`\n${signal}: cleaning up`);
      void cleanup().finally(() => process.exit(code));
    });
  }
  process.on("exit", cleanupSync);
}
