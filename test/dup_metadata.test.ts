/**
 * Duplicate metadata (mkfs --metadata dup, kvstore featureDupMetadata): the
 * corruption matrix and crash cases with two copies of every tree node.
 *
 * One base volume (on a SimDevice) holds every kind of node: the root tree,
 * both free-space trees, the refcount tree, the subvolume table, inode trees
 * of the default subvolume, a snapshot and a writable clone, and per-inode
 * trees (a directory's entries, a file's extents), at levels 0 and 1. Then,
 * on a fresh copy each time:
 * - one byte of one copy of a node of each kind, in each header field and in
 *   its items, is flipped, or a whole copy is overwritten with random bytes:
 *   every file reads back right (the read falls back to the twin), the
 *   checker reports the damaged copy as repairable, fsck's repair rewrites
 *   it (corrected), and a second check is clean;
 * - a damaged copy found by a read is rewritten by the next commit, without fsck;
 * - both copies destroyed: the read fails with EIO, as with single metadata;
 * - a commit that lost the write of one copy of a node (a torn pair) loses
 *   nothing: the committed state reads whole from the other copy.
 */
import { describe, expect, it } from "vitest";
import { GroveFs, checkFilesystem, repairFilesystem, type FileSystemOps } from "../fs/index.js";
import { Prng, SimDevice, blockSizeBytes, readSuperblock } from "../kvstore/index.js";
import { checkSpace, formatVolume, openVolume } from "../alloc/index.js";
import { O_RDWR, expectFsClean, pattern, readFile, root, testClock, writeFile } from "./fs_helpers.js";
import { reachableNodes, type NodeInfo } from "./helpers.js";

const deviceBlocks = 8192;
const nodeLbaOffset = 8;
/** One offset in each header field of a node (kvstore/node.ts), one in the slot array, and the last byte (inside its first item). */
const headerFieldOffsets = [0, 4, 8, 16, 24, 32, 33, 34, 36, 38, 40, blockSizeBytes - 1];

interface Base {
  image: Map<number, Uint8Array>;
  files: Map<string, Buffer>;
  cloneFiles: Map<string, Buffer>;
  /** Each node once: its first copy's LBA and its second's. */
  pairs: Array<NodeInfo & { mirror: number }>;
}

function kindOf(owner: number, level: number): string {
  const tree = owner >= 2 ** 32 ? "per-inode" : owner >= 256 ? "subvolume" : `tree ${owner}`;
  return `${tree}, level ${level}`;
}

function buildBase(): Base {
  const clock = testClock();
  let device = new SimDevice(deviceBlocks);
  GroveFs.format(device, { clock, metadata: "dup" });
  device = device.reopen();
  let g = GroveFs.open(device, { clock });
  const files = new Map<string, Buffer>();
  const put = (fs: GroveFs, path: string, data: Buffer, into: Map<string, Buffer>): void => {
    writeFile(fs, path, data);
    into.set(path, data);
  };
  g.mkdir("/dir", 0o755, root);
  // Enough entries for /dir's entries and the inode tree to grow internal nodes.
  for (let i = 0; i < 250; i++) put(g, `/dir/file-${String(i).padStart(3, "0")}`, pattern(i % 25 === 0 ? 9000 : 60, i), files);
  // Many small extents: the file's extent tree gets an internal level.
  g.mkdir("/frag", 0o755, root);
  const fh = g.create("/frag/many", 0o644, O_RDWR, root);
  const many = Buffer.alloc(399 * blockSizeBytes);
  for (let b = 0; b < 400; b += 2) {
    const block = pattern(blockSizeBytes, b);
    block.copy(many, b * blockSizeBytes);
    g.write(fh, block, blockSizeBytes, b * blockSizeBytes);
    g.fsync(fh, false);
  }
  g.release(fh);
  files.set("/frag/many", many);
  put(g, "/small", pattern(100, 2), files);
  g.createSubvolume("snap", { readOnly: true });
  g.createSubvolume("clone", { readOnly: false });
  put(g, "/dir/file-007", pattern(3 * blockSizeBytes, 9), files);
  g.close();
  device = device.reopen();
  g = GroveFs.open(device, { clock, subvolume: "clone" });
  const cloneFiles = new Map<string, Buffer>();
  for (let i = 0; i < 30; i++) put(g, `/dir/clone-${i}`, pattern(30, i), cloneFiles);
  g.close();
  device = device.reopen();
  const report = expectFsClean(device);
  const nodes = reachableNodes(device, report.space.forest);
  const block = Buffer.alloc(blockSizeBytes);
  const firsts = new Map<number, NodeInfo>();
  const seconds = new Map<number, number>();
  for (const node of nodes) {
    device.read(node.lba, block);
    const headerLba = Number(block.readBigUInt64LE(nodeLbaOffset));
    if (headerLba === node.lba) firsts.set(node.lba, node);
    else seconds.set(headerLba, node.lba);
  }
  const pairs = [...firsts.values()].map((n) => ({ ...n, mirror: seconds.get(n.lba) ?? 0 }));
  return { image: device.snapshotLive(), files, cloneFiles, pairs };
}

