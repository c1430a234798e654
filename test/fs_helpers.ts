/**
 * Shared machinery for the filesystem suites: a formatted volume on a
 * simulated device, errno assertions, byte patterns, and the checker that
 * every mutating test runs at the end (STYLE.md point 10).
 */
import { expect } from "vitest";
import { constants as C } from "node:fs";
import { createHash } from "node:crypto";
import { BlockDevice, GroveError, Prng, SimDevice, blockSizeBytes, checkForest } from "../kvstore/index.js";
import { Caller, FileSystemOps, GroveFs, GroveFsOptions, checkFilesystem, FsReport } from "../fs/index.js";
import { openVolume } from "../snapshot/index.js";
import { Compression, Extent, PayloadKind, decodeExtent, decodeInode, decodeItems, direntValueBytes, inodeKey } from "../fs/format.js";
import { fsEdges } from "../fs/edges.js";
import { mapOwner } from "../fs/item_map.js";
import { testMetadata } from "./helpers.js";

export const root: Caller = { uid: 0, gid: 0 };
export const { O_RDONLY, O_WRONLY, O_RDWR, O_CREAT, O_EXCL, O_TRUNC, O_APPEND } = C;

/** A deterministic clock: every call moves one microsecond on. */
export function testClock(startNs = 1_700_000_000_000_000_000n): () => bigint {
  let now = startNs;
  return () => (now += 1000n);
}

/** A GroveFs on a SimDevice, with the device kept so that the volume can be reopened or crashed. */
export class FsHarness {
  device: SimDevice;
  fs: GroveFs;
  readonly clock: () => bigint;
  /** Options every open of this volume uses (a reopen may add to them). */
  readonly options: GroveFsOptions;

  constructor(blocks = 16384, options: GroveFsOptions = {}) {
    this.clock = options.clock ?? testClock();
    this.options = { ...options, clock: this.clock };
    this.device = new SimDevice(blocks);
    GroveFs.format(this.device, { clock: this.clock, metadata: testMetadata });
    this.device = this.device.reopen();
    this.fs = GroveFs.open(this.device, this.options);
  }

  /** Clean close, then open the same disk again. */
  reopen(options: GroveFsOptions = {}): GroveFs {
    this.fs.close();
    this.device = this.device.reopen();
    this.fs = GroveFs.open(this.device, { ...this.options, ...options });
    return this.fs;
  }

  /** Power loss now: whatever was not flushed is lost (dropped), then reboot. */
  crashAndReopen(options: GroveFsOptions = {}): GroveFs {
    this.device = SimDevice.fromDurable(durableImage(this.device), this.device.blockCount);
    this.fs = GroveFs.open(this.device, { ...this.options, ...options });
    return this.fs;
  }

  /** Closes cleanly and runs the full checker (with data checksums) over the result. */
  closeAndCheck(): FsReport {
    this.fs.close();
    this.device = this.device.reopen();
    return expectFsClean(this.device);
  }
}

/**
 * The durable image of a SimDevice: what a crash with every unflushed write
 * dropped leaves. (recover() with keep and tear probability 0.)
 */
export function durableImage(device: SimDevice): Map<number, Uint8Array> {
  return device.recover(new Prng(0), { keepProbability: 0, tearProbability: 0 }).snapshotLive();
}

/** The filesystem checker, with data checksums, finds nothing. */
export function expectFsClean(device: BlockDevice): FsReport {
  const report = checkFilesystem(device, { verifyData: true });
  if (report.problems.length > 0) {
    throw new Error(`checkFilesystem found problems:\n${report.problems.slice(0, 20).join("\n")}`);
  }
  return report;
}

/** `body` throws a GroveError with this errno code (and, if given, this detail). */
export function expectErrno(body: () => unknown, code: string, detail?: string): GroveError {
  let thrown: unknown;
  try {
    body();
  } catch (error) {
    thrown = error;
  }
  if (thrown === undefined) throw new Error(`expected ${code}, but the call succeeded`);
  if (!(thrown instanceof GroveError)) throw thrown;
  expect(thrown.code, `${thrown.detail}: ${thrown.message}`).toBe(code);
  if (detail !== undefined) expect(thrown.detail).toBe(detail);
  return thrown;
}

/** A recognisable byte pattern: byte i of the file is a function of i and the seed. */
export function pattern(length: number, seed = 1, offset = 0): Buffer {
  const out = Buffer.allocUnsafe(length);
  for (let i = 0; i < length; i++) {
    const x = offset + i;
    out[i] = (Math.imul(x ^ (x >>> 11), 2654435761) + seed * 131 + (x >>> 12) * 7) & 0xff;
  }
  return out;
}

/** Words for the text-like stretches of `mixedCompressible`: lz4 finds their repeats. */
const mixedWords = ["grove ", "extent ", "block ", "the ", "of ", "tree ", "commit ", "lz4 ", "a ", "snapshot "];

