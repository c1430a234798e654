/**
 * A file's bytes: inline in the inode record while small, otherwise data
 * extents in the file's extent map, with writes buffered per inode and
 * allocated only when they are written out (delayed allocation), so that
 * sequential writes become large contiguous extents.
 *
 * Invariants:
 * - A data block is never overwritten in place: writing out a buffered block
 *   allocates a new block and frees the old one (freed blocks stay pending
 *   until the commit that stops referencing them is durable).
 * - Every data block on disk has a crc32c in its extent record, checked on
 *   every read; a mismatch is EIO, never wrong bytes.
 * - Buffered blocks and extents never lie at or past the end of the file
 *   (truncate drops them), and bytes past the end inside the last block are
 *   zero, so growing a file always reveals zeros.
 * - Buffered data has already been admitted against free space (`reserve`),
 *   so writing it out does not run out of room.
 * - With compression on, write-out cuts runs into units of at most
 *   compressionUnitBlocksMax blocks (aligned to multiples of it in the
 *   file), and stores a unit lz4-compressed only if that saves a block;
 *   runs of units that stay raw are written as ordinary extents. Reading
 *   any block of an lz4 extent checks the crcs of all its disk blocks, then
 *   decompresses the unit (kept in a small cache).
 */
import { CorruptionError, IoError, blockSizeBytes, crc32c, featureCompressLz4 } from "../kvstore/index.js";
import type { FreeSpace } from "../alloc/index.js";
import type { Store } from "../kvstore/index.js";
import {
  compressionUnitBlocksMax,
  decompressedCacheUnits,
  dirtyDataBytesMax,
  extentBlocksMax,
  inodeInlineBytesMax,
} from "./constants.js";
import { Compression, Extent, Inode, PayloadKind, decodeExtent, encodeExtent, extentCrc, extentKey, sliceExtent } from "./format.js";
import { DecompressedCache, PackedUnit, compressUnit, compressUnitInBackground, decompressUnit } from "./compression.js";

