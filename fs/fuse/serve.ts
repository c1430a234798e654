/**
 * Serving a filesystem over the kernel protocol: mount with /dev/fuse
 * (kernel_mount.ts), run the session (session.ts) over the bridge
 * (kernel_bridge.ts), and keep the kernel's caches honest where something
 * changes without a request: a snapshot made or deleted through the mount
 * daemon's control socket changes /.snapshots, so its entry and attributes
 * are invalidated (notify_inval_entry, notify_inval_inode). The filesystem
 * tells every mount of the volume (`watchSubvolumes`), so a snapshot made or
 * deleted through another mount the same process serves is seen here too,
 * and a deleted snapshot's nodes answer ENOENT in every mount before its
 * view closes.
 *
 * In place or pool reads: only one session in a process can block the JS
 * thread in read(2). The first mount serves in place (the default); once a
 * second mount is served, every session reads on the pool (`usePoolReads`),
 * or the others' requests would wait for the first's waker.
 */
import { resolve as resolvePath } from "node:path";
import { GroveError } from "../../kvstore/index.js";
import type { InodeOps, SubvolumeWatcher } from "../api.js";
import { groveSubtype, unmountPath, type BridgedFs, type MountGroveOptions, type ServedMount } from "../fuse_bridge.js";
import { servesSnapshots } from "../snapshot_dir.js";
import { KernelBridge } from "./kernel_bridge.js";
import { mountKernel, syncMount } from "./kernel_mount.js";
import { NodeTable, snapshotDirNode } from "./nodes.js";
import { notifyInvalEntry, notifyInvalInode } from "./protocol.js";
import { KernelSession, maxWriteBytes, sessionModeFromEnv } from "./session.js";

function isInodeOps(fs: object): fs is InodeOps {
  const candidate = fs as Partial<InodeOps>;
  return typeof candidate.lookup === "function" && typeof candidate.readdirIno === "function";
}

/** The sessions this process serves: with more than one, none may block in place. */
const sessions = new Set<KernelSession>();

export async function serveKernel(volume: BridgedFs, absolute: string, options: MountGroveOptions): Promise<ServedMount> {
  if (!isInodeOps(volume)) {
    throw new GroveError("EINVAL", "EINVAL_transport", "the kernel transport needs an inode-addressed filesystem: use fuse-native");
  }
  const subvolumes = servesSnapshots(volume) ? volume : null;
  const nodes = new NodeTable(volume, subvolumes);
  let session: KernelSession | null = null;
  // The session must keep its event loop running until the child has exited (it serves the writes meanwhile).
  const flushKernel = () => (session === null ? syncMount(absolute) : session.hold(syncMount(absolute)));
  const bridge = new KernelBridge(nodes, { writeback: false, maxWrite: maxWriteBytes, flushKernel });
  let fd: number;
  try {
    fd = await mountKernel(absolute, {
      source: resolvePath(options.imagePath),
      subtype: groveSubtype,
      readOnly: options.readOnly ?? false,
      extraOptions: options.extraOptions ?? [],
    });
  } catch (cause) {
    const why = cause instanceof Error ? cause.message : String(cause);
    throw new GroveError("EIO", "EIO_fuse_mount", `cannot mount at ${absolute}: ${why}`, { path: absolute, cause });
  }
  const served = new KernelSession(fd, bridge, sessions.size > 0 ? "pool" : sessionModeFromEnv(), absolute);
  session = served;
  for (const other of sessions) other.usePoolReads();
  sessions.add(served);
  void served.done.then(() => sessions.delete(served));
  served.start();
  const unwatch = subvolumes?.watchSubvolumes?.(snapshotDirWatcher(nodes, served)) ?? null;
  return {
    fs: volume,
    subvolumes,
    unmount: async () => {
      served.quiesce();
      await unmountPath(absolute);
      await served.done;
    },
    ended: served.done,
    stop: () => {
      unwatch?.();
      bridge.closed = true;
    },
    flushKernel,
    hold: (work) => served.hold(work),
  };
}

/** Keeps this mount's /.snapshots honest when a subvolume is created or deleted through any mount of the volume. */
function snapshotDirWatcher(nodes: NodeTable, session: KernelSession): SubvolumeWatcher {
  return {
    // Forgotten first: from here on its nodes answer ENOENT, and its closed view is never used.
    deleting: (name) => void nodes.forgetSnapshot(name),
    changed: (name) => {
      // A clone's name is not under /.snapshots: the kernel answers ENOENT to that invalidation, which is ignored.
      session.notify(notifyInvalEntry(snapshotDirNode, Buffer.from(name, "utf8")));
      session.notify(notifyInvalInode(snapshotDirNode, 0, 0));
    },
  };
}
