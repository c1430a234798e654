/**
 * The mount table as the bench sees it, read from /proc/self/mountinfo (no
 * call reaches a FUSE server), and forced unmounts of the mount points the
 * bench made. Every mount point a target mounts is registered here, so an
 * interrupted run can unmount whatever is left.
 */
import * as fs from "node:fs";
import { commandExists, run } from "./proc.js";

const unmountTimeoutMs = 30_000;

/** Mount points made by this run (registered before mounting, forgotten after a clean unmount). */
export const ourMountPoints = new Set<string>();

export function mountedPaths(): Set<string> {
  const text = fs.readFileSync("/proc/self/mountinfo", "utf8");
  const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  return new Set(text.split("\n").filter(Boolean).map((line) => unescape(line.split(" ")[4])));
}

export const isMounted = (mnt: string): boolean => mountedPaths().has(mnt);

/** Unmounts whatever is at mnt: umount, then lazy umount, then fusermount if there is one. */
export async function forceUnmount(mnt: string): Promise<void> {
  const attempts = [["umount", mnt], ["umount", "-l", mnt]];
  if (commandExists("fusermount")) attempts.push(["fusermount", "-uz", mnt]);
  for (const argv of attempts) {
    if (!isMounted(mnt)) return;
    await run(argv, { timeoutMs: unmountTimeoutMs }).catch(() => undefined);
  }
  if (isMounted(mnt)) throw new Error(`could not unmount ${mnt}`);
}
