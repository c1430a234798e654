/**
 * The namespace: directory entries and the names that reach inodes. Path
 * and inode-number resolution, the slots where a name is created, removed
 * or renamed, and the bodies of mkdir, rmdir, unlink, link, symlink, mknod,
 * create and rename as far as they change names and link counts. The facade
 * (GroveFs) makes room before a call, opens handles and turns the inodes
 * returned into attributes.
 *
 * Each change validates first and mutates second: validation throws freely
 * (ENOENT, EEXIST, ENOTEMPTY, ...) and changes nothing, then the change runs
 * as one mutation of the commit policy.
 *
 * Invariants (checked by fs/check.ts):
 * - Every inode's nlink equals the directory entries naming it, plus for a
 *   directory its own "." and each subdirectory's "..".
 * - A directory's parent field names the one directory that holds it, and
 *   no directory is moved into its own subtree.
 * - A name is 1 to nameSizeMaxBytes bytes without "/" or NUL; "." and ".."
 *   are never entries.
 * - An inode whose last name goes is freed with all it owns, unless it is
 *   open: then it stays, nlink 0, on the orphan list until its last handle
 *   is released (`freeOrphan`).
 */
import { constants as C } from "node:fs";
import { GroveError, assert, blockSizeBytes } from "../kvstore/index.js";
import type { Caller, DirEntryBytes } from "./api.js";
import { renameExchange, renameNoReplace } from "./api.js";
import { linkCountMax, nameSizeMaxBytes, parentWalkMax, rootIno, symlinkTargetSizeMaxBytes } from "./constants.js";
import { Inode, decodeDirent, encodeDirent, inodeFlagHadXattrs, xattrPrefix } from "./format.js";
import type { CommitPolicy } from "./commit_policy.js";
import type { FileData } from "./file_data.js";
import type { Handles } from "./handles.js";
import type { InodeTable } from "./inode_table.js";
import type { Xattrs } from "./xattrs.js";

const S_IFMT = C.S_IFMT;
const S_IFDIR = C.S_IFDIR;
const S_IFREG = C.S_IFREG;
const S_ISGID = 0o2000;
const S_ISVTX = 0o1000;
const permissionBits = 0o7777;

/** Where a name is created, removed or renamed: its directory and the name, with the path for messages. */
export interface Slot {
  dir: Inode;
  name: Buffer;
  path?: string;
}

export type SlotPurpose = "create" | "open-create" | "remove" | "remove-dir" | "rename-source" | "rename-target";

export class Namespace {
  constructor(
    private readonly inodes: InodeTable,
    private readonly policy: CommitPolicy,
    private readonly data: FileData,
    private readonly handles: Handles,
    private readonly xattrs: Xattrs,
    private readonly clock: () => bigint,
  ) {}

  // ---- resolution -------------------------------------------------------------

  /** The inode `path` names, without following a final symlink. */
  resolve(path: string): Inode {
    this.policy.checkOpen();
    let inode = this.inodes.load(rootIno);
    for (const part of splitPath(path)) {
      if ((inode.mode & S_IFMT) !== S_IFDIR) throw new GroveError("ENOTDIR", "ENOTDIR_path", "not a directory", { path });
      if (part === ".") continue;
      if (part === "..") {
        inode = this.inodes.load(inode.parent);
        continue;
      }
      const entry = this.inodes.mapOf(inode).get(Buffer.from(part, "utf8"));
      if (entry === undefined) throw new GroveError("ENOENT", "ENOENT_path", "no such file or directory", { path });
      inode = this.inodes.load(decodeDirent(inode.ino, entry).ino);
    }
    return inode;
  }

  resolveDir(path: string): Inode {
    const inode = this.resolve(path);
    if ((inode.mode & S_IFMT) !== S_IFDIR) throw new GroveError("ENOTDIR", "ENOTDIR_path", "not a directory", { path });
    return inode;
  }

