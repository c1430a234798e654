/**
 * The superblock: two checksummed slots at LBA 0 and LBA 1, written alternately
 * by generation parity (the LMDB and redb pattern).
 *
 * A commit writes the slot of its generation only after every node it points
 * to is durable, so the slot with the highest valid generation always names a
 * complete, consistent forest. If neither slot is valid we fail; we never guess.
 *
 * Slot layout (one 4096-byte block, integers little-endian):
 *
 *   offset  size  field
 *   ------  ----  -----------------------------------------------
 *        0     8  magic "GROVEFS\x01"
 *        8     4  crc32c of bytes [12, 4096)
 *       12     4  format version
 *       16     8  incompatible feature flags
 *       24     8  generation
 *       32     8  root tree: root LBA
 *       40     8  root tree: item count
 *       48     1  root tree: level
 *       49     7  (zero)
 *       56     8  device size in blocks
 *       64     4  block size in bytes
 *       68     1  compression of new file data by default (0 none, 1 lz4)
 *       69     3  (zero)
 *       72    16  volume uuid
 *       88    64  label, UTF-8, NUL-padded
 *      152     8  compressed data extents: count
 *      160     8  compressed data extents: blocks on disk
 *      168     8  compressed data extents: blocks they decompress to
 *      176     8  root tree: root's generation (0 = unchecked: an older image)
 *      184     4  root tree: root's crc32c (its node header's crc field)
 *      188     4  (zero)
 *      192     8  root tree: second LBA of the root (0 = none; duplicate metadata)
 *      200     8  (zero, reserved for checked pointers)
 *      208     8  fsync log: LBA of its head record (0 = none; feature bit 3)
 *      216    24  (zero, reserved for the fsync log)
 *      240     8  LBA of this copy (superblock copies, bit 4: 0, 1, 2, 3 or a backup's)
 *      248     8  blocks kept free at the start of the volume (bit 4: 4, or 256 = the first MiB)
 *      256  3840  (zero)
 *
 * Incompatible features: bit 0, lz4-compressed data extents may exist (set
 * by mkfs --compress lz4 or by the first compressed extent written); bit 1,
 * unwritten (preallocated) data extents may exist (set with the first
 * fallocate that allocates); bit 2, checked child pointers (node.ts) and
 * checked root-tree records may exist (set by mkfs and by the first commit
 * that writes a node); bit 3, an fsync log (kvstore/fsync_log.ts) may hold
 * records that extend this generation, headed at byte 208's block (set by the
 * first commit that reserves the head); bit 4, superblock copies
 * (superblock_copies.ts: each generation is written twice, to a slot at LBA
 * 0/1 and its twin at LBA 2/3, with a flush between, and to backups at LBA
 * 16384 and 67108864 where the volume holds them; the allocator keeps those
 * blocks and the start of the volume out of use; set by mkfs); bit 5, the
 * subvolume table may hold received-snapshot identities (snapshot/format.ts,
 * key [0x03][id]: set by the first receive), which older code's checker calls
 * unknown keys; bit 6, duplicate metadata (DUP): every tree node is written
 * twice, the second copy at least an eighth of the volume away, and every
 * pointer to a node (child pointers, root-tree records, inode tree roots, and
 * byte 192 here) records both LBAs (set by mkfs --metadata dup; an image
 * without it is written with single metadata, as before); bit 7, inode
 * numbers at or above 2^32 may exist, and the
 * per-inode trees of those inodes are owned by the wide owner ids of
 * snapshot/format.ts (`objectTreeOwner`; set when an inode counter first
 * passes 2^32), which older code would read as another subvolume's trees.
 * An image without a bit holds no such extent, so
 * older code reads it; code that does not know a bit refuses the image.
 */
import { crc32c } from "./checksum.js";
import { blockSizeBytes, deviceBlocksMin, superblockSlotLbas, treeDepthMax } from "./constants.js";

/** With superblock copies, the slots (LBA 0, 1) and their twins (LBA 2, 3) are never allocated. */
export const superblockCopyLbasMin = 4;
/** The most a volume keeps free at its start: the first MiB. */
export const reservedStartBlocksMax = (1024 * 1024) / blockSizeBytes;
import { assert } from "./errors.js";

