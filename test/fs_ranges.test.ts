/**
 * Range operations on regular files (issue 11) through the library:
 * fallocate (preallocate, KEEP_SIZE, punch hole, zero range), SEEK_DATA /
 * SEEK_HOLE and copy_file_range as extent sharing. Each is checked against
 * a byte model at unaligned offsets, across extents, in holes and past the
 * end of file, before and after sync and reopen; with the space it takes
 * (statfs, info, st_blocks); with refusals that change nothing; with the
 * in-place first write into preallocated blocks (no new space on a nearly
 * full volume, copy on write once a snapshot shares them, crash-safe); and
 * with sharing across files, within one, from a snapshot and of lz4
 * extents. Every test that mutates a volume ends with the full checker.
 */
import { constants as C } from "node:fs";
import * as path from "node:path";
import { withDir } from "tmp-promise";
import { describe, expect, it } from "vitest";
import { FileDevice, GroveError, Prng, SimDevice, SimulatedCrash, blockSizeBytes, featurePreallocated, readSuperblock } from "../kvstore/index.js";
import { encodeSuperblock, slotForGeneration } from "../kvstore/superblock.js";
import { GroveFs, checkFilesystem, fileSizeMaxBytes, repairFilesystem } from "../fs/index.js";
import {
  Compression,
  type Extent,
  PayloadKind,
  decodeExtent,
  decodeInode,
  decodeItems,
  encodeExtent,
  encodeInode,
  encodeItems,
  extentKey,
  inodeKey,
  sliceExtent,
  unwrittenExtent,
} from "../fs/format.js";
import { fsEdges } from "../fs/edges.js";
import { openVolume } from "../snapshot/index.js";
import {
  holeRuns,
  seekIn,
  fallocCollapseRange,
  fallocInsertRange,
  fallocKeepSize,
  fallocNoHideStale,
  fallocPunchHole,
  fallocUnshareRange,
  fallocZeroRange,
} from "../fs/ranges.js";
import { seeds, withSeed } from "./helpers.js";
import {
  FsHarness,
  O_CREAT,
  O_RDWR,
  compressedHarness,
  compressibleBytes,
  compressionCensus,
  durableImage,
  expectBytes,
  expectErrno,
  expectFsClean,
  fileExtents,
  pattern,
  readFile,
  root,
  testClock,
  usedBlocks,
  writeAt,
  writeFile,
} from "./fs_helpers.js";

const testFile = "test/fs_ranges.test.ts";
const B = blockSizeBytes;
const KiB = 1024;
const MiB = 1024 * KiB;
const KEEP = fallocKeepSize;
const PUNCH = fallocPunchHole | fallocKeepSize;
const ZERO = fallocZeroRange;
const ZERO_KEEP = fallocZeroRange | fallocKeepSize;

interface DataCounters {
  blocksWrittenInPlace: number;
  inPlaceFallbacks: number;
}

/** FileData's in-place counters (tests only). */
function counters(fs: GroveFs): DataCounters {
  return (fs as unknown as { data: DataCounters }).data;
}

/** Creates `path` (empty) and returns its inode number. */
function touch(fs: GroveFs, path: string): number {
  fs.release(fs.create(path, 0o644, O_CREAT | O_RDWR, root));
  return fs.inoOf(path);
}

/** Writes `data` at `at` of an existing file. */
function put(fs: GroveFs, path: string, data: Buffer, at: number): void {
  const fh = fs.open(path, O_RDWR);
  try {
    for (let done = 0; done < data.length; done += MiB) writeAt(fs, fh, data.subarray(done, done + MiB), at + done);
  } finally {
    fs.release(fh);
  }
}

function stBlocks(fs: GroveFs, path: string): number {
  return fs.getattr(path).blocks / (B / 512);
}

/** The committed extents of inode `ino` (read from a copy of the device). */
function extentsOf(h: FsHarness, ino: number, subvolume = 256): Extent[] {
  return fileExtents(h.device.reopen(), ino, subvolume);
}

/** A file's bytes as a model: what each operation should leave. */
class Bytes {
  data: Buffer = Buffer.alloc(0);

  write(at: number, bytes: Buffer): void {
    this.grow(at + bytes.length);
    bytes.copy(this.data, at);
  }

  fallocate(mode: number, offset: number, length: number): void {
    const end = offset + length;
    if (mode === PUNCH || mode === ZERO || mode === ZERO_KEEP) this.data.fill(0, offset, Math.min(end, this.data.length));
    if (mode === 0 || mode === ZERO) this.grow(end);
  }

  truncate(size: number): void {
    const next = Buffer.alloc(size);
    this.data.copy(next, 0, 0, Math.min(size, this.data.length));
    this.data = next;
  }

  private grow(size: number): void {
    if (size > this.data.length) this.truncate(size);
  }
}

describe("fallocate: preallocation", () => {
  it("mode 0 preallocates the holes of an unaligned range: zeros, the size grows, data stays, st_blocks and statfs move by the holes", () => {
    const h = new FsHarness();
    const fs = h.fs;
    const ino = touch(fs, "/f");
    const data = pattern(3 * B, 1);
    put(fs, "/f", data, 0);
    fs.sync();
    const used = usedBlocks(fs);
    const free = fs.statfs().bfree;
    // [2B+100, 7B+100): blocks 2 … 7; block 2 holds data, 3 … 7 are holes.
    fs.fallocate(ino, 0, 2 * B + 100, 5 * B);
    const expected = Buffer.alloc(7 * B + 100);
    data.copy(expected);
    const check = (when: string): void => {
      expect(h.fs.getattr("/f").size, when).toBe(7 * B + 100);
      expectBytes(readFile(h.fs, "/f"), expected, when);
      expect(stBlocks(h.fs, "/f"), when).toBe(8);
    };
    check("after fallocate");
    // The five blocks are allocated now: df sees them, plus a little metadata.
    expect(usedBlocks(fs) - used).toBeGreaterThanOrEqual(5);
    expect(usedBlocks(fs) - used).toBeLessThanOrEqual(5 + 4);
    expect(free - fs.statfs().bfree).toBe(usedBlocks(fs) - used);
    fs.sync();
    check("after sync");
    const extents = extentsOf(h, ino);
    expect(extents.filter((e) => e.preallocatedIn !== undefined).reduce((n, e) => n + e.blocks, 0)).toBe(5);
    expect(extents.find((e) => e.preallocatedIn !== undefined)!.fileBlock).toBe(3);
    h.reopen();
    check("after reopen");
    h.closeAndCheck();
  });

  it("preallocating what holds data changes nothing but ctime; mode 0 inside the file keeps its size and mtime", () => {
    const h = new FsHarness();
    const fs = h.fs;
    const ino = touch(fs, "/f");
    put(fs, "/f", pattern(4 * B, 2), 0);
    fs.sync();
    const before = fs.getattr("/f");
    const used = usedBlocks(fs);
    fs.fallocate(ino, 0, 10, 3 * B);
    fs.fallocate(ino, KEEP, 0, 4 * B);
    const after = fs.getattr("/f");
    expect(after.size).toBe(4 * B);
    expect(after.blocks).toBe(before.blocks);
    expect(after.mtimeNs).toBe(before.mtimeNs);
    expect(after.ctimeNs).toBeGreaterThan(before.ctimeNs);
    expect(usedBlocks(fs)).toBeLessThanOrEqual(used + 2);
    expectBytes(readFile(fs, "/f"), pattern(4 * B, 2));
    h.closeAndCheck();
  });

  it("KEEP_SIZE preallocates past the end of file: the size stays, truncate up reveals zeros, truncate down drops it", () => {
    const h = new FsHarness();
    const fs = h.fs;
    const ino = touch(fs, "/f");
    put(fs, "/f", Buffer.from("hello"), 0);
    fs.sync();
    const used = usedBlocks(fs);
    fs.fallocate(ino, KEEP, 0, 4 * B);
    // The inline bytes move into block 0 (buffered), blocks 1 … 3 are preallocated.
    expect(fs.getattr("/f").size).toBe(5);
    expect(stBlocks(fs, "/f")).toBe(4);
    expect(readFile(fs, "/f").toString()).toBe("hello");
    fs.sync();
    expect(usedBlocks(fs) - used).toBeGreaterThanOrEqual(4);
    expect(stBlocks(fs, "/f")).toBe(4);
    h.reopen();
    expect(stBlocks(h.fs, "/f")).toBe(4);
    expect(readFile(h.fs, "/f").toString()).toBe("hello");
    h.fs.truncate("/f", 3 * B + 7);
    const grown = Buffer.alloc(3 * B + 7);
    grown.write("hello");
    expectBytes(readFile(h.fs, "/f"), grown);
    expect(stBlocks(h.fs, "/f")).toBe(4);
    // A write past the end into preallocated blocks: no new block counted.
    put(h.fs, "/f", pattern(100, 3), 3 * B + 50);
    expect(stBlocks(h.fs, "/f")).toBe(4);
    h.fs.truncate("/f", 3);
    expect(stBlocks(h.fs, "/f")).toBe(1);
    h.fs.sync();
    expect(stBlocks(h.fs, "/f")).toBe(1);
    expect(readFile(h.fs, "/f").toString()).toBe("hel");
    expect(usedBlocks(h.fs)).toBeLessThanOrEqual(used + 3);
    h.closeAndCheck();
  });

  it("preallocating a large range at once: many extents, one admitted step, all read as zeros", () => {
    const h = new FsHarness(16384);
    const fs = h.fs;
    const ino = touch(fs, "/f");
    put(fs, "/f", pattern(B, 4), 5 * MiB);
    fs.fallocate(ino, 0, 12345, 20 * MiB);
    expect(fs.getattr("/f").size).toBe(12345 + 20 * MiB);
    // Blocks 3 … 5123, the buffered one among them (blocks 0 … 2 lie before the range).
    expect(stBlocks(fs, "/f")).toBe(Math.ceil((12345 + 20 * MiB) / B) - 3);
    fs.sync();
    const extents = extentsOf(h, ino);
    expect(extents.length).toBeGreaterThan(40);
    const data = readFile(fs, "/f");
    expectBytes(data.subarray(5 * MiB, 5 * MiB + B), pattern(B, 4));
    data.fill(0, 5 * MiB, 5 * MiB + B);
    expect(data.every((x) => x === 0)).toBe(true);
    h.closeAndCheck();
  });
});

