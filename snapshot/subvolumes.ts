/**
 * Subvolumes, snapshots and clones: the subvolume table, O(1) creation, and
 * incremental, resumable deletion.
 *
 * Creation adds a record and a tree that shares the source's root (one more
 * reference on it), whatever the subvolume's size. The caller commits before
 * (so the source has no node written in the running transaction, which would
 * otherwise be modified in place) and after.
 *
 * Deletion (Rodeh's drop, as btrfs's drop_snapshot): the name goes at once;
 * the record moves to the deleting range. Each step walks the tree from the
 * root toward the saved progress key: a node with other references loses one
 * and is skipped whole; a node referenced only here is descended into, its
 * leaves' records release what they point at (file trees, data extents), and
 * it is freed once all its children are done. The progress key (every key
 * below it is released) is written in the same transaction as the frees, so
 * a crash or unmount resumes exactly where the last commit left off. Nodes on
 * the path to the progress key stay allocated until their subtree is done, so
 * the walk can always descend again.
 */
import { GroveError, ReleasePlan, Store, Tree, assert, compareBytes, featureReceivedSnapshots, treeDepthMax } from "../kvstore/index.js";
import {
  SubvolumeRecord,
  type ReceivedIdentity,
  decodeCounters,
  decodeReceived,
  encodeReceived,
  receivedKey,
  decodeSubvolume,
  deletingKey,
  deletingRange,
  encodeCounters,
  encodeSubvolume,
  liveKey,
  liveRange,
  subvolumeCountersKey,
  subvolumeIdMax,
  treeIdSubvolumes,
  validateSubvolumeName,
} from "./format.js";

export const defaultSubvolumeId = 256;
export const defaultSubvolumeName = "default";
/** Nodes one deletion step reads before it stops and records its progress. */
export const deletionStepNodes = 512;

export class Subvolumes {
  private tableHandle: Tree | null = null;
  /** Last snapshot generation by subvolume id, from the table (reloaded after an abort). */
  private lastSnapshots: Map<number, number> | null = null;
  /** The newest of `lastSnapshots` (never lowered by a deletion: a higher bound only costs lookups). */
  private lastSnapshotAny = 0;

  constructor(private readonly store: Store) {}

  /** Creates the table and the default subvolume's (empty) inode tree; the caller fills it. */
  static format(store: Store, nowNs: bigint): Tree {
    const table = store.createTree(treeIdSubvolumes);
    table.put(subvolumeCountersKey, encodeCounters(defaultSubvolumeId + 1));
    const tree = store.createTree(defaultSubvolumeId);
    const record: SubvolumeRecord = {
      id: defaultSubvolumeId,
      parent: 0,
      generation: store.generation,
      createdNs: nowNs,
      lastSnapshotGeneration: 0,
      readOnly: false,
      name: defaultSubvolumeName,
      progress: Buffer.alloc(0),
    };
    table.put(liveKey(defaultSubvolumeName), encodeSubvolume(record));
    return tree;
  }

  /**
   * fsck's salvage of a damaged subvolume table: the table is rebuilt from
   * the records it can still read, and each subvolume tree left without a
   * record gets one: `default` for the default subvolume's id (writable),
   * `recovered-ID` for the others, read-only (a clone of it writes). A
   * recovered record says a snapshot may have been taken at any generation,
   * so copy-on-write asks the refcounts of every node it shares. Call before
   * any other tree changes (copy-on-write reads this table). Returns a line
   * per change.
   */
  salvage(nowNs: bigint): string[] {
    const lost: Array<{ from: Buffer | null; to: Buffer | null }> = [];
    const table = this.store.rebuildTree(treeIdSubvolumes, this.table().salvageItems(lost));
    this.tableHandle = table;
    this.lastSnapshots = null;
    const done = [`the subvolume table holds damaged nodes: rebuilt from the ${table.meta().count} items it could read`];
    const known = new Set([...this.list(), ...this.deleting()].map((r) => r.id));
    const names = new Set(this.list().map((r) => r.name));
    let highest = defaultSubvolumeId;
    for (const id of this.store.treeIds()) {
      if (id < defaultSubvolumeId || id > subvolumeIdMax) continue;
      highest = Math.max(highest, id);
      if (known.has(id)) continue;
      let name = id === defaultSubvolumeId && !names.has(defaultSubvolumeName) ? defaultSubvolumeName : `recovered-${id}`;
      for (let n = 1; names.has(name); n++) name = `recovered-${id}.${n}`;
      names.add(name);
      const record: SubvolumeRecord = {
        id,
        parent: 0,
        generation: this.store.generation,
        createdNs: nowNs,
        lastSnapshotGeneration: this.store.generation,
        readOnly: id !== defaultSubvolumeId,
        name,
        progress: Buffer.alloc(0),
      };
      table.put(liveKey(name), encodeSubvolume(record));
      done.push(`tree ${id} had lost its subvolume record: recorded as ${JSON.stringify(name)}${record.readOnly ? " (read-only)" : ""}`);
    }
    const counter = table.get(subvolumeCountersKey);
    let next: number | null = null;
    try {
      next = counter === undefined ? null : decodeCounters(counter);
    } catch {
      next = null;
    }
    if (next === null || next <= highest) {
      table.put(subvolumeCountersKey, encodeCounters(highest + 1));
      done.push(`the subvolume id counter was ${next === null ? "lost" : next}: set to ${highest + 1}`);
    }
    return done;
  }

