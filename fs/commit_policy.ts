/**
 * The commit policy: which calls and mutations are admitted, and when the
 * running transaction is written out and committed.
 *
 * Admission: every change to the subvolume runs as one `mutation` of about
 * `puts` inode-tree updates. It is refused up front, having changed nothing
 * (EBADF once closed, EROFS, ENOSPC against free space), or carried out
 * whole; a failure halfway through poisons the volume, because the in-memory
 * state could no longer be trusted. Growth leaves behind what buffered
 * writes were promised and `shrinkReserveBlocks`, so that a full volume can
 * still unlink, rmdir and truncate to make room.
 *
 * Commits: `commit` writes out every buffered block and the counters record
 * first, then commits the store, through the volume's commit stream
 * (fs/commit_stream.ts), which does the same for every other writable
 * filesystem open on the volume. The facade commits on sync, fsync,
 * snapshot and close, and from maintenance when `commitDue`: the interval
 * has passed or a memory bound is near. This room also commits by itself
 * when a write leaves dirty nodes past dirtyNodeBytesMax (`afterWrite`), and
 * when an operation needs blocks that only the running transaction's commit
 * makes usable again (`makeRoom` before it, `withRoom` once more after a
 * refusal).
 *
 * Invariant: buffered data is written out under the admission it was given
 * when it was written (`alreadyAdmitted`): a write-out is never refused.
 * Growth therefore leaves free what the buffered data of every filesystem
 * on the volume was promised (`CommitStream.promisedBlocks`), not only this one's.
 */
import { GroveError, type Store } from "../kvstore/index.js";
import type { FreeSpace } from "../alloc/index.js";
import { commitIntervalMs, dirtyNodeBytesMax } from "./constants.js";
import type { CommitStream, StreamMember } from "./commit_stream.js";
import type { Inode } from "./format.js";
import type { FileData } from "./file_data.js";
import type { InodeTable } from "./inode_table.js";

export type MutationPurpose = "grow" | "shrink";

export class CommitPolicy implements StreamMember {
  private closed = false;
  /** In the volume's commit stream: writable and not closed. */
  private joined: boolean;