describe("fallocate: punch hole and zero range", () => {
  it("punch at unaligned offsets across two extents: zeros, partial blocks rewritten, whole blocks dropped; the extent goes with its last record", () => {
    const h = new FsHarness();
    const fs = h.fs;
    const ino = touch(fs, "/f");
    const model = new Bytes();
    const first = pattern(5 * B, 5);
    const second = pattern(5 * B, 6);
    put(fs, "/f", first, 0);
    model.write(0, first);
    fs.sync();
    put(fs, "/f", second, 5 * B);
    model.write(5 * B, second);
    fs.sync();
    expect(extentsOf(h, ino).length).toBe(2);
    const baseline = usedBlocks(fs);
    // [B+100, 7B+100): edge blocks 1 and 7 keep their other bytes, blocks 2 … 6 go.
    fs.fallocate(ino, PUNCH, B + 100, 6 * B);
    model.fallocate(PUNCH, B + 100, 6 * B);
    expectBytes(readFile(fs, "/f"), model.data, "after punch");
    expect(fs.getattr("/f").size).toBe(10 * B);
    expect(stBlocks(fs, "/f")).toBe(5);
    fs.sync();
    expectBytes(readFile(fs, "/f"), model.data, "after sync");
    expect(stBlocks(fs, "/f")).toBe(5);
    // Both physical extents are still referenced by the blocks left: nothing is freed (the edges were copied on write).
    expect(usedBlocks(fs)).toBeGreaterThanOrEqual(baseline);
    fs.fallocate(ino, PUNCH, 0, 10 * B);
    model.fallocate(PUNCH, 0, 10 * B);
    fs.sync();
    expectBytes(readFile(fs, "/f"), model.data, "all punched");
    expect(stBlocks(fs, "/f")).toBe(0);
    expect(usedBlocks(fs)).toBeLessThanOrEqual(baseline - 10 + 2);
    h.reopen();
    expectBytes(readFile(h.fs, "/f"), model.data, "after reopen");
    h.closeAndCheck();
  });

  it("punch inside one block, in a hole, past the end of file and of buffered data", () => {
    const h = new FsHarness();
    const fs = h.fs;
    const ino = touch(fs, "/f");
    const model = new Bytes();
    const data = pattern(3 * B + 500, 7);
    put(fs, "/f", data, 0);
    model.write(0, data);
    put(fs, "/f", pattern(B, 8), 20 * B);
    model.write(20 * B, pattern(B, 8));
    fs.sync();
    const ops: Array<[number, number]> = [
      [10, 20],
      [5 * B, 3 * B],
      [21 * B - 10, 5 * B],
      [30 * B, 2 * B],
      [2 * B + 1, B - 2],
    ];
    for (const [offset, length] of ops) {
      fs.fallocate(ino, PUNCH, offset, length);
      model.fallocate(PUNCH, offset, length);
      expectBytes(readFile(fs, "/f"), model.data, `punch ${offset}+${length}`);
    }
    // Buffered blocks: a punch drops or zeroes them before they are ever written out.
    put(fs, "/f", pattern(4 * B, 9), 8 * B + 7);
    model.write(8 * B + 7, pattern(4 * B, 9));
    fs.fallocate(ino, PUNCH, 8 * B + 100, 2 * B);
    model.fallocate(PUNCH, 8 * B + 100, 2 * B);
    expectBytes(readFile(fs, "/f"), model.data, "buffered");
    expect(fs.getattr("/f").size).toBe(model.data.length);
    fs.sync();
    expectBytes(readFile(fs, "/f"), model.data, "after sync");
    h.reopen();
    expectBytes(readFile(h.fs, "/f"), model.data, "after reopen");
    h.closeAndCheck();
  });

  it("zero range: zeros, whole blocks preallocated, the size grows without KEEP_SIZE only", () => {
    const h = new FsHarness();
    const fs = h.fs;
    const ino = touch(fs, "/f");
    const model = new Bytes();
    put(fs, "/f", pattern(4 * B, 10), 0);
    model.write(0, pattern(4 * B, 10));
    fs.sync();
    fs.fallocate(ino, ZERO, 100, 3 * B);
    model.fallocate(ZERO, 100, 3 * B);
    expectBytes(readFile(fs, "/f"), model.data, "inside");
    expect(fs.getattr("/f").size).toBe(4 * B);
    expect(stBlocks(fs, "/f")).toBe(4);
    fs.fallocate(ino, ZERO, 4 * B + 10, 2 * B);
    model.fallocate(ZERO, 4 * B + 10, 2 * B);
    expect(fs.getattr("/f").size).toBe(6 * B + 10);
    expect(stBlocks(fs, "/f")).toBe(7);
    fs.fallocate(ino, ZERO_KEEP, 6 * B + 10, 3 * B);
    model.fallocate(ZERO_KEEP, 6 * B + 10, 3 * B);
    expect(fs.getattr("/f").size).toBe(6 * B + 10);
    expect(stBlocks(fs, "/f")).toBe(10);
    expectBytes(readFile(fs, "/f"), model.data, "past the end");
    fs.sync();
    const unwritten = extentsOf(h, ino).filter((e) => e.preallocatedIn !== undefined);
    expect(unwritten.reduce((n, e) => n + e.blocks, 0)).toBe(2 + 6);
    h.reopen();
    expectBytes(readFile(h.fs, "/f"), model.data, "after reopen");
    expect(stBlocks(h.fs, "/f")).toBe(10);
    h.closeAndCheck();
  });

  it("zeroing preallocated blocks keeps them (no space needed); zeroing written or buffered ones replaces them", () => {
    const h = new FsHarness();
    const fs = h.fs;
    const ino = touch(fs, "/f");
    fs.fallocate(ino, KEEP, 0, 64 * B);
    put(fs, "/f", pattern(8 * B, 25), 16 * B);
    fs.sync();
    put(fs, "/f", pattern(2 * B, 26), 40 * B);
    const lbas = extentsOf(h, ino).map((e) => [e.fileBlock, e.extentLba]);
    const used = usedBlocks(fs);
    fs.fallocate(ino, ZERO_KEEP, 0, 15 * B);
    fs.fallocate(ino, ZERO_KEEP, 30 * B, 34 * B);
    expect(usedBlocks(fs)).toBe(used);
    expect(readFile(fs, "/f").subarray(40 * B, 42 * B).every((x) => x === 0)).toBe(true);
    fs.sync();
    expect(extentsOf(h, ino).map((e) => [e.fileBlock, e.extentLba])).toEqual(lbas);
    // Over written blocks: they are dropped and preallocated anew.
    fs.fallocate(ino, ZERO_KEEP, 16 * B, 8 * B);
    fs.sync();
    const zeroed = extentsOf(h, ino).filter((e) => e.fileBlock >= 16 && e.fileBlock < 24);
    expect(zeroed.every((e) => e.preallocatedIn !== undefined)).toBe(true);
    expect(stBlocks(fs, "/f")).toBe(64);
    expect(readFile(fs, "/f").length).toBe(42 * B);
    expect(readFile(fs, "/f").every((x) => x === 0)).toBe(true);
    h.closeAndCheck();
  });

  it("inline files: a punch zeroes bytes in the record; allocating or zeroing moves them to a block", () => {
    const h = new FsHarness();
    const fs = h.fs;
    const a = touch(fs, "/a");
    const b = touch(fs, "/b");
    put(fs, "/a", Buffer.from("0123456789abcdef"), 0);
    put(fs, "/b", Buffer.from("0123456789abcdef"), 0);
    fs.fallocate(a, PUNCH, 4, 8);
    expect(readFile(fs, "/a").toString("latin1")).toBe("0123\0\0\0\0\0\0\0\0cdef");
    expect(stBlocks(fs, "/a")).toBe(0);
    fs.fallocate(b, ZERO, 10, 100);
    expect(readFile(fs, "/b").toString("latin1")).toBe("0123456789" + "\0".repeat(100));
    expect(stBlocks(fs, "/b")).toBe(1);
    fs.sync();
    h.reopen();
    expect(readFile(h.fs, "/a").toString("latin1")).toBe("0123\0\0\0\0\0\0\0\0cdef");
    expect(readFile(h.fs, "/b").toString("latin1")).toBe("0123456789" + "\0".repeat(100));
    h.closeAndCheck();
  });
});

