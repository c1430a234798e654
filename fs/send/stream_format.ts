/**
 * The send stream: what `grovefs send` writes and `grovefs receive` reads,
 * defined once here (as btrfs's send.h and ZFS's DRR records). Nothing
 * outside this module touches its offsets. Version 3; version 2 streams (no
 * stored compressed extents) and version 1 streams (nor preallocated
 * ranges, attrs without crtime) are still read.
 *
 * A stream is a sequence of records: a header first, the end record last.
 * Records name inodes by number and file data by byte offset, never by path
 * (the receiver keeps the sender's inode numbers). Every record carries a
 * crc32c of its own bytes; the end record carries the number of records
 * before it and a crc32c of every byte before it, so a truncated, reordered
 * or spliced stream is refused.
 *
 * Record (integers little-endian):
 *
 *   offset  size  field
 *   ------  ----  -----------------------------------------------
 *        0     2  type (RecordType)
 *        2     2  flags (per type)
 *        4     4  payload length n (at most recordPayloadBytesMax)
 *        8     n  payload
 *      8+n     4  crc32c of bytes [0, 8+n)
 *
 * Payloads:
 *
 *   header     0   8  magic "GROVSEND"
 *              8   2  version (streamVersion)
 *             10  16  snapshot identity: source volume uuid
 *             26   8                     subvolume id
 *             34   8                     generation that created it
 *             42  16  parent identity (all zero in a full stream): uuid
 *             58   8                     subvolume id
 *             66   8                     generation
 *             74   8  the source's next inode number
 *             82   2  snapshot name length m
 *             84   m  snapshot name (UTF-8)
 *             flags bit 0: incremental
 *   inode      0   8  ino: a new inode (created, under a temporary name)
 *              8   4  mode (type and permission bits)
 *             12   4  rdev
 *             16   -  symlink target (symlinks only)
 *   unlink     0   8  parent directory ino
 *              8   8  child ino the name must hold (checked)
 *             16   -  name
 *             flags bit 0: keep (the child lives on under other names: it
 *             is moved to a temporary name instead); bit 1: rmdir
 *   link       0   8  parent directory ino
 *              8   8  child ino
 *             16   -  name
 *   write      0   8  ino
 *              8   8  byte offset
 *             16   -  data
 *   hole       0   8  ino
 *              8   8  byte offset
 *             16   8  length in bytes (holes stay holes)
 *   share      0   8  ino
 *              8   8  byte offset
 *             16   8  length in bytes
 *             24   8  source ino
 *             32   8  source byte offset
 *             flags bit 0: from the parent snapshot (else from this stream)
 *   truncate   0   8  ino
 *              8   8  size in bytes
 *   xattr      0   8  ino
 *              8   2  name length k
 *             10   k  name
 *           10+k   -  value
 *   xattr-rm   0   8  ino
 *              8   -  name
 *   attr       0   8  ino
 *              8   4  mode
 *             12   4  uid
 *             16   4  gid
 *             20   8  atime, ns (signed)
 *             28   8  mtime, ns
 *             36   8  ctime, ns
 *             44   8  crtime, ns (version 2; absent in version 1)
 *   prealloc   0   8  ino (version 2)
 *              8   8  byte offset
 *             16   8  length in bytes: preallocated (unwritten) blocks,
 *                     past the size too (fallocate KEEP_SIZE)
 *   stored     0   8  ino (version 3): an lz4 extent sent as it is stored
 *              8   8  byte offset (whole blocks) of the slice's first block
 *             16   1  compression (1: lz4, the only one)
 *             17   1  blocks of the unit the extent decompresses to (u)
 *             18   2  the slice: its first block in the unit
 *             20   2           its blocks
 *             22   2  disk blocks d the extent takes
 *             24  4d  crc32c of each disk block as stored (the last one
 *                     zero-padded to a whole block)
 *          24+4d   -  the compressed bytes (lz4-napi's block format: the
 *                     unit's length as u32 LE, then one lz4 block),
 *                     without the padding: d = ceil(their length / 4096)
 *             (the receiver checks the crcs against the bytes, the length
 *             prefix, and decompresses once to check the unit's length,
 *             before it stores the bytes and crcs as they came)
 *             flags bit 0: again: the extent went in an earlier stored
 *             record of this stream (this is another slice of it, which no
 *             record sent holds); in place of the bytes:
 *          24+4d   8  ino of a file that holds the extent here
 *          32+4d   8  byte offset of one of that file's blocks that holds it
 *             (the receiver finds the extent there, checks its unit size
 *             and crcs against these, and records this slice of it: the
 *             extent stays one, shared)
 *   resume     the header's payload, then:
 *           84+m   8  records of the original stream the receiver holds
 *           92+m   8  bytes of the original stream it holds
 *             (first record of a resumed stream, in place of the header:
 *             the records and bytes it names are not sent again, and the
 *             end record's count and checksum are those of the original
 *             stream, which the receiver continues from its own saved
 *             state, not from this record's word)
 *   end        0   8  records before this one (the header included)
 *              8   4  crc32c of every stream byte before this record
 *
 * Order: the header; inode records in ascending ino; unlinks (moves to
 * temporary names and unlinks of files, then rmdirs, deepest first);
 * links; per inode its xattrs, data (writes, stored extents, shares), its
 * size (truncate), then holes, then
 * preallocated ranges; attrs last (so a
 * directory's mtime is set after its entries changed); the end record.
 */
