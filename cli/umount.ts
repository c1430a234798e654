/**
 * grovefs umount MOUNTPOINT
 *
 * Unmounts, then waits until the serving process has committed, closed the
 * image (releasing its lock) and exited, so that when this returns the image
 * is consistent and free. The kernel unmount comes first and is not lazy, so
 * a busy mount is refused with nothing changed. It uses umount(8) (no
 * fusermount needed as root), falling back to the binding's unmountPath. The
 * serving process notices the mount is gone; SIGTERM wakes it at once.
 *
 * A daemon serving several mountpoints (several subvolumes of one image)
 * gets no signal, which would unmount them all: it notices this one is gone,
 * commits and closes its subvolume, and removes its pid record, which is
 * what this waits for; the others stay served.
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import { canonicalMountpoint, findMount, groveFsType, unmountPath } from "../fs/index.js";
import { CliError } from "./errors.js";
import { isRunning, mountpointsOfDaemon, readPidRecord, servingPid } from "./mount.js";

const exitWaitMs = 120_000;
const exitPollMs = 50;

async function kernelUnmount(mountpoint: string, shown: string): Promise<void> {
  const result = spawnSync("umount", [mountpoint], { encoding: "utf8" });
  if (result.status === 0) return;
  const why = result.error ? result.error.message : result.stderr.trim();
  if (/busy/i.test(why)) {
    throw new CliError(
      `${shown} is busy (a process has a file open or its working directory there)`,
      `close them and retry; fuser -vm ${shown} lists them`,
    );
  }
  try {
    await unmountPath(mountpoint);
  } catch (error) {
    throw new CliError(`cannot unmount ${shown}: ${why || (error as Error).message}`, "run as root, or close what uses it and retry");
  }
}

/** Waits until `done` (the process exited, or it let go of the mountpoint). */
async function waitFor(done: () => boolean, pid: number, shown: string, what: string): Promise<void> {
  const deadline = Date.now() + exitWaitMs;
  while (!done()) {
    if (Date.now() > deadline) {
      throw new CliError(
        `${shown} is unmounted, but its grovefs process ${pid} has not ${what} after ${exitWaitMs / 1000} s`,
        "it may still be committing; wait, then check it with ps",
      );
    }
    await new Promise((resolve) => setTimeout(resolve, exitPollMs));
  }
}

export async function umountCommand(mountpointArg: string): Promise<void> {
  const mountpoint = canonicalMountpoint(mountpointArg);
  const entry = findMount(mountpoint);
  if (entry === undefined) {
    if (!fs.existsSync(mountpoint)) throw new CliError(`${mountpointArg} does not exist`, "check the path");
    throw new CliError(`${mountpointArg} is not mounted`, "check the path; grep grovefs /proc/mounts lists grovefs mounts");
  }
  const pid = servingPid(mountpoint);
  if (entry.fstype !== groveFsType && pid === null) {
    throw new CliError(`${mountpointArg} is not a grovefs mount (it is ${entry.fstype})`, "unmount it with umount(8)");
  }
  const others = pid === null ? [] : mountpointsOfDaemon(pid).filter((other) => other !== mountpoint);
  await kernelUnmount(mountpoint, mountpointArg);
  if (pid === null) {
    process.stderr.write(`grovefs: no grovefs process was serving ${mountpointArg} (a stale mount); it is unmounted\n`);
    return;
  }
  if (others.length > 0) {
    // It serves other mountpoints too: no signal (it would unmount them all); it lets go of this one by itself.
    await waitFor(() => !isRunning(pid) || readPidRecord(mountpoint)?.pid !== pid, pid, mountpointArg, "let go of it");
    return;
  }
  try {
    process.kill(pid, "SIGTERM");
  } catch {
    // It exited on its own after noticing the unmount.
  }
  await waitFor(() => !isRunning(pid), pid, mountpointArg, "exited");
}
