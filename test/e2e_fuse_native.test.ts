/**
 * The fuse-native transport (libfuse 2.9, `-o transport=fuse-native`) under
 * a representative subset of the end-to-end suites: the tools suite (git, tar,
 * renames, df, xattrs, listings, read-only mounts, refusals) and the copy
 * suite (cp -a round trips, modes, nanosecond times). The full suites run
 * over the default transport (the kernel protocol, as root) in their own
 * files. Each imported suite registers its tests here, in this file's own
 * module graph, with every mount made by E2eVolume using fuse-native.
 */
import { E2eVolume } from "./e2e_helpers.js";

E2eVolume.transport = "fuse-native";
await import("./e2e_tools.test.js");
await import("./e2e_copy.test.js");
