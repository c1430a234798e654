/**
 * Transparent lz4 compression of file data (issue 5) through the library:
 * round trips at every unit and block boundary for compressible, random and
 * mixed data, checked against an in-memory model before and after write-out
 * and after a reopen; the space compression saves and the counters that
 * report it; the volume default and the per-open override; compressed
 * extents shared by snapshots and clones; and space given back by truncate
 * and unlink. Every test ends with the full checker, which decompresses
 * every compressed extent.
 */
import { describe, expect, it } from "vitest";
import { Prng, blockSizeBytes, featureCompressLz4, readSuperblock } from "../kvstore/index.js";
import { GroveFs, compressionUnitBlocksMax, type FileSystemOps } from "../fs/index.js";
import { Compression, type Extent, PayloadKind, decodeInode, inodeKey } from "../fs/format.js";
import { fsEdges } from "../fs/edges.js";
import { openVolume } from "../snapshot/index.js";
import { DecompressedCache } from "../fs/compression.js";
import { seeds, withSeed } from "./helpers.js";
import {
  FsHarness,
  O_CREAT,
  O_RDONLY,
  O_RDWR,
  compressedHarness,
  compressibleBytes,
  expectBytes,
  expectFsClean,
  fileExtents,
  randomBytes,
  readAt,
  readFile,
  root,
  writeAt,
  writeFile,
} from "./fs_helpers.js";

const testFile = "test/compress.test.ts";
const KiB = 1024;
const MiB = 1024 * KiB;
/** One compression unit: 128 KiB. */
const U = compressionUnitBlocksMax * blockSizeBytes;
const B = blockSizeBytes;

type Kind = "compressible" | "incompressible" | "mixed 4 KiB" | "mixed 64 KiB";
const kinds: Kind[] = ["compressible", "incompressible", "mixed 4 KiB", "mixed 64 KiB"];

/** Alternating compressible and random stretches of `stretch` bytes. */
function mixedBytes(length: number, seed: number, stretch: number): Buffer {
  const out = Buffer.allocUnsafe(length);
  for (let at = 0, k = 0; at < length; at += stretch, k++) {
    const n = Math.min(stretch, length - at);
    (k % 2 === 0 ? compressibleBytes(n, seed * 31 + k) : randomBytes(n, seed * 31 + k)).copy(out, at);
  }
  return out;
}

function bytesOf(kind: Kind, length: number, seed: number): Buffer {
  switch (kind) {
    case "compressible":
      return compressibleBytes(length, seed);
    case "incompressible":
      return randomBytes(length, seed);
    case "mixed 4 KiB":
      return mixedBytes(length, seed, 4 * KiB);
    case "mixed 64 KiB":
      return mixedBytes(length, seed, 64 * KiB);
  }
}

/** Files as they should read: written through the filesystem and into the model alike. */
class Model {
  readonly files = new Map<string, Buffer>();

  constructor(private readonly h: FsHarness) {}

  write(path: string, data: Buffer, at: number): void {
    const fs = this.h.fs;
    const fh = fs.create(path, 0o644, O_CREAT | O_RDWR, root);
    writeAt(fs, fh, data, at);
    fs.release(fh);
    const old = this.files.get(path) ?? Buffer.alloc(0);
    const next = Buffer.alloc(Math.max(old.length, at + data.length));
    old.copy(next);
    data.copy(next, at);
    this.files.set(path, next);
  }

  truncate(path: string, size: number): void {
    this.h.fs.truncate(path, size);
    const old = this.files.get(path)!;
    const next = Buffer.alloc(size);
    old.copy(next, 0, 0, Math.min(size, old.length));
    this.files.set(path, next);
  }

  unlink(path: string): void {
    this.h.fs.unlink(path);
    this.files.delete(path);
  }

  verify(what: string): void {
    verifyFiles(this.h.fs, this.files, what);
  }
}

/** Every file, whole and in ranges around each block and unit boundary, through one handle. */
function verifyFiles(fs: FileSystemOps, files: ReadonlyMap<string, Buffer>, what: string): void {
  for (const [path, data] of files) {
    const where = `${what}: ${path}`;
    expect(fs.getattr(path).size, where).toBe(data.length);
    expectBytes(readFile(fs, path), data, where);
    const fh = fs.open(path, O_RDONLY);
    try {
      const units = Math.ceil(data.length / U) + 1;
      for (let k = 0; k <= units; k++) {
        for (const d of [-B - 1, -B, -1, 0, 1, B - 1]) {
          const at = k * U + d;
          if (at < 0) continue;
          for (const length of [1, 3, B + 1]) expectRange(fs, fh, data, at, length, where);
        }
        if (k * U > 0) expectRange(fs, fh, data, k * U - 1, U + 2, where);
      }
      expectRange(fs, fh, data, Math.max(0, data.length - 3), 10, where);
    } finally {
      fs.release(fh);
    }
  }
}

