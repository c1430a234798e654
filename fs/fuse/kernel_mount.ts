/**
 * Mounting a FUSE filesystem without libfuse: open /dev/fuse, then let
 * mount(8) make the kernel mount with that descriptor (`-o fd=3`, passed as
 * the child's fd 3). The kernel then queues FUSE_INIT on the descriptor.
 *
 * Why mount(8) and not mount(2): Node cannot make the system call without
 * native code, and `mount -i` (no helper lookup) does exactly that one call.
 * It needs root (CAP_SYS_ADMIN); without it the fuse-native transport, which
 * has fusermount-free libfuse mounting of its own, is the one to use.
 *
 * Invariants:
 * - The descriptor is read only after mount(8) has exited 0: before the
 *   mount exists a read fails with EPERM (measured).
 * - A failed mount closes the descriptor and leaves no kernel mount behind.
 */
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import { GroveError } from "../../kvstore/index.js";

export const fuseDevicePath = "/dev/fuse";

export interface KernelMountOptions {
  /** The mount's source in the mount table (the image path). */
  source: string;
  /** `fuse.<subtype>` is the mount's fstype. */
  subtype: string;
  readOnly: boolean;
  /** Kernel mount flags, already validated (nosuid, nodev, noexec, noatime, nodiratime, relatime, strictatime). */
  extraOptions: readonly string[];
}

const mountTimeoutMs = 30_000;

/** Mounts at `mountpoint` (absolute) and returns the connection's descriptor, ready for FUSE_INIT. */
export async function mountKernel(mountpoint: string, options: KernelMountOptions): Promise<number> {
  let fd: number;
  try {
    fd = fs.openSync(fuseDevicePath, "r+");
  } catch (cause) {
    const why = (cause as NodeJS.ErrnoException).code === "ENOENT" ? "there is no /dev/fuse (load the fuse module)" : String(cause);
    throw new GroveError("EIO", "EIO_fuse_device", `cannot open ${fuseDevicePath}: ${why}`, { cause });
  }
  const uid = process.getuid?.() ?? 0;
  const gid = process.getgid?.() ?? 0;
  const flags = [
    "fd=3",
    "rootmode=40000",
    `user_id=${uid}`,
    `group_id=${gid}`,
    // Every user may use the mount; the kernel checks modes against what getattr reports.
    "allow_other",
    "default_permissions",
    options.readOnly ? "ro" : "rw",
    ...options.extraOptions,
  ];
  const args = ["-i", "-t", `fuse.${options.subtype}`, "-o", flags.join(","), options.source, mountpoint];
  try {
    await runMount(args, fd);
  } catch (error) {
    fs.closeSync(fd);
    throw error;
  }
  return fd;
}

function runMount(args: string[], fd: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let stderr = "";
    const child = spawn("mount", args, { stdio: ["ignore", "ignore", "pipe", fd] });
    const timer = setTimeout(() => child.kill("SIGKILL"), mountTimeoutMs);
    child.stderr!.on("data", (chunk: Buffer) => (stderr += chunk.toString("utf8")));
    child.on("error", (cause) => {
      clearTimeout(timer);
      const why = (cause as NodeJS.ErrnoException).code === "ENOENT" ? "mount(8) is not installed" : cause.message;
      reject(new GroveError("EIO", "EIO_fuse_mount", why, { cause }));
    });
    child.on("exit", (code, signal) => {
      clearTimeout(timer);
      if (code === 0) return resolve();
      const why = stderr.trim().replace(/^mount: /, "") || (signal !== null ? `mount(8) killed by ${signal}` : `mount(8) exited ${code}`);
      reject(new GroveError(code === 32 && /permission|not permitted|superuser/i.test(why) ? "EPERM" : "EIO", "EIO_fuse_mount", why));
    });
  });
}

const syncTimeoutMs = 300_000;

/**
 * Has the kernel write back the mount's dirty pages: syncfs(2), by `sync -f`
 * in a child, because this process serves the writes it waits for.
 */
export function syncMount(mountpoint: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn("sync", ["-f", mountpoint], { stdio: ["ignore", "ignore", "pipe"], timeout: syncTimeoutMs });
    let stderr = "";
    child.stderr!.on("data", (chunk: Buffer) => (stderr += chunk.toString("utf8")));
    child.on("error", reject);
    child.on("exit", (code) =>
      code === 0 ? resolve() : reject(new GroveError("EIO", "EIO_sync", `sync -f ${mountpoint} failed: ${stderr.trim() || `exit ${code}`}`)),
    );
  });
}
