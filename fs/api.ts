/**
 * The filesystem's public contract: what the FUSE bridge, the CLI and the
 * tests call. Paths are absolute ("/a/b"), as libfuse's high-level API gives
 * them. Every method throws a GroveError (errno plus detail) on failure and
 * never anything else for bad input; CorruptionError and IoError mean EIO.
 *
 * Times are nanoseconds since the epoch, as bigint. A file handle (`fh`) is a
 * small integer returned by `open` or `create` and valid until `release`.
 */

/** Who is asking: the caller's credentials, for ownership of new files. */
export interface Caller {
  uid: number;
  gid: number;
}

export interface Stat {
  ino: number;
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  rdev: number;
  size: number;
  /** 512-byte units actually allocated, as st_blocks. */
  blocks: number;
  blksize: number;
  atimeNs: bigint;
  mtimeNs: bigint;
  ctimeNs: bigint;
  crtimeNs: bigint;
}

export interface DirEntry {
  name: string;
  ino: number;
  /** The S_IFMT bits of the entry's mode. */
  type: number;
}

export interface StatFs {
  bsize: number;
  frsize: number;
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  favail: number;
  fsid: number;
  flag: number;
  namemax: number;
  /** Blocks in use on disk (blocks - bfree): what the kernel's statfs reports. */
  usedBlocks?: number;
  /** Blocks in use if compressed data were stored uncompressed (not passed to the kernel). */
  logicalUsedBlocks?: number;
}

/** A time to set: nanoseconds, "now", or "omit" (UTIME_NOW and UTIME_OMIT). */
export type TimeSpec = bigint | "now" | "omit";

/** A directory entry with its name as stored: bytes (names need not be UTF-8). */
export interface DirEntryBytes {
  name: Buffer;
  ino: number;
  /** The S_IFMT bits of the entry's mode. */
  type: number;
}

/** What setattr changes; an absent field stays as it is. */
export interface SetAttr {
  /** Truncates or extends, as truncate(2). */
  size?: number;
  /** The permission bits (07777); the file type never changes. */
  mode?: number;
  uid?: number;
  gid?: number;
  atime?: TimeSpec;
  mtime?: TimeSpec;
  /** ctime as the kernel's writeback cache keeps it; otherwise ctime becomes now. */
  ctime?: bigint;
  /** The birth time: only a receive sets it, to the sender's (fs/send/receiver.ts). */
  crtime?: bigint;
  /** Clear set-user-id and set-group-id (with group execute): a truncate by an unprivileged caller. */
  killSuidgid?: boolean;
}

/** setxattr flags, as in <sys/xattr.h>. */
export const xattrCreate = 1;
export const xattrReplace = 2;

/** rename flags, as in <linux/fs.h>. */
export const renameNoReplace = 1;
export const renameExchange = 2;

/** A subvolume: the default one made by mkfs, a read-only snapshot, or a writable clone. */
export interface SubvolumeInfo {
  name: string;
  /** Its inode tree's id (256 for the default subvolume). */
  id: number;
  readOnly: boolean;
  /** The subvolume it was taken from (0 for one made by mkfs). */
  parentId: number;
  /** That subvolume's name, or null if it is gone. */
  parentName: string | null;
  /** The transaction that created it. */
  generation: number;
  createdNs: bigint;
}

/** Snapshots and clones, on an open filesystem (library, CLI on an image, or the mount daemon). */
export interface SubvolumeOps {
  /** The subvolume this filesystem serves. */
  readonly subvolumeName: string;
  /**
   * Commits, then takes an O(1) snapshot (`readOnly`) or writable clone of
   * `from` (default: the served subvolume), and commits again.
   * EEXIST for a taken name; EINVAL for an invalid one; ENOENT for a missing source.
   */
  createSubvolume(name: string, options: { from?: string; readOnly: boolean }): SubvolumeInfo;
  /**
   * Removes the name at once and frees the subvolume's blocks incrementally
   * (resumed after a crash or remount). EBUSY for the served subvolume, EPERM for the default one.
   */
  deleteSubvolume(name: string): void;
  /** Live subvolumes, by name. */
  listSubvolumes(): SubvolumeInfo[];
  /** One live subvolume by name, found without listing the others (O(log n) in the subvolumes). */
  findSubvolume(name: string): SubvolumeRef | undefined;
  /** Subvolumes whose deletion has not finished. */
  pendingDeletions(): number;
  /** Runs pending deletions to the end, committing as it goes (CLI on an unmounted image). */
  finishDeletions(): void;
  /** A read-only view of a snapshot, for /.snapshots/NAME (ENOENT if none; EINVAL for a clone). */
  snapshotView(name: string): FileSystemOps & InodeOps;
  /**
   * Tells `watcher` of creations and deletions made through any filesystem
   * serving this volume, until the returned function is called (a mount keeps
   * its kernel's /.snapshots honest through it). Absent where only one
   * filesystem can see the volume.
   */
  watchSubvolumes?(watcher: SubvolumeWatcher): () => void;
}

/** What `findSubvolume` tells of one subvolume (its parent's name would need a scan by id). */
export type SubvolumeRef = Pick<SubvolumeInfo, "name" | "id" | "readOnly" | "generation" | "createdNs">;