/** `length` bytes at `at` read what the model holds there (fewer, or none, at the end of the file). */
function expectRange(fs: FileSystemOps, fh: number, data: Buffer, at: number, length: number, where: string): void {
  const expected = data.subarray(Math.min(at, data.length), Math.min(at + length, data.length));
  const out = Buffer.alloc(length);
  const n = fs.read(fh, out, length, at);
  expectBytes(out.subarray(0, n), expected, `${where} [${at}, +${length})`);
}

function compressedExtents(h: FsHarness, path: string): Extent[] {
  const ino = h.fs.getattr(path).ino;
  return fileExtents(h.device.reopen(), ino, h.fs.subvolumeId).filter((e) => e.compression === Compression.Lz4);
}

/** How a file's extent records are held: inline in its inode (Items) or in an extent tree of their own (Tree). */
function mapKind(h: FsHarness, path: string): PayloadKind {
  const ino = h.fs.getattr(path).ino;
  const { store } = openVolume(h.device.reopen(), { readOnly: true, edges: fsEdges });
  try {
    return decodeInode(ino, store.openTree(h.fs.subvolumeId).get(inodeKey(ino))!).kind;
  } finally {
    store.close();
  }
}

/** The units (first file block) of a file that are stored compressed, whole or in slices. */
function compressedUnits(h: FsHarness, path: string): number[] {
  return [...new Set(compressedExtents(h, path).map((e) => (e.fileBlock - e.offset) / compressionUnitBlocksMax))];
}

/** Steps over two files that between them hit every boundary the write-out and read paths have. */
interface Step {
  name: string;
  run: (m: Model, bytes: (length: number) => Buffer, compressible: (length: number) => Buffer, random: (length: number) => Buffer) => void;
  /** What must be stored compressed once written out, whatever the kind of data. */
  after?: (h: FsHarness) => void;
  /** With compressible data: /f's file blocks that must lie in slices of compressed extents once written out (a partial overwrite cut them). */
  sliced?: number[];
}

const steps: Step[] = [
  { name: "a write within one unit", run: (m, bytes) => m.write("/f", bytes(5000), 1000) },
  { name: "exactly one unit", run: (m, bytes) => m.write("/f", bytes(U), U) },
  { name: "across unit boundaries", run: (m, bytes) => m.write("/f", bytes(2 * U + 6000), U - 3000) },
  {
    name: "unaligned offsets and sizes",
    run: (m, bytes) => {
      m.write("/f", bytes(1), 7);
      m.write("/f", bytes(4095), 3 * 4095);
      m.write("/f", bytes(4097), U + 4097);
      m.write("/f", bytes(131071), 2 * U + 1);
      m.write("/f", bytes(131073), 4 * U - 1);
    },
  },
  { name: "1 byte in the middle of a unit", run: (m, bytes) => m.write("/f", bytes(1), U + U / 2 + 3), sliced: [47, 49] },
  { name: "the first block of a unit", run: (m, bytes) => m.write("/f", bytes(B), 2 * U), sliced: [65] },
  { name: "the last block of a unit", run: (m, bytes) => m.write("/f", bytes(B), 2 * U - B), sliced: [62] },
  // Unit 3 holds no compressed extent by now (see "unaligned offsets and sizes"): only unit 2 is cut.
  { name: "a range spanning two units", run: (m, bytes) => m.write("/f", bytes(20000), 3 * U - 10000), sliced: [92] },
  {
    name: "random over compressible",
    run: (m, _bytes, compressible, random) => {
      m.write("/f", compressible(U), 4 * U);
      m.write("/f", random(U), 4 * U);
      m.write("/f", random(50000), 2 * U + 777);
    },
    after: (h) => expect(compressedUnits(h, "/f")).not.toContain(4),
  },
  {
    name: "compressible over random",
    run: (m, _bytes, compressible, random) => {
      m.write("/f", random(U), 5 * U);
      m.write("/f", compressible(U + 5000), U - 2500);
      m.write("/f", compressible(U), 5 * U);
    },
    after: (h) => {
      expect(compressedUnits(h, "/f")).toContain(1);
      expect(compressedUnits(h, "/f")).toContain(5);
      expect(compressedUnits(h, "/f")).not.toContain(4);
    },
  },
  { name: "extending past the end", run: (m, bytes) => m.write("/f", bytes(70000), m.files.get("/f")!.length + 12345) },
  { name: "truncate into the middle of a unit", run: (m) => m.truncate("/f", 2 * U + 12345) },
  { name: "grow again (zeros)", run: (m) => m.truncate("/f", 4 * U + 100) },
  { name: "write after growing", run: (m, bytes) => m.write("/f", bytes(300), 3 * U - 150) },
  {
    name: "truncate at a block boundary inside a unit, then grow by writing",
    run: (m, bytes) => {
      m.truncate("/f", U + 2 * B);
      m.write("/f", bytes(10), 2 * U + 5);
    },
  },
  { name: "a sparse file: 64 KiB at 1 MiB", run: (m, bytes) => m.write("/s", bytes(64 * KiB), MiB) },
  { name: "fill before the data", run: (m, bytes) => m.write("/s", bytes(100000), 0) },
  { name: "fill after the data", run: (m, bytes) => m.write("/s", bytes(20000), MiB + 64 * KiB + 5000) },
  { name: "fill the middle of the hole", run: (m, bytes) => m.write("/s", bytes(300000), 500000) },
  { name: "fill what is left of the hole", run: (m, bytes) => m.write("/s", bytes(MiB - 100000), 100000) },
];

