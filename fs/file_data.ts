/**
 * A file's bytes: inline in the inode record while small, otherwise data
 * extents in the file's extent map, with writes buffered per inode and
 * allocated only when they are written out (delayed allocation), so that
 * sequential writes become large contiguous extents.
 *
 * Invariants:
 * - A written data block is never overwritten in place: writing out a
 *   buffered block allocates a new block and frees the old one (freed blocks
 *   stay pending until the commit that stops referencing them is durable).
 * - Every written data block on disk has a crc32c in its extent record,
 *   checked on every read; a mismatch is EIO, never wrong bytes.
 * - Buffered blocks and written extents never lie at or past the end of the
 *   file (truncate drops them), and bytes past the end inside the last block
 *   are zero, so growing a file always reveals zeros. Unwritten extents may
 *   (fallocate with KEEP_SIZE); they read as zeros anyway.
 * - Buffered data has already been admitted against free space (`reserve`),
 *   so writing it out does not run out of room.
 * - With compression on, write-out cuts runs into units of at most
 *   compressionUnitBlocksMax blocks (aligned to multiples of it in the
 *   file), and stores a unit lz4-compressed only if that saves a block;
 *   runs of units that stay raw are written as ordinary extents. Reading
 *   any block of an lz4 extent checks the crcs of all its disk blocks, then
 *   decompresses the unit (kept in a small cache).
 *
 * Preallocation (fallocate) records unwritten extents: allocated and counted,
 * read as zeros without touching the disk. Write-out writes a buffered block
 * into its unwritten block in place, once, when nothing else can reference
 * that block (`inPlaceAllowed`): the committed record still says unwritten,
 * so a crash before the commit shows zeros whatever the block holds, and
 * the new record says written, with the crc. Such buffered blocks take no
 * new space (`inPlace`), which is what makes preallocation a promise: a
 * write into the range is not refused for space. A block shared with a
 * snapshot or clone, or one already written, follows normal CoW. The rule is
 * the same at admission, when the block is buffered, and at write-out.
 */
import { CorruptionError, GroveError, IoError, assert, blockSizeBytes, crc32c, featureCompressLz4, featurePreallocated } from "../kvstore/index.js";
import type { FreeSpace } from "../alloc/index.js";
import type { Store } from "../kvstore/index.js";
import { Subvolumes } from "../snapshot/index.js";
import {
  compressionUnitBlocksMax,
  decompressedCacheUnits,
  extentBlocksMax,
  inodeInlineBytesMax,
} from "./constants.js";
import {
  Compression,
  Extent,
  Inode,
  PayloadKind,
  decodeExtent,
  encodeExtent,
  extentCrc,
  extentKey,
  isUnwritten,
  sliceExtent,
  unwrittenExtent,
} from "./format.js";
import { BlockRange, FallocateRequest, SeekWhence, fallocateRequest, holeRuns, seekIn } from "./ranges.js";
import { DecompressedCache, PackedUnit, StoredExtent, compressUnit, compressUnitInBackground, decompressUnit } from "./compression.js";
import type { ItemMap } from "./item_map.js";

/** What `FileData.planFallocate` found to do, admitted: `FileData.fallocate` carries it out. */
export interface FallocatePlan {
  request: FallocateRequest;
  /** Byte ranges [from, to) rewritten with zeros through the buffered path (partial blocks holding data). */
  zeroes: BlockRange[];
  /** Whole blocks whose buffered data is dropped, or null. */
  drop: BlockRange | null;
  /** Runs of file blocks whose extents are dropped (zeroing leaves unwritten ones be: they read as zeros already). */
  punch: BlockRange[];
  /** Runs of file blocks preallocated (unwritten extents). */
  prealloc: BlockRange[];
  /** Tree updates, and extents the punch may free: for the caller's admission. */
  puts: number;
  freedRanges: number;
}

/** A full unit of buffered blocks, compressed in the background since a write filled it. */
interface Precompressed {
  /** Blocks from the unit's start: a full unit, or a closed file's last unit. */
  blocks: number;
  done: boolean;
  packed: PackedUnit | null;
}

/** A streaming reader has up to 8 MiB past it read in the background, 1 MiB a request. */
const prefetchWindowBlocks = 2048;
const prefetchChunkBlocks = 256;

/** A read of at least this many blocks (64 KiB) is taken as streaming and read ahead. */
const streamingReadBlocksMin = 16;

/** Buffered blocks are carved from slabs: one allocation per 256 blocks instead of one per block. */
const slabBlocks = 256;
let slab = Buffer.alloc(0);
let slabNext = slabBlocks;

/** Blocks one inode's write-out may copy beyond its extents: paths in the inode tree and its extent tree, with splits. */
const writeOutPathBlocks = 12;

function newBlock(): Buffer {
  if (slabNext === slabBlocks) {
    slab = Buffer.allocUnsafeSlow(slabBlocks * blockSizeBytes);
    slabNext = 0;
  }
  const block = slab.subarray(slabNext * blockSizeBytes, (slabNext + 1) * blockSizeBytes);
  slabNext++;
  return block;
}

export class FileData {
  /** Buffered blocks per inode: file block index → a full block image. */
  private readonly buffers = new Map<number, Map<number, Buffer>>();
  /** Buffered blocks that were holes when buffered: what write-out will add to the file's blocks. */
  private readonly holes = new Map<number, Set<number>>();
  private bufferedBlocks = 0;
  /**
   * Read-ahead: a sequential reader gets the rest of an extent in one device
   * read (up to 512 KiB), checked once and served from here. Data blocks are
   * never rewritten in place, but freed ones can be reused, so any
   * allocation or free drops it.
   */
  private readAhead: { lba: number; blocks: number; data: Buffer } | null = null;
  private lastRead = { ino: -1, endBlock: -1 };
  /** The device LBA up to which background reads have been started. */
  private prefetchedEnd = 0;
  private readonly readAheadBuffer = Buffer.allocUnsafeSlow(extentBlocksMax * blockSizeBytes);
  /**
   * Disk blocks read ahead for a sequential reader of compressed extents
   * (each a few blocks): one device read covers many. Not checked when
   * read: each extent taken from it is checked against its crcs, and read
   * again from the device if they fail (the window may be stale).
   */
  private compressedWindow: { lba: number; blocks: number; data: Buffer } | null = null;
  private readonly compressedWindowBuffer = Buffer.allocUnsafeSlow(extentBlocksMax * blockSizeBytes);
  private readonly decompressed = new DecompressedCache(decompressedCacheUnits);
  /**
   * Per inode, full units (by unit index) being compressed or compressed in
   * the background. Any change to a unit's buffered blocks forgets its entry
   * (and a result arriving for a forgotten entry is dropped), so write-out
   * uses a result only for the bytes it was computed from.
   */
  private readonly precompressed = new Map<number, Map<number, Precompressed>>();
  /** Units write-out took from background compression (for tests and the benchmark). */
  unitsCompressedInBackground = 0;
  /**
   * Per inode, buffered blocks that write-out will write in place into
   * their preallocated (unwritten) blocks: they need no new space.
   */
  private readonly inPlace = new Map<number, Set<number>>();
  private inPlaceBlocks = 0;
  /** Buffered blocks write-out wrote in place, and promised ones it had to copy instead (for tests: the latter stays 0). */
  blocksWrittenInPlace = 0;
  inPlaceFallbacks = 0;
  /**
   * A write admitted without its inode's map (`admitWrite`), which would
   * have been refused only if its preallocated blocks needed new space: the
   * map's owner checks it again in `preloadEdges`, which comes next.
   */
  private deferredAdmission: { ino: number; first: number; end: number; extra: number } | null = null;
  /** The last block `preloadTruncate` read and found zero past the new size: the truncate that follows leaves it. */
  private zeroTail: { ino: number; block: number } | null = null;
  private subvolumes: Subvolumes | null = null;
  /** The newest subvolume creation (snapshot or clone) on the volume, as of transaction `at`. */
  private newestSubvolume = { at: -1, generation: 0 };

  constructor(
    private readonly store: Store,
    private readonly space: FreeSpace,
    /**
     * Blocks growth must leave free besides this data's own promises: the
     * filesystem's shrink reserve (for deletes), and what other filesystems
     * on the volume promised their buffered data (CommitPolicy.keptFreeBlocks).
     */
    private readonly shrinkReserveBlocks: () => number,
    /** How data written out from now on is compressed. */
    public compression: Compression = Compression.None,
  ) {}

