/**
 * grovefs sync TARGET
 *
 * Makes everything written to a mounted volume before the call durable, like
 * `btrfs filesystem sync`: the mount daemon has the kernel write back the
 * dirty pages it holds for the mount (the writeback cache acknowledges
 * write(2) before grovefs sees the data), then commits, and answers once the
 * commit is on the device. sync(1) and syncfs(2) alone only do the first
 * half: the kernel forwards FUSE_SYNCFS only to fuseblk servers, so the data
 * reaches the daemon but waits for the next periodic commit (at most 5 s).
 *
 * TARGET is a mountpoint, any path inside a grovefs mount (the mount that
 * holds it is synced), or an image that a daemon serves. An unmounted image
 * has nothing uncommitted: it is checked and left alone.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { groveFsType, readMounts } from "../fs/index.js";
import { FileDevice, readSuperblock } from "../kvstore/index.js";
import { CliError } from "./errors.js";
import { mountpointOfImage, servingPid } from "./mount.js";
import { askDaemon, resolveTarget, type Target } from "./target.js";

/** The innermost mount holding `file` (absolute, real), from the mount table; null if it is only in the root mount. */
function mountHolding(file: string): string | null {
  let best: string | null = null;
  for (const entry of readMounts()) {
    const inside = file === entry.mountpoint || file.startsWith(entry.mountpoint.endsWith("/") ? entry.mountpoint : `${entry.mountpoint}/`);
    if (inside && (best === null || entry.mountpoint.length >= best.length)) best = entry.mountpoint;
  }
  return best;
}

/** TARGET as a mount to sync: a mountpoint, a path under one, or a served image; null for an unmounted image. */
function syncTarget(arg: string): (Target & { kind: "mount" }) | null {
  let real: string | null = null;
  try {
    // realpath does not enter the mount's files when `arg` is the mountpoint itself; a path inside asks the mount.
    real = fs.realpathSync(path.resolve(arg));
  } catch {
    // Missing, or a stale mount: resolveTarget says which.
  }
  const holder = real === null ? null : mountHolding(real);
  const target = resolveTarget(holder !== null && holder !== "/" && real !== holder && servingPid(holder) !== null ? holder : arg);
  if (target.kind === "mount") return target;
  const mountpoint = mountpointOfImage(target.image);
  const pid = mountpoint === null ? null : servingPid(mountpoint);
  if (mountpoint !== null && pid !== null) return { kind: "mount", mountpoint, shown: mountpoint, pid };
  const inMount = holder !== null && readMounts().some((entry) => entry.mountpoint === holder && entry.fstype === groveFsType);
  if (inMount) throw new CliError(`${arg} is in a grovefs mount whose process is gone`, `clean it up with: grovefs umount ${holder}`);
  // Not served: every change to it was committed when its last user closed it. Only check that it is grovefs.
  const device = FileDevice.open(target.image, { readOnly: true });
  try {
    readSuperblock(device);
  } finally {
    device.close();
  }
  return null;
}

export async function syncCommand(targetArg: string): Promise<void> {
  const target = syncTarget(targetArg);
  if (target !== null) await askDaemon(target, { op: "sync" });
}
