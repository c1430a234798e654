/**
 * `/.snapshots` in a mount: a FileSystemOps wrapper around the served
 * filesystem that adds a hidden, virtual, read-only directory at the root.
 * `/.snapshots/NAME/rest` is `rest` in the read-only view of snapshot NAME
 * (`snapshotView`); everything else goes to the served filesystem unchanged.
 *
 * Like ZFS's `snapdir=hidden`, readdir("/") does not list `.snapshots`, but it
 * can be entered. It lists the read-only subvolumes; clones are not shown
 * (they are mounted with --subvol). Nothing under it can change: every
 * mutating operation there answers EROFS, and making something named
 * `.snapshots` in the root answers EEXIST (a real entry of that name, made
 * before this existed, is shadowed and hidden).
 *
 * Invariants:
 * - Every file handle the bridge sees is this wrapper's own number, mapped to
 *   (the filesystem that opened it, its handle there): the served filesystem
 *   and each view number their handles independently from 1, so passing them
 *   through would collide.
 * - Inode numbers from a view are remapped so that a snapshot's files never
 *   share an st_ino with the served filesystem's or another snapshot's:
 *   fuse-native passes 32-bit inode numbers and one st_dev for the whole
 *   mount, and `find` and `du` see a directory loop (or a hard link) where two
 *   directories have the same (st_dev, st_ino), e.g. /.snapshots/X (root,
 *   inode 1) and / (inode 1). A view's inode i is shown as
 *   slot * 2^24 + (i mod 2^24) with slot = 1 + (subvolume id mod 254), and
 *   /.snapshots itself is 0xff000001. The collision limit: this is unique only
 *   while the served filesystem's inode numbers stay below 2^24 (16M), each
 *   snapshot's too, and no two live snapshots' ids are equal mod 254.
 *   Collisions confuse only tools that compare inode numbers (loop and
 *   hard-link detection); data is always served by path.
 * - A snapshot deleted through this wrapper (the mount daemon's control socket
 *   does) is forgotten at once: its cached view goes, and every handle opened
 *   from it answers ENOENT (release succeeds). The view is never used again,
 *   so a deletion freeing its blocks can never be read through it. Deletions
 *   that bypass the wrapper are not seen: the served filesystem holds the
 *   image lock, so within one mount there are none.
 * - Nothing here throws anything but a GroveError for bad input, so the
 *   bridge's no-throw invariant holds unchanged.
 */
import { GroveError } from "../kvstore/index.js";
import type { Caller, DirEntry, FileSystemOps, InodeOps, Stat, StatFs, SubvolumeInfo, SubvolumeOps, SubvolumeRef, TimeSpec } from "./api.js";

/** The served filesystem: the contract, snapshots, and the bridge's periodic commit check. */
export interface SnapshotSourceFs extends FileSystemOps, SubvolumeOps {
  maintenance(): void;
}

/** The name of the virtual directory in the root. */
export const snapshotDirName = ".snapshots";
const snapshotDirPath = `/${snapshotDirName}`;
const snapshotDirPrefix = `${snapshotDirPath}/`;

/** See the module comment: a view's inode numbers live in slot * 2^24 + (ino mod 2^24). */
const viewInoBits = 24;
const viewInoSpan = 2 ** viewInoBits;
const viewSlotCount = 254;
/** /.snapshots itself: slot 255, never a view's. */
export const snapshotDirIno = 0xff * viewInoSpan + 1;

/** Handles: numbers stay below 2^32 (fuse-native passes fh as uint32) and 0 means "none". */
const handleNumberMax = 2 ** 32 - 1;

const sIfDir = 0o040000;
const oAccmode = 3;
const oRdonly = 0;
const oTrunc = 0o1000;
const wOk = 2;

/** The st_ino a view shows for its inode `ino`, for the snapshot with subvolume id `id`. */
export function viewIno(id: number, ino: number): number {
  const slot = 1 + (id % viewSlotCount);
  return slot * viewInoSpan + (ino % viewInoSpan);
}