  /** Buffered data that will take new blocks when written out (blocks written in place into preallocated ones take none). */
  get bufferedBytes(): number {
    return (this.bufferedBlocks - this.inPlaceBlocks) * blockSizeBytes;
  }

  /** Memory held by buffered data (bytes). */
  get heldBytes(): number {
    return this.bufferedBlocks * blockSizeBytes;
  }

  hasBuffers(ino: number): boolean {
    return this.buffers.has(ino);
  }

  inodesWithBuffers(): number[] {
    return [...this.buffers.keys()];
  }

  /** Blocks that buffered data adds to the file once written out (so st_blocks is right before then). */
  bufferedBlocksOf(ino: number): number {
    return this.holes.get(ino)?.size ?? 0;
  }

  /**
   * Buffers the current bytes of the partial blocks at `start` and `end`, so
   * that the write or truncate that follows reads nothing: a read error
   * (EIO) then refuses the operation before it changes anything.
   */
  preloadEdges(inode: Inode, map: ItemMap, start: number, end: number): void {
    const deferred = this.deferredAdmission;
    this.deferredAdmission = null;
    if (deferred !== null && deferred.ino === inode.ino && deferred.first === Math.floor(start / blockSizeBytes)) {
      this.admit(inode.ino, deferred.first, deferred.end, deferred.extra, this.inPlaceCredit(inode, map, deferred.first, deferred.end));
    }
    if (inode.kind === PayloadKind.Bytes || this.fitsInline(inode, Math.max(inode.size, end))) return;
    const fileBlocks = Math.ceil(inode.size / blockSizeBytes);
    for (const at of new Set([start, end])) {
      const b = Math.floor(at / blockSizeBytes);
      if (at % blockSizeBytes === 0 || b >= fileBlocks || this.buffers.get(inode.ino)?.has(b)) continue;
      const cover = this.coverage(inode, map, b, b + 1);
      this.addBuffered(inode.ino, b, this.loadBlock(inode, map, b), cover.mapped(b), cover.inPlace(b));
    }
  }

  /**
   * `preloadEdges` for a truncate to `size` below the current size: the
   * last kept block is read now (a read error refuses the truncate before
   * it changes anything), but buffered only if its tail past `size` must be
   * zeroed. A written block whose tail is already zero stays as it is on disk:
   * buffering it would write the block out again and unshare it from the
   * snapshots and reflinks that share it (a receive reproducing a shared last
   * block shares whole blocks, then shrinks onto a tail that is zero).
   */
  preloadTruncate(inode: Inode, map: ItemMap, size: number): void {
    this.zeroTail = null;
    const block = Math.floor(size / blockSizeBytes);
    const tail = size % blockSizeBytes;
    const plain =
      inode.kind !== PayloadKind.Bytes &&
      !this.fitsInline(inode, inode.size) &&
      tail !== 0 &&
      block < Math.ceil(inode.size / blockSizeBytes) &&
      !(this.buffers.get(inode.ino)?.has(block) ?? false);
    if (!plain) return this.preloadEdges(inode, map, size, size);
    // A hole or an unwritten block there becomes written zeros, as it always has (the model in fs_ranges.test.ts).
    if (!this.hasWrittenExtentAt(inode, map, block)) return this.preloadEdges(inode, map, size, size);
    const loaded = this.loadBlock(inode, map, block);
    if (!loaded.subarray(tail).some((byte) => byte !== 0)) {
      this.zeroTail = { ino: inode.ino, block };
      return;
    }
    const cover = this.coverage(inode, map, block, block + 1);
    this.addBuffered(inode.ino, block, loaded, cover.mapped(block), cover.inPlace(block));
  }

  read(inode: Inode, map: ItemMap, out: Buffer, length: number, position: number): number {
    if (position >= inode.size || length <= 0) return 0;
    const end = Math.min(inode.size, position + length);
    const count = end - position;
    if (inode.kind === PayloadKind.Bytes) {
      out.fill(0, 0, count);
      if (position < inode.payload.length) inode.payload.copy(out, 0, position, Math.min(end, inode.payload.length));
      return count;
    }
    out.fill(0, 0, count);
    const firstBlock = Math.floor(position / blockSizeBytes);
    const endBlock = Math.ceil(end / blockSizeBytes);
    const last = this.lastRead;
    // The kernel's own read-ahead sends large reads, not always in order: treat those as streaming too.
    const streaming = endBlock - firstBlock >= streamingReadBlocksMin;
    const sequential = streaming || (last.ino === inode.ino && firstBlock >= last.endBlock - 1 && firstBlock <= last.endBlock);
    this.lastRead = { ino: inode.ino, endBlock };
    const buffered = this.buffers.get(inode.ino);
    for (const extent of this.extentsIn(inode, map, firstBlock, endBlock)) {
      // Unwritten blocks read as zeros, whatever the disk holds.
      if (isUnwritten(extent)) continue;
      let from = Math.max(extent.fileBlock, firstBlock);
      const to = Math.min(extent.fileBlock + extent.blocks, endBlock);
      // Only the blocks no buffered block replaces are read (and checked).
      while (from < to) {
        while (from < to && buffered?.has(from)) from++;
        let stop = from;
        while (stop < to && !buffered?.has(stop)) stop++;
        if (stop > from) {
          const data = this.readExtentBlocks(inode.ino, extent, from - extent.fileBlock, stop - from, sequential);
          this.copyBlocks(data, from, stop, out, position, end);
        }
        from = stop;
      }
    }
    if (buffered !== undefined) {
      for (let b = firstBlock; b < endBlock; b++) {
        const block = buffered.get(b);
        if (block !== undefined) this.copyBlocks(block, b, b + 1, out, position, end);
      }
    }
    return count;
  }

  /**
   * Refuses (ENOSPC) a write whose buffered blocks could not be written out.
   * Called before the write changes anything. Blocks that write-out will
   * write in place into preallocated ones need no space; without the map
   * they cannot be told, so a refusal that only they could cause is left
   * to `preloadEdges`, which the caller runs next (before the write).
   */
  admitWrite(inode: Inode, position: number, length: number, map?: ItemMap): void {
    this.deferredAdmission = null;
    const end = position + length;
    if (length === 0 || this.fitsInline(inode, Math.max(inode.size, end))) return;
    const inlineBlock = inode.kind === PayloadKind.Bytes && inode.size > 0 ? 1 : 0;
    const first = Math.floor(position / blockSizeBytes);
    const last = Math.ceil(end / blockSizeBytes);
    if (map !== undefined) {
      this.admit(inode.ino, first, last, inlineBlock, this.inPlaceCredit(inode, map, first, last));
      return;
    }
    try {
      this.admit(inode.ino, first, last, inlineBlock);
    } catch (error) {
      // With blocks freed but not yet committed, the caller commits and asks again: that comes first.
      const extents = inode.kind === PayloadKind.Items || inode.kind === PayloadKind.Tree;
      if (!(error instanceof GroveError) || error.code !== "ENOSPC" || !extents || this.space.usage().pendingBlocks > 0) throw error;
      this.deferredAdmission = { ino: inode.ino, first, end: last, extra: inlineBlock };
    }
  }

  /** Stores `data` at `position` after `admitWrite`; the caller has checked limits and updates times. */
  write(inode: Inode, map: ItemMap, data: Buffer, position: number): void {
    const end = position + data.length;
    if (data.length === 0) return;
    if (this.fitsInline(inode, Math.max(inode.size, end))) {
      const size = Math.max(inode.size, end);
      const payload = Buffer.alloc(size);
      if (inode.kind === PayloadKind.Bytes) inode.payload.copy(payload, 0, 0, Math.min(size, inode.payload.length));
      data.copy(payload, position);
      inode.kind = PayloadKind.Bytes;
      inode.payload = payload;
      inode.size = size;
      return;
    }
    this.leaveInline(inode);
    const firstBlock = Math.floor(position / blockSizeBytes);
    const endBlock = Math.ceil(end / blockSizeBytes);
    const buffered = this.bufferOf(inode.ino);
    const cover = this.coverage(inode, map, firstBlock, endBlock);
    let grewFrom = -1;
    let grewTo = -1;
    for (let b = firstBlock; b < endBlock; b++) {
      const blockStart = b * blockSizeBytes;
      let block = buffered.get(b);
      if (block === undefined) {
        if (grewFrom < 0) grewFrom = b;
        grewTo = b + 1;
        const whole = position <= blockStart && end >= blockStart + blockSizeBytes;
        block = whole ? newBlock() : this.loadBlock(inode, map, b);
        this.addBuffered(inode.ino, b, block, cover.mapped(b), cover.inPlace(b));
      }
      const from = Math.max(position, blockStart);
      const to = Math.min(end, blockStart + blockSizeBytes);
      data.copy(block, from - blockStart, from - position, to - position);
    }
    inode.size = Math.max(inode.size, end);
    this.forgetUnits(inode.ino, firstBlock, endBlock);
    // Only a write that completes a unit starts it (rewrites of a full unit leave it to write-out).
    if (this.compression !== Compression.None && grewFrom >= 0) this.precompressUnits(inode.ino, buffered, grewFrom, grewTo);
  }

