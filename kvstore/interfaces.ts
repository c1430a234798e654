/**
 * What kvstore needs from the layers above, as interfaces (dependency
 * inversion, not an upward import): blocks from an allocator (`alloc/`), and
 * whether a node is shared (`snapshot/`, later).
 */
import type { Store } from "./store.js";

/** Why space is being reserved: growing must leave headroom so that shrinking can still proceed. */
export type ReservePurpose = "grow" | "shrink";

export interface SpaceManager {
  /**
   * Fails with ENOSPC unless `blocks` single blocks can be allocated now while
   * leaving enough for the commit to record them. Called before a mutation
   * touches anything, so a refused mutation changes nothing. `freedRanges`
   * counts extents the mutation will free, whose recording the commit pays for.
   */
  reserve(blocks: number, purpose: ReservePurpose, freedRanges?: number): void;
  /** `count` contiguous blocks, near `hint` when one is given. */
  allocate(count: number, hint?: number): number;
  /** The running transaction no longer references these blocks. */
  free(lba: number, count: number): void;
  /**
   * One round of the commit fixpoint: record pending changes in the
   * free-space trees. Returns whether it changed anything.
   */
  flushToTrees(): boolean;
  /** The commit is durable: blocks freed by it may now be reused. */
  committed(): void;
  /** The running transaction was discarded. */
  aborted(): void;
}

export interface SpaceProvider {
  /** The allocator for a freshly formatted device: everything past the superblocks is free. */
  format(store: Store): SpaceManager;
  /** The allocator of an existing volume, loaded from its trees. */
  open(store: Store): SpaceManager;
}

/**
 * Reference counts on nodes (Rodeh). A node with one reference is copied on
 * write normally; a shared one must pass a reference to each child when it is
 * copied, and is never freed while others hold it.
 */
export interface NodeSharing {
  isShared(lba: number, generation: number): boolean;
  addRef(lba: number): void;
  /** Drops one reference from a shared block; the block stays allocated. */
  dropRef(lba: number): void;
}

/** The default before snapshots exist: every block has exactly one reference. */
export const unshared: NodeSharing = {
  isShared: () => false,
  addRef: () => {
    throw new Error("unshared volume: addRef is never needed");
  },
  dropRef: () => {
    throw new Error("unshared volume: dropRef is never needed");
  },
};