function copyOf(base: Base): SimDevice {
  return SimDevice.fromDurable(base.image, deviceBlocks);
}

/** Writes `bytes` over block `lba` of `device`, durably (the damage). */
function damage(device: SimDevice, lba: number, change: (block: Buffer) => void): void {
  const block = Buffer.alloc(blockSizeBytes);
  device.read(lba, block);
  change(block);
  device.write(lba, block);
  device.flush();
}

/** Every file of the default subvolume, its snapshot and the clone reads back as written (read-only opens: nothing is healed). */
function expectAllFiles(device: SimDevice, base: Base): void {
  const g = GroveFs.open(device, { readOnly: true });
  const check = (fs: FileSystemOps, files: Map<string, Buffer>): void => {
    for (const [path, data] of files) expect(readFile(fs, path).equals(data), path).toBe(true);
  };
  check(g, base.files);
  check(g.snapshotView("snap"), new Map([...base.files].filter(([p]) => p !== "/dir/file-007")));
  g.close();
  const clone = GroveFs.open(device.reopen(), { subvolume: "clone", readOnly: true });
  check(clone, base.cloneFiles);
  clone.close();
}

/** A copy of the base image with `change` made to block `lba`, durably (the damage). */
function damaged(lba: number, change: (block: Buffer) => void): Map<number, Uint8Array> {
  const device = copyOf(base);
  damage(device, lba, change);
  return device.snapshotLive();
}

/** Reads are transparent on one copy of the damaged image; fsck corrects another. */
function expectTransparentAndCorrected(image: Map<number, Uint8Array>, bad: number): void {
  expectAllFiles(SimDevice.fromDurable(image, deviceBlocks), base);
  expectCorrected(SimDevice.fromDurable(image, deviceBlocks), bad);
}

/** fsck: the damage is found and all of it repairable; the repair corrects it; a second check is clean. */
function expectCorrected(device: SimDevice, bad: number): SimDevice {
  // Data checksums are not what this damage is about: the walk of the metadata is.
  const first = checkFilesystem(device);
  expect(first.problems.length).toBeGreaterThan(0);
  expect(first.walkComplete).toBe(true);
  expect(first.space.forest.copyRepairs.map((r) => r.bad)).toContain(bad);
  const repair = repairFilesystem(device, first);
  expect(repair.remaining).toEqual([]);
  expect(repair.fixed.some((line) => line.startsWith(`block ${bad}: rewritten`))).toBe(true);
  const after = device.reopen();
  expect(checkFilesystem(after).problems).toEqual([]);
  return after;
}

const base = buildBase();
const kinds = new Map<string, Array<NodeInfo & { mirror: number }>>();
for (const pair of base.pairs) {
  const kind = kindOf(pair.owner, pair.level);
  kinds.set(kind, [...(kinds.get(kind) ?? []), pair]);
}