  /** Starts compressing, in the background, every unit among file blocks [first, end) whose blocks are all buffered. */
  private precompressUnits(ino: number, buffered: Map<number, Buffer>, first: number, end: number): void {
    const unitBlocks = compressionUnitBlocksMax;
    for (let unit = Math.floor(first / unitBlocks); unit * unitBlocks < end; unit++) {
      const blocks = this.bufferedRun(buffered, unit * unitBlocks, (unit + 1) * unitBlocks);
      if (blocks !== null) this.precompress(ino, unit, blocks);
    }
  }

  /**
   * The last handle of a file was closed: its last unit, if partial and all
   * buffered, is most likely final, so it is compressed in the background
   * too (most files of a source tree are a single partial unit).
   */
  precompressTail(inode: Inode): void {
    if (this.compression === Compression.None) return;
    const buffered = this.buffers.get(inode.ino);
    const endBlock = Math.ceil(inode.size / blockSizeBytes);
    if (buffered === undefined || endBlock % compressionUnitBlocksMax === 0) return;
    const unit = Math.floor(endBlock / compressionUnitBlocksMax);
    if (this.precompressed.get(inode.ino)?.has(unit)) return;
    const blocks = this.bufferedRun(buffered, unit * compressionUnitBlocksMax, endBlock);
    if (blocks !== null) this.precompress(inode.ino, unit, blocks);
  }

  /** The buffered blocks [first, end), or null if any is not buffered. */
  private bufferedRun(buffered: Map<number, Buffer>, first: number, end: number): Buffer[] | null {
    const blocks: Buffer[] = [];
    for (let b = first; b < end; b++) {
      const block = buffered.get(b);
      if (block === undefined) return null;
      blocks.push(block);
    }
    return blocks;
  }

  private precompress(ino: number, unit: number, blocks: Buffer[]): void {
    let units = this.precompressed.get(ino);
    if (units === undefined) {
      units = new Map();
      this.precompressed.set(ino, units);
    }
    const entry: Precompressed = { blocks: blocks.length, done: false, packed: null };
    units.set(unit, entry);
    compressUnitInBackground(blocks, (packed) => {
      if (this.precompressed.get(ino)?.get(unit) !== entry) return;
      if (packed === undefined) {
        this.precompressed.get(ino)!.delete(unit);
        return;
      }
      entry.done = true;
      entry.packed = packed;
    });
  }

  /** Forgets background results for units overlapping file blocks [first, end): their bytes changed. */
  private forgetUnits(ino: number, first: number, end: number): void {
    const units = this.precompressed.get(ino);
    if (units === undefined) return;
    const firstUnit = Math.floor(first / compressionUnitBlocksMax);
    const endUnit = Math.ceil(end / compressionUnitBlocksMax);
    if (endUnit - firstUnit <= units.size) {
      for (let unit = firstUnit; unit < endUnit; unit++) units.delete(unit);
    } else {
      for (const unit of [...units.keys()]) if (unit >= firstUnit && unit < endUnit) units.delete(unit);
    }
    if (units.size === 0) this.precompressed.delete(ino);
  }

  /** Sets the size: drops what lies past a shorter end and zeroes the rest of the last block. */
  truncate(inode: Inode, map: ItemMap, size: number): void {
    if (inode.kind === PayloadKind.Bytes || (inode.kind === PayloadKind.None && !this.buffers.has(inode.ino))) {
      if (this.fitsInline(inode, size)) {
        if (size < inode.payload.length) inode.payload = Buffer.from(inode.payload.subarray(0, size));
        if (inode.kind === PayloadKind.Bytes && size === 0) inode.kind = PayloadKind.None;
        inode.size = size;
        return;
      }
      this.leaveInline(inode);
    }
    if (size < inode.size) {
      const keepBlocks = Math.ceil(size / blockSizeBytes);
      this.forgetUnits(inode.ino, Math.max(0, keepBlocks - 1), Number.MAX_SAFE_INTEGER);
      this.dropBufferedIn(inode.ino, keepBlocks, Number.MAX_SAFE_INTEGER);
      this.punch(inode, map, keepBlocks, Number.MAX_SAFE_INTEGER);
      if (size === 0 && map.count === 0) map.clear();
      const tail = size % blockSizeBytes;
      if (tail !== 0) {
        const last = keepBlocks - 1;
        const block = this.bufferOf(inode.ino).get(last);
        if (block !== undefined) {
          block.fill(0, tail);
        } else if (this.hasWrittenExtentAt(inode, map, last)) {
          // (An unwritten last block reads as zeros already.) A tail already zero is left as it is:
          // rewriting it would unshare a block shared with a snapshot or a reflink for nothing.
          const known = this.zeroTail?.ino === inode.ino && this.zeroTail.block === last;
          const loaded = known ? undefined : this.loadBlock(inode, map, last);
          if (loaded !== undefined && loaded.subarray(tail).some((byte) => byte !== 0)) {
            this.admit(inode.ino, last, last + 1);
            loaded.fill(0, tail);
            this.addBuffered(inode.ino, last, loaded, true, false);
          }
        }
        if (this.buffers.get(inode.ino)?.size === 0) this.dropBuffer(inode.ino);
      }
    }
    this.zeroTail = null;
    inode.size = size;
  }

  /**
   * Allocates and writes the inode's buffered blocks, then records them as
   * extents. Runs of adjacent blocks become extents of up to extentBlocksMax.
   */
  writeOut(inode: Inode, map: ItemMap): void {
    const buffered = this.buffers.get(inode.ino);
    if (buffered === undefined) return;
    const indices = [...buffered.keys()].sort((a, b) => a - b);
    this.readAhead = null;
    this.compressedWindow = null;
    const promised = this.inPlace.get(inode.ino);
    const inPlace = (k: number): boolean => promised?.has(indices[k]!) ?? false;
    let hint = this.hintFor(inode, map, indices[0]!);
    let i = 0;
    while (i < indices.length) {
      let j = i + 1;
      while (j < indices.length && indices[j] === indices[j - 1]! + 1 && inPlace(j) === inPlace(i)) j++;
      // [i, j) is a run of adjacent blocks, all written in place or none.
      if (inPlace(i)) {
        this.writeInPlace(inode, map, buffered, indices, i, j);
        hint = j < indices.length ? this.hintFor(inode, map, indices[j]!) : undefined;
      } else {
        hint = this.writeRun(inode, map, buffered, indices, i, j, hint);
      }
      i = j;
    }
    this.bufferedBlocks -= buffered.size;
    this.dropBuffer(inode.ino);
  }

  /** Writes buffered blocks indices[i, j) (adjacent) to new extents: compressed units where that pays, raw otherwise. */
  private writeRun(
    inode: Inode,
    map: ItemMap,
    buffered: Map<number, Buffer>,
    indices: readonly number[],
    i: number,
    j: number,
    hint: number | undefined,
  ): number | undefined {
    if (this.compression === Compression.None) return this.writeRaw(inode, map, buffered, indices, i, j, hint);
    let rawFrom = i;
    let u = i;
    while (u < j) {
      const unitEnd = Math.min(j, u + compressionUnitBlocksMax - (indices[u]! % compressionUnitBlocksMax));
      const packed = this.packUnit(inode.ino, buffered, indices, u, unitEnd);
      if (packed !== null) {
        hint = this.writeRaw(inode, map, buffered, indices, rawFrom, u, hint);
        const got = this.space.allocateExtent(packed.diskBlocks, hint);
        if (got.length === packed.diskBlocks) {
          this.writeCompressed(inode, map, indices[u]!, unitEnd - u, got.start, packed);
          hint = got.start + got.length;
          rawFrom = unitEnd;
        } else {
          // A fragmented volume has no room for it in one piece: store the unit raw, starting in what was found.
          hint = this.writeRaw(inode, map, buffered, indices, u, unitEnd, hint, got);
          rawFrom = unitEnd;
        }
      }
      u = unitEnd;
    }
    return this.writeRaw(inode, map, buffered, indices, rawFrom, j, hint);
  }

