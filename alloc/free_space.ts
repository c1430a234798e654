/**
 * Free space: two B+-trees that describe the same set of free extents, and
 * the in-memory allocator that works from them during a transaction.
 *
 * Trees (keys big-endian, values little-endian):
 *   by LBA     key: start u64              value: length u64
 *   by length  key: length u64 | start u64  value: (empty)
 *
 * Working state, for the running transaction:
 *   avail    free in the last committed state and not yet taken: the only
 *            place allocations come from;
 *   pending  freed by this transaction but still referenced by the last
 *            committed generation: unusable until this commit is durable;
 *   fresh    allocated by this transaction: freeing these returns them to
 *            avail at once, since no committed state references them;
 *   changed  ranges whose tree entries may be stale.
 *
 * Invariant: after every commit the trees hold exactly avail ∪ pending,
 * coalesced. The commit fixpoint gets there by rewriting the tree entries
 * around each changed range; that rewrite allocates and frees tree nodes,
 * which changes more ranges, until a round changes nothing.
 */
import {
  CorruptionError,
  GroveError,
  SpaceManager,
  Store,
  Tree,
  ReservePurpose,
  assert,
  firstAllocatableLba,
} from "../kvstore/index.js";
import { Extent, ExtentSet, unionExtents } from "./extent_set.js";

export const treeIdFreeByLba = 2;
export const treeIdFreeByLength = 3;

/** How many extents past the hint an allocation looks at before it falls back to best fit. */
const hintProbeExtents = 8;
/** Free-space entries per leaf, at the least (a half-full leaf of 16-byte keys). */
const treeEntriesPerLeafMin = 64;

export function freeByLbaKey(start: number): Buffer {
  const key = Buffer.allocUnsafe(8);
  key.writeBigUInt64BE(BigInt(start));
  return key;
}

export function freeByLengthKey(length: number, start: number): Buffer {
  const key = Buffer.allocUnsafe(16);
  key.writeBigUInt64BE(BigInt(length), 0);
  key.writeBigUInt64BE(BigInt(start), 8);
  return key;
}

export function encodeLength(length: number): Buffer {
  const value = Buffer.allocUnsafe(8);
  value.writeBigUInt64LE(BigInt(length));
  return value;
}

const emptyValue = Buffer.alloc(0);

export interface SpaceUsage {
  /** Every block of the device, superblocks included. */
  totalBlocks: number;
  /** Blocks no longer referenced by the running state (some unusable until the next commit). */
  freeBlocks: number;
  /** totalBlocks - freeBlocks: superblocks plus everything the running state references. */
  usedBlocks: number;
  /** Blocks that can be allocated right now. */
  availableBlocks: number;
  /** Freed by the running transaction, reusable once it commits. */
  pendingBlocks: number;
}

export class FreeSpace implements SpaceManager {
  private readonly store: Store;
  private readonly avail = new ExtentSet({ bestFit: true });
  private readonly pending = new ExtentSet();
  private readonly fresh = new ExtentSet();
  private readonly changed = new ExtentSet();
  private readonly deviceBlocks: number;
  /** Kept back from growth so that deletes, which also copy on write, can always run. */
  private readonly growHeadroomBlocks: number;

  private constructor(store: Store) {
    this.store = store;
    this.deviceBlocks = store.deviceBlocks;
    this.growHeadroomBlocks = Math.max(16, Math.floor(this.deviceBlocks / 512));
  }

  /** Everything past the superblocks is free; the trees are created by the first commit. */
  static format(store: Store): FreeSpace {
    const space = new FreeSpace(store);
    const length = space.deviceBlocks - firstAllocatableLba;
    space.avail.add(firstAllocatableLba, length);
    space.changed.add(firstAllocatableLba, length);
    return space;
  }

