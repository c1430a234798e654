/**
 * The sending side: a snapshot (against a parent, for an incremental
 * stream) as stream records (fs/send/stream_format.ts), in the order the
 * format prescribes.
 *
 * File data goes as written bytes (an lz4 extent as it is stored: its
 * compressed bytes and crcs, never decompressed), holes as hole records, and a slice of a
 * physical extent already sent in this stream (a reflink, a copy made with
 * copy_file_range, a snapshot's sharing) as a share record, so the receiver
 * shares it too. In an incremental stream an extent record the parent holds
 * unchanged at the same place is not sent at all, and a slice of an extent
 * the parent held in any changed file is shared from the parent.
 */
import { constants as C } from "node:fs";
import { blockSizeBytes } from "../../kvstore/index.js";
import { Compression, PayloadKind, decodeExtent, decodeInode, isUnwritten, type Extent, type Inode } from "../format.js";
import type { GroveFs, SendSource } from "../filesystem.js";
import { depthOf, findChangesSteps, type Changes, type NameChange } from "./changes.js";
import { RecordType, StreamWriter, streamError, writeChunkBytesMax, type ResumeToken, type StreamRecord } from "./stream_format.js";

export interface SendOptions {
  /** The parent snapshot, for an incremental stream. */
  parent?: string;
  /** Called after each record with the bytes written so far (a progress line). */
  progress?: (bytes: number) => void;
  /** Resume an interrupted receive: send only what its token says it lacks. */
  resume?: ResumeToken;
}

export interface SendSummary {
  snapshot: string;
  parent: string | null;
  records: number;
  bytes: number;
  /** File bytes sent as data. */
  dataBytes: number;
  /** File bytes sent as lz4 extents as they are stored (their compressed bytes: `storedDiskBytes`). */
  storedBytes: number;
  storedDiskBytes: number;
  /** File bytes sent as shares of data already sent or in the parent. */
  sharedBytes: number;
  inodes: { created: number; changed: number; deleted: number };
  /** Inode tree nodes the comparison with the parent read (0 for a full stream). */
  nodesRead: number;
}

interface SentSlice {
  ino: number;
  /** File block of the slice's first block. */
  fileBlock: number;
  /** Where the slice starts in its physical extent (as Extent.offset). */
  offset: number;
  blocks: number;
  fromParent: boolean;
}

const S_IFMT = C.S_IFMT;

/** Writes snapshot `name` of `fs` to `sink` as a stream. */
export function sendSnapshot(fs: GroveFs, name: string, sink: (chunk: Buffer) => void, options: SendOptions = {}): SendSummary {
  const run = startSend(fs, name, sink, options);
  while (!run.step(Number.MAX_SAFE_INTEGER)) {
    // One step writes the whole stream.
  }
  return run.summary;
}

/** A send written a few records at a time (a mount daemon serves requests between steps). */
export interface SendRun {
  /** Writes up to `records` records; true once the end record is written. */
  step(records: number): boolean;
  /** The figures so far; complete once `step` has returned true. */
  readonly summary: SendSummary;
}

/**
 * Starts sending snapshot `name` of `fs` to `sink`: a missing snapshot or
 * parent, or a resume token for another snapshot, is refused here, before
 * anything is written. The snapshots must stay (not be deleted) until the
 * run ends: the caller holds them (GroveFs.holdSubvolumes).
 */
