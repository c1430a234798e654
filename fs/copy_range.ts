/**
 * copy_file_range(2) between regular files of one volume: the source is a
 * file of this filesystem or of a snapshot view sharing its volume. When the
 * two offsets lie equally far into a block, whole blocks are shared
 * (reflink): each written source extent, raw or lz4, gains a reference, so a
 * copy costs tree updates per extent and no data blocks; holes and unwritten
 * blocks become holes; only the partial blocks at the edges are copied as
 * bytes (the source's last block is shared too when the copy ends at both
 * files' ends). Otherwise every byte is copied through the buffered write
 * path. The facade (GroveFs) refuses a source on another volume (EXDEV).
 *
 * Invariants:
 * - Shared blocks hold the newest bytes: both files' buffered data is
 *   written out before anything is shared, so no buffered block can later
 *   replace a shared one.
 * - Each step (a few dozen extents, or a MiB of bytes) is admitted whole
 *   before it changes anything: a volume that fills midway ends the copy
 *   short at a step boundary, never inside one.
 */
import { constants as C } from "node:fs";
import { GroveError, blockSizeBytes, type Store } from "../kvstore/index.js";
import { fileSizeMaxBytes } from "./constants.js";
import { Compression, type Inode, PayloadKind } from "./format.js";
import { checkStored, type StoredExtent } from "./compression.js";
import type { CommitPolicy } from "./commit_policy.js";
import type { FileData } from "./file_data.js";
import type { FileOps } from "./file_ops.js";
import type { InodeTable } from "./inode_table.js";
import type { Namespace } from "./namespace.js";

const S_IFMT = C.S_IFMT;
const S_IFDIR = C.S_IFDIR;
const S_IFREG = C.S_IFREG;

/** The rooms a copy reads its source through: this filesystem's, or a snapshot view's. */
export interface CopySource {
  names: Namespace;
  inodes: InodeTable;
  data: FileData;
}

export class RangeCopy {
  constructor(
    private readonly store: Store,
    private readonly names: Namespace,
    private readonly inodes: InodeTable,
    private readonly data: FileData,
    private readonly policy: CommitPolicy,
    private readonly clock: () => bigint,
    /** Writes the edge bytes as write(2) does. */
    private readonly files: FileOps,
  ) {}

  /**
   * Copies `length` bytes of inode `srcIno` of `from` at `srcOffset` into
   * regular file `dstIno` of this filesystem at `dstOffset`. Returns the
   * bytes copied: fewer at the source's end of file, 0 from past it, or as
   * many as fitted when the volume fills midway (ENOSPC if none did). The
   * destination grows to cover what was copied; its mtime and ctime move.
   * EINVAL for overlapping ranges of one file.
   */
  copy(from: CopySource, srcIno: number, srcOffset: number, dstIno: number, dstOffset: number, length: number, shareTail = false): number {
    for (const n of [srcOffset, dstOffset, length]) {
      if (!Number.isSafeInteger(n) || n < 0) throw new GroveError("EINVAL", "EINVAL_copy_range", "invalid offset or length");
    }
    let source = from.names.inodeAt(srcIno);
    let target = this.names.inodeAt(dstIno);
    if ((source.mode & S_IFMT) === S_IFDIR || (target.mode & S_IFMT) === S_IFDIR) {
      throw new GroveError("EISDIR", "EISDIR_copy_file_range", "is a directory");
    }
    if ((source.mode & S_IFMT) !== S_IFREG || (target.mode & S_IFMT) !== S_IFREG) {
      throw new GroveError("EINVAL", "EINVAL_copy_file_range", "copy_file_range needs regular files");
    }
    this.policy.checkWritable();
    let count = srcOffset >= source.size ? 0 : Math.min(length, source.size - srcOffset);
    if (count > 0 && dstOffset >= fileSizeMaxBytes) {
      throw new GroveError("EFBIG", "EFBIG_copy_file_range", `files are limited to ${fileSizeMaxBytes} bytes`);
    }
    count = Math.min(count, fileSizeMaxBytes - dstOffset);
    const local = from.inodes === this.inodes;
    const same = local && srcIno === dstIno;
    if (same && dstOffset + count > srcOffset && dstOffset < srcOffset + count) {
      throw new GroveError("EINVAL", "EINVAL_copy_overlap", "the ranges overlap in one file");
    }
    if (count <= 0) return 0;
    // Shared blocks must hold the newest bytes, and replaced ones must not be written out later.
    if (local) this.policy.writeOutIno(srcIno);
    this.policy.writeOutIno(dstIno);
    source = from.names.inodeAt(srcIno);
    target = same ? source : this.names.inodeAt(dstIno);
    const srcEnd = srcOffset + count;
    const first = Math.ceil(srcOffset / blockSizeBytes);
    // The source's last, partial block can be shared when the copy ends at both files' ends (its tail is zeros).
    // `shareTail`: a receive reproducing a share the sender had, whose tail the sender's file holds as zeros too.
    const lastShared = srcEnd === source.size && srcEnd % blockSizeBytes !== 0 && (shareTail || dstOffset + count >= target.size);
    const end = lastShared ? Math.ceil(srcEnd / blockSizeBytes) : Math.floor(srcEnd / blockSizeBytes);
    const aligned = srcOffset % blockSizeBytes === dstOffset % blockSizeBytes && source.kind !== PayloadKind.Bytes;
    if (!aligned || end <= first) return this.copyBytes(from, srcIno, srcOffset, dstIno, dstOffset, count);
    const head = first * blockSizeBytes - srcOffset;
    let copied = head > 0 ? this.copyBytes(from, srcIno, srcOffset, dstIno, dstOffset, head) : 0;
    if (copied < head) return copied;
    const shift = (dstOffset - srcOffset) / blockSizeBytes;
    copied += this.shareBlocks(from, srcIno, first, end, dstIno, shift, dstOffset + count);
    if (copied < Math.min(count, end * blockSizeBytes - srcOffset)) return copied;
    const tail = srcEnd - end * blockSizeBytes;
    if (tail > 0) copied += this.copyBytes(from, srcIno, end * blockSizeBytes, dstIno, end * blockSizeBytes + shift * blockSizeBytes, tail);
    return copied;
  }

