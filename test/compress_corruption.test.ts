/**
 * Damage to compressed data (issue 5): a bad disk block of an lz4 extent, a
 * payload that passes its crcs but is not valid lz4, records that lie about
 * their compressed length or unit, and superblock counters that disagree
 * with the extents. A read of any byte of a damaged unit is EIO, never wrong
 * bytes, and never another exception; the rest of the file still reads; the
 * checker (with data verification) names the damage; counters are repaired.
 * The decompressor is also fuzzed directly with mutated valid input.
 */
import { describe, expect, it } from "vitest";
import { GroveError, Prng, SimDevice, blockSizeBytes, crc32c, featureCompressLz4, readSuperblock } from "../kvstore/index.js";
import { encodeSuperblock, slotForGeneration } from "../kvstore/superblock.js";
import { openVolume } from "../snapshot/index.js";
import { GroveFs, checkFilesystem, compressionUnitBlocksMax, repairFilesystem, type FileSystemOps } from "../fs/index.js";
import { compressUnit, decompressUnit } from "../fs/compression.js";
import { fsEdges } from "../fs/edges.js";
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
} from "../fs/format.js";
import { seeds, withSeed } from "./helpers.js";
import {
  O_RDONLY,
  O_RDWR,
  compressedHarness,
  compressibleBytes,
  expectBytes,
  expectErrno,
  expectFsClean,
  fileExtents,
  randomBytes,
  readFile,
  writeAt,
  writeFile,
} from "./fs_helpers.js";

const testFile = "test/compress_corruption.test.ts";
const B = blockSizeBytes;
/** One compression unit: 128 KiB. */
const U = compressionUnitBlocksMax * B;
/** /f: three whole units and a last one of 10 blocks, all compressible. */
const fSize = 3 * U + 10 * B;

interface Image {
  /** The closed volume (open copies of it with `reopen()`). */
  device: SimDevice;
  f: Buffer;
  g: Buffer;
  ino: number;
  /** /f's extent records, one a unit, all lz4. */
  extents: Extent[];
}

/** A volume holding /f and /g written with lz4 (its default, or the open's), closed and clean. */
function image(prepare?: (fs: GroveFs) => void, format: "lz4" | "none" = "lz4"): Image {
  const h = compressedHarness(format, 16384, { compression: "lz4" });
  const f = compressibleBytes(fSize, 1);
  const g = compressibleBytes(U, 2);
  writeFile(h.fs, "/f", f);
  writeFile(h.fs, "/g", g);
  h.fs.sync();
  prepare?.(h.fs);
  const ino = h.fs.getattr("/f").ino;
  h.fs.close();
  const device = h.device.reopen();
  const extents = fileExtents(device.reopen(), ino);
  return { device, f, g, ino, extents };
}

/** A unit's whole extent (the record that starts it). */
function unitExtent(img: Image, unit: number): Extent {
  const extent = img.extents.find((e) => e.fileBlock - e.offset === unit * compressionUnitBlocksMax && e.offset === 0);
  expect(extent?.compression).toBe(Compression.Lz4);
  return extent!;
}

function readRange(fs: FileSystemOps, path: string, at: number, length: number): Buffer {
  const fh = fs.open(path, O_RDONLY);
  try {
    const out = Buffer.alloc(length);
    return out.subarray(0, fs.read(fh, out, length, at));
  } finally {
    fs.release(fh);
  }
}

/** Every byte of unit 1 of /f is EIO (`detail`); units 0, 2 and 3 and /g read right. */
function expectUnit1Unreadable(fs: FileSystemOps, img: Image, detail: string): void {
  for (const at of [U, U + 1, U + U / 2, 2 * U - 1]) expectErrno(() => readRange(fs, "/f", at, 1), "EIO", detail);
  expectErrno(() => readRange(fs, "/f", U - 10, 20), "EIO", detail);
  expectErrno(() => readRange(fs, "/f", 2 * U - 10, 20), "EIO", detail);
  expectErrno(() => readFile(fs, "/f"), "EIO", detail);
  expectBytes(readRange(fs, "/f", 0, U), img.f.subarray(0, U), "unit 0");
  expectBytes(readRange(fs, "/f", 2 * U, fSize), img.f.subarray(2 * U), "units 2 and 3");
  expectBytes(readFile(fs, "/g"), img.g, "/g");
}