  /**
   * Writes buffered blocks indices[from, to) (adjacent, all promised in
   * place) into their preallocated blocks, record by record.
   */
  private writeInPlace(inode: Inode, map: ItemMap, buffered: Map<number, Buffer>, indices: readonly number[], from: number, to: number): void {
    let k = from;
    while (k < to) {
      const b = indices[k]!;
      const extent = this.extentAt(inode, map, b);
      const stop = extent === undefined ? b + 1 : Math.min(extent.fileBlock + extent.blocks, indices[to - 1]! + 1);
      const m = k + (stop - b);
      if (extent !== undefined && isUnwritten(extent) && this.inPlaceAllowed(inode, map, extent)) {
        this.writeIntoUnwritten(inode, map, buffered, indices, k, m, extent);
      } else {
        // The promise was made under the same rule, so this is not expected; copying on write is always correct.
        this.inPlaceFallbacks += m - k;
        this.writeRun(inode, map, buffered, indices, k, m, this.hintFor(inode, map, b));
      }
      k = m;
    }
  }

  /**
   * Writes buffered blocks indices[from, to) into the blocks of unwritten
   * record `extent` that lie under them, and records them as written: the
   * record is cut in up to three, each a reference to the same physical
   * extent. The committed record still says unwritten until the commit.
   */
  private writeIntoUnwritten(
    inode: Inode,
    map: ItemMap,
    buffered: Map<number, Buffer>,
    indices: readonly number[],
    from: number,
    to: number,
    extent: Extent,
  ): void {
    const first = indices[from]!;
    const count = to - from;
    const skip = first - extent.fileBlock;
    const after = extent.blocks - skip - count;
    assert(skip >= 0, "blocks written in place start inside their unwritten record");
    assert(after >= 0, "blocks written in place end inside their unwritten record");
    const blocks: Buffer[] = [];
    const crcs = Buffer.allocUnsafe(4 * count);
    for (let k = 0; k < count; k++) {
      const block = buffered.get(indices[from + k]!)!;
      blocks.push(block);
      crcs.writeUInt32LE(crc32c(block), 4 * k);
    }
    this.writeBlocks(extent.lba + skip, blocks);
    try {
      if (skip > 0) map.put(extentKey(extent.fileBlock), encodeExtent(sliceExtent(extent, 0, skip)));
      if (after > 0) map.put(extentKey(first + count), encodeExtent(sliceExtent(extent, skip + count, after)));
      map.put(extentKey(first), encodeExtent(writtenSlice(extent, skip, count, crcs)));
      // One record became (skip > 0) + (after > 0) + 1: each new one is a reference to the physical extent.
      for (let p = Number(skip > 0) + Number(after > 0); p > 0; p--) this.store.sharing.addRef(extent.extentLba, extent.extentBlocks);
    } catch (error) {
      // Admission left room for this; failing halfway would leave references uncounted.
      this.store.poison(error);
    }
    this.blocksWrittenInPlace += count;
  }

  /** Buffered blocks indices[from, to) (one unit) compressed: the background result if it is ready, else now. */
  private packUnit(ino: number, buffered: Map<number, Buffer>, indices: readonly number[], from: number, to: number): PackedUnit | null {
    if (indices[from]! % compressionUnitBlocksMax === 0) {
      const ready = this.precompressed.get(ino)?.get(indices[from]! / compressionUnitBlocksMax);
      if (ready?.done && ready.blocks === to - from) {
        this.unitsCompressedInBackground++;
        return ready.packed;
      }
    }
    const blocks: Buffer[] = [];
    for (let k = from; k < to; k++) blocks.push(buffered.get(indices[k]!)!);
    return compressUnit(blocks);
  }

  /**
   * Writes buffered file blocks indices[from, to) (adjacent) as uncompressed
   * extents of up to extentBlocksMax, the first one into `first` if given.
   * Returns the hint for what follows.
   */
  private writeRaw(
    inode: Inode,
    map: ItemMap,
    buffered: Map<number, Buffer>,
    indices: readonly number[],
    from: number,
    to: number,
    hint: number | undefined,
    first?: { start: number; length: number },
  ): number | undefined {
    let i = from;
    while (i < to) {
      const want = Math.min(to - i, extentBlocksMax);
      const got = first ?? this.space.allocateExtent(want, hint);
      first = undefined;
      const blocks: Buffer[] = [];
      const crcs = Buffer.allocUnsafe(4 * got.length);
      for (let k = 0; k < got.length; k++) {
        const block = buffered.get(indices[i + k]!)!;
        blocks.push(block);
        crcs.writeUInt32LE(crc32c(block), 4 * k);
      }
      this.writeBlocks(got.start, blocks);
      const fileBlock = indices[i]!;
      this.record(inode, map, {
        fileBlock,
        extentLba: got.start,
        extentBlocks: got.length,
        offset: 0,
        lba: got.start,
        blocks: got.length,
        diskBlocks: got.length,
        compression: Compression.None,
        unitBlocks: got.length,
        compressedBytes: 0,
        crcs,
      });
      hint = got.start + got.length;
      i += got.length;
    }
    return hint;
  }

  /**
   * Writes one compressed unit into the extent at `lba`, recorded for
   * `blocks` file blocks from `fileBlock`: the whole unit, or (a received
   * extent, `slice`) the part of a unit of `slice.unitBlocks` blocks that
   * starts `slice.offset` blocks in.
   */
  private writeCompressed(
    inode: Inode,
    map: ItemMap,
    fileBlock: number,
    blocks: number,
    lba: number,
    packed: { data: Buffer; diskBlocks: number; compressedBytes: number },
    slice: { offset: number; unitBlocks: number } = { offset: 0, unitBlocks: blocks },
  ): void {
    const disk: Buffer[] = [];
    const crcs = Buffer.allocUnsafe(4 * packed.diskBlocks);
    for (let k = 0; k < packed.diskBlocks; k++) {
      const block = packed.data.subarray(k * blockSizeBytes, (k + 1) * blockSizeBytes);
      disk.push(block);
      crcs.writeUInt32LE(crc32c(block), 4 * k);
    }
    if (!this.store.hasFeature(featureCompressLz4)) this.store.enableFeature(featureCompressLz4);
    this.writeBlocks(lba, disk);
    this.record(inode, map, {
      fileBlock,
      extentLba: lba,
      extentBlocks: packed.diskBlocks,
      offset: slice.offset,
      lba,
      blocks,
      diskBlocks: packed.diskBlocks,
      compression: Compression.Lz4,
      unitBlocks: slice.unitBlocks,
      compressedBytes: packed.compressedBytes,
      crcs,
    });
    this.store.countCompressed(1, packed.diskBlocks, slice.unitBlocks);
  }

  /**
   * An lz4 record's physical extent as it is on disk (a send): its
   * compressed bytes, every disk block checked against its crc first, and
   * the crcs it is stored with; the slice is the record's.
   */
  readStored(ino: number, extent: Extent): StoredExtent {
    assert(extent.compression === Compression.Lz4 && !isUnwritten(extent), "a stored read of a compressed extent");
    const disk = this.readVerified(ino, extent, 0, extent.extentBlocks);
    return {
      unitBlocks: extent.unitBlocks,
      offset: extent.offset,
      blocks: extent.blocks,
      data: Buffer.from(disk.subarray(0, extent.compressedBytes)),
      crcs: Buffer.from(extent.crcs.subarray(0, 4 * extent.diskBlocks)),
    };
  }

  /**
   * Refuses (ENOSPC) an `insertStored` of `stored` over a range holding
   * `dropped` extents unless it fits: its disk blocks (or its slice raw,
   * should no free run hold them in one piece), its record, a block for an
   * inline file's bytes, and the paths.
   */
  admitStored(inode: Inode, stored: StoredExtent, dropped: number): void {
    const inlineBlock = inode.kind === PayloadKind.Bytes && inode.size > 0 ? 1 : 0;
    const blocks = Math.max(stored.crcs.length / 4, stored.blocks);
    const metadata = 2 * (1 + dropped) + writeOutPathBlocks;
    this.space.reserve(this.promisedBlocks() + inlineBlock + blocks + metadata + this.shrinkReserveBlocks(), "grow", dropped);
  }