export const superblockMagic = Buffer.from("GROVEFS\x01", "latin1");
export const formatVersion = 2;
/** Data extents may be lz4-compressed. */
export const featureCompressLz4 = 1n;
/** Data extents may be unwritten: preallocated by fallocate, read as zeros. */
export const featurePreallocated = 2n;
/** Internal nodes and root-tree records may hold checked pointers (child generation and crc). */
export const featureCheckedPointers = 4n;
/** Byte 208 names the head of an fsync log whose records may extend this generation (fsync_log.ts). */
export const featureFsyncLog = 8n;
/** Each generation's superblock has a twin and backups (superblock_copies.ts); blocks are reserved for them. */
export const featureSuperblockCopies = 16n;
/** The subvolume table may hold received-snapshot identities ([0x03][id], snapshot/format.ts). */
export const featureReceivedSnapshots = 32n;
/** Every tree node is written twice (duplicate metadata); pointers record the second LBA too. */
export const featureDupMetadata = 64n;
/** Inode numbers may reach 2^32 and beyond: their per-inode trees have wide owner ids (snapshot/format.ts). */
export const featureWideInodes = 128n;
/** An image with other incompatible feature bits is refused. */
export const featuresIncompatKnown =
  featureCompressLz4 |
  featurePreallocated |
  featureCheckedPointers |
  featureFsyncLog |
  featureSuperblockCopies |
  featureReceivedSnapshots |
  featureDupMetadata |
  featureWideInodes;

const SLOT_MAGIC = 0;
const SLOT_CRC = SLOT_MAGIC + 8;
const SLOT_VERSION = SLOT_CRC + 4;
const SLOT_FEATURES = SLOT_VERSION + 4;
const SLOT_GENERATION = SLOT_FEATURES + 8;
const SLOT_ROOT_LBA = SLOT_GENERATION + 8;
const SLOT_ROOT_COUNT = SLOT_ROOT_LBA + 8;
const SLOT_ROOT_LEVEL = SLOT_ROOT_COUNT + 8;
const SLOT_DEVICE_BLOCKS = SLOT_ROOT_LEVEL + 8;
const SLOT_BLOCK_SIZE = SLOT_DEVICE_BLOCKS + 8;
const SLOT_COMPRESSION = SLOT_BLOCK_SIZE + 4;
const SLOT_UUID = SLOT_BLOCK_SIZE + 8;
const SLOT_LABEL = SLOT_UUID + 16;
const SLOT_END = SLOT_LABEL + 64;
const SLOT_COMPRESSED_EXTENTS = SLOT_END;
const SLOT_COMPRESSED_DISK = SLOT_COMPRESSED_EXTENTS + 8;
const SLOT_COMPRESSED_LOGICAL = SLOT_COMPRESSED_DISK + 8;
const SLOT_ROOT_GENERATION = SLOT_COMPRESSED_LOGICAL + 8;
const SLOT_ROOT_CRC = SLOT_ROOT_GENERATION + 8;
const SLOT_ROOT_LBA2 = SLOT_ROOT_CRC + 8;
const SLOT_LOG_HEAD = SLOT_ROOT_LBA2 + 16;
const SLOT_COPY_LBA = SLOT_LOG_HEAD + 32;
const SLOT_RESERVED_START = SLOT_COPY_LBA + 8;
export const labelSizeMaxBytes = SLOT_END - SLOT_LABEL;

export interface Superblock {
  generation: number;
  rootLba: number;
  rootCount: number;
  rootLevel: number;
  /** What the root tree's root must be: its generation (0: unchecked) and crc. */
  rootGeneration: number;
  rootCrc: number;
  /** The second copy of the root tree's root (0: none, single metadata). */
  rootMirror: number;
  deviceBlocks: number;
  uuid: Buffer;
  label: string;
  /** Incompatible feature bits (`featuresIncompatKnown`). */
  features: bigint;
  /** How new file data is compressed unless the mount says otherwise (0 none, 1 lz4). */
  compression: number;
  compressed: CompressedUsage;
  /**
   * With superblock copies: blocks [0, this) hold no node and no data (the
   * slots and twins, and for a volume made larger than 64 MiB the whole first
   * MiB); 0 without the feature.
   */
  reservedStartBlocks: number;
  /** The block reserved for the fsync log's first record (0: none; set with featureFsyncLog). */
  logHeadLba: number;
}

/** The volume's compressed data extents, each counted once however many records share it. */
export interface CompressedUsage {
  extents: number;
  /** Blocks they take on disk. */
  diskBlocks: number;
  /** Blocks they hold once decompressed. */
  logicalBlocks: number;
}

export const noCompressedUsage: CompressedUsage = { extents: 0, diskBlocks: 0, logicalBlocks: 0 };

export function slotForGeneration(generation: number): number {
  return superblockSlotLbas[generation % 2]!;
}

/**
 * Encodes `sb` as the copy at `lba` (by default the slot of its generation);
 * with superblock copies the copy records its own LBA, so that a copy found
 * elsewhere (a misdirected write) is not taken for this one.
 */