describe("duplicate metadata", () => {
  it("formats with two copies of every node, an eighth of the volume apart, and the checkers agree", () => {
    const device = copyOf(base);
    expect(readSuperblock(device).rootMirror).not.toBe(0);
    const report = expectFsClean(device);
    expect(report.space.forest.copyRepairs).toEqual([]);
    for (const pair of base.pairs) {
      expect(pair.mirror, `node ${pair.lba} has a second copy`).not.toBe(0);
      expect(Math.abs(pair.mirror - pair.lba)).toBeGreaterThanOrEqual(deviceBlocks / 8);
    }
    // Every kind the matrix claims to cover is there.
    for (const kind of ["tree 1, level 0", "tree 2, level 0", "tree 3, level 0", "tree 4, level 0", "tree 5, level 0", "subvolume, level 0", "subvolume, level 1", "per-inode, level 0", "per-inode, level 1"]) {
      expect([...kinds.keys()]).toContain(kind);
    }
    const g = GroveFs.open(device, { readOnly: true });
    expect(g.info().metadata).toBe("dup");
    g.close();
  });

  it("an older single-metadata volume stays single: no second copies, nothing else changes", () => {
    let device = new SimDevice(4096);
    GroveFs.format(device, { metadata: "single" });
    device = device.reopen();
    const g = GroveFs.open(device);
    writeFile(g, "/a", pattern(5000, 1));
    expect(g.info().metadata).toBe("single");
    g.close();
    device = device.reopen();
    expect(readSuperblock(device).rootMirror).toBe(0);
    const nodes = reachableNodes(device, expectFsClean(device).space.forest);
    const block = Buffer.alloc(blockSizeBytes);
    for (const node of nodes) {
      device.read(node.lba, block);
      expect(Number(block.readBigUInt64LE(nodeLbaOffset))).toBe(node.lba);
    }
  });

  for (const [kind, pairs] of kinds) {
    it(`${kind}: one flipped byte in any field of either copy reads back right; fsck corrects it (1), then is clean (0)`, () => {
      const pair = pairs[pairs.length >> 1]!;
      headerFieldOffsets.forEach((offset, i) => {
        const bad = i % 2 === 0 ? pair.lba : pair.mirror;
        const image = damaged(bad, (block) => {
          block[offset]! ^= 0x5a;
        });
        expectTransparentAndCorrected(image, bad);
      });
    });

    it(`${kind}: a copy overwritten with random bytes reads back right; fsck corrects it`, () => {
      const prng = new Prng(pairs.length);
      for (const pair of [pairs[0]!, pairs[pairs.length - 1]!]) {
        for (const bad of [pair.lba, pair.mirror]) {
          expectTransparentAndCorrected(damaged(bad, (block) => block.set(prng.bytes(blockSizeBytes))), bad);
        }
      }
    });
  }

  it("a damaged copy found by a read is rewritten in place by the next commit, and counted", () => {
    const device = copyOf(base);
    const leaf = kinds.get("per-inode, level 0")![0]!;
    damage(device, leaf.lba, (block) => {
      block[100]! ^= 1;
    });
    const g = GroveFs.open(device);
    const notes: string[] = [];
    g.store.onRepair = (note) => notes.push(note);
    for (const [path, data] of base.files) expect(readFile(g, path).equals(data), path).toBe(true);
    const found = g.info().metadataRepairs.found;
    expect(found).toBeGreaterThan(0);
    g.sync();
    expect(g.info().metadataRepairs).toEqual({ found, rewritten: found });
    expect(notes.some((n) => n.startsWith(`block ${leaf.lba} is damaged`))).toBe(true);
    expect(notes.some((n) => n === `block ${leaf.lba} rewritten from its copy`)).toBe(true);
    g.close();
    expectFsClean(device.reopen());
  });

  it("both copies destroyed: the same EIO as single metadata, and fsck leaves it uncorrected", () => {
    const device = copyOf(base);
    const leaf = kinds.get("per-inode, level 0")![0]!;
    for (const lba of [leaf.lba, leaf.mirror]) damage(device, lba, (block) => block.fill(0xee));
    const g = GroveFs.open(device);
    let failures = 0;
    for (const path of base.files.keys()) {
      try {
        readFile(g, path);
      } catch (error) {
        expect((error as { code?: string }).code).toBe("EIO");
        failures++;
      }
    }
    try {
      g.readdir("/dir");
    } catch (error) {
      expect((error as { code?: string }).code).toBe("EIO");
      failures++;
    }
    expect(failures).toBeGreaterThan(0);
    g.close();
    const report = checkFilesystem(device.reopen(), { verifyData: true });
    expect(report.problems.some((p) => p.includes(`block ${leaf.lba}`) && p.includes("second copy"))).toBe(true);
    expect(report.walkComplete).toBe(false);
  });
});