describe("fallocate: refusals", () => {
  it("unsupported modes are EOPNOTSUPP; bad ranges EINVAL; past the limit EFBIG; wrong file types EISDIR, ENODEV, ESPIPE; gone ENOENT; nothing changes", () => {
    const h = new FsHarness();
    const fs = h.fs;
    const ino = touch(fs, "/f");
    put(fs, "/f", pattern(3 * B, 11), 0);
    fs.mkdir("/d", 0o755, root);
    fs.symlink("/f", "/l", root);
    fs.mknod("/p", C.S_IFIFO | 0o644, 0, root);
    fs.mknod("/c", C.S_IFCHR | 0o644, 0x0501, root);
    fs.sync();
    const used = usedBlocks(fs);
    const st = fs.getattr("/f");
    const modes = [
      fallocPunchHole,
      fallocNoHideStale,
      fallocNoHideStale | fallocKeepSize,
      fallocCollapseRange,
      fallocInsertRange,
      fallocUnshareRange,
      fallocUnshareRange | fallocKeepSize,
      fallocZeroRange | fallocPunchHole,
      fallocZeroRange | fallocPunchHole | fallocKeepSize,
      fallocCollapseRange | fallocKeepSize,
      0x80,
      0x100,
      -1,
    ];
    for (const mode of modes) expectErrno(() => fs.fallocate(ino, mode, 0, B), "EOPNOTSUPP");
    for (const [offset, length] of [
      [0, 0],
      [0, -1],
      [-1, 10],
      [0.5, 10],
      [1, Number.MAX_SAFE_INTEGER],
    ]) {
      expectErrno(() => fs.fallocate(ino, 0, offset!, length!), "EINVAL");
    }
    expectErrno(() => fs.fallocate(ino, 0, fileSizeMaxBytes - 10, 11), "EFBIG");
    expectErrno(() => fs.fallocate(ino, PUNCH, fileSizeMaxBytes, 1), "EFBIG");
    expectErrno(() => fs.fallocate(ino, KEEP, 0, Number.MAX_SAFE_INTEGER), "EFBIG");
    expectErrno(() => fs.fallocate(fs.inoOf("/d"), 0, 0, B), "EISDIR");
    expectErrno(() => fs.fallocate(fs.inoOf("/l"), 0, 0, B), "ENODEV");
    expectErrno(() => fs.fallocate(fs.inoOf("/c"), 0, 0, B), "ENODEV");
    expectErrno(() => fs.fallocate(fs.inoOf("/p"), 0, 0, B), "ESPIPE");
    expectErrno(() => fs.fallocate(999_999, 0, 0, B), "ENOENT");
    // The last byte below the limit is fine.
    fs.fallocate(ino, PUNCH, fileSizeMaxBytes - 10, 10);
    expect(fs.getattr("/f")).toEqual({ ...st, ctimeNs: fs.getattr("/f").ctimeNs, mtimeNs: fs.getattr("/f").mtimeNs });
    expectBytes(readFile(fs, "/f"), pattern(3 * B, 11));
    fs.sync();
    expect(usedBlocks(fs)).toBeLessThanOrEqual(used + 2);
    h.fs.close();
    h.device = h.device.reopen();
    h.fs = GroveFs.open(h.device, { ...h.options, readOnly: true });
    expectErrno(() => h.fs.fallocate(ino, 0, 0, B), "EROFS");
    expectErrno(() => h.fs.fallocate(ino, PUNCH, 0, B), "EROFS");
    h.closeAndCheck();
  });

  it("ENOSPC up front on a small volume changes nothing; a preallocation that fits then succeeds", () => {
    const h = new FsHarness(1024);
    const fs = h.fs;
    const ino = touch(fs, "/f");
    put(fs, "/f", pattern(10 * B + 3, 12), 0);
    fs.sync();
    const used = usedBlocks(fs);
    const st = fs.getattr("/f");
    for (const mode of [0, KEEP, ZERO, ZERO_KEEP]) {
      expectErrno(() => fs.fallocate(ino, mode, 5, 8 * MiB), "ENOSPC");
      expect(fs.getattr("/f"), `mode ${mode}`).toEqual(st);
      expect(usedBlocks(fs)).toBe(used);
    }
    expectBytes(readFile(fs, "/f"), pattern(10 * B + 3, 12));
    fs.sync();
    expect(usedBlocks(fs)).toBe(used);
    fs.fallocate(ino, 0, 0, MiB);
    expect(fs.getattr("/f").size).toBe(MiB);
    h.closeAndCheck();
  });
});