  /** Inode `ino`, or ENOENT: the kernel may still name an inode that is gone. */
  inodeAt(ino: number): Inode {
    this.policy.checkOpen();
    const inode = Number.isSafeInteger(ino) && ino > 0 ? this.inodes.tryLoad(ino) : undefined;
    if (inode === undefined) throw new GroveError("ENOENT", "ENOENT_inode", `no inode ${ino}`);
    return inode;
  }

  dirAt(ino: number): Inode {
    const inode = this.inodeAt(ino);
    if ((inode.mode & S_IFMT) !== S_IFDIR) throw new GroveError("ENOTDIR", "ENOTDIR_inode", "not a directory");
    return inode;
  }

  /** The inode `name` names in directory `parent` ("." and ".." too), or undefined. */
  find(parent: number, name: Buffer): Inode | undefined {
    const dir = this.dirAt(parent);
    if (isDot(name)) return dir;
    if (isDotDot(name)) return this.inodes.load(dir.parent);
    checkName(name);
    const entry = this.inodes.mapOf(dir).get(name);
    return entry === undefined ? undefined : this.inodes.load(decodeDirent(dir.ino, entry).ino);
  }

  /** The entries of `dir` after the name `after` (from the start when undefined), in name order; "." and ".." are not entries. */
  *entries(dir: Inode, after?: Buffer): Iterable<DirEntryBytes> {
    const from = after === undefined ? undefined : Buffer.concat([after, nulByte]);
    for (const item of this.inodes.mapOf(dir).range(from)) {
      const entry = decodeDirent(dir.ino, item.value);
      yield { name: item.key, ino: entry.ino, type: entry.type << 12 };
    }
  }

  /** The directory that holds (or will hold) the last component of `path`, and that component. */
  parentFor(path: string, purpose: SlotPurpose): Slot {
    const parts = splitPath(path);
    const last = parts.pop();
    if (last === undefined) {
      const code = purpose === "create" ? "EEXIST" : purpose === "remove" || purpose === "open-create" ? "EISDIR" : "EBUSY";
      throw new GroveError(code, `${code}_root`, "the root directory cannot be changed this way", { path });
    }
    const dir = this.resolveDir("/" + parts.join("/"));
    return this.slotIn(dir, Buffer.from(last, "utf8"), purpose, path);
  }

  /** The slot `name` in directory `parent`, checked for `purpose` as parentFor checks a path's last component. */
  parentAt(parent: number, name: Buffer, purpose: SlotPurpose): Slot {
    const dir = this.dirAt(parent);
    checkName(name);
    return this.slotIn(dir, name, purpose, undefined);
  }

  private slotIn(dir: Inode, name: Buffer, purpose: SlotPurpose, path: string | undefined): Slot {
    if (isDot(name) || isDotDot(name)) {
      const last = name.toString("latin1");
      if (purpose === "create") throw new GroveError("EEXIST", "EEXIST_dot", "file exists", { path });
      if (purpose === "remove-dir" && last === "..") {
        throw new GroveError("ENOTEMPTY", "ENOTEMPTY_dotdot", "directory not empty", { path });
      }
      throw new GroveError("EINVAL", "EINVAL_dot", `"${last}" cannot be used here`, { path });
    }
    if (purpose === "create" && this.inodes.mapOf(dir).get(name) !== undefined) {
      throw new GroveError("EEXIST", "EEXIST_create", "file exists", { path });
    }
    if ((purpose === "create" || purpose === "open-create") && !this.inodes.hasFreeIno) {
      throw new GroveError("ENOSPC", "ENOSPC_inodes", "no inode numbers left", { path });
    }
    if (purpose !== "remove" && purpose !== "remove-dir" && purpose !== "rename-source") this.policy.checkWritable();
    return { dir, name, path };
  }

  private entryInode(dir: Inode, name: Buffer, path: string | undefined): Inode {
    const entry = this.inodes.mapOf(dir).get(name);
    if (entry === undefined) throw new GroveError("ENOENT", "ENOENT_path", "no such file or directory", { path });
    return this.inodes.load(decodeDirent(dir.ino, entry).ino);
  }

  // ---- changes ------------------------------------------------------------------

