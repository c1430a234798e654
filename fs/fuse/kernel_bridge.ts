/**
 * The kernel transport's request handlers: one decoded FUSE request in, the
 * bytes of its reply out, against the inode-addressed filesystem (InodeOps)
 * of the served subvolume, the virtual /.snapshots, and snapshot views.
 *
 * Invariants:
 * - `handle` never throws. Every request but FORGET, BATCH_FORGET and
 *   INTERRUPT gets exactly one reply: a GroveError answers its errno
 *   (corruption and I/O errors are EIO); anything else is a bug, answered EIO
 *   and logged once per stack.
 * - Each reply that hands the kernel a node raises its lookup count
 *   (NodeTable.remember) before the reply is returned.
 * - Wire file handles are this bridge's own numbers, mapped to the
 *   filesystem (live or a view) and its handle there: each view numbers its
 *   handles from 1 too.
 * - With the writeback cache the kernel owns a regular file's size, mtime and
 *   ctime while it caches pages: it may read through a handle opened
 *   write-only and handles O_APPEND itself, so opens are widened to O_RDWR and
 *   lose O_APPEND (what libfuse's passthrough_ll does), and the times it sends
 *   with SETATTR are taken as they are.
 */
import { constants as C } from "node:fs";
import { GroveError, errnos } from "../../kvstore/index.js";
import type { Caller, InodeOps, Stat } from "../api.js";
import { rootIno } from "../constants.js";
import { snapshotDirName } from "../snapshot_dir.js";
import { xattrNamespaceUnsupported } from "../xattrs.js";
import { NodeTable, snapshotDirNode, type NodeTarget, type ViewSlot } from "./nodes.js";
import * as P from "./protocol.js";
import { Opcode, fattr, type Attr, type Request } from "./protocol.js";

/** Entries and attributes of the served subvolume: every change passes through the kernel, so caching long is safe. */
const liveTimeoutMs = 60_000;
/** A snapshot never changes. */
const viewTimeoutMs = 3_600_000;
const bugStacksLoggedMax = 64;
const snapshotDirNameBytes = Buffer.from(snapshotDirName);
const sIfDir = 0o040000;
const sIfMt = 0o170000;
const seekData = 3;
const seekHole = 4;

/** The range operations a filesystem may offer beyond InodeOps (fallocate, SEEK_DATA/SEEK_HOLE, copy_file_range). */
interface RangeOps {
  fallocate?(ino: number, mode: number, offset: number, length: number): void;
  lseek?(ino: number, offset: number, whence: "data" | "hole"): number;
  copyFileRange?(src: { fs?: unknown; ino: number }, srcOffset: number, dstIno: number, dstOffset: number, length: number): number;
}

interface OpenFile {
  ops: InodeOps;
  /** open(2) flags as the filesystem got them (0 for directories). */
  flags: number;
  /** The snapshot view it was opened in; null in the served subvolume. */
  view: ViewSlot | null;
  fh: number;
  node: number;
  ino: number;
  directory: boolean;
  /** readdir: where the last reply stopped, to go on without a rescan. */
  cursor: { offset: number; lastName: Buffer | undefined } | null;
  /** /.snapshots: the names listed, taken at the first readdir. */
  names: string[] | null;
}

export interface KernelBridgeOptions {
  /** The writeback cache was negotiated. */
  writeback: boolean;
  /** Largest read or write the kernel may send. */
  maxWrite: number;
  /** Has the kernel write back the mount's dirty pages (syncfs from another process); the session serves meanwhile. */
  flushKernel?: () => Promise<void>;
}

export class KernelBridge {
  private readonly handles = new Map<number, OpenFile>();
  /** Open handles that may write, per inode of the served subvolume (views are read-only): lseek's question. */
  private readonly writers = new Map<number, number>();
  private nextFh = 1;
  private readonly loggedBugs = new Set<string>();
  private readonly mountedNs = BigInt(Date.now()) * 1_000_000n;
  private readBuffer: Buffer;
  closed = false;

  constructor(
    readonly nodes: NodeTable,
    private options: KernelBridgeOptions,
  ) {
    this.readBuffer = Buffer.allocUnsafe(options.maxWrite);
  }

