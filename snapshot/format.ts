/**
 * The snapshot layer's bytes: the refcount tree and the subvolume table.
 *
 * Refcount tree (tree 4): only counts of 2 or more are stored; every other
 * allocated block has one reference implicitly. A data extent is counted as
 * a whole, under its first block.
 *
 *   key   [first LBA u64 BE]
 *   value offset  size  field
 *         ------  ----  ------------------------------
 *              0     8  blocks in the extent (1 for a node)
 *              8     4  references (≥ 2)
 *
 * Subvolume table (tree 5):
 *
 *   [0x00]                   counters: next subvolume id (u64 LE)
 *   [0x01][name]             a live subvolume's record
 *   [0x02][id u64 BE]        a subvolume being deleted: its record, with progress
 *   [0x03][id u64 BE]        a received snapshot: the identity of the snapshot
 *                            it was received from (see `encodeReceived`)
 *
 * Subvolume record (little-endian):
 *
 *   offset  size  field
 *   ------  ----  -----------------------------------------------
 *        0     8  id: the subvolume's inode tree; the root tree holds its
 *                 root pointer (the one place any tree's root is kept)
 *        8     8  parent subvolume id (0: made by mkfs)
 *       16     8  generation that created it
 *       24     8  creation time, ns since the epoch (signed)
 *       32     8  last snapshot generation: a node of this subvolume written
 *                 after it is not shared (the fast path)
 *       40     1  flags (bit 0: read-only)
 *       41     1  name length n (1..255)
 *       42     2  deletion progress key length p (0: from the start)
 *       44     n  name (UTF-8)
 *     44+n     p  deletion progress: every key below it has been released
 */
import { CorruptionError, GroveError, assert } from "../kvstore/index.js";

export const treeIdRefcounts = 4;
export const treeIdSubvolumes = 5;

// ---- refcounts ------------------------------------------------------------------

const R_BLOCKS = 0;
const R_COUNT = R_BLOCKS + 8;
const refcountValueBytes = R_COUNT + 4;

export interface RefcountEntry {
  blocks: number;
  count: number;
}

export function refcountKey(lba: number): Buffer {
  const key = Buffer.allocUnsafe(8);
  key.writeBigUInt64BE(BigInt(lba), 0);
  return key;
}

export function refcountKeyLba(key: Buffer): number {
  if (key.length !== 8) throw new CorruptionError("EIO_refcount", `refcount key of ${key.length} bytes`);
  return Number(key.readBigUInt64BE(0));
}

export function encodeRefcount(entry: RefcountEntry): Buffer {
  const value = Buffer.alloc(refcountValueBytes);
  value.writeBigUInt64LE(BigInt(entry.blocks), R_BLOCKS);
  value.writeUInt32LE(entry.count, R_COUNT);
  return value;
}

export function decodeRefcount(lba: number, value: Buffer): RefcountEntry {
  if (value.length !== refcountValueBytes) throw new CorruptionError("EIO_refcount", `refcount of block ${lba} is malformed`);
  const entry = { blocks: Number(value.readBigUInt64LE(R_BLOCKS)), count: value.readUInt32LE(R_COUNT) };
  if (entry.count < 2 || entry.blocks < 1) {
    throw new CorruptionError("EIO_refcount", `refcount of block ${lba} is ${entry.count} over ${entry.blocks} blocks`);
  }
  return entry;
}

// ---- subvolume table ------------------------------------------------------------

export const subvolumeNameBytesMax = 255;
export const subvolumeIdMax = 2 ** 20;
export const subvolumeCountersKey = Buffer.from([0x00]);

// ---- per-object tree owners ------------------------------------------------------

