/**
 * What a command's TARGET argument names: an unmounted image (file or block
 * device), or the mountpoint of a running grovefs mount, whose daemon the
 * command then asks through its control socket (cli/control.ts).
 *
 * TARGET is a mountpoint when the mount table has a mount there, read from
 * /proc/self/mountinfo, so the mount itself is never touched (a stale mount
 * would answer ENOTCONN, a hung one would hang).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { canonicalMountpoint, findMount, groveFsType } from "../fs/index.js";
import { sendRequest, type ControlRequest } from "./control.js";
import { CliError } from "./errors.js";
import { controlSocketPath, mountpointOfImage, servingPid } from "./mount.js";

export type Target =
  | { kind: "image"; image: string; shown: string }
  | { kind: "mount"; mountpoint: string; shown: string; pid: number };

export function resolveTarget(arg: string): Target {
  const mountpoint = canonicalMountpoint(arg);
  const entry = findMount(mountpoint);
  if (entry !== undefined) {
    const pid = servingPid(mountpoint);
    if (pid !== null) return { kind: "mount", mountpoint, shown: arg, pid };
    if (entry.fstype === groveFsType) {
      // Mount records live in a directory per user: another user's mount (root's, shared) has none here.
      if ((process.getuid?.() ?? 0) !== 0) {
        throw new CliError(`${arg} is not served by a grovefs process of this user`, "run the command as the user who mounted it (root for a shared mount)");
      }
      throw new CliError(`${arg} is a stale grovefs mount (its process is gone)`, `clean it up with: grovefs umount ${arg}`);
    }
    throw new CliError(`${arg} is not a grovefs mount (it is ${entry.fstype})`, "give a grovefs image, or the mount point of a running grovefs mount");
  }
  const image = path.resolve(arg);
  let stat: fs.Stats;
  try {
    stat = fs.statSync(image);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") {
      throw new CliError(`${arg}: no such image or mount point`, "give a grovefs image, or the mount point of a running grovefs mount");
    }
    throw error;
  }
  if (stat.isDirectory()) {
    throw new CliError(`${arg} is a directory, but no grovefs is mounted there`, `give the image instead, or mount it first: grovefs mount IMAGE ${arg}`);
  }
  if (!stat.isFile() && !stat.isBlockDevice()) {
    throw new CliError(`${arg} is not an image file or block device`, "give a grovefs image, or the mount point of a running grovefs mount");
  }
  return { kind: "image", image, shown: arg };
}

/** Sends `request` to the daemon serving `target`. */
export function askDaemon(target: Target & { kind: "mount" }, request: ControlRequest): Promise<unknown> {
  return sendRequest(controlSocketPath(target.mountpoint), request, { shown: target.shown, pid: target.pid, mountpoint: target.mountpoint });
}

/** A mount to ask: TARGET's mountpoint, or the mountpoint of the image a daemon serves; null for an image to open here. */
export function daemonTarget(target: Target): (Target & { kind: "mount" }) | null {
  if (target.kind === "mount") return target;
  const mountpoint = mountpointOfImage(target.image);
  const pid = mountpoint === null ? null : servingPid(mountpoint);
  return mountpoint !== null && pid !== null ? { kind: "mount", mountpoint, shown: mountpoint, pid } : null;
}
