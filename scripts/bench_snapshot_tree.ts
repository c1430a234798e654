/**
 * The file tree of the snapshot benchmark, and the two ways it is built: into
 * a grovefs volume through the library (FileSystemOps, in-process, no FUSE),
 * and into a plain directory that `mkfs.ext4 -d` copies into an ext4 image.
 * Both get the same names, the same sizes and the same bytes.
 *
 * Shape: `/dNNNN/fNNNNNN`, `filesPerDir` files a directory, file i in
 * directory floor(i / filesPerDir). Sizes are uniform in [0, maxFileBytes],
 * drawn from the seeded kvstore Prng, so a run is repeatable. The bytes are
 * slices of one seeded random pool (incompressible, so a future lz4 changes
 * nothing), at an offset that depends on the file and on a "version", so a
 * rewrite stores different bytes of the same size.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { constants as C } from "node:fs";
import { Prng } from "../kvstore/index.js";
import type { Caller, GroveFs } from "../fs/index.js";

export const filesPerDir = 1000;
export const maxFileBytes = 16 * 1024;
const poolBytes = 1024 * 1024;
/** How many files between calls to GroveFs.maintenance (the mount's once-a-second timer). */
const maintenanceEvery = 256;
const owner: Caller = { uid: 0, gid: 0 };

export interface TreeSpec {
  files: number;
  dirs: number;
  /** Size of file i in bytes. */
  sizes: Uint32Array;
  totalBytes: number;
  pool: Buffer;
}

export function makeTree(files: number, seed: number): TreeSpec {
  const prng = new Prng(seed);
  const sizes = new Uint32Array(files);
  let totalBytes = 0;
  for (let i = 0; i < files; i++) {
    sizes[i] = prng.below(maxFileBytes + 1);
    totalBytes += sizes[i];
  }
  const pool = new Prng(seed ^ 0x5eed).bytes(poolBytes + maxFileBytes);
  return { files, dirs: Math.ceil(files / filesPerDir), sizes, totalBytes, pool };
}

export function dirPath(d: number): string {
  return `/d${String(d).padStart(4, "0")}`;
}

export function filePath(i: number): string {
  return `${dirPath(Math.floor(i / filesPerDir))}/f${String(i).padStart(6, "0")}`;
}

/** File i's bytes at a given version (0 when first written; a rewrite uses another). */
export function fileBytes(tree: TreeSpec, i: number, version = 0): Buffer {
  const offset = (Math.imul(i + 1, 40503) + version * 7919 * 64) % poolBytes;
  return tree.pool.subarray(offset, offset + tree.sizes[i]);
}

/** Writes one file through the library: create, one write, release (as a cp would). */
export function writeGroveFile(fs: GroveFs, tree: TreeSpec, i: number, version: number): void {
  const data = fileBytes(tree, i, version);
  const flags = C.O_WRONLY | C.O_CREAT | C.O_TRUNC;
  const fh = fs.create(filePath(i), 0o644, flags, owner);
  try {
    if (data.length > 0) {
      const n = fs.write(fh, data, data.length, 0);
      if (n !== data.length) throw new Error(`short write to ${filePath(i)}: ${n} of ${data.length}`);
    }
  } finally {
    fs.release(fh);
  }
}

/** Builds the whole tree in an open grovefs volume, then commits. */
export function populateGrove(fs: GroveFs, tree: TreeSpec): void {
  for (let d = 0; d < tree.dirs; d++) fs.mkdir(dirPath(d), 0o755, owner);
  for (let i = 0; i < tree.files; i++) {
    writeGroveFile(fs, tree, i, 0);
    if (i % maintenanceEvery === 0) fs.maintenance();
  }
  fs.sync();
}

/** Rewrites files [from, to) with new bytes of the same size (copy-on-write: new blocks), then commits. */
export function rewriteGrove(fs: GroveFs, tree: TreeSpec, from: number, to: number, version: number): void {
  for (let i = from; i < to; i++) {
    writeGroveFile(fs, tree, i, version);
    if (i % maintenanceEvery === 0) fs.maintenance();
  }
  fs.sync();
}

/** Unlinks every file and removes every directory, then commits. */
export function removeAllGrove(fs: GroveFs, tree: TreeSpec): void {
  for (let i = 0; i < tree.files; i++) {
    fs.unlink(filePath(i));
    if (i % maintenanceEvery === 0) fs.maintenance();
  }
  for (let d = 0; d < tree.dirs; d++) fs.rmdir(dirPath(d));
  fs.sync();
}

/** Builds the same tree under `root` on the host filesystem (the source for `mkfs.ext4 -d`). */
export function populateDirectory(root: string, tree: TreeSpec): void {
  for (let d = 0; d < tree.dirs; d++) fs.mkdirSync(path.join(root, dirPath(d)), { mode: 0o755 });
  for (let i = 0; i < tree.files; i++) {
    fs.writeFileSync(path.join(root, filePath(i)), fileBytes(tree, i, 0), { mode: 0o644 });
  }
}