  /**
   * Makes file blocks [fileBlock, fileBlock + stored.blocks) hold `stored`
   * (checked by the caller; `unit` is what it decompresses to) as it was
   * stored: a new lz4 extent of the same compressed bytes and crcs, counted
   * as write-out counts one, the lz4 feature set as write-out sets it. On a
   * volume too fragmented for its disk blocks in one piece, the slice is
   * written raw instead, as write-out would. What the range held is dropped
   * first. Admitted by `admitStored`.
   */
  insertStored(inode: Inode, map: ItemMap, fileBlock: number, stored: StoredExtent, unit: Buffer): void {
    this.leaveInline(inode);
    const end = fileBlock + stored.blocks;
    this.punchBlocks(inode, map, fileBlock, end);
    this.readAhead = null;
    this.compressedWindow = null;
    const diskBlocks = stored.crcs.length / 4;
    const hint = this.hintFor(inode, map, fileBlock);
    let got = this.space.allocateExtent(diskBlocks, hint);
    if (got.length === diskBlocks) {
      const data = Buffer.alloc(diskBlocks * blockSizeBytes);
      stored.data.copy(data);
      this.writeCompressed(inode, map, fileBlock, stored.blocks, got.start, { data, diskBlocks, compressedBytes: stored.data.length }, stored);
      return;
    }
    if (got.length > stored.blocks) {
      this.space.free(got.start + stored.blocks, got.length - stored.blocks);
      got = { start: got.start, length: stored.blocks };
    }
    const buffered = new Map<number, Buffer>();
    const indices: number[] = [];
    for (let k = 0; k < stored.blocks; k++) {
      const from = (stored.offset + k) * blockSizeBytes;
      buffered.set(fileBlock + k, unit.subarray(from, from + blockSizeBytes));
      indices.push(fileBlock + k);
    }
    this.writeRaw(inode, map, buffered, indices, 0, indices.length, hint, got);
  }

  private writeBlocks(lba: number, blocks: Buffer[]): void {
    try {
      this.store.writeData(lba, blocks);
    } catch (error) {
      this.store.poison(error);
    }
  }

  /** Records a written extent in place of what the file had there. */
  private record(inode: Inode, map: ItemMap, extent: Extent): void {
    try {
      this.punch(inode, map, extent.fileBlock, extent.fileBlock + extent.blocks);
      map.put(extentKey(extent.fileBlock), encodeExtent(extent));
    } catch (error) {
      // Admission leaves room for this; failing halfway would leave blocks referenced by nothing.
      this.store.poison(error);
    }
    inode.blocks += extent.blocks;
  }

  /**
   * Block ranges that freeing file blocks from `fromBlock` on will hand back,
   * for admission. It reads every such extent (and, from block 0, the whole
   * extent tree), so a corrupt one refuses the operation before it changes anything.
   */
  freedRanges(inode: Inode, map: ItemMap, fromBlock: number): number {
    if (inode.kind === PayloadKind.Bytes) return 0;
    if (fromBlock === 0 && map.isTree) return map.treeRanges();
    let ranges = 0;
    for (const _ of this.extentsIn(inode, map, fromBlock, Number.MAX_SAFE_INTEGER)) ranges++;
    return ranges;
  }

  /** Blocks that buffered data will take when written out, records included. */
  promisedBlocks(): number {
    // Data (but what goes in place), two records an extent, and per inode the paths its write-out may copy (more when a snapshot shares them).
    const records = 2 * Math.ceil(this.bufferedBlocks / this.extentBlocksMin()) + writeOutPathBlocks * this.buffers.size;
    return this.bufferedBlocks - this.inPlaceBlocks + records;
  }

  /**
   * Releases every data extent and buffer of an inode that is going away.
   * Inline extents are released one by one; an extent tree is released whole
   * (with the extents its unshared leaves hold), without copying a leaf that
   * is about to go.
   */
  discard(inode: Inode, map: ItemMap): void {
    const buffered = this.buffers.get(inode.ino);
    if (buffered !== undefined) {
      this.bufferedBlocks -= buffered.size;
      this.dropBuffer(inode.ino);
    }
    if (inode.kind === PayloadKind.Bytes) return;
    this.readAhead = null;
    map.pin();
    if (!map.isTree) for (const extent of [...this.extents(inode, map)]) this.releaseExtent(extent);
    inode.blocks = 0;
    map.clear();
  }

  /** Every extent of a file, for the checker and for tests. */
  *extents(inode: Inode, map: ItemMap): Generator<Extent> {
    if (inode.kind === PayloadKind.Bytes) return;
    for (const item of map.range()) yield decodeExtent(inode.ino, item.key, item.value);
  }

  // ---- ranges: fallocate, SEEK_DATA/SEEK_HOLE, sharing ----------------------------

  /** Checks a fallocate(2) call's mode and range (EINVAL, EOPNOTSUPP): see ranges.ts. */
  fallocateRequest(mode: number, offset: number, length: number): FallocateRequest {
    return fallocateRequest(mode, offset, length);
  }

  /**
   * Plans fallocate `request` on a regular file: the byte ranges rewritten
   * with zeros (partial blocks that hold data), the whole blocks
   * deallocated, the holes preallocated. Refuses (ENOSPC) unless the
   * preallocation and the zeroing fit, then buffers the zeroed blocks' bytes
   * (so that a read error refuses it too): after this, `fallocate` cannot
   * fail. Changes nothing else.
   */
  planFallocate(inode: Inode, map: ItemMap, request: FallocateRequest): FallocatePlan {
    const { op, start, end } = request;
    const inline = inode.kind === PayloadKind.Bytes;
    if (op === "punch" && inline) {
      // Inline bytes are zeroed in the record: nothing is allocated or freed.
      const to = Math.min(end, inode.size);
      return { request, zeroes: start < to ? [[start, to]] : [], drop: null, punch: [], prealloc: [], puts: 2, freedRanges: 0 };
    }
    // Allocating or zeroing moves inline bytes into a buffered block 0 first.
    const inlineData = inline && inode.size > 0;
    const buffered = this.buffers.get(inode.ino);
    const hasData = (b: number): boolean =>
      (buffered?.has(b) ?? false) || (inlineData && b === 0) || (!inline && this.hasWrittenExtentAt(inode, map, b));
    const first = Math.floor(start / blockSizeBytes);
    const last = Math.ceil(end / blockSizeBytes);
    const wholeFirst = Math.ceil(start / blockSizeBytes);
    const wholeEnd = Math.floor(end / blockSizeBytes);
    const zeroes: BlockRange[] = [];
    let drop: BlockRange | null = null;
    let punch: BlockRange[] = [];
    let prealloc: BlockRange[] = [];
    if (op === "allocate") {
      prealloc = this.holesIn(inode, map, first, last, inlineData);
    } else {
      for (const b of new Set([first, last - 1])) {
        if ((b >= wholeFirst && b < wholeEnd) || !hasData(b)) continue;
        const from = Math.max(start, b * blockSizeBytes);
        const to = Math.min(end, (b + 1) * blockSizeBytes, inode.size);
        if (from < to) zeroes.push([from, to]);
      }
      if (wholeFirst < wholeEnd) drop = [wholeFirst, wholeEnd];
      // Zeroing keeps unwritten extents (zeros already, and allocated) and preallocates the rest, edge blocks holding data aside.
      const unwritten: BlockRange[] = [];
      if (op === "zero" && drop !== null && !inline) {
        for (const extent of this.extentsIn(inode, map, wholeFirst, wholeEnd)) {
          if (isUnwritten(extent)) unwritten.push([Math.max(wholeFirst, extent.fileBlock), Math.min(wholeEnd, extent.fileBlock + extent.blocks)]);
        }
      }
      if (drop !== null) punch = holeRuns(unwritten, [], wholeFirst, wholeEnd);
      if (op === "zero") {
        const kept = (b: number): boolean => (b < wholeFirst || b >= wholeEnd) && (hasData(b) || (!inline && this.extentAt(inode, map, b) !== undefined));
        prealloc = holeRuns(unwritten, [first, last - 1].filter(kept), first, last);
      }
    }
    const holes = prealloc.reduce((sum, [from, to]) => sum + to - from, 0);
    const records = prealloc.length + Math.ceil(holes / extentBlocksMax);
    const zeroed = new Set(zeroes.map(([from]) => Math.floor(from / blockSizeBytes)));
    let fresh = inlineData ? 1 : 0;
    for (const b of zeroed) if (!(buffered?.has(b) ?? false) && !(inlineData && b === 0)) fresh++;
    if (fresh + holes > 0) {
      this.space.reserve(this.promisedBlocks() + fresh + holes + this.store.nodeCopies * (2 * records + writeOutPathBlocks) + this.shrinkReserveBlocks(), "grow");
    }
    for (const [from, to] of zeroes) this.preloadEdges(inode, map, from, to);
    let freedRanges = 0;
    for (const [from, to] of punch) freedRanges += this.extentCount(inode, map, from, to);
    return { request, zeroes, drop, punch, prealloc, puts: records + zeroes.length + 4 * punch.length + 2, freedRanges };
  }