describe("fallocate: writes into preallocated blocks", () => {
  it("first writes go in place, taking no new blocks; a second write of a block copies on write", () => {
    const h = new FsHarness();
    const fs = h.fs;
    const ino = touch(fs, "/f");
    fs.fallocate(ino, 0, 0, MiB);
    fs.sync();
    const preallocated = extentsOf(h, ino);
    expect(preallocated.every((e) => e.preallocatedIn !== undefined)).toBe(true);
    const lbas = new Set(preallocated.map((e) => e.extentLba));
    const used = usedBlocks(fs);
    const data = pattern(MiB - 3000, 13);
    put(fs, "/f", data, 1000);
    // Buffered writes into preallocated blocks do not count against free space a second time.
    expect(usedBlocks(fs)).toBe(used);
    expect(fs.statfs().usedBlocks).toBe(used);
    expect(fs.info().usedBytes).toBe(used * B);
    fs.sync();
    expect(counters(fs).blocksWrittenInPlace).toBe(256);
    expect(counters(fs).inPlaceFallbacks).toBe(0);
    expect(usedBlocks(fs)).toBeLessThanOrEqual(used + 2);
    const written = extentsOf(h, ino);
    expect(written.every((e) => e.preallocatedIn === undefined && lbas.has(e.extentLba))).toBe(true);
    expect(stBlocks(fs, "/f")).toBe(256);
    const expected = Buffer.alloc(MiB);
    data.copy(expected, 1000);
    expectBytes(readFile(fs, "/f"), expected);
    // Written now: an overwrite is copied on write, to new blocks.
    put(fs, "/f", pattern(B, 14), 8 * B);
    pattern(B, 14).copy(expected, 8 * B);
    fs.sync();
    expect(counters(fs).blocksWrittenInPlace).toBe(256);
    const moved = extentsOf(h, ino).find((e) => e.fileBlock === 8)!;
    expect(lbas.has(moved.extentLba)).toBe(false);
    h.reopen();
    expectBytes(readFile(h.fs, "/f"), expected);
    h.closeAndCheck();
  });

  it("writes in the middle of a preallocated extent cut it in three, and later writes into the pieces still go in place", () => {
    const h = new FsHarness();
    const fs = h.fs;
    const ino = touch(fs, "/f");
    fs.fallocate(ino, KEEP, 0, 128 * B);
    fs.sync();
    const model = new Bytes();
    const used = usedBlocks(fs);
    const writes: Array<[number, number]> = [
      [50 * B + 7, 3 * B],
      [10 * B, B],
      [100 * B, 20 * B],
      [0, 5],
      [127 * B, B],
      [53 * B + 100, 10],
    ];
    for (const [at, length] of writes) {
      put(fs, "/f", pattern(length, at), at);
      model.write(at, pattern(length, at));
      fs.sync();
      expectBytes(readFile(fs, "/f"), model.data, `write at ${at}`);
    }
    expect(counters(fs).inPlaceFallbacks).toBe(0);
    // The last write lands in a block written in place before: that one is copied on write.
    expect(counters(fs).blocksWrittenInPlace).toBe(4 + 1 + 20 + 1 + 1);
    expect(usedBlocks(fs)).toBeLessThanOrEqual(used + 1 + 4);
    expect(stBlocks(fs, "/f")).toBe(128);
    h.reopen();
    expectBytes(readFile(h.fs, "/f"), model.data, "after reopen");
    h.closeAndCheck();
  });

  it("on a nearly full volume a write into a preallocated range succeeds, where overwriting written data of that size cannot", () => {
    const h = new FsHarness(4096);
    const fs = h.fs;
    const p = touch(fs, "/p");
    fs.fallocate(p, KEEP, 0, 4 * MiB);
    writeFile(fs, "/w", pattern(4 * MiB, 15));
    fs.sync();
    let n = 0;
    for (;;) {
      try {
        writeFile(fs, `/fill${n}`, pattern(256 * KiB, 100 + n));
        n++;
      } catch (error) {
        if (!(error instanceof GroveError) || error.code !== "ENOSPC") throw error;
        break;
      }
    }
    fs.sync();
    // Make a little room: about 1 MiB, a quarter of what the ranges need.
    for (let k = 0; k < 4; k++) fs.unlink(`/fill${k}`);
    fs.sync();
    const free = fs.statfs().bfree;
    expect(free).toBeLessThan(512);
    expect(free).toBeGreaterThan(128);
    // One write of 4 MiB: overwriting written data needs new blocks for all of it (copy on write).
    const w = fs.open("/w", O_RDWR);
    expectErrno(() => fs.write(w, pattern(4 * MiB, 16), 4 * MiB, 0), "ENOSPC");
    fs.release(w);
    expectBytes(readFile(fs, "/w"), pattern(4 * MiB, 15));
    const data = pattern(4 * MiB, 17);
    const fh = fs.open("/p", O_RDWR);
    writeAt(fs, fh, data, 0);
    fs.release(fh);
    fs.sync();
    expect(counters(fs).blocksWrittenInPlace).toBe(1024);
    expect(counters(fs).inPlaceFallbacks).toBe(0);
    expectBytes(readFile(fs, "/p"), data);
    h.reopen();
    expectBytes(readFile(h.fs, "/p"), data);
    h.closeAndCheck();
  });

  it("after a snapshot or a clone, writes into preallocated blocks copy on write and the snapshot still reads zeros; a new preallocation goes in place again", () => {
    const h = new FsHarness();
    const fs = h.fs;
    const ino = touch(fs, "/f");
    fs.fallocate(ino, 0, 0, 64 * B);
    fs.sync();
    const [prealloc] = extentsOf(h, ino);
    fs.createSubvolume("snap", { readOnly: true });
    const data = pattern(10 * B, 18);
    put(fs, "/f", data, 5 * B);
    fs.sync();
    expect(counters(fs).blocksWrittenInPlace).toBe(0);
    expect(counters(fs).inPlaceFallbacks).toBe(0);
    const moved = extentsOf(h, ino).find((e) => e.fileBlock === 5)!;
    expect(moved.preallocatedIn).toBeUndefined();
    expect(moved.extentLba).not.toBe(prealloc!.extentLba);
    const expected = Buffer.alloc(64 * B);
    data.copy(expected, 5 * B);
    expectBytes(readFile(fs, "/f"), expected, "live");
    expectBytes(readFile(fs.snapshotView("snap"), "/f"), Buffer.alloc(64 * B), "snapshot");
    // A clone of the snapshot writes the same preallocated blocks: copied on write there too.
    fs.createSubvolume("clone", { from: "snap", readOnly: false });
    fs.close();
    h.device = h.device.reopen();
    const clone = GroveFs.open(h.device, { ...h.options, subvolume: "clone" });
    put(clone, "/f", pattern(3 * B, 19), 6 * B);
    clone.sync();
    expect(counters(clone).blocksWrittenInPlace).toBe(0);
    const cloned = Buffer.alloc(64 * B);
    pattern(3 * B, 19).copy(cloned, 6 * B);
    expectBytes(readFile(clone, "/f"), cloned, "clone");
    clone.close();
    h.device = h.device.reopen();
    h.fs = GroveFs.open(h.device, h.options);
    expectBytes(readFile(h.fs, "/f"), expected, "live after the clone wrote");
    expectBytes(readFile(h.fs.snapshotView("snap"), "/f"), Buffer.alloc(64 * B), "snapshot after the clone wrote");
    expectFsClean(h.device.reopen());
    // Preallocated after every snapshot: in place again.
    const g = touch(h.fs, "/g");
    h.fs.fallocate(g, 0, 0, 8 * B);
    h.fs.sync();
    put(h.fs, "/g", pattern(8 * B, 20), 0);
    h.fs.sync();
    expect(counters(h.fs).blocksWrittenInPlace).toBe(8);
    h.fs.deleteSubvolume("snap");
    h.fs.deleteSubvolume("clone");
    h.fs.finishDeletions();
    expectBytes(readFile(h.fs, "/f"), expected, "live after the deletions");
    h.closeAndCheck();
  });

  it("a copy of written preallocated blocks into another file makes the rest of that extent copy on write", () => {
    const h = new FsHarness();
    const fs = h.fs;
    const a = touch(fs, "/a");
    const b = touch(fs, "/b");
    fs.fallocate(a, 0, 0, 32 * B);
    put(fs, "/a", pattern(4 * B, 21), 0);
    fs.sync();
    expect(counters(fs).blocksWrittenInPlace).toBe(4);
    expect(fs.copyFileRange({ ino: a }, 0, b, 0, 4 * B)).toBe(4 * B);
    put(fs, "/a", pattern(4 * B, 22), 8 * B);
    fs.sync();
    expect(counters(fs).blocksWrittenInPlace).toBe(4);
    expect(counters(fs).inPlaceFallbacks).toBe(0);
    expectBytes(readFile(fs, "/b"), pattern(4 * B, 21));
    const expected = Buffer.alloc(32 * B);
    pattern(4 * B, 21).copy(expected);
    pattern(4 * B, 22).copy(expected, 8 * B);
    expectBytes(readFile(fs, "/a"), expected);
    h.closeAndCheck();
  });

  it("an lz4 volume writes preallocated ranges raw, in place", () => {
    const h = compressedHarness("lz4");
    const fs = h.fs;
    const ino = touch(fs, "/f");
    fs.fallocate(ino, 0, 0, 64 * B);
    fs.sync();
    const data = compressibleBytes(64 * B, 23);
    put(fs, "/f", data, 0);
    writeFile(fs, "/g", data);
    fs.sync();
    expect(counters(fs).blocksWrittenInPlace).toBe(64);
    expect(extentsOf(h, ino).every((e) => e.compression === Compression.None)).toBe(true);
    expect(extentsOf(h, fs.inoOf("/g")).some((e) => e.compression === Compression.Lz4)).toBe(true);
    expectBytes(readFile(fs, "/f"), data);
    h.closeAndCheck();
  });
});

describe("fallocate: crashes", () => {
  it("power loss anywhere in a preallocation or in the first write-out into it leaves the old or the new bytes and a clean checker", () => {
    const blocks = 4096;
    const clock = testClock();
    const device = new SimDevice(blocks);
    GroveFs.format(device, { clock });
    const base = device.snapshotLive();
    const data = pattern(300 * B + 123, 24);
    /** Preallocates, commits, writes into the range and commits, dying at device operation `crashAt`. */
    const run = (crashAt: number): { device: SimDevice; syncs: number } => {
      const disk = SimDevice.fromDurable(base, blocks);
      const fs = GroveFs.open(disk, { clock });
      disk.crashAtOperation = disk.operations + crashAt;
      let syncs = 0;
      try {
        const ino = touch(fs, "/f");
        fs.fallocate(ino, 0, 0, 400 * B);
        fs.sync();
        syncs++;
        put(fs, "/f", data, 50 * B);
        fs.sync();
        syncs++;
        fs.close();
      } catch (error) {
        if (!(error instanceof SimulatedCrash) && !disk.crashed) throw error;
      }
      return { device: disk, syncs };
    };
    const full = run(Number.POSITIVE_INFINITY);
    expect(full.syncs).toBe(2);
    const operations = full.device.operations;
    const expected = Buffer.alloc(400 * B);
    data.copy(expected, 50 * B);
    const points = new Set<number>();
    for (let k = 1; k < operations; k += Math.max(1, Math.floor(operations / 60))) points.add(k);
    // The last is the final flush: the commit's superblock is written but may not survive.
    for (let k = operations - 12; k <= operations; k++) if (k > 0) points.add(k);
    const seen = { none: 0, zeros: 0, data: 0 };
    for (const [point, fate] of [...points].flatMap((p) => (p >= operations - 12 ? [0, 1, 2, 3].map((f) => [p, f]) : [[p, 0]]))) {
      const crashed = run(point!);
      const prng = new Prng(point! * 7 + fate!);
      const recovered = crashed.device.recover(prng, { keepProbability: 0.4, tearProbability: 0.3 });
      expectFsClean(recovered.reopen());
      const fs = GroveFs.open(recovered, { clock });
      const names = fs.readdir("/").map((e) => e.name);
      if (names.includes("f")) {
        const bytes = readFile(fs, "/f");
        const zeros = bytes.equals(Buffer.alloc(400 * B));
        expect(zeros || bytes.equals(expected), `crash at ${point}: /f holds ${bytes.length} bytes, neither the old nor the new`).toBe(true);
        if (zeros) seen.zeros++;
        else seen.data++;
      } else {
        seen.none++;
      }
      fs.close();
      expectFsClean(recovered.reopen());
    }
    // Crashes before the first commit, between the two, and after the second all happened.
    expect(seen.none).toBeGreaterThan(0);
    expect(seen.zeros).toBeGreaterThan(5);
    expect(seen.data).toBeGreaterThan(0);
    expectFsClean(SimDevice.fromDurable(durableImage(full.device), blocks));
  });
});

/**
 * Which blocks of a file hold data, as SEEK_DATA sees them: written or
 * buffered blocks. Holes and preallocated blocks are not data.
 */
class DataBlocks {
  readonly blocks = new Set<number>();

  write(at: number, length: number): void {
    for (let b = Math.floor(at / B); b < Math.ceil((at + length) / B); b++) this.blocks.add(b);
  }

  fallocate(mode: number, offset: number, length: number): void {
    if (mode !== PUNCH && mode !== ZERO && mode !== ZERO_KEEP) return;
    // Whole blocks go; partial ones holding data are rewritten with zeros, and stay data.
    for (let b = Math.ceil(offset / B); b < Math.floor((offset + length) / B); b++) this.blocks.delete(b);
  }

