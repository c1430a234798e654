/**
 * Serving a filesystem at a mountpoint, whatever the transport: the kernel
 * protocol spoken directly (fs/fuse/, the default as root) or fuse-native's
 * libfuse 2.9 (fs/fuse_bridge.ts, without root). The transport answers
 * requests; this module runs the rest of a mount's life: a one-second,
 * unref'd timer for the periodic commit (`maintenance`) and for noticing that
 * the kernel mount went away, and the shutdown (commit while still mounted,
 * unmount, close the volume), which runs once, whoever starts it.
 */
import { existsSync } from "node:fs";
import { resolve as resolvePath } from "node:path";
import { GroveError } from "../kvstore/index.js";
import type { SubvolumeOps } from "./api.js";
import {
  findMount,
  readMounts,
  reportBug,
  serveFuseNative,
  type BridgedFs,
  type MountGroveOptions,
  type ServedMount,
} from "./fuse_bridge.js";
import { serveKernel } from "./fuse/serve.js";

/** The names `-o transport=` takes. */
export const transportNames = ["kernel", "fuse-native"] as const;
export type Transport = (typeof transportNames)[number];

/** The kernel protocol as root (it mounts with mount(8)); fuse-native otherwise. */
export function defaultTransport(): Transport {
  return process.getuid?.() === 0 && existsSync("/dev/fuse") ? "kernel" : "fuse-native";
}

export interface MountHandle {
  readonly mountpoint: string;
  readonly transport: Transport;
  /** Commits, unmounts (if the kernel mount is still there) and closes the volume. Idempotent. */
  unmount(): Promise<void>;
  /** Settles once the volume is closed: by `unmount`, or because the kernel mount went away. */
  readonly closed: Promise<void>;
  /**
   * Snapshots and clones of the served volume, through the mount (which must
   * see creations and deletions under /.snapshots); null for a filesystem
   * without subvolumes.
   */
  readonly subvolumes: SubvolumeOps | null;
  /** Has the kernel write back the mount's dirty pages (before a snapshot: the writeback cache holds acknowledged writes). */
  flushKernel(): Promise<void>;
  /** Keeps the event loop running until `work` settles, for work that waits on something other than requests. */
  hold<T>(work: Promise<T>): Promise<T>;
}

const maintenanceIntervalMs = 1000;

/** Mounts `volume` at `mountpoint` and serves it until `unmount` or until the kernel mount disappears. */
export async function mountGrove(volume: BridgedFs, mountpoint: string, options: MountGroveOptions): Promise<MountHandle> {
  const absolute = resolvePath(mountpoint);
  const transport = options.transport ?? defaultTransport();
  const served: ServedMount =
    transport === "kernel" ? await serveKernel(volume, absolute, options) : await serveFuseNative(volume, absolute, options);
  const fs = served.fs;
  const device = findMount(absolute)?.device;
  const stillMounted = () => device !== undefined && readMounts().some((entry) => entry.device === device);
  const maintenanceErrors = new Set<string>();

  let settle!: { resolve: () => void; reject: (error: unknown) => void };
  const closed = new Promise<void>((resolve, reject) => (settle = { resolve, reject }));
  closed.catch(() => {});
  let finishing: Promise<void> | null = null;
  const finish = (): Promise<void> =>
    (finishing ??= shutDown().then(settle.resolve, (error: unknown) => {
      settle.reject(error);
      throw error;
    }));

  const timer = setInterval(() => {
    if (finishing !== null) return;
    if (!stillMounted()) {
      finish().catch(() => {});
      return;
    }
    try {
      fs.maintenance();
    } catch (error) {
      if (error instanceof GroveError) logOnce(maintenanceErrors, `background commit failed: ${error.message}`);
      else reportBug("maintenance", error);
    }
  }, maintenanceIntervalMs);
  timer.unref();
  served.ended?.then(() => finish().catch(() => {}));

  async function shutDown(): Promise<void> {
    clearInterval(timer);
    let failure: unknown = null;
    if (stillMounted()) {
      // Commit while still mounted, so the data is durable even if unmounting stalls.
      try {
        fs.sync();
      } catch (error) {
        failure = error;
      }
    }
    await served.unmount().catch((error: unknown) => (failure ??= error));
    try {
      fs.close();
    } catch (error) {
      failure ??= error;
    }
    served.stop();
    if (failure !== null) throw failure;
  }

  return { mountpoint: absolute, transport, unmount: finish, closed, subvolumes: served.subvolumes, flushKernel: () => served.flushKernel(), hold: (work) => served.hold(work) };
}

function logOnce(seen: Set<string>, text: string): void {
  if (seen.has(text) || seen.size >= 64) return;
  seen.add(text);
  try {
    process.stderr.write(`grovefs: ${text}\n`);
  } catch {
    // No stderr to report to.
  }
}