  /** Carries out a plan from `planFallocate`, inside the caller's admitted mutation; the caller sets the times. */
  fallocate(inode: Inode, map: ItemMap, plan: FallocatePlan): void {
    const request = plan.request;
    if (request.op !== "punch") this.leaveInline(inode);
    if (plan.drop !== null) {
      this.forgetUnits(inode.ino, plan.drop[0], plan.drop[1]);
      this.dropBufferedIn(inode.ino, plan.drop[0], plan.drop[1]);
    }
    for (const [from, to] of plan.punch) this.punch(inode, map, from, to);
    for (const [from, to] of plan.zeroes) this.write(inode, map, Buffer.alloc(to - from), from);
    if (plan.prealloc.length > 0) this.preallocate(inode, map, plan.prealloc);
    if (!request.keepSize && request.end > inode.size) inode.size = request.end;
  }

  /** SEEK_DATA / SEEK_HOLE at `offset` (0 ≤ offset < size): the offset found, or undefined for no data after it (ENXIO). */
  seek(inode: Inode, map: ItemMap, offset: number, whence: SeekWhence): number | undefined {
    if (inode.kind === PayloadKind.Bytes) return whence === "data" ? offset : inode.size;
    const first = Math.floor(offset / blockSizeBytes);
    // Unwritten extents are holes (as ext4 reports them); blocks buffered over them are data.
    return seekIn(this.writtenRanges(inode, map, first), this.bufferedIndices(inode.ino), inode.size, offset, whence);
  }

  /**
   * The written extents of file blocks [first, end), each cut to the range:
   * what copy_file_range shares (unwritten ones read as zeros, so they are
   * left as holes). An inline file has none: its bytes are copied.
   */
  sharedSlices(inode: Inode, map: ItemMap, first: number, end: number): Extent[] {
    const slices: Extent[] = [];
    for (const extent of this.extentsIn(inode, map, first, end)) {
      if (isUnwritten(extent)) continue;
      const from = Math.max(first, extent.fileBlock);
      const to = Math.min(end, extent.fileBlock + extent.blocks);
      slices.push(sliceExtent(extent, from - extent.fileBlock, to - from));
    }
    return slices;
  }

  /** Where a step over file blocks [first, end) stops so that it meets at most `records` extents (never before first + 1). */
  stepEnd(inode: Inode, map: ItemMap, first: number, end: number, records: number): number {
    let seen = 0;
    for (const extent of this.extentsIn(inode, map, first, end)) {
      if (++seen > records) return Math.max(first + 1, extent.fileBlock);
    }
    return end;
  }

  /** Extents overlapping file blocks [first, end) (each a range the commit may record freed). */
  extentCount(inode: Inode, map: ItemMap, first: number, end: number): number {
    let count = 0;
    for (const _ of this.extentsIn(inode, map, first, end)) count++;
    return count;
  }

  /**
   * Refuses (ENOSPC) a `share` of `records` slices into `inode` over a range
   * holding `dropped` extents, unless its records, and a block for an inline
   * file's bytes (`share` moves them out of the record), fit.
   */
  admitShare(inode: Inode, records: number, dropped: number): void {
    const inlineBlock = inode.kind === PayloadKind.Bytes && inode.size > 0 ? 1 : 0;
    // A record and a split each, about a leaf's worth of refcounts, and the paths to them.
    const metadata = this.store.nodeCopies * (2 * (records + dropped) + writeOutPathBlocks);
    this.space.reserve(this.promisedBlocks() + inlineBlock + metadata + this.shrinkReserveBlocks(), "grow", dropped);
  }

  /**
   * Makes file blocks [first, end) of this file hold `slices` (written
   * extents of this or another file, from `sharedSlices`) moved `shift`
   * blocks on, each one more reference to its physical extent: no data is
   * read or written. What the range held is dropped first.
   */
  share(inode: Inode, map: ItemMap, first: number, end: number, slices: readonly Extent[], shift: number): void {
    this.leaveInline(inode);
    this.punchBlocks(inode, map, first, end);
    for (const slice of slices) {
      const record: Extent = { ...slice, fileBlock: slice.fileBlock + shift };
      assert(record.fileBlock >= first && record.fileBlock + record.blocks <= end, "shared slices lie inside the range");
      try {
        map.put(extentKey(record.fileBlock), encodeExtent(record));
        this.store.sharing.addRef(slice.extentLba, slice.extentBlocks);
      } catch (error) {
        // Admitted whole by the caller: failing halfway would leave a reference uncounted.
        this.store.poison(error);
      }
      inode.blocks += record.blocks;
    }
  }

  /** Drops file blocks [first, end): their buffered blocks and extents. */
  private punchBlocks(inode: Inode, map: ItemMap, first: number, end: number): void {
    this.forgetUnits(inode.ino, first, end);
    this.dropBufferedIn(inode.ino, first, end);
    this.punch(inode, map, first, end);
  }

  /** The runs of [first, end) that are holes: no extent, no buffered block (nor the inline bytes, which become block 0). */
  private holesIn(inode: Inode, map: ItemMap, first: number, end: number, inlineData: boolean): BlockRange[] {
    const mapped: BlockRange[] = [];
    if (inode.kind !== PayloadKind.Bytes) {
      for (const extent of this.extentsIn(inode, map, first, end)) mapped.push([extent.fileBlock, extent.fileBlock + extent.blocks]);
    }
    const buffered = this.bufferedIndices(inode.ino);
    return holeRuns(mapped, inlineData && buffered[0] !== 0 ? [0, ...buffered] : buffered, first, end);
  }

  /** Records unwritten extents over `runs` (holes), allocated now: admitted by `planFallocate`. */
  private preallocate(inode: Inode, map: ItemMap, runs: readonly BlockRange[]): void {
    this.readAhead = null;
    // In the transaction that writes the first unwritten record: older code must refuse the image, not misread it.
    if (!this.store.hasFeature(featurePreallocated)) this.store.enableFeature(featurePreallocated);
    const generation = this.store.generation;
    let hint = this.hintFor(inode, map, runs[0]![0]);
    for (const [from, to] of runs) {
      let at = from;
      while (at < to) {
        const got = this.space.allocateExtent(Math.min(to - at, extentBlocksMax), hint);
        try {
          map.put(extentKey(at), encodeExtent(unwrittenExtent(at, got.start, got.length, generation)));
        } catch (error) {
          this.store.poison(error);
        }
        inode.blocks += got.length;
        hint = got.start + got.length;
        at += got.length;
      }
    }
  }

  private *writtenRanges(inode: Inode, map: ItemMap, first: number): Generator<BlockRange> {
    for (const extent of this.extentsIn(inode, map, first, Number.MAX_SAFE_INTEGER)) {
      if (!isUnwritten(extent)) yield [extent.fileBlock, extent.fileBlock + extent.blocks];
    }
  }

  /** The inode's buffered block indices, ascending. */
  private bufferedIndices(ino: number): number[] {
    const buffered = this.buffers.get(ino);
    return buffered === undefined ? [] : [...buffered.keys()].sort((a, b) => a - b);
  }

  // ---- internals ------------------------------------------------------------

  /** The fewest blocks a full extent of write-out holds: a compressed unit, or an uncompressed extent. */
  private extentBlocksMin(): number {
    return this.compression === Compression.None ? extentBlocksMax : compressionUnitBlocksMax;
  }

  private fitsInline(inode: Inode, size: number): boolean {
    if (size > inodeInlineBytesMax || this.buffers.has(inode.ino)) return false;
    return inode.kind === PayloadKind.Bytes || (inode.kind === PayloadKind.None && inode.size <= inodeInlineBytesMax);
  }

  /** Moves inline bytes into a buffered first block, so the file can grow into extents. */
  private leaveInline(inode: Inode): void {
    if (inode.kind !== PayloadKind.Bytes) return;
    const block = Buffer.alloc(blockSizeBytes);
    inode.payload.copy(block, 0, 0, Math.min(inode.payload.length, blockSizeBytes));
    inode.kind = PayloadKind.None;
    inode.payload = Buffer.alloc(0);
    if (inode.size > 0) this.addBuffered(inode.ino, 0, block, false, false);
  }

