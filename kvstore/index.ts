/** kvstore: block devices, nodes, the CoW B+-tree, transactions and the superblock. */
export * from "./constants.js";
export * from "./errors.js";
export { type BlockDevice, FileDevice, checkDeviceSize, lockImageFd } from "./device.js";
export { SimDevice, SimulatedCrash, type RecoverOptions } from "./sim_device.js";
export { Prng } from "./prng.js";
export { readU64BE, readU64LE, writeU64BE, writeU64LE } from "./bytes.js";
export { crc32c } from "./checksum.js";
export { compareBytes } from "./node.js";
export { Tree, Cursor, type TreeMeta } from "./btree.js";
export { Store, ReleasePlan, type StoreOptions, type FormatOptions, treeKey, readSuperblock, readSuperblocks, readDurableSuperblock, unreadableSlots } from "./store.js";
export type { SpaceManager, SpaceProvider, NodeSharing, ReservePurpose, ItemEdges, EdgeReader } from "./interfaces.js";
export { unshared, noEdges } from "./interfaces.js";
export { ownerMatches } from "./node.js";
export { type CompressedUsage, featureCheckedPointers, featureCompressLz4, featureDupMetadata, featurePreallocated, featureReceivedSnapshots, featureSuperblockCopies, featureWideInodes, noCompressedUsage } from "./superblock.js";
export {
  type CopyState,
  type SuperblockReport,
  TruncatedImageError,
  backupSuperblockLbas,
  inspectSuperblocks,
  reservedExtents,
  sourceLine,
  twinSlotLbas,
} from "./superblock_copies.js";
export { type WriteFate } from "./sim_device.js";
export { checkForest, compressedUsageProblems, problemsBesideCopies, type CopyRepair, type ForestOptions, type ForestReport, type TreeReport, type ItemVisitor, Bitmap } from "./check.js";
export { ScrubPass, scrubStepBlocks, type ScrubCounters, type ScrubHooks, type ScrubPosition } from "./scrub.js";
export { diffTrees, diffTreesSteps, type TreeChange, type TreeDiffStats } from "./tree_diff.js";