/** A copy of the image whose block `lba` reads with `mask` flipped at `offset`. */
function flipped(img: Image, lba: number, offset: number, mask: number): SimDevice {
  const device = img.device.reopen();
  device.flipOnRead(lba, offset, mask);
  return device;
}

/** Rewrites one extent record of inode `ino` (inline in its inode) as `change` makes it, committed as a normal generation. */
function rewriteRecord(device: SimDevice, ino: number, fileBlock: number, change: (extent: Extent) => Extent): void {
  const { store } = openVolume(device, { edges: fsEdges });
  const tree = store.openTree(256);
  const inode = decodeInode(ino, tree.get(inodeKey(ino))!);
  expect(inode.kind).toBe(PayloadKind.Items);
  const items = decodeItems(ino, inode.payload);
  const item = items.find((i) => i.key.equals(extentKey(fileBlock)))!;
  item.value = encodeExtent(change(decodeExtent(ino, item.key, item.value)));
  inode.payload = encodeItems(items);
  tree.put(inodeKey(ino), encodeInode(inode));
  store.commit({ force: true });
  store.close();
}

function crcsOf(disk: Buffer): Buffer {
  const crcs = Buffer.alloc(4 * (disk.length / B));
  for (let k = 0; k < disk.length / B; k++) crcs.writeUInt32LE(crc32c(disk.subarray(k * B, (k + 1) * B)), 4 * k);
  return crcs;
}

function problemsOf(device: SimDevice): string[] {
  return checkFilesystem(device, { verifyData: true }).problems;
}

describe("a damaged disk block of a compressed extent", () => {
  it("is EIO for every byte of its unit, wherever the flipped bit lies, and the checker names the block", () => {
    const img = image();
    const extent = unitExtent(img, 1);
    const lastBlock = extent.extentLba + extent.extentBlocks - 1;
    const lastBytes = extent.compressedBytes - (extent.extentBlocks - 1) * B;
    expect(lastBytes).toBeLessThan(B - 1);
    const places = [
      { what: "the first block", lba: extent.extentLba, offset: 100 },
      { what: "the length prefix", lba: extent.extentLba, offset: 1 },
      { what: "the last block's data", lba: lastBlock, offset: lastBytes - 1 },
      // Past the compressed bytes: lz4 would not notice, the crc does.
      { what: "the last block's zero padding", lba: lastBlock, offset: B - 1 },
    ];
    for (const place of places) {
      const fs = GroveFs.open(flipped(img, place.lba, place.offset, 0x10));
      try {
        expectUnit1Unreadable(fs, img, "EIO_data_checksum");
      } finally {
        fs.close();
      }
      expect(problemsOf(flipped(img, place.lba, place.offset, 0x10)), place.what).toEqual([
        expect.stringMatching(new RegExp(`^inode ${img.ino} \\("/f" in the default subvolume\\): data block ${place.lba} fails its checksum; damaged file bytes \\d+-\\d+`)),
      ]);
    }
    expectFsClean(img.device.reopen());
  });

  it("shared by slices and a snapshot, is EIO through each of them; the block written over it reads", () => {
    const img = image((fs) => {
      const fh = fs.open("/f", O_RDWR);
      writeAt(fs, fh, Buffer.alloc(B, 0x61), U + 10 * B);
      fs.release(fh);
      fs.createSubvolume("snap", { readOnly: true });
    });
    const slices = img.extents.filter((e) => e.fileBlock - e.offset === compressionUnitBlocksMax);
    expect(slices.map((e) => [e.fileBlock, e.blocks])).toEqual([
      [32, 10],
      [43, 21],
    ]);
    const device = flipped(img, slices[0]!.extentLba, 200, 0x01);
    const fs = GroveFs.open(device);
    for (const view of [fs, fs.snapshotView("snap")]) {
      expectErrno(() => readRange(view, "/f", U, 1), "EIO", "EIO_data_checksum");
      expectErrno(() => readRange(view, "/f", U + 11 * B, 1), "EIO", "EIO_data_checksum");
      expectErrno(() => readRange(view, "/f", 2 * U - 1, 1), "EIO", "EIO_data_checksum");
      expectBytes(readRange(view, "/f", U + 10 * B, B), Buffer.alloc(B, 0x61), "the block written over the unit");
      expectBytes(readRange(view, "/f", 2 * U, fSize), img.f.subarray(2 * U), "units 2 and 3");
    }
    fs.close();
    // One extent, read once however many records and subvolumes name it.
    expect(problemsOf(flipped(img, slices[0]!.extentLba, 200, 0x01))).toEqual([
      expect.stringMatching(new RegExp(`^inode ${img.ino} \\("/f" in the default subvolume\\): data block ${slices[0]!.extentLba} fails its checksum; `)),
    ]);
  });

  it("refuses writes and truncates that need the damaged unit, and is gone once the unit is rewritten whole", () => {
    const img = image();
    const extent = unitExtent(img, 1);
    const device = img.device.reopen();
    const block = Buffer.alloc(B);
    device.read(extent.extentLba, block);
    block[17]! ^= 0x80;
    device.write(extent.extentLba, block);
    let fs = GroveFs.open(device);
    const fh = fs.open("/f", O_RDWR);
    // A partial block needs its old bytes: refused before anything changes.
    expectErrno(() => fs.write(fh, Buffer.from("x"), 1, U + 5), "EIO", "EIO_data_checksum");
    expectErrno(() => fs.truncate("/f", U + 100), "EIO", "EIO_data_checksum");
    expect(fs.getattr("/f").size).toBe(fSize);
    expectUnit1Unreadable(fs, img, "EIO_data_checksum");
    // Whole blocks need nothing read: the unit is replaced and its damaged extent freed.
    const fresh = compressibleBytes(U, 3);
    writeAt(fs, fh, fresh, U);
    fs.release(fh);
    const expected = Buffer.from(img.f);
    fresh.copy(expected, U);
    expectBytes(readFile(fs, "/f"), expected);
    fs.close();
    expectFsClean(device.reopen());
    fs = GroveFs.open(device.reopen());
    expectBytes(readFile(fs, "/f"), expected);
    expect(fs.info().compressed.extents).toBe(5);
    fs.close();
  });
});

