#!/usr/bin/env node
// The grovefs command: runs cli/main.ts through tsx's loader (no build step).
// Before anything uses libuv's thread pool: the kernel FUSE transport keeps reads of /dev/fuse
// outstanding there (each blocks a thread), beside lz4 compression and read-ahead.
process.env.UV_THREADPOOL_SIZE ??= "16";
const { register } = await import("tsx/esm/api");

register();
await import("../cli/main.ts");
