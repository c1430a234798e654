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
 *   run      single blocks are handed out from a run taken from avail in one
 *            piece, so the hot path (one CoW = one block) is a pointer bump;
 *   far run  the same for the second copies of nodes (duplicate metadata),
 *            kept at least `distanceMin` blocks from the first copy;
 *   pending  freed by this transaction: unusable until this commit is
 *            durable, because the last committed generation may still
 *            reference them (a block both allocated and freed in this
 *            transaction waits too; that costs a little space, never safety);
 *   taken    extents taken from avail by this transaction, given back on abort;
 *   changed  ranges whose tree entries may be stale.
 * Frees and changes are logged as flat (start, count) pairs and folded into
 * sets only at commit, so that a mutation costs no ordered-set work.
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
  blockSizeBytes,
  firstAllocatableLba,
  readU64BE,
  readU64LE,
  writeU64BE,
  writeU64LE,
} from "../kvstore/index.js";
import { Extent, ExtentSet, mergeExtents } from "./extent_set.js";

export const treeIdFreeByLba = 2;
export const treeIdFreeByLength = 3;

/** Single-block allocations are carved from runs of at most this many blocks. */
const runBlocksMax = 256;
/** A run prefers an extent at least this long, so that a commit's node writes stay contiguous. */
const runBlocksPreferred = 64;
/** How many extents past the hint an allocation looks at before it falls back to best fit. */
const hintProbeExtents = 8;
/** Free-space entries per leaf, at the least (a half-full leaf of 16-byte keys). */
const treeEntriesPerLeafMin = 64;

export function freeByLbaKey(start: number): Buffer {
  const key = Buffer.allocUnsafe(8);
  writeU64BE(key, 0, start);
  return key;
}

export function freeByLengthKey(length: number, start: number): Buffer {
  const key = Buffer.allocUnsafe(16);
  writeU64BE(key, 0, length);
  writeU64BE(key, 8, start);
  return key;
}