  truncate(from: number, size: number): void {
    for (const b of [...this.blocks]) if (b >= Math.ceil(size / B)) this.blocks.delete(b);
    // Shrinking to inside a block buffers that block (to zero its tail), hole or not: it is data from then on.
    if (size < from && size % B !== 0) this.blocks.add(Math.floor(size / B));
  }

  /** SEEK_DATA / SEEK_HOLE as the model has it (one block at a time: the model is small). */
  seek(size: number, offset: number, whence: "data" | "hole"): number | "ENXIO" {
    if (offset >= size) return "ENXIO";
    for (let b = Math.floor(offset / B); b * B < size; b++) {
      if (this.blocks.has(b) === (whence === "data")) return Math.max(offset, b * B);
    }
    return whence === "data" ? "ENXIO" : size;
  }
}

describe("fallocate and lseek against a model", () => {
  const modes = [0, KEEP, PUNCH, ZERO, ZERO_KEEP];
  const steps = Number(process.env.GROVE_OPS ?? 160);

  for (const [seed, compression] of seeds([1, 2, 3, 4]).map((s) => [s, s % 4 === 0 ? "lz4" : "none"] as const)) {
    it(`seed ${seed} (${compression}): writes, fallocates, punches, zero ranges, copies and truncates match the model after each step, sync and reopen`, () => {
      withSeed(seed, testFile, () => {
        const h = compression === "lz4" ? compressedHarness("lz4", 16384) : new FsHarness(16384);
        const prng = new Prng(seed);
        const names = ["/a", "/b"];
        /** `exact`: the data blocks are known exactly (no copy has landed in the file, whose edges the model does not follow). */
        const models = new Map<string, { bytes: Bytes; data: DataBlocks; exact: boolean }>();
        for (const name of names) {
          touch(h.fs, name);
          // Never inline (a file that is all data): start past what fits in the record.
          const first = pattern(3 * B + prng.below(B), seed);
          put(h.fs, name, first, 0);
          const model = { bytes: new Bytes(), data: new DataBlocks(), exact: true };
          model.bytes.write(0, first);
          model.data.write(0, first.length);
          models.set(name, model);
        }
        const counts: Record<string, number> = {};
        /** Blocks written in place over the whole run (each reopen starts a new count). */
        let inPlace = 0;
        const reopen = (): void => {
          h.fs.sync();
          inPlace += counters(h.fs).blocksWrittenInPlace;
          expect(counters(h.fs).inPlaceFallbacks).toBe(0);
          h.reopen();
        };
        /** The last range each file had fallocated: writes aim there often, to write into preallocated blocks. */
        const lastRange = new Map<string, [number, number]>();
        const verify = (when: string): void => {
          for (const [name, model] of models) {
            const size = model.bytes.data.length;
            expect(h.fs.getattr(name).size, `${when}: ${name} size`).toBe(size);
            expectBytes(readFile(h.fs, name), model.bytes.data, `${when}: ${name}`);
            const ino = h.fs.inoOf(name);
            for (let k = 0; k < 4; k++) {
              const offset = prng.below(size + B);
              for (const whence of ["data", "hole"] as const) {
                const what = `${when}: ${name} SEEK_${whence.toUpperCase()} at ${offset}`;
                let got: number | string;
                try {
                  got = h.fs.lseek(ino, offset, whence);
                } catch (error) {
                  if (!(error instanceof GroveError) || error.code !== "ENXIO") throw error;
                  got = "ENXIO";
                }
                if (model.exact) expect(got, what).toBe(model.data.seek(size, offset, whence));
                // Whatever the model knows: what SEEK_DATA skips and the hole SEEK_HOLE finds read as zeros.
                const zeros = (from: number, to: number): boolean => model.bytes.data.subarray(from, to).every((x) => x === 0);
                if (offset >= size) expect(got, what).toBe("ENXIO");
                else if (whence === "data") expect(got === "ENXIO" ? zeros(offset, size) : (got as number) >= offset && zeros(offset, got as number), what).toBe(true);
                else expect(typeof got === "number" && got >= offset && got <= size && zeros(got, Math.min(size, (Math.floor(got / B) + 1) * B)), what).toBe(true);
              }
            }
          }
        };
        for (let step = 0; step < steps; step++) {
          const name = prng.pick(names);
          const model = models.get(name)!;
          const ino = h.fs.inoOf(name);
          const size = model.bytes.data.length;
          const roll = prng.below(100);
          let what: string;
          if (roll < 26) {
            const range = lastRange.get(name);
            const at =
              range !== undefined && prng.chance(0.4)
                ? range[0] + prng.below(range[1])
                : prng.chance(0.2)
                  ? size
                  : prng.below(Math.max(size, 1) + 2 * B);
            const length = prng.pick([1, 100, B - 1, B, 5000, 3 * B + 7, 20_000, 70_000]);
            const data = compression === "lz4" && prng.chance(0.6) ? compressibleBytes(length, seed * 1000 + step) : pattern(length, step, at);
            put(h.fs, name, data, at);
            model.bytes.write(at, data);
            model.data.write(at, length);
            what = "write";
          } else if (roll < 62) {
            const mode = prng.pick(modes);
            const offset = prng.chance(0.3) ? prng.below(size + 1) : prng.below(size + 8 * B);
            const length = prng.pick([1, 10, B, 2 * B + 1, 7 * B + 300, 40_000, 200_000]);
            h.fs.fallocate(ino, mode, offset, length);
            lastRange.set(name, [offset, length]);
            model.bytes.fallocate(mode, offset, length);
            model.data.fallocate(mode, offset, length);
            what = `fallocate ${mode}`;
          } else if (roll < 72) {
            const from = prng.pick(names);
            const source = models.get(from)!;
            const srcOffset = prng.below(source.bytes.data.length + B);
            const length = prng.pick([1, 3000, B, 5 * B + 11, 40_000, 150_000]);
            // Half the copies keep the offset within the block (blocks are shared), half do not (bytes).
            const dstOffset = prng.chance(0.5) ? (srcOffset % B) + prng.below(60) * B : prng.below(size + 4 * B);
            const count = Math.max(0, Math.min(length, source.bytes.data.length - srcOffset));
            if (from === name && count > 0 && dstOffset + count > srcOffset && dstOffset < srcOffset + count) {
              expectErrno(() => h.fs.copyFileRange({ ino: h.fs.inoOf(from) }, srcOffset, ino, dstOffset, length), "EINVAL");
              what = "copy refused";
            } else {
              expect(h.fs.copyFileRange({ ino: h.fs.inoOf(from) }, srcOffset, ino, dstOffset, length)).toBe(count);
              model.bytes.data = copyModel(source.bytes.data, srcOffset, model.bytes.data, dstOffset, length);
              if (count > 0) model.exact = false;
              what = "copy";
            }
          } else if (roll < 82) {
            const target = prng.pick([size - 1, size + 1, 8 * B, 8 * B + 17, 30 * B, 100_000, size + 3 * B]);
            const next = Math.max(8 * B, target);
            h.fs.truncate(name, next);
            model.bytes.truncate(next);
            model.data.truncate(size, next);
            what = "truncate";
          } else if (roll < 93) {
            h.fs.sync();
            expectFsClean(h.device.reopen());
            what = "sync";
          } else if (roll < 97) {
            reopen();
            what = "reopen";
          } else {
            h.fs.sync();
            h.fs.createSubvolume(`s${step}`, { readOnly: true });
            what = "snapshot";
          }
          counts[what] = (counts[what] ?? 0) + 1;
          verify(`step ${step} (${what})`);
        }
        reopen();
        verify("the end, reopened");
        for (const snapshot of h.fs.listSubvolumes().filter((s) => s.readOnly)) h.fs.deleteSubvolume(snapshot.name);
        h.fs.finishDeletions();
        verify("the end, snapshots deleted");
        console.log(`seed ${seed} (${compression}): ${JSON.stringify(counts)}; ${inPlace} blocks written in place`);
        expect(inPlace).toBeGreaterThan(0);
        h.closeAndCheck();
      });
    });
  }
});