  /** Subvolume `id`'s last snapshot generation; for null, the newest of every subvolume's (a wide per-inode tree's owner names none). */
  lastSnapshotOf(id: number | null): number | undefined {
    if (this.lastSnapshots === null) {
      const map = new Map<number, number>();
      for (const record of this.list()) map.set(record.id, record.lastSnapshotGeneration);
      for (const record of this.deleting()) map.set(record.id, record.lastSnapshotGeneration);
      this.lastSnapshots = map;
      let newest = 0;
      for (const generation of map.values()) newest = Math.max(newest, generation);
      this.lastSnapshotAny = newest;
    }
    return id === null ? this.lastSnapshotAny : this.lastSnapshots.get(id);
  }

  /** The transaction was discarded: cached records may be gone. */
  forgetCache(): void {
    this.lastSnapshots = null;
  }

  get(name: string): SubvolumeRecord | undefined {
    validateSubvolumeName(name);
    const value = this.table().get(liveKey(name));
    return value === undefined ? undefined : decodeSubvolume(value);
  }

  /** The live subvolume `name`, or ENOENT. */
  require(name: string): SubvolumeRecord {
    const record = this.get(name);
    if (record === undefined) throw new GroveError("ENOENT", "ENOENT_subvolume", `no subvolume named ${JSON.stringify(name)}`);
    return record;
  }

  /** Live subvolumes, by name. */
  list(): SubvolumeRecord[] {
    const records: SubvolumeRecord[] = [];
    for (const [, value] of this.table().range(liveRange)) records.push(decodeSubvolume(value));
    return records;
  }

  /** Subvolumes whose deletion has not finished, by id. */
  deleting(limit = Infinity): SubvolumeRecord[] {
    const records: SubvolumeRecord[] = [];
    for (const [, value] of this.table().range(deletingRange)) {
      if (records.length >= limit) break;
      records.push(decodeSubvolume(value));
    }
    return records;
  }

  /**
   * A snapshot (read-only) or clone of `sourceName` called `name`: O(1). The
   * caller commits before and after.
   */
  create(name: string, sourceName: string, readOnly: boolean, nowNs: bigint): SubvolumeRecord {
    const source = this.checkCreate(name, sourceName);
    const counters = this.table().get(subvolumeCountersKey);
    if (counters === undefined) throw new GroveError("EIO", "EIO_subvolume_counters", "the subvolume counter is missing");
    const id = decodeCounters(counters);
    if (id > subvolumeIdMax) throw new GroveError("ENOSPC", "ENOSPC_subvolume_ids", "no subvolume ids are left");
    const generation = this.store.generation;
    const record: SubvolumeRecord = {
      id,
      parent: source.id,
      generation,
      createdNs: nowNs,
      lastSnapshotGeneration: generation,
      readOnly,
      name,
      progress: Buffer.alloc(0),
    };
    // Admitted as one unit: three records and one root-tree entry.
    this.store.admitted(4 * (this.table().level + 3) + 2 * (this.store.rootTree.level + 3), "grow", 0, () => {
      this.store.cloneTree(source.id, id);
      this.table().put(subvolumeCountersKey, encodeCounters(id + 1));
      this.table().put(liveKey(name), encodeSubvolume(record));
      this.table().put(liveKey(source.name), encodeSubvolume({ ...source, lastSnapshotGeneration: generation }));
    });
    // Kept up to date rather than dropped: rebuilding it reads every record, once per snapshot taken.
    this.lastSnapshots?.set(id, generation).set(source.id, generation);
    this.lastSnapshotAny = Math.max(this.lastSnapshotAny, generation);
    return record;
  }