interface View {
  name: string;
  id: number;
  ops: FileSystemOps;
  /** Deleted: every use answers ENOENT. */
  dead: boolean;
}

interface HandleEntry {
  /** Null for a handle on /.snapshots itself. */
  ops: FileSystemOps | null;
  fh: number;
  /** The snapshot it was opened in, or null for the served filesystem. */
  view: View | null;
}

type Route =
  | { kind: "main"; path: string }
  | { kind: "dir" }
  | { kind: "view"; name: string; path: string };

function route(path: string): Route {
  if (path === snapshotDirPath) return { kind: "dir" };
  if (typeof path !== "string" || !path.startsWith(snapshotDirPrefix)) return { kind: "main", path };
  const rest = path.slice(snapshotDirPrefix.length);
  const slash = rest.indexOf("/");
  if (slash < 0) return { kind: "view", name: rest, path: "/" };
  return { kind: "view", name: rest.slice(0, slash), path: rest.slice(slash) || "/" };
}

function readOnlyError(path: string): GroveError {
  return new GroveError("EROFS", "EROFS_snapshot_dir", `${path}: snapshots are read-only`, { path });
}

function existsError(path: string): GroveError {
  return new GroveError("EEXIST", "EEXIST_snapshot_dir", `${path} is reserved for the snapshot directory`, { path });
}

function goneError(name: string): GroveError {
  return new GroveError("ENOENT", "ENOENT_snapshot_gone", `snapshot ${name} was deleted`, { path: `${snapshotDirPrefix}${name}` });
}

export class SnapshotDirFs implements FileSystemOps, SubvolumeOps {
  private readonly views = new Map<string, View>();
  private readonly handles = new Map<number, HandleEntry>();
  private nextFh = 1;

  constructor(readonly inner: SnapshotSourceFs) {}

  // ---- routing ------------------------------------------------------------

  /** The live view of snapshot `name`, opened on first use; ENOENT if there is no such snapshot. */
  private view(name: string): View {
    const cached = this.views.get(name);
    if (cached !== undefined) return cached;
    const info = this.findSnapshot(name);
    if (info === undefined) {
      throw new GroveError("ENOENT", "ENOENT_snapshot", `no snapshot named ${name}`, { path: `${snapshotDirPrefix}${name}` });
    }
    const view: View = { name, id: info.id, ops: this.inner.snapshotView(name), dead: false };
    this.views.set(name, view);
    return view;
  }

  private snapshots(): SubvolumeInfo[] {
    return this.inner.listSubvolumes().filter((s) => s.readOnly);
  }

  /** For operations that change what is at `path`: EROFS under /.snapshots (and on it). */
  private mutable(path: string): string {
    const r = route(path);
    if (r.kind !== "main") throw readOnlyError(path);
    return r.path;
  }

  /** For operations that make a new entry at `path`: EEXIST on /.snapshots, EROFS under it. */
  private creatable(path: string): string {
    const r = route(path);
    if (r.kind === "dir") throw existsError(path);
    if (r.kind === "view") throw readOnlyError(path);
    return r.path;
  }

  private mapStat(view: View, st: Stat): Stat {
    return { ...st, ino: viewIno(view.id, st.ino) };
  }

  private dirStat(): Stat {
    const root = this.inner.getattr("/");
    const snapshots = this.snapshots();
    const newest = snapshots.reduce((latest, s) => (s.createdNs > latest ? s.createdNs : latest), root.crtimeNs);
    return {
      ino: snapshotDirIno,
      mode: sIfDir | 0o555,
      nlink: 2 + snapshots.length,
      uid: 0,
      gid: 0,
      rdev: 0,
      size: 0,
      blocks: 0,
      blksize: root.blksize,
      atimeNs: newest,
      mtimeNs: newest,
      ctimeNs: newest,
      crtimeNs: root.crtimeNs,
    };
  }

  // ---- handles --------------------------------------------------------------