describe("lseek: SEEK_DATA and SEEK_HOLE", () => {
  it("a sparse file with holes at the start, middle and end, written and buffered data", () => {
    const h = new FsHarness();
    const fs = h.fs;
    const ino = touch(fs, "/f");
    put(fs, "/f", pattern(2 * B, 30), 2 * B);
    fs.sync();
    put(fs, "/f", pattern(100, 31), 7 * B + 10);
    fs.truncate("/f", 10 * B + 50);
    const cases: Array<[number, "data" | "hole", number | "ENXIO"]> = [
      [0, "data", 2 * B],
      [2 * B + 5, "data", 2 * B + 5],
      [4 * B, "data", 7 * B],
      [7 * B + 3000, "data", 7 * B + 3000],
      [8 * B, "data", "ENXIO"],
      [10 * B + 49, "data", "ENXIO"],
      [0, "hole", 0],
      [2 * B, "hole", 4 * B],
      [3 * B + 1, "hole", 4 * B],
      [7 * B + 1, "hole", 8 * B],
      [9 * B, "hole", 9 * B],
      [10 * B + 49, "hole", 10 * B + 49],
      [10 * B + 50, "hole", "ENXIO"],
      [10 * B + 50, "data", "ENXIO"],
      [-1, "data", "ENXIO"],
    ];
    const check = (when: string): void => {
      for (const [offset, whence, expected] of cases) {
        const what = `${when}: SEEK_${whence.toUpperCase()} at ${offset}`;
        if (expected === "ENXIO") expectErrno(() => h.fs.lseek(ino, offset, whence), "ENXIO");
        else expect(h.fs.lseek(ino, offset, whence), what).toBe(expected);
      }
    };
    check("buffered");
    fs.sync();
    check("synced");
    h.reopen();
    check("reopened");
    h.closeAndCheck();
  });

  it("the end of file is a hole; inline files are all data; punched blocks become holes; preallocated blocks are holes until written", () => {
    const h = new FsHarness();
    const fs = h.fs;
    const full = touch(fs, "/full");
    put(fs, "/full", pattern(3 * B + 7, 32), 0);
    fs.sync();
    expect(fs.lseek(full, 0, "hole")).toBe(3 * B + 7);
    expect(fs.lseek(full, 3 * B + 6, "data")).toBe(3 * B + 6);
    const small = touch(fs, "/small");
    put(fs, "/small", Buffer.from("tiny"), 0);
    expect(fs.lseek(small, 2, "data")).toBe(2);
    expect(fs.lseek(small, 0, "hole")).toBe(4);
    fs.fallocate(full, PUNCH, B, B);
    expect(fs.lseek(full, 0, "hole")).toBe(B);
    expect(fs.lseek(full, B, "data")).toBe(2 * B);
    // Partial punches leave data.
    fs.fallocate(full, PUNCH, 10, 20);
    expect(fs.lseek(full, 0, "hole")).toBe(B);
    const pre = touch(fs, "/pre");
    fs.fallocate(pre, 0, 0, 8 * B);
    expect(stBlocks(fs, "/pre")).toBe(8);
    expectErrno(() => fs.lseek(pre, 0, "data"), "ENXIO");
    expect(fs.lseek(pre, 5, "hole")).toBe(5);
    put(fs, "/pre", pattern(B, 33), 3 * B);
    expect(fs.lseek(pre, 0, "data")).toBe(3 * B);
    expect(fs.lseek(pre, 3 * B, "hole")).toBe(4 * B);
    fs.sync();
    expect(fs.lseek(pre, 0, "data")).toBe(3 * B);
    expect(fs.lseek(pre, 3 * B, "hole")).toBe(4 * B);
    fs.mkdir("/d", 0o755, root);
    expectErrno(() => fs.lseek(fs.inoOf("/d"), 0, "data"), "EINVAL");
    expectErrno(() => fs.lseek(full, 0, "end" as "data"), "EINVAL");
    expectErrno(() => fs.lseek(999_999, 0, "data"), "ENOENT");
    h.closeAndCheck();
  });

  it("a huge sparse file answers from its extents, not its blocks", () => {
    const h = new FsHarness();
    const fs = h.fs;
    const ino = touch(fs, "/f");
    put(fs, "/f", pattern(B, 34), 0);
    put(fs, "/f", pattern(B, 35), 8 * 1024 * 1024 * MiB);
    fs.sync();
    const started = performance.now();
    expect(fs.lseek(ino, B, "data")).toBe(8 * 1024 * 1024 * MiB);
    expect(fs.lseek(ino, 0, "hole")).toBe(B);
    expect(fs.lseek(ino, 8 * 1024 * 1024 * MiB, "hole")).toBe(8 * 1024 * 1024 * MiB + B);
    expect(performance.now() - started).toBeLessThan(1000);
    h.closeAndCheck();
  });
});

/** copy_file_range as the model has it: the bytes of the source range land in the destination, which grows to cover them. */
function copyModel(src: Buffer, srcOffset: number, dst: Buffer, dstOffset: number, length: number): Buffer {
  const count = Math.max(0, Math.min(length, src.length - srcOffset));
  const out = Buffer.alloc(Math.max(dst.length, count > 0 ? dstOffset + count : 0));
  dst.copy(out);
  if (count > 0) src.copy(out, dstOffset, srcOffset, srcOffset + count);
  return out;
}

