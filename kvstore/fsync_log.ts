/**
 * The fsync log: a chain of state records that lets an fsync cost one flush
 * instead of a full commit (two flushes and a superblock).
 *
 * A logged fsync does what a commit does up to the superblock: the fixpoint,
 * then every dirty node written to new blocks (copy on write, as always). It
 * then writes ONE log record, whose state is what that commit's superblock
 * would have said, and flushes ONCE. The committed superblock is not
 * touched: it names the block reserved for the first record (`logHeadLba`),
 * and each record names the block reserved for the next, so the records
 * form a chain from the superblock. The next full commit makes the chain
 * obsolete: its superblock has a newer generation than the one the records
 * extend, and the chain's blocks (but the head, which stays reserved) are
 * freed by it.
 *
 * Record layout (one block, integers little-endian):
 *
 *   offset  size  field
 *   ------  ----  -----------------------------------------------
 *        0     8  magic "GROVELOG"
 *        8     4  crc32c of bytes [12, 4096)
 *       12     4  extent count
 *       16     8  base: the committed generation this chain extends
 *       24     4  sequence number in the chain (1 = the head)
 *       28     4  (zero)
 *       32     8  this record's own LBA (catches misdirected writes)
 *       40     8  LBA reserved for the next record
 *       48     8  state: generation
 *       56     8  state: root tree root LBA
 *       64     8  state: root tree item count
 *       72     1  state: root tree level
 *       73     7  (zero)
 *       80     8  state: root tree root's generation
 *       88     4  state: root tree root's crc32c
 *       92     4  (zero)
 *       96     8  state: incompatible feature flags
 *      104     8  state: compressed data extents: count
 *      112     8  state: compressed data extents: blocks on disk
 *      120     8  state: compressed data extents: blocks they decompress to
 *      128     8  state: root tree root's second LBA (0 = none; duplicate metadata)
 *      136  16*n  extents written since the previous durable point:
 *                   u64 LBA, u32 blocks, u32 crc32c of those blocks in order
 *
 * Invariants, and why replay is safe:
 * - The state of record j names only blocks written by commits, by records
 *   1..j, and by record j's own fsync; allocation in a transaction draws only
 *   from space free in the previous durable state, so record j's writes never
 *   touch a block that state j-1 needs.
 * - Record j is written only after record j-1's flush returned. So a record
 *   that passes its checks proves that every write before its own fsync is
 *   durable; only its own extents (written in the same flush as itself) can
 *   be missing. Replay takes the last record that passes its checks, and
 *   verifies its extents; if one fails, the record before it is the state.
 * - Every block of the chain (head, records, the next reserved block) is
 *   allocated in the state it belongs to: the checkers count them as in use.
 * - A record of another chain (an older base, a sequence number out of
 *   place, a torn or stale block) fails its checks and ends the chain.
 * - Replay at a read-write open commits the recovered state, which makes the
 *   chain obsolete; a crash during that commit leaves the old superblock and
 *   the same chain, which replays again. A read-only open shows the
 *   recovered state without writing anything.
 */
import { crc32c } from "./checksum.js";
import { blockSizeBytes, firstAllocatableLba, treeDepthMax } from "./constants.js";
import type { BlockDevice } from "./device.js";
import { assert } from "./errors.js";
import { type Superblock, featureFsyncLog, featuresIncompatKnown } from "./superblock.js";

export const logMagic = Buffer.from("GROVELOG", "latin1");

const LOG_MAGIC = 0;
const LOG_CRC = LOG_MAGIC + 8;
const LOG_EXTENT_COUNT = LOG_CRC + 4;
const LOG_BASE = LOG_EXTENT_COUNT + 4;
const LOG_SEQUENCE = LOG_BASE + 8;
const LOG_OWN_LBA = LOG_SEQUENCE + 8;
const LOG_NEXT_LBA = LOG_OWN_LBA + 8;
const LOG_GENERATION = LOG_NEXT_LBA + 8;
const LOG_ROOT_LBA = LOG_GENERATION + 8;
const LOG_ROOT_COUNT = LOG_ROOT_LBA + 8;
const LOG_ROOT_LEVEL = LOG_ROOT_COUNT + 8;
const LOG_ROOT_GENERATION = LOG_ROOT_LEVEL + 8;
const LOG_ROOT_CRC = LOG_ROOT_GENERATION + 8;
const LOG_FEATURES = LOG_ROOT_CRC + 8;
const LOG_COMPRESSED_EXTENTS = LOG_FEATURES + 8;
const LOG_COMPRESSED_DISK = LOG_COMPRESSED_EXTENTS + 8;
const LOG_COMPRESSED_LOGICAL = LOG_COMPRESSED_DISK + 8;
const LOG_ROOT_MIRROR = LOG_COMPRESSED_LOGICAL + 8;
const LOG_EXTENTS = LOG_ROOT_MIRROR + 8;
const EXTENT_LBA = 0;
const EXTENT_BLOCKS = EXTENT_LBA + 8;
const EXTENT_CRC = EXTENT_BLOCKS + 4;
const extentBytes = EXTENT_CRC + 4;

