/**
 * The filesystem's bytes: keys of a subvolume's inode tree, the inode record,
 * directory entries and data extents. Nothing outside this module touches
 * their offsets.
 *
 * Inode tree keys (big-endian, so memcmp order is numeric order):
 *
 *   [ino u64]                         inode record
 *   [ino u64][0x02][name][0x00][i u8] chunk i of extended attribute `name`
 *   [0 u64]                           volume counters (next inode number)
 *   [0 u64][0x03][ino u64]            orphan: unlinked while open, freed on mount
 *
 * Inode record (little-endian):
 *
 *   offset  size  field
 *   ------  ----  -----------------------------------------------
 *        0     4  mode (S_IFMT and permission bits)
 *        4     4  uid
 *        8     4  gid
 *       12     4  nlink
 *       16     8  size in bytes
 *       24     8  atime, ns since the epoch (signed: before 1970 is negative)
 *       32     8  mtime, ns
 *       40     8  ctime, ns
 *       48     8  crtime, ns
 *       56     4  flags (bit 0: has had extended attributes)
 *       60     4  rdev
 *       64     8  generation (the transaction that created the inode)
 *       72     8  data blocks owned (for st_blocks)
 *       80     8  parent inode (directories; 0 otherwise)
 *       88     1  payload kind (none, inline bytes, inline items, tree)
 *       89     1  tree level
 *       90     2  payload length
 *       92     8  tree root LBA
 *      100     8  tree item count
 *      108     -  payload: inline bytes or items, up to inodeInlineBytesMax
 *
 * A tree payload (kind tree) is empty, or with duplicate metadata 8 bytes:
 * the u64 LBA of the tree root's second copy. Older images have none.
 *
 * Inline items are [key length u16][value length u16][key][value], ascending
 * by key: the same items a directory or extent tree would hold.
 *
 * Directory entry: key = name; value = [ino u64][type u8 = mode >> 12].
 *
 * Extent: key = [file block index u64 BE]; value:
 *
 *   offset  size  field
 *   ------  ----  -----------------------------------------------
 *        0     8  LBA of the physical extent's first block
 *        8     2  logical blocks of this record
 *       10     2  blocks on disk this record's checksums cover (n)
 *       12     1  bits 0-6: compression (0 none, 1 lz4);
 *                 bit 7: unwritten (preallocated by fallocate, never written)
 *       13     1  lz4: blocks the physical extent decompresses to (its unit); else 0
 *       14     2  blocks in the physical extent (on disk)
 *       16     2  offset of this record's first block: on disk when
 *                 uncompressed, in the decompressed unit when lz4
 *       18     2  lz4: bytes of compressed data in the extent's last block; else 0
 *       20   4×n  crc32c of each block on disk
 *
 * An unwritten record (bit 7 set; always uncompressed, n = 0) carries no
 * crcs, and instead:
 *
 *       20     8  generation of the transaction that preallocated the extent
 *
 * Its blocks are allocated and counted (st_blocks, df) but read as zeros
 * without being read: whatever they hold is never shown. A write-out may
 * write them in place, once, while nothing else references them (see
 * file_data.ts). Images from before this bit have no unwritten records.
 *
 * A record references a slice of a physical extent. The physical extent is
 * allocated, reference-counted and freed as a whole (Rodeh): after a partial
 * overwrite, the records left keep all of it until none references it.
 *
 * An lz4 extent holds one unit of 2 … unitBlocksMax blocks, compressed
 * (lz4-napi's block format: the decompressed length as u32 LE, then an lz4
 * block), zero-padded to whole blocks, and stored only when that saves at
 * least one block. Any slice of it needs the whole unit, so its records
 * carry the crcs of every block of the extent (n = blocks on disk).
 *
 * In a detached tree, a 9-byte value is a directory entry; an extent value is
 * at least 24 bytes, an unwritten one 28 (the edge reader tells them apart by that).
 */
import { CorruptionError, type TreeMeta, blockSizeBytes, readU64LE, writeU64BE, writeU64LE } from "../kvstore/index.js";
import { compressionUnitBlocksMax, extentBlocksMax, inodeInlineBytesMax, inodeRecordFixedBytes } from "./constants.js";