  private wrapHandle(ops: FileSystemOps | null, fh: number, view: View | null): number {
    if (this.handles.size >= handleNumberMax - 1) {
      throw new GroveError("ENOSPC", "ENOSPC_handles", "too many open files");
    }
    while (this.handles.has(this.nextFh)) this.nextFh = this.nextFh >= handleNumberMax ? 1 : this.nextFh + 1;
    const number = this.nextFh;
    this.nextFh = number >= handleNumberMax ? 1 : number + 1;
    this.handles.set(number, { ops, fh, view });
    return number;
  }

  private entry(fh: number): HandleEntry {
    const entry = this.handles.get(fh);
    if (entry === undefined) throw new GroveError("EBADF", "EBADF_handle", `bad file handle ${fh}`);
    if (entry.view?.dead) throw goneError(entry.view.name);
    return entry;
  }

  /** The handle's filesystem and number, for operations that may write (EROFS in a snapshot). */
  private writableEntry(fh: number): HandleEntry & { ops: FileSystemOps } {
    const entry = this.entry(fh);
    if (entry.ops === null || entry.view !== null) throw readOnlyError(snapshotDirPath);
    return entry as HandleEntry & { ops: FileSystemOps };
  }

  /** Forgets handle `fh`; `close` releases it in its filesystem unless the snapshot is gone. */
  private dropHandle(fh: number, close: (ops: FileSystemOps, innerFh: number) => void): void {
    const entry = this.handles.get(fh);
    if (entry === undefined) throw new GroveError("EBADF", "EBADF_handle", `bad file handle ${fh}`);
    if (entry.ops === null || entry.view?.dead) {
      this.handles.delete(fh);
      return;
    }
    close(entry.ops, entry.fh);
    this.handles.delete(fh);
  }

  // ---- attributes and directories -------------------------------------------

  getattr(path: string): Stat {
    const r = route(path);
    if (r.kind === "main") return this.inner.getattr(r.path);
    if (r.kind === "dir") return this.dirStat();
    const view = this.view(r.name);
    return this.mapStat(view, view.ops.getattr(r.path));
  }

  fgetattr(fh: number): Stat {
    const entry = this.entry(fh);
    if (entry.ops === null) return this.dirStat();
    const st = entry.ops.fgetattr(entry.fh);
    return entry.view === null ? st : this.mapStat(entry.view, st);
  }

  access(path: string, mode: number): void {
    const r = route(path);
    if (r.kind === "main") return this.inner.access(r.path, mode);
    if (mode & wOk) throw readOnlyError(path);
    if (r.kind === "dir") return;
    this.view(r.name).ops.access(r.path, mode);
  }

  readdir(path: string): DirEntry[] {
    const r = route(path);
    if (r.kind === "main") {
      const entries = this.inner.readdir(r.path);
      return r.path === "/" ? entries.filter((e) => e.name !== snapshotDirName) : entries;
    }
    // "." and ".." need their numbers: readdir(3) skips an entry whose d_ino is 0.
    if (r.kind === "dir") {
      return [
        { name: ".", ino: snapshotDirIno, type: sIfDir },
        { name: "..", ino: this.inner.getattr("/").ino, type: sIfDir },
        ...this.snapshots().map((s) => ({ name: s.name, ino: viewIno(s.id, 1), type: sIfDir })),
      ];
    }
    const view = this.view(r.name);
    const atRoot = r.path === "/";
    return view.ops
      .readdir(r.path)
      .map((e) => ({ ...e, ino: atRoot && e.name === ".." ? snapshotDirIno : viewIno(view.id, e.ino) }));
  }

  opendir(path: string): number {
    const r = route(path);
    if (r.kind === "main") return this.wrapHandle(this.inner, this.inner.opendir(r.path), null);
    if (r.kind === "dir") return this.wrapHandle(null, 0, null);
    const view = this.view(r.name);
    return this.wrapHandle(view.ops, view.ops.opendir(r.path), view);
  }