describe("lz4 round trips", () => {
  it.each(kinds)("%s data reads back at every boundary, buffered, written out and reopened", (kind) => {
    const h = compressedHarness("lz4");
    const m = new Model(h);
    let seed = 1;
    const bytes = (length: number): Buffer => bytesOf(kind, length, seed++);
    const compressible = (length: number): Buffer => compressibleBytes(length, seed++);
    const random = (length: number): Buffer => randomBytes(length, seed++);
    for (const [i, step] of steps.entries()) {
      step.run(m, bytes, compressible, random);
      m.verify(`${kind}, ${step.name} (buffered)`);
      h.fs.sync();
      m.verify(`${kind}, ${step.name} (written out)`);
      step.after?.(h);
      if (kind === "compressible") {
        const records = compressedExtents(h, "/f");
        for (const block of step.sliced ?? []) {
          const record = records.find((e) => e.fileBlock <= block && block < e.fileBlock + e.blocks);
          expect(record !== undefined && record.blocks < record.unitBlocks, `${step.name}: file block ${block} in a slice`).toBe(true);
        }
      }
      if (i % 3 === 2) {
        h.reopen();
        m.verify(`${kind}, ${step.name} (reopened)`);
      }
    }
    h.reopen();
    m.verify(`${kind}, at the end (reopened)`);
    // Unit 1 was last written whole with compressible data; a 2-block slice of it is left.
    expect(compressedUnits(h, "/f")).toContain(1);
    if (kind === "compressible") expect(compressedUnits(h, "/f")).toContain(0);
    const info = h.fs.info();
    expect(info.compressed.extents).toBeGreaterThan(0);
    expect(info.logicalUsedBytes).toBe(info.usedBytes + info.compressed.logicalBytes - info.compressed.diskBytes);
    if (kind === "compressible") expect(compressedExtents(h, "/s").length).toBeGreaterThanOrEqual(8);
    h.closeAndCheck();
  });

  it.each(seeds([1, 2, 3]))("random writes, truncates, snapshots, syncs and reopens match the model (seed %i)", (seed) => {
    withSeed(seed, testFile, () => {
      const prng = new Prng(seed);
      const h = compressedHarness("lz4");
      h.fs.sync();
      const baseline = h.fs.statfs().usedBlocks!;
      const m = new Model(h);
      const snapshots = new Map<string, Map<string, Buffer>>();
      const paths = ["/a", "/b", "/c"];
      const lengths = [1, 2, B - 1, B, B + 1, 2 * B, U - 1, U, U + 1, 2 * U + 3];
      let dataSeed = seed * 1000;
      let syncs = 0;
      let mostCompressed = 0;
      for (let op = 0; op < 300; op++) {
        const path = prng.pick(paths);
        const roll = prng.below(100);
        if (roll < 60) {
          const kind = prng.pick(kinds);
          const length = prng.chance(0.5) ? prng.pick(lengths) : prng.between(1, 300_000);
          const at = prng.chance(0.5) ? prng.below(24) * U + prng.pick([-B, -1, 0, 1, B]) : prng.below(3 * MiB);
          m.write(path, bytesOf(kind, length, dataSeed++), Math.max(0, at));
        } else if (roll < 68 && m.files.has(path)) {
          const size = m.files.get(path)!.length;
          m.truncate(path, prng.chance(0.7) ? prng.below(size + 1) : prng.below(3 * MiB));
        } else if (roll < 71 && m.files.has(path)) {
          m.unlink(path);
        } else if (roll < 75 && snapshots.size < 4) {
          const name = `s${op}`;
          h.fs.createSubvolume(name, { readOnly: true });
          snapshots.set(name, new Map([...m.files].map(([p, data]) => [p, Buffer.from(data)])));
        } else if (roll < 78 && snapshots.size > 0) {
          const name = prng.pick([...snapshots.keys()]);
          h.fs.deleteSubvolume(name);
          snapshots.delete(name);
          if (prng.chance(0.5)) h.fs.finishDeletions();
        } else if (roll < 88) {
          h.fs.sync();
          // The checker compares the superblock's counters with a walk (deletions pending would walk freed trees).
          if (++syncs % 4 === 0 && h.fs.pendingDeletions() === 0) expectFsClean(h.device.reopen());
          mostCompressed = Math.max(mostCompressed, h.fs.info().compressed.extents);
        } else if (roll < 93) {
          h.reopen();
        } else {
          m.verify(`op ${op}`);
          if (snapshots.size > 0) {
            const name = prng.pick([...snapshots.keys()]);
            verifyFiles(h.fs.snapshotView(name), snapshots.get(name)!, `op ${op}, snapshot ${name}`);
          }
        }
        if (op % 50 === 49) m.verify(`op ${op}`);
      }
      m.verify("the end");
      h.reopen();
      m.verify("the end (reopened)");
      for (const [name, files] of snapshots) verifyFiles(h.fs.snapshotView(name), files, `the end, snapshot ${name}`);
      expect(mostCompressed).toBeGreaterThan(0);
      h.fs.finishDeletions();
      h.fs.sync();
      expectFsClean(h.device.reopen());
      // Everything deleted: no compressed extent is left, and the space is back.
      for (const name of snapshots.keys()) h.fs.deleteSubvolume(name);
      h.fs.finishDeletions();
      for (const p of [...m.files.keys()]) m.unlink(p);
      h.fs.sync();
      expect(h.fs.info().compressed).toEqual({ extents: 0, diskBytes: 0, logicalBytes: 0 });
      expect(h.fs.statfs().usedBlocks).toBe(baseline);
      h.closeAndCheck();
    });
  });
});