/** A full unit of buffered blocks, compressed in the background since a write filled it. */
interface Precompressed {
  /** Blocks from the unit's start: a full unit, or a closed file's last unit. */
  blocks: number;
  done: boolean;
  packed: PackedUnit | null;
}
import type { ItemMap } from "./item_map.js";

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

  constructor(
    private readonly store: Store,
    private readonly space: FreeSpace,
    /** Blocks growth must leave free for deletes (the filesystem's shrink reserve). */
    private readonly shrinkReserveBlocks: () => number,
    /** How data written out from now on is compressed. */
    public compression: Compression = Compression.None,
  ) {}

  get bufferedBytes(): number {
    return this.bufferedBlocks * blockSizeBytes;
  }

  get overBound(): boolean {
    return this.bufferedBytes > dirtyDataBytesMax;
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
    if (inode.kind === PayloadKind.Bytes || this.fitsInline(inode, Math.max(inode.size, end))) return;
    const fileBlocks = Math.ceil(inode.size / blockSizeBytes);
    for (const at of new Set([start, end])) {
      const b = Math.floor(at / blockSizeBytes);
      if (at % blockSizeBytes === 0 || b >= fileBlocks || this.buffers.get(inode.ino)?.has(b)) continue;
      const block = this.loadBlock(inode, map, b);
      this.bufferOf(inode.ino).set(b, block);
      this.bufferedBlocks++;
      if (!this.hasExtentAt(inode, map, b)) this.holesOf(inode.ino).add(b);
    }
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
   * Called before the write changes anything.
   */
  admitWrite(inode: Inode, position: number, length: number): void {
    const end = position + length;
    if (length === 0 || this.fitsInline(inode, Math.max(inode.size, end))) return;
    const inlineBlock = inode.kind === PayloadKind.Bytes && inode.size > 0 ? 1 : 0;
    this.admit(inode.ino, Math.floor(position / blockSizeBytes), Math.ceil(end / blockSizeBytes), inlineBlock);
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
    const mapped = this.mappedBlocks(inode, map, firstBlock, endBlock);
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
        buffered.set(b, block);
        this.bufferedBlocks++;
        if (!mapped(b)) this.holesOf(inode.ino).add(b);
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
      const buffered = this.buffers.get(inode.ino);
      if (buffered !== undefined) {
        const holes = this.holes.get(inode.ino);
        for (const b of [...buffered.keys()]) {
          if (b >= keepBlocks) {
            buffered.delete(b);
            holes?.delete(b);
            this.bufferedBlocks--;
          }
        }
        if (buffered.size === 0) this.dropBuffer(inode.ino);
      }
      this.punch(inode, map, keepBlocks, Number.MAX_SAFE_INTEGER);
      if (size === 0 && map.count === 0) map.clear();
      const tail = size % blockSizeBytes;
      if (tail !== 0) {
        const last = keepBlocks - 1;
        const block = this.bufferOf(inode.ino).get(last);
        if (block !== undefined) {
          block.fill(0, tail);
        } else if (this.hasExtentAt(inode, map, last)) {
          this.admit(inode.ino, last, last + 1);
          const loaded = this.loadBlock(inode, map, last);
          loaded.fill(0, tail);
          this.bufferOf(inode.ino).set(last, loaded);
          this.bufferedBlocks++;
        }
        if (this.buffers.get(inode.ino)?.size === 0) this.dropBuffer(inode.ino);
      }
    }
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
    let hint = this.hintFor(inode, map, indices[0]!);
    let i = 0;
    while (i < indices.length) {
      let j = i + 1;
      while (j < indices.length && indices[j] === indices[j - 1]! + 1) j++;
      // [i, j) is a run of adjacent blocks.
      if (this.compression === Compression.None) {
        hint = this.writeRaw(inode, map, buffered, indices, i, j, hint);
        i = j;
        continue;
      }
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
      hint = this.writeRaw(inode, map, buffered, indices, rawFrom, j, hint);
      i = j;
    }
    this.bufferedBlocks -= buffered.size;
    this.dropBuffer(inode.ino);
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

  /** Writes one compressed unit of `blocks` file blocks from `fileBlock` into the extent at `lba`. */
  private writeCompressed(
    inode: Inode,
    map: ItemMap,
    fileBlock: number,
    blocks: number,
    lba: number,
    packed: { data: Buffer; diskBlocks: number; compressedBytes: number },
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
      offset: 0,
      lba,
      blocks,
      diskBlocks: packed.diskBlocks,
      compression: Compression.Lz4,
      unitBlocks: blocks,
      compressedBytes: packed.compressedBytes,
      crcs,
    });
    this.store.countCompressed(1, packed.diskBlocks, blocks);
  }

  private writeBlocks(lba: number, blocks: Buffer[]): void {
    try {
      this.store.device.writev(lba, blocks);
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
    // Data, two records an extent, and per inode the paths its write-out may copy (more when a snapshot shares them).
    return this.bufferedBlocks + 2 * Math.ceil(this.bufferedBlocks / this.extentBlocksMin()) + writeOutPathBlocks * this.buffers.size;
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
    if (inode.size > 0) {
      this.bufferOf(inode.ino).set(0, block);
      this.holesOf(inode.ino).add(0);
      this.bufferedBlocks++;
    }
  }

  /** Refuses (ENOSPC) buffering that could not be written out. */
  admit(ino: number, firstBlock: number, endBlock: number, extra = 0): void {
    const buffered = this.buffers.get(ino);
    let fresh = extra;
    for (let b = firstBlock; b < endBlock; b++) if (buffered === undefined || !buffered.has(b)) fresh++;
    if (fresh === 0) return;
    // Each extent of the write-out may need a record and a split of an old one.
    const extents = Math.ceil((this.bufferedBlocks + fresh) / this.extentBlocksMin()) + this.buffers.size;
    this.space.reserve(this.bufferedBlocks + fresh + 2 * extents + this.shrinkReserveBlocks(), "grow");
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
  }

  /** Whether each file block in [first, end) lies in an extent, from one scan of the map. */
  private mappedBlocks(inode: Inode, map: ItemMap, first: number, end: number): (block: number) => boolean {
    const ranges: Array<[number, number]> = [];
    for (const extent of this.extentsIn(inode, map, first, end)) ranges.push([extent.fileBlock, extent.fileBlock + extent.blocks]);
    return (block) => ranges.some(([lo, hi]) => block >= lo && block < hi);
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
    const block = Buffer.alloc(blockSizeBytes);
    if (inode.kind === PayloadKind.Bytes) {
      if (fileBlock === 0) inode.payload.copy(block);
      return block;
    }
    for (const extent of this.extentsIn(inode, map, fileBlock, fileBlock + 1)) {
      this.readExtentBlocks(inode.ino, extent, fileBlock - extent.fileBlock, 1).copy(block);
    }
    return block;
  }

  private hasExtentAt(inode: Inode, map: ItemMap, fileBlock: number): boolean {
    for (const _ of this.extentsIn(inode, map, fileBlock, fileBlock + 1)) return true;
    return false;
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