  releasedir(fh: number): void {
    this.dropHandle(fh, (ops, innerFh) => ops.releasedir(innerFh));
  }

  fsyncdir(fh: number, dataOnly: boolean): void {
    const entry = this.entry(fh);
    if (entry.ops !== null) entry.ops.fsyncdir(entry.fh, dataOnly);
  }

  mkdir(path: string, mode: number, caller: Caller): Stat {
    return this.inner.mkdir(this.creatable(path), mode, caller);
  }

  rmdir(path: string): void {
    this.inner.rmdir(this.mutable(path));
  }

  unlink(path: string): void {
    this.inner.unlink(this.mutable(path));
  }

  rename(from: string, to: string, flags?: number): void {
    const source = this.mutable(from);
    this.inner.rename(source, this.creatable(to), flags);
  }

  /** A link changes its source's link count too, so a source in a snapshot is EROFS. */
  link(existing: string, newPath: string): Stat {
    const source = this.mutable(existing);
    return this.inner.link(source, this.creatable(newPath));
  }

  symlink(target: string, path: string, caller: Caller): Stat {
    return this.inner.symlink(target, this.creatable(path), caller);
  }

  readlink(path: string): string {
    const r = route(path);
    if (r.kind === "main") return this.inner.readlink(r.path);
    if (r.kind === "dir") throw new GroveError("EINVAL", "EINVAL_not_symlink", `${path} is not a symbolic link`, { path });
    return this.view(r.name).ops.readlink(r.path);
  }

  mknod(path: string, mode: number, rdev: number, caller: Caller): Stat {
    return this.inner.mknod(this.creatable(path), mode, rdev, caller);
  }

  // ---- files ------------------------------------------------------------------

  create(path: string, mode: number, flags: number, caller: Caller): number {
    const target = this.creatable(path);
    return this.wrapHandle(this.inner, this.inner.create(target, mode, flags, caller), null);
  }

  open(path: string, flags: number): number {
    const r = route(path);
    if (r.kind === "main") return this.wrapHandle(this.inner, this.inner.open(r.path, flags), null);
    if (r.kind === "dir") throw new GroveError("EISDIR", "EISDIR_open", `${path} is a directory`, { path });
    if ((flags & oAccmode) !== oRdonly || (flags & oTrunc) !== 0) throw readOnlyError(path);
    const view = this.view(r.name);
    return this.wrapHandle(view.ops, view.ops.open(r.path, flags), view);
  }

  read(fh: number, buffer: Buffer, length: number, position: number): number {
    const entry = this.entry(fh);
    if (entry.ops === null) throw new GroveError("EISDIR", "EISDIR_read", `${snapshotDirPath} is a directory`);
    return entry.ops.read(entry.fh, buffer, length, position);
  }

  write(fh: number, buffer: Buffer, length: number, position: number): number {
    const entry = this.writableEntry(fh);
    return entry.ops.write(entry.fh, buffer, length, position);
  }

  truncate(path: string, size: number): void {
    this.inner.truncate(this.mutable(path), size);
  }

  ftruncate(fh: number, size: number): void {
    const entry = this.writableEntry(fh);
    entry.ops.ftruncate(entry.fh, size);
  }

  flush(fh: number): void {
    const entry = this.handles.get(fh);
    if (entry === undefined) throw new GroveError("EBADF", "EBADF_handle", `bad file handle ${fh}`);
    // close(2) of a handle in a deleted snapshot succeeds: there is nothing to flush there.
    if (entry.ops !== null && entry.view?.dead !== true) entry.ops.flush(entry.fh);
  }

  fsync(fh: number, dataOnly: boolean): void {
    const entry = this.entry(fh);
    if (entry.ops !== null) entry.ops.fsync(entry.fh, dataOnly);
  }

  release(fh: number): void {
    this.dropHandle(fh, (ops, innerFh) => ops.release(innerFh));
  }

  chmod(path: string, mode: number): void {
    this.inner.chmod(this.mutable(path), mode);
  }