  mkdir({ dir, name }: Slot, mode: number, caller: Caller): Inode {
    return this.policy.mutation(4, () => {
      const child = this.inodes.create(dir, S_IFDIR | (mode & permissionBits & ~0o7000) | (mode & S_ISVTX), caller);
      child.nlink = 2;
      child.parent = dir.ino;
      if ((dir.mode & S_ISGID) !== 0) child.mode |= S_ISGID;
      this.inodes.save(child);
      dir.nlink++;
      this.addEntry(dir, name, child);
      return child;
    });
  }

  rmdir({ dir, name, path }: Slot): void {
    const target = this.entryInode(dir, name, path);
    if ((target.mode & S_IFMT) !== S_IFDIR) throw new GroveError("ENOTDIR", "ENOTDIR_rmdir", "not a directory", { path });
    if (this.inodes.mapOf(target).count > 0) {
      throw new GroveError("ENOTEMPTY", "ENOTEMPTY_rmdir", "directory not empty", { path });
    }
    const freed = this.inodes.mapOf(target).treeRanges();
    this.policy.mutation(
      4,
      () => {
        this.removeEntry(dir, name);
        dir.nlink--;
        this.touchDir(dir);
        this.freeInode(target);
      },
      "shrink",
      freed,
    );
  }

  unlink({ dir, name, path }: Slot): void {
    const target = this.entryInode(dir, name, path);
    if ((target.mode & S_IFMT) === S_IFDIR) throw new GroveError("EISDIR", "EISDIR_unlink", "is a directory", { path });
    const freed = this.freedRangesIfLast(target);
    this.policy.mutation(
      4,
      () => {
        this.removeEntry(dir, name);
        this.touchDir(dir);
        this.dropLink(target);
      },
      "shrink",
      freed,
    );
  }

  checkLinkable(inode: Inode, path: string | undefined): void {
    if ((inode.mode & S_IFMT) === S_IFDIR) {
      throw new GroveError("EPERM", "EPERM_link_dir", "hard links to directories are not allowed", { path });
    }
    if (inode.nlink >= linkCountMax) throw new GroveError("EMLINK", "EMLINK_link", "too many links", { path });
    // An open file whose last name went (nlink 0) cannot get a new one, as linkat(2) without AT_EMPTY_PATH.
    if (inode.nlink === 0) throw new GroveError("ENOENT", "ENOENT_link_unlinked", "the file has no name left", { path });
  }

  /** A new name for `inode`, which checkLinkable passed. */
  link(inode: Inode, { dir, name }: Slot): void {
    this.policy.mutation(3, () => {
      inode.nlink++;
      inode.ctimeNs = this.clock();
      this.inodes.save(inode);
      this.addEntry(dir, name, inode);
    });
  }

  /** A symlink to `bytes` at the slot `slot` finds once the target is checked. */
  symlink(bytes: Buffer, slot: () => Slot, caller: Caller, path: string | undefined): Inode {
    if (bytes.length === 0) throw new GroveError("ENOENT", "ENOENT_symlink_empty", "empty symlink target", { path });
    if (bytes.length > symlinkTargetSizeMaxBytes) {
      throw new GroveError("ENAMETOOLONG", "ENAMETOOLONG_symlink", "symlink target too long", { path });
    }
    if (bytes.includes(0)) throw new GroveError("EINVAL", "EINVAL_symlink_nul", "symlink target contains NUL", { path });
    const { dir, name } = slot();
    this.data.admit(0, 0, Math.ceil(bytes.length / blockSizeBytes));
    return this.policy.mutation(4, () => {
      const link = this.inodes.create(dir, C.S_IFLNK | 0o777, caller);
      this.data.write(link, this.inodes.mapOf(link), bytes, 0);
      this.inodes.save(link);
      this.addEntry(dir, name, link);
      return link;
    });
  }