import { GroveError, blockSizeBytes, crc32c } from "../../kvstore/index.js";
import type { StoredExtent } from "../compression.js";

export const streamMagic = Buffer.from("GROVSEND", "ascii");
export const streamVersion = 3;
/** The versions a receiver reads (versions 1 and 2 came from an older grovefs). */
export const streamVersionsRead = [1, 2, 3];

const R_TYPE = 0;
const R_FLAGS = R_TYPE + 2;
const R_LENGTH = R_FLAGS + 2;
export const recordHeaderBytes = R_LENGTH + 4;
export const recordCrcBytes = 4;
/** A write record's data is at most 1 MiB; every payload fits in this. */
export const writeChunkBytesMax = 1024 * 1024;
export const recordPayloadBytesMax = writeChunkBytesMax + 64 * 1024;

export const enum RecordType {
  Header = 1,
  Inode = 2,
  Unlink = 3,
  Link = 4,
  Write = 5,
  Hole = 6,
  Share = 7,
  Truncate = 8,
  Xattr = 9,
  XattrRemove = 10,
  Attr = 11,
  Resume = 12,
  Prealloc = 13,
  Stored = 14,
  End = 15,
}

export const unlinkFlagKeep = 1;
export const unlinkFlagRmdir = 2;
export const shareFlagFromParent = 1;
export const headerFlagIncremental = 1;
/** The stored record's compression byte: lz4 (fs/compression.ts). */
export const storedCompressionLz4 = 1;
export const storedFlagAgain = 1;
const S_COMPRESSION = 16;
const S_UNIT_BLOCKS = S_COMPRESSION + 1;
const S_OFFSET = S_UNIT_BLOCKS + 1;
const S_BLOCKS = S_OFFSET + 2;
const S_DISK_BLOCKS = S_BLOCKS + 2;
const S_CRCS = S_DISK_BLOCKS + 2;

const H_MAGIC = 0;
const H_VERSION = H_MAGIC + 8;
const H_IDENTITY = H_VERSION + 2;
const identityBytes = 16 + 8 + 8;
const H_PARENT = H_IDENTITY + identityBytes;
const H_NEXT_INO = H_PARENT + identityBytes;
const H_NAME_LENGTH = H_NEXT_INO + 8;
const H_NAME = H_NAME_LENGTH + 2;

const A_MODE = 8;
const A_UID = A_MODE + 4;
const A_GID = A_UID + 4;
const A_ATIME = A_GID + 4;
const A_MTIME = A_ATIME + 8;
const A_CTIME = A_MTIME + 8;
const attrBytesV1 = A_CTIME + 8;
const A_CRTIME = attrBytesV1;
const attrBytes = A_CRTIME + 8;

const E_RECORDS = 0;
const E_CRC = E_RECORDS + 8;
const endBytes = E_CRC + 4;

export interface StreamIdentity {
  uuid: Buffer;
  id: number;
  generation: number;
}

export interface StreamHeader {
  name: string;
  identity: StreamIdentity;
  /** The parent snapshot of an incremental stream. */
  parent: StreamIdentity | undefined;
  nextIno: number;
}

export interface InodeAttrs {
  ino: number;
  mode: number;
  uid: number;
  gid: number;
  atimeNs: bigint;
  mtimeNs: bigint;
  ctimeNs: bigint;
  /** Absent in a version 1 stream. */
  crtimeNs?: bigint;
}