  /** After INIT: what was negotiated. */
  configure(options: KernelBridgeOptions): void {
    this.options = { ...this.options, ...options };
    if (this.readBuffer.length < options.maxWrite) this.readBuffer = Buffer.allocUnsafe(options.maxWrite);
  }

  /** The reply to `req` (null for requests that get none, a promise for one answered later). Never throws or rejects. */
  handle(req: Request): Buffer | Buffer[] | Promise<Buffer> | null {
    const unique = req.header.unique;
    try {
      if (this.closed) return P.replyError(unique, errnos.EIO);
      return this.dispatch(req);
    } catch (error) {
      return P.replyError(unique, this.errnoOf(P.opcodeName(req.op), error));
    }
  }

  /** The errno that answers `error`; anything that is not a GroveError is a bug, logged. */
  errnoOf(op: string, error: unknown): number {
    if (error instanceof GroveError) return error.errno;
    const text = error instanceof Error ? (error.stack ?? `${error.name}: ${error.message}`) : String(error);
    if (!this.loggedBugs.has(text) && this.loggedBugs.size < bugStacksLoggedMax) {
      this.loggedBugs.add(text);
      try {
        process.stderr.write(`grovefs: bug: ${op} threw a non-GroveError, answered EIO:\n${text}\n`);
      } catch {
        // No log to write to.
      }
    }
    return errnos.EIO;
  }

  private dispatch(req: Request): Buffer | Buffer[] | Promise<Buffer> | null {
    const h = req.header;
    const unique = h.unique;
    switch (req.op) {
      case Opcode.LOOKUP:
        return this.lookup(h.nodeid, req.name, unique);
      case Opcode.FORGET:
        this.nodes.forget(h.nodeid, req.nlookup);
        return null;
      case Opcode.BATCH_FORGET:
        for (const f of req.forgets) this.nodes.forget(f.nodeid, f.nlookup);
        return null;
      case Opcode.GETATTR:
        return this.attrReply(unique, this.target(h.nodeid), h.nodeid);
      case Opcode.SETATTR:
        return this.setattr(req, unique);
      case Opcode.READLINK:
        return P.replyReadlink(unique, this.liveOrView(h.nodeid).ops.readlinkIno(this.inoOf(h.nodeid)));
      case Opcode.MKDIR:
      case Opcode.MKNOD:
      case Opcode.SYMLINK:
      case Opcode.LINK:
        return this.make(req, unique);
      case Opcode.UNLINK:
      case Opcode.RMDIR:
        return this.remove(req, unique);
      case Opcode.RENAME:
      case Opcode.RENAME2:
        return this.rename(req, unique);
      case Opcode.OPEN:
        return this.open(h.nodeid, req.flags, req.openFlags, unique);
      case Opcode.CREATE:
        return this.create(req, unique);
      case Opcode.READ:
        return this.read(req.fh, req.offset, req.size, unique);
      case Opcode.WRITE:
        return this.write(req, unique);
      case Opcode.STATFS:
        return this.statfs(unique);
      case Opcode.RELEASE:
      case Opcode.RELEASEDIR:
        this.release(req.fh);
        return P.replyOk(unique);
      case Opcode.FLUSH:
        // ENOSYS once, and the kernel stops sending FLUSH (a round trip per close saved). close(2) has
        // nothing to report: writes are admitted against space when they are taken, and the kernel
        // writes dirty pages back, and reports their errors, before it would send FLUSH.
        return P.replyError(unique, errnos.ENOSYS);
      case Opcode.FSYNC:
      case Opcode.FSYNCDIR:
        return this.fsync(req.fh, (req.fsyncFlags & P.fsyncFdatasync) !== 0, unique);
      case Opcode.OPENDIR:
        return this.opendir(h.nodeid, unique);
      case Opcode.READDIR:
      case Opcode.READDIRPLUS:
        return this.readdir(req.fh, req.offset, req.size, req.op === Opcode.READDIRPLUS, unique);
      case Opcode.GETXATTR:
        return this.getxattr(h.nodeid, req.name, req.size, unique);
      case Opcode.LISTXATTR:
        return this.listxattr(h.nodeid, req.size, unique);
      case Opcode.SETXATTR:
        return this.setxattr(req, unique);
      case Opcode.REMOVEXATTR:
        this.writable(h.nodeid).ops.removexattrIno(this.inoOf(h.nodeid), req.name.toString("utf8"));
        return P.replyOk(unique);
      case Opcode.FALLOCATE:
        return this.fallocate(req, unique);
      case Opcode.LSEEK:
        return this.lseek(req, unique);
      case Opcode.COPY_FILE_RANGE:
      case Opcode.COPY_FILE_RANGE_64:
        return this.copyFileRange(req, unique);
      case Opcode.INTERRUPT:
        // Every request is answered as soon as it is read, in order: there is nothing to interrupt.
        return null;
      case Opcode.DESTROY:
        return P.replyOk(unique);
      case Opcode.SYNCFS:
        this.nodes.live.sync();
        return P.replyOk(unique);
      default:
        return P.replyError(unique, errnos.ENOSYS);
    }
  }