  /** A regular file, fifo, socket or device node at the slot `slot` finds once the type is checked. */
  mknod(slot: () => Slot, mode: number, rdev: number, caller: Caller, path: string | undefined): Inode {
    const type = mode & S_IFMT;
    const allowed = [S_IFREG, C.S_IFIFO, C.S_IFSOCK, C.S_IFCHR, C.S_IFBLK];
    if (!allowed.includes(type === 0 ? S_IFREG : type)) {
      throw new GroveError("EINVAL", "EINVAL_mknod_type", "mknod cannot create this file type", { path });
    }
    const { dir, name } = slot();
    return this.policy.mutation(3, () => {
      const node = this.inodes.create(dir, (type === 0 ? S_IFREG : type) | (mode & permissionBits), caller);
      if (type === C.S_IFCHR || type === C.S_IFBLK) node.rdev = rdev;
      this.inodes.save(node);
      this.addEntry(dir, name, node);
      return node;
    });
  }

  /**
   * open(2) with O_CREAT: the inode the slot already names (EEXIST with
   * O_EXCL), or a new regular file when there is room for its handle.
   */
  create({ dir, name, path }: Slot, mode: number, flags: number, caller: Caller): { inode: Inode; created: boolean } {
    const entry = this.inodes.mapOf(dir).get(name);
    if (entry !== undefined) {
      if ((flags & C.O_EXCL) !== 0) throw new GroveError("EEXIST", "EEXIST_create", "file exists", { path });
      return { inode: this.inodes.load(decodeDirent(dir.ino, entry).ino), created: false };
    }
    this.handles.checkRoom();
    const inode = this.policy.mutation(3, () => {
      const file = this.inodes.create(dir, S_IFREG | (mode & permissionBits), caller);
      this.inodes.save(file);
      this.addEntry(dir, name, file);
      return file;
    });
    return { inode, created: true };
  }

  /** rename(2) of the slot `src` to the slot `dst`, with flags checkRenameFlags passed. */
  rename(src: Slot, dst: Slot, flags: number): void {
    const from = src.path;
    const to = dst.path;
    const moving = this.entryInode(src.dir, src.name, from);
    const existingEntry = this.inodes.mapOf(dst.dir).get(dst.name);
    const existing = existingEntry === undefined ? undefined : this.inodes.load(decodeDirent(dst.dir.ino, existingEntry).ino);
    if ((flags & renameExchange) !== 0) {
      if (existing === undefined) throw new GroveError("ENOENT", "ENOENT_rename_exchange", "no such file", { path: to });
      this.exchange(src, dst, moving, existing);
      return;
    }
    if (existing !== undefined) {
      if ((flags & renameNoReplace) !== 0) throw new GroveError("EEXIST", "EEXIST_rename", "file exists", { path: to });
      if (existing.ino === moving.ino) return;
      this.checkReplace(moving, existing, to);
    }
    this.checkNotIntoItself(moving, dst.dir, to);
    const freed = existing === undefined ? 0 : this.freedRangesIfLast(existing);
    this.policy.mutation(8, () => {
      const srcDir = src.dir;
      const dstDir = dst.dir.ino === srcDir.ino ? srcDir : dst.dir;
      if (existing !== undefined) {
        this.removeEntry(dstDir, dst.name);
        if ((existing.mode & S_IFMT) === S_IFDIR) {
          dstDir.nlink--;
          this.freeInode(existing);
        } else {
          this.dropLink(existing);
        }
      }
      this.removeEntry(srcDir, src.name);
      this.addEntry(dstDir, dst.name, moving);
      if ((moving.mode & S_IFMT) === S_IFDIR && srcDir.ino !== dstDir.ino) {
        srcDir.nlink--;
        dstDir.nlink++;
        moving.parent = dstDir.ino;
      }
      moving.ctimeNs = this.clock();
      this.inodes.save(moving);
      this.touchDir(srcDir);
      if (dstDir !== srcDir) this.touchDir(dstDir);
    }, "grow", freed);
  }

  /**
   * Frees orphan `ino` (`inode`, when the caller loaded it), an inode
   * unlinked while open whose last handle went; drops the key alone when the
   * inode has names again or is gone.
   */
  freeOrphan(ino: number, inode = this.inodes.tryLoad(ino)): void {
    // An orphan key on an inode that still has names is stale: drop the key, keep the inode.
    const free = inode !== undefined && inode.nlink === 0;
    const freed = free ? this.data.freedRanges(inode, this.inodes.mapOf(inode), 0) : 0;
    this.policy.mutation(
      3,
      () => {
        if (free) this.freeInode(inode, true);
        else this.inodes.removeOrphan(ino);
      },
      "shrink",
      freed,
    );
  }