export function encodeSuperblock(sb: Superblock, lba = slotForGeneration(sb.generation)): Buffer {
  assert(sb.uuid.length === 16, "uuid is 16 bytes");
  const label = Buffer.from(sb.label, "utf8");
  assert(label.length <= labelSizeMaxBytes, "label fits its field");
  const buf = Buffer.alloc(blockSizeBytes);
  superblockMagic.copy(buf, SLOT_MAGIC);
  buf.writeUInt32LE(formatVersion, SLOT_VERSION);
  assert((sb.features & ~featuresIncompatKnown) === 0n, "only known features are written");
  buf.writeBigUInt64LE(sb.features, SLOT_FEATURES);
  buf.writeBigUInt64LE(BigInt(sb.generation), SLOT_GENERATION);
  buf.writeBigUInt64LE(BigInt(sb.rootLba), SLOT_ROOT_LBA);
  buf.writeBigUInt64LE(BigInt(sb.rootCount), SLOT_ROOT_COUNT);
  buf.writeUInt8(sb.rootLevel, SLOT_ROOT_LEVEL);
  buf.writeBigUInt64LE(BigInt(sb.deviceBlocks), SLOT_DEVICE_BLOCKS);
  buf.writeUInt32LE(blockSizeBytes, SLOT_BLOCK_SIZE);
  buf.writeUInt8(sb.compression, SLOT_COMPRESSION);
  sb.uuid.copy(buf, SLOT_UUID);
  label.copy(buf, SLOT_LABEL);
  buf.writeBigUInt64LE(BigInt(sb.compressed.extents), SLOT_COMPRESSED_EXTENTS);
  buf.writeBigUInt64LE(BigInt(sb.compressed.diskBlocks), SLOT_COMPRESSED_DISK);
  buf.writeBigUInt64LE(BigInt(sb.compressed.logicalBlocks), SLOT_COMPRESSED_LOGICAL);
  buf.writeBigUInt64LE(BigInt(sb.rootGeneration), SLOT_ROOT_GENERATION);
  buf.writeUInt32LE(sb.rootCrc >>> 0, SLOT_ROOT_CRC);
  buf.writeBigUInt64LE(BigInt(sb.rootMirror), SLOT_ROOT_LBA2);
  if ((sb.features & featureSuperblockCopies) !== 0n) {
    assert(sb.reservedStartBlocks >= superblockCopyLbasMin, "the slots and twins are reserved");
    buf.writeBigUInt64LE(BigInt(lba), SLOT_COPY_LBA);
    buf.writeBigUInt64LE(BigInt(sb.reservedStartBlocks), SLOT_RESERVED_START);
  } else {
    assert(sb.reservedStartBlocks === 0, "only superblock copies reserve blocks");
  }
  assert((sb.logHeadLba !== 0) === ((sb.features & featureFsyncLog) !== 0n), "a log head goes with the fsync-log feature");
  buf.writeBigUInt64LE(BigInt(sb.logHeadLba), SLOT_LOG_HEAD);
  buf.writeUInt32LE(crc32c(buf.subarray(SLOT_VERSION)), SLOT_CRC);
  return buf;
}

/** A whole superblock of a volume longer than the device it was read from. */
export interface TruncatedSuperblock {
  generation: number;
  volumeBlocks: number;
  /** The volume writes two copies of each node: some second copies lie past the cut. */
  dupMetadata: boolean;
}

/**
 * An invalid slot is a reason. `truncated` is set when the slot is valid in
 * every way but names more blocks than the device has: the image was cut.
 */
export type SlotDecode =
  | { ok: true; superblock: Superblock }
  | { ok: false; reason: string; truncated?: TruncatedSuperblock };

/**
 * Decodes one slot; an invalid slot is a reason, not an exception, so the
 * other copies can be tried. `lba` is where the copy was read from: a copy
 * with superblock copies must record it.
 */