export function startSend(fs: GroveFs, name: string, sink: (chunk: Buffer) => void, options: SendOptions = {}): SendRun {
  const after = fs.sendSource(name);
  const before = options.parent === undefined ? undefined : fs.sendSource(options.parent);
  const resume = options.resume;
  if (resume !== undefined) {
    const own = after.identity;
    if (!resume.identity.uuid.equals(own.uuid) || resume.identity.id !== own.id || resume.identity.generation !== own.generation) {
      throw streamError("resume", `the resume token is for another snapshot than ${JSON.stringify(name)}`);
    }
    if (resume.records < 1) throw streamError("resume", "the resume token names no progress");
  }
  const writer = new StreamWriter(sink, resume === undefined ? undefined : { records: resume.records, bytes: resume.bytes });
  const summary: SendSummary = {
    snapshot: name,
    parent: options.parent ?? null,
    records: 0,
    bytes: 0,
    dataBytes: 0,
    storedBytes: 0,
    storedDiskBytes: 0,
    sharedBytes: 0,
    inodes: { created: 0, changed: 0, deleted: 0 },
    nodesRead: 0,
  };
  const records = streamRecords(before, after, summary);
  let done = false;
  const step = (budget: number): boolean => {
    for (let n = 0; n < budget && !done; n++) {
      const next = records.next();
      if (next.done === true) {
        summary.records = writer.end();
        if (resume !== undefined && summary.records <= resume.records) throw streamError("resume", "the resume token names more records than this stream has");
        summary.bytes = writer.sent;
        done = true;
        break;
      }
      // A step of the tree comparison, not a record: it counts against the budget all the same.
      if (next.value === undefined) continue;
      writer.write(next.value);
      options.progress?.(writer.sent);
    }
    return done;
  };
  return { step, summary };
}

/**
 * The stream's records, header first, in the order the format prescribes
 * (the end record is the writer's); undefined after each step of the tree
 * comparison, which runs after the header, a few nodes a step.
 */
function* streamRecords(before: SendSource | undefined, after: SendSource, summary: SendSummary): Generator<StreamRecord | undefined, void> {
  yield {
    type: RecordType.Header,
    header: { name: after.name, identity: after.identity, parent: before?.identity, nextIno: after.nextIno },
  };
  const changes: Changes = yield* findChangesSteps(before, after);
  summary.inodes = { created: changes.created.length, changed: changes.changed.length - changes.created.length, deleted: changes.deleted.length };
  summary.nodesRead = changes.nodesRead;
  for (const ino of changes.created) {
    const inode = after.inodes.load(ino);
    const target = (inode.mode & S_IFMT) === C.S_IFLNK ? after.fs.readlinkIno(ino) : Buffer.alloc(0);
    yield { type: RecordType.Inode, ino, mode: inode.mode, rdev: inode.rdev, target };
  }
  yield* unlinkRecords(before, after, changes);
  const links = [...changes.added].sort((a, b) => a.parent - b.parent || Buffer.compare(a.name, b.name));
  for (const link of links) yield { type: RecordType.Link, parent: link.parent, child: link.child, name: link.name };
  const sent = new Map<number, SentSlice[]>();
  const storedSent = new Map<number, StoredAt>();
  if (before !== undefined) {
    for (const ino of changes.changed) {
      const old = before.inodes.tryLoad(ino);
      if (old !== undefined && (old.mode & S_IFMT) === C.S_IFREG) for (const extent of extentsOf(before, old)) remember(sent, extent, ino, true);
    }
  }
  for (const ino of changes.changed) {
    const inode = after.inodes.load(ino);
    const old = before?.inodes.tryLoad(ino);
    yield* xattrRecords(before, after, ino, old);
    if ((inode.mode & S_IFMT) === C.S_IFREG) yield* dataRecords(before, after, inode, old, sent, storedSent, summary);
  }
  for (const ino of changes.changed) {
    const inode = after.inodes.load(ino);
    yield {
      type: RecordType.Attr,
      attrs: {
        ino,
        mode: inode.mode,
        uid: inode.uid,
        gid: inode.gid,
        atimeNs: inode.atimeNs,
        mtimeNs: inode.mtimeNs,
        ctimeNs: inode.ctimeNs,
        crtimeNs: inode.crtimeNs,
      },
    };
  }
}

/**
 * Names to remove, in an order the receiver can apply: an inode that keeps
 * living but loses every old name is moved aside (keep) by its first one;
 * files go before directories, and directories deepest first, so each is
 * empty when it goes.
 */