describe("duplicate metadata under crashes", () => {
  /** A kvstore volume with one tree; `keys` puts committed, the last commit's writes to `lost` blocks dropped. */
  function tornCommit(seed: number, loseFirst: boolean): void {
    const prng = new Prng(seed);
    let device = new SimDevice(4096);
    let { store } = formatVolume(device, { dupMetadata: true });
    const tree = store.createTree(300);
    const model = new Map<string, Buffer>();
    for (let round = 0; round < 6; round++) {
      for (let i = 0; i < 300; i++) {
        const key = Buffer.from(`k${prng.between(0, 2000)}`);
        const value = prng.bytes(prng.between(1, 60));
        tree.put(key, value);
        model.set(key.toString("hex"), value);
      }
      if (round < 5) store.commit();
    }
    // The last commit: one copy of every other node written is lost, as a device that dropped those writes.
    const lost = new Set<number>();
    const lose = (lba: number, mirror: number): void => {
      if (prng.chance(0.5)) lost.add(loseFirst ? lba : mirror);
    };
    const nodes = (store as unknown as { cache: { dirtyNodes(): Array<{ lba: number; mirror: number }> } }).cache.dirtyNodes();
    for (const node of nodes) lose(node.lba, node.mirror);
    device.writeFault = (lba) => (lost.has(lba) ? "lose" : "keep");
    store.commit();
    device.writeFault = null;
    store.close();
    device = device.reopen();
    ({ store } = openVolume(device, { readOnly: true }));
    const reopened = store.openTree(300);
    const seen = new Map<string, Buffer>();
    for (const [key, value] of reopened.range()) seen.set(key.toString("hex"), value);
    expect(seen).toEqual(model);
    store.close();
    const report = checkSpace(device.reopen());
    const repairable = new Set(report.forest.copyRepairs.map((r) => r.bad));
    for (const lba of repairable) expect(lost.has(lba), `block ${lba} was one of the lost writes`).toBe(true);
    expect(report.problems.filter((p) => !report.forest.copyRepairs.some((r) => r.problem === p))).toEqual([]);
  }

  for (const seed of [1, 2, 3]) {
    it(`seed ${seed}: a commit that lost one copy of some nodes (first copies) keeps every key`, () => tornCommit(seed, true));
    it(`seed ${seed}: a commit that lost one copy of some nodes (second copies) keeps every key`, () => tornCommit(seed, false));
  }

  it("a crash at every write and flush of a commit leaves the old or the new state, and both copies valid", () => {
    for (let point = 1; point < 400; point += 7) {
      let device = new SimDevice(4096);
      let { store } = formatVolume(device, { dupMetadata: true });
      const tree = store.createTree(300);
      for (let i = 0; i < 500; i++) tree.put(Buffer.from(`a${i}`), pattern(40, i));
      store.commit();
      for (let i = 0; i < 500; i += 2) tree.put(Buffer.from(`a${i}`), pattern(50, -i));
      device.crashAtOperation = device.operations + point;
      let committed = true;
      try {
        store.commit();
      } catch {
        committed = false;
      }
      const prng = new Prng(point);
      device = device.recover(prng);
      ({ store } = openVolume(device, { readOnly: true }));
      const t = store.openTree(300);
      const newer = t.get(Buffer.from("a0"))!.length === 50;
      if (committed) expect(newer).toBe(true);
      for (let i = 0; i < 500; i++) expect(t.get(Buffer.from(`a${i}`))).toEqual(newer && i % 2 === 0 ? pattern(50, -i) : pattern(40, i));
      store.close();
      const report = checkSpace(device.reopen());
      expect(report.problems, `crash point ${point}`).toEqual([]);
    }
  });
});