export type StreamRecord =
  | { type: RecordType.Header; header: StreamHeader }
  | { type: RecordType.Resume; header: StreamHeader; records: number; bytes: number }
  | { type: RecordType.Inode; ino: number; mode: number; rdev: number; target: Buffer }
  | { type: RecordType.Unlink; parent: number; child: number; name: Buffer; keep: boolean; rmdir: boolean }
  | { type: RecordType.Link; parent: number; child: number; name: Buffer }
  | { type: RecordType.Write; ino: number; offset: number; data: Buffer }
  | { type: RecordType.Hole; ino: number; offset: number; length: number }
  | { type: RecordType.Prealloc; ino: number; offset: number; length: number }
  | { type: RecordType.Stored; ino: number; offset: number; stored: StoredExtent; again?: { ino: number; offset: number } }
  | { type: RecordType.Share; ino: number; offset: number; length: number; srcIno: number; srcOffset: number; fromParent: boolean }
  | { type: RecordType.Truncate; ino: number; size: number }
  | { type: RecordType.Xattr; ino: number; name: string; value: Buffer }
  | { type: RecordType.XattrRemove; ino: number; name: string }
  | { type: RecordType.Attr; attrs: InodeAttrs }
  | { type: RecordType.End; records: number; crc: number };

/** A stream that cannot be what a sender wrote: says where. */
export function streamError(detail: string, message: string): GroveError {
  return new GroveError("EINVAL", `EINVAL_stream_${detail}`, message);
}

// ---- encoding ---------------------------------------------------------------------

function u64(value: number): Buffer {
  const b = Buffer.allocUnsafe(8);
  if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`stream field ${value} is not a count`);
  b.writeBigUInt64LE(BigInt(value), 0);
  return b;
}

function encodeIdentity(identity: StreamIdentity | undefined): Buffer {
  const b = Buffer.alloc(identityBytes);
  if (identity === undefined) return b;
  identity.uuid.copy(b, 0, 0, 16);
  b.writeBigUInt64LE(BigInt(identity.id), 16);
  b.writeBigUInt64LE(BigInt(identity.generation), 24);
  return b;
}