function unlinkRecords(before: SendSource | undefined, after: SendSource, changes: Changes): StreamRecord[] {
  if (before === undefined) return [];
  const removals = new Map<number, NameChange[]>();
  for (const change of changes.removed) {
    const list = removals.get(change.child) ?? [];
    list.push(change);
    removals.set(change.child, list);
  }
  const files: StreamRecord[] = [];
  const dirs: { depth: number; record: StreamRecord }[] = [];
  const deleted = new Set(changes.deleted);
  for (const [child, list] of removals) {
    const old = before.inodes.load(child);
    const isDir = (old.mode & S_IFMT) === C.S_IFDIR;
    const lives = !deleted.has(child) && after.inodes.tryLoad(child) !== undefined;
    const names = isDir ? 1 : old.nlink;
    list.forEach((change, i) => {
      const keep = lives && i === 0 && list.length >= names;
      const record: StreamRecord = { type: RecordType.Unlink, parent: change.parent, child, name: change.name, keep, rmdir: isDir && !keep };
      if (isDir && !keep) dirs.push({ depth: depthOf(before, child), record });
      else files.push(record);
    });
  }
  dirs.sort((a, b) => b.depth - a.depth);
  return [...files, ...dirs.map((d) => d.record)];
}

function* xattrRecords(before: SendSource | undefined, after: SendSource, ino: number, old: Inode | undefined): Generator<StreamRecord, void> {
  const now = new Map<string, Buffer>();
  for (const name of after.fs.listxattrIno(ino)) now.set(name, after.fs.findXattrIno(ino, name)!);
  const was = new Map<string, Buffer>();
  if (before !== undefined && old !== undefined && old.nlink > 0) {
    for (const name of before.fs.listxattrIno(ino)) was.set(name, before.fs.findXattrIno(ino, name)!);
  }
  for (const name of was.keys()) if (!now.has(name)) yield { type: RecordType.XattrRemove, ino, name };
  for (const [name, value] of now) if (!was.get(name)?.equals(value)) yield { type: RecordType.Xattr, ino, name, value };
}

/** A file's written extents (or its unwritten, preallocated ones), in file order. */
function extentsOf(source: SendSource, inode: Inode, unwritten = false): Extent[] {
  if (inode.kind === PayloadKind.Bytes) return [];
  const extents: Extent[] = [];
  for (const item of source.inodes.mapOf(inode).range()) {
    const extent = decodeExtent(inode.ino, item.key, item.value);
    if (isUnwritten(extent) === unwritten) extents.push(extent);
  }
  return extents;
}

function remember(sent: Map<number, SentSlice[]>, extent: Extent, ino: number, fromParent: boolean): void {
  const list = sent.get(extent.extentLba) ?? [];
  list.push({ ino, fileBlock: extent.fileBlock, offset: extent.offset, blocks: extent.blocks, fromParent });
  sent.set(extent.extentLba, list);
}

/** Where a stored record of this stream put a physical lz4 extent: a file block of the receiver's file that holds it. */
interface StoredAt {
  ino: number;
  fileBlock: number;
}

interface Segment {
  fileBlock: number;
  blocks: number;
  /** A slice already sent (or in the parent) holding these blocks; undefined: send them as data. */
  from: SentSlice | undefined;
}

/**
 * `extent` cut into runs that a sent slice of the same physical extent holds
 * (shared) and runs none does (data): after a partial overwrite the slices
 * sent so far may each hold only part of it.
 */
function segmentsOf(sent: Map<number, SentSlice[]>, extent: Extent, ino: number): Segment[] {
  const slices = sent.get(extent.extentLba) ?? [];
  const segments: Segment[] = [];
  const end = extent.offset + extent.blocks;
  let at = extent.offset;
  while (at < end) {
    let from: SentSlice | undefined;
    let next = end;
    for (const slice of slices) {
      const sliceEnd = slice.offset + slice.blocks;
      if (slice.offset <= at && at < sliceEnd) {
        // copy_file_range refuses overlapping ranges of one file (the parent's file is another).
        const run = Math.min(sliceEnd, end) - at;
        const src = slice.fileBlock + (at - slice.offset);
        const dst = extent.fileBlock + (at - extent.offset);
        if (!slice.fromParent && slice.ino === ino && src < dst + run && dst < src + run) continue;
        if (from === undefined || sliceEnd > from.offset + from.blocks) from = slice;
      } else if (slice.offset > at) next = Math.min(next, slice.offset);
    }
    const stop = from === undefined ? next : Math.min(end, from.offset + from.blocks);
    segments.push({ fileBlock: extent.fileBlock + (at - extent.offset), blocks: stop - at, from });
    at = stop;
  }
  return segments;
}

