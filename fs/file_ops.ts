/**
 * File operations: what read, write, truncate, fallocate and SEEK_DATA /
 * SEEK_HOLE do to a regular file's inode, and access times. FileData holds the
 * file's extents and buffered blocks; this room checks a call against the
 * inode, admits it through the commit policy, applies it through FileData
 * and moves the inode's times. The facade (GroveFs) resolves file handles
 * and checks their open mode first.
 *
 * Invariants:
 * - A change of data or size is admitted whole before anything is buffered
 *   or written (ENOSPC up front, once more after a commit when blocks the
 *   running transaction freed would fit it), and moves mtime and ctime.
 * - A file never grows past fileSizeMaxBytes (EFBIG).
 * - atime moves as the mount asks (relatime by default, noatime,
 *   strictatime, nodiratime), and never makes a read fail: on a full volume
 *   it simply stays.
 */
import { constants as C } from "node:fs";
import { GroveError, blockSizeBytes, type Store } from "../kvstore/index.js";
import type { FreeSpace } from "../alloc/index.js";
import { fileSizeMaxBytes } from "./constants.js";
import type { Inode } from "./format.js";
import type { CommitPolicy } from "./commit_policy.js";
import type { FileData } from "./file_data.js";
import type { Handle } from "./handles.js";
import type { InodeTable } from "./inode_table.js";
import type { Namespace } from "./namespace.js";

const S_IFMT = C.S_IFMT;
const S_IFDIR = C.S_IFDIR;
const S_IFREG = C.S_IFREG;
const S_ISGID = 0o2000;
const O_ACCMODE = 3;
const day = 86_400_000_000_000n;

/**
 * How a read moves atime: the mount options of the same names. The server
 * keeps atime, not the kernel, so the kernel's atime flags alone would not do.
 */
export interface AccessTimes {
  /** relatime (the kernel's default): only when atime is not newer than mtime and ctime, or a day old. */
  update: "relatime" | "noatime" | "strictatime";
  /** false for nodiratime: reading a directory leaves its atime. */
  directories: boolean;
}

export const defaultAccessTimes: AccessTimes = { update: "relatime", directories: true };

export class FileOps {
  constructor(
    private readonly store: Store,
    private readonly space: FreeSpace,
    private readonly names: Namespace,
    private readonly inodes: InodeTable,
    private readonly data: FileData,
    private readonly policy: CommitPolicy,
    private readonly clock: () => bigint,
    /** Nothing in this subvolume may change: atime stays. */
    private readonly readOnly: boolean,
    private readonly accessTimes: AccessTimes = defaultAccessTimes,
  ) {}

  /** read(2) of inode `ino`, whose handle is open for reading. */
  read(ino: number, buffer: Buffer, length: number, position: number): number {
    checkRange(length, position);
    const inode = this.inodes.load(ino);
    if ((inode.mode & S_IFMT) === S_IFDIR) throw new GroveError("EISDIR", "EISDIR_read", "is a directory");
    const n = this.data.read(inode, this.inodes.mapOf(inode), buffer, Math.min(length, buffer.length), position);
    this.touchAtime(inode);
    return n;
  }

  /**
   * write(2) through `handle`. `killSuidgid`: the kernel asks the server to
   * clear set-id bits (HANDLE_KILLPRIV_V2, an unprivileged writer).
   */
  write(handle: Handle, buffer: Buffer, length: number, position: number, killSuidgid: boolean): number {
    this.policy.makeRoom(Math.ceil(Math.min(length, buffer.length) / blockSizeBytes) + 1);
    if ((handle.flags & O_ACCMODE) === C.O_RDONLY) throw new GroveError("EBADF", "EBADF_write", "not open for writing");
    checkRange(length, position);
    const inode = this.inodes.load(handle.ino);
    const at = (handle.flags & C.O_APPEND) !== 0 ? inode.size : position;
    const count = Math.min(length, buffer.length);
    if (at + count > fileSizeMaxBytes) {
      throw new GroveError("EFBIG", "EFBIG_write", `file would exceed ${fileSizeMaxBytes} bytes`);
    }
    if (count === 0) return 0;
    this.writeAt(inode, () => this.inodes.load(handle.ino), buffer.subarray(0, count), at, { admitWithMap: false, killSuidgid });
    return count;
  }