  // ---- nodes and attributes ----------------------------------------------------------

  private target(node: number): NodeTarget {
    return this.nodes.target(node);
  }

  /** A node of a filesystem (not /.snapshots itself). */
  private liveOrView(node: number): Exclude<NodeTarget, { kind: "snapshots" }> {
    const target = this.target(node);
    if (target.kind === "snapshots") throw new GroveError("EINVAL", "EINVAL_snapshot_dir", "/.snapshots is a virtual directory");
    return target;
  }

  private inoOf(node: number): number {
    return this.liveOrView(node).ino;
  }

  /** A node whose filesystem may change: EROFS in and under /.snapshots. */
  private writable(node: number): Extract<NodeTarget, { kind: "live" }> {
    const target = this.target(node);
    if (target.kind !== "live") throw new GroveError("EROFS", "EROFS_snapshot", "snapshots are read-only");
    return target;
  }

  private timeoutOf(target: NodeTarget): number {
    return target.kind === "view" ? viewTimeoutMs : liveTimeoutMs;
  }

  private attrOf(node: number, st: Stat): Attr {
    return {
      ino: node,
      size: st.size,
      blocks: st.blocks,
      atimeNs: st.atimeNs,
      mtimeNs: st.mtimeNs,
      ctimeNs: st.ctimeNs,
      mode: st.mode,
      nlink: st.nlink,
      uid: st.uid,
      gid: st.gid,
      rdev: st.rdev,
      blksize: st.blksize,
    };
  }

  private snapshotDirAttr(): Attr {
    const root = this.nodes.live.statIno(rootIno);
    return {
      ino: snapshotDirNode,
      size: 0,
      blocks: 0,
      atimeNs: this.mountedNs,
      mtimeNs: this.mountedNs,
      ctimeNs: this.mountedNs,
      mode: sIfDir | 0o555,
      nlink: 2,
      uid: root.uid,
      gid: root.gid,
      rdev: 0,
      blksize: root.blksize,
    };
  }

  private statOf(target: NodeTarget, node: number): Attr {
    if (target.kind === "snapshots") return this.snapshotDirAttr();
    return this.attrOf(node, target.ops.statIno(target.ino));
  }

  private attrReply(unique: bigint, target: NodeTarget, node: number): Buffer {
    return P.replyAttr(unique, { attrValidMs: this.timeoutOf(target), attr: this.statOf(target, node) });
  }

  /** An entry reply for `st` in `dir`'s filesystem; raises the node's lookup count. */
  private entry(dir: NodeTarget, st: Stat): P.EntryOut {
    const node = this.nodes.nodeOf(dir, st.ino);
    const timeout = this.timeoutOf(dir);
    this.nodes.remember(node, st.mode);
    return { nodeid: node, generation: 0, entryValidMs: timeout, attrValidMs: timeout, attr: this.attrOf(node, st) };
  }

  private lookup(parent: number, name: Buffer, unique: bigint): Buffer {
    const dir = this.target(parent);
    const found = this.find(dir, parent, name);
    if (found === undefined) {
      // A negative entry, cached as long as a positive one: every name change passes through the kernel.
      return P.replyNegativeEntry(unique, this.timeoutOf(dir));
    }
    return P.replyEntry(unique, found);
  }

