/** snapshot: subvolumes, snapshots and clones over hierarchical reference counts (Rodeh). */
export * from "./format.js";
export { Refcounts } from "./refcounts.js";
export { Subvolumes, defaultSubvolumeId, defaultSubvolumeName, deletionStepNodes } from "./subvolumes.js";
export { formatVolume, openVolume, type Volume, type VolumeOptions } from "./volume.js";
export { checkSnapshots, type SnapshotReport } from "./check.js";
