/** fs: POSIX files and directories over the storage engine, and the FUSE bridge. */
export * from "./api.js";
export * from "./constants.js";
export { GroveFs, type GroveFsOptions, type VolumeInfo } from "./filesystem.js";
export { checkFilesystem, type FsReport } from "./check.js";
export * from "./fuse_bridge.js";