  private find(dir: NodeTarget, parent: number, name: Buffer): P.EntryOut | undefined {
    if (dir.kind === "snapshots") {
      let root: { node: number; view: { name: string } };
      try {
        root = this.nodes.snapshotRoot(name.toString("utf8"));
      } catch (error) {
        if (error instanceof GroveError && error.code === "ENOENT") return undefined;
        throw error;
      }
      const viewTarget = this.target(root.node);
      const st = this.liveOrView(root.node).ops.statIno(rootIno);
      return this.entry(viewTarget, st);
    }
    if (this.isSnapshotDirName(dir, parent, name)) {
      this.nodes.remember(snapshotDirNode, sIfDir);
      return { nodeid: snapshotDirNode, generation: 0, entryValidMs: liveTimeoutMs, attrValidMs: liveTimeoutMs, attr: this.snapshotDirAttr() };
    }
    const st = dir.ops.findEntry(dir.ino, name);
    return st === undefined ? undefined : this.entry(dir, st);
  }

  /** "/.snapshots" in the served subvolume's root: the virtual directory, whatever the tree holds. */
  private isSnapshotDirName(dir: NodeTarget, parent: number, name: Buffer): boolean {
    return dir.kind === "live" && parent === rootIno && this.nodes.subvolumes !== null && name.equals(snapshotDirNameBytes);
  }

  /** Refuses a change of the name /.snapshots: it cannot be made (EEXIST), removed or renamed (EROFS). */
  private checkNotSnapshotDir(parent: number, name: Buffer, creating: boolean): void {
    if (!this.isSnapshotDirName(this.target(parent), parent, name)) return;
    if (creating) throw new GroveError("EEXIST", "EEXIST_snapshot_dir", "/.snapshots exists");
    throw new GroveError("EROFS", "EROFS_snapshot_dir", "/.snapshots cannot be changed");
  }

  private setattr(req: P.SetattrRequest, unique: bigint): Buffer {
    try {
      return this.setattrOf(req, unique);
    } catch (error) {
      const gone = this.timesOfFreedInode(req, error);
      if (gone === null) throw error;
      return P.replyAttr(unique, { attrValidMs: 0, attr: gone });
    }
  }

  /**
   * With the writeback cache the kernel keeps a file's times and writes them
   * back later with SETATTR, also after the last name went (unlink updates
   * ctime), when the filesystem has already freed the inode. Refusing that
   * with ENOENT would surface as a failed syncfs(2); the times of a file that
   * no longer exists can be accepted and dropped. Anything else on a freed
   * inode is still ENOENT.
   */
  private timesOfFreedInode(req: P.SetattrRequest, error: unknown): Attr | null {
    if (!(error instanceof GroveError) || error.detail !== "ENOENT_inode") return null;
    const times = fattr.atime | fattr.mtime | fattr.ctime | fattr.atimeNow | fattr.mtimeNow | fattr.fh | fattr.lockowner;
    if ((req.valid & ~times) !== 0) return null;
    const type = this.nodes.typeOf(req.header.nodeid);
    if (type === undefined) return null;
    return { ...P.noAttr, ino: req.header.nodeid, mode: type, blksize: 4096 };
  }

  private setattrOf(req: P.SetattrRequest, unique: bigint): Buffer {
    const node = req.header.nodeid;
    const target = this.writable(node);
    const v = req.valid;
    const st = target.ops.setattr(target.ino, {
      size: (v & fattr.size) !== 0 ? req.size : undefined,
      mode: (v & fattr.mode) !== 0 ? req.mode & 0o7777 : undefined,
      uid: (v & fattr.uid) !== 0 ? req.uid : undefined,
      gid: (v & fattr.gid) !== 0 ? req.gid : undefined,
      atime: timeOf(v, fattr.atimeNow, fattr.atime, req.atime, req.atimensec),
      mtime: timeOf(v, fattr.mtimeNow, fattr.mtime, req.mtime, req.mtimensec),
      ctime: (v & fattr.ctime) !== 0 ? req.ctime * 1_000_000_000n + BigInt(req.ctimensec) : undefined,
      killSuidgid: (v & fattr.killSuidgid) !== 0,
    });
    return P.replyAttr(unique, { attrValidMs: liveTimeoutMs, attr: this.attrOf(node, st) });
  }

  // ---- names ---------------------------------------------------------------------