describe("copyFileRange", () => {
  it("across files: whole blocks are shared, not copied; either side can then be written without touching the other", () => {
    const h = new FsHarness();
    const fs = h.fs;
    const src = touch(fs, "/src");
    const dst = touch(fs, "/dst");
    const data = pattern(4 * MiB, 40);
    put(fs, "/src", data, 0);
    fs.sync();
    const used = usedBlocks(fs);
    const before = fs.getattr("/dst");
    expect(fs.copyFileRange({ ino: src }, 0, dst, 0, 4 * MiB)).toBe(4 * MiB);
    fs.sync();
    expect(usedBlocks(fs) - used).toBeLessThanOrEqual(8);
    expectBytes(readFile(fs, "/dst"), data, "the copy");
    expect(stBlocks(fs, "/dst")).toBe(1024);
    expect(fs.getattr("/dst").mtimeNs).toBeGreaterThan(before.mtimeNs);
    expect(fs.getattr("/dst").ctimeNs).toBeGreaterThan(before.ctimeNs);
    expect(extentsOf(h, dst).map((e) => e.extentLba)).toEqual(extentsOf(h, src).map((e) => e.extentLba));
    expectFsClean(h.device.reopen());
    // Writes on either side copy on write.
    put(fs, "/dst", pattern(B + 10, 41), MiB + 5);
    put(fs, "/src", pattern(3 * B, 42), 2 * MiB - 7);
    const dstModel = Buffer.from(data);
    pattern(B + 10, 41).copy(dstModel, MiB + 5);
    const srcModel = Buffer.from(data);
    pattern(3 * B, 42).copy(srcModel, 2 * MiB - 7);
    fs.sync();
    expectBytes(readFile(fs, "/dst"), dstModel, "dst after writes");
    expectBytes(readFile(fs, "/src"), srcModel, "src after writes");
    // With the source gone, the copy keeps every block it shares, and only those.
    fs.unlink("/src");
    fs.sync();
    expectBytes(readFile(fs, "/dst"), dstModel, "dst after the source is gone");
    expect(usedBlocks(fs)).toBeLessThanOrEqual(used + 8);
    expect(usedBlocks(fs)).toBeGreaterThanOrEqual(used - 8);
    h.reopen();
    expectBytes(readFile(h.fs, "/dst"), dstModel, "after reopen");
    h.fs.unlink("/dst");
    h.fs.sync();
    expect(usedBlocks(h.fs)).toBeLessThanOrEqual(used - 1024 + 8);
    h.closeAndCheck();
  });

  it("unaligned but congruent offsets: the edges are copied as bytes, the blocks between shared; incongruent offsets copy bytes", () => {
    const h = new FsHarness();
    const fs = h.fs;
    const src = touch(fs, "/src");
    const dst = touch(fs, "/dst");
    const other = touch(fs, "/other");
    const data = pattern(3 * MiB + 999, 43);
    put(fs, "/src", data, 0);
    const old = pattern(200 * KiB, 44);
    put(fs, "/dst", old, 0);
    fs.sync();
    let used = usedBlocks(fs);
    // 1000 and 1000 + 40 blocks: congruent.
    const length = 2 * MiB + 123;
    expect(fs.copyFileRange({ ino: src }, 1000, dst, 40 * B + 1000, length)).toBe(length);
    let model = copyModel(data, 1000, old, 40 * B + 1000, length);
    expectBytes(readFile(fs, "/dst"), model, "congruent, buffered edges");
    fs.sync();
    expectBytes(readFile(fs, "/dst"), model, "congruent");
    expect(usedBlocks(fs) - used).toBeLessThanOrEqual(2 + 10);
    // Over what it copied before, and off by 100 bytes: all bytes.
    used = usedBlocks(fs);
    expect(fs.copyFileRange({ ino: src }, 0, other, 100, MiB)).toBe(MiB);
    model = copyModel(data, 0, Buffer.alloc(0), 100, MiB);
    fs.sync();
    expectBytes(readFile(fs, "/other"), model, "incongruent");
    expect(usedBlocks(fs) - used).toBeGreaterThanOrEqual(257);
    h.closeAndCheck();
  });

  it("short at the source's end of file, 0 past it; the last partial block is shared when the copy ends both files", () => {
    const h = new FsHarness();
    const fs = h.fs;
    const src = touch(fs, "/src");
    const dst = touch(fs, "/dst");
    const data = pattern(10 * B + 77, 45);
    put(fs, "/src", data, 0);
    fs.sync();
    const used = usedBlocks(fs);
    expect(fs.copyFileRange({ ino: src }, 0, dst, 0, MiB)).toBe(10 * B + 77);
    fs.sync();
    expectBytes(readFile(fs, "/dst"), data);
    expect(fs.getattr("/dst").size).toBe(10 * B + 77);
    expect(usedBlocks(fs) - used).toBeLessThanOrEqual(3);
    expect(extentsOf(h, dst).reduce((n, e) => n + e.blocks, 0)).toBe(11);
    expect(fs.copyFileRange({ ino: src }, 10 * B + 77, dst, 0, MiB)).toBe(0);
    expect(fs.copyFileRange({ ino: src }, 20 * B, dst, 0, MiB)).toBe(0);
    expect(fs.copyFileRange({ ino: src }, 5, dst, 5, 0)).toBe(0);
    // Into the middle of a longer file: the last block's tail belongs to the destination, so it is copied as bytes.
    const long = touch(fs, "/long");
    const longData = pattern(20 * B, 46);
    put(fs, "/long", longData, 0);
    expect(fs.copyFileRange({ ino: src }, 2 * B, long, 4 * B, MiB)).toBe(8 * B + 77);
    fs.sync();
    expectBytes(readFile(fs, "/long"), copyModel(data, 2 * B, longData, 4 * B, MiB));
    h.closeAndCheck();
  });

  it("holes stay holes and preallocated blocks become holes; buffered source data is copied as it reads", () => {
    const h = new FsHarness();
    const fs = h.fs;
    const src = touch(fs, "/src");
    const dst = touch(fs, "/dst");
    put(fs, "/src", pattern(B, 47), 0);
    put(fs, "/src", pattern(2 * B, 48), 100 * B);
    fs.fallocate(src, KEEP, 40 * B, 20 * B);
    fs.sync();
    // Buffered, never written out before the copy.
    put(fs, "/src", pattern(B, 49), 70 * B);
    const expected = readFile(fs, "/src");
    expect(fs.copyFileRange({ ino: src }, 0, dst, 0, expected.length)).toBe(expected.length);
    expectBytes(readFile(fs, "/dst"), expected, "before sync");
    fs.sync();
    expectBytes(readFile(fs, "/dst"), expected, "after sync");
    expect(stBlocks(fs, "/dst")).toBe(1 + 2 + 1);
    expect(fs.lseek(dst, B, "data")).toBe(70 * B);
    expect(fs.lseek(dst, 0, "hole")).toBe(B);
    h.closeAndCheck();
  });

  it("within one file: non-overlapping ranges share blocks; overlapping ones are EINVAL", () => {
    const h = new FsHarness();
    const fs = h.fs;
    const ino = touch(fs, "/f");
    const data = pattern(2 * MiB, 50);
    put(fs, "/f", data, 0);
    fs.sync();
    const used = usedBlocks(fs);
    expect(fs.copyFileRange({ ino }, 300, ino, 3 * MiB + 300, MiB)).toBe(MiB);
    let model = copyModel(data, 300, data, 3 * MiB + 300, MiB);
    expect(fs.copyFileRange({ ino }, MiB, ino, 100, 64 * KiB)).toBe(64 * KiB);
    model = copyModel(model, MiB, model, 100, 64 * KiB);
    // Right after the source range: touching, not overlapping.
    expect(fs.copyFileRange({ ino }, 0, ino, 2 * MiB, MiB)).toBe(MiB);
    model = copyModel(model, 0, model, 2 * MiB, MiB);
    fs.sync();
    expectBytes(readFile(fs, "/f"), model);
    expect(usedBlocks(fs) - used).toBeLessThanOrEqual(20 + 16);
    expectErrno(() => fs.copyFileRange({ ino }, 0, ino, MiB - 1, MiB), "EINVAL");
    expectErrno(() => fs.copyFileRange({ ino }, MiB, ino, 0, MiB + 1), "EINVAL");
    expectErrno(() => fs.copyFileRange({ ino }, 0, ino, 0, 1), "EINVAL");
    expectBytes(readFile(fs, "/f"), model);
    h.reopen();
    expectBytes(readFile(h.fs, "/f"), model);
    h.closeAndCheck();
  });

  it("from a snapshot into the live subvolume: shared across subvolumes; deleting the source and the snapshot leaves the copy and only its space", () => {
    const h = new FsHarness();
    const fs = h.fs;
    fs.sync();
    const baseline = usedBlocks(fs);
    const data = pattern(2 * MiB, 51);
    writeFile(fs, "/f", data);
    fs.createSubvolume("snap", { readOnly: true });
    // The live file moves on: the snapshot alone holds the old bytes.
    writeFile(fs, "/f", pattern(2 * MiB, 52));
    fs.sync();
    const view = fs.snapshotView("snap") as GroveFs;
    const used = usedBlocks(fs);
    const g = touch(fs, "/g");
    expect(fs.copyFileRange({ fs: view, ino: view.inoOf("/f") }, 0, g, 0, 2 * MiB)).toBe(2 * MiB);
    fs.sync();
    expect(usedBlocks(fs) - used).toBeLessThanOrEqual(8);
    expectBytes(readFile(fs, "/g"), data, "the copy");
    expectFsClean(h.device.reopen());
    fs.unlink("/f");
    fs.deleteSubvolume("snap");
    fs.finishDeletions();
    expectBytes(readFile(fs, "/g"), data, "after the source and the snapshot are gone");
    expect(usedBlocks(fs)).toBeLessThanOrEqual(baseline + 512 + 8);
    h.reopen();
    expectBytes(readFile(h.fs, "/g"), data, "after reopen");
    h.closeAndCheck();
  });

  it("lz4 extents are shared whole or as slices, and read back through every record", () => {
    const h = compressedHarness("lz4");
    const fs = h.fs;
    const src = touch(fs, "/src");
    const whole = touch(fs, "/whole");
    const part = touch(fs, "/part");
    const data = compressibleBytes(MiB, 53);
    put(fs, "/src", data, 0);
    fs.sync();
    const census = compressionCensus(h.device.reopen());
    expect(census.extents).toBeGreaterThan(4);
    const used = usedBlocks(fs);
    expect(fs.copyFileRange({ ino: src }, 0, whole, 0, MiB)).toBe(MiB);
    // From 5 blocks into a unit to 3 blocks short of another: slices of compressed extents.
    expect(fs.copyFileRange({ ino: src }, 5 * B + 9, part, 9, 200 * KiB)).toBe(200 * KiB);
    fs.sync();
    expect(usedBlocks(fs) - used).toBeLessThanOrEqual(2 + 8);
    const after = compressionCensus(h.device.reopen());
    expect(after.extents).toBe(census.extents);
    expect(after.records).toBeGreaterThan(2 * census.records);
    expect(after.slices).toBeGreaterThan(census.slices);
    expectBytes(readFile(fs, "/whole"), data, "whole");
    expectBytes(readFile(fs, "/part"), copyModel(data, 5 * B + 9, Buffer.alloc(0), 9, 200 * KiB), "part");
    fs.unlink("/src");
    fs.unlink("/whole");
    fs.sync();
    expectBytes(readFile(fs, "/part"), copyModel(data, 5 * B + 9, Buffer.alloc(0), 9, 200 * KiB), "part alone");
    h.closeAndCheck();
  });

  it("copies of many small extents go in admitted steps, and replace what the destination held", () => {
    const h = new FsHarness();
    const fs = h.fs;
    const src = touch(fs, "/src");
    const dst = touch(fs, "/dst");
    const model = new Bytes();
    // Every other block, each its own extent: 300 extents.
    for (let b = 0; b < 600; b += 2) {
      put(fs, "/src", pattern(B, 60 + b), b * B);
      model.write(b * B, pattern(B, 60 + b));
      if (b % 64 === 0) fs.sync();
    }
    const dstData = pattern(700 * B, 54);
    put(fs, "/dst", dstData, 0);
    fs.sync();
    expect(extentsOf(h, src).length).toBe(300);
    const used = usedBlocks(fs);
    // The source ends with block 598: short by one block.
    expect(fs.copyFileRange({ ino: src }, 0, dst, 50 * B, 600 * B)).toBe(599 * B);
    fs.sync();
    expectBytes(readFile(fs, "/dst"), copyModel(model.data, 0, dstData, 50 * B, 600 * B));
    // Sharing adds no data blocks; the destination's old ones stay while their extents are partly referenced.
    expect(usedBlocks(fs) - used).toBeLessThanOrEqual(32);
    h.closeAndCheck();
  });

  it("refusals: EINVAL, EISDIR, EROFS, EXDEV, EFBIG, ENOENT change nothing; a full volume still shares blocks", async () => {
    const h = new FsHarness(2048);
    const fs = h.fs;
    const src = touch(fs, "/src");
    const dst = touch(fs, "/dst");
    fs.mkdir("/d", 0o755, root);
    fs.symlink("/src", "/l", root);
    put(fs, "/src", pattern(2 * MiB, 55), 0);
    fs.sync();
    const d = fs.inoOf("/d");
    expectErrno(() => fs.copyFileRange({ ino: src }, -1, dst, 0, 10), "EINVAL");
    expectErrno(() => fs.copyFileRange({ ino: src }, 0, dst, -1, 10), "EINVAL");
    expectErrno(() => fs.copyFileRange({ ino: src }, 0, dst, 0, -1), "EINVAL");
    expectErrno(() => fs.copyFileRange({ ino: src }, 0, d, 0, 10), "EISDIR");
    expectErrno(() => fs.copyFileRange({ ino: d }, 0, dst, 0, 10), "EISDIR");
    expectErrno(() => fs.copyFileRange({ ino: fs.inoOf("/l") }, 0, dst, 0, 10), "EINVAL");
    expectErrno(() => fs.copyFileRange({ ino: 999_999 }, 0, dst, 0, 10), "ENOENT");
    expectErrno(() => fs.copyFileRange({ ino: src }, 0, dst, fileSizeMaxBytes, 10), "EFBIG");
    // Up to the limit: short.
    expect(fs.copyFileRange({ ino: src }, 0, dst, fileSizeMaxBytes - 10, 100)).toBe(10);
    fs.truncate("/dst", 0);
    await withDir(
      async ({ path: dir }) => {
        const image = path.join(dir, "other.img");
        GroveFs.format(FileDevice.createImage(image, 16 * MiB));
        const other = GroveFs.open(FileDevice.open(image));
        const o = touch(other, "/o");
        put(other, "/o", pattern(B, 56), 0);
        expectErrno(() => fs.copyFileRange({ fs: other, ino: o }, 0, dst, 0, B), "EXDEV");
        other.close();
        const check = FileDevice.open(image);
        expectFsClean(check);
        check.close();
      },
      { unsafeCleanup: true },
    );
    // Fill the volume: a byte copy no longer fits, sharing still does.
    let n = 0;
    for (;;) {
      try {
        writeFile(fs, `/fill${n++}`, pattern(128 * KiB, n));
      } catch (error) {
        if (!(error instanceof GroveError) || error.code !== "ENOSPC") throw error;
        break;
      }
    }
    // Two files' room: a sharing copy's tree nodes fit, whatever the reserved superblock copies left over from the fill.
    fs.unlink(`/fill0`);
    fs.unlink(`/fill1`);
    fs.sync();
    expect(fs.statfs().bfree).toBeLessThan(200 * fs.store.nodeCopies);
    const bytes = touch(fs, "/bytes");
    expectErrno(() => fs.copyFileRange({ ino: src }, 0, bytes, 1, 2 * MiB), "ENOSPC");
    expect(fs.getattr("/bytes").size).toBe(0);
    expect(fs.copyFileRange({ ino: src }, 0, dst, 0, 2 * MiB)).toBe(2 * MiB);
    fs.sync();
    expectBytes(readFile(fs, "/dst"), pattern(2 * MiB, 55));
    fs.close();
    h.device = h.device.reopen();
    h.fs = GroveFs.open(h.device, { ...h.options, readOnly: true });
    expectErrno(() => h.fs.copyFileRange({ ino: src }, 0, dst, 0, B), "EROFS");
    h.closeAndCheck();
  });

  it("on an image file: a copy and a preallocation survive close and reopen", async () => {
    await withDir(
      async ({ path: dir }) => {
        const image = path.join(dir, "ranges.img");
        GroveFs.format(FileDevice.createImage(image, 64 * MiB));
        let fs = GroveFs.open(FileDevice.open(image));
        const src = touch(fs, "/src");
        const dst = touch(fs, "/dst");
        const data = pattern(3 * MiB + 5, 57);
        put(fs, "/src", data, 0);
        fs.fallocate(src, KEEP, 4 * MiB, MiB);
        fs.sync();
        const used = usedBlocks(fs);
        expect(fs.copyFileRange({ ino: src }, 0, dst, 0, 4 * MiB)).toBe(3 * MiB + 5);
        fs.close();
        fs = GroveFs.open(FileDevice.open(image));
        expectBytes(readFile(fs, "/dst"), data);
        expect(usedBlocks(fs) - used).toBeLessThanOrEqual(8);
        expect(stBlocks(fs, "/src")).toBe(Math.ceil((3 * MiB + 5) / B) + 256);
        fs.close();
        const check = FileDevice.open(image);
        expectFsClean(check);
        check.close();
      },
      { unsafeCleanup: true },
    );
  });
});