/** A regular file's data: written bytes, shares, holes where the parent had data, then its size. */
function* dataRecords(
  before: SendSource | undefined,
  after: SendSource,
  inode: Inode,
  old: Inode | undefined,
  sent: Map<number, SentSlice[]>,
  storedSent: Map<number, StoredAt>,
  summary: SendSummary,
): Generator<StreamRecord, void> {
  const ino = inode.ino;
  const map = after.inodes.mapOf(inode);
  const oldFile = before !== undefined && old !== undefined && (old.mode & S_IFMT) === C.S_IFREG ? old : undefined;
  const oldMap = oldFile === undefined ? undefined : before!.inodes.mapOf(oldFile);
  const writeBytes = function* (offset: number, length: number): Generator<StreamRecord, void> {
    for (let at = offset; at < offset + length; at += writeChunkBytesMax) {
      const n = Math.min(writeChunkBytesMax, offset + length - at);
      const data = Buffer.alloc(n);
      const got = after.data.read(inode, map, data, n, at);
      summary.dataBytes += got;
      yield { type: RecordType.Write, ino, offset: at, data: data.subarray(0, got) };
    }
  };
  if (inode.kind === PayloadKind.Bytes) {
    if (inode.size > 0) yield* writeBytes(0, inode.size);
  } else {
    for (const extent of extentsOf(after, inode)) {
      const offset = extent.fileBlock * blockSizeBytes;
      const length = Math.min(extent.blocks * blockSizeBytes, inode.size - offset);
      if (length <= 0) continue;
      const unchanged = oldMap?.get(extentKeyOf(extent))?.equals(map.get(extentKeyOf(extent))!) ?? false;
      if (unchanged) continue;
      if (before !== undefined && !parentIndexed.has(sent) && after.fs.store.sharing.refCount(extent.extentLba) > 1) {
        // Referenced twice: perhaps a reflink of a file the parent holds unchanged, which the index lacks.
        if (segmentsOf(sent, extent, ino).some((segment) => segment.from === undefined)) {
          parentIndexed.add(sent);
          indexParent(before, sent);
        }
      }
      for (const segment of segmentsOf(sent, extent, ino)) {
        const at = segment.fileBlock * blockSizeBytes;
        const n = Math.min(segment.blocks * blockSizeBytes, inode.size - at);
        if (n <= 0) continue;
        const from = segment.from;
        if (from !== undefined) {
          // Whole blocks: the last one may lie partly past this file's end and still be shared (the truncate comes after).
          const whole = segment.blocks * blockSizeBytes;
          const srcOffset = (from.fileBlock + (extent.offset + (segment.fileBlock - extent.fileBlock) - from.offset)) * blockSizeBytes;
          summary.sharedBytes += n;
          yield { type: RecordType.Share, ino, offset: at, length: whole, srcIno: from.ino, srcOffset, fromParent: from.fromParent };
        } else if (extent.compression === Compression.Lz4) {
          // As stored: the extent's compressed bytes and crcs, for this slice of its unit (whole blocks; the truncate comes after).
          // A slice no sent record holds of an extent sent already (a partial overwrite split it): the same extent again, by reference.
          const earlier = storedSent.get(extent.extentLba);
          const slice = { offset: extent.offset + (segment.fileBlock - extent.fileBlock), blocks: segment.blocks };
          if (earlier !== undefined) {
            summary.sharedBytes += n;
            const again = { unitBlocks: extent.unitBlocks, ...slice, data: Buffer.alloc(0), crcs: Buffer.from(extent.crcs.subarray(0, 4 * extent.diskBlocks)) };
            yield { type: RecordType.Stored, ino, offset: at, stored: again, again: { ino: earlier.ino, offset: earlier.fileBlock * blockSizeBytes } };
          } else {
            const stored = { ...after.data.readStored(ino, extent), ...slice };
            summary.storedBytes += n;
            summary.storedDiskBytes += stored.data.length;
            storedSent.set(extent.extentLba, { ino, fileBlock: segment.fileBlock });
            yield { type: RecordType.Stored, ino, offset: at, stored };
          }
        } else {
          yield* writeBytes(at, n);
        }
      }
      remember(sent, extent, ino, false);
    }
  }
  // Then the size (a share of whole blocks may have reached past it), and the holes last: shrinking
  // into a block zeroes its tail, which writes the block even where it was a hole.
  yield { type: RecordType.Truncate, ino, size: inode.size };
  if (oldFile !== undefined) for (const hole of holesFor(before!, oldFile, after, inode)) yield { type: RecordType.Hole, ino, ...hole };
  // Preallocated ranges last: the holes above cleared whatever the parent held there.
  for (const extent of extentsOf(after, inode, true)) {
    const unchanged = oldMap?.get(extentKeyOf(extent))?.equals(map.get(extentKeyOf(extent))!) ?? false;
    if (!unchanged) yield { type: RecordType.Prealloc, ino, offset: extent.fileBlock * blockSizeBytes, length: extent.blocks * blockSizeBytes };
  }
}

