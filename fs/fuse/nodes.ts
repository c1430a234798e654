/**
 * The kernel's node ids and what they name: an inode of the served
 * subvolume, the virtual /.snapshots directory, or an inode of a snapshot's
 * read-only view. Also the kernel's lookup counts, kept exactly.
 *
 * Node ids are computed, not allocated, so that two names of one inode are
 * one kernel inode (hard links agree at once) and nothing needs to be
 * remembered for a node the kernel forgot. They fill the 2^53 ids a JS
 * number holds exactly:
 * - an inode `ino` of the served subvolume is node `ino` (the root is 1, as
 *   FUSE_ROOT_ID), for every inode number grovefs hands out (below 2^48);
 * - /.snapshots is node 2^48 (`liveNodeSpan`);
 * - inode `ino` of the snapshot in view slot `s` (1, 2, ... in the order the
 *   mount first met them) is node `2^48 + s * 2^36 + ino`.
 * st_ino is the node id, so no two files of the mount share one, and `find`
 * and `du` see no loops between /.snapshots/X and /. The bounds: inode
 * numbers below 2^36 in a snapshot's view (a snapshot taken once the
 * counter passed 2^36 shows its newer files as EOVERFLOW) and 126,975
 * snapshots met in one mount's lifetime; beyond them a lookup answers
 * EOVERFLOW, never a wrong file.
 *
 * Invariants:
 * - A lookup count is raised once for every reply that hands the kernel a
 *   node (lookup, create, mkdir, mknod, symlink, link, each readdirplus
 *   entry but "." and ".."), and lowered by FORGET; at zero the count goes.
 *   A FORGET below zero is the kernel's bug or ours: it is logged, not obeyed.
 * - A deleted snapshot's slot stays dead for the life of the mount: its node
 *   ids are never reused for another snapshot, and they all answer ENOENT.
 */
import { GroveError } from "../../kvstore/index.js";
import type { InodeOps, SubvolumeOps, SubvolumeRef } from "../api.js";
import { inoMax, rootIno } from "../constants.js";

/** The served subvolume's node ids: every inode number up to inoMax is its own node. */
export const liveNodeSpan = inoMax + 1;
/** One snapshot view's node ids: its inode numbers below 2^36. */
export const viewNodeSpan = 2 ** 36;
/** The views that fit above the served subvolume's ids with every node id below 2^53. */
export const viewSlotsMax = (2 ** 53 - liveNodeSpan) / viewNodeSpan - 1;
export const snapshotDirNode = liveNodeSpan;

/** The node id before view slot `slot`'s inode 1. */
function viewBase(slot: number): number {
  return liveNodeSpan + slot * viewNodeSpan;
}

/** A snapshot's read-only view, in its slot. */
export interface ViewSlot {
  slot: number;
  name: string;
  /** The snapshot's subvolume id. */
  id: number;
  ops: InodeOps | null;
  dead: boolean;
}

/** What a node id names. */
export type NodeTarget =
  | { kind: "live"; ops: InodeOps; ino: number }
  | { kind: "snapshots" }
  | { kind: "view"; view: ViewSlot; ops: InodeOps; ino: number };

/** Snapshot `name` of the volume, found by name (not by listing them all); undefined for a clone or a name none can have. */
function findSnapshot(subvolumes: SubvolumeOps, name: string): SubvolumeRef | undefined {
  let record: SubvolumeRef | undefined;
  try {
    record = subvolumes.findSubvolume(name);
  } catch (error) {
    if (error instanceof GroveError && error.code === "EINVAL") return undefined;
    throw error;
  }
  return record?.readOnly === true ? record : undefined;
}

export class NodeTable {
  private readonly counts = new Map<number, number>();
  /** The file type bits of each node the kernel holds: answers about an inode freed under it need them. */
  private readonly types = new Map<number, number>();
  private readonly slots: ViewSlot[] = [];
  private readonly slotOfId = new Map<number, ViewSlot>();
  private forgetErrors = 0;

  /**
   * `subvolumes` is null for a filesystem without snapshots (then there is
   * no /.snapshots).
   */
  constructor(
    readonly live: InodeOps,
    readonly subvolumes: SubvolumeOps | null,
  ) {}

