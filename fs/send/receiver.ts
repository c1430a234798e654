/**
 * The receiving side: a stream (fs/send/stream_format.ts) applied to a
 * hidden subvolume, published as a read-only snapshot only once the end
 * record has verified.
 *
 * Invariants:
 * - Nothing visible changes before the stream has verified: records go into
 *   a hidden subvolume (a clone of the parent for an incremental stream,
 *   else an empty one), and only the publish (rename, read-only, received
 *   identity, in one commit) shows it. A refused stream leaves the hidden
 *   subvolume deleted, its space freed; a killed receive leaves it for
 *   `receive --abort`.
 * - Inode numbers are the sender's: a new inode is created with the number
 *   the stream names (numbers only grow, so the stream sends them
 *   ascending), under a temporary name in the root directory until a link
 *   record names it. So an incremental stream's records address the same
 *   inodes in the parent's clone as in the sender's snapshot.
 * - Every record is checked against the state before it is applied: an
 *   unlink names the inode the entry holds, a link's name is free, a new
 *   inode's number is unused, data goes to regular files. The parent is
 *   found by its identity on this volume, never by the sender's word.
 */
import { constants as C } from "node:fs";
import { GroveError } from "../../kvstore/index.js";
import { rootIno } from "../constants.js";
import { receivePartialPrefix, type GroveFs } from "../filesystem.js";
import {
  RecordType,
  StreamReader,
  encodeResumeToken,
  recordCrcBytes,
  recordHeaderBytes,
  recordPayloadBytesMax,
  streamError,
  type ByteSource,
  type StreamHeader,
  type StreamRecord,
} from "./stream_format.js";

export interface ReceiveOptions {
  /** The snapshot's name here (default: the sent snapshot's). */
  name?: string;
  /** Called after each record with the bytes read so far. */
  progress?: (bytes: number) => void;
}

export interface ReceiveSummary {
  snapshot: string;
  parent: string | null;
  records: number;
  bytes: number;
}

const S_IFMT = C.S_IFMT;
const fallocPunchHole = 0x03; // FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
const fallocKeepSize = 0x01; // FALLOC_FL_KEEP_SIZE
const root = { uid: 0, gid: 0 };

/** Where an inode the stream created waits for its first name: unlikely in any real root, refused if present. */
function tempName(ino: number): Buffer {
  return Buffer.from(`\x01grovefs-receive\x01${ino}`, "latin1");
}

/** The hidden subvolume a receive of snapshot `name` fills. */
export function partialNameFor(name: string): string {
  return `${receivePartialPrefix}${name}`;
}

/** Reads a stream from `source` into `fs`'s volume as a new read-only snapshot (or resumes one: a stream sent with --resume). */
export function receiveStream(fs: GroveFs, source: ByteSource, options: ReceiveOptions = {}): ReceiveSummary {
  const reader = new StreamReader(source);
  const run = openReceive(fs, reader, reader.next(), options);
  for (;;) {
    let record: StreamRecord;
    try {
      record = reader.next();
    } catch (error) {
      return run.fail(error);
    }
    if (run.apply(record)) return run.summary();
  }
}

/**
 * A receive fed a chunk at a time (a mount daemon's: the stream arrives on
 * its control socket, and records are applied a few at a time between FUSE
 * requests). `push` takes bytes; `step` applies up to a number of whole
 * records that have arrived, true once the end record has verified and the
 * snapshot is published; `end` says no more bytes come: a stream cut short
 * (the client went away) is kept, hidden, to resume, as receiveStream keeps it.
 */
export class ReceivePush {
  private readonly chunks: Buffer[] = [];
  private bufferedBytes = 0;
  private readonly reader: StreamReader;
  private run: ReceiveRun | undefined;
  private done = false;
  private result: ReceiveSummary | undefined;

  constructor(
    private readonly fs: GroveFs,
    private readonly options: ReceiveOptions = {},
  ) {
    this.reader = new StreamReader((length) => this.take(length));
  }

  /** Bytes arrived and not yet applied. */
  get pending(): number {
    return this.bufferedBytes;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.bufferedBytes += chunk.length;
  }

  /** Applies up to `records` whole records that have arrived; true once the snapshot is published. */
  step(records: number): boolean {
    for (let n = 0; n < records && !this.done && this.wholeRecordBuffered(); n++) {
      if (this.run === undefined) {
        this.run = openReceive(this.fs, this.reader, this.reader.next(), this.options);
        continue;
      }
      let record: StreamRecord;
      try {
        record = this.reader.next();
      } catch (error) {
        return this.run.fail(error);
      }
      if (this.run.apply(record)) {
        this.done = true;
        this.result = this.run.summary();
      }
    }
    return this.done;
  }