/**
 * The owner id in the nodes of a per-object tree (a directory's entries, a
 * file's extents) is one of kvstore's `tree × 2^32 + object` family, whose
 * ids all stay below 2^53 (JS numbers are exact to there) and match across
 * subvolumes by `object mod 2^32` (kvstore's ownerMatches):
 *
 *   object < 2^32          subvolume × 2^32 + object       (every image; subvolume ≤ subvolumeIdMax = 2^20)
 *   2^32 ≤ object < 2^52   (subvolumeIdMax + ⌊object / 2^32⌋) × 2^32 + object mod 2^32   (feature bit 7)
 *
 * The high word of the first form is a subvolume id (256 … 2^20), that of
 * the second lies in 2^20 + 1 … 2^21 - 1: the two never meet, and each is
 * one-to-one, so no two objects' trees share an owner within a subvolume.
 * A wide owner names no subvolume (its object has one owner in every
 * subvolume, so nodes shared by a snapshot still match); sharing then
 * asks `ownerSubvolume`, which answers null, and takes the volume-wide
 * fast path (refcounts.ts).
 */
const objectOwnerWord = 2 ** 32;
/** The largest object number an owner can encode: ⌊object / 2^32⌋ ≤ 2^20 - 1 keeps the id below 2^53. */
export const objectOwnedMax = subvolumeIdMax * objectOwnerWord - 1;

export function objectTreeOwner(subvolume: number, object: number): number {
  assert(Number.isSafeInteger(object), "an object number is an integer");
  assert(object >= 0, "an object number is not negative");
  assert(object <= objectOwnedMax, "an object number fits an owner id");
  assert(subvolume >= 256, "a per-object tree belongs to a subvolume tree");
  assert(subvolume <= subvolumeIdMax, "a subvolume id fits an owner id");
  if (object < objectOwnerWord) return subvolume * objectOwnerWord + object;
  return (subvolumeIdMax + Math.floor(object / objectOwnerWord)) * objectOwnerWord + (object % objectOwnerWord);
}

/** Whether a tree id is a per-object tree's (kvstore's family at or above 2^32). */
export function isObjectTree(treeId: number): boolean {
  return treeId >= objectOwnerWord;
}

/** The object a per-object tree's owner id names. */
export function ownerObject(treeId: number): number {
  const high = Math.floor(treeId / objectOwnerWord);
  const low = treeId % objectOwnerWord;
  return high > subvolumeIdMax ? (high - subvolumeIdMax) * objectOwnerWord + low : low;
}

/** The subvolume a tree id belongs to: itself, a per-object tree's subvolume, or null for a wide owner (which names none). */
export function ownerSubvolume(treeId: number): number | null {
  if (!isObjectTree(treeId)) return treeId;
  const high = Math.floor(treeId / objectOwnerWord);
  return high > subvolumeIdMax ? null : high;
}
const livePrefix = 0x01;
const deletingPrefix = 0x02;
const receivedPrefix = 0x03;

const S_ID = 0;
const S_PARENT = S_ID + 8;
const S_GENERATION = S_PARENT + 8;
const S_CREATED = S_GENERATION + 8;
const S_LAST_SNAPSHOT = S_CREATED + 8;
const S_FLAGS = S_LAST_SNAPSHOT + 8;
const S_NAME_LENGTH = S_FLAGS + 1;
const S_PROGRESS_LENGTH = S_NAME_LENGTH + 1;
const S_NAME = S_PROGRESS_LENGTH + 2;

const flagReadOnly = 1;

export interface SubvolumeRecord {
  id: number;
  parent: number;
  generation: number;
  createdNs: bigint;
  lastSnapshotGeneration: number;
  readOnly: boolean;
  name: string;
  /** Deletion progress (deleting records only): keys below it are released. */
  progress: Buffer;
}

export function liveKey(name: string): Buffer {
  return Buffer.concat([Buffer.from([livePrefix]), Buffer.from(name, "utf8")]);
}

export function deletingKey(id: number): Buffer {
  const key = Buffer.alloc(9);
  key[0] = deletingPrefix;
  key.writeBigUInt64BE(BigInt(id), 1);
  return key;
}