  /** The target of `node`; ENOENT for a node that names nothing (any more). */
  target(node: number): NodeTarget {
    if (node < liveNodeSpan) return { kind: "live", ops: this.live, ino: node };
    if (node === snapshotDirNode && this.subvolumes !== null) return { kind: "snapshots" };
    const slot = Math.floor((node - liveNodeSpan) / viewNodeSpan);
    const ino = node - viewBase(slot);
    const view = this.slots[slot - 1];
    if (view === undefined || view.dead || ino === 0) throw new GroveError("ENOENT", "ENOENT_node", `node ${node} names nothing`);
    return { kind: "view", view, ops: this.viewOps(view), ino };
  }

  /** The node id of inode `ino` as seen from `target`'s subvolume. */
  nodeOf(target: NodeTarget, ino: number): number {
    if (target.kind === "view") {
      if (ino >= viewNodeSpan) throw new GroveError("EOVERFLOW", "EOVERFLOW_ino", `inode ${ino} of a snapshot is beyond its view's node ids (2^36)`);
      return viewBase(target.view.slot) + ino;
    }
    if (ino >= liveNodeSpan) throw new GroveError("EOVERFLOW", "EOVERFLOW_ino", `inode ${ino} is beyond the mount's node ids`);
    return ino;
  }

  /** The root node of snapshot `name`'s view (its slot made on first use). ENOENT if there is no such snapshot. */
  snapshotRoot(name: string): { node: number; view: ViewSlot } {
    const subvolumes = this.subvolumes!;
    const record = findSnapshot(subvolumes, name);
    if (record === undefined) throw new GroveError("ENOENT", "ENOENT_snapshot", `no snapshot named ${JSON.stringify(name)}`);
    let view = this.slotOfId.get(record.id);
    if (view === undefined || view.dead) {
      if (this.slots.length >= viewSlotsMax) {
        throw new GroveError("EOVERFLOW", "EOVERFLOW_view_slots", "this mount has met too many snapshots: remount it");
      }
      view = { slot: this.slots.length + 1, name, id: record.id, ops: null, dead: false };
      this.slots.push(view);
      this.slotOfId.set(record.id, view);
    }
    return { node: viewBase(view.slot) + rootIno, view };
  }

  /** A snapshot is gone: its view goes, and every node of it answers ENOENT from now on. */
  forgetSnapshot(name: string): ViewSlot | undefined {
    for (const view of this.slotOfId.values()) {
      if (view.name !== name || view.dead) continue;
      view.dead = true;
      view.ops = null;
      this.slotOfId.delete(view.id);
      return view;
    }
    return undefined;
  }

  /** The kernel now holds one more reference to `node`, a file of type `mode & S_IFMT`. */
  remember(node: number, mode: number): void {
    this.counts.set(node, (this.counts.get(node) ?? 0) + 1);
    this.types.set(node, mode & 0o170000);
  }

  /** The file type of a node the kernel holds, or undefined. */
  typeOf(node: number): number | undefined {
    return this.types.get(node);
  }

  /** FORGET: the kernel dropped `count` references to `node`. */
  forget(node: number, count: number): void {
    const held = this.counts.get(node) ?? 0;
    if (count > held) {
      this.forgetErrors++;
      if (this.forgetErrors <= 16) process.stderr.write(`grovefs: FORGET of ${count} for node ${node}, which holds ${held}\n`);
    }
    if (count >= held) {
      this.counts.delete(node);
      this.types.delete(node);
    } else {
      this.counts.set(node, held - count);
    }
  }

  /** The kernel's lookup count of `node` (0 when it holds none). */
  lookupCount(node: number): number {
    return this.counts.get(node) ?? 0;
  }

  /** How many nodes the kernel holds references to. */
  get nodesHeld(): number {
    return this.counts.size;
  }

  private viewOps(view: ViewSlot): InodeOps {
    if (view.ops === null) view.ops = this.subvolumes!.snapshotView(view.name);
    return view.ops;
  }
}
