/**
 * What kvstore needs from the layers above, as interfaces (dependency
 * inversion, not an upward import): blocks from an allocator (`alloc/`),
 * whether a block is shared (`snapshot/`), and which leaf values hold block
 * pointers (`fs/`).
 */
import type { TreeMeta } from "./btree.js";
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
  /**
   * One block at least `distanceMin` blocks from `awayFrom` when one is free
   * (else any): the second copy of a node, with duplicate metadata.
   */
  allocateFar(awayFrom: number, distanceMin: number): number;
  /** The running transaction no longer references these blocks. */
  free(lba: number, count: number): void;
  /**
   * One round of the commit fixpoint: record pending changes in the
   * free-space trees. Returns whether it changed anything.
   */
  flushToTrees(): boolean;
  /**
   * The volume becomes `blocks` long, at the start of a transaction of its
   * own (nothing allocated or freed in it yet). Growing adds the new blocks
   * to free space; shrinking takes the blocks past the new end out of it,
   * refused (changing nothing) unless every one of them is free.
   */
  resize(blocks: number): void;
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
 * Edges of the forest held in leaf values (DESIGN.md): a record that holds
 * the root of a tree, or a data extent, reports it here, so that sharing,
 * freeing and the checker follow it exactly like a child pointer.
 */
export interface ItemEdges {
  /** A tree whose root lives in this record. */
  tree(owner: number, meta: TreeMeta): void;
  /**
   * A data extent this record references: the whole physical extent, `count`
   * blocks from `lba`. A compressed extent also says how many blocks it
   * decompresses to (`logicalBlocks`), for the volume's usage counters.
   */
  blocks(lba: number, count: number, what: string, logicalBlocks?: number): void;
}

/** Reports the edges held in one leaf item of tree `treeId` (none for most items). */
export type EdgeReader = (treeId: number, key: Buffer, value: Buffer, edges: ItemEdges) => void;

export const noEdges: EdgeReader = () => {};

/**
 * Reference counts on blocks (Rodeh). Every allocated block has one
 * reference implicitly; a shared one (a node reachable from two parents, a
 * data extent held by two records) has more. A node with one reference is
 * copied on write normally; a shared one passes a reference to each child
 * when it is copied, and is never freed while others hold it.
 */
export interface NodeSharing {
  /**
   * Whether the node at `lba`, written at `generation`, read as part of tree
   * `treeId`, may have another reference. A node written after the last
   * snapshot of its subvolume cannot, and needs no lookup.
   */
  isShared(lba: number, generation: number, treeId: number): boolean;
  /** References to the block or extent starting at `lba` (1 when none are recorded). */
  refCount(lba: number): number;
  /** One more reference to the block or extent of `blocks` blocks at `lba`. */
  addRef(lba: number, blocks: number): void;
  /** Drops one reference from a block whose count is at least 2; the block stays allocated. */
  dropRef(lba: number): void;
  /** Blocks the commit may spend recording the counts changed so far. */
  commitBlocks(): number;
  /** One round of the commit fixpoint: record changed counts in their tree. Returns whether it changed anything. */
  flushToTrees(): boolean;
  committed(): void;
  aborted(): void;
}

/** The default before snapshots exist: every block has exactly one reference. */
export const unshared: NodeSharing = {
  isShared: () => false,
  refCount: () => 1,
  addRef: () => {
    throw new Error("unshared volume: addRef is never needed");
  },
  dropRef: () => {
    throw new Error("unshared volume: dropRef is never needed");
  },
  commitBlocks: () => 0,
  flushToTrees: () => false,
  committed: () => {},
  aborted: () => {},
};