/**
 * Bytes lz4 shrinks about 2.7 times, unevenly: stretches of 64 bytes to 8 KiB,
 * each zeros, a short string repeated, words from a small dictionary, or
 * random bytes (one stretch in five), so that a short unit sometimes does
 * not save a block and stays raw. The same `seed` gives the same bytes.
 */
export function mixedCompressible(length: number, seed: number): Buffer {
  const prng = new Prng(seed);
  const out = Buffer.alloc(length);
  let at = 0;
  while (at < length) {
    const end = Math.min(length, at + prng.between(64, 8192));
    const kind = prng.below(10);
    if (kind < 2) {
      at = end;
    } else if (kind < 4) {
      const unit = prng.bytes(prng.between(1, 24));
      for (; at < end; at += unit.length) unit.copy(out, at, 0, Math.min(unit.length, end - at));
    } else if (kind < 8) {
      while (at < end) at += out.write(prng.pick(mixedWords), at, end - at, "latin1");
    } else {
      prng.bytes(end - at).copy(out, at);
      at = end;
    }
  }
  return out;
}

/** Writes the whole buffer at `position`, checking the count. */
export function writeAt(fs: GroveFs, fh: number, data: Buffer, position: number): void {
  expect(fs.write(fh, data, data.length, position)).toBe(data.length);
}

/** Reads `length` bytes at `position` (fewer at end of file). */
export function readAt(fs: GroveFs, fh: number, length: number, position = 0): Buffer {
  const out = Buffer.alloc(length);
  const n = fs.read(fh, out, length, position);
  return out.subarray(0, n);
}

/** The whole file at `path`, read through a fresh read-only handle in chunks. */
export function readFile(fs: FileSystemOps, path: string): Buffer {
  const fh = fs.open(path, O_RDONLY);
  try {
    const size = fs.fgetattr(fh).size;
    const out = Buffer.alloc(size);
    const chunk = 1024 * 1024;
    for (let at = 0; at < size; at += chunk) {
      const n = fs.read(fh, out.subarray(at), Math.min(chunk, size - at), at);
      expect(n).toBe(Math.min(chunk, size - at));
    }
    return out;
  } finally {
    fs.release(fh);
  }
}

/** Creates (or truncates) `path` and writes `data` to it. */
export function writeFile(fs: GroveFs, path: string, data: Buffer, caller: Caller = root): void {
  const fh = fs.create(path, 0o644, O_CREAT | O_WRONLY | O_TRUNC, caller);
  try {
    const chunk = 1024 * 1024;
    for (let at = 0; at < data.length; at += chunk) writeAt(fs, fh, data.subarray(at, at + chunk), at);
  } finally {
    fs.release(fh);
  }
}

export function usedBlocks(fs: GroveFs): number {
  return fs.space.usage().usedBlocks;
}

export const blockBytes = blockSizeBytes;

/** Byte equality without vitest's element-by-element deep compare (slow on megabytes); names the first difference. */
export function expectBytes(actual: Buffer, expected: Buffer, what = "bytes"): void {
  if (actual.equals(expected)) return;
  let i = 0;
  while (i < actual.length && i < expected.length && actual[i] === expected[i]) i++;
  throw new Error(
    `${what}: ${actual.length} bytes, expected ${expected.length}; first difference at offset ${i} ` +
      `(got ${actual[i]}, expected ${expected[i]})`,
  );
}

/**
 * The committed extent records of inode `ino` in a subvolume, read from the
 * image on `device` (give a copy, `device.reopen()`, if a volume is open on it:
 * this closes the device it reads).
 */
export function fileExtents(device: BlockDevice, ino: number, subvolumeId = 256): Extent[] {
  const { store } = openVolume(device, { readOnly: true, edges: fsEdges });
  try {
    const value = store.openTree(subvolumeId).get(inodeKey(ino));
    if (value === undefined) throw new Error(`inode ${ino} is not in subvolume ${subvolumeId}`);
    const inode = decodeInode(ino, value);
    const items: Array<[Buffer, Buffer]> = [];
    if (inode.kind === PayloadKind.Items) {
      for (const item of decodeItems(ino, inode.payload)) items.push([item.key, item.value]);
    } else if (inode.kind === PayloadKind.Tree) {
      const map = store.openDetachedTree(mapOwner(subvolumeId, ino), { rootLba: inode.treeRoot, level: inode.treeLevel, count: inode.treeCount });
      for (const [key, value] of map.range()) items.push([Buffer.from(key), Buffer.from(value)]);
    }
    return items.map(([key, value]) => decodeExtent(ino, key, value));
  } finally {
    store.close();
  }
}

/** An FsHarness over a volume formatted with `compression` as its default (mkfs --compress). */
export function compressedHarness(
  compression: NonNullable<GroveFsOptions["compression"]> = "lz4",
  blocks = 16384,
  options: GroveFsOptions = {},
  metadata: "single" | "dup" | undefined = testMetadata,
): FsHarness {
  const h = new FsHarness(blocks, options);
  h.fs.close();
  const device = new SimDevice(blocks);
  GroveFs.format(device, { clock: h.clock, compression, metadata });
  h.device = device.reopen();
  h.fs = GroveFs.open(h.device, h.options);
  return h;
}