  /**
   * Refuses (ENOSPC) buffering that could not be written out. `inPlace` of
   * the blocks not yet buffered will be written into preallocated blocks.
   */
  admit(ino: number, firstBlock: number, endBlock: number, extra = 0, inPlace = 0): void {
    const buffered = this.buffers.get(ino);
    let fresh = extra;
    for (let b = firstBlock; b < endBlock; b++) if (buffered === undefined || !buffered.has(b)) fresh++;
    if (fresh === 0) return;
    // Each extent of the write-out may need a record and a split of an old one.
    const extents = Math.ceil((this.bufferedBlocks + fresh) / this.extentBlocksMin()) + this.buffers.size;
    const data = this.bufferedBlocks - this.inPlaceBlocks + fresh - inPlace;
    this.space.reserve(data + this.store.nodeCopies * 2 * extents + this.shrinkReserveBlocks(), "grow");
  }

  /** A block is buffered: `mapped` if an extent (written or not) lies under it, `inPlace` if write-out will write it into one. */
  private addBuffered(ino: number, fileBlock: number, block: Buffer, mapped: boolean, inPlace: boolean): void {
    this.bufferOf(ino).set(fileBlock, block);
    this.bufferedBlocks++;
    if (!mapped) this.holesOf(ino).add(fileBlock);
    if (!inPlace) return;
    let promised = this.inPlace.get(ino);
    if (promised === undefined) {
      promised = new Set();
      this.inPlace.set(ino, promised);
    }
    promised.add(fileBlock);
    this.inPlaceBlocks++;
  }

  /** Forgets the buffered blocks of file blocks [first, end). */
  private dropBufferedIn(ino: number, first: number, end: number): void {
    const buffered = this.buffers.get(ino);
    if (buffered === undefined) return;
    const holes = this.holes.get(ino);
    const promised = this.inPlace.get(ino);
    for (const b of [...buffered.keys()]) {
      if (b < first || b >= end) continue;
      buffered.delete(b);
      holes?.delete(b);
      if (promised?.delete(b) === true) this.inPlaceBlocks--;
      this.bufferedBlocks--;
    }
    if (buffered.size === 0) this.dropBuffer(ino);
  }

  private holesOf(ino: number): Set<number> {
    let holes = this.holes.get(ino);
    if (holes === undefined) {
      holes = new Set();
      this.holes.set(ino, holes);
    }
    return holes;
  }

  private dropBuffer(ino: number): void {
    this.buffers.delete(ino);
    this.holes.delete(ino);
    this.precompressed.delete(ino);
    const promised = this.inPlace.get(ino);
    if (promised !== undefined) {
      this.inPlaceBlocks -= promised.size;
      this.inPlace.delete(ino);
    }
  }

  /**
   * For each file block in [first, end), from one scan of the map: whether it
   * lies in an extent, and whether write-out may write it in place.
   */
  private coverage(inode: Inode, map: ItemMap, first: number, end: number): { mapped: (block: number) => boolean; inPlace: (block: number) => boolean } {
    const ranges: Array<[number, number, boolean]> = [];
    for (const extent of [...this.extentsIn(inode, map, first, end)]) {
      ranges.push([extent.fileBlock, extent.fileBlock + extent.blocks, this.inPlaceAllowed(inode, map, extent)]);
    }
    const find = (block: number): [number, number, boolean] | undefined => ranges.find(([lo, hi]) => block >= lo && block < hi);
    return { mapped: (block) => find(block) !== undefined, inPlace: (block) => find(block)?.[2] ?? false };
  }

  /** Blocks of [first, end) not yet buffered that write-out may write in place: a write there needs no space for them. */
  private inPlaceCredit(inode: Inode, map: ItemMap, first: number, end: number): number {
    const buffered = this.buffers.get(inode.ino);
    let credit = 0;
    for (const extent of [...this.extentsIn(inode, map, first, end)]) {
      if (!this.inPlaceAllowed(inode, map, extent)) continue;
      const to = Math.min(end, extent.fileBlock + extent.blocks);
      for (let b = Math.max(first, extent.fileBlock); b < to; b++) if (buffered === undefined || !buffered.has(b)) credit++;
    }
    return credit;
  }

  /**
   * Whether write-out may write the blocks of `extent`, an unwritten record,
   * in place. Nothing else may reference them, so:
   * - no snapshot or clone has been made since the extent was preallocated:
   *   then no other subvolume's record names it, and no node holding one of
   *   its records is shared (so the refcount counts every record); and
   * - every reference to the physical extent is a record of this file within
   *   the extent's span (its slices), none covering the same blocks as this
   *   one. A copy of its written part made by copy_file_range elsewhere
   *   counts as a reference that is not here, so the blocks are copied on
   *   write from then on.
   * The rule reads the same state at admission, when the block is buffered,
   * and at write-out, so a promise made is a promise kept.
   */
  private inPlaceAllowed(inode: Inode, map: ItemMap, extent: Extent): boolean {
    if (extent.preallocatedIn === undefined || extent.preallocatedIn <= this.newestSubvolumeGeneration()) return false;
    const base = Math.max(0, extent.fileBlock - extent.offset);
    let records = 0;
    for (const other of this.extentsIn(inode, map, base, base + extent.extentBlocks)) {
      if (other.extentLba !== extent.extentLba) continue;
      records++;
      const overlaps = other.offset < extent.offset + extent.blocks && extent.offset < other.offset + other.blocks;
      if (other.fileBlock !== extent.fileBlock && overlaps) return false;
    }
    return this.store.sharing.refCount(extent.extentLba) === records;
  }

  /**
   * The transaction of the newest snapshot or clone on the volume (live or
   * being deleted), read once a transaction. It is volume-wide because a
   * FileData does not know which subvolume it serves: a snapshot of any
   * subvolume makes older preallocations copy on write.
   */
  private newestSubvolumeGeneration(): number {
    if (this.newestSubvolume.at !== this.store.generation) {
      this.subvolumes ??= new Subvolumes(this.store);
      let generation = 0;
      for (const record of [...this.subvolumes.list(), ...this.subvolumes.deleting()]) generation = Math.max(generation, record.generation);
      this.newestSubvolume = { at: this.store.generation, generation };
    }
    return this.newestSubvolume.generation;
  }

  private bufferOf(ino: number): Map<number, Buffer> {
    let buffered = this.buffers.get(ino);
    if (buffered === undefined) {
      buffered = new Map();
      this.buffers.set(ino, buffered);
    }
    return buffered;
  }

  /** The current bytes of one block, from its extent or zeros for a hole. */
  private loadBlock(inode: Inode, map: ItemMap, fileBlock: number): Buffer {
    const block = newBlock().fill(0);
    if (inode.kind === PayloadKind.Bytes) {
      if (fileBlock === 0) inode.payload.copy(block);
      return block;
    }
    for (const extent of this.extentsIn(inode, map, fileBlock, fileBlock + 1)) {
      if (!isUnwritten(extent)) this.readExtentBlocks(inode.ino, extent, fileBlock - extent.fileBlock, 1).copy(block);
    }
    return block;
  }

  private hasWrittenExtentAt(inode: Inode, map: ItemMap, fileBlock: number): boolean {
    const extent = this.extentAt(inode, map, fileBlock);
    return extent !== undefined && !isUnwritten(extent);
  }

  /** The extent holding file block `fileBlock`, if any. */
  private extentAt(inode: Inode, map: ItemMap, fileBlock: number): Extent | undefined {
    for (const extent of this.extentsIn(inode, map, fileBlock, fileBlock + 1)) return extent;
    return undefined;
  }

  /** Extents overlapping file blocks [first, end), ascending. */
  private *extentsIn(inode: Inode, map: ItemMap, first: number, end: number): Generator<Extent> {
    if (inode.kind === PayloadKind.Bytes) return;
    const before = map.floor(extentKey(first));
    let from = extentKey(first);
    if (before !== undefined) {
      const extent = decodeExtent(inode.ino, before.key, before.value);
      if (extent.fileBlock + extent.blocks > first) {
        yield extent;
        from = extentKey(extent.fileBlock + 1);
      }
    }
    for (const item of map.range(from, extentKey(end))) yield decodeExtent(inode.ino, item.key, item.value);
  }