  /**
   * Shares file blocks [first, end) of `from`'s inode `srcIno` into `dstIno`
   * `shift` blocks on, in admitted steps; the destination grows up to
   * `dstEnd` at most. Returns the bytes it covered (up to `dstEnd`): fewer
   * if the volume filled after the first step.
   */
  private shareBlocks(from: CopySource, srcIno: number, first: number, end: number, dstIno: number, shift: number, dstEnd: number): number {
    const stepRecords = 32;
    const same = from.inodes === this.inodes && srcIno === dstIno;
    let at = first;
    while (at < end) {
      this.policy.makeRoom(4 * stepRecords + 16);
      const target = this.names.inodeAt(dstIno);
      const source = same ? target : from.names.inodeAt(srcIno);
      const srcMap = from.inodes.mapOf(source);
      const dstMap = this.inodes.mapOf(target);
      const stop = Math.min(
        from.data.stepEnd(source, srcMap, at, end, stepRecords),
        this.data.stepEnd(target, dstMap, at + shift, end + shift, stepRecords) - shift,
      );
      const slices = from.data.sharedSlices(source, srcMap, at, stop);
      const dropped = this.data.extentCount(target, dstMap, at + shift, stop + shift);
      try {
        this.data.admitShare(target, slices.length, dropped);
        this.policy.mutation(
          4,
          () =>
            this.store.alreadyAdmitted(() => {
              this.data.share(target, this.inodes.mapOf(target), at + shift, stop + shift, slices, shift);
              target.size = Math.max(target.size, Math.min(dstEnd, (stop + shift) * blockSizeBytes));
              const now = this.clock();
              target.mtimeNs = now;
              target.ctimeNs = now;
              this.inodes.save(target);
            }),
          "grow",
          dropped,
        );
      } catch (error) {
        // Refused before it changed anything: what was shared so far stands (a short copy).
        const refused = error instanceof GroveError && error.code === "ENOSPC" && !this.store.isPoisoned;
        if (!refused || at === first) throw error;
        break;
      }
      this.policy.afterWrite();
      at = stop;
    }
    return Math.max(0, Math.min(dstEnd, (at + shift) * blockSizeBytes) - (first + shift) * blockSizeBytes);
  }

  /**
   * Stores `stored` (an lz4 extent as a sender had it on disk) at byte
   * `offset` (whole blocks) of regular file `ino`, as it was stored: its
   * compressed bytes and crcs, after checking them and decompressing once
   * (EINVAL_stored_extent when they do not hold together). The file grows
   * to cover its blocks (a receive's truncate sets the size after); mtime
   * and ctime move. Admitted whole before anything changes.
   */
  insertStored(ino: number, offset: number, stored: StoredExtent): void {
    if (!Number.isSafeInteger(offset) || offset < 0 || offset % blockSizeBytes !== 0) {
      throw new GroveError("EINVAL", "EINVAL_stored_extent", `a stored extent at byte ${offset}, not at a block boundary`);
    }
    const checked = checkStored(stored);
    if ("problem" in checked) throw new GroveError("EINVAL", "EINVAL_stored_extent", `the compressed extent is damaged: ${checked.problem}`);
    const first = offset / blockSizeBytes;
    const end = first + stored.blocks;
    if (end * blockSizeBytes > fileSizeMaxBytes) throw new GroveError("EFBIG", "EFBIG_stored_extent", `files are limited to ${fileSizeMaxBytes} bytes`);
    let target = this.names.inodeAt(ino);
    if ((target.mode & S_IFMT) !== S_IFREG) throw new GroveError("EINVAL", "EINVAL_stored_extent", "a stored extent needs a regular file");
    this.policy.checkWritable();
    // Buffered blocks must not later replace the inserted ones (nor be counted against them).
    this.policy.writeOutIno(ino);
    this.policy.makeRoom(Math.max(stored.crcs.length / 4, stored.blocks) + 16);
    target = this.names.inodeAt(ino);
    const dropped = this.data.extentCount(target, this.inodes.mapOf(target), first, end);
    this.data.admitStored(target, stored, dropped);
    this.changeFile(target, end, dropped, () => this.data.insertStored(target, this.inodes.mapOf(target), first, stored, checked.unit));
  }