const I_MODE = 0;
const I_UID = I_MODE + 4;
const I_GID = I_UID + 4;
const I_NLINK = I_GID + 4;
const I_SIZE = I_NLINK + 4;
const I_ATIME = I_SIZE + 8;
const I_MTIME = I_ATIME + 8;
const I_CTIME = I_MTIME + 8;
const I_CRTIME = I_CTIME + 8;
const I_FLAGS = I_CRTIME + 8;
const I_RDEV = I_FLAGS + 4;
const I_GENERATION = I_RDEV + 4;
const I_BLOCKS = I_GENERATION + 8;
const I_PARENT = I_BLOCKS + 8;
const I_KIND = I_PARENT + 8;
const I_TREE_LEVEL = I_KIND + 1;
const I_PAYLOAD_LENGTH = I_TREE_LEVEL + 1;
const I_TREE_ROOT = I_PAYLOAD_LENGTH + 2;
const I_TREE_COUNT = I_TREE_ROOT + 8;
const I_PAYLOAD = I_TREE_COUNT + 8;

export const enum PayloadKind {
  None = 0,
  Bytes = 1,
  Items = 2,
  Tree = 3,
}

/** Inode flag (bit 0): an extended attribute was set at some point, so lookups and freeing must look for them (the checker holds it). */
export const inodeFlagHadXattrs = 1;

export interface Inode {
  ino: number;
  mode: number;
  uid: number;
  gid: number;
  nlink: number;
  size: number;
  atimeNs: bigint;
  mtimeNs: bigint;
  ctimeNs: bigint;
  crtimeNs: bigint;
  flags: number;
  rdev: number;
  generation: number;
  blocks: number;
  parent: number;
  kind: PayloadKind;
  /** Inline bytes or encoded inline items (kinds Bytes and Items). */
  payload: Buffer;
  treeRoot: number;
  treeLevel: number;
  treeCount: number;
}

export function inodeKey(ino: number): Buffer {
  const key = Buffer.allocUnsafe(8);
  writeU64BE(key, 0, ino);
  return key;
}

export const countersKey = inodeKey(0);

const tagXattr = 0x02;
const tagOrphan = 0x03;

export function orphanKey(ino: number): Buffer {
  const key = Buffer.allocUnsafe(17);
  writeU64BE(key, 0, 0);
  key[8] = tagOrphan;
  writeU64BE(key, 9, ino);
  return key;
}

export const orphanPrefix = Buffer.from([0, 0, 0, 0, 0, 0, 0, 0, tagOrphan]);

export function orphanIno(key: Buffer): number | undefined {
  if (key.length !== 17 || key.compare(orphanPrefix, 0, 9, 0, 9) !== 0) return undefined;
  return Number(key.readBigUInt64BE(9));
}

/** Every xattr chunk of inode `ino` starts with this; with a name, every chunk of that attribute. */
export function xattrPrefix(ino: number, name?: Buffer): Buffer {
  const head = Buffer.allocUnsafe(9);
  writeU64BE(head, 0, ino);
  head[8] = tagXattr;
  return name === undefined ? head : Buffer.concat([head, name, Buffer.from([0])]);
}

export function xattrChunkKey(prefix: Buffer, chunk: number): Buffer {
  return Buffer.concat([prefix, Buffer.from([chunk])]);
}

/** The attribute name of an xattr chunk key, or undefined if the key is not one. */
export function xattrNameOf(key: Buffer): Buffer | undefined {
  if (key.length < 11 || key[8] !== tagXattr || key[key.length - 2] !== 0) return undefined;
  return key.subarray(9, key.length - 2);
}

export function encodeCounters(nextIno: number): Buffer {
  const value = Buffer.alloc(8);
  value.writeBigUInt64LE(BigInt(nextIno), 0);
  return value;
}

export function decodeCounters(value: Buffer): number {
  if (value.length !== 8) throw new CorruptionError("EIO_counters", "the inode counter record is malformed");
  return Number(value.readBigUInt64LE(0));
}