describe("unwritten extent records and the checker", () => {
  it("the first preallocation sets an incompatible feature bit; a missing bit is found by the checker and set by repair", () => {
    const h = new FsHarness();
    const ino = touch(h.fs, "/f");
    h.fs.write(h.fs.openIno(ino, C.O_RDWR), Buffer.alloc(3 * B, 7), 3 * B, 0);
    h.fs.sync();
    expect(readSuperblock(h.device.reopen()).features & featurePreallocated).toBe(0n);
    h.fs.fallocate(ino, 0, 0, 8 * B);
    expect(h.fs.store.hasFeature(featurePreallocated)).toBe(true);
    h.fs.sync();
    const sb = readSuperblock(h.device.reopen());
    expect(sb.features & featurePreallocated).toBe(featurePreallocated);
    h.fs.close();
    const device = h.device.reopen();
    device.write(slotForGeneration(sb.generation), encodeSuperblock({ ...sb, features: sb.features & ~featurePreallocated }));
    const report = checkFilesystem(device);
    expect(report.problems).toEqual(["superblock: 1 unwritten (preallocated) extents exist but the feature that says so is not set"]);
    expect(repairFilesystem(device, report).fixed).toContain("superblock: set the feature bit of unwritten (preallocated) extents");
    const repaired = device.reopen();
    expect(checkFilesystem(repaired).problems).toEqual([]);
    expect(readSuperblock(repaired).features & featurePreallocated).toBe(featurePreallocated);
  });

  it("round-trip through the format, slice, and refuse malformed bytes", () => {
    const extent = unwrittenExtent(7, 1000, 100, 42);
    const value = encodeExtent(extent);
    expect(value.length).toBe(28);
    const back = decodeExtent(5, extentKey(7), value);
    expect(back).toEqual({ ...extent, crcs: back.crcs });
    expect(back.crcs.length).toBe(0);
    const slice = sliceExtent(back, 10, 30);
    expect(slice).toMatchObject({ fileBlock: 17, offset: 10, lba: 1010, blocks: 30, diskBlocks: 0, preallocatedIn: 42 });
    expect(decodeExtent(5, extentKey(17), encodeExtent(slice))).toEqual({ ...slice, crcs: back.crcs });
    const broken = (at: number, byte: number): Buffer => {
      const copy = Buffer.from(value);
      copy[at] = byte;
      return copy;
    };
    for (const bad of [value.subarray(0, 27), Buffer.concat([value, Buffer.alloc(4)]), broken(12, 0x81), broken(10, 1), broken(13, 2), broken(8, 0), broken(14, 5)]) {
      expectErrno(() => decodeExtent(5, extentKey(7), bad), "EIO", "EIO_extent");
    }
  });

  it("holeRuns and seekIn walk ranges, not blocks", () => {
    expect(holeRuns([[2, 4], [6, 7]], [0, 0, 4, 9], 0, 10)).toEqual([[1, 2], [5, 6], [7, 9]]);
    expect(holeRuns([], [], 5, 5)).toEqual([]);
    expect(holeRuns([[0, 2 ** 40]], [], 3, 2 ** 39)).toEqual([]);
    const big = 2 ** 40;
    expect(seekIn([[big, big + 1]], [], (big + 2) * B, 0, "data")).toBe(big * B);
    expect(seekIn([[0, big]], [big + 1], (big + 5) * B, 3, "hole")).toBe(big * B);
    expect(seekIn([[0, 2]], [2, 3], 4 * B, 0, "hole")).toBe(4 * B);
    expect(seekIn([], [], 10, 3, "data")).toBeUndefined();
  });

  it("finds an unwritten record from the future and one whose blocks another record names", () => {
    const h = new FsHarness();
    const ino = touch(h.fs, "/f");
    h.fs.fallocate(ino, 0, 0, 8 * B);
    h.fs.close();
    const device = h.device.reopen();
    const rewrite = (disk: SimDevice, change: (items: Array<{ key: Buffer; value: Buffer }>) => void): SimDevice => {
      const copy = disk.reopen();
      const { store } = openVolume(copy, { edges: fsEdges });
      const tree = store.openTree(256);
      const inode = decodeInode(ino, tree.get(inodeKey(ino))!);
      expect(inode.kind).toBe(PayloadKind.Items);
      const items = decodeItems(ino, inode.payload);
      change(items);
      inode.payload = encodeItems(items);
      tree.put(inodeKey(ino), encodeInode(inode));
      store.commit({ force: true });
      store.close();
      return copy.reopen();
    };
    const future = rewrite(device, (items) => {
      const extent = decodeExtent(ino, items[0]!.key, items[0]!.value);
      items[0]!.value = encodeExtent({ ...extent, preallocatedIn: 1_000_000 });
    });
    expect(checkFilesystem(future).problems.some((p) => /after the last commit/.test(p))).toBe(true);
    const shared = rewrite(device, (items) => {
      const extent = decodeExtent(ino, items[0]!.key, items[0]!.value);
      const written = { ...sliceExtent(extent, 2, 1), fileBlock: 3, preallocatedIn: undefined, diskBlocks: 1, crcs: Buffer.alloc(4) };
      items[0]!.value = encodeExtent(sliceExtent(extent, 0, 3));
      items.push({ key: extentKey(3), value: encodeExtent(written) });
      items.push({ key: extentKey(4), value: encodeExtent(sliceExtent(extent, 4, 4)) });
      items.sort((a, b) => Buffer.compare(a.key, b.key));
    });
    expect(checkFilesystem(shared).problems.some((p) => /shares blocks of extent/.test(p))).toBe(true);
    expectFsClean(device);
  });
});