  /** No more bytes come: the summary, or the stream's error (cut short: kept to resume). */
  end(): ReceiveSummary {
    while (!this.done && this.wholeRecordBuffered()) this.step(Number.MAX_SAFE_INTEGER);
    if (this.result !== undefined) return this.result;
    const cut = streamError("truncated", `the stream ends before its end record (after ${this.reader.records} records, ${this.reader.offset} bytes): it was cut short`);
    if (this.run === undefined) throw cut;
    return this.run.fail(cut);
  }

  private wholeRecordBuffered(): boolean {
    if (this.bufferedBytes < recordHeaderBytes) return false;
    const head = this.peek(recordHeaderBytes);
    const length = head.readUInt32LE(4);
    // An impossible length is the reader's to refuse: let it read the header.
    if (length > recordPayloadBytesMax) return true;
    return this.bufferedBytes >= recordHeaderBytes + length + recordCrcBytes;
  }

  private peek(length: number): Buffer {
    if (this.chunks[0]!.length < length) {
      const joined = Buffer.concat(this.chunks);
      this.chunks.length = 0;
      this.chunks.push(joined);
    }
    return this.chunks[0]!.subarray(0, length);
  }

  private take(length: number): Buffer {
    if (this.chunks.length === 0) return Buffer.alloc(0);
    const first = this.chunks[0]!;
    const n = Math.min(length, first.length);
    const out = first.subarray(0, n);
    if (n === first.length) this.chunks.shift();
    else this.chunks[0] = first.subarray(n);
    this.bufferedBytes -= n;
    return out;
  }
}

interface ReceiveRun {
  /** Applies one record (after the first); true once the end record has verified and the snapshot is published. */
  apply(record: StreamRecord): boolean;
  /** The receive failed with `error`: a cut-short stream is kept to resume, anything else thrown away; rethrows it. */
  fail(error: unknown): never;
  summary(): ReceiveSummary;
}

/** Checks the first record against the volume and opens (or reopens, to resume) the hidden subvolume. */
function openReceive(fs: GroveFs, reader: StreamReader, first: StreamRecord, options: ReceiveOptions): ReceiveRun {
  if (first.type !== RecordType.Header && first.type !== RecordType.Resume) throw streamError("no_header", "the stream does not start with a header");
  const header = first.header;
  const name = options.name ?? header.name;
  if (fs.listSubvolumes().some((s) => s.name === name)) {
    throw new GroveError("EEXIST", "EEXIST_subvolume", `a subvolume named ${JSON.stringify(name)} exists`);
  }
  const parent = header.parent === undefined ? undefined : fs.findByIdentity(header.parent);
  if (header.parent !== undefined && parent === undefined) {
    throw new GroveError("ENOENT", "ENOENT_receive_parent", "the stream is incremental, and its parent snapshot is not on this volume (receive the parent first)");
  }
  const partial = partialNameFor(name);
  const exists = fs.partialReceives().some((s) => s.name === partial);
  let target: GroveFs;
  if (first.type === RecordType.Resume) {
    // The receiver's own saved state says where the stream continues, never the sender's word.
    const saved = exists ? fs.receiveProgress(partial) : undefined;
    if (saved?.progress === undefined) throw streamError("resume", `there is no interrupted receive of ${JSON.stringify(name)} to resume`);
    const same = saved.uuid.equals(header.identity.uuid) && saved.id === header.identity.id && saved.generation === header.identity.generation;
    if (!same) throw streamError("resume", `the interrupted receive of ${JSON.stringify(name)} is of another snapshot`);
    if (saved.progress.records !== first.records || saved.progress.bytes !== first.bytes) {
      throw streamError("resume", `the stream resumes at record ${first.records}, but this receive holds ${saved.progress.records}: ask grovefs receive --status for the token`);
    }
    reader.continueFrom(saved.progress);
    target = fs.reopenReceiveTarget(partial);
  } else {
    if (exists) throw new GroveError("EEXIST", "EEXIST_receive_partial", `an interrupted receive of ${JSON.stringify(name)} is in the way`);
    target = fs.createReceiveTarget(partial, parent);
  }
  const save = (): void => fs.saveReceiveProgress(partial, { ...header.identity, progress: reader.progress() });
  let closed = false;
  const fail = (error: unknown): never => {
    if (!closed) {
      closed = true;
      try {
        target.close();
      } catch {
        // The stream's own error is the one to report.
      }
    }
    // A stream cut short keeps what arrived, to resume; a damaged or contradicting one is thrown away.
    const resumable = error instanceof GroveError && error.detail === "EINVAL_stream_truncated";
    if (!resumable && !fs.store.isPoisoned && fs.partialReceives().some((s) => s.name === partial)) fs.abortReceive(partial);
    throw error;
  };
  let applier: Applier;
  try {
    if (first.type === RecordType.Header) save();
    applier = new Applier(target, parent === undefined ? undefined : (fs.snapshotView(parent) as GroveFs), header);
  } catch (error) {
    return fail(error);
  }
  return {
    apply: (record) => {
      try {
        options.progress?.(reader.offset);
        if (record.type !== RecordType.End) {
          applier.apply(record, reader);
          // In the same transaction as what the record changed: any commit holds both or neither.
          save();
          return false;
        }
        applier.finish();
        if (target.nextIno < header.nextIno) target.reserveIno(header.nextIno);
        target.close();
        closed = true;
        fs.publishReceived(partial, name, header.identity);
        return true;
      } catch (error) {
        return fail(error);
      }
    },
    fail,
    summary: () => ({ snapshot: name, parent: parent ?? null, records: reader.records, bytes: reader.offset }),
  };
}

