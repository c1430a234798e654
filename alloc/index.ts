/** alloc: free space as two B+-trees, best-fit allocation, deferred frees, and the open volume. */
export { FreeSpace, type SpaceUsage, treeIdFreeByLba, treeIdFreeByLength } from "./free_space.js";
export { ExtentSet, type Extent } from "./extent_set.js";
export { checkSpace, type SpaceReport } from "./check.js";
export { formatVolume, openVolume, type SpaceOptions, type Volume } from "./volume.js";