  /**
   * A new, empty, writable subvolume called `name` (a receive fills it, then
   * publishes it): its tree is created empty and the caller fills it in the
   * same transaction. The caller commits after.
   */
  createEmpty(name: string, nowNs: bigint): { record: SubvolumeRecord; tree: Tree } {
    validateSubvolumeName(name);
    if (this.get(name) !== undefined) throw new GroveError("EEXIST", "EEXIST_subvolume", `a subvolume named ${JSON.stringify(name)} exists`);
    const counters = this.table().get(subvolumeCountersKey);
    if (counters === undefined) throw new GroveError("EIO", "EIO_subvolume_counters", "the subvolume counter is missing");
    const id = decodeCounters(counters);
    if (id > subvolumeIdMax) throw new GroveError("ENOSPC", "ENOSPC_subvolume_ids", "no subvolume ids are left");
    const generation = this.store.generation;
    const record: SubvolumeRecord = {
      id,
      parent: 0,
      generation,
      createdNs: nowNs,
      lastSnapshotGeneration: 0,
      readOnly: false,
      name,
      progress: Buffer.alloc(0),
    };
    let tree: Tree | undefined;
    this.store.admitted(4 * (this.table().level + 3) + 2 * (this.store.rootTree.level + 3) + 8, "grow", 0, () => {
      tree = this.store.createTree(id);
      this.table().put(subvolumeCountersKey, encodeCounters(id + 1));
      this.table().put(liveKey(name), encodeSubvolume(record));
    });
    this.lastSnapshots = null;
    return { record, tree: tree! };
  }

  /**
   * Renames subvolume `name` to `newName`, read-only from now on, and
   * records where it was received from: one admitted unit, so the received
   * snapshot appears whole at the next commit or not at all.
   */
  publish(name: string, newName: string, identity: ReceivedIdentity): SubvolumeRecord {
    const record = this.require(name);
    validateSubvolumeName(newName);
    if (this.get(newName) !== undefined) throw new GroveError("EEXIST", "EEXIST_subvolume", `a subvolume named ${JSON.stringify(newName)} exists`);
    const published: SubvolumeRecord = { ...record, name: newName, readOnly: true };
    this.store.admitted(3 * (this.table().level + 3), "grow", 0, () => {
      this.markReceived();
      this.table().delete(liveKey(name));
      this.table().put(liveKey(newName), encodeSubvolume(published));
      this.table().put(receivedKey(record.id), encodeReceived(identity));
    });
    this.lastSnapshots = null;
    return published;
  }

  /** Records a running receive's progress (and what it receives) on its hidden subvolume `id`. */
  saveReceiving(id: number, identity: ReceivedIdentity): void {
    this.store.admitted(this.table().level + 3, "grow", 0, () => {
      this.markReceived();
      this.table().put(receivedKey(id), encodeReceived(identity));
    });
  }

  /** Older code's checker calls a received identity an unknown key: the first one sets an incompatible feature bit. */
  private markReceived(): void {
    if (!this.store.hasFeature(featureReceivedSnapshots)) this.store.enableFeature(featureReceivedSnapshots);
  }

  /** Where subvolume `id` was received from, if a receive made it. */
  receivedIdentity(id: number): ReceivedIdentity | undefined {
    const value = this.table().get(receivedKey(id));
    return value === undefined ? undefined : decodeReceived(value);
  }

  /** Refuses a bad or taken `name` (EINVAL, EEXIST) or a missing source (ENOENT); returns the source. */
  checkCreate(name: string, sourceName: string): SubvolumeRecord {
    validateSubvolumeName(name);
    if (this.get(name) !== undefined) throw new GroveError("EEXIST", "EEXIST_subvolume", `a subvolume named ${JSON.stringify(name)} exists`);
    return this.require(sourceName);
  }