  /** Writes `bytes` at `at` of inode `ino` as write() does (copy_file_range's edge bytes). */
  writeBytes(ino: number, bytes: Buffer, at: number): void {
    this.writeAt(this.names.inodeAt(ino), () => this.names.inodeAt(ino), bytes, at, { admitWithMap: true, killSuidgid: false });
  }

  /** truncate(2) of `inode`, a regular file. */
  setSize(inode: Inode, size: number): void {
    if (!Number.isSafeInteger(size) || size < 0) throw new GroveError("EINVAL", "EINVAL_size", "invalid size");
    if (size > fileSizeMaxBytes) throw new GroveError("EFBIG", "EFBIG_truncate", `files are limited to ${fileSizeMaxBytes} bytes`);
    this.policy.checkWritable();
    const tail = Math.floor(size / blockSizeBytes);
    if (size % blockSizeBytes !== 0) this.data.admit(inode.ino, tail, tail + 1);
    const freed = size < inode.size ? this.data.freedRanges(inode, this.inodes.mapOf(inode), Math.ceil(size / blockSizeBytes)) : 0;
    if (size < inode.size) this.data.preloadTruncate(inode, this.inodes.mapOf(inode), size);
    this.policy.mutation(
      4,
      () => {
        this.data.truncate(inode, this.inodes.mapOf(inode), size);
        const now = this.clock();
        inode.mtimeNs = now;
        inode.ctimeNs = now;
        this.inodes.save(inode);
      },
      size < inode.size ? "shrink" : "grow",
      freed,
    );
    this.policy.afterWrite();
  }

  /** After a read of `inode`: atime moves as `accessTimes` says (relatime: when older than mtime or ctime, or a day old). */
  touchAtime(inode: Inode): void {
    const { update, directories } = this.accessTimes;
    if (this.readOnly || update === "noatime") return;
    if (!directories && (inode.mode & S_IFMT) === S_IFDIR) return;
    const now = this.clock();
    const recent = inode.atimeNs > inode.mtimeNs && inode.atimeNs > inode.ctimeNs && now - inode.atimeNs < day;
    if (update === "relatime" && recent) return;
    try {
      this.policy.mutation(1, () => {
        inode.atimeNs = now;
        this.inodes.save(inode);
      });
    } catch (error) {
      // A full volume still reads: the access time simply stays.
      if (!(error instanceof GroveError) || error.code !== "ENOSPC" || this.store.isPoisoned) throw error;
    }
  }

  /**
   * fallocate(2) on regular file `ino`. Mode 0 and KEEP_SIZE preallocate the
   * range's holes as unwritten blocks (allocated now, counted in st_blocks
   * and statfs, read as zeros; a later write into them is written there in
   * place, needing no new space), mode 0 growing the size to the range's
   * end. PUNCH_HOLE|KEEP_SIZE makes the range read as zeros and frees its
   * whole blocks (an extent stays while other records or snapshots hold any
   * of it). ZERO_RANGE, with or without KEEP_SIZE, zeroes the range and
   * preallocates it. Partial blocks holding data are rewritten with zeros
   * through the buffered path. Any other mode is EOPNOTSUPP. Refused up
   * front (EINVAL, EOPNOTSUPP, ESPIPE, EISDIR, ENODEV, EFBIG, EROFS, ENOSPC,
   * EIO reading an edge block), else done whole.
   */
  fallocate(ino: number, mode: number, offset: number, length: number): void {
    let inode = this.names.inodeAt(ino);
    const request = this.data.fallocateRequest(mode, offset, length);
    const type = inode.mode & S_IFMT;
    if (type === C.S_IFIFO) throw new GroveError("ESPIPE", "ESPIPE_fallocate", "fallocate on a pipe");
    if (type === S_IFDIR) throw new GroveError("EISDIR", "EISDIR_fallocate", "is a directory");
    if (type !== S_IFREG) throw new GroveError("ENODEV", "ENODEV_fallocate", "fallocate needs a regular file");
    if (request.end > fileSizeMaxBytes) {
      throw new GroveError("EFBIG", "EFBIG_fallocate", `files are limited to ${fileSizeMaxBytes} bytes`);
    }
    this.policy.checkWritable();
    // A commit here writes out buffered data and replaces inode records: before the plan is made.
    this.policy.makeRoom(request.op === "punch" ? 16 : Math.ceil((request.end - request.start) / blockSizeBytes) + 16);
    inode = this.names.inodeAt(ino);
    const plan = this.data.planFallocate(inode, this.inodes.mapOf(inode), request);
    this.policy.mutation(
      plan.puts,
      // Admitted whole by the plan (data and records) and here (tree updates): nothing inside is refused.
      () =>
        this.store.alreadyAdmitted(() => {
          const size = inode.size;
          this.data.fallocate(inode, this.inodes.mapOf(inode), plan);
          const now = this.clock();
          inode.ctimeNs = now;
          if (request.op !== "allocate" || inode.size !== size) inode.mtimeNs = now;
          this.inodes.save(inode);
        }),
      request.op === "punch" ? "shrink" : "grow",
      plan.freedRanges,
    );
    this.policy.afterWrite();
  }