  static open(store: Store): FreeSpace {
    const space = new FreeSpace(store);
    let end = firstAllocatableLba;
    for (const [key, value] of space.byLba().range()) {
      const start = key.length === 8 ? Number(key.readBigUInt64BE(0)) : -1;
      const length = value.length === 8 ? Number(value.readBigUInt64LE(0)) : -1;
      if (start < end || length <= 0 || start + length > space.deviceBlocks) {
        throw new CorruptionError(
          "EIO_free_space_tree",
          `free-space tree entry ${start}+${length} overlaps its neighbour or leaves the volume`,
        );
      }
      space.avail.add(start, length);
      end = start + length;
    }
    return space;
  }

  usage(): SpaceUsage {
    const free = this.avail.blocks + this.pending.blocks;
    return {
      totalBlocks: this.deviceBlocks,
      freeBlocks: free,
      usedBlocks: this.deviceBlocks - free,
      availableBlocks: this.avail.blocks,
      pendingBlocks: this.pending.blocks,
    };
  }

  /** The free set as the trees should hold it after the next commit. */
  targetExtents(): Extent[] {
    return unionExtents([[...this.avail.extents()], [...this.pending.extents()]]);
  }

  reserve(blocks: number, purpose: ReservePurpose): void {
    const needed = blocks + this.commitReserveBlocks() + (purpose === "grow" ? this.growHeadroomBlocks : 0);
    if (this.avail.blocks < needed) {
      throw new GroveError(
        "ENOSPC",
        purpose === "grow" ? "ENOSPC_reserve" : "ENOSPC_reserve_shrink",
        `no space left on device (${this.avail.blocks} blocks available, ${needed} needed)`,
      );
    }
  }

  allocate(count: number, hint?: number): number {
    assert(Number.isSafeInteger(count) && count > 0, "allocation of a positive block count");
    const extent = (hint !== undefined ? this.nearHint(count, hint) : undefined) ?? this.avail.bestFit(count);
    if (extent === undefined) {
      throw new GroveError("ENOSPC", "ENOSPC_alloc", `no free extent of ${count} blocks`);
    }
    this.avail.remove(extent.start, count);
    this.fresh.add(extent.start, count);
    this.changed.cover(extent.start, count);
    return extent.start;
  }

  free(lba: number, count: number): void {
    assert(Number.isSafeInteger(lba) && lba >= firstAllocatableLba, `freed block ${lba} is allocatable`);
    assert(lba + count <= this.deviceBlocks, "freed blocks lie inside the device");
    let cursor = lba;
    for (const part of this.fresh.intersect(lba, count)) {
      if (cursor < part.start) this.freeCommitted(cursor, part.start - cursor);
      this.fresh.remove(part.start, part.length);
      this.avail.add(part.start, part.length);
      cursor = part.start + part.length;
    }
    if (cursor < lba + count) this.freeCommitted(cursor, lba + count - cursor);
    this.changed.cover(lba, count);
  }

  flushToTrees(): boolean {
    let changedTrees = false;
    if (!this.store.hasTree(treeIdFreeByLba)) {
      this.store.createTree(treeIdFreeByLba);
      this.store.createTree(treeIdFreeByLength);
      changedTrees = true;
    }
    while (!this.changed.isEmpty()) {
      const ranges = [...this.changed.extents()];
      this.changed.clear();
      for (const range of ranges) {
        if (this.syncWindow(range.start, range.start + range.length)) changedTrees = true;
      }
    }
    return changedTrees;
  }

  committed(): void {
    assert(this.changed.isEmpty(), "the fixpoint recorded every change");
    for (const extent of this.pending.extents()) this.avail.add(extent.start, extent.length);
    this.pending.clear();
    this.fresh.clear();
  }

  aborted(): void {
    for (const extent of this.fresh.extents()) this.avail.add(extent.start, extent.length);
    this.fresh.clear();
    this.pending.clear();
    this.changed.clear();
  }

  private treeLevel(id: number): number {
    return this.store.hasTree(id) ? this.store.openTree(id).level : 0;
  }