  /** Unlinks `name` and queues its blocks for release (see `deletionStep`). */
  delete(name: string): SubvolumeRecord {
    const record = this.require(name);
    this.store.admitted(3 * (this.table().level + 3), "shrink", 0, () => {
      this.table().delete(liveKey(name));
      this.table().delete(receivedKey(record.id));
      this.table().put(deletingKey(record.id), encodeSubvolume({ ...record, progress: Buffer.alloc(0) }));
    });
    return record;
  }

  /**
   * Releases up to about `budget` nodes of the oldest pending deletion.
   * Returns whether deletions remain. The changes join the running
   * transaction; the caller commits on its own schedule.
   */
  deletionStep(budget = deletionStepNodes): boolean {
    // On a nearly full volume a step may be refused for space: a smaller one may still fit.
    for (let nodes = Math.max(1, budget); ; nodes = Math.floor(nodes / 4)) {
      try {
        return this.tryDeletionStep(Math.max(1, nodes));
      } catch (error) {
        if (!(error instanceof GroveError) || error.code !== "ENOSPC" || this.store.isPoisoned || nodes <= 1) throw error;
      }
    }
  }

  private tryDeletionStep(budget: number): boolean {
    // The oldest two only: a step must not read every pending record (a thousand deleted at once).
    const pending = this.deleting(2);
    if (pending.length === 0) return false;
    const record = pending[0]!;
    const tree = this.store.openTree(record.id);
    const walk = new DropWalk(this.store, record.id, record.progress, budget);
    const plan = this.store.planRelease();
    const done = walk.run(plan, tree.rootLba, tree.level, null, 0, { generation: tree.rootGeneration, crc: tree.rootCrc, mirror: tree.rootMirror });
    if (done) {
      // The record and the root-tree entry go in the same admitted unit as the last frees.
      this.store.applyRelease(plan, () => {
        this.table().delete(deletingKey(record.id));
        this.store.forgetTree(record.id);
      });
      this.lastSnapshots?.delete(record.id);
      return pending.length > 1;
    }
    this.store.applyRelease(plan, () =>
      this.table().put(deletingKey(record.id), encodeSubvolume({ ...record, progress: walk.progress })),
    );
    return true;
  }

  private table(): Tree {
    if (this.tableHandle === null || this.tableHandle.dropped) this.tableHandle = this.store.openTree(treeIdSubvolumes);
    return this.tableHandle;
  }
}

/** One step of a subvolume drop: plans releases from `progress` on, until the budget is spent. */
class DropWalk {
  constructor(
    private readonly store: Store,
    private readonly id: number,
    public progress: Buffer,
    private readonly budget: number,
  ) {}

  /** Plans the subtree at `lba`, whose keys lie below `hi` (null: unbounded). True once all of it is planned. */
  run(plan: ReleasePlan, lba: number, level: number, hi: Buffer | null = null, depth = 0, check = { generation: 0, crc: 0, mirror: 0 }): boolean {
    assert(depth < treeDepthMax, "the drop's descent is bounded");
    if (this.store.sharing.refCount(lba) >= 2) {
      plan.drops.push(lba);
      this.advance(hi);
      return true;
    }
    const node = this.store.readNode(lba, level, this.id, check.generation, check.crc, check.mirror);
    plan.nodesRead++;
    if (level === 0) {
      for (let i = 0; i < node.count; i++) {
        const key = Buffer.from(node.keyAt(i));
        if (compareBytes(key, this.progress) >= 0) plan.item(this.id, key, node.copyValue(i));
      }
      plan.freeNode(node);
      this.advance(hi);
      return true;
    }
    const children: Array<{ lba: number; hi: Buffer | null; check: { generation: number; crc: number; mirror: number } }> = [];
    for (let i = 0; i < node.count; i++) {
      const check = { generation: node.childGenerationAt(i), crc: node.childCrcAt(i), mirror: node.childMirrorAt(i) };
      children.push({ lba: node.childAt(i), hi: i + 1 < node.count ? Buffer.from(node.keyAt(i + 1)) : hi, check });
    }
    for (let i = 0; i < children.length; i++) {
      const child = children[i]!;
      if (child.hi !== null && compareBytes(child.hi, this.progress) <= 0) continue;
      if (!this.run(plan, child.lba, level - 1, child.hi, depth + 1, child.check)) return false;
      if (plan.nodesRead >= this.budget && i + 1 < children.length) return false;
    }
    plan.freeNode(node);
    this.advance(hi);
    return true;
  }

  private advance(hi: Buffer | null): void {
    if (hi !== null) this.progress = hi;
  }
}