function payloadOf(record: StreamRecord, streamVersionOut: number): { flags: number; payload: Buffer } {
  switch (record.type) {
    case RecordType.Resume: {
      const { flags, payload } = payloadOf({ type: RecordType.Header, header: record.header }, streamVersionOut);
      return { flags, payload: Buffer.concat([payload, u64(record.records), u64(record.bytes)]) };
    }
    case RecordType.Header: {
      const h = record.header;
      const name = Buffer.from(h.name, "utf8");
      const version = Buffer.alloc(2);
      version.writeUInt16LE(streamVersionOut, 0);
      const nameLength = Buffer.alloc(2);
      nameLength.writeUInt16LE(name.length, 0);
      const payload = Buffer.concat([streamMagic, version, encodeIdentity(h.identity), encodeIdentity(h.parent), u64(h.nextIno), nameLength, name]);
      return { flags: h.parent === undefined ? 0 : headerFlagIncremental, payload };
    }
    case RecordType.Inode: {
      const fixed = Buffer.alloc(8);
      fixed.writeUInt32LE(record.mode >>> 0, 0);
      fixed.writeUInt32LE(record.rdev >>> 0, 4);
      return { flags: 0, payload: Buffer.concat([u64(record.ino), fixed, record.target]) };
    }
    case RecordType.Unlink:
      return {
        flags: (record.keep ? unlinkFlagKeep : 0) | (record.rmdir ? unlinkFlagRmdir : 0),
        payload: Buffer.concat([u64(record.parent), u64(record.child), record.name]),
      };
    case RecordType.Link:
      return { flags: 0, payload: Buffer.concat([u64(record.parent), u64(record.child), record.name]) };
    case RecordType.Write:
      return { flags: 0, payload: Buffer.concat([u64(record.ino), u64(record.offset), record.data]) };
    case RecordType.Hole:
      return { flags: 0, payload: Buffer.concat([u64(record.ino), u64(record.offset), u64(record.length)]) };
    case RecordType.Prealloc:
      if (streamVersionOut < 2) throw new RangeError("a version 1 stream has no preallocated ranges");
      return { flags: 0, payload: Buffer.concat([u64(record.ino), u64(record.offset), u64(record.length)]) };
    case RecordType.Stored: {
      if (streamVersionOut < 3) throw new RangeError("a version 1 or 2 stream has no stored extents");
      const st = record.stored;
      const fixed = Buffer.alloc(S_CRCS - S_COMPRESSION);
      fixed.writeUInt8(storedCompressionLz4, S_COMPRESSION - S_COMPRESSION);
      fixed.writeUInt8(st.unitBlocks, S_UNIT_BLOCKS - S_COMPRESSION);
      fixed.writeUInt16LE(st.offset, S_OFFSET - S_COMPRESSION);
      fixed.writeUInt16LE(st.blocks, S_BLOCKS - S_COMPRESSION);
      fixed.writeUInt16LE(st.crcs.length / 4, S_DISK_BLOCKS - S_COMPRESSION);
      if (record.again !== undefined) {
        return { flags: storedFlagAgain, payload: Buffer.concat([u64(record.ino), u64(record.offset), fixed, st.crcs, u64(record.again.ino), u64(record.again.offset)]) };
      }
      return { flags: 0, payload: Buffer.concat([u64(record.ino), u64(record.offset), fixed, st.crcs, st.data]) };
    }
    case RecordType.Share:
      return {
        flags: record.fromParent ? shareFlagFromParent : 0,
        payload: Buffer.concat([u64(record.ino), u64(record.offset), u64(record.length), u64(record.srcIno), u64(record.srcOffset)]),
      };
    case RecordType.Truncate:
      return { flags: 0, payload: Buffer.concat([u64(record.ino), u64(record.size)]) };
    case RecordType.Xattr: {
      const name = Buffer.from(record.name, "utf8");
      const length = Buffer.alloc(2);
      length.writeUInt16LE(name.length, 0);
      return { flags: 0, payload: Buffer.concat([u64(record.ino), length, name, record.value]) };
    }
    case RecordType.XattrRemove:
      return { flags: 0, payload: Buffer.concat([u64(record.ino), Buffer.from(record.name, "utf8")]) };
    case RecordType.Attr: {
      const a = record.attrs;
      const withCrtime = streamVersionOut >= 2 && a.crtimeNs !== undefined;
      const b = Buffer.alloc(withCrtime ? attrBytes : attrBytesV1);
      b.writeBigUInt64LE(BigInt(a.ino), 0);
      b.writeUInt32LE(a.mode >>> 0, A_MODE);
      b.writeUInt32LE(a.uid >>> 0, A_UID);
      b.writeUInt32LE(a.gid >>> 0, A_GID);
      b.writeBigInt64LE(a.atimeNs, A_ATIME);
      b.writeBigInt64LE(a.mtimeNs, A_MTIME);
      b.writeBigInt64LE(a.ctimeNs, A_CTIME);
      if (withCrtime) b.writeBigInt64LE(a.crtimeNs!, A_CRTIME);
      return { flags: 0, payload: b };
    }
    case RecordType.End: {
      const b = Buffer.alloc(endBytes);
      b.writeBigUInt64LE(BigInt(record.records), E_RECORDS);
      b.writeUInt32LE(record.crc >>> 0, E_CRC);
      return { flags: 0, payload: b };
    }
  }
}

/** One record's bytes, its crc included (`version`: an older stream version, for tests of old streams). */
export function encodeRecord(record: StreamRecord, version = streamVersion): Buffer {
  const { flags, payload } = payloadOf(record, version);
  if (payload.length > recordPayloadBytesMax) throw new RangeError(`a stream record of ${payload.length} bytes`);
  const out = Buffer.allocUnsafe(recordHeaderBytes + payload.length + recordCrcBytes);
  out.writeUInt16LE(record.type, R_TYPE);
  out.writeUInt16LE(flags, R_FLAGS);
  out.writeUInt32LE(payload.length, R_LENGTH);
  payload.copy(out, recordHeaderBytes);
  out.writeUInt32LE(crc32c(out.subarray(0, recordHeaderBytes + payload.length)), recordHeaderBytes + payload.length);
  return out;
}

/** Writes records and keeps what the end record needs: the count and the running crc. */
export class StreamWriter {
  private count = 0;
  private crc = 0;
  /** Bytes of the whole stream so far (sent or, when resuming, skipped). */
  bytes = 0;
  /** Bytes actually passed to the sink. */
  sent = 0;