  chown(path: string, uid: number, gid: number): void {
    this.inner.chown(this.mutable(path), uid, gid);
  }

  utimens(path: string, atime: TimeSpec, mtime: TimeSpec): void {
    this.inner.utimens(this.mutable(path), atime, mtime);
  }

  statfs(): StatFs {
    return this.inner.statfs();
  }

  // ---- extended attributes ------------------------------------------------------

  getxattr(path: string, name: string): Buffer {
    const r = route(path);
    if (r.kind === "main") return this.inner.getxattr(r.path, name);
    if (r.kind === "dir") throw new GroveError("ENODATA", "ENODATA_xattr", `${path} has no attribute ${name}`, { path });
    return this.view(r.name).ops.getxattr(r.path, name);
  }

  findXattr(path: string, name: string): Buffer | undefined {
    const r = route(path);
    if (r.kind === "main") return this.inner.findXattr(r.path, name);
    if (r.kind === "dir") return undefined;
    return this.view(r.name).ops.findXattr(r.path, name);
  }

  setxattr(path: string, name: string, value: Buffer, flags: number): void {
    this.inner.setxattr(this.mutable(path), name, value, flags);
  }

  listxattr(path: string): string[] {
    const r = route(path);
    if (r.kind === "main") return this.inner.listxattr(r.path);
    if (r.kind === "dir") return [];
    return this.view(r.name).ops.listxattr(r.path);
  }

  removexattr(path: string, name: string): void {
    this.inner.removexattr(this.mutable(path), name);
  }

  // ---- the volume ---------------------------------------------------------------

  sync(): void {
    this.inner.sync();
  }

  maintenance(): void {
    this.inner.maintenance();
  }

  /** Closes the views, then the served filesystem (which commits). */
  close(): void {
    for (const view of this.views.values()) this.forget(view);
    this.handles.clear();
    this.inner.close();
  }

  // ---- snapshots and clones (the control socket goes through here) ---------------

  get subvolumeName(): string {
    return this.inner.subvolumeName;
  }

  createSubvolume(name: string, options: { from?: string; readOnly: boolean }): SubvolumeInfo {
    return this.inner.createSubvolume(name, options);
  }

  /** Deletes, then forgets the snapshot's view: its open handles answer ENOENT from now on. */
  deleteSubvolume(name: string): void {
    this.inner.deleteSubvolume(name);
    const view = this.views.get(name);
    if (view !== undefined) this.forget(view);
  }

  findSubvolume(name: string): SubvolumeRef | undefined {
    return this.inner.findSubvolume(name);
  }

  /** Snapshot `name`; undefined for a clone, an invalid name or none. */
  private findSnapshot(name: string): SubvolumeRef | undefined {
    let info: SubvolumeRef | undefined;
    try {
      info = this.inner.findSubvolume(name);
    } catch (error) {
      // A name no subvolume can have (too long, "/" in it) names no snapshot.
      if (error instanceof GroveError && error.code === "EINVAL") return undefined;
      throw error;
    }
    return info?.readOnly === true ? info : undefined;
  }

  listSubvolumes(): SubvolumeInfo[] {
    return this.inner.listSubvolumes();
  }

  pendingDeletions(): number {
    return this.inner.pendingDeletions();
  }

  finishDeletions(): void {
    this.inner.finishDeletions();
  }

  snapshotView(name: string): FileSystemOps & InodeOps {
    return this.inner.snapshotView(name);
  }

  private forget(view: View): void {
    view.dead = true;
    this.views.delete(view.name);
    try {
      view.ops.close();
    } catch {
      // A view holds nothing to commit; whatever it failed at, it is never used again.
    }
  }
}

/** True for a filesystem that serves snapshots (GroveFs), which a mount wraps in `SnapshotDirFs`. */
export function servesSnapshots(fs: object): fs is SnapshotSourceFs {
  const candidate = fs as Partial<SnapshotSourceFs>;
  return typeof candidate.snapshotView === "function" && typeof candidate.listSubvolumes === "function";
}