  private make(req: P.MkdirRequest | P.MknodRequest | P.SymlinkRequest | P.LinkRequest, unique: bigint): Buffer {
    const h = req.header;
    const caller: Caller = { uid: h.uid, gid: h.gid };
    const parent = h.nodeid;
    this.checkNotSnapshotDir(parent, req.name, true);
    const dir = this.writable(parent);
    let st: Stat;
    switch (req.op) {
      case Opcode.MKDIR:
        st = dir.ops.mkdirAt(dir.ino, req.name, req.mode, caller);
        break;
      case Opcode.MKNOD:
        st = dir.ops.mknodAt(dir.ino, req.name, req.mode, req.rdev, caller);
        break;
      case Opcode.SYMLINK:
        st = dir.ops.symlinkAt(dir.ino, req.name, req.target, caller);
        break;
      default: {
        const source = this.writable(req.oldnodeid);
        st = dir.ops.linkAt(source.ino, dir.ino, req.name);
      }
    }
    return P.replyEntry(unique, this.entry(dir, st));
  }

  private remove(req: P.UnlinkRequest | P.RmdirRequest, unique: bigint): Buffer {
    const parent = req.header.nodeid;
    this.checkNotSnapshotDir(parent, req.name, false);
    const dir = this.writable(parent);
    if (req.op === Opcode.UNLINK) dir.ops.unlinkAt(dir.ino, req.name);
    else dir.ops.rmdirAt(dir.ino, req.name);
    return P.replyOk(unique);
  }

  private rename(req: P.RenameRequest | P.Rename2Request, unique: bigint): Buffer {
    const parent = req.header.nodeid;
    this.checkNotSnapshotDir(parent, req.name, false);
    // Renaming onto /.snapshots would make a name that exists: EEXIST, as creating it.
    this.checkNotSnapshotDir(req.newdir, req.newname, true);
    const from = this.writable(parent);
    const to = this.writable(req.newdir);
    const flags = req.op === Opcode.RENAME2 ? req.flags : 0;
    from.ops.renameAt(from.ino, req.name, to.ino, req.newname, flags);
    return P.replyOk(unique);
  }

  // ---- files -------------------------------------------------------------------------

  /** open(2) flags as the filesystem should see them (see the module comment on the writeback cache). */
  private openFlags(flags: number): number {
    if (!this.options.writeback) return flags;
    let out = flags & ~C.O_APPEND;
    if ((out & 3) === C.O_WRONLY) out = (out & ~3) | C.O_RDWR;
    return out;
  }

  private newFile(file: Omit<OpenFile, "cursor" | "names" | "view">): number {
    const fh = this.nextFh++;
    const target = this.target(file.node);
    const opened: OpenFile = { ...file, view: target.kind === "view" ? target.view : null, cursor: null, names: null };
    this.handles.set(fh, opened);
    if (writes(opened)) this.writers.set(opened.ino, (this.writers.get(opened.ino) ?? 0) + 1);
    return fh;
  }

  /** An open file; ENOENT once the snapshot it was opened in is deleted (its view is closed and never used again). */
  private file(fh: number): OpenFile {
    const file = this.handles.get(fh);
    if (file === undefined) throw new GroveError("EBADF", "EBADF_handle", `bad file handle ${fh}`);
    if (file.view?.dead === true) throw new GroveError("ENOENT", "ENOENT_snapshot_deleted", `snapshot ${JSON.stringify(file.view.name)} was deleted`);
    return file;
  }

  /** The page cache stays valid across opens: nothing changes a file behind the kernel's back. */
  private openReplyFlags(): number {
    return P.fopen.keepCache;
  }

  private open(node: number, flags: number, openFlags: number, unique: bigint): Buffer {
    const target = this.liveOrView(node);
    const wanted = this.openFlags(flags);
    if ((openFlags & P.openKillSuidgid) !== 0 && (wanted & C.O_TRUNC) !== 0 && target.kind === "live") {
      target.ops.setattr(target.ino, { killSuidgid: true });
    }
    const inner = target.ops.openIno(target.ino, wanted);
    const fh = this.newFile({ ops: target.ops, flags: wanted, fh: inner, node, ino: target.ino, directory: false });
    return P.replyOpen(unique, { fh, openFlags: this.openReplyFlags() });
  }

  private create(req: P.CreateRequest, unique: bigint): Buffer {
    const parent = req.header.nodeid;
    this.checkNotSnapshotDir(parent, req.name, true);
    const dir = this.writable(parent);
    const caller: Caller = { uid: req.header.uid, gid: req.header.gid };
    const made = dir.ops.createAt(dir.ino, req.name, req.mode, this.openFlags(req.flags) | C.O_CREAT, caller);
    const entry = this.entry(dir, made.stat);
    const fh = this.newFile({ ops: dir.ops, flags: C.O_RDWR, fh: made.fh, node: entry.nodeid, ino: made.stat.ino, directory: false });
    return P.replyCreate(unique, entry, { fh, openFlags: this.openReplyFlags() });
  }

