/**
 * Every limit of the storage engine, named once, with its unit last.
 *
 * A walk over on-disk data is bounded by one of these, so that a corrupt image
 * produces an error rather than a hang or an unbounded allocation.
 */

/** One block is one B+-tree node, one superblock slot, or one data block. */
export const blockSizeBytes = 4096;

/** Superblock slots live at these LBAs; nothing else may ever be placed there. */
export const superblockSlotLbas = [0, 1] as const;
/** The first LBA that an allocator may hand out. */
export const firstAllocatableLba = 2;

/** Below this a device cannot hold a useful volume (trees plus commit headroom). */
export const deviceSizeMinBytes = 1024 * 1024;
export const deviceBlocksMin = deviceSizeMinBytes / blockSizeBytes;
/** LBAs are stored as u64 but handled as JS numbers: stay inside 2^48 blocks (1 EiB). */
export const deviceBlocksMax = 2 ** 48;

/** A descent deeper than this is corruption: 16 levels hold far more than 2^48 keys. */
export const treeDepthMax = 16;

/** The largest key and value the B+-tree accepts; four items always fit a node. */
export const keySizeMaxBytes = 256;
export const valueSizeMaxBytes = 640;

/** The node cache's default bound; dirty nodes are not counted against it. */
export const nodeCacheBytesDefault = 64 * 1024 * 1024;

/**
 * The commit fixpoint applies the allocator's delta to the free-space trees
 * until nothing changes. Each round shadows only nodes not yet shadowed in this
 * transaction, so it converges in a few rounds; more than this is a bug.
 */
export const commitFixpointRoundsMax = 64;

/** Tree ids below this are reserved for the layers' fixed trees. */
export const treeIdRoot = 1;
export const treeIdFirstDynamic = 256;