export function encodeInode(inode: Inode): Buffer {
  // Every byte before the payload is a field written below, so the buffer need not be zeroed first.
  const buf = Buffer.allocUnsafe(I_PAYLOAD + inode.payload.length);
  buf.writeUInt32LE(inode.mode >>> 0, I_MODE);
  buf.writeUInt32LE(inode.uid >>> 0, I_UID);
  buf.writeUInt32LE(inode.gid >>> 0, I_GID);
  buf.writeUInt32LE(inode.nlink, I_NLINK);
  writeCount(buf, I_SIZE, inode.size);
  buf.writeBigInt64LE(inode.atimeNs, I_ATIME);
  buf.writeBigInt64LE(inode.mtimeNs, I_MTIME);
  buf.writeBigInt64LE(inode.ctimeNs, I_CTIME);
  buf.writeBigInt64LE(inode.crtimeNs, I_CRTIME);
  buf.writeUInt32LE(inode.flags, I_FLAGS);
  buf.writeUInt32LE(inode.rdev >>> 0, I_RDEV);
  writeCount(buf, I_GENERATION, inode.generation);
  writeCount(buf, I_BLOCKS, inode.blocks);
  writeCount(buf, I_PARENT, inode.parent);
  buf.writeUInt8(inode.kind, I_KIND);
  buf.writeUInt8(inode.treeLevel, I_TREE_LEVEL);
  buf.writeUInt16LE(inode.payload.length, I_PAYLOAD_LENGTH);
  writeCount(buf, I_TREE_ROOT, inode.treeRoot);
  writeCount(buf, I_TREE_COUNT, inode.treeCount);
  inode.payload.copy(buf, I_PAYLOAD);
  return buf;
}

/**
 * `owned`: `value` is the caller's own copy (as Tree.get returns), so the
 * payload may be a view into it instead of a copy of its own.
 */
export function decodeInode(ino: number, value: Buffer, owned = false): Inode {
  if (value.length < inodeRecordFixedBytes) badInode(ino, `${value.length} bytes`);
  const payloadLength = value.readUInt16LE(I_PAYLOAD_LENGTH);
  if (payloadLength > inodeInlineBytesMax || I_PAYLOAD + payloadLength !== value.length) badInode(ino, "payload length");
  const kind = value.readUInt8(I_KIND) as PayloadKind;
  if (kind > PayloadKind.Tree) badInode(ino, `payload kind ${kind}`);
  return {
    ino,
    mode: value.readUInt32LE(I_MODE),
    uid: value.readUInt32LE(I_UID),
    gid: value.readUInt32LE(I_GID),
    nlink: value.readUInt32LE(I_NLINK),
    size: readU64LE(value, I_SIZE),
    atimeNs: value.readBigInt64LE(I_ATIME),
    mtimeNs: value.readBigInt64LE(I_MTIME),
    ctimeNs: value.readBigInt64LE(I_CTIME),
    crtimeNs: value.readBigInt64LE(I_CRTIME),
    flags: value.readUInt32LE(I_FLAGS),
    rdev: value.readUInt32LE(I_RDEV),
    generation: readU64LE(value, I_GENERATION),
    blocks: readU64LE(value, I_BLOCKS),
    parent: readU64LE(value, I_PARENT),
    kind,
    payload: owned ? value.subarray(I_PAYLOAD, I_PAYLOAD + payloadLength) : Buffer.from(value.subarray(I_PAYLOAD, I_PAYLOAD + payloadLength)),
    treeRoot: readU64LE(value, I_TREE_ROOT),
    treeLevel: value.readUInt8(I_TREE_LEVEL),
    treeCount: readU64LE(value, I_TREE_COUNT),
  };
}

/** The detached tree (kind tree) an inode's record holds: its root, and the root's second copy if the payload names one. */
export function inodeTreeMeta(inode: Inode): TreeMeta {
  const mirror = inode.payload.length === 8 ? readU64LE(inode.payload, 0) : 0;
  return { rootLba: inode.treeRoot, level: inode.treeLevel, count: inode.treeCount, rootMirror: mirror };
}

/** Records tree `meta` as the inode's payload of kind tree. */
export function setInodeTree(inode: Inode, meta: TreeMeta): void {
  inode.kind = PayloadKind.Tree;
  inode.treeRoot = meta.rootLba;
  inode.treeLevel = meta.level;
  inode.treeCount = meta.count;
  const mirror = meta.rootMirror ?? 0;
  if (mirror === 0) {
    if (inode.payload.length !== 0) inode.payload = Buffer.alloc(0);
    return;
  }
  if (inode.payload.length !== 8) inode.payload = Buffer.alloc(8);
  writeU64LE(inode.payload, 0, mirror);
}

/** A non-negative safe integer as u64 LE (no BigInt: inode records are encoded on every change). */
function writeCount(buf: Buffer, at: number, value: number): void {
  if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`inode field ${value} is not a count`);
  writeU64LE(buf, at, value);
}

/** Module-level rather than a closure per call: decoding an inode is a hot path. */
function badInode(ino: number, why: string): never {
  throw new CorruptionError("EIO_inode_record", `inode ${ino} has a corrupt record: ${why}`);
}