/** Creations and deletions of subvolumes, as `SubvolumeOps.watchSubvolumes` reports them. */
export interface SubvolumeWatcher {
  /** Subvolume `name` passed every check and is about to be deleted: its view is about to close. */
  deleting(name: string): void;
  /** Subvolume `name` was created or deleted, and committed. */
  changed(name: string): void;
}

/**
 * The filesystem addressed by inode number, as the FUSE kernel protocol
 * addresses it: names are looked up in a parent directory, and everything
 * else names an inode (or a handle from open). The root directory is inode 1.
 * An inode that is gone (its last name removed and its last handle closed)
 * answers ENOENT. Permission checks are the caller's (the kernel's
 * default_permissions); these check only what the filesystem itself must.
 */
export interface InodeOps {
  lookup(parent: number, name: Buffer): Stat;
  /** lookup, but undefined for a missing name instead of ENOENT (the kernel's hot negative lookup). */
  findEntry(parent: number, name: Buffer): Stat | undefined;
  statIno(ino: number): Stat;
  setattr(ino: number, attr: SetAttr): Stat;
  readlinkIno(ino: number): Buffer;
  mkdirAt(parent: number, name: Buffer, mode: number, caller: Caller): Stat;
  mknodAt(parent: number, name: Buffer, mode: number, rdev: number, caller: Caller): Stat;
  symlinkAt(parent: number, name: Buffer, target: Buffer, caller: Caller): Stat;
  linkAt(ino: number, parent: number, name: Buffer): Stat;
  unlinkAt(parent: number, name: Buffer): void;
  rmdirAt(parent: number, name: Buffer): void;
  renameAt(parent: number, name: Buffer, newParent: number, newName: Buffer, flags?: number): void;
  createAt(parent: number, name: Buffer, mode: number, flags: number, caller: Caller): { fh: number; stat: Stat };
  openIno(ino: number, flags: number): number;
  opendirIno(ino: number): number;
  /** Entries after the name `after` (all when undefined), in name order, until `take` returns false. */
  readdirIno(ino: number, after: Buffer | undefined, take: (entry: DirEntryBytes) => boolean): void;
  read(fh: number, buffer: Buffer, length: number, position: number): number;
  write(fh: number, buffer: Buffer, length: number, position: number, killSuidgid?: boolean): number;
  flush(fh: number): void;
  fsync(fh: number, dataOnly: boolean): void;
  release(fh: number): void;
  releasedir(fh: number): void;
  fsyncdir(fh: number, dataOnly: boolean): void;
  findXattrIno(ino: number, name: string): Buffer | undefined;
  setxattrIno(ino: number, name: string, value: Buffer, flags: number): void;
  listxattrIno(ino: number): string[];
  removexattrIno(ino: number, name: string): void;
  statfs(): StatFs;
  sync(): void;
  close(): void;
}

export interface FileSystemOps {
  getattr(path: string): Stat;
  fgetattr(fh: number): Stat;
  access(path: string, mode: number): void;
  readdir(path: string): DirEntry[];
  mkdir(path: string, mode: number, caller: Caller): Stat;
  rmdir(path: string): void;
  unlink(path: string): void;
  rename(from: string, to: string, flags?: number): void;
  link(existing: string, newPath: string): Stat;
  symlink(target: string, path: string, caller: Caller): Stat;
  readlink(path: string): string;
  mknod(path: string, mode: number, rdev: number, caller: Caller): Stat;

  /** Creates (O_CREAT) and opens a regular file; `flags` are open(2) flags. */
  create(path: string, mode: number, flags: number, caller: Caller): number;
  open(path: string, flags: number): number;
  /** Reads up to `length` bytes at `position` into `buffer`; returns the count (0 at end of file). */
  read(fh: number, buffer: Buffer, length: number, position: number): number;
  /** Writes `length` bytes from `buffer`; returns the count. */
  write(fh: number, buffer: Buffer, length: number, position: number): number;
  truncate(path: string, size: number): void;
  ftruncate(fh: number, size: number): void;
  /** Called on every close(2) of a descriptor: nothing to make durable. */
  flush(fh: number): void;
  fsync(fh: number, dataOnly: boolean): void;
  release(fh: number): void;
  opendir(path: string): number;
  releasedir(fh: number): void;
  fsyncdir(fh: number, dataOnly: boolean): void;

  chmod(path: string, mode: number): void;
  chown(path: string, uid: number, gid: number): void;
  utimens(path: string, atime: TimeSpec, mtime: TimeSpec): void;
  statfs(): StatFs;

  getxattr(path: string, name: string): Buffer;
  /** getxattr, but undefined for a missing attribute instead of ENODATA (the kernel's hot miss). */
  findXattr(path: string, name: string): Buffer | undefined;
  setxattr(path: string, name: string, value: Buffer, flags: number): void;
  listxattr(path: string): string[];
  removexattr(path: string, name: string): void;

  /** Commits everything: all data and metadata are durable when it returns. */
  sync(): void;
  /** Commits and closes the volume; every handle becomes invalid. */
  close(): void;
}