  private read(fh: number, offset: number, size: number, unique: bigint): Buffer | Buffer[] {
    const file = this.file(fh);
    const length = Math.min(size, this.readBuffer.length);
    const n = file.ops.read(file.fh, this.readBuffer, length, offset);
    return P.replyData(unique, this.readBuffer.subarray(0, n));
  }

  private write(req: P.WriteRequest, unique: bigint): Buffer {
    const file = this.file(req.fh);
    const kill = (req.writeFlags & P.writeFlag.killSuidgid) !== 0;
    const n = file.ops.write(file.fh, req.data, req.size, req.offset, kill);
    return P.replyWrite(unique, n);
  }

  private release(fh: number): void {
    const file = this.handles.get(fh);
    if (file === undefined) throw new GroveError("EBADF", "EBADF_handle", `bad file handle ${fh}`);
    this.handles.delete(fh);
    if (writes(file)) {
      const left = this.writers.get(file.ino)! - 1;
      if (left === 0) this.writers.delete(file.ino);
      else this.writers.set(file.ino, left);
    }
    // A deleted snapshot's view is closed already: close(2) still succeeds.
    if (file.fh === 0 || file.view?.dead === true) return;
    if (file.directory) file.ops.releasedir(file.fh);
    else file.ops.release(file.fh);
  }

  private fsync(fh: number, dataOnly: boolean, unique: bigint): Buffer {
    const file = this.file(fh);
    if (file.fh !== 0) {
      if (file.directory) file.ops.fsyncdir(file.fh, dataOnly);
      else file.ops.fsync(file.fh, dataOnly);
    }
    return P.replyOk(unique);
  }

  private statfs(unique: bigint): Buffer {
    const st = this.nodes.live.statfs();
    return P.replyStatfs(unique, {
      blocks: st.blocks,
      bfree: st.bfree,
      bavail: st.bavail,
      files: st.files,
      ffree: st.ffree,
      bsize: st.bsize,
      namelen: st.namemax,
      frsize: st.frsize,
    });
  }

  // ---- directories ---------------------------------------------------------------

  private opendir(node: number, unique: bigint): Buffer {
    const target = this.target(node);
    if (target.kind === "snapshots") {
      const fh = this.newFile({ ops: this.nodes.live, flags: 0, fh: 0, node, ino: 0, directory: true });
      return P.replyOpen(unique, { fh, openFlags: 0 });
    }
    const inner = target.ops.opendirIno(target.ino);
    const fh = this.newFile({ ops: target.ops, flags: 0, fh: inner, node, ino: target.ino, directory: true });
    return P.replyOpen(unique, { fh, openFlags: target.kind === "view" ? P.fopen.keepCache | P.fopen.cacheDir : 0 });
  }

  private readdir(fh: number, offset: number, size: number, plus: boolean, unique: bigint): Buffer {
    const file = this.file(fh);
    const target = this.target(file.node);
    const packer = new P.DirentPacker(Math.min(size, this.options.maxWrite), plus);
    let index = offset;
    for (; index < 2; index++) {
      if (!packer.add(this.dotEntry(index === 0 ? "." : "..", index + 1, file.node, plus))) return packer.finish(unique);
    }
    if (target.kind === "snapshots") this.snapshotEntries(file, packer, index, plus);
    else this.treeEntries(file, target, packer, index, plus);
    return packer.finish(unique);
  }

  private dotEntry(name: string, off: number, node: number, plus: boolean): P.DirentIn {
    const dirent = { ino: node, off, type: sIfDir >> 12, name: Buffer.from(name) };
    if (!plus) return dirent;
    // "." and ".." get no lookup count: the kernel skips them in a readdirplus reply.
    return { ...dirent, nodeid: 0, generation: 0, entryValidMs: 0, attrValidMs: 0, attr: P.noAttr };
  }