  // ---- internals --------------------------------------------------------------

  private checkReplace(moving: Inode, existing: Inode, to: string | undefined): void {
    const movingDir = (moving.mode & S_IFMT) === S_IFDIR;
    const existingDir = (existing.mode & S_IFMT) === S_IFDIR;
    if (movingDir && !existingDir) throw new GroveError("ENOTDIR", "ENOTDIR_rename", "not a directory", { path: to });
    if (!movingDir && existingDir) throw new GroveError("EISDIR", "EISDIR_rename", "is a directory", { path: to });
    if (existingDir && this.inodes.mapOf(existing).count > 0) {
      throw new GroveError("ENOTEMPTY", "ENOTEMPTY_rename", "directory not empty", { path: to });
    }
  }

  /** EINVAL when a directory would move into its own subtree. */
  private checkNotIntoItself(moving: Inode, target: Inode, to: string | undefined): void {
    if ((moving.mode & S_IFMT) !== S_IFDIR) return;
    let at = target;
    for (let depth = 0; ; depth++) {
      if (at.ino === moving.ino) {
        throw new GroveError("EINVAL", "EINVAL_rename_subtree", "cannot move a directory into itself", { path: to });
      }
      if (at.ino === rootIno) return;
      if (depth > parentWalkMax) throw new GroveError("EIO", "EIO_parent_loop", "directory parents form a loop");
      at = this.inodes.load(at.parent);
    }
  }

  private exchange(src: Slot, dst: Slot, a: Inode, b: Inode): void {
    if (a.ino === b.ino) return;
    this.checkNotIntoItself(a, dst.dir, "");
    this.checkNotIntoItself(b, src.dir, "");
    this.policy.mutation(8, () => {
      const srcDir = src.dir;
      const dstDir = dst.dir.ino === srcDir.ino ? srcDir : dst.dir;
      this.inodes.mapOf(srcDir).put(src.name, encodeDirent(b.ino, b.mode));
      this.inodes.mapOf(dstDir).put(dst.name, encodeDirent(a.ino, a.mode));
      const aDir = (a.mode & S_IFMT) === S_IFDIR;
      const bDir = (b.mode & S_IFMT) === S_IFDIR;
      if (srcDir !== dstDir && aDir !== bDir) {
        srcDir.nlink += aDir ? -1 : 1;
        dstDir.nlink += aDir ? 1 : -1;
      }
      if (aDir) a.parent = dstDir.ino;
      if (bDir) b.parent = srcDir.ino;
      const now = this.clock();
      for (const inode of [a, b]) {
        inode.ctimeNs = now;
        this.inodes.save(inode);
      }
      this.touchDir(srcDir);
      if (dstDir !== srcDir) this.touchDir(dstDir);
    });
  }

  /** What freeing `inode` would hand back, if this name is its last and it is not open (read-only). */
  private freedRangesIfLast(inode: Inode): number {
    if ((inode.mode & S_IFMT) === S_IFDIR) return this.inodes.mapOf(inode).treeRanges();
    if (inode.nlink > 1 || this.handles.openCount(inode.ino) > 0) return 0;
    return this.data.freedRanges(inode, this.inodes.mapOf(inode), 0);
  }

  // ---- fsck's name repairs (fs/repair.ts) -----------------------------------------

  /** Removes the entry `name` of `dir`, which names an inode that does not exist: no link count changes. */
  dropDanglingEntry(dir: Inode, name: Buffer): boolean {
    return this.policy.mutation(3, () => {
      if (!this.inodes.mapOf(dir).delete(name)) return false;
      this.touchDir(dir);
      return true;
    });
  }