// ---- inline items -----------------------------------------------------------

export interface Item {
  key: Buffer;
  value: Buffer;
}

export function encodeItems(items: readonly Item[]): Buffer {
  let size = 0;
  for (const item of items) size += 4 + item.key.length + item.value.length;
  const buf = Buffer.allocUnsafe(size);
  let at = 0;
  for (const item of items) {
    buf.writeUInt16LE(item.key.length, at);
    buf.writeUInt16LE(item.value.length, at + 2);
    item.key.copy(buf, at + 4);
    item.value.copy(buf, at + 4 + item.key.length);
    at += 4 + item.key.length + item.value.length;
  }
  return buf;
}

export function encodedItemsBytes(items: readonly Item[]): number {
  let size = 0;
  for (const item of items) size += 4 + item.key.length + item.value.length;
  return size;
}

export function decodeItems(ino: number, payload: Buffer): Item[] {
  const items: Item[] = [];
  let at = 0;
  while (at < payload.length) {
    if (at + 4 > payload.length) break;
    const keyLength = payload.readUInt16LE(at);
    const valueLength = payload.readUInt16LE(at + 2);
    const end = at + 4 + keyLength + valueLength;
    if (end > payload.length) break;
    const key = Buffer.from(payload.subarray(at + 4, at + 4 + keyLength));
    if (items.length > 0 && Buffer.compare(items[items.length - 1]!.key, key) >= 0) {
      throw new CorruptionError("EIO_inline_items", `inode ${ino}: inline items are out of order`);
    }
    items.push({ key, value: Buffer.from(payload.subarray(at + 4 + keyLength, end)) });
    at = end;
  }
  if (at !== payload.length) throw new CorruptionError("EIO_inline_items", `inode ${ino}: inline items are truncated`);
  return items;
}

// ---- directory entries -------------------------------------------------------

export interface Dirent {
  ino: number;
  /** mode >> 12 */
  type: number;
}

export function encodeDirent(ino: number, mode: number): Buffer {
  const value = Buffer.allocUnsafe(9);
  writeU64BE(value, 0, ino);
  value[8] = mode >>> 12;
  return value;
}

export function decodeDirent(dirIno: number, value: Buffer): Dirent {
  if (value.length !== direntValueBytes) throw new CorruptionError("EIO_dirent", `directory ${dirIno} has a malformed entry`);
  return { ino: Number(value.readBigUInt64BE(0)), type: value[8]! };
}

// ---- extents -------------------------------------------------------------------

const E_EXTENT_LBA = 0;
const E_BLOCKS = E_EXTENT_LBA + 8;
const E_DISK_BLOCKS = E_BLOCKS + 2;
const E_COMPRESSION = E_DISK_BLOCKS + 2;
const E_UNIT_BLOCKS = E_COMPRESSION + 1;
const E_EXTENT_BLOCKS = E_UNIT_BLOCKS + 1;
const E_OFFSET = E_EXTENT_BLOCKS + 2;
const E_LAST_BYTES = E_OFFSET + 2;
const E_CRCS = E_LAST_BYTES + 2;
/** Unwritten records hold this where the crcs would be. */
const E_PREALLOC_GENERATION = E_CRCS;
const E_UNWRITTEN_BYTES = E_PREALLOC_GENERATION + 8;
/** Bit 7 of the compression byte. */
const compressionFlagUnwritten = 0x80;

export const direntValueBytes = 9;

export const enum Compression {
  None = 0,
  Lz4 = 1,
}

export interface Extent {
  /** File block index of the first block. */
  fileBlock: number;
  /** The physical extent this record is a slice of: the unit of allocation and reference counting. */
  extentLba: number;
  /** Blocks of the physical extent on disk. */
  extentBlocks: number;
  /** Where the slice starts: blocks into the extent on disk, or into the decompressed unit (lz4). */
  offset: number;
  /** Uncompressed: the slice's first block on disk (extentLba + offset). lz4: extentLba. */
  lba: number;
  /** Logical blocks of this record. */
  blocks: number;
  /** Blocks on disk the crcs cover: the slice's (uncompressed) or the whole extent's (lz4). */
  diskBlocks: number;
  compression: Compression;
  /** Blocks the physical extent holds once decompressed (extentBlocks when uncompressed). */
  unitBlocks: number;
  /** lz4: bytes of compressed data at the start of the extent (0 when uncompressed). */
  compressedBytes: number;
  /** One crc32c per block on disk, little-endian u32s (a view into the record; read with `extentCrc`). */
  crcs: Buffer;
  /**
   * Set only on an unwritten record (preallocated, never written): the
   * transaction that preallocated its physical extent. Such a record is
   * uncompressed, has no crcs (diskBlocks 0) and reads as zeros.
   */
  preallocatedIn?: number;
}

