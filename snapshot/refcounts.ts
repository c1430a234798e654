/**
 * Hierarchical reference counts (Rodeh), the kvstore's NodeSharing.
 *
 * Counts changed by the running transaction are kept in memory and written
 * to the refcount tree in the commit fixpoint, as the allocator does with
 * free space: the refcount tree's own nodes are never shared, so recording
 * counts changes no count, and the fixpoint converges.
 *
 * Fast path: a node written after its subvolume's last snapshot has one
 * reference, without a lookup (`lastSnapshotOf`). A wide per-inode tree's
 * owner names no subvolume (format.ts `ownerSubvolume`): its nodes take the
 * fast path against the newest snapshot of any subvolume, which is no older
 * than its own subvolume's.
 */
import { NodeSharing, Store, Tree, assert, treeIdFirstDynamic } from "../kvstore/index.js";
import { RefcountEntry, decodeRefcount, encodeRefcount, ownerSubvolume, refcountKey, treeIdRefcounts } from "./format.js";

/** Entries one refcount leaf holds, at least, for the commit's estimate. */
const entriesPerLeafMin = 100;

export class Refcounts implements NodeSharing {
  /** Counts changed in the running transaction (1 = back to implicit). */
  private readonly changed = new Map<number, RefcountEntry>();
  private treeHandle: Tree | null = null;

  constructor(
    private readonly store: () => Store,
    /**
     * The generation of a subvolume's last snapshot (null: of any subvolume's,
     * the newest), or undefined if unknown (then every lookup is made).
     */
    private readonly lastSnapshotOf: (subvolume: number | null) => number | undefined,
    private readonly onAbort: () => void,
  ) {}

  static create(store: Store): void {
    store.createTree(treeIdRefcounts);
  }

  /**
   * fsck's salvage of a damaged refcount tree: the tree is replaced by one
   * holding `references` (a walk's count of each block reached more than
   * once; `extents`: the length of each data extent). The old tree's nodes
   * are left unreachable, for the repair's free-space rebuild.
   */
  rebuild(references: ReadonlyMap<number, number>, extents: ReadonlyMap<number, number>): void {
    const store = this.store();
    store.forgetTree(treeIdRefcounts);
    this.changed.clear();
    this.treeHandle = null;
    Refcounts.create(store);
    for (const [lba, count] of references) if (count >= 2) this.setCount(lba, extents.get(lba) ?? 1, count);
  }

  isShared(lba: number, generation: number, treeId: number): boolean {
    if (treeId < treeIdFirstDynamic) return false;
    const last = this.lastSnapshotOf(ownerSubvolume(treeId));
    if (last !== undefined && generation > last) return false;
    return this.refCount(lba) >= 2;
  }

  refCount(lba: number): number {
    return this.entry(lba)?.count ?? 1;
  }

  /** The recorded entry for `lba`, if its count is 2 or more. */
  entry(lba: number): RefcountEntry | undefined {
    const changed = this.changed.get(lba);
    if (changed !== undefined) return changed.count >= 2 ? changed : undefined;
    const value = this.tree().get(refcountKey(lba));
    return value === undefined ? undefined : decodeRefcount(lba, value);
  }

  addRef(lba: number, blocks: number): void {
    const current = this.entry(lba);
    assert(current === undefined || current.blocks === blocks, `block ${lba} is referenced with one length`);
    this.changed.set(lba, { blocks, count: (current?.count ?? 1) + 1 });
  }

  dropRef(lba: number): void {
    const current = this.entry(lba);
    assert(current !== undefined, `block ${lba} is shared when a reference is dropped`);
    this.changed.set(lba, { blocks: current.blocks, count: current.count - 1 });
  }

  /** Sets a count outright (fsck's repair); 1 removes the entry. */
  setCount(lba: number, blocks: number, count: number): void {
    assert(count >= 1, "a count is at least 1");
    this.changed.set(lba, { blocks, count });
  }

  commitBlocks(): number {
    if (this.changed.size === 0) return 0;
    return 2 * (Math.ceil(this.changed.size / entriesPerLeafMin) + 1) * (this.tree().level + 2);
  }

  flushToTrees(): boolean {
    if (this.changed.size === 0) return false;
    const tree = this.tree();
    const entries = [...this.changed].sort((a, b) => a[0] - b[0]);
    this.changed.clear();
    for (const [lba, entry] of entries) {
      if (entry.count >= 2) tree.put(refcountKey(lba), encodeRefcount(entry));
      else tree.delete(refcountKey(lba));
    }
    return true;
  }

  committed(): void {
    assert(this.changed.size === 0, "every count is recorded by the commit");
  }

  aborted(): void {
    this.changed.clear();
    this.onAbort();
  }

  /** Every recorded count, pending changes included (for tests and the repair; not in LBA order). */
  *entries(): Generator<[number, RefcountEntry]> {
    const pending = new Map(this.changed);
    for (const [key, value] of this.tree().range()) {
      const lba = Number(key.readBigUInt64BE(0));
      const changed = pending.get(lba);
      pending.delete(lba);
      if (changed !== undefined) {
        if (changed.count >= 2) yield [lba, changed];
      } else {
        yield [lba, decodeRefcount(lba, value)];
      }
    }
    for (const [lba, entry] of [...pending].sort((a, b) => a[0] - b[0])) if (entry.count >= 2) yield [lba, entry];
  }

  private tree(): Tree {
    const store = this.store();
    if (this.treeHandle === null || this.treeHandle.dropped) this.treeHandle = store.openTree(treeIdRefcounts);
    return this.treeHandle;
  }
}