/** The token that resumes the interrupted receive in hidden subvolume `partial`, if it got past its header. */
export function resumeTokenOf(fs: GroveFs, partial: string): string | undefined {
  const saved = fs.receiveProgress(partial);
  if (saved?.progress === undefined) return undefined;
  return encodeResumeToken({
    name: partial.slice(receivePartialPrefix.length),
    identity: { uuid: saved.uuid, id: saved.id, generation: saved.generation },
    records: saved.progress.records,
    bytes: saved.progress.bytes,
  });
}

class Applier {
  /** Inodes created or moved aside, waiting under a temporary name in the root. */
  private readonly temps = new Set<number>();
  private readonly handles = new Map<number, number>();

  constructor(
    private readonly fs: GroveFs,
    private readonly parent: GroveFs | undefined,
    private readonly header: StreamHeader,
  ) {
    // Resumed: inodes made or moved aside before the cut still wait under their temporary names.
    const prefix = tempName(0).subarray(0, tempName(0).length - 1);
    // Listing the root moves its atime: put back what an attr record may already have set.
    const before = fs.statIno(rootIno);
    fs.readdirIno(rootIno, undefined, (entry) => {
      if (entry.name.length > prefix.length && entry.name.subarray(0, prefix.length).equals(prefix)) {
        this.temps.add(Number(entry.name.subarray(prefix.length).toString("latin1")));
      }
      return true;
    });
    const after = fs.statIno(rootIno);
    if (after.atimeNs !== before.atimeNs) fs.setattr(rootIno, { atime: before.atimeNs, ctime: before.ctimeNs });
  }

  apply(record: StreamRecord, reader: StreamReader): void {
    try {
      this.applyOne(record);
    } catch (error) {
      if (!(error instanceof GroveError) || error.detail.startsWith("EINVAL_stream_")) throw error;
      if (error.code === "ENOSPC" || error.code === "EIO" || error.code === "EROFS") throw error;
      // The record contradicts what this volume holds: the stream is not for it, or is damaged.
      throw streamError("state", `record ${reader.records - 1} (type ${record.type}) does not fit this volume: ${error.message}`);
    }
  }