export function isUnwritten(extent: Extent): boolean {
  return extent.preallocatedIn !== undefined;
}

/** An unwritten record of a whole physical extent of `blocks` blocks at `lba`, preallocated in `generation`. */
export function unwrittenExtent(fileBlock: number, lba: number, blocks: number, generation: number): Extent {
  return {
    fileBlock,
    extentLba: lba,
    extentBlocks: blocks,
    offset: 0,
    lba,
    blocks,
    diskBlocks: 0,
    compression: Compression.None,
    unitBlocks: blocks,
    compressedBytes: 0,
    crcs: Buffer.alloc(0),
    preallocatedIn: generation,
  };
}

export function extentCrc(extent: Extent, block: number): number {
  return extent.crcs.readUInt32LE(4 * block);
}

export function extentKey(fileBlock: number): Buffer {
  const key = Buffer.allocUnsafe(8);
  writeU64BE(key, 0, fileBlock);
  return key;
}

export function encodeExtent(extent: Extent): Buffer {
  if (extent.preallocatedIn !== undefined) {
    const unwritten = Buffer.alloc(E_UNWRITTEN_BYTES);
    unwritten.writeBigUInt64LE(BigInt(extent.extentLba), E_EXTENT_LBA);
    unwritten.writeUInt16LE(extent.blocks, E_BLOCKS);
    unwritten.writeUInt8(Compression.None | compressionFlagUnwritten, E_COMPRESSION);
    unwritten.writeUInt16LE(extent.extentBlocks, E_EXTENT_BLOCKS);
    unwritten.writeUInt16LE(extent.offset, E_OFFSET);
    unwritten.writeBigUInt64LE(BigInt(extent.preallocatedIn), E_PREALLOC_GENERATION);
    return unwritten;
  }
  const value = Buffer.alloc(E_CRCS + 4 * extent.diskBlocks);
  value.writeBigUInt64LE(BigInt(extent.extentLba), E_EXTENT_LBA);
  value.writeUInt16LE(extent.blocks, E_BLOCKS);
  value.writeUInt16LE(extent.diskBlocks, E_DISK_BLOCKS);
  value.writeUInt8(extent.compression, E_COMPRESSION);
  value.writeUInt16LE(extent.extentBlocks, E_EXTENT_BLOCKS);
  value.writeUInt16LE(extent.offset, E_OFFSET);
  if (extent.compression !== Compression.None) {
    value.writeUInt8(extent.unitBlocks, E_UNIT_BLOCKS);
    value.writeUInt16LE(extent.compressedBytes - (extent.extentBlocks - 1) * blockSizeBytes, E_LAST_BYTES);
  }
  extent.crcs.copy(value, E_CRCS, 0, 4 * extent.diskBlocks);
  return value;
}