  private byLba(): Tree {
    return this.store.openTree(treeIdFreeByLba);
  }

  private byLength(): Tree {
    return this.store.openTree(treeIdFreeByLength);
  }

  private freeCommitted(lba: number, count: number): void {
    assert(this.avail.disjoint(lba, count), `blocks ${lba}+${count} are not freed twice`);
    // pending.add asserts that the blocks are not pending already.
    this.pending.add(lba, count);
  }

  /** Continues the extent holding `hint`, else the first fitting extent shortly after it. */
  private nearHint(count: number, hint: number): Extent | undefined {
    const holding = this.avail.containing(hint);
    if (holding !== undefined && holding.start + holding.length - hint >= count) {
      return { start: hint, length: count };
    }
    let probe = hint;
    for (let i = 0; i < hintProbeExtents; i++) {
      const next = this.avail.atOrAfter(probe);
      if (next === undefined) return undefined;
      if (next.length >= count) return next;
      probe = next.start + next.length;
    }
    return undefined;
  }

  /**
   * Worst case of blocks the commit needs to record this transaction: every
   * changed range may touch a leaf in each tree, plus the splits its entries
   * cause, plus the paths above them and the root tree's path.
   */
  private commitReserveBlocks(): number {
    const ranges = this.changed.size + this.pending.size + 2;
    const entries = this.avail.size + this.pending.size + 2 * ranges;
    const leaves = Math.ceil(entries / treeEntriesPerLeafMin) + 1;
    const touched = Math.min(2 * ranges, leaves);
    const splits = Math.ceil((2 * ranges) / treeEntriesPerLeafMin) + 1;
    // A tree may grow a level during the commit.
    const depth = Math.max(this.treeLevel(treeIdFreeByLba), this.treeLevel(treeIdFreeByLength)) + 2;
    return 2 * (2 * touched + splits + 2 * depth) + 4 * depth;
  }

  /** Rewrites the tree entries around [lo, hi) to match avail ∪ pending there. */
  private syncWindow(lo: number, hi: number): boolean {
    let inTrees: Extent[];
    let target: Extent[];
    for (;;) {
      inTrees = this.treeTouching(lo, hi);
      target = unionExtents([this.avail.touching(lo, hi), this.pending.touching(lo, hi)]);
      let newLo = lo;
      let newHi = hi;
      for (const e of [...inTrees, ...target]) {
        newLo = Math.min(newLo, e.start);
        newHi = Math.max(newHi, e.start + e.length);
      }
      if (newLo === lo && newHi === hi) break;
      lo = newLo;
      hi = newHi;
    }
    if (sameExtents(inTrees, target)) return false;
    const byLba = this.byLba();
    const byLength = this.byLength();
    for (const e of inTrees) {
      assert(byLba.delete(freeByLbaKey(e.start)), "a free extent read from the tree is deleted from it");
      assert(byLength.delete(freeByLengthKey(e.length, e.start)), "the two free-space trees agree");
    }
    for (const e of target) {
      byLba.put(freeByLbaKey(e.start), encodeLength(e.length));
      byLength.put(freeByLengthKey(e.length, e.start), emptyValue);
    }
    return true;
  }

  /** Tree entries that overlap or touch [lo, hi). */
  private treeTouching(lo: number, hi: number): Extent[] {
    const out: Extent[] = [];
    const cursor = this.byLba().cursor();
    let ok = cursor.seekLE(freeByLbaKey(lo)) || cursor.first();
    while (ok) {
      const start = Number(cursor.key().readBigUInt64BE(0));
      if (start > hi) break;
      const length = Number(cursor.value().readBigUInt64LE(0));
      if (start + length >= lo) out.push({ start, length });
      ok = cursor.next();
    }
    return out;
  }
}

function sameExtents(a: Extent[], b: Extent[]): boolean {
  if (a.length !== b.length) return false;
  return a.every((e, i) => e.start === b[i]!.start && e.length === b[i]!.length);
}