  /**
   * Gives `inode`, which no entry names, the name `name` in `into` (fsck's
   * lost+found): one link for a file, a parent and ".." for a directory.
   */
  reconnect(inode: Inode, into: Inode, name: Buffer): void {
    this.policy.mutation(4, () => {
      if ((inode.mode & S_IFMT) === S_IFDIR) {
        inode.parent = into.ino;
        into.nlink++;
      } else {
        inode.nlink = 1;
      }
      inode.ctimeNs = this.clock();
      this.inodes.save(inode);
      this.addEntry(into, name, inode);
    });
  }

  private addEntry(dir: Inode, name: Buffer, child: Inode): void {
    this.inodes.mapOf(dir).put(name, encodeDirent(child.ino, child.mode));
    this.touchDir(dir);
  }

  private removeEntry(dir: Inode, name: Buffer): void {
    const removed = this.inodes.mapOf(dir).delete(name);
    assert(removed, "a validated entry exists");
  }

  /** mtime and ctime of a changed directory, and its record (whose map may have moved). */
  private touchDir(dir: Inode): void {
    const now = this.clock();
    dir.mtimeNs = now;
    dir.ctimeNs = now;
    this.inodes.save(dir);
  }

  /** One name fewer: free the inode at zero links, or keep it as an orphan while open. */
  private dropLink(inode: Inode): void {
    inode.nlink--;
    inode.ctimeNs = this.clock();
    if (inode.nlink > 0) {
      this.inodes.save(inode);
    } else if (this.handles.openCount(inode.ino) > 0) {
      this.inodes.save(inode);
      this.inodes.addOrphan(inode.ino);
    } else {
      this.freeInode(inode);
    }
  }

  /** Frees an inode and all it owns; `orphan` when it was listed as one (unlinked while open). */
  private freeInode(inode: Inode, orphan = false): void {
    const map = this.inodes.mapOf(inode);
    if ((inode.mode & S_IFMT) === S_IFDIR) map.clear();
    else this.data.discard(inode, map);
    if ((inode.flags & inodeFlagHadXattrs) !== 0) this.xattrs.deleteUnder(xattrPrefix(inode.ino));
    this.inodes.delete(inode.ino, orphan);
  }
}

const nulByte = Buffer.from([0]);

function isDot(name: Buffer): boolean {
  return name.length === 1 && name[0] === 0x2e;
}

function isDotDot(name: Buffer): boolean {
  return name.length === 2 && name[0] === 0x2e && name[1] === 0x2e;
}

/** A name as the kernel passes it: 1 to NAME_MAX bytes, no "/" and no NUL. */
function checkName(name: Buffer): void {
  if (name.length === 0) throw new GroveError("ENOENT", "ENOENT_name_empty", "empty name");
  if (name.length > nameSizeMaxBytes) {
    throw new GroveError("ENAMETOOLONG", "ENAMETOOLONG_name", `a name is limited to ${nameSizeMaxBytes} bytes`);
  }
  if (name.includes(0x2f) || name.includes(0)) throw new GroveError("EINVAL", "EINVAL_name", "a name cannot contain / or NUL");
}

export function checkRenameFlags(flags: number): void {
  if ((flags & ~(renameNoReplace | renameExchange)) !== 0 || flags === (renameNoReplace | renameExchange)) {
    throw new GroveError("EINVAL", "EINVAL_rename_flags", "invalid rename flags");
  }
}

/** Components of an absolute path; "/" and "" name the root. */
export function splitPath(path: string): string[] {
  if (typeof path !== "string" || !path.startsWith("/")) {
    throw new GroveError("EINVAL", "EINVAL_path", `path must be absolute: ${String(path)}`);
  }
  const parts = path.split("/").filter((part) => part.length > 0);
  for (const part of parts) {
    if (part.includes("\0")) throw new GroveError("EINVAL", "EINVAL_name_nul", "a name cannot contain NUL", { path });
    if (Buffer.byteLength(part, "utf8") > nameSizeMaxBytes) {
      throw new GroveError("ENAMETOOLONG", "ENAMETOOLONG_name", `a name is limited to ${nameSizeMaxBytes} bytes`, { path });
    }
  }
  return parts;
}