/** A compressed unit and the record and disk blocks that hold it, as write-out makes them. */
interface Packed {
  unit: Buffer;
  extent: Extent;
  disk: Buffer;
}

function pack(unit: Buffer): Packed {
  const blocks: Buffer[] = [];
  for (let at = 0; at < unit.length; at += B) blocks.push(unit.subarray(at, at + B));
  const packed = compressUnit(blocks);
  if (packed === null) throw new Error("the sample does not compress");
  const extent: Extent = {
    fileBlock: 0,
    extentLba: 1000,
    extentBlocks: packed.diskBlocks,
    offset: 0,
    lba: 1000,
    blocks: blocks.length,
    diskBlocks: packed.diskBlocks,
    compression: Compression.Lz4,
    unitBlocks: blocks.length,
    compressedBytes: packed.compressedBytes,
    crcs: crcsOf(packed.data),
  };
  return { unit, extent, disk: packed.data };
}

describe("decompressUnit", () => {
  it("returns the unit of a hand-built extent, and EIO for garbage behind a valid length prefix", () => {
    const sample = pack(compressibleBytes(U, 4));
    expectBytes(decompressUnit(7, sample.extent, sample.disk), sample.unit);
    const garbage = randomBytes(sample.disk.length, 5);
    garbage.writeUInt32LE(U, 0);
    expectErrno(() => decompressUnit(7, sample.extent, garbage), "EIO", "EIO_data_decompress");
    const zeros = Buffer.alloc(sample.disk.length);
    zeros.writeUInt32LE(U, 0);
    expectErrno(() => decompressUnit(7, sample.extent, zeros), "EIO", "EIO_data_decompress");
    expectErrno(() => decompressUnit(7, { ...sample.extent, compressedBytes: 3 }, sample.disk), "EIO", "EIO_data_decompress");
    expectErrno(() => decompressUnit(7, { ...sample.extent, compression: 2 as Compression }, sample.disk), "EIO", "EIO_data_decompress");
  });

  it.each(seeds([1, 2]))("on mutated valid input returns a unit of the right length or EIO, nothing else (seed %i)", (seed) => {
    withSeed(seed, testFile, () => {
      const prng = new Prng(seed);
      const samples = [
        pack(compressibleBytes(U, 10 + seed)),
        pack(compressibleBytes(2 * B, 20 + seed)),
        pack(compressibleBytes(10 * B, 30 + seed)),
        pack(Buffer.alloc(U)),
        pack(Buffer.concat([compressibleBytes(U / 2, 40 + seed), randomBytes(U / 4, seed), compressibleBytes(U / 4, 50 + seed)])),
      ];
      const outcomes = new Map<string, { returned: number; refused: number }>();
      for (let i = 0; i < 2000; i++) {
        const base = prng.pick(samples);
        let disk = Buffer.from(base.disk);
        const extent = { ...base.extent };
        const unitBytes = extent.unitBlocks * B;
        const mutation = prng.pick(["flip", "truncate", "prefix", "unitBlocks", "extend", "overwrite", "short read", "compression"]);
        // Mutations that the length checks alone must refuse, whatever lz4 makes of the bytes.
        let mustRefuse = true;
        switch (mutation) {
          case "flip":
            for (let n = prng.between(1, 8); n > 0; n--) disk[prng.below(extent.compressedBytes)]! ^= 1 << prng.below(8);
            mustRefuse = false;
            break;
          case "truncate":
            extent.compressedBytes = prng.below(extent.compressedBytes);
            break;
          case "prefix":
            disk.writeUInt32LE(prng.pick([0, unitBytes - 1, unitBytes + 1, 2 * unitBytes, 0xffffffff, prng.u32() | 1]) >>> 0, 0);
            break;
          case "unitBlocks": {
            const other = prng.between(2, compressionUnitBlocksMax - 1);
            extent.unitBlocks = other >= extent.unitBlocks ? other + 1 : other;
            break;
          }
          case "extend":
            // Into the zero padding of the last block (every sample leaves some), which may then be garbage.
            expect(extent.compressedBytes).toBeLessThan(disk.length);
            extent.compressedBytes = prng.between(extent.compressedBytes + 1, disk.length);
            if (prng.chance(0.5)) prng.bytes(disk.length - base.extent.compressedBytes).copy(disk, base.extent.compressedBytes);
            mustRefuse = false;
            break;
          case "overwrite": {
            const at = prng.below(disk.length);
            prng.bytes(prng.between(1, 64)).copy(disk, at);
            mustRefuse = false;
            break;
          }
          case "short read":
            disk = disk.subarray(0, prng.below(extent.compressedBytes));
            break;
          case "compression":
            extent.compression = prng.between(2, 255) as Compression;
            break;
        }
        const unchanged =
          extent.compressedBytes === base.extent.compressedBytes &&
          extent.unitBlocks === base.extent.unitBlocks &&
          extent.compression === base.extent.compression &&
          disk.subarray(0, extent.compressedBytes).equals(base.disk.subarray(0, base.extent.compressedBytes));
        const tally = outcomes.get(mutation) ?? { returned: 0, refused: 0 };
        outcomes.set(mutation, tally);
        let unit: Buffer;
        try {
          unit = decompressUnit(7, extent, disk);
        } catch (error) {
          if (!(error instanceof GroveError)) throw new Error(`iteration ${i}, ${mutation}: threw ${String(error)}`);
          expect(error.code, `iteration ${i}, ${mutation}`).toBe("EIO");
          expect(error.detail, `iteration ${i}, ${mutation}`).toBe("EIO_data_decompress");
          expect(unchanged, `iteration ${i}, ${mutation}: refused an intact unit`).toBe(false);
          tally.refused++;
          continue;
        }
        tally.returned++;
        expect(mustRefuse, `iteration ${i}, ${mutation}: passed`).toBe(false);
        // lz4 has no checksum of its own: a flipped literal decodes to other bytes of the same length (the crcs catch those).
        expect(unit.length, `iteration ${i}, ${mutation}`).toBe(unitBytes);
        if (unchanged) expectBytes(unit, base.unit, `iteration ${i}, ${mutation}`);
      }
      for (const mutation of ["truncate", "prefix", "unitBlocks", "short read", "compression"]) {
        expect(outcomes.get(mutation)?.refused, mutation).toBeGreaterThan(100);
      }
      expect(outcomes.get("flip")?.refused, "flip").toBeGreaterThan(0);
      expect(outcomes.get("overwrite")?.returned, "overwrite").toBeGreaterThan(0);
    });
  });
});