  /** Reads `count` blocks of an extent starting `skip` blocks in, checking each block's crc32c. */
  private readExtentBlocks(ino: number, extent: Extent, skip: number, count: number, sequential = false): Buffer {
    if (extent.compression !== Compression.None) {
      const unit = this.readUnit(ino, extent, sequential);
      if (sequential) this.prefetchAfter(extent.extentLba + extent.extentBlocks);
      const first = extent.offset + skip;
      return unit.subarray(first * blockSizeBytes, (first + count) * blockSizeBytes);
    }
    const lba = extent.lba + skip;
    const ahead = this.readAhead;
    if (ahead !== null && lba >= ahead.lba && lba + count <= ahead.lba + ahead.blocks) {
      return ahead.data.subarray((lba - ahead.lba) * blockSizeBytes, (lba - ahead.lba + count) * blockSizeBytes);
    }
    const blocks = sequential ? extent.diskBlocks - skip : count;
    // The read-ahead buffer is reused: at most one extent's worth, replaced on every fill.
    if (sequential) this.readAhead = null;
    let data: Buffer;
    try {
      data = this.readVerified(ino, extent, skip, blocks, sequential ? this.readAheadBuffer : undefined);
    } catch (error) {
      // A bad block past what was asked for must not fail this read: it fails when it is read itself.
      if (!(error instanceof CorruptionError) || blocks === count) throw error;
      return this.readVerified(ino, extent, skip, count);
    }
    if (sequential && blocks > count) this.readAhead = { lba, blocks, data };
    if (sequential) this.prefetchAfter(lba + blocks);
    return data.subarray(0, count * blockSizeBytes);
  }

  /**
   * Data is laid out in file order, so what follows on disk is what a
   * streaming reader wants next: keep the device reading up to a window
   * ahead of `lba`, one chunk at a time.
   */
  private prefetchAfter(lba: number): void {
    const device = this.store.device;
    if (device.prefetch === undefined) return;
    if (this.prefetchedEnd < lba || this.prefetchedEnd > lba + prefetchWindowBlocks) this.prefetchedEnd = lba;
    while (this.prefetchedEnd - lba < prefetchWindowBlocks && device.prefetch(this.prefetchedEnd, prefetchChunkBlocks)) {
      this.prefetchedEnd += prefetchChunkBlocks;
    }
  }

  /** The whole decompressed unit of an lz4 extent: every disk block checked, then decompressed (cached). */
  private readUnit(ino: number, extent: Extent, sequential = false): Buffer {
    const cached = this.decompressed.get(extent);
    if (cached !== undefined) return cached;
    const disk = this.fromCompressedWindow(extent, sequential) ?? this.readVerified(ino, extent, 0, extent.extentBlocks);
    const unit = decompressUnit(ino, extent, disk);
    this.decompressed.put(extent, unit);
    return unit;
  }

  /** The extent's disk blocks from the read-ahead window (filled now for a sequential reader), if they pass their crcs. */
  private fromCompressedWindow(extent: Extent, sequential: boolean): Buffer | undefined {
    const inWindow = (w: { lba: number; blocks: number } | null): boolean =>
      w !== null && extent.extentLba >= w.lba && extent.extentLba + extent.extentBlocks <= w.lba + w.blocks;
    if (!inWindow(this.compressedWindow)) {
      if (!sequential) return undefined;
      const blocks = Math.min(extentBlocksMax, this.store.deviceBlocks - extent.extentLba);
      const data = this.compressedWindowBuffer.subarray(0, blocks * blockSizeBytes);
      this.compressedWindow = null;
      try {
        this.store.device.read(extent.extentLba, data);
      } catch {
        return undefined;
      }
      this.compressedWindow = { lba: extent.extentLba, blocks, data };
    }
    const w = this.compressedWindow!;
    const at = (extent.extentLba - w.lba) * blockSizeBytes;
    const disk = w.data.subarray(at, at + extent.extentBlocks * blockSizeBytes);
    for (let k = 0; k < extent.extentBlocks; k++) {
      if (crc32c(disk.subarray(k * blockSizeBytes, (k + 1) * blockSizeBytes)) !== extentCrc(extent, k)) return undefined;
    }
    return disk;
  }

  private readVerified(ino: number, extent: Extent, skip: number, count: number, into?: Buffer): Buffer {
    const data = into !== undefined ? into.subarray(0, count * blockSizeBytes) : Buffer.allocUnsafe(count * blockSizeBytes);
    try {
      this.store.device.read(extent.lba + skip, data);
    } catch (error) {
      throw new IoError("EIO_data_read", `reading inode ${ino}'s data failed: ${(error as Error).message}`, { cause: error });
    }
    for (let k = 0; k < count; k++) {
      const block = data.subarray(k * blockSizeBytes, (k + 1) * blockSizeBytes);
      if (crc32c(block) !== extentCrc(extent, skip + k)) {
        throw new CorruptionError(
          "EIO_data_checksum",
          extent.compression === Compression.None
            ? `inode ${ino}: data block ${extent.lba + skip + k} (file block ${extent.fileBlock + skip + k}) fails its checksum`
            : `inode ${ino}: block ${extent.lba + skip + k} of the compressed extent at file block ${extent.fileBlock - extent.offset} fails its checksum`,
        );
      }
    }
    return data;
  }

  /** Copies file blocks [from, to), held in `data`, into the part of `out` that covers [position, end). */
  private copyBlocks(data: Buffer, from: number, to: number, out: Buffer, position: number, end: number): void {
    const lo = Math.max(from * blockSizeBytes, position);
    const hi = Math.min(to * blockSizeBytes, end);
    if (hi <= lo) return;
    data.copy(out, lo - position, lo - from * blockSizeBytes, hi - from * blockSizeBytes);
  }

  /**
   * Drops file blocks [start, end) from the extents. A record cut in two
   * makes one more reference to its physical extent; a record gone drops one
   * (freeing the extent with the last).
   */
  private punch(inode: Inode, map: ItemMap, start: number, end: number): void {
    if (inode.kind === PayloadKind.Bytes) return;
    const hit = [...this.extentsIn(inode, map, start, end)];
    if (hit.length > 0) this.readAhead = null;
    for (const extent of hit) {
      map.delete(extentKey(extent.fileBlock));
      const extentEnd = extent.fileBlock + extent.blocks;
      let pieces = 0;
      if (extent.fileBlock < start) {
        const keep = start - extent.fileBlock;
        map.put(extentKey(extent.fileBlock), encodeExtent(sliceExtent(extent, 0, keep)));
        pieces++;
      }
      if (extentEnd > end) {
        const skip = end - extent.fileBlock;
        map.put(extentKey(end), encodeExtent(sliceExtent(extent, skip, extent.blocks - skip)));
        pieces++;
      }
      if (pieces === 2) this.store.sharing.addRef(extent.extentLba, extent.extentBlocks);
      else if (pieces === 0) this.releaseExtent(extent);
      const from = Math.max(start, extent.fileBlock);
      const to = Math.min(end, extentEnd);
      inode.blocks -= to - from;
    }
  }

  /** One record of a physical extent is gone: drop its reference, freeing the extent with the last. */
  private releaseExtent(extent: Extent): void {
    const sharing = this.store.sharing;
    if (sharing.refCount(extent.extentLba) >= 2) {
      sharing.dropRef(extent.extentLba);
      return;
    }
    this.space.free(extent.extentLba, extent.extentBlocks);
    if (extent.compression !== Compression.None) this.store.countCompressed(-1, extent.extentBlocks, extent.unitBlocks);
  }

  private hintFor(inode: Inode, map: ItemMap, fileBlock: number): number | undefined {
    if (inode.kind === PayloadKind.Bytes || fileBlock === 0) return undefined;
    const before = map.floor(extentKey(fileBlock - 1));
    if (before === undefined) return undefined;
    const extent = decodeExtent(inode.ino, before.key, before.value);
    if (extent.compression !== Compression.None) return extent.extentLba + extent.extentBlocks;
    return extent.lba + (fileBlock - extent.fileBlock);
  }
}

/** The written record of blocks [skip, skip + blocks) of unwritten record `extent`, now holding data with `crcs`. */
function writtenSlice(extent: Extent, skip: number, blocks: number, crcs: Buffer): Extent {
  return {
    fileBlock: extent.fileBlock + skip,
    extentLba: extent.extentLba,
    extentBlocks: extent.extentBlocks,
    offset: extent.offset + skip,
    lba: extent.lba + skip,
    blocks,
    diskBlocks: blocks,
    compression: Compression.None,
    unitBlocks: extent.extentBlocks,
    compressedBytes: 0,
    crcs,
  };
}