export const receivedRange = { from: Buffer.from([receivedPrefix]), to: Buffer.from([receivedPrefix + 1]) };

export function receivedKey(id: number): Buffer {
  const key = Buffer.alloc(9);
  key[0] = receivedPrefix;
  key.writeBigUInt64BE(BigInt(id), 1);
  return key;
}

export function receivedKeyId(key: Buffer): number {
  if (key.length !== 9) throw new CorruptionError("EIO_subvolume_received", `received-identity key of ${key.length} bytes`);
  return Number(key.readBigUInt64BE(1));
}

/**
 * Received identity (little-endian): where a subvolume made by `grovefs
 * receive` came from, so that a later incremental stream can name it as
 * its parent (the receiver checks it; the sender's word is not trusted).
 *
 *   offset  size  field
 *   ------  ----  -----------------------------------------------
 *        0    16  the source volume's uuid
 *       16     8  the source snapshot's subvolume id
 *       24     8  the generation that created the source snapshot
 *
 * While the receive runs (the subvolume is still hidden) three fields
 * follow, the progress a resumed stream must continue from:
 *
 *       32     8  records of the stream applied (the header included)
 *       40     4  crc32c of the stream's bytes up to there
 *       44     8  bytes of the stream up to there
 */
const RCV_UUID = 0;
const RCV_ID = RCV_UUID + 16;
const RCV_GENERATION = RCV_ID + 8;
const receivedValueBytes = RCV_GENERATION + 8;
const RCV_RECORDS = receivedValueBytes;
const RCV_CRC = RCV_RECORDS + 8;
const RCV_BYTES = RCV_CRC + 4;
const receivingValueBytes = RCV_BYTES + 8;

export interface ReceiveProgress {
  records: number;
  crc: number;
  bytes: number;
}

export interface ReceivedIdentity {
  uuid: Buffer;
  id: number;
  generation: number;
  /** Set while the receive runs. */
  progress?: ReceiveProgress;
}

export function encodeReceived(identity: ReceivedIdentity): Buffer {
  const value = Buffer.alloc(identity.progress === undefined ? receivedValueBytes : receivingValueBytes);
  identity.uuid.copy(value, RCV_UUID, 0, 16);
  value.writeBigUInt64LE(BigInt(identity.id), RCV_ID);
  value.writeBigUInt64LE(BigInt(identity.generation), RCV_GENERATION);
  if (identity.progress !== undefined) {
    value.writeBigUInt64LE(BigInt(identity.progress.records), RCV_RECORDS);
    value.writeUInt32LE(identity.progress.crc >>> 0, RCV_CRC);
    value.writeBigUInt64LE(BigInt(identity.progress.bytes), RCV_BYTES);
  }
  return value;
}

export function decodeReceived(value: Buffer): ReceivedIdentity {
  if (value.length !== receivedValueBytes && value.length !== receivingValueBytes) {
    throw new CorruptionError("EIO_subvolume_received", "a received identity is malformed");
  }
  const identity: ReceivedIdentity = {
    uuid: Buffer.from(value.subarray(RCV_UUID, RCV_UUID + 16)),
    id: Number(value.readBigUInt64LE(RCV_ID)),
    generation: Number(value.readBigUInt64LE(RCV_GENERATION)),
  };
  if (value.length === receivingValueBytes) {
    identity.progress = {
      records: Number(value.readBigUInt64LE(RCV_RECORDS)),
      crc: value.readUInt32LE(RCV_CRC),
      bytes: Number(value.readBigUInt64LE(RCV_BYTES)),
    };
  }
  return identity;
}

export const liveRange = { from: Buffer.from([livePrefix]), to: Buffer.from([livePrefix + 1]) };
export const deletingRange = { from: Buffer.from([deletingPrefix]), to: Buffer.from([deletingPrefix + 1]) };