export function decodeSuperblock(buf: Buffer, deviceBlocks: number, lba?: number): SlotDecode {
  assert(buf.length === blockSizeBytes, "a slot is one block");
  if (!buf.subarray(SLOT_MAGIC, SLOT_MAGIC + 8).equals(superblockMagic)) {
    return { ok: false, reason: "no grovefs magic" };
  }
  if (buf.readUInt32LE(SLOT_CRC) !== crc32c(buf.subarray(SLOT_VERSION))) {
    return { ok: false, reason: "checksum mismatch" };
  }
  const version = buf.readUInt32LE(SLOT_VERSION);
  if (version !== formatVersion) return { ok: false, reason: `unsupported format version ${version}` };
  const features = buf.readBigUInt64LE(SLOT_FEATURES);
  if ((features & ~featuresIncompatKnown) !== 0n) {
    return { ok: false, reason: `unknown incompatible features 0x${features.toString(16)}` };
  }
  const blockSize = buf.readUInt32LE(SLOT_BLOCK_SIZE);
  if (blockSize !== blockSizeBytes) return { ok: false, reason: `unsupported block size ${blockSize}` };
  const sb: Superblock = {
    generation: Number(buf.readBigUInt64LE(SLOT_GENERATION)),
    rootLba: Number(buf.readBigUInt64LE(SLOT_ROOT_LBA)),
    rootCount: Number(buf.readBigUInt64LE(SLOT_ROOT_COUNT)),
    rootLevel: buf.readUInt8(SLOT_ROOT_LEVEL),
    rootGeneration: Number(buf.readBigUInt64LE(SLOT_ROOT_GENERATION)),
    rootCrc: buf.readUInt32LE(SLOT_ROOT_CRC),
    rootMirror: Number(buf.readBigUInt64LE(SLOT_ROOT_LBA2)),
    deviceBlocks: Number(buf.readBigUInt64LE(SLOT_DEVICE_BLOCKS)),
    uuid: Buffer.from(buf.subarray(SLOT_UUID, SLOT_UUID + 16)),
    label: buf.subarray(SLOT_LABEL, SLOT_END).toString("utf8").replace(/\0+$/, ""),
    features,
    compression: buf.readUInt8(SLOT_COMPRESSION),
    compressed: {
      extents: Number(buf.readBigUInt64LE(SLOT_COMPRESSED_EXTENTS)),
      diskBlocks: Number(buf.readBigUInt64LE(SLOT_COMPRESSED_DISK)),
      logicalBlocks: Number(buf.readBigUInt64LE(SLOT_COMPRESSED_LOGICAL)),
    },
    reservedStartBlocks: 0,
    logHeadLba: (features & featureFsyncLog) !== 0n ? Number(buf.readBigUInt64LE(SLOT_LOG_HEAD)) : 0,
  };
  if ((features & featureSuperblockCopies) !== 0n) {
    const copyLba = Number(buf.readBigUInt64LE(SLOT_COPY_LBA));
    if (lba !== undefined && copyLba !== lba) return { ok: false, reason: `copy of LBA ${copyLba} found at LBA ${lba}` };
    sb.reservedStartBlocks = Number(buf.readBigUInt64LE(SLOT_RESERVED_START));
    if (sb.reservedStartBlocks < superblockCopyLbasMin || sb.reservedStartBlocks > reservedStartBlocksMax) {
      return { ok: false, reason: `${sb.reservedStartBlocks} reserved blocks at the start is out of range` };
    }
  }
  if (sb.compression > 1) return { ok: false, reason: `unknown default compression ${sb.compression}` };
  if (sb.compression !== 0 && (features & featureCompressLz4) === 0n) {
    return { ok: false, reason: "default compression is set but the lz4 feature is not" };
  }
  if (sb.deviceBlocks < deviceBlocksMin) return { ok: false, reason: `volume of ${sb.deviceBlocks} blocks is too small` };
  if (sb.rootLba < Math.max(superblockSlotLbas.length, sb.reservedStartBlocks) || sb.rootLba >= sb.deviceBlocks) {
    return { ok: false, reason: `root tree LBA ${sb.rootLba} is outside the volume` };
  }
  if ((features & featureFsyncLog) !== 0n && (sb.logHeadLba < Math.max(superblockSlotLbas.length, sb.reservedStartBlocks) || sb.logHeadLba >= sb.deviceBlocks)) {
    return { ok: false, reason: `fsync log head ${sb.logHeadLba} is outside the volume` };
  }
  if (sb.rootMirror !== 0 && (sb.rootMirror < Math.max(superblockSlotLbas.length, sb.reservedStartBlocks) || sb.rootMirror >= sb.deviceBlocks)) {
    return { ok: false, reason: `root tree's second LBA ${sb.rootMirror} is outside the volume` };
  }
  if (sb.rootLevel >= treeDepthMax) return { ok: false, reason: `root tree level ${sb.rootLevel} is too deep` };
  if (sb.rootGeneration > sb.generation) {
    return { ok: false, reason: `root tree's root is generation ${sb.rootGeneration}, newer than the superblock's ${sb.generation}` };
  }
  // Last, so that a slot failing only this is known to be a whole superblock of a longer volume.
  if (sb.deviceBlocks > deviceBlocks) {
    return {
      ok: false,
      reason: `volume is ${sb.deviceBlocks} blocks but the device has only ${deviceBlocks} (truncated image?)`,
      truncated: { generation: sb.generation, volumeBlocks: sb.deviceBlocks, dupMetadata: (sb.features & featureDupMetadata) !== 0n },
    };
  }
  return { ok: true, superblock: sb };
}