  /**
   * `resume`: the receiver holds the first `records` records (`bytes`
   * bytes): they are counted and checksummed as the original stream's, but
   * not sent, and a resume record goes first instead of the header.
   */
  constructor(
    private readonly sink: (chunk: Buffer) => void,
    private readonly resume?: { records: number; bytes: number },
    /** The stream version written: only tests write an older one. */
    private readonly version = streamVersion,
  ) {}

  write(record: StreamRecord): void {
    const bytes = encodeRecord(record, this.version);
    if (this.resume !== undefined && record.type === RecordType.Header) {
      const first = encodeRecord({ type: RecordType.Resume, header: record.header, records: this.resume.records, bytes: this.resume.bytes }, this.version);
      this.sink(first);
      this.sent += first.length;
    }
    const skipped = this.resume !== undefined && this.count < this.resume.records;
    if (!skipped) {
      this.sink(bytes);
      this.sent += bytes.length;
    }
    this.count++;
    this.crc = crc32cUpdate(this.crc, bytes);
    this.bytes += bytes.length;
    if (this.resume !== undefined && this.count === this.resume.records && this.bytes !== this.resume.bytes) {
      throw streamError("resume", "the resume token does not match this stream (another snapshot, parent or grovefs version)");
    }
  }

  end(): number {
    this.write({ type: RecordType.End, records: this.count, crc: this.crc });
    return this.count;
  }
}

/** crc32c continued over `bytes` (the stream's whole-stream checksum). */
export function crc32cUpdate(state: number, bytes: Buffer): number {
  return crc32c(bytes, state);
}

// ---- decoding ---------------------------------------------------------------------

/** Where a stream's bytes come from: up to `length` bytes, fewer only at its end (empty at the end). */
export type ByteSource = (length: number) => Buffer;

/**
 * Reads and validates records one at a time. Every length is checked
 * before anything is allocated, every crc before a record is decoded, and
 * the end record's count and checksum against what was read.
 */
export class StreamReader {
  private count = 0;
  private crc = 0;
  /** Bytes consumed so far: where the next record starts. */
  offset = 0;
  ended = false;

  constructor(private readonly source: ByteSource) {}

  private readExactly(length: number, what: string): Buffer {
    const parts: Buffer[] = [];
    let got = 0;
    while (got < length) {
      const chunk = this.source(length - got);
      if (chunk.length === 0) {
        throw streamError("truncated", `the stream ends inside ${what}, after ${this.offset + got} bytes: it was cut short`);
      }
      parts.push(chunk);
      got += chunk.length;
    }
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
  }

  /** The next record; after the end record, nothing more may follow. */
  next(): StreamRecord {
    if (this.ended) throw new Error("stream reader: read past the end record");
    const at = this.offset;
    const where = `record ${this.count} at byte ${at}`;
    const head = this.source(recordHeaderBytes);
    if (head.length === 0) throw streamError("truncated", `the stream ends before its end record (after ${this.count} records, ${at} bytes): it was cut short`);
    const header = head.length === recordHeaderBytes ? head : Buffer.concat([head, this.readExactly(recordHeaderBytes - head.length, "a record header")]);
    const type = header.readUInt16LE(R_TYPE);
    const flags = header.readUInt16LE(R_FLAGS);
    const length = header.readUInt32LE(R_LENGTH);
    if (length > recordPayloadBytesMax) throw streamError("record_length", `${where}: a payload of ${length} bytes is longer than any record`);
    this.offset += recordHeaderBytes;
    const rest = this.readExactly(length + recordCrcBytes, where);
    this.offset += rest.length;
    const payload = rest.subarray(0, length);
    const crc = crc32c(Buffer.concat([header, payload]));
    if (crc !== rest.readUInt32LE(length)) throw streamError("crc", `${where}: its checksum does not match: the stream is damaged`);
    const record = decodePayload(type, flags, payload, where);
    const isHeader = record.type === RecordType.Header || record.type === RecordType.Resume;
    if (this.count === 0 && !isHeader) throw streamError("no_header", "the stream does not start with a grovefs send header");
    if (this.count > 0 && isHeader) throw streamError("order", `${where}: a second header`);
    if (record.type === RecordType.End) {
      if (record.records !== this.count || record.crc !== this.crc) {
        throw streamError("trailer", `${where}: the end record does not match the stream (records or checksum differ): records were lost or altered`);
      }
      this.ended = true;
    }
    this.crc = crc32cUpdate(crc32cUpdate(this.crc, header), rest);
    this.count++;
    return record;
  }