const logWords = ["grove", "block", "extent", "snapshot", "tree", "leaf", "commit", "crc"];

/** Log-like text that lz4 shrinks about 3.5 times (a 128 KiB unit takes 9 blocks), different for each seed. */
export function compressibleBytes(length: number, seed = 1): Buffer {
  const prng = new Prng(seed);
  const lines: string[] = [];
  let bytes = 0;
  for (let line = seed * 100_000; bytes < length; line++) {
    const text = `line ${line} ${prng.pick(logWords)} ${prng.pick(logWords)} ok\n`;
    lines.push(text);
    bytes += text.length;
  }
  return Buffer.from(lines.join(""), "latin1").subarray(0, length);
}

/** Seeded random bytes: lz4 cannot shrink them. */
export function randomBytes(length: number, seed = 1): Buffer {
  return new Prng(seed ^ 0x5eed).bytes(length);
}

/** How compressed data lies on a committed volume: what a compression test shows it exercised. */
export interface CompressionCensus {
  /** Distinct compressed extents reachable. */
  extents: number;
  /**
   * Records naming them, one per leaf that holds one (a node shared by
   * snapshots is walked once): without snapshots, more than `extents` once
   * overwrites inside a unit have cut it in two.
   */
  records: number;
  /** Records holding only part of their unit (cut by an overwrite or a truncate). */
  slices: number;
  /** Distinct uncompressed extents, for contrast. */
  rawExtents: number;
}

/**
 * Counts the compressed extents and their records on the committed volume on
 * `device`, from a walk of the forest. Not for a volume with deletions
 * pending: their trees are walked whole, freed blocks included.
 */
export function compressionCensus(device: BlockDevice): CompressionCensus {
  const census: CompressionCensus = { extents: 0, records: 0, slices: 0, rawExtents: 0 };
  const seen = new Set<number>();
  const count = (ino: number, key: Buffer, value: Buffer): void => {
    const extent = decodeExtent(ino, key, value);
    const first = !seen.has(extent.extentLba);
    seen.add(extent.extentLba);
    if (extent.compression === Compression.None) {
      if (first) census.rawExtents++;
      return;
    }
    if (first) census.extents++;
    census.records++;
    if (extent.blocks < extent.unitBlocks) census.slices++;
  };
  const report = checkForest(device, (treeId, key, value, edges) => {
    fsEdges(treeId, key, value, edges);
    // The records fsEdges reads extents from: an extent map's items, or the inline items of a file's inode.
    if (treeId >= 2 ** 32) {
      if (value.length !== direntValueBytes) count(treeId % 2 ** 32, key, value);
      return;
    }
    if (treeId < 256 || key.length !== 8) return;
    const ino = Number(key.readBigUInt64BE(0));
    if (ino === 0) return;
    const inode = decodeInode(ino, value);
    if (inode.kind !== PayloadKind.Items || (inode.mode & C.S_IFMT) === C.S_IFDIR) return;
    for (const item of decodeItems(ino, inode.payload)) count(ino, item.key, item.value);
  });
  if (report.problems.length > 0) throw new Error(`compressionCensus: the walk found problems:\n${report.problems.slice(0, 5).join("\n")}`);
  expect(census.extents).toBe(report.compressed.extents);
  return census;
}

/** Every regular file of a volume, keyed `SUBVOLUME_ID:INO`: its paths and the sha256 of its bytes. */
export type FileInventory = Map<string, { paths: Set<string>; sha: string }>;

/**
 * The inventory of every subvolume, by id rather than name (a salvaged
 * subvolume table renames a subvolume whose record it lost). `open` opens the
 * volume read-only, serving `subvolume` (the default one when undefined).
 */
export function fileInventory(open: (subvolume?: string) => GroveFs): FileInventory {
  const files: FileInventory = new Map();
  const walk = (id: number, g: FileSystemOps, dir: string): void => {
    for (const entry of g.readdir(dir)) {
      if (entry.name === "." || entry.name === "..") continue;
      const p = dir === "/" ? `/${entry.name}` : `${dir}/${entry.name}`;
      const st = g.getattr(p);
      if ((st.mode & C.S_IFMT) === C.S_IFDIR) walk(id, g, p);
      else if ((st.mode & C.S_IFMT) === C.S_IFREG) {
        const key = `${id}:${st.ino}`;
        const known = files.get(key);
        if (known !== undefined) known.paths.add(p);
        else files.set(key, { paths: new Set([p]), sha: createHash("sha256").update(readFile(g, p)).digest("hex") });
      }
    }
  };
  const g = open();
  try {
    for (const sub of g.listSubvolumes()) {
      if (sub.id === g.subvolumeId) walk(sub.id, g, "/");
      else if (sub.readOnly) walk(sub.id, g.snapshotView(sub.name), "/");
      else {
        const other = open(sub.name);
        try {
          walk(sub.id, other, "/");
        } finally {
          other.close();
        }
      }
    }
  } finally {
    g.close();
  }
  return files;
}