/** Streams whose parent's extents were all indexed (once, and only when a reflink asks for it). */
const parentIndexed = new WeakSet<Map<number, SentSlice[]>>();

function indexParent(before: SendSource, sent: Map<number, SentSlice[]>): void {
  for (const [key, value] of before.tree.range({ from: Buffer.from([0, 0, 0, 0, 0, 0, 0, 1]) })) {
    if (key.length !== 8) continue;
    const inode = decodeInode(Number(key.readBigUInt64BE(0)), value);
    if ((inode.mode & S_IFMT) !== C.S_IFREG || inode.nlink === 0) continue;
    for (const extent of extentsOf(before, inode)) remember(sent, extent, inode.ino, true);
  }
}

function extentKeyOf(extent: Extent): Buffer {
  const key = Buffer.alloc(8);
  key.writeBigUInt64BE(BigInt(extent.fileBlock), 0);
  return key;
}

/** Byte ranges that held data (below the new size) or preallocated blocks in the parent's file and are holes now. */
function holesFor(before: SendSource, old: Inode, after: SendSource, inode: Inode): { offset: number; length: number }[] {
  if (inode.kind === PayloadKind.Bytes) return [];
  const endBlock = Math.ceil(inode.size / blockSizeBytes);
  // [start, end, stop]: a written range matters below the new size only (the truncate dropped the rest);
  // a preallocated one may lie past the end of file (fallocate KEEP_SIZE).
  const had: [number, number, number][] =
    old.kind === PayloadKind.Bytes
      ? [[0, Math.ceil(old.size / blockSizeBytes), endBlock]]
      : [
          ...extentsOf(before, old).map((e): [number, number, number] => [e.fileBlock, e.fileBlock + e.blocks, endBlock]),
          ...extentsOf(before, old, true).map((e): [number, number, number] => [e.fileBlock, e.fileBlock + e.blocks, Number.MAX_SAFE_INTEGER]),
        ];
  // Preallocated ranges the parent holds unchanged stay; changed ones are cleared here and sent after.
  const oldMap = old.kind === PayloadKind.Bytes ? undefined : before.inodes.mapOf(old);
  const newMap = after.inodes.mapOf(inode);
  const kept = extentsOf(after, inode, true).filter((e) => oldMap?.get(extentKeyOf(e))?.equals(newMap.get(extentKeyOf(e))!) ?? false);
  const has = [...extentsOf(after, inode), ...kept].map((e) => [e.fileBlock, e.fileBlock + e.blocks] as [number, number]);
  if (inode.size < old.size && inode.size % blockSizeBytes !== 0) had.push([endBlock - 1, endBlock, endBlock]);
  const holes: { offset: number; length: number }[] = [];
  for (const [start, end, limit] of had) {
    let at = start;
    const stop = Math.min(end, limit);
    while (at < stop) {
      const covering = has.find(([s, e]) => s <= at && at < e);
      if (covering !== undefined) {
        at = covering[1];
        continue;
      }
      const next = Math.min(stop, ...has.filter(([s]) => s > at).map(([s]) => s));
      // Whole blocks, even past the end of file: punching part of a block only zeroes it (the source has a hole).
      holes.push({ offset: at * blockSizeBytes, length: (next - at) * blockSizeBytes });
      at = next;
    }
  }
  return holes;
}