export function encodeLength(length: number): Buffer {
  const value = Buffer.allocUnsafe(8);
  writeU64LE(value, 0, length);
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
  /** Freed since the last fold into `pending`: flat (start, count) pairs. */
  private freedLog: number[] = [];
  private freedLogBlocks = 0;
  /** Ranges whose tree entries may be stale: flat (start, count) pairs. */
  private changedLog: number[] = [];
  private taken: Extent[] = [];
  private run: Extent | null = null;
  private runNext = 0;
  private runEnd = 0;
  /** The run second copies of nodes come from (`allocateFar`). */
  private farRun: Extent | null = null;
  private farNext = 0;
  private farEnd = 0;
  /** Inside the commit fixpoint: allocate exactly, with no run left open. */
  private flushing = false;
  /** The volume's size: changed only by `resize`. */
  private deviceBlocks: number;
  /** Kept back from growth so that deletes, which also copy on write, can always run. */
  private growHeadroomBlocks: number;

  private constructor(store: Store) {
    this.store = store;
    this.deviceBlocks = store.deviceBlocks;
    this.growHeadroomBlocks = growHeadroomFor(this.deviceBlocks) * store.nodeCopies;
  }

  /** Everything past the superblocks and their reserved places is free; the trees are created by the first commit. */
  static format(store: Store): FreeSpace {
    const space = new FreeSpace(store);
    space.addFree(firstAllocatableLba, space.deviceBlocks, space.deviceBlocks);
    return space;
  }

  /** Makes [from, to) available, less the blocks a volume of `volumeBlocks` reserves (the superblock copies). */
  private addFree(from: number, to: number, volumeBlocks: number): void {
    let at = from;
    const add = (a: number, b: number) => {
      if (b <= a) return;
      this.avail.add(a, b - a);
      this.changedLog.push(a, b - a);
    };
    for (const r of this.store.reservedExtents(volumeBlocks)) {
      if (r.start + r.length <= at || r.start >= to) continue;
      add(at, r.start);
      at = Math.max(at, r.start + r.length);
    }
    add(at, to);
  }

  /** Reserved blocks (superblock copies) in [from, to): they count as free for a shrink. */
  private reservedIn(from: number, to: number): number {
    let n = 0;
    for (const r of this.store.reservedExtents(this.deviceBlocks)) n += Math.max(0, Math.min(to, r.start + r.length) - Math.max(from, r.start));
    return n;
  }

  static open(store: Store): FreeSpace {
    if (store.rescueNotes === null) return FreeSpace.load(store);
    try {
      return FreeSpace.load(store);
    } catch (error) {
      if (!(error instanceof GroveError) || error.code !== "EIO") throw error;
      // Rescue is read-only: nothing is allocated, so an unreadable free-space tree costs only df's figures.
      store.rescueNotes.push(`the free-space tree is unreadable (${error.message}); free space is shown as 0`);
      return new FreeSpace(store);
    }
  }

  /**
   * fsck's salvage of damaged free-space trees: the allocator starts from
   * `free` (the complement of what a walk reached), not from the trees,
   * which `rebuild(free, { forget: true })` then replaces.
   */
  static given(store: Store, free: readonly Extent[]): FreeSpace {
    const space = new FreeSpace(store);
    for (const e of free) space.avail.add(e.start, e.length);
    return space;
  }

  private static load(store: Store): FreeSpace {
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
    const available = this.avail.blocks + this.runBlocksLeft();
    const pending = this.pending.blocks + this.freedLogBlocks;
    return {
      totalBlocks: this.deviceBlocks,
      freeBlocks: available + pending,
      usedBlocks: this.deviceBlocks - available - pending,
      availableBlocks: available,
      pendingBlocks: pending,
    };
  }

  /** The free set as the trees should hold it after the next commit. */
  targetExtents(): Extent[] {
    const lists: Extent[][] = [[...this.avail.extents()], [...this.pending.extents()], coalescePairs(this.freedLog)];
    if (this.runNext < this.runEnd) lists.push([{ start: this.runNext, length: this.runEnd - this.runNext }]);
    if (this.farNext < this.farEnd) lists.push([{ start: this.farNext, length: this.farEnd - this.farNext }]);
    return lists.reduce(mergeExtents);
  }

  reserve(blocks: number, purpose: ReservePurpose, freedRanges = 0): void {
    const { needed, available } = this.admission(blocks, purpose, freedRanges);
    if (available < needed) {
      throw new GroveError(
        "ENOSPC",
        purpose === "grow" ? "ENOSPC_reserve" : "ENOSPC_reserve_shrink",
        `no space left on device (${available} blocks available, ${needed} needed)`,
      );
    }
  }

  /**
   * How many blocks `reserve` with these arguments is short of now (0 when
   * it would pass). The commit estimate in it grows with every range this
   * transaction freed or changed, so a burst of deletes between commits
   * raises it while what they freed is still pending: a commit turns both
   * back into available space and a small estimate.
   */
  shortfall(blocks: number, purpose: ReservePurpose, freedRanges = 0): number {
    const { needed, available } = this.admission(blocks, purpose, freedRanges);
    return Math.max(0, needed - available);
  }

  private admission(blocks: number, purpose: ReservePurpose, freedRanges: number): { needed: number; available: number } {
    const needed =
      blocks + this.commitReserveBlocks(freedRanges) + (purpose === "grow" ? this.growHeadroomBlocks : 0);
    return { needed, available: this.avail.blocks + this.runBlocksLeft() };
  }

  private runBlocksLeft(): number {
    return this.runEnd - this.runNext + (this.farEnd - this.farNext);
  }

  /**
   * One block at least `distanceMin` blocks from `awayFrom`: the second copy
   * of a node (duplicate metadata, ZFS's ditto rule with distanceMin an
   * eighth of the volume). It is searched for just past that distance (so
   * that the copies stay packed and a shrink over the free tail still can),
   * then half the volume away, then before the node. When no free block is
   * that far (a tiny or nearly full
   * volume), any free block is taken: the second copy then still protects
   * against damage to one block, only not against damage to a region. That
   * is the decision: refusing would turn a nearly full volume's last writes
   * into ENOSPC that reserve() did not predict.
   */
  allocateFar(awayFrom: number, distanceMin: number): number {
    const far = (lba: number): boolean => Math.abs(lba - awayFrom) >= distanceMin;
    if (!this.flushing && this.farNext < this.farEnd && far(this.farNext)) return this.farNext++;
    this.closeFarRun();
    const n = this.deviceBlocks;
    const hints = [(awayFrom + distanceMin) % n, (awayFrom + Math.floor(n / 2)) % n, Math.max(firstAllocatableLba, awayFrom - distanceMin)];
    for (const hint of hints) {
      const extent = this.nearHint(1, Math.max(firstAllocatableLba, hint));
      if (extent === undefined || !far(extent.start)) continue;
      if (this.flushing) return this.take(extent.start, 1).start;
      const holding = this.avail.containing(extent.start)!;
      const length = Math.min(runBlocksMax, holding.start + holding.length - extent.start);
      this.farRun = this.take(extent.start, length);
      this.farNext = extent.start + 1;
      this.farEnd = extent.start + length;
      return extent.start;
    }
    return this.allocate(1);
  }

  allocate(count: number, hint?: number): number {
    assert(Number.isSafeInteger(count) && count > 0, "allocation of a positive block count");
    if (count === 1 && !this.flushing) {
      if (this.runNext === this.runEnd) this.startRun(hint);
      return this.runNext++;
    }
    const extent = this.pick(count, hint);
    if (extent === undefined) {
      throw new GroveError("ENOSPC", "ENOSPC_alloc", `no free extent of ${count} blocks`);
    }
    this.take(extent.start, count);
    return extent.start;
  }

  /**
   * Up to `count` contiguous blocks for file data: near `hint` or best fit,
   * else the largest free extent, so that a fragmented volume still fills.
   * Data never comes from the node run, which stays for tree nodes.
   */
  allocateExtent(count: number, hint?: number): Extent {
    assert(Number.isSafeInteger(count) && count > 0, "allocation of a positive block count");
    const fit = this.pick(count, hint);
    let extent = fit !== undefined ? { start: fit.start, length: count } : this.avail.largest();
    if (extent === undefined && this.runBlocksLeft() > 0) {
      // The node run holds the last free blocks: data may have them (reserve counted them).
      this.closeRun();
      extent = this.avail.largest();
    }
    if (extent === undefined) throw new GroveError("ENOSPC", "ENOSPC_alloc", "no free block");
    return this.take(extent.start, Math.min(count, extent.length));
  }

  free(lba: number, count: number): void {
    assert(Number.isSafeInteger(lba) && lba >= firstAllocatableLba, `freed block ${lba} is allocatable`);
    assert(count > 0 && lba + count <= this.deviceBlocks, "freed blocks lie inside the device");
    this.freedLog.push(lba, count);
    this.freedLogBlocks += count;
    this.logChange(lba, count);
  }

  /** Records a changed range, extending the last one when they touch (runs and dropped trees are contiguous). */
  private logChange(lba: number, count: number): void {
    const log = this.changedLog;
    const n = log.length;
    if (n > 0 && log[n - 2]! + log[n - 1]! === lba) log[n - 1]! += count;
    else log.push(lba, count);
  }

  /**
   * fsck's repair: the free set becomes exactly `free` (the complement of
   * what a full walk reached), and both trees are dropped and rebuilt from
   * it by the next commit. Call before anything else in the transaction.
   */
  rebuild(free: readonly Extent[], options: { forget?: boolean } = {}): void {
    assert(this.changedLog.length === 0 && this.freedLog.length === 0 && this.run === null && this.farRun === null, "a rebuild starts a transaction");
    this.avail.clear();
    for (const e of free) this.avail.add(e.start, e.length);
    // Dropping the old trees frees their nodes (pending until the commit); the fixpoint recreates them whole.
    // A damaged tree cannot be read to be dropped: `forget` leaves its nodes unreachable, for a later rebuild to free.
    if (options.forget === true) {
      this.store.forgetTree(treeIdFreeByLba);
      this.store.forgetTree(treeIdFreeByLength);
    } else {
      this.store.dropTree(treeIdFreeByLba);
      this.store.dropTree(treeIdFreeByLength);
    }
    this.logChange(firstAllocatableLba, this.deviceBlocks - firstAllocatableLba);
  }

  /**
   * The volume becomes `blocks` long (SpaceManager.resize). New blocks are
   * free at once: no committed generation references them. A shrink is
   * refused unless [blocks, end) is free, and unless what stays free can
   * still commit and leaves the new size's growth headroom.
   */
  resize(blocks: number): void {
    assert(this.changedLog.length === 0 && this.freedLog.length === 0, "a resize starts a transaction");
    assert(this.run === null && this.farRun === null && this.taken.length === 0 && this.pending.size === 0, "a resize starts a transaction");
    const old = this.deviceBlocks;
    if (blocks > old) {
      this.addFree(old, blocks, blocks);
    } else if (blocks < old) {
      this.checkShrink(blocks);
      for (const e of [...this.avail.touching(blocks, old)]) {
        const from = Math.max(blocks, e.start);
        const to = Math.min(old, e.start + e.length);
        if (to > from) this.avail.remove(from, to - from);
      }
      this.logChange(blocks, old - blocks);
    }
    this.deviceBlocks = blocks;
    this.growHeadroomBlocks = growHeadroomFor(blocks) * this.store.nodeCopies;
  }

  /**
   * The smallest size a shrink could reach now: the start of the free
   * extent that runs to the end, if there is one (blocks are never moved).
   */
  shrinkFloorBlocks(): number {
    // A backup superblock's block is no obstacle: a shrink below it drops the backup.
    const backups = this.store.reservedExtents(this.deviceBlocks).slice(1);
    let floor = this.deviceBlocks;
    for (;;) {
      const last = this.avail.containing(floor - 1);
      if (last !== undefined) {
        floor = last.start;
        continue;
      }
      if (!backups.some((b) => b.start + b.length === floor)) return floor;
      floor--;
    }
  }

  private checkShrink(blocks: number): void {
    const old = this.deviceBlocks;
    let free = 0;
    for (const e of this.avail.touching(blocks, old)) free += Math.max(0, Math.min(old, e.start + e.length) - Math.max(blocks, e.start));
    const inUse = old - blocks - free - this.reservedIn(blocks, old);
    if (inUse > 0) {
      const floor = this.shrinkFloorBlocks();
      throw new GroveError(
        "ENOSPC",
        "ENOSPC_resize_in_use",
        `cannot shrink the volume to ${bytesText(blocks)}: ${inUse} of the ${old - blocks} blocks past the new end are in use ` +
          `(grovefs does not move data; the smallest size it can shrink to now is ${bytesText(floor)})`,
      );
    }
    // What stays must still record this commit, and leave the headroom that lets deletes run.
    const left = this.avail.blocks - (old - blocks - this.reservedIn(blocks, old));
    const needed = this.commitReserveBlocks(1) + growHeadroomFor(blocks) * this.store.nodeCopies;
    if (left < needed) {
      throw new GroveError(
        "ENOSPC",
        "ENOSPC_resize_full",
        `cannot shrink the volume to ${bytesText(blocks)}: it would be full (${Math.max(0, left)} blocks free, at least ${needed} needed)`,
      );
    }
  }

  flushToTrees(): boolean {
    this.closeRun();
    this.flushing = true;
    let changedTrees = false;
    if (!this.store.hasTree(treeIdFreeByLba)) {
      this.store.createTree(treeIdFreeByLba);
      this.store.createTree(treeIdFreeByLength);
      changedTrees = true;
    }
    for (;;) {
      this.foldFreed();
      if (this.changedLog.length === 0) return changedTrees;
      const ranges = coalescePairs(this.changedLog);
      this.changedLog = [];
      for (const range of ranges) {
        if (this.syncWindow(range.start, range.start + range.length)) changedTrees = true;
      }
    }
  }

  committed(): void {
    assert(this.changedLog.length === 0 && this.freedLog.length === 0, "the fixpoint recorded every change");
    for (const extent of this.pending.extents()) this.avail.add(extent.start, extent.length);
    this.pending.clear();
    this.taken = [];
    this.flushing = false;
  }

  aborted(): void {
    this.closeRun();
    for (const extent of this.taken) if (extent.length > 0) this.avail.add(extent.start, extent.length);
    this.taken = [];
    this.pending.clear();
    this.freedLog = [];
    this.freedLogBlocks = 0;
    this.changedLog = [];
    this.flushing = false;
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

  /** Moves logged frees into `pending`, checking that no block is freed twice. */
  private foldFreed(): void {
    const log = this.freedLog;
    for (let i = 0; i < log.length; i += 2) {
      assert(this.avail.disjoint(log[i]!, log[i + 1]!), `blocks ${log[i]}+${log[i + 1]} are not freed twice`);
      this.pending.add(log[i]!, log[i + 1]!);
    }
    this.freedLog = [];
    this.freedLogBlocks = 0;
  }

  private take(start: number, count: number): Extent {
    this.avail.remove(start, count);
    const extent = { start, length: count };
    this.taken.push(extent);
    this.logChange(start, count);
    return extent;
  }

  /** Takes up to `runBlocksMax` blocks near the hint as the source of single-block allocations. */
  private startRun(hint: number | undefined): void {
    const extent = this.pick(runBlocksPreferred, hint) ?? this.pick(1, hint);
    if (extent === undefined) throw new GroveError("ENOSPC", "ENOSPC_alloc", "no free block");
    const holding = this.avail.containing(extent.start)!;
    const length = Math.min(runBlocksMax, holding.start + holding.length - extent.start);
    this.run = this.take(extent.start, length);
    this.runNext = extent.start;
    this.runEnd = extent.start + length;
  }

  /** Gives the unused tails of both runs back to avail; each run's record keeps only what was used. */
  private closeRun(): void {
    this.closeFarRun();
    if (this.run === null) return;
    if (this.runNext < this.runEnd) {
      this.avail.add(this.runNext, this.runEnd - this.runNext);
      this.logChange(this.runNext, this.runEnd - this.runNext);
    }
    this.run.length = this.runNext - this.run.start;
    this.run = null;
    this.runNext = 0;
    this.runEnd = 0;
  }

  private closeFarRun(): void {
    if (this.farRun === null) return;
    if (this.farNext < this.farEnd) {
      this.avail.add(this.farNext, this.farEnd - this.farNext);
      this.logChange(this.farNext, this.farEnd - this.farNext);
    }
    this.farRun.length = this.farNext - this.farRun.start;
    this.farRun = null;
    this.farNext = 0;
    this.farEnd = 0;
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

  /** Near the hint if it can be, else best fit. */
  private pick(count: number, hint: number | undefined): Extent | undefined {
    return (hint !== undefined ? this.nearHint(count, hint) : undefined) ?? this.avail.bestFit(count);
  }

  /**
   * Worst case of blocks the commit needs to record this transaction: every
   * changed range may touch a leaf in each tree, plus the splits its entries
   * cause, plus the paths above them and the root tree's path.
   */
  private commitReserveBlocks(freedRanges: number): number {
    const ranges = this.changedLog.length / 2 + this.pending.size + freedRanges + 2;
    const entries = this.avail.size + 2 * ranges;
    const leaves = Math.ceil(entries / treeEntriesPerLeafMin) + 1;
    const touched = Math.min(2 * ranges, leaves);
    const splits = Math.ceil((2 * ranges) / treeEntriesPerLeafMin) + 1;
    // A tree may grow a level during the commit.
    const depth = Math.max(this.treeLevel(treeIdFreeByLba), this.treeLevel(treeIdFreeByLength)) + 2;
    return this.store.nodeCopies * (2 * (2 * touched + splits + 2 * depth) + 4 * depth);
  }

  /** Rewrites the tree entries around [lo, hi) to match avail ∪ pending there. */
  private syncWindow(lo: number, hi: number): boolean {
    let inTrees: Extent[];
    let target: Extent[];
    for (;;) {
      inTrees = this.treeTouching(lo, hi);
      target = mergeExtents(this.avail.touching(lo, hi), this.pending.touching(lo, hi));
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
    // Apply the difference only: most windows hold one or two entries, and most of a wide one is unchanged.
    const byLba = this.byLba();
    const byLength = this.byLength();
    for (const e of inTrees) {
      const kept = lengthAt(target, e.start);
      if (kept === e.length) continue;
      assert(byLength.delete(freeByLengthKey(e.length, e.start)), "the two free-space trees agree");
      if (kept === undefined) {
        assert(byLba.delete(freeByLbaKey(e.start)), "a free extent read from the tree is deleted from it");
      }
    }
    for (const e of target) {
      if (lengthAt(inTrees, e.start) === e.length) continue;
      byLba.put(freeByLbaKey(e.start), encodeLength(e.length));
      byLength.put(freeByLengthKey(e.length, e.start), emptyValue);
    }
    return true;
  }

  /** Tree entries that overlap or touch [lo, hi). */
  private treeTouching(lo: number, hi: number): Extent[] {
    const out: Extent[] = [];
    this.byLba().scanFromLE(freeByLbaKey(lo), (key, value) => {
      const start = readU64BE(key, 0);
      if (start > hi) return false;
      const length = readU64LE(value, 0);
      if (start + length >= lo) out.push({ start, length });
      return true;
    });
    return out;
  }
}

/** "16384 blocks (64 MiB)": exact, with a rounded size for people. */
function bytesText(blocks: number): string {
  const mib = (blocks * blockSizeBytes) / 2 ** 20;
  return `${blocks} blocks (${mib >= 10 ? Math.round(mib) : mib.toFixed(1)} MiB)`;
}

function growHeadroomFor(deviceBlocks: number): number {
  return Math.max(16, Math.floor(deviceBlocks / 512));
}

function pairsToExtents(pairs: number[]): Extent[] {
  const out: Extent[] = [];
  for (let i = 0; i < pairs.length; i += 2) out.push({ start: pairs[i]!, length: pairs[i + 1]! });
  return out;
}

/** Sorted, merged ranges from (start, count) pairs that may overlap. */
function coalescePairs(pairs: number[]): Extent[] {
  const ranges = pairsToExtents(pairs).sort((a, b) => a.start - b.start);
  const out: Extent[] = [];
  for (const range of ranges) {
    const last = out[out.length - 1];
    if (last !== undefined && last.start + last.length >= range.start) {
      last.length = Math.max(last.length, range.start + range.length - last.start);
    } else {
      out.push({ ...range });
    }
  }
  return out;
}

function lengthAt(extents: Extent[], start: number): number | undefined {
  for (const e of extents) if (e.start === start) return e.length;
  return undefined;
}

function sameExtents(a: Extent[], b: Extent[]): boolean {
  if (a.length !== b.length) return false;
  return a.every((e, i) => e.start === b[i]!.start && e.length === b[i]!.length);
}
