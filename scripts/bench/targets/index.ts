/** Every target, in the order of the header and of the tables; `defaultTargets` are the ones a sweep runs unless --targets says otherwise. */
import type { Target } from "../target.js";
import { btrfs } from "./btrfs.js";
import { cCeiling } from "./c_ceiling.js";
import { ceiling } from "./ceiling.js";
import { fuse2fs } from "./fuse2fs.js";
import { grovefs, grovefsDup, grovefsFuseNative, grovefsKernel, grovefsSingle } from "./grovefs.js";

export const targets: readonly Target[] = [grovefs, grovefsFuseNative, grovefsKernel, grovefsSingle, grovefsDup, fuse2fs, ceiling, cCeiling, btrfs];

/** grovefs-kernel is left out: once it lands it is the default, and `grovefs` measures it. */
export const defaultTargets: readonly string[] = ["grovefs", "grovefs-fuse-native", "fuse2fs", "ceiling", "c-ceiling", "btrfs"];