  private treeEntries(
    file: OpenFile,
    dir: Exclude<NodeTarget, { kind: "snapshots" }>,
    packer: P.DirentPacker,
    start: number,
    plus: boolean,
  ): void {
    let index = start;
    let after: Buffer | undefined;
    if (index > 2) {
      if (file.cursor !== null && file.cursor.offset === index) after = file.cursor.lastName;
      else {
        const skipped = this.skipEntries(dir, index - 2);
        if (skipped === null) return;
        after = skipped;
      }
    }
    let lastName = after;
    const hideSnapshotDir = dir.kind === "live" && dir.ino === rootIno && this.nodes.subvolumes !== null;
    dir.ops.readdirIno(dir.ino, after, (e) => {
      if (hideSnapshotDir && e.name.equals(snapshotDirNameBytes)) {
        index++;
        lastName = Buffer.from(e.name);
        return true;
      }
      const node = this.nodes.nodeOf(dir, e.ino);
      const dirent = { ino: node, off: index + 1, type: (e.type & sIfMt) >> 12, name: e.name };
      if (!plus) {
        if (!packer.add(dirent)) return false;
      } else {
        const st = dir.ops.statIno(e.ino);
        const timeout = this.timeoutOf(dir);
        const added = packer.add({ ...dirent, nodeid: node, generation: 0, entryValidMs: timeout, attrValidMs: timeout, attr: this.attrOf(node, st) });
        if (!added) return false;
        this.nodes.remember(node, st.mode);
      }
      index++;
      lastName = Buffer.from(e.name);
      return true;
    });
    file.cursor = { offset: index, lastName };
  }

  /** The name of the `count`th entry (what to go on after), or null if there are fewer. */
  private skipEntries(dir: Exclude<NodeTarget, { kind: "snapshots" }>, count: number): Buffer | null {
    let seen = 0;
    let name: Buffer | null = null;
    dir.ops.readdirIno(dir.ino, undefined, (e) => {
      seen++;
      if (seen < count) return true;
      name = Buffer.from(e.name);
      return false;
    });
    return name;
  }

  private snapshotEntries(file: OpenFile, packer: P.DirentPacker, start: number, plus: boolean): void {
    if (file.names === null || start === 2) {
      file.names = this.nodes.subvolumes!.listSubvolumes().filter((s) => s.readOnly).map((s) => s.name);
    }
    for (let index = start; index - 2 < file.names.length; index++) {
      const name = Buffer.from(file.names[index - 2]!);
      let root: { node: number };
      try {
        root = this.nodes.snapshotRoot(name.toString("utf8"));
      } catch (error) {
        // Deleted since the listing was taken: skip it.
        if (error instanceof GroveError && error.code === "ENOENT") continue;
        throw error;
      }
      const dirent = { ino: root.node, off: index + 1, type: sIfDir >> 12, name };
      if (!plus) {
        if (!packer.add(dirent)) return;
        continue;
      }
      const viewTarget = this.target(root.node);
      const st = this.liveOrView(root.node).ops.statIno(rootIno);
      const attr = this.attrOf(root.node, st);
      if (!packer.add({ ...dirent, nodeid: root.node, generation: 0, entryValidMs: this.timeoutOf(viewTarget), attrValidMs: this.timeoutOf(viewTarget), attr })) return;
      this.nodes.remember(root.node, sIfDir);
    }
  }

  // ---- extended attributes -------------------------------------------------------------

  private getxattr(node: number, name: Buffer, size: number, unique: bigint): Buffer {
    const target = this.target(node);
    const value = target.kind === "snapshots" ? undefined : target.ops.findXattrIno(target.ino, name.toString("utf8"));
    if (value === undefined) return P.replyError(unique, errnos.ENODATA);
    if (size === 0) return P.replyGetxattrSize(unique, value.length);
    if (size < value.length) return P.replyError(unique, errnos.ERANGE);
    return P.replyOk(unique, value);
  }

  private setxattr(req: P.SetxattrRequest, unique: bigint): Buffer {
    const target = this.writable(req.header.nodeid);
    // cp -a tries system.posix_acl_access on every file it copies: refused without building an error.
    if (xattrNamespaceUnsupported(req.name)) return P.replyError(unique, errnos.EOPNOTSUPP);
    target.ops.setxattrIno(target.ino, req.name.toString("utf8"), Buffer.from(req.value), req.flags);
    return P.replyOk(unique);
  }

