#!/usr/bin/env node
// The grovefs command: runs dist/cli/main.js when `npm run build` (run by npm
// install) left a build newer than every source file, else cli/main.ts through
// tsx's loader. Both are the same code; the build starts in half the time.
// Before anything uses libuv's thread pool: the kernel FUSE transport keeps reads of /dev/fuse
// outstanding there (each blocks a thread), beside lz4 compression and read-ahead.
process.env.UV_THREADPOOL_SIZE ??= "16";
import { fileURLToPath } from "node:url";
import { builtIsCurrent } from "./sources.mjs";

const root = fileURLToPath(new URL("..", import.meta.url));
if (process.env.GROVEFS_TSX !== "1" && builtIsCurrent(root)) {
  await import("../dist/cli/main.js");
} else {
  const { register } = await import("tsx/esm/api");
  register();
  await import("../cli/main.ts");
}