/** Extents one record lists; an fsync that wrote more falls back to a full commit. */
export const logExtentsMax = Math.floor((blockSizeBytes - LOG_EXTENTS) / extentBytes);
/** Blocks one listed extent covers at most (a gathered write of at most this many). */
export const logExtentBlocksMax = 1024;
/** Records in one chain; the next fsync after that is a full commit (which empties the chain). */
export const logRecordsMax = 1024;

/** One record, decoded. `state` is the superblock the fsync's commit would have written. */
export interface LogRecord {
  base: number;
  sequence: number;
  lba: number;
  nextLba: number;
  state: Superblock;
  /** Flat triples: LBA, blocks, crc32c. */
  extents: number[];
}

/**
 * Extents written since the last durable point, in the order written, kept
 * as flat triples (LBA, blocks, crc); an extent that continues the last one
 * extends it (the crc continues over the stream).
 */
export class WrittenExtents {
  private list: number[] = [];

  get count(): number {
    return this.list.length / 3;
  }

  add(lba: number, blocks: readonly Uint8Array[]): void {
    const n = this.list.length;
    let crc = 0;
    let at = lba;
    let count = 0;
    if (n > 0 && this.list[n - 3]! + this.list[n - 2]! === lba && this.list[n - 2]! + blocks.length <= logExtentBlocksMax) {
      crc = this.list[n - 1]!;
      count = this.list[n - 2]!;
      at = this.list[n - 3]!;
      this.list.length = n - 3;
    }
    for (const block of blocks) {
      if (count === logExtentBlocksMax) {
        this.list.push(at, count, crc);
        at += count;
        count = 0;
        crc = 0;
      }
      assert(block.length === blockSizeBytes, "a written extent is whole blocks");
      crc = crc32c(block, crc);
      count++;
    }
    if (count > 0) this.list.push(at, count, crc);
  }

  triples(): number[] {
    return this.list;
  }

  clear(): void {
    this.list = [];
  }
}

export function encodeLogRecord(record: LogRecord): Buffer {
  const count = record.extents.length / 3;
  assert(count <= logExtentsMax, "a record's extents fit its block");
  const s = record.state;
  const buf = Buffer.alloc(blockSizeBytes);
  logMagic.copy(buf, LOG_MAGIC);
  buf.writeUInt32LE(count, LOG_EXTENT_COUNT);
  buf.writeBigUInt64LE(BigInt(record.base), LOG_BASE);
  buf.writeUInt32LE(record.sequence, LOG_SEQUENCE);
  buf.writeBigUInt64LE(BigInt(record.lba), LOG_OWN_LBA);
  buf.writeBigUInt64LE(BigInt(record.nextLba), LOG_NEXT_LBA);
  buf.writeBigUInt64LE(BigInt(s.generation), LOG_GENERATION);
  buf.writeBigUInt64LE(BigInt(s.rootLba), LOG_ROOT_LBA);
  buf.writeBigUInt64LE(BigInt(s.rootCount), LOG_ROOT_COUNT);
  buf.writeUInt8(s.rootLevel, LOG_ROOT_LEVEL);
  buf.writeBigUInt64LE(BigInt(s.rootGeneration), LOG_ROOT_GENERATION);
  buf.writeUInt32LE(s.rootCrc >>> 0, LOG_ROOT_CRC);
  buf.writeBigUInt64LE(BigInt(s.rootMirror), LOG_ROOT_MIRROR);
  buf.writeBigUInt64LE(s.features, LOG_FEATURES);
  buf.writeBigUInt64LE(BigInt(s.compressed.extents), LOG_COMPRESSED_EXTENTS);
  buf.writeBigUInt64LE(BigInt(s.compressed.diskBlocks), LOG_COMPRESSED_DISK);
  buf.writeBigUInt64LE(BigInt(s.compressed.logicalBlocks), LOG_COMPRESSED_LOGICAL);
  for (let i = 0; i < count; i++) {
    const at = LOG_EXTENTS + i * extentBytes;
    buf.writeBigUInt64LE(BigInt(record.extents[3 * i]!), at + EXTENT_LBA);
    buf.writeUInt32LE(record.extents[3 * i + 1]!, at + EXTENT_BLOCKS);
    buf.writeUInt32LE(record.extents[3 * i + 2]! >>> 0, at + EXTENT_CRC);
  }
  buf.writeUInt32LE(crc32c(buf.subarray(LOG_EXTENT_COUNT)), LOG_CRC);
  return buf;
}