describe("a compressed extent whose record lies", () => {
  /** Damages `img` by `damage`, then: unit 1 (or 3) is EIO, the rest reads, the checker names it, and repair leaves it named. */
  function expectLie(img: Image, damage: (device: SimDevice) => void, unit: number, problem: RegExp): void {
    const device = img.device.reopen();
    damage(device);
    const fs = GroveFs.open(device.reopen());
    const start = unit * U;
    const end = Math.min(fSize, start + U);
    for (const at of [start, start + 5000, end - 1]) expectErrno(() => readRange(fs, "/f", at, 1), "EIO", "EIO_data_decompress");
    expectErrno(() => readFile(fs, "/f"), "EIO", "EIO_data_decompress");
    expectBytes(readRange(fs, "/f", 0, start), img.f.subarray(0, start), "before the unit");
    expectBytes(readRange(fs, "/f", end, fSize), img.f.subarray(end), "after the unit");
    expectBytes(readFile(fs, "/g"), img.g, "/g");
    fs.close();
    const checked = device.reopen();
    const report = checkFilesystem(checked, { verifyData: true });
    expect(report.problems.some((p) => problem.test(p)), report.problems.join("\n")).toBe(true);
    // Data cannot be repaired: the repair runs, and the damage is still named afterwards.
    repairFilesystem(checked, report);
    expect(problemsOf(checked.reopen()).some((p) => problem.test(p))).toBe(true);
  }

  it("about the bytes it compressed to, longer or shorter", () => {
    const img = image();
    const extent = unitExtent(img, 1);
    for (const delta of [1, 64, -1, -300]) {
      expectLie(
        img,
        (device) => rewriteRecord(device, img.ino, extent.fileBlock, (e) => ({ ...e, compressedBytes: e.compressedBytes + delta })),
        1,
        new RegExp(`inode ${img.ino}: compressed extent at block ${extent.extentLba} .*does not decompress|decompresses to`),
      );
    }
  });

  it("about the unit it decompresses to", () => {
    const img = image();
    const extent = unitExtent(img, 3);
    expect(extent.unitBlocks).toBe(10);
    expectLie(
      img,
      (device) => rewriteRecord(device, img.ino, extent.fileBlock, (e) => ({ ...e, unitBlocks: 12 })),
      3,
      /does not decompress to its recorded length/,
    );
  });

  it("about its unit, against another record of the same extent", () => {
    // A 1-byte write in the middle of unit 1 cuts its record in two slices of one extent.
    const img = image((fs) => {
      const fh = fs.open("/f", O_RDWR);
      writeAt(fs, fh, Buffer.from("x"), U + 16 * B);
      fs.release(fh);
      fs.sync();
    });
    const slices = img.extents.filter((e) => e.compression === Compression.Lz4 && e.fileBlock >= compressionUnitBlocksMax && e.fileBlock < 2 * compressionUnitBlocksMax);
    expect(slices.map((e) => [e.offset, e.blocks])).toEqual([
      [0, 16],
      [17, 15],
    ]);
    expect(slices[0]!.extentLba).toBe(slices[1]!.extentLba);
    const device = img.device.reopen();
    rewriteRecord(device, img.ino, slices[0]!.fileBlock, (e) => ({ ...e, unitBlocks: 31 }));
    const problems = problemsOf(device.reopen());
    expect(problems.some((p) => /holds \d+ blocks decompressed, but another record says \d+/.test(p)), problems.join("\n")).toBe(true);
  });

  it("with valid crcs over bytes that are not lz4", () => {
    const img = image();
    const extent = unitExtent(img, 1);
    const garbage = randomBytes(extent.extentBlocks * B, 6);
    garbage.writeUInt32LE(U, 0);
    expectLie(
      img,
      (device) => {
        device.write(extent.extentLba, garbage);
        rewriteRecord(device, img.ino, extent.fileBlock, (e) => ({ ...e, crcs: crcsOf(garbage) }));
      },
      1,
      new RegExp(`inode ${img.ino}: compressed extent at block ${extent.extentLba} .*does not decompress`),
    );
  });
});