  private applyOne(record: StreamRecord): void {
    const fs = this.fs;
    switch (record.type) {
      case RecordType.Header:
      case RecordType.Resume:
      case RecordType.End:
        throw streamError("order", "a header or end record in the middle of the stream");
      case RecordType.Inode:
        return this.create(record.ino, record.mode, record.rdev, record.target);
      case RecordType.Unlink: {
        const found = fs.findEntry(record.parent, record.name);
        if (found === undefined || found.ino !== record.child) {
          throw streamError("state", `an unlink names inode ${record.child}, but the entry ${found === undefined ? "is missing" : `holds ${found.ino}`}`);
        }
        if (record.keep) {
          fs.renameAt(record.parent, record.name, rootIno, tempName(record.child), 1);
          this.temps.add(record.child);
        } else if (record.rmdir) fs.rmdirAt(record.parent, record.name);
        else fs.unlinkAt(record.parent, record.name);
        return;
      }
      case RecordType.Link: {
        if (fs.findEntry(record.parent, record.name) !== undefined) throw streamError("state", "a link names an entry that exists");
        if (this.temps.delete(record.child)) fs.renameAt(rootIno, tempName(record.child), record.parent, record.name, 1);
        else fs.linkAt(record.child, record.parent, record.name);
        return;
      }
      case RecordType.Write:
        fs.write(this.handleOf(record.ino), record.data, record.data.length, record.offset);
        return;
      case RecordType.Hole:
        this.regular(record.ino);
        if (record.length > 0) fs.fallocate(record.ino, fallocPunchHole, record.offset, record.length);
        return;
      case RecordType.Prealloc:
        this.regular(record.ino);
        if (record.length > 0) fs.fallocate(record.ino, fallocKeepSize, record.offset, record.length);
        return;
      case RecordType.Stored:
        this.regular(record.ino);
        try {
          if (record.again === undefined) fs.insertStoredExtent(record.ino, record.offset, record.stored);
          else fs.shareStoredExtent(record.ino, record.offset, record.stored, record.again.ino, record.again.offset);
        } catch (error) {
          if (error instanceof GroveError && error.detail === "EINVAL_stored_extent") throw streamError("stored", `a stored extent of inode ${record.ino} at byte ${record.offset}: ${error.message}`);
          throw error;
        }
        return;
      case RecordType.Share: {
        this.regular(record.ino);
        if (record.fromParent && this.parent === undefined) throw streamError("state", "a share from the parent in a full stream");
        const from = record.fromParent ? this.parent! : fs;
        // The source's last, partial block is shared as the sender shared it, whatever this file's size now.
        fs.copyFileRange({ fs: from, ino: record.srcIno }, record.srcOffset, record.ino, record.offset, record.length, true);
        return;
      }
      case RecordType.Truncate:
        this.regular(record.ino);
        fs.setattr(record.ino, { size: record.size });
        this.release(record.ino);
        return;
      case RecordType.Xattr:
        fs.setxattrIno(record.ino, record.name, record.value, 0);
        return;
      case RecordType.XattrRemove:
        fs.removexattrIno(record.ino, record.name);
        return;
      case RecordType.Attr: {
        const a = record.attrs;
        const stat = fs.statIno(a.ino);
        if ((stat.mode & S_IFMT) !== (a.mode & S_IFMT)) throw streamError("state", `inode ${a.ino} is of another type here`);
        this.release(a.ino);
        fs.setattr(a.ino, { mode: a.mode & 0o7777, uid: a.uid, gid: a.gid, atime: a.atimeNs, mtime: a.mtimeNs, ctime: a.ctimeNs, crtime: a.crtimeNs });
        return;
      }
    }
  }

  private create(ino: number, mode: number, rdev: number, target: Buffer): void {
    const fs = this.fs;
    if (fs.hasInode(ino)) throw streamError("state", `a new inode ${ino} exists already`);
    if (ino > this.header.nextIno) throw streamError("state", `a new inode ${ino} past the sender's next number ${this.header.nextIno}`);
    fs.reserveIno(ino);
    const name = tempName(ino);
    const perms = mode & 0o7777;
    let made: number;
    switch (mode & S_IFMT) {
      case C.S_IFDIR:
        made = fs.mkdirAt(rootIno, name, perms, root).ino;
        break;
      case C.S_IFREG: {
        const { fh, stat } = fs.createAt(rootIno, name, C.S_IFREG | perms, C.O_CREAT | C.O_EXCL | C.O_WRONLY, root);
        this.handles.set(ino, fh);
        made = stat.ino;
        break;
      }
      case C.S_IFLNK:
        made = fs.symlinkAt(rootIno, name, target, root).ino;
        break;
      case C.S_IFCHR:
      case C.S_IFBLK:
      case C.S_IFIFO:
      case C.S_IFSOCK:
        made = fs.mknodAt(rootIno, name, mode, rdev, root).ino;
        break;
      default:
        throw streamError("record", `inode ${ino} has an unknown type ${(mode & S_IFMT).toString(8)}`);
    }
    if (made !== ino) throw new Error(`receive: inode ${ino} was made as ${made}`);
    this.temps.add(ino);
  }

  private regular(ino: number): void {
    if ((this.fs.statIno(ino).mode & S_IFMT) !== C.S_IFREG) throw streamError("state", `inode ${ino} is not a regular file`);
  }

  private handleOf(ino: number): number {
    const open = this.handles.get(ino);
    if (open !== undefined) return open;
    this.regular(ino);
    const fh = this.fs.openIno(ino, C.O_WRONLY);
    this.handles.set(ino, fh);
    return fh;
  }

  private release(ino: number): void {
    const fh = this.handles.get(ino);
    if (fh === undefined) return;
    this.handles.delete(ino);
    this.fs.release(fh);
  }

  finish(): void {
    for (const ino of [...this.handles.keys()]) this.release(ino);
    if (this.temps.size > 0) throw streamError("state", `${this.temps.size} inodes were never given a name`);
  }
}