export type RecordDecode = { ok: true; record: LogRecord } | { ok: false; reason: string };

/**
 * Decodes the record expected at `lba` as number `sequence` of the chain
 * extending `base` (whose superblock gives the fields a record does not
 * carry). Anything else is a reason: the end of the chain.
 */
export function decodeLogRecord(buf: Buffer, lba: number, sequence: number, base: Superblock): RecordDecode {
  assert(buf.length === blockSizeBytes, "a record is one block");
  if (!buf.subarray(LOG_MAGIC, LOG_MAGIC + 8).equals(logMagic)) return { ok: false, reason: "no log magic" };
  if (buf.readUInt32LE(LOG_CRC) !== crc32c(buf.subarray(LOG_EXTENT_COUNT))) return { ok: false, reason: "checksum mismatch" };
  const recordBase = Number(buf.readBigUInt64LE(LOG_BASE));
  if (recordBase !== base.generation) return { ok: false, reason: `extends generation ${recordBase}, not ${base.generation} (stale)` };
  const got = buf.readUInt32LE(LOG_SEQUENCE);
  if (got !== sequence) return { ok: false, reason: `is record ${got} of its chain, not ${sequence}` };
  const own = Number(buf.readBigUInt64LE(LOG_OWN_LBA));
  if (own !== lba) return { ok: false, reason: `was written for block ${own}` };
  const count = buf.readUInt32LE(LOG_EXTENT_COUNT);
  if (count > logExtentsMax) return { ok: false, reason: `lists ${count} extents` };
  const blocks = base.deviceBlocks;
  const state: Superblock = {
    ...base,
    generation: Number(buf.readBigUInt64LE(LOG_GENERATION)),
    rootLba: Number(buf.readBigUInt64LE(LOG_ROOT_LBA)),
    rootCount: Number(buf.readBigUInt64LE(LOG_ROOT_COUNT)),
    rootLevel: buf.readUInt8(LOG_ROOT_LEVEL),
    rootGeneration: Number(buf.readBigUInt64LE(LOG_ROOT_GENERATION)),
    rootCrc: buf.readUInt32LE(LOG_ROOT_CRC),
    rootMirror: Number(buf.readBigUInt64LE(LOG_ROOT_MIRROR)),
    features: buf.readBigUInt64LE(LOG_FEATURES),
    compressed: {
      extents: Number(buf.readBigUInt64LE(LOG_COMPRESSED_EXTENTS)),
      diskBlocks: Number(buf.readBigUInt64LE(LOG_COMPRESSED_DISK)),
      logicalBlocks: Number(buf.readBigUInt64LE(LOG_COMPRESSED_LOGICAL)),
    },
  };
  const nextLba = Number(buf.readBigUInt64LE(LOG_NEXT_LBA));
  if (state.generation <= base.generation) return { ok: false, reason: `holds generation ${state.generation}` };
  if ((state.features & ~featuresIncompatKnown) !== 0n || (state.features & featureFsyncLog) === 0n) {
    return { ok: false, reason: `holds features 0x${state.features.toString(16)}` };
  }
  if (state.rootLba < firstAllocatableLba || state.rootLba >= blocks) return { ok: false, reason: `names root ${state.rootLba}` };
  if (state.rootMirror !== 0 && (state.rootMirror < firstAllocatableLba || state.rootMirror >= blocks)) return { ok: false, reason: `names root copy ${state.rootMirror}` };
  if (state.rootLevel >= treeDepthMax || state.rootGeneration > state.generation) return { ok: false, reason: "names a bad root" };
  if (nextLba < firstAllocatableLba || nextLba >= blocks) return { ok: false, reason: `reserves block ${nextLba}` };
  const extents: number[] = [];
  for (let i = 0; i < count; i++) {
    const at = LOG_EXTENTS + i * extentBytes;
    const from = Number(buf.readBigUInt64LE(at + EXTENT_LBA));
    const n = buf.readUInt32LE(at + EXTENT_BLOCKS);
    if (n === 0 || n > logExtentBlocksMax || from < firstAllocatableLba || from + n > blocks) {
      return { ok: false, reason: `lists extent ${from}+${n}` };
    }
    extents.push(from, n, buf.readUInt32LE(at + EXTENT_CRC));
  }
  return { ok: true, record: { base: base.generation, sequence, lba, nextLba, state, extents } };
}

