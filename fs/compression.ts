/**
 * lz4 for file data (lz4-napi): compressing a unit of whole blocks, a cheap
 * guess at whether that is worth trying, and decompressing with every
 * length checked before the decompressor sees the bytes.
 *
 * The bytes on disk are lz4-napi's block format: the decompressed length as
 * u32 LE, then one lz4 block. The record holds the compressed length and the
 * unit's size; both are checked against the prefix first, so a damaged
 * prefix can neither make the decompressor allocate a huge buffer nor pass.
 * The crcs of the disk blocks are checked before decompressing (the caller
 * does), so only a record that lies about a valid extent reaches lz4 with
 * bad input, and lz4_flex's safe decoder then returns an error, mapped to EIO.
 */
import lz4 from "lz4-napi";
import { CorruptionError, blockSizeBytes, crc32c } from "../kvstore/index.js";
import { compressionUnitBlocksMax } from "./constants.js";
import { Compression, Extent } from "./format.js";

/** Bytes sampled from each block by the incompressibility guess. */
const sampleBytesPerBlock = 64;
const sampleSliceBytes = 16;
/** Above this many bits per byte, a sample is taken as random (lz4 has no entropy coder; this only skips near-random data). */
const incompressibleBitsPerByte = 7.5;

/**
 * Whether `blocks` look like random data (already compressed, encrypted),
 * from a sample of 64 bytes a block, in four slices spread over it: a byte
 * histogram's entropy, unless the sample repeats itself (copies of one
 * random block compress well).
 */
export function looksIncompressible(blocks: readonly Buffer[]): boolean {
  const slicesPerBlock = sampleBytesPerBlock / sampleSliceBytes;
  const stride = blockSizeBytes / slicesPerBlock;
  const half = blocks.length >> 1;
  if (half > 0 && samplesRepeat(blocks, half, stride)) return false;
  const counts = histogram;
  counts.fill(0);
  for (const block of blocks) {
    for (let from = 0; from < blockSizeBytes; from += stride) {
      for (let i = from; i < from + sampleSliceBytes; i++) counts[block[i]!]!++;
    }
  }
  const sampleBytes = blocks.length * sampleBytesPerBlock;
  let sum = 0;
  for (let v = 0; v < 256; v++) {
    const c = counts[v]!;
    if (c > 0) sum += c * Math.log2(c);
  }
  const bitsPerByte = Math.log2(sampleBytes) - sum / sampleBytes;
  return bitsPerByte > incompressibleBitsPerByte;
}

const histogram = new Uint32Array(256);

/** Whether the samples of the first `half` blocks equal those of the next `half` (copies of one block compress well). */
function samplesRepeat(blocks: readonly Buffer[], half: number, stride: number): boolean {
  for (let b = 0; b < half; b++) {
    const x = blocks[b]!;
    const y = blocks[b + half]!;
    for (let from = 0; from < blockSizeBytes; from += stride) {
      if (x.compare(y, from, from + sampleSliceBytes, from, from + sampleSliceBytes) !== 0) return false;
    }
  }
  return true;
}

/** A unit compressed to fewer blocks than it holds. */
export interface PackedUnit {
  /** Compressed bytes, zero-padded to `diskBlocks` whole blocks. */
  data: Buffer;
  diskBlocks: number;
  compressedBytes: number;
}

/**
 * Compresses `blocks` (one unit) if that saves at least one block; null when
 * the data looks random or does not shrink enough.
 */
export function compressUnit(blocks: readonly Buffer[]): PackedUnit | null {
  if (blocks.length < 2 || looksIncompressible(blocks)) return null;
  return padded(lz4.compressSync(Buffer.concat(blocks as Buffer[])), blocks.length);
}

/**
 * `compressUnit` on libuv's thread pool, so that compression runs beside
 * the thread serving requests: `done` gets the result (null: store it raw),
 * or undefined if compressing failed (then write-out compresses it itself).
 * The blocks are copied first, so they may change meanwhile.
 */
export function compressUnitInBackground(blocks: readonly Buffer[], done: (packed: PackedUnit | null | undefined) => void): void {
  if (blocks.length < 2 || looksIncompressible(blocks)) {
    done(null);
    return;
  }
  lz4.compress(Buffer.concat(blocks as Buffer[])).then(
    (packed) => done(padded(packed, blocks.length)),
    () => done(undefined),
  );
}

/** The compressed bytes zero-padded to whole blocks, if they take fewer blocks than the unit. */
function padded(packed: Buffer, unitBlocks: number): PackedUnit | null {
  const diskBlocks = Math.ceil(packed.length / blockSizeBytes);
  if (diskBlocks >= unitBlocks) return null;
  const data = Buffer.allocUnsafe(diskBlocks * blockSizeBytes);
  packed.copy(data);
  data.fill(0, packed.length);
  return { data, diskBlocks, compressedBytes: packed.length };
}

/**
 * The unit an lz4 extent holds, from its disk blocks (already checked
 * against their crcs). Anything inconsistent is EIO, never wrong bytes.
 */
