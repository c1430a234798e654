/**
 * One open volume as the filesystems on it share it. A process may serve
 * several subvolumes of a volume at once (a mount daemon with more mounts
 * attached): one GroveFs per subvolume, all over one store, plus read-only
 * views of snapshots for /.snapshots. What they share lives here:
 * - the snapshot layer's Volume (store, free space, refcounts, subvolume table);
 * - the commit stream (fs/commit_stream.ts): one running transaction, so a
 *   commit by any of them includes everybody's buffered data;
 * - which subvolumes are served, so that none is served twice (two sets of
 *   buffers over one inode tree would disagree) and none that is served is
 *   deleted;
 * - the snapshot views, so that deleting a snapshot closes its one view,
 *   whichever mount it was seen through: no view is ever read after its
 *   blocks start being freed;
 * - the watchers of subvolume creations and deletions (each mount keeps its
 *   kernel's /.snapshots entries honest through one);
 * - when the background deletion last had its slice, so several mounts'
 *   maintenance ticks do not multiply its share of the time.
 * The store is closed when the last filesystem serving a subvolume closes.
 */
import { assert } from "../kvstore/index.js";
import type { Volume } from "../snapshot/index.js";
import type { SubvolumeWatcher } from "./api.js";
import { CommitStream } from "./commit_stream.js";

/** What the views map holds: a filesystem serving one snapshot read-only. */
export interface SharedView {
  readonly subvolumeId: number;
  close(): void;
}

export class SharedVolume<View extends SharedView> {
  readonly stream: CommitStream;
  /** Snapshot views by name, opened on first use by any filesystem on the volume. */
  readonly views = new Map<string, View>();
  /** Subvolume ids served by an open filesystem (not views), each once. */
  private readonly served = new Set<number>();
  private readonly watchers = new Set<SubvolumeWatcher>();
  /** Snapshots a running send reads, by name, with how many sends read each: they cannot be deleted meanwhile. */
  private readonly held = new Map<string, number>();
  private deletionSliceAtNs: bigint | null = null;

  constructor(
    readonly volume: Volume,
    clock: () => bigint,
  ) {
    this.stream = new CommitStream(volume.store, clock);
  }

  /** Subvolume `name` is read by a send until the returned function is called. */
  hold(name: string): () => void {
    this.held.set(name, (this.held.get(name) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = this.held.get(name)! - 1;
      if (left === 0) this.held.delete(name);
      else this.held.set(name, left);
    };
  }

  isHeld(name: string): boolean {
    return this.held.has(name);
  }

  /** Whether an open filesystem serves subvolume `id`. */
  serves(id: number): boolean {
    return this.served.has(id);
  }

  get servedCount(): number {
    return this.served.size;
  }

  /** A filesystem now serves subvolume `id` (checked free with `serves` first). */
  serve(id: number): void {
    assert(!this.served.has(id), "a subvolume is served once");
    this.served.add(id);
  }

  /**
   * The filesystem serving `id` closed (after its last commit). The last one
   * closes every view and the store.
   */
  release(id: number): void {
    assert(this.served.delete(id), "only a served subvolume is released");
    if (this.served.size > 0) return;
    for (const view of this.views.values()) view.close();
    this.views.clear();
    this.watchers.clear();
    this.volume.store.close();
  }

  /** Closes and forgets the view of snapshot `name`, if one is open. */
  dropView(name: string): void {
    const view = this.views.get(name);
    if (view === undefined) return;
    view.close();
    this.views.delete(name);
  }

  watch(watcher: SubvolumeWatcher): () => void {
    this.watchers.add(watcher);
    return () => this.watchers.delete(watcher);
  }

  /** Subvolume `name` passed every check and is about to be deleted. */
  deleting(name: string): void {
    for (const watcher of this.watchers) watcher.deleting(name);
  }

  /** Subvolume `name` was created or deleted (committed). */
  changed(name: string): void {
    for (const watcher of this.watchers) watcher.changed(name);
  }

  /**
   * Whether the background deletion may run its slice now (`nowNs` on the
   * filesystems' clock): with several filesystems served, at most one slice
   * per `periodNs` however many of their maintenance ticks ask.
   */
  takeDeletionSlice(nowNs: bigint, periodNs: bigint): boolean {
    if (this.served.size > 1 && this.deletionSliceAtNs !== null && nowNs - this.deletionSliceAtNs < periodNs) return false;
    this.deletionSliceAtNs = nowNs;
    return true;
  }
}