describe("lz4 space", () => {
  /** Blocks a 4 MiB compressible file adds on a fresh volume formatted with `compression`. */
  function blocksFor(compression: "lz4" | "none"): { h: FsHarness; blocks: number } {
    const h = compressedHarness(compression);
    h.fs.sync();
    const before = h.fs.statfs().usedBlocks!;
    writeFile(h.fs, "/big", compressibleBytes(4 * MiB, 7));
    h.fs.sync();
    return { h, blocks: h.fs.statfs().usedBlocks! - before };
  }

  it("a compressible file takes far fewer blocks with lz4, and the counters say how many", () => {
    const plain = blocksFor("none");
    const packed = blocksFor("lz4");
    expect(plain.blocks).toBeGreaterThanOrEqual(1024);
    expect(packed.blocks * 3).toBeLessThan(plain.blocks);
    const info = packed.h.fs.info();
    expect(info.compression).toBe("lz4");
    expect(info.compressionInUse).toBe("lz4");
    expect(info.compressed.extents).toBe(32);
    expect(info.compressed.logicalBytes).toBe(4 * MiB);
    const diskBlocks = compressedExtents(packed.h, "/big").reduce((sum, e) => sum + e.extentBlocks, 0);
    expect(info.compressed.diskBytes).toBe(diskBlocks * B);
    expect(info.logicalUsedBytes).toBeGreaterThan(info.usedBytes);
    expect(info.logicalUsedBytes - info.usedBytes).toBe(4 * MiB - diskBlocks * B);
    const statfs = packed.h.fs.statfs();
    expect(statfs.logicalUsedBlocks! - statfs.usedBlocks!).toBe(1024 - diskBlocks);
    // st_blocks counts the file's logical blocks (as du shows them on btrfs).
    expect(packed.h.fs.getattr("/big").blocks).toBe(plain.h.fs.getattr("/big").blocks);
    expectBytes(readFile(packed.h.fs, "/big"), compressibleBytes(4 * MiB, 7));
    const plainInfo = plain.h.fs.info();
    expect(plainInfo.compressed).toEqual({ extents: 0, diskBytes: 0, logicalBytes: 0 });
    expect(plainInfo.logicalUsedBytes).toBe(plainInfo.usedBytes);
    plain.h.closeAndCheck();
    packed.h.closeAndCheck();
  });

  it("random data is stored raw", () => {
    const h = compressedHarness("lz4");
    h.fs.sync();
    const before = h.fs.statfs().usedBlocks!;
    writeFile(h.fs, "/random", randomBytes(2 * MiB, 3));
    h.fs.sync();
    expect(h.fs.statfs().usedBlocks! - before).toBeGreaterThanOrEqual(512);
    expect(h.fs.info().compressed.extents).toBe(0);
    expect(compressedExtents(h, "/random")).toEqual([]);
    h.reopen();
    expectBytes(readFile(h.fs, "/random"), randomBytes(2 * MiB, 3));
    h.closeAndCheck();
  });

  it("a volume formatted without compression has none, and no lz4 feature bit", () => {
    const h = compressedHarness("none");
    const info = h.fs.info();
    expect(info.compression).toBe("none");
    expect(info.compressionInUse).toBe("none");
    writeFile(h.fs, "/text", compressibleBytes(MiB, 2));
    h.fs.sync();
    expect(h.fs.info().compressed.extents).toBe(0);
    expect(compressedExtents(h, "/text")).toEqual([]);
    expect(h.fs.store.hasFeature(featureCompressLz4)).toBe(false);
    expect(readSuperblock(h.device.reopen()).features & featureCompressLz4).toBe(0n);
    h.closeAndCheck();
  });

  it("an lz4 volume opened with compression none writes raw, and lz4 again once reopened without it", () => {
    const h = compressedHarness("lz4");
    expect(readSuperblock(h.device.reopen()).features & featureCompressLz4).toBe(featureCompressLz4);
    writeFile(h.fs, "/a", compressibleBytes(MiB, 1));
    h.fs.sync();
    expect(h.fs.info().compressed.extents).toBe(8);
    h.reopen({ compression: "none" });
    expect(h.fs.info().compression).toBe("lz4");
    expect(h.fs.info().compressionInUse).toBe("none");
    writeFile(h.fs, "/b", compressibleBytes(MiB, 2));
    h.fs.sync();
    expect(h.fs.info().compressed.extents).toBe(8);
    expect(compressedExtents(h, "/b")).toEqual([]);
    expectBytes(readFile(h.fs, "/a"), compressibleBytes(MiB, 1));
    h.reopen();
    expect(h.fs.info().compressionInUse).toBe("lz4");
    writeFile(h.fs, "/c", compressibleBytes(MiB, 3));
    h.fs.sync();
    expect(h.fs.info().compressed.extents).toBe(16);
    expectBytes(readFile(h.fs, "/b"), compressibleBytes(MiB, 2));
    expectBytes(readFile(h.fs, "/c"), compressibleBytes(MiB, 3));
    h.closeAndCheck();
  });

  it("a plain volume opened with compression lz4 compresses, and the lz4 feature bit is set once it does", () => {
    const h = compressedHarness("none");
    h.reopen({ compression: "lz4" });
    expect(h.fs.info().compression).toBe("none");
    expect(h.fs.info().compressionInUse).toBe("lz4");
    writeFile(h.fs, "/random", randomBytes(MiB, 1));
    h.fs.sync();
    expect(h.fs.store.hasFeature(featureCompressLz4)).toBe(false);
    writeFile(h.fs, "/a", compressibleBytes(MiB, 1));
    h.fs.sync();
    expect(h.fs.info().compressed.extents).toBe(8);
    expect(h.fs.store.hasFeature(featureCompressLz4)).toBe(true);
    expect(readSuperblock(h.device.reopen()).features & featureCompressLz4).toBe(featureCompressLz4);
    h.reopen();
    expect(h.fs.info().compressionInUse).toBe("none");
    expect(h.fs.store.hasFeature(featureCompressLz4)).toBe(true);
    writeFile(h.fs, "/b", compressibleBytes(MiB, 2));
    h.fs.sync();
    expect(h.fs.info().compressed.extents).toBe(8);
    expectBytes(readFile(h.fs, "/a"), compressibleBytes(MiB, 1));
    expectBytes(readFile(h.fs, "/b"), compressibleBytes(MiB, 2));
    expectBytes(readFile(h.fs, "/random"), randomBytes(MiB, 1));
    h.closeAndCheck();
  });

  it("truncate and unlink give back the space and the counters", () => {
    const h = compressedHarness("lz4");
    h.fs.sync();
    const baseline = h.fs.statfs().usedBlocks!;
    const a = compressibleBytes(MiB, 1);
    writeFile(h.fs, "/a", a);
    writeFile(h.fs, "/b", mixedBytes(MiB, 2, 64 * KiB));
    h.fs.sync();
    const ofB = compressedExtents(h, "/b").length;
    expect(ofB).toBeGreaterThan(0);
    expect(h.fs.info().compressed.extents).toBe(8 + ofB);

    // Into the middle of unit 3: units 0-2 stay whole and unit 3 as a slice of its extent.
    h.fs.truncate("/a", 3 * U + 5000);
    h.fs.sync();
    const kept = compressedExtents(h, "/a");
    expect(kept.map((e) => [e.fileBlock, e.blocks])).toEqual([
      [0, 32],
      [32, 32],
      [64, 32],
      [96, 1],
    ]);
    expect(h.fs.info().compressed.extents).toBe(4 + ofB);
    const expected = Buffer.alloc(3 * U + 5000);
    a.copy(expected, 0, 0, expected.length);
    expectBytes(readFile(h.fs, "/a"), expected);

    h.fs.truncate("/a", 0);
    h.fs.sync();
    expect(h.fs.info().compressed.extents).toBe(ofB);
    // Unlinked while open: the extents stay until the last handle goes.
    const fh = h.fs.open("/b", O_RDONLY);
    h.fs.unlink("/b");
    h.fs.sync();
    expect(h.fs.info().compressed.extents).toBe(ofB);
    expectBytes(readAt(h.fs, fh, MiB, 0), mixedBytes(MiB, 2, 64 * KiB));
    h.fs.release(fh);
    h.fs.unlink("/a");
    h.fs.sync();
    const info = h.fs.info();
    expect(info.compressed).toEqual({ extents: 0, diskBytes: 0, logicalBytes: 0 });
    expect(info.logicalUsedBytes).toBe(info.usedBytes);
    expect(h.fs.statfs().usedBlocks).toBe(baseline);
    h.closeAndCheck();
  });

  it("a compressed file unlinked while open is freed, counters and all, by the mount after a crash", () => {
    const h = compressedHarness("lz4");
    h.fs.sync();
    const baseline = h.fs.statfs().usedBlocks!;
    for (const units of [4, 32]) writeFile(h.fs, `/f${units}`, compressibleBytes(units * U, units));
    const handles = [4, 32].map((units) => h.fs.open(`/f${units}`, O_RDONLY));
    h.fs.unlink("/f4");
    h.fs.unlink("/f32");
    h.fs.sync();
    expect(h.fs.info().orphans).toBe(2);
    expect(h.fs.info().compressed.extents).toBe(36);
    expectBytes(readAt(h.fs, handles[1]!, 32 * U, 0), compressibleBytes(32 * U, 32));
    h.crashAndReopen();
    expect(h.fs.info().orphans).toBe(0);
    expect(h.fs.info().compressed).toEqual({ extents: 0, diskBytes: 0, logicalBytes: 0 });
    h.fs.sync();
    expect(h.fs.statfs().usedBlocks).toBe(baseline);
    h.closeAndCheck();
  });

  it("a fragmented volume stores units that have no room in one piece raw", () => {
    // Fill a small volume with one-block files, free every other one, then take the runs left with a
    // random file: no two free blocks touch, and no unit's compressed extent finds room in one piece.
    // Single metadata: this builds a free space of no run of 9 blocks, and with dup each commit's second
    // copies (an eighth of the volume away) and the nodes they free reopen such runs behind the fillers.
    const h = compressedHarness("lz4", 2048, {}, "single");
    const block = randomBytes(B, 9);
    let files = 0;
    for (;; files++) {
      try {
        writeFile(h.fs, `/f${files}`, block);
        if (files % 64 === 63) h.fs.sync();
      } catch (error) {
        if ((error as { code?: string }).code !== "ENOSPC") throw error;
        break;
      }
    }
    for (let i = 0; i < files; i += 2) h.fs.unlink(`/f${i}`);
    h.fs.sync();
    // A commit frees the tree nodes it replaced, which can open a new run: fill again until none is
    // long enough to hold a compressed unit (a few rounds at most).
    const fillers: Buffer[] = [];
    for (let round = 0; round < 8; round++) {
      const runs = h.fs.space.targetExtents().filter((e) => e.length >= 2);
      if (round > 0 && runs.every((e) => e.length < 9)) break;
      expect(runs.length).toBeGreaterThan(0);
      const filler = randomBytes(runs.reduce((sum, e) => sum + e.length, 0) * B, 10 + round);
      writeFile(h.fs, `/filler${round}`, filler);
      fillers.push(filler);
      h.fs.sync();
    }
    expect(h.fs.space.targetExtents().every((e) => e.length < 9)).toBe(true);
    const text = compressibleBytes(256 * KiB, 4);
    writeFile(h.fs, "/text", text);
    h.fs.sync();
    const extents = fileExtents(h.device.reopen(), h.fs.getattr("/text").ino);
    expect(extents.filter((e) => e.compression !== Compression.None)).toEqual([]);
    expect(extents.reduce((sum, e) => sum + e.blocks, 0)).toBe(64);
    expect(extents.length).toBeGreaterThan(2);
    expect(h.fs.info().compressed.extents).toBe(0);
    expectBytes(readFile(h.fs, "/text"), text);
    h.reopen();
    expectBytes(readFile(h.fs, "/text"), text);
    fillers.forEach((filler, round) => expectBytes(readFile(h.fs, `/filler${round}`), filler));
    h.closeAndCheck();
  });
});