export function decompressUnit(ino: number, extent: Extent, disk: Buffer): Buffer {
  const unitBytes = extent.unitBlocks * blockSizeBytes;
  const bad = (why: string): never => {
    throw new CorruptionError(
      "EIO_data_decompress",
      `inode ${ino}: compressed extent at block ${extent.extentLba} (file block ${extent.fileBlock - extent.offset}) ${why}`,
    );
  };
  if (extent.compression !== Compression.Lz4) bad(`has unknown compression ${extent.compression}`);
  const packed = disk.subarray(0, extent.compressedBytes);
  if (packed.length < 4 || packed.readUInt32LE(0) !== unitBytes) bad("does not decompress to its recorded length");
  let unit: Buffer;
  try {
    unit = lz4.uncompressSync(packed);
  } catch (error) {
    return bad(`does not decompress (${(error as Error).message})`);
  }
  if (unit.length !== unitBytes) bad(`decompresses to ${unit.length} bytes, not ${unitBytes}`);
  return unit;
}

/**
 * An lz4 extent as it is stored (a send sends it so, a receive stores it
 * so): the compressed bytes of a unit of `unitBlocks` blocks, of which a
 * record holds the `blocks` blocks from `offset` on, with one crc32c per
 * disk block (the last zero-padded), as the extent record holds them.
 */
export interface StoredExtent {
  unitBlocks: number;
  offset: number;
  blocks: number;
  /** Compressed bytes, without the padding. */
  data: Buffer;
  /** One crc32c per disk block, little-endian u32s. */
  crcs: Buffer;
}

/**
 * What `stored` decompresses to, once every field is checked: the unit's
 * size and slice, the disk blocks' count against the compressed length and
 * their crcs against the bytes (zero-padded), the length prefix, and the
 * decompressed length itself (lz4 has no other check); or the first
 * problem found.
 */
export function checkStored(stored: StoredExtent): { unit: Buffer } | { problem: string } {
  const { unitBlocks, offset, blocks, data, crcs } = stored;
  if (!Number.isInteger(unitBlocks) || unitBlocks < 2 || unitBlocks > compressionUnitBlocksMax) return { problem: `a unit of ${unitBlocks} blocks` };
  if (!Number.isInteger(offset) || !Number.isInteger(blocks) || offset < 0 || blocks < 1 || offset + blocks > unitBlocks) {
    return { problem: `blocks [${offset}, ${offset + blocks}) outside a unit of ${unitBlocks}` };
  }
  const diskBlocks = Math.ceil(data.length / blockSizeBytes);
  if (data.length === 0 || diskBlocks >= unitBlocks) return { problem: `${data.length} compressed bytes for a unit of ${unitBlocks} blocks` };
  if (crcs.length !== 4 * diskBlocks) return { problem: `${crcs.length / 4} crcs for ${diskBlocks} disk blocks` };
  const block = Buffer.alloc(blockSizeBytes);
  for (let k = 0; k < diskBlocks; k++) {
    block.fill(0);
    data.copy(block, 0, k * blockSizeBytes, Math.min(data.length, (k + 1) * blockSizeBytes));
    if (crc32c(block) !== crcs.readUInt32LE(4 * k)) return { problem: `disk block ${k} does not match its crc` };
  }
  const unitBytes = unitBlocks * blockSizeBytes;
  if (data.length < 4 || data.readUInt32LE(0) !== unitBytes) return { problem: "its length prefix is not the unit's size" };
  let unit: Buffer;
  try {
    unit = lz4.uncompressSync(data);
  } catch (error) {
    return { problem: `it does not decompress (${(error as Error).message})` };
  }
  if (unit.length !== unitBytes) return { problem: `it decompresses to ${unit.length} bytes, not ${unitBytes}` };
  return { unit };
}

interface CachedUnit {
  /** What identifies the extent's contents: its crcs and lengths (a freed and reused LBA has others). */
  crcs: Buffer;
  compressedBytes: number;
  unitBlocks: number;
  unit: Buffer;
}

/**
 * Recently decompressed units, least recently used first out. An entry is
 * found by LBA but used only if the record's crcs and lengths match the
 * ones it was decompressed under, so it needs no invalidation when blocks
 * are freed and reused. Units are never modified once cached.
 */
export class DecompressedCache {
  private readonly units = new Map<number, CachedUnit>();

  constructor(private readonly capacity: number) {}

  get(extent: Extent): Buffer | undefined {
    const hit = this.units.get(extent.extentLba);
    if (hit === undefined) return undefined;
    if (hit.compressedBytes !== extent.compressedBytes || hit.unitBlocks !== extent.unitBlocks || !hit.crcs.equals(extent.crcs)) {
      return undefined;
    }
    this.units.delete(extent.extentLba);
    this.units.set(extent.extentLba, hit);
    return hit.unit;
  }

  put(extent: Extent, unit: Buffer): void {
    this.units.delete(extent.extentLba);
    this.units.set(extent.extentLba, {
      crcs: Buffer.from(extent.crcs),
      compressedBytes: extent.compressedBytes,
      unitBlocks: extent.unitBlocks,
      unit,
    });
    while (this.units.size > this.capacity) this.units.delete(this.units.keys().next().value!);
  }

  clear(): void {
    this.units.clear();
  }
}