  private listxattr(node: number, size: number, unique: bigint): Buffer {
    const target = this.target(node);
    const names = target.kind === "snapshots" ? [] : target.ops.listxattrIno(target.ino);
    const bytes = Buffer.concat(names.map((n) => Buffer.from(`${n}\0`, "utf8")));
    if (size === 0) return P.replyGetxattrSize(unique, bytes.length);
    if (size < bytes.length) return P.replyError(unique, errnos.ERANGE);
    return P.replyOk(unique, bytes);
  }

  // ---- ranges ----------------------------------------------------------------------

  private fallocate(req: P.FallocateRequest, unique: bigint): Buffer {
    const file = this.file(req.fh);
    const target = this.writable(file.node);
    const ops = target.ops as InodeOps & RangeOps;
    if (ops.fallocate === undefined) return P.replyError(unique, errnos.EOPNOTSUPP);
    ops.fallocate(target.ino, req.mode, req.offset, req.length);
    return P.replyOk(unique);
  }

  private lseek(req: P.LseekRequest, unique: bigint): Buffer | Promise<Buffer> {
    const file = this.file(req.fh);
    const ops = file.ops as InodeOps & RangeOps;
    if (req.whence !== seekData && req.whence !== seekHole) return P.replyError(unique, errnos.EINVAL);
    if (ops.lseek === undefined) return P.replyError(unique, errnos.ENOSYS);
    // A negative offset arrives as a huge unsigned one (decoded as Infinity): ENXIO, as for any offset past the end.
    if (!Number.isSafeInteger(req.offset)) return P.replyError(unique, errnos.ENXIO);
    const whence = req.whence === seekData ? "data" : "hole";
    const answer = () => P.replyLseek(unique, ops.lseek!(file.ino, req.offset, whence));
    if (!this.options.writeback || this.options.flushKernel === undefined || !(file.view === null && this.writers.has(file.ino))) return answer();
    // A file open for writing may have written pages only the kernel has (the writeback cache; fuse_lseek
    // does not write them back first), and a hole here may be data there: have the kernel write them
    // back, serving those writes meanwhile, then answer from what the filesystem holds.
    return this.options.flushKernel().then(
      () => this.guarded(req, answer),
      (error: unknown) => P.replyError(unique, this.errnoOf("lseek (write-back)", error)),
    );
  }

  /** `work`'s reply, or the errno of what it threw (an answer that comes later, outside `handle`). */
  private guarded(req: Request, work: () => Buffer): Buffer {
    try {
      if (this.closed) return P.replyError(req.header.unique, errnos.EIO);
      return work();
    } catch (error) {
      return P.replyError(req.header.unique, this.errnoOf(P.opcodeName(req.op), error));
    }
  }

  private copyFileRange(req: P.CopyFileRangeRequest, unique: bigint): Buffer {
    const src = this.file(req.fhIn);
    const dst = this.file(req.fhOut);
    const dstTarget = this.writable(dst.node);
    const ops = dstTarget.ops as InodeOps & RangeOps;
    if (ops.copyFileRange === undefined) return P.replyError(unique, errnos.ENOSYS);
    const fromOther = src.ops !== dst.ops ? { fs: src.ops, ino: src.ino } : { ino: src.ino };
    // The 32-bit reply caps one call at 4 GiB - 1 (the kernel asks for no more). A length past 2^53 decodes
    // as Infinity: as much as the source holds.
    const len = Math.min(req.len, req.op === Opcode.COPY_FILE_RANGE ? 0xffffffff : Number.MAX_SAFE_INTEGER);
    const n = ops.copyFileRange(fromOther, req.offIn, dstTarget.ino, req.offOut, len);
    return req.op === Opcode.COPY_FILE_RANGE ? P.replyWrite(unique, n) : P.replyCopied64(unique, n);
  }
}

/** Whether an open file may write (only in the served subvolume: views are read-only). */
function writes(file: OpenFile): boolean {
  return file.view === null && !file.directory && (file.flags & 3) !== C.O_RDONLY;
}

/** A SETATTR time: "now", the time given, or none. */
function timeOf(valid: number, now: number, set: number, sec: bigint, nsec: number): "now" | bigint | undefined {
  return (valid & now) !== 0 ? "now" : (valid & set) !== 0 ? sec * 1_000_000_000n + BigInt(nsec) : undefined;
}