describe("lz4 with snapshots and clones", () => {
  // 4 units fit their records in the inode; 32 spill them into an extent tree, which the snapshot then shares.
  it.each([
    { units: 4, map: PayloadKind.Items },
    { units: 32, map: PayloadKind.Tree },
  ])("a snapshot keeps the compressed extents the live subvolume overwrites or deletes ($units units)", ({ units, map }) => {
    const h = compressedHarness("lz4");
    h.fs.sync();
    const baseline = h.fs.statfs().usedBlocks!;
    const m = new Model(h);
    m.write("/f", compressibleBytes(units * U, 1), 0);
    h.fs.sync();
    expect(mapKind(h, "/f")).toBe(map);
    const old = Buffer.from(m.files.get("/f")!);
    expect(h.fs.info().compressed.extents).toBe(units);
    h.fs.createSubvolume("snap", { readOnly: true });
    expect(h.fs.info().compressed.extents).toBe(units);

    // One block (raw), a whole compressible unit (compressed), two random blocks (raw).
    m.write("/f", Buffer.from("X"), U + 100);
    m.write("/f", compressibleBytes(U, 2), 2 * U);
    m.write("/f", randomBytes(2 * B, 3), 3 * U + B);
    h.fs.sync();
    expect(h.fs.info().compressed.extents).toBe(units + 1);
    m.verify("live after the overwrite");
    const snap = h.fs.snapshotView("snap");
    expectBytes(readFile(snap, "/f"), old, "the snapshot");
    expectFsClean(h.device.reopen());

    h.reopen();
    expectBytes(readFile(h.fs.snapshotView("snap"), "/f"), old, "the snapshot, reopened");
    m.verify("live, reopened");

    h.fs.unlink("/f");
    h.fs.sync();
    // Unit 2's new extent was the live subvolume's alone; the old ones are the snapshot's.
    expect(h.fs.info().compressed.extents).toBe(units);
    expectBytes(readFile(h.fs.snapshotView("snap"), "/f"), old, "the snapshot after the unlink");
    expectFsClean(h.device.reopen());

    h.fs.deleteSubvolume("snap");
    h.fs.finishDeletions();
    h.fs.sync();
    expect(h.fs.info().compressed).toEqual({ extents: 0, diskBytes: 0, logicalBytes: 0 });
    expect(h.fs.statfs().usedBlocks).toBe(baseline);
    h.closeAndCheck();
  });

  it("a clone's partial overwrites slice shared compressed extents without touching its source", () => {
    const h = compressedHarness("lz4");
    const original = compressibleBytes(4 * U, 5);
    writeFile(h.fs, "/f", original);
    h.fs.createSubvolume("clone", { readOnly: false });
    h.fs.close();
    h.device = h.device.reopen();
    h.fs = GroveFs.open(h.device, { ...h.options, subvolume: "clone" });
    const m = new Model(h);
    m.files.set("/f", Buffer.from(original));
    m.write("/f", Buffer.from("clone was here"), U + 5000);
    m.write("/f", randomBytes(B, 6), 3 * U - B);
    h.fs.sync();
    m.verify("the clone");
    // Each written unit is cut around its one new block into two slices of the shared extent.
    const slices = compressedExtents(h, "/f").map((e) => [e.fileBlock, e.offset, e.blocks]);
    expect(slices).toEqual([
      [0, 0, 32],
      [32, 0, 1],
      [34, 2, 30],
      [64, 0, 31],
      [96, 0, 32],
    ]);
    expect(h.fs.info().compressed.extents).toBe(4);
    h.reopen({ subvolume: "clone" });
    m.verify("the clone, reopened");
    h.fs.close();
    h.device = h.device.reopen();
    expectFsClean(h.device);
    h.fs = GroveFs.open(h.device, h.options);
    expectBytes(readFile(h.fs, "/f"), original, "the source");
    h.fs.deleteSubvolume("clone");
    h.fs.finishDeletions();
    expect(h.fs.info().compressed.extents).toBe(4);
    expectBytes(readFile(h.fs, "/f"), original, "the source after the clone is gone");
    h.closeAndCheck();
  });
});

