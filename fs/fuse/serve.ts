/**
 * Serving a filesystem over the kernel protocol: mount with /dev/fuse
 * (kernel_mount.ts), run the session (session.ts) over the bridge
 * (kernel_bridge.ts), and keep the kernel's caches honest where something
 * changes without a request: a snapshot made or deleted through the mount
 * daemon's control socket changes /.snapshots, so its entry and attributes
 * are invalidated (notify_inval_entry, notify_inval_inode).
 */
import { resolve as resolvePath } from "node:path";
import { GroveError } from "../../kvstore/index.js";
import type { InodeOps, SubvolumeInfo, SubvolumeOps } from "../api.js";
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
  const served = new KernelSession(fd, bridge, sessionModeFromEnv(), absolute);
  session = served;
  served.start();
  return {
    fs: volume,
    subvolumes: subvolumes === null ? null : notifyingSubvolumes(subvolumes, nodes, served),
    unmount: async () => {
      served.quiesce();
      await unmountPath(absolute);
      await served.done;
    },
    ended: served.done,
    stop: () => {
      bridge.closed = true;
    },
    flushKernel,
    hold: (work) => served.hold(work),
  };
}

/** The served filesystem's SubvolumeOps, telling the kernel when /.snapshots changes. */
function notifyingSubvolumes(inner: SubvolumeOps, nodes: NodeTable, session: KernelSession): SubvolumeOps {
  const changed = (name: string) => {
    session.notify(notifyInvalEntry(snapshotDirNode, Buffer.from(name, "utf8")));
    session.notify(notifyInvalInode(snapshotDirNode, 0, 0));
  };
  return {
    get subvolumeName() {
      return inner.subvolumeName;
    },
    createSubvolume(name: string, opts: { from?: string; readOnly: boolean }): SubvolumeInfo {
      const info = inner.createSubvolume(name, opts);
      if (info.readOnly) changed(name);
      return info;
    },
    deleteSubvolume(name: string): void {
      // Forgotten first: from here on its nodes answer ENOENT, and its closed view is never used.
      const view = nodes.forgetSnapshot(name);
      inner.deleteSubvolume(name);
      if (view !== undefined || inner.listSubvolumes().every((s) => s.name !== name)) changed(name);
    },
    listSubvolumes: () => inner.listSubvolumes(),
    pendingDeletions: () => inner.pendingDeletions(),
    finishDeletions: () => inner.finishDeletions(),
    snapshotView: (name: string) => inner.snapshotView(name),
  };
}