  get records(): number {
    return this.count;
  }

  /** How far the stream has been read and checked: what a resumed stream continues from. */
  progress(): { records: number; crc: number; bytes: number } {
    return { records: this.count, crc: this.crc, bytes: this.offset };
  }

  /** After a resume record: continue as if the original stream's first records had been read here (the receiver's saved state). */
  continueFrom(progress: { records: number; crc: number; bytes: number }): void {
    this.count = progress.records;
    this.crc = progress.crc;
    this.offset = progress.bytes;
  }
}

function decodePayload(type: number, flags: number, p: Buffer, where: string): StreamRecord {
  const bad = (why: string): never => {
    throw streamError("record", `${where}: ${why}`);
  };
  const need = (n: number): void => {
    if (p.length < n) bad(`type ${type} needs at least ${n} bytes, has ${p.length}`);
  };
  const exact = (n: number): void => {
    if (p.length !== n) bad(`type ${type} needs ${n} bytes, has ${p.length}`);
  };
  const u = (at: number): number => {
    const v = p.readBigUInt64LE(at);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) bad("a field out of range");
    return Number(v);
  };
  const flagsOnly = (allowed: number): void => {
    if ((flags & ~allowed) !== 0) bad(`unknown flags ${flags}`);
  };
  switch (type) {
    case RecordType.Resume: {
      need(16);
      const inner = decodePayload(RecordType.Header, flags, p.subarray(0, p.length - 16), where);
      if (inner.type !== RecordType.Header) return bad("a resume record without a header");
      return { type, header: inner.header, records: u(p.length - 16), bytes: u(p.length - 8) };
    }
    case RecordType.Header: {
      need(H_NAME);
      flagsOnly(headerFlagIncremental);
      if (!p.subarray(H_MAGIC, H_MAGIC + 8).equals(streamMagic)) throw streamError("magic", "this is not a grovefs send stream");
      const version = p.readUInt16LE(H_VERSION);
      if (!streamVersionsRead.includes(version)) {
        throw streamError("version", `the stream is version ${version}; this grovefs reads versions ${streamVersionsRead.slice(0, -1).join(", ")} and ${streamVersionsRead.at(-1)}`);
      }
      const nameLength = p.readUInt16LE(H_NAME_LENGTH);
      exact(H_NAME + nameLength);
      const identity = (at: number): StreamIdentity => ({ uuid: Buffer.from(p.subarray(at, at + 16)), id: u(at + 16), generation: u(at + 24) });
      const incremental = (flags & headerFlagIncremental) !== 0;
      return {
        type,
        header: {
          identity: identity(H_IDENTITY),
          parent: incremental ? identity(H_PARENT) : undefined,
          nextIno: u(H_NEXT_INO),
          name: p.subarray(H_NAME).toString("utf8"),
        },
      };
    }
    case RecordType.Inode:
      need(16);
      flagsOnly(0);
      return { type, ino: u(0), mode: p.readUInt32LE(8), rdev: p.readUInt32LE(12), target: Buffer.from(p.subarray(16)) };
    case RecordType.Unlink:
      need(17);
      flagsOnly(unlinkFlagKeep | unlinkFlagRmdir);
      return {
        type,
        parent: u(0),
        child: u(8),
        name: Buffer.from(p.subarray(16)),
        keep: (flags & unlinkFlagKeep) !== 0,
        rmdir: (flags & unlinkFlagRmdir) !== 0,
      };
    case RecordType.Link:
      need(17);
      flagsOnly(0);
      return { type, parent: u(0), child: u(8), name: Buffer.from(p.subarray(16)) };
    case RecordType.Write:
      need(16);
      flagsOnly(0);
      return { type, ino: u(0), offset: u(8), data: Buffer.from(p.subarray(16)) };
    case RecordType.Hole:
    case RecordType.Prealloc:
      exact(24);
      flagsOnly(0);
      return { type, ino: u(0), offset: u(8), length: u(16) };
    case RecordType.Stored: {
      need(S_CRCS);
      flagsOnly(storedFlagAgain);
      if (p.readUInt8(S_COMPRESSION) !== storedCompressionLz4) bad(`unknown compression ${p.readUInt8(S_COMPRESSION)}`);
      const disk = p.readUInt16LE(S_DISK_BLOCKS);
      const dataAt = S_CRCS + 4 * disk;
      const slice = { unitBlocks: p.readUInt8(S_UNIT_BLOCKS), offset: p.readUInt16LE(S_OFFSET), blocks: p.readUInt16LE(S_BLOCKS) };
      if ((flags & storedFlagAgain) !== 0) {
        exact(dataAt + 16);
        const crcs = Buffer.from(p.subarray(S_CRCS, dataAt));
        return { type, ino: u(0), offset: u(8), stored: { ...slice, crcs, data: Buffer.alloc(0) }, again: { ino: u(dataAt), offset: u(dataAt + 8) } };
      }
      need(dataAt + 1);
      const data = Buffer.from(p.subarray(dataAt));
      if (Math.ceil(data.length / blockSizeBytes) !== disk) bad(`${data.length} compressed bytes in ${disk} disk blocks`);
      return {
        type,
        ino: u(0),
        offset: u(8),
        stored: {
          ...slice,
          crcs: Buffer.from(p.subarray(S_CRCS, dataAt)),
          data,
        },
      };
    }
    case RecordType.Share:
      exact(40);
      flagsOnly(shareFlagFromParent);
      return { type, ino: u(0), offset: u(8), length: u(16), srcIno: u(24), srcOffset: u(32), fromParent: (flags & shareFlagFromParent) !== 0 };
    case RecordType.Truncate:
      exact(16);
      flagsOnly(0);
      return { type, ino: u(0), size: u(8) };
    case RecordType.Xattr: {
      need(10);
      flagsOnly(0);
      const k = p.readUInt16LE(8);
      need(10 + k);
      return { type, ino: u(0), name: p.subarray(10, 10 + k).toString("utf8"), value: Buffer.from(p.subarray(10 + k)) };
    }
    case RecordType.XattrRemove:
      need(9);
      flagsOnly(0);
      return { type, ino: u(0), name: p.subarray(8).toString("utf8") };
    case RecordType.Attr:
      if (p.length !== attrBytesV1) exact(attrBytes);
      flagsOnly(0);
      return {
        type,
        attrs: {
          ino: u(0),
          mode: p.readUInt32LE(A_MODE),
          uid: p.readUInt32LE(A_UID),
          gid: p.readUInt32LE(A_GID),
          atimeNs: p.readBigInt64LE(A_ATIME),
          mtimeNs: p.readBigInt64LE(A_MTIME),
          ctimeNs: p.readBigInt64LE(A_CTIME),
          ...(p.length === attrBytes ? { crtimeNs: p.readBigInt64LE(A_CRTIME) } : {}),
        },
      };
    case RecordType.End:
      exact(endBytes);
      flagsOnly(0);
      return { type, records: u(E_RECORDS), crc: p.readUInt32LE(E_CRC) };
    default:
      return bad(`unknown record type ${type}`);
  }
}