describe("the decompressed-unit cache", () => {
  const extentAt = (lba: number, crc: number, compressedBytes = 9000, unitBlocks = 32): Extent => {
    const crcs = Buffer.alloc(12);
    crcs.writeUInt32LE(crc, 0);
    const blocks = 3;
    return { fileBlock: 0, extentLba: lba, extentBlocks: blocks, offset: 0, lba, blocks: unitBlocks, diskBlocks: blocks, compression: Compression.Lz4, unitBlocks, compressedBytes, crcs };
  };

  it("serves a unit only to a record of the same extent contents: freed blocks reused by another unit miss", () => {
    const cache = new DecompressedCache(2);
    const unit = compressibleBytes(U, 1);
    cache.put(extentAt(100, 1), unit);
    expect(cache.get(extentAt(100, 1))).toBe(unit);
    // A slice of the same extent (another file block, offset, length) shares the unit.
    expect(cache.get({ ...extentAt(100, 1), fileBlock: 40, offset: 8, blocks: 3 })).toBe(unit);
    expect(cache.get(extentAt(100, 2))).toBeUndefined();
    expect(cache.get(extentAt(100, 1, 9001))).toBeUndefined();
    expect(cache.get(extentAt(100, 1, 9000, 31))).toBeUndefined();
    expect(cache.get(extentAt(101, 1))).toBeUndefined();
  });

  it("keeps the most recently used units up to its capacity", () => {
    const cache = new DecompressedCache(2);
    const units = [1, 2, 3].map((seed) => compressibleBytes(2 * B, seed));
    cache.put(extentAt(100, 1), units[0]!);
    cache.put(extentAt(200, 2), units[1]!);
    expect(cache.get(extentAt(100, 1))).toBe(units[0]);
    cache.put(extentAt(300, 3), units[2]!);
    expect(cache.get(extentAt(200, 2))).toBeUndefined();
    expect(cache.get(extentAt(100, 1))).toBe(units[0]);
    expect(cache.get(extentAt(300, 3))).toBe(units[2]);
    cache.clear();
    expect(cache.get(extentAt(100, 1))).toBeUndefined();
  });
});

