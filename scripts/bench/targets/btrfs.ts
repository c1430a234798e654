/**
 * Kernel btrfs on a loop device, the in-kernel reference: a sparse image
 * (`truncate`, at least 1 GiB so that mkfs.btrfs keeps separate data and
 * metadata block groups), `losetup -f --show`, `mkfs.btrfs -f -q`, mount;
 * remounted with umount + mount; torn down with umount + `losetup -d`.
 * Skipped, with the reason, when the kernel has no btrfs (after
 * `modprobe btrfs`) or a trial mount fails.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { registerCleanup } from "../cleanup.js";
import { ensureCommands, kernelHasFilesystem } from "../host.js";
import { forceUnmount, isMounted, ourMountPoints } from "../mounts.js";
import { GiB, isRoot, runOk } from "../proc.js";
import type { Mounted, Target, TargetEnv } from "../target.js";
import { spawnSync } from "node:child_process";

const imageBytesMin = GiB;
const commandTimeoutMs = 300_000;

class BtrfsMount implements Mounted {
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
    fs.truncateSync(this.img, Math.max(imageBytes, imageBytesMin));
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
    await runOk(["mkfs.btrfs", "-f", "-q", this.loop], { timeoutMs: commandTimeoutMs });
    await this.mount();
  }

  private async mount(): Promise<void> {
    ourMountPoints.add(this.mountpoint);
    await runOk(["mount", "-t", "btrfs", this.loop, this.mountpoint], { timeoutMs: commandTimeoutMs });
  }

  async remount(): Promise<void> {
    await runOk(["umount", this.mountpoint], { timeoutMs: commandTimeoutMs });
    await this.mount();
  }

  async teardown(): Promise<void> {
    if (isMounted(this.mountpoint)) await runOk(["umount", this.mountpoint], { timeoutMs: commandTimeoutMs });
    ourMountPoints.delete(this.mountpoint);
    if (this.loop) await runOk(["losetup", "-d", this.loop], { timeoutMs: commandTimeoutMs });
    this.unregister();
    fs.rmSync(this.img, { force: true });
  }
}

async function setup(env: TargetEnv, dir: string): Promise<Mounted> {
  const mount = new BtrfsMount(path.join(dir, "btrfs.img"), path.join(dir, "mnt"));
  try {
    await mount.create(env.imageBytes);
  } catch (err) {
    await mount.teardown().catch(() => undefined);
    throw err;
  }
  return mount;
}

export const btrfs: Target = {
  name: "btrfs",
  describe: () => "kernel btrfs on a loop device over an image file (mkfs.btrfs defaults)",
  prepare: async (env) => {
    if (!isRoot) return "needs root (losetup, mount)";
    if (!kernelHasFilesystem("btrfs")) return "the kernel has no btrfs here (not in /proc/filesystems, and modprobe btrfs did not add it)";
    const missing = ensureCommands(["mkfs.btrfs", "losetup"], ["btrfs-progs", "mount"]);
    if (missing !== null) return missing;
    const trial = path.join(env.workDir, "btrfs-trial");
    fs.mkdirSync(trial);
    try {
      await (await setup(env, trial)).teardown();
    } catch (err) {
      return `a trial btrfs mount on a loop device failed: ${err instanceof Error ? err.message : String(err)}`;
    } finally {
      fs.rmSync(trial, { recursive: true, force: true });
    }
    return null;
  },
  setup,
};