  /**
   * Records slice `stored.offset`, `stored.blocks` of an lz4 extent this
   * filesystem holds already, at file block `srcOffset` of file `srcIno`
   * (put there by `insertStored`), at byte `offset` of regular file `ino`:
   * one more reference to that extent, no data written. The extent found
   * must be lz4 with `stored`'s unit size and crcs (EINVAL_stored_extent
   * otherwise). The file grows to cover the slice; mtime and ctime move.
   */
  shareStored(ino: number, offset: number, stored: StoredExtent, srcIno: number, srcOffset: number): void {
    for (const n of [offset, srcOffset]) {
      if (!Number.isSafeInteger(n) || n < 0 || n % blockSizeBytes !== 0) {
        throw new GroveError("EINVAL", "EINVAL_stored_extent", `a stored extent at byte ${n}, not at a block boundary`);
      }
    }
    const first = offset / blockSizeBytes;
    const end = first + stored.blocks;
    if (stored.blocks < 1 || stored.offset < 0 || stored.offset + stored.blocks > stored.unitBlocks) {
      throw new GroveError("EINVAL", "EINVAL_stored_extent", `blocks [${stored.offset}, ${stored.offset + stored.blocks}) outside a unit of ${stored.unitBlocks}`);
    }
    if (end * blockSizeBytes > fileSizeMaxBytes) throw new GroveError("EFBIG", "EFBIG_stored_extent", `files are limited to ${fileSizeMaxBytes} bytes`);
    for (const at of [ino, srcIno]) {
      if ((this.names.inodeAt(at).mode & S_IFMT) !== S_IFREG) throw new GroveError("EINVAL", "EINVAL_stored_extent", "a stored extent needs a regular file");
    }
    this.policy.checkWritable();
    this.policy.writeOutIno(ino);
    this.policy.makeRoom(16);
    const source = this.names.inodeAt(srcIno);
    const block = srcOffset / blockSizeBytes;
    const [found] = this.data.sharedSlices(source, this.inodes.mapOf(source), block, block + 1);
    const same =
      found !== undefined &&
      found.compression === Compression.Lz4 &&
      found.unitBlocks === stored.unitBlocks &&
      found.crcs.subarray(0, 4 * found.diskBlocks).equals(stored.crcs);
    if (!same) throw new GroveError("EINVAL", "EINVAL_stored_extent", `inode ${srcIno} holds no such compressed extent at byte ${srcOffset}`);
    const target = this.names.inodeAt(ino);
    const dropped = this.data.extentCount(target, this.inodes.mapOf(target), first, end);
    const slice = { ...found, fileBlock: first, offset: stored.offset, blocks: stored.blocks, crcs: Buffer.from(found.crcs) };
    this.data.admitShare(target, 1, dropped);
    this.changeFile(target, end, dropped, () => this.data.share(target, this.inodes.mapOf(target), first, end, [slice], 0));
  }

  /** Runs `apply` on `target` as one admitted mutation, then grows it to `end` blocks and moves mtime and ctime. */
  private changeFile(target: Inode, end: number, dropped: number, apply: () => void): void {
    this.policy.mutation(
      4,
      () =>
        this.store.alreadyAdmitted(() => {
          apply();
          target.size = Math.max(target.size, end * blockSizeBytes);
          const now = this.clock();
          target.mtimeNs = now;
          target.ctimeNs = now;
          this.inodes.save(target);
        }),
      "grow",
      dropped,
    );
    this.policy.afterWrite();
  }

  /** Copies `count` bytes through the read and buffered write paths, a MiB at a time; short if the volume fills midway. */
  private copyBytes(from: CopySource, srcIno: number, srcAt: number, dstIno: number, dstAt: number, count: number): number {
    const chunkBytes = 1024 * 1024;
    let done = 0;
    while (done < count) {
      const n = Math.min(chunkBytes, count - done);
      this.policy.makeRoom(Math.ceil(n / blockSizeBytes) + 1);
      const source = from.names.inodeAt(srcIno);
      const bytes = Buffer.alloc(n);
      from.data.read(source, from.inodes.mapOf(source), bytes, n, srcAt + done);
      try {
        this.files.writeBytes(dstIno, bytes, dstAt + done);
      } catch (error) {
        const refused = error instanceof GroveError && error.code === "ENOSPC" && !this.store.isPoisoned;
        if (!refused || done === 0) throw error;
        break;
      }
      done += n;
    }
    return done;
  }
}