export function encodeSubvolume(record: SubvolumeRecord): Buffer {
  const name = Buffer.from(record.name, "utf8");
  const value = Buffer.alloc(S_NAME + name.length + record.progress.length);
  value.writeBigUInt64LE(BigInt(record.id), S_ID);
  value.writeBigUInt64LE(BigInt(record.parent), S_PARENT);
  value.writeBigUInt64LE(BigInt(record.generation), S_GENERATION);
  value.writeBigInt64LE(record.createdNs, S_CREATED);
  value.writeBigUInt64LE(BigInt(record.lastSnapshotGeneration), S_LAST_SNAPSHOT);
  value.writeUInt8(record.readOnly ? flagReadOnly : 0, S_FLAGS);
  value.writeUInt8(name.length, S_NAME_LENGTH);
  value.writeUInt16LE(record.progress.length, S_PROGRESS_LENGTH);
  name.copy(value, S_NAME);
  record.progress.copy(value, S_NAME + name.length);
  return value;
}

export function decodeSubvolume(value: Buffer): SubvolumeRecord {
  const bad = (why: string): never => {
    throw new CorruptionError("EIO_subvolume", `corrupt subvolume record: ${why}`);
  };
  if (value.length < S_NAME) bad(`length ${value.length}`);
  const nameLength = value.readUInt8(S_NAME_LENGTH);
  const progressLength = value.readUInt16LE(S_PROGRESS_LENGTH);
  if (value.length !== S_NAME + nameLength + progressLength || nameLength === 0) bad("lengths");
  const flags = value.readUInt8(S_FLAGS);
  if ((flags & ~flagReadOnly) !== 0) bad(`unknown flags ${flags}`);
  const record: SubvolumeRecord = {
    id: Number(value.readBigUInt64LE(S_ID)),
    parent: Number(value.readBigUInt64LE(S_PARENT)),
    generation: Number(value.readBigUInt64LE(S_GENERATION)),
    createdNs: value.readBigInt64LE(S_CREATED),
    lastSnapshotGeneration: Number(value.readBigUInt64LE(S_LAST_SNAPSHOT)),
    readOnly: (flags & flagReadOnly) !== 0,
    name: value.toString("utf8", S_NAME, S_NAME + nameLength),
    progress: Buffer.from(value.subarray(S_NAME + nameLength)),
  };
  if (record.id < 256 || record.id > subvolumeIdMax) bad(`id ${record.id}`);
  return record;
}

export function encodeCounters(nextId: number): Buffer {
  const value = Buffer.alloc(8);
  value.writeBigUInt64LE(BigInt(nextId), 0);
  return value;
}

export function decodeCounters(value: Buffer): number {
  if (value.length !== 8) throw new CorruptionError("EIO_subvolume", "corrupt subvolume counters");
  return Number(value.readBigUInt64LE(0));
}

/**
 * A subvolume name is a directory name under /.snapshots: 1–255 bytes, no
 * "/", NUL or other control character (names are printed in tables and
 * one-line errors), not "." or "..".
 */
export function validateSubvolumeName(name: string): void {
  const bytes = Buffer.byteLength(name, "utf8");
  const bad = (why: string): never => {
    throw new GroveError("EINVAL", "EINVAL_subvolume_name", `invalid subvolume name ${JSON.stringify(name)}: ${why}`);
  };
  if (typeof name !== "string" || bytes === 0) bad("it is empty");
  if (bytes > subvolumeNameBytesMax) {
    throw new GroveError("ENAMETOOLONG", "ENAMETOOLONG_subvolume", `subvolume name exceeds ${subvolumeNameBytesMax} bytes`);
  }
  if (name.includes("/")) bad('it contains "/"');
  if (name.includes("\0")) bad("it contains NUL");
  // eslint-disable-next-line no-control-regex
  if (/[\x01-\x1f\x7f]/.test(name)) bad("it contains a control character");
  if (name.includes("\ufffd")) bad("it is not valid UTF-8");
  if (name === "." || name === "..") bad("it is reserved");
}