export function decodeExtent(ino: number, key: Buffer, value: Buffer): Extent {
  if (key.length !== 8) badExtent(ino, "key length");
  if (value.length < E_CRCS) badExtent(ino, "value length");
  if ((value.readUInt8(E_COMPRESSION) & compressionFlagUnwritten) !== 0) return decodeUnwritten(ino, key, value);
  const diskBlocks = value.readUInt16LE(E_DISK_BLOCKS);
  const blocks = value.readUInt16LE(E_BLOCKS);
  if (value.length !== E_CRCS + 4 * diskBlocks || blocks === 0 || diskBlocks === 0) badExtent(ino, "block counts");
  const compression = value.readUInt8(E_COMPRESSION);
  const crcs = value.subarray(E_CRCS, E_CRCS + 4 * diskBlocks);
  const extentLba = Number(value.readBigUInt64LE(E_EXTENT_LBA));
  const extentBlocks = value.readUInt16LE(E_EXTENT_BLOCKS);
  const offset = value.readUInt16LE(E_OFFSET);
  const unitField = value.readUInt8(E_UNIT_BLOCKS);
  const lastBytes = value.readUInt16LE(E_LAST_BYTES);
  const fileBlock = Number(key.readBigUInt64BE(0));
  if (compression === Compression.None) {
    if (blocks > extentBlocksMax || diskBlocks !== blocks) badExtent(ino, "block counts");
    if (unitField !== 0 || lastBytes !== 0) badExtent(ino, "compression fields set on an uncompressed extent");
    if (extentBlocks === 0 || extentBlocks > extentBlocksMax || offset + diskBlocks > extentBlocks) badExtent(ino, "slice outside its extent");
    return {
      fileBlock,
      extentLba,
      extentBlocks,
      offset,
      lba: extentLba + offset,
      blocks,
      diskBlocks,
      compression,
      unitBlocks: extentBlocks,
      compressedBytes: 0,
      crcs,
    };
  }
  if (compression !== Compression.Lz4) badExtent(ino, `unknown compression ${compression}`);
  // A unit is stored compressed only if that saves a block, so it takes fewer blocks on disk than it holds.
  if (unitField < 2 || unitField > compressionUnitBlocksMax) badExtent(ino, `compressed unit of ${unitField} blocks`);
  if (extentBlocks === 0 || extentBlocks >= unitField || diskBlocks !== extentBlocks) badExtent(ino, "compressed extent size");
  if (offset + blocks > unitField) badExtent(ino, "slice outside its compressed unit");
  if (lastBytes === 0 || lastBytes > blockSizeBytes) badExtent(ino, "compressed length");
  return {
    fileBlock,
    extentLba,
    extentBlocks,
    offset,
    lba: extentLba,
    blocks,
    diskBlocks,
    compression,
    unitBlocks: unitField,
    compressedBytes: (extentBlocks - 1) * blockSizeBytes + lastBytes,
    crcs,
  };
}

function decodeUnwritten(ino: number, key: Buffer, value: Buffer): Extent {
  if (value.length !== E_UNWRITTEN_BYTES) badExtent(ino, "unwritten record length");
  if (value.readUInt8(E_COMPRESSION) !== (Compression.None | compressionFlagUnwritten)) badExtent(ino, "unwritten extent is compressed");
  if (value.readUInt16LE(E_DISK_BLOCKS) !== 0) badExtent(ino, "unwritten extent has checksums");
  if (value.readUInt8(E_UNIT_BLOCKS) !== 0 || value.readUInt16LE(E_LAST_BYTES) !== 0) badExtent(ino, "compression fields set on an unwritten extent");
  const blocks = value.readUInt16LE(E_BLOCKS);
  const extentBlocks = value.readUInt16LE(E_EXTENT_BLOCKS);
  const offset = value.readUInt16LE(E_OFFSET);
  if (blocks === 0 || blocks > extentBlocksMax) badExtent(ino, "block counts");
  if (extentBlocks === 0 || extentBlocks > extentBlocksMax || offset + blocks > extentBlocks) badExtent(ino, "slice outside its extent");
  const extentLba = Number(value.readBigUInt64LE(E_EXTENT_LBA));
  const extent = unwrittenExtent(Number(key.readBigUInt64BE(0)), extentLba, extentBlocks, Number(value.readBigUInt64LE(E_PREALLOC_GENERATION)));
  return { ...extent, offset, lba: extentLba + offset, blocks };
}

function badExtent(ino: number, why: string): never {
  throw new CorruptionError("EIO_extent", `inode ${ino} has a corrupt extent: ${why}`);
}

/**
 * The record for file blocks [skip, skip + blocks) of `extent`: the same
 * physical extent, a shorter slice (with only its own crcs when uncompressed;
 * an lz4 slice keeps them all, since reading it needs the whole unit).
 */
export function sliceExtent(extent: Extent, skip: number, blocks: number): Extent {
  if (extent.preallocatedIn !== undefined) {
    return { ...extent, fileBlock: extent.fileBlock + skip, offset: extent.offset + skip, lba: extent.lba + skip, blocks };
  }
  if (extent.compression !== Compression.None) {
    return { ...extent, fileBlock: extent.fileBlock + skip, offset: extent.offset + skip, blocks, crcs: Buffer.from(extent.crcs) };
  }
  return {
    ...extent,
    fileBlock: extent.fileBlock + skip,
    offset: extent.offset + skip,
    lba: extent.lba + skip,
    blocks,
    diskBlocks: blocks,
    crcs: Buffer.from(extent.crcs.subarray(4 * skip, 4 * (skip + blocks))),
  };
}
