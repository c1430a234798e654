/** fs: POSIX files and directories over the storage engine, and the FUSE bridge. */
export * from "./api.js";
export * from "./constants.js";
export { GroveFs, type GroveFsOptions, type VolumeInfo, compressionNames, type CompressionName } from "./filesystem.js";
export { defaultAccessTimes, type AccessTimes } from "./file_ops.js";
export { checkFilesystem, type FsReport, type InodeFix } from "./check.js";
export * from "./fuse_bridge.js";
export { mountGrove, defaultTransport, transportNames, type Transport, type MountHandle } from "./mount.js";
export { parseResizeRequest, type ResizeRequest, type ResizeResult } from "./resize.js";
export { repairFilesystem, replayFsyncLog, type RepairResult } from "./repair.js";
export { salvageDamagedTrees, type SalvageResult } from "./salvage.js";
export { VolumeScrub, damagedDataBlocks, type ScrubSummary } from "./scrub.js";
export { fuseDevicePath } from "./fuse/kernel_mount.js";
export { receivePartialPrefix, type SendSource } from "./filesystem.js";
export * as send from "./send/index.js";