// ---- resume tokens --------------------------------------------------------------

/** What `receive --status` prints and `send --resume` takes: how far a receive got, of which snapshot. */
export interface ResumeToken {
  /** The name the receive gives the snapshot. */
  name: string;
  identity: StreamIdentity;
  records: number;
  bytes: number;
}

const tokenPrefix = "grovefs-resume-1.";

export function encodeResumeToken(token: ResumeToken): string {
  const body = { n: token.name, u: token.identity.uuid.toString("hex"), i: token.identity.id, g: token.identity.generation, r: token.records, b: token.bytes };
  return tokenPrefix + Buffer.from(JSON.stringify(body), "utf8").toString("base64url");
}

export function decodeResumeToken(text: string): ResumeToken {
  const bad = (): never => {
    throw streamError("token", "that is not a resume token (grovefs receive TARGET --status prints one)");
  };
  if (!text.startsWith(tokenPrefix)) bad();
  let body: unknown;
  try {
    body = JSON.parse(Buffer.from(text.slice(tokenPrefix.length), "base64url").toString("utf8"));
  } catch {
    return bad();
  }
  const b = body as Record<string, unknown>;
  const count = (v: unknown): number => (typeof v === "number" && Number.isSafeInteger(v) && v >= 0 ? v : bad());
  if (typeof b.n !== "string" || typeof b.u !== "string" || !/^[0-9a-f]{32}$/.test(b.u)) bad();
  return {
    name: b.n as string,
    identity: { uuid: Buffer.from(b.u as string, "hex"), id: count(b.i), generation: count(b.g) },
    records: count(b.r),
    bytes: count(b.b),
  };
}