describe("lz4 small reads", () => {
  it("single bytes and short ranges anywhere in compressed units read right", () => {
    const h = compressedHarness("lz4");
    const m = new Model(h);
    m.write("/f", compressibleBytes(MiB, 8), 0);
    h.fs.sync();
    expect(compressedExtents(h, "/f")).toHaveLength(8);
    // A slice: unit 3 cut around a new block.
    m.write("/f", Buffer.from("middle"), 3 * U + U / 2);
    h.reopen();
    const data = m.files.get("/f")!;
    const check = (): void => {
      const fh = h.fs.open("/f", O_RDONLY);
      try {
        for (let at = 0; at < data.length; at += 997) expectRange(h.fs, fh, data, at, 1, "one byte");
        for (let at = data.length - 1; at >= 0; at -= 4099) expectRange(h.fs, fh, data, at, 1, "one byte, backwards");
        for (let b = 1; b < 2 * compressionUnitBlocksMax + 2; b++) {
          for (let length = 1; length <= 17; length += 4) expectRange(h.fs, fh, data, b * B - 8, length, "across a block boundary");
        }
        for (let k = 1; k < 8; k++) expectRange(h.fs, fh, data, k * U - 1, 2, "across a unit boundary");
        expectRange(h.fs, fh, data, data.length - 1, 100, "the last byte");
        expectRange(h.fs, fh, data, data.length, 100, "at the end");
      } finally {
        h.fs.release(fh);
      }
    };
    check();
    h.fs.sync();
    check();
    h.reopen();
    check();
    h.closeAndCheck();
  });
});
