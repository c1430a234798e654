/**
 * One volume's commit stream: the commits of every writable filesystem
 * open on it. A process that serves several subvolumes of one volume (a
 * mount daemon with a second mount attached) has one GroveFs per subvolume
 * over one store, and the store has one running transaction: whoever
 * commits commits everybody's changes. So a commit first has every member
 * write out its buffered file data and its counters record, and only then
 * commits the store; a committed generation is then consistent for every
 * subvolume, never one member's tree updates without another's data.
 *
 * The same goes for admission: a member's growth must leave free what every
 * member's buffered data was promised (`promisedBlocks`), since write-out of
 * buffered data is never refused (fs/commit_policy.ts). And the bound on
 * buffered data is the volume's, not each member's.
 *
 * Invariants:
 * - Members are the writable filesystems open on the store (read-only ones
 *   and snapshot views buffer nothing and are not members).
 * - `commit` writes out every member before the store commits; nothing else
 *   commits the store while filesystems are open on it.
 */
import type { Store } from "../kvstore/index.js";
import { dirtyDataBytesMax } from "./constants.js";

/** What a writable filesystem gives the stream (its commit policy). */
export interface StreamMember {
  /** Writes out every buffered block (admitted when it was written: never refused). */
  writeOutData(): void;
  /** Saves the counters record if inode numbers were handed out since it was last saved. */
  saveCounters(): void;
  /** Blocks its buffered data will take when written out. */
  promisedBlocks(): number;
  /** Buffered data that will take new blocks (bytes). */
  readonly bufferedBytes: number;
  /** Memory its buffered data holds (bytes). */
  readonly heldBytes: number;
}

export class CommitStream {
  private readonly members = new Set<StreamMember>();
  private lastCommitNs: bigint;

  constructor(
    private readonly store: Store,
    private readonly clock: () => bigint,
  ) {
    this.lastCommitNs = clock();
  }

  join(member: StreamMember): void {
    this.members.add(member);
  }

  /** A member closed (after its last commit): it has nothing buffered left. */
  leave(member: StreamMember): void {
    this.members.delete(member);
  }

  /** Blocks that every member's buffered data will take when written out. */
  promisedBlocks(): number {
    let blocks = 0;
    for (const member of this.members) blocks += member.promisedBlocks();
    return blocks;
  }

  /** Every member's buffered data that will take new blocks (bytes). */
  get bufferedBytes(): number {
    let bytes = 0;
    for (const member of this.members) bytes += member.bufferedBytes;
    return bytes;
  }

  /** The memory all members' buffered data holds is past its bound. */
  get overBound(): boolean {
    let bytes = 0;
    for (const member of this.members) bytes += member.heldBytes;
    return bytes > dirtyDataBytesMax;
  }

  /** When the stream last committed (ns, the filesystems' clock). */
  get lastCommitAtNs(): bigint {
    return this.lastCommitNs;
  }

  /** Writes out every member's buffered data, without committing (memory bound). */
  writeOutAll(): void {
    for (const member of this.members) member.writeOutData();
  }

  /** Writes out every member, then commits the store: everything is durable when this returns. */
  commit(): void {
    this.writeOutAll();
    for (const member of this.members) member.saveCounters();
    this.store.commit();
    this.lastCommitNs = this.clock();
  }

  /**
   * fsync: writes out every member, then makes the whole state durable with
   * one fsync-log record and one flush (kvstore/fsync_log.ts), or a commit
   * when the log cannot take it. The periodic commit still comes when due:
   * it empties the log.
   */
  sync(): void {
    this.writeOutAll();
    for (const member of this.members) member.saveCounters();
    const records = this.store.logRecords;
    this.store.logSync();
    if (this.store.logRecords <= records) this.lastCommitNs = this.clock();
  }
}