  /**
   * lseek(2) with SEEK_DATA or SEEK_HOLE on regular file `ino`: the first
   * offset at or after `offset` that lies in data, or in a hole (the end of
   * the file counts as one). ENXIO at or past the end of the file, or when
   * no data follows. Holes are whole blocks; preallocated (unwritten) blocks
   * are holes, as ext4 reports them, unless data written over them is still
   * buffered. Costs the extents from `offset` on, never a walk of blocks.
   */
  lseek(ino: number, offset: number, whence: "data" | "hole"): number {
    const inode = this.names.inodeAt(ino);
    if (whence !== "data" && whence !== "hole") throw new GroveError("EINVAL", "EINVAL_whence", `bad whence ${String(whence)}`);
    if (!Number.isSafeInteger(offset)) throw new GroveError("EINVAL", "EINVAL_seek_offset", "invalid offset");
    const type = inode.mode & S_IFMT;
    if (type === C.S_IFIFO || type === C.S_IFSOCK) throw new GroveError("ESPIPE", "ESPIPE_seek", "cannot seek on a pipe or socket");
    if (type !== S_IFREG) throw new GroveError("EINVAL", "EINVAL_seek_type", "SEEK_DATA and SEEK_HOLE need a regular file");
    if (offset < 0 || offset >= inode.size) throw new GroveError("ENXIO", "ENXIO_seek", "the offset is at or past the end of the file");
    const found = this.data.seek(inode, this.inodes.mapOf(inode), offset, whence);
    if (found === undefined) throw new GroveError("ENXIO", "ENXIO_seek_data", "no data at or after the offset");
    return found;
  }

  /**
   * Writes `bytes` at `at` of `inode` (`reload` finds it again after a
   * commit): admitted, its edges read, then buffered whole. `admitWithMap`
   * checks preallocated blocks now rather than when the edges are read.
   */
  private writeAt(
    inode: Inode,
    reload: () => Inode,
    bytes: Buffer,
    at: number,
    how: { admitWithMap: boolean; killSuidgid: boolean },
  ): void {
    const admit = (): void => this.data.admitWrite(inode, at, bytes.length, how.admitWithMap ? this.inodes.mapOf(inode) : undefined);
    try {
      admit();
    } catch (error) {
      // Space this transaction freed becomes usable once it commits: commit and try once more.
      if (!(error instanceof GroveError) || error.code !== "ENOSPC" || this.space.usage().pendingBlocks === 0) throw error;
      this.policy.commit();
      inode = reload();
      admit();
    }
    this.data.preloadEdges(inode, this.inodes.mapOf(inode), at, at + bytes.length);
    this.policy.mutation(2, () => {
      this.data.write(inode, this.inodes.mapOf(inode), bytes, at);
      const now = this.clock();
      inode.mtimeNs = now;
      inode.ctimeNs = now;
      if (how.killSuidgid) inode.mode = withoutSetIdBits(inode.mode);
      this.inodes.save(inode);
    });
    this.policy.afterWrite();
  }
}

/** What chown and an unprivileged write or truncate do to a file's set-id bits (setgid only with group execute, as Linux). */
export function withoutSetIdBits(mode: number): number {
  const S_ISUID = 0o4000;
  const S_IXGRP = 0o010;
  return (mode & ~S_ISUID) & ~((mode & S_IXGRP) !== 0 ? S_ISGID : 0);
}

function checkRange(length: number, position: number): void {
  if (!Number.isSafeInteger(length) || length < 0 || !Number.isSafeInteger(position) || position < 0) {
    throw new GroveError("EINVAL", "EINVAL_range", "invalid offset or length");
  }
}