  constructor(
    private readonly store: Store,
    private readonly space: FreeSpace,
    private readonly inodes: InodeTable,
    private readonly data: FileData,
    private readonly clock: () => bigint,
    /** Nothing in this subvolume may change: a read-only open, or a snapshot. */
    private readonly readOnly: boolean,
    /** The commits of every writable filesystem on the volume; this one joins it unless read-only. */
    private readonly stream: CommitStream,
    /** The longest a change waits for the periodic commit (mount -o commit=). */
    private readonly intervalMs: number = commitIntervalMs,
  ) {
    this.joined = !readOnly;
    if (this.joined) stream.join(this);
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** From now on every call is EBADF; the stream's commits no longer include this filesystem (commit first). */
  close(): void {
    this.closed = true;
    this.joined = false;
    this.stream.leave(this);
  }

  checkOpen(): void {
    if (this.closed) throw new GroveError("EBADF", "EBADF_closed", "the filesystem is closed");
  }

  checkWritable(): void {
    this.checkOpen();
    if (this.readOnly) throw new GroveError("EROFS", "EROFS_fs", "the filesystem is mounted read-only");
  }

  /**
   * Runs a mutation of about `puts` tree updates: refused up front (EROFS,
   * ENOSPC) or carried out whole; a failure halfway poisons the volume.
   */
  mutation<T>(puts: number, apply: () => T, purpose: MutationPurpose = "grow", freedRanges = 0): T {
    this.checkWritable();
    if (puts > 0) {
      // Growth must leave room for what buffered writes were promised, and for deletes after it.
      const extra = purpose === "grow" ? this.shrinkReserveBlocks() + this.stream.promisedBlocks() : 0;
      this.store.beginMutation(puts * this.blocksPerPut(), purpose, freedRanges, extra);
    }
    try {
      // A shrinking mutation was admitted whole: the tree updates inside it
      // must not be refused one by one for want of the growth headroom (with
      // snapshots, a delete copies shared nodes and grows the refcount tree).
      return purpose === "shrink" ? this.store.spendingHeadroom(apply) : apply();
    } catch (error) {
      return this.store.poison(error);
    }
  }

  /**
   * Growth leaves this much behind, so that a full volume can still unlink,
   * rmdir and truncate (each a few tree updates) to make room.
   */
  shrinkReserveBlocks(): number {
    return 4 * this.blocksPerPut() * this.store.nodeCopies;
  }

  /**
   * What this filesystem's file data must leave free when it admits a write,
   * besides its own promises: the shrink reserve, and what the other
   * filesystems on the volume promised their buffered data.
   */
  keptFreeBlocks(): number {
    return this.shrinkReserveBlocks() + this.stream.promisedBlocks() - (this.joined ? this.data.promisedBlocks() : 0);
  }

  /**
   * Blocks freed by the running transaction are reusable only after it
   * commits, and the commit estimate every admission carries grows with
   * what the transaction freed: when growth of about `blocks` would not be
   * admitted now, commit first. Called at the start of an operation, before
   * it loads anything it might keep across the commit.
   */
  makeRoom(blocks: number): void {
    // The margin covers what the rough `blocks` misses: a refusal later in these operations is not retried.
    this.commitIfShort(blocks + 256 + Math.floor(this.space.usage().totalBlocks / 256));
  }

  /**
   * Runs `operation`, which validates and is admitted before it changes
   * anything. When it is refused for space while the running transaction
   * holds frees or a grown commit estimate, commit and run it once more from
   * the start (it reloads what it uses): a full volume must take deletes, and
   * then writes, without waiting for the periodic commit (btrfs, too, commits
   * when a reservation is short of space that is only pending). It commits
   * first only when about `blocks` already does not fit: on a full volume
   * makeRoom's margin would commit before nearly every operation.
   */
  withRoom<T>(blocks: number, operation: () => T): T {
    this.commitIfShort(blocks);
    try {
      return operation();
    } catch (error) {
      if (!this.isSpaceRefusal(error) || !this.commitWouldHelp()) throw error;
      this.commit();
      return operation();
    }
  }

  /** Commits when growth of `blocks` would be refused now and a commit would help. */
  private commitIfShort(blocks: number): void {
    if (!this.commitWouldHelp()) return;
    const growth = blocks + this.stream.promisedBlocks() + this.shrinkReserveBlocks() + this.store.commitOverheadBlocks();
    if (this.space.shortfall(growth, "grow") > 0) this.commit();
  }

  /** A reservation refused up front (nothing changed), not a poisoned volume or a limit a commit cannot lift. */
  private isSpaceRefusal(error: unknown): boolean {
    if (!(error instanceof GroveError) || error.code !== "ENOSPC" || this.store.isPoisoned) return false;
    return error.detail.startsWith("ENOSPC_reserve");
  }

  /** A commit would make freed blocks usable, or shrink the commit estimate admissions carry. */
  private commitWouldHelp(): boolean {
    if (this.readOnly || this.closed || this.store.isPoisoned) return false;
    return this.space.usage().pendingBlocks > 0 || this.store.dirtyBytes > 0;
  }

  /** After a mutation that buffered or wrote data: keep buffered data and dirty nodes within their bounds. */
  afterWrite(): void {
    if (this.stream.overBound) this.stream.writeOutAll();
    if (this.store.dirtyBytes > dirtyNodeBytesMax) this.commit();
  }

  /** Writes out inode `ino`'s buffered data now, as a commit would (it was admitted when written). */
  writeOutIno(ino: number): void {
    if (!this.data.hasBuffers(ino)) return;
    this.writeOut(this.inodes.load(ino));
  }

  /**
   * Writes out buffered data and the counters, of this filesystem and every
   * other one on the volume, then commits: everything is durable when this returns.
   */
  commit(): void {
    this.stream.commit();
  }

  /** fsync: everything is durable when this returns, through the fsync log when it can take it (CommitStream.sync). */
  sync(): void {
    this.stream.sync();
  }

  /** The maintenance decision: the commit interval has passed, or buffered data or dirty nodes are near their bound. */
  get commitDue(): boolean {
    const due = this.clock() - this.stream.lastCommitAtNs >= BigInt(this.intervalMs) * 1_000_000n;
    return due || this.stream.overBound || this.store.dirtyBytes > dirtyNodeBytesMax;
  }

  // ---- as a member of the commit stream ------------------------------------------

  saveCounters(): void {
    if (this.inodes.countersDirty) this.mutation(0, () => this.store.spendingHeadroom(() => this.inodes.saveCounters()));
  }

  promisedBlocks(): number {
    return this.data.promisedBlocks();
  }

  get bufferedBytes(): number {
    return this.data.bufferedBytes;
  }

  get heldBytes(): number {
    return this.data.heldBytes;
  }

  writeOutData(): void {
    for (const ino of this.data.inodesWithBuffers()) {
      const inode = this.inodes.load(ino);
      this.checkWritable();
      this.writeOut(inode);
    }
  }

  /**
   * Admitted when write() took the data (its promise, kept free from growth
   * since): the tree updates of the write-out, copies of snapshot-shared
   * nodes included, are not refused.
   */
  private writeOut(inode: Inode): void {
    this.store.alreadyAdmitted(() =>
      this.store.spendingHeadroom(() => {
        this.data.writeOut(inode, this.inodes.mapOf(inode));
        this.inodes.save(inode);
      }),
    );
  }

  /** What one inode-tree update may copy: a path of nodes, with splits. */
  private blocksPerPut(): number {
    return 2 * (this.inodes.level + 3);
  }
}