describe("the superblock's compressed-extent counters", () => {
  /** Damages the counters or feature bit of a volume with a snapshot, as a committed generation; the checker finds it, repair fixes it. */
  function damageAndRepair(damage: (device: SimDevice) => void, expected: RegExp, format: "lz4" | "none" = "lz4"): void {
    const img = image((fs) => {
      fs.createSubvolume("snap", { readOnly: true });
      const fh = fs.open("/f", O_RDWR);
      writeAt(fs, fh, compressibleBytes(U, 9), 0);
      fs.release(fh);
    }, format);
    let fs = GroveFs.open(img.device.reopen());
    const counted = fs.info().compressed;
    fs.close();
    // /f's 4 units (the snapshot's), /f's new unit 0, and /g's unit.
    expect(counted.extents).toBe(6);
    const damaged = img.device.reopen();
    damage(damaged);
    let device = damaged.reopen();
    const report = checkFilesystem(device, { verifyData: true });
    expect(report.problems).toHaveLength(1);
    expect(report.problems[0]).toMatch(expected);
    const result = repairFilesystem(device, report);
    expect(result.fixed).toEqual([`${report.problems[0]}: set from the walk`]);
    device = device.reopen();
    expectFsClean(device);
    fs = GroveFs.open(device);
    expect(fs.info().compressed).toEqual(counted);
    expect(fs.store.hasFeature(featureCompressLz4)).toBe(true);
    const f = Buffer.from(img.f);
    compressibleBytes(U, 9).copy(f);
    expectBytes(readFile(fs, "/f"), f);
    expectBytes(readFile(fs.snapshotView("snap"), "/f"), img.f);
    fs.close();
  }

  function setCounters(device: SimDevice, usage: { extents: number; diskBlocks: number; logicalBlocks: number }): void {
    const { store } = openVolume(device, { edges: fsEdges });
    store.setCompressedUsage(usage);
    store.commit({ force: true });
    store.close();
  }

  it("too high: found, and set from the walk", () => {
    damageAndRepair(
      (device) => setCounters(device, { extents: 99, diskBlocks: 7, logicalBlocks: 1 }),
      /^superblock: compressed extent counters say 99 extents, 7 blocks on disk, 1 decompressed but the walk found 6 extents, /,
    );
  });

  it("zero: found, and set from the walk", () => {
    const img = image();
    const damaged = img.device.reopen();
    setCounters(damaged, { extents: 0, diskBlocks: 0, logicalBlocks: 0 });
    let device = damaged.reopen();
    const report = checkFilesystem(device, { verifyData: true });
    expect(report.problems).toHaveLength(1);
    expect(report.problems[0]).toMatch(/^superblock: compressed extent counters say 0 extents, 0 blocks on disk, 0 decompressed but the walk found 5 extents/);
    repairFilesystem(device, report);
    device = device.reopen();
    expectFsClean(device);
    const fs = GroveFs.open(device);
    expect(fs.info().compressed.extents).toBe(5);
    expect(fs.info().compressed.logicalBytes).toBe(fSize + U);
    fs.close();
  });

  it("a missing lz4 feature bit: found, and set", () => {
    // On a volume whose default is no compression (with lz4 the default, a slot without the bit does not decode).
    damageAndRepair(
      (device) => {
        const sb = readSuperblock(device);
        expect(sb.features & featureCompressLz4).toBe(featureCompressLz4);
        device.write(slotForGeneration(sb.generation), encodeSuperblock({ ...sb, features: sb.features & ~featureCompressLz4 }));
      },
      /^superblock: 6 compressed extents exist but the lz4 feature is not set$/,
      "none",
    );
  });

  it("too low: the volume still frees compressed extents and commits (the checker reports them, repair sets them)", () => {
    // Counters that undercount (damage the checker reports) must not make a later delete fail the commit:
    // neither one record by one (/f's records are inline in its inode) nor a whole extent tree (/big's).
    const img = image((fs) => writeFile(fs, "/big", compressibleBytes(16 * U, 3)));
    const damaged = img.device.reopen();
    setCounters(damaged, { extents: 0, diskBlocks: 0, logicalBlocks: 0 });
    let device = damaged.reopen();
    const fs = GroveFs.open(device);
    fs.unlink("/f");
    fs.sync();
    fs.unlink("/big");
    fs.sync();
    writeFile(fs, "/h", Buffer.from("still writable"));
    fs.close();
    device = device.reopen();
    const report = checkFilesystem(device, { verifyData: true });
    expect(report.problems).toHaveLength(1);
    expect(report.problems[0]).toMatch(/^superblock: compressed extent counters say/);
    repairFilesystem(device, report);
    device = device.reopen();
    expectFsClean(device);
    const again = GroveFs.open(device);
    expect(again.info().compressed.extents).toBe(1);
    expectBytes(readFile(again, "/g"), img.g);
    again.close();
  });
});