/** What the log of a committed superblock holds, and the state it recovers. */
export interface LogReplay {
  /** The state to open: the last record that passed every check, or the superblock itself. */
  state: Superblock;
  /** Blocks of the records applied, head first. */
  chain: number[];
  /** The block reserved for the next record (the head when the chain is empty; 0 without a log). */
  nextLba: number;
  /** Records that passed their checks, including one whose extents did not. */
  validRecords: number;
  /** Why the chain ends where it does, for fsck (a torn or stale tail is normal after a crash). */
  end: string;
}

/** Whether every extent of a record reads back as written. */
function extentsIntact(device: BlockDevice, extents: number[]): string | null {
  for (let i = 0; i < extents.length; i += 3) {
    const lba = extents[i]!;
    const blocks = extents[i + 1]!;
    const buf = Buffer.allocUnsafe(blocks * blockSizeBytes);
    device.read(lba, buf);
    let crc = 0;
    for (let k = 0; k < blocks; k++) crc = crc32c(buf.subarray(k * blockSizeBytes, (k + 1) * blockSizeBytes), crc);
    if (crc !== extents[i + 2]) return `its extent ${lba}+${blocks} did not reach the disk`;
  }
  return null;
}

/**
 * Follows the chain from `sb`'s head and returns the state to open (bounded
 * by `logRecordsMax`). Reads only: replay is the caller's commit.
 */
export function readLog(device: BlockDevice, sb: Superblock): LogReplay {
  if ((sb.features & featureFsyncLog) === 0n) return { state: sb, chain: [], nextLba: 0, validRecords: 0, end: "no fsync log" };
  const records: LogRecord[] = [];
  let lba = sb.logHeadLba;
  let end = "";
  const buf = Buffer.allocUnsafe(blockSizeBytes);
  for (let sequence = 1; ; sequence++) {
    if (sequence > logRecordsMax) {
      end = `the chain is longer than ${logRecordsMax} records`;
      break;
    }
    device.read(lba, buf);
    const decoded = decodeLogRecord(buf, lba, sequence, sb);
    if (!decoded.ok) {
      end = `record ${sequence} at block ${lba} ${decoded.reason}`;
      break;
    }
    records.push(decoded.record);
    lba = decoded.record.nextLba;
  }
  const validRecords = records.length;
  const last = records[records.length - 1];
  if (last !== undefined) {
    const missing = extentsIntact(device, last.extents);
    if (missing !== null) {
      end = `record ${last.sequence} at block ${last.lba}: ${missing} (its fsync did not complete)`;
      records.pop();
    }
  }
  const applied = records[records.length - 1];
  return {
    state: applied === undefined ? sb : applied.state,
    chain: records.map((r) => r.lba),
    nextLba: applied === undefined ? sb.logHeadLba : applied.nextLba,
    validRecords,
    end,
  };
}

/** Every block the log takes in the recovered state: the head, the records applied, the next reserved block. */
export function logBlocksInUse(sb: Superblock, replay: LogReplay): number[] {
  if (sb.logHeadLba === 0) return [];
  const blocks = new Set<number>([sb.logHeadLba, ...replay.chain, replay.nextLba]);
  return [...blocks];
}
