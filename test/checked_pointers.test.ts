/**
 * Checked pointers: every child pointer, root-tree record and the superblock
 * record the generation and crc of what they point to, so a lost, stale or
 * misdirected write is a corruption error that says so, never old data
 * served as current. And an image written before checked pointers still
 * opens, reads, and migrates as it is rewritten.
 *
 * Lost writes are made by SimDevice's `writeFault`: the node writes of one
 * commit are acknowledged but lost, or land on another (stale) block, while
 * its superblock is kept.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import * as zlib from "node:zlib";
import { dir as tmpDir, type DirectoryResult } from "tmp-promise";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { checkSpace, formatVolume, openVolume } from "../alloc/index.js";
import { checkFilesystem, GroveFs } from "../fs/index.js";
import {
  type BlockDevice,
  CorruptionError,
  FileDevice,
  Prng,
  SimDevice,
  blockSizeBytes,
  checkForest,
  readSuperblock,
} from "../kvstore/index.js";
import { featureCheckedPointers } from "../kvstore/superblock.js";
import { nodeMagic } from "../kvstore/node.js";
import { repoRoot, runGrovefs } from "./cli_helpers.js";
import { FsHarness, pattern, readFile, root, writeFile } from "./fs_helpers.js";
import { type ForestModel, cloneForest, expectClean, expectForestEquals, seeds, withSeed } from "./helpers.js";

const testFile = "test/checked_pointers.test.ts";
const namesLostWrite = /lost|stale|misdirected/;

let tmp: DirectoryResult;
beforeEach(async () => {
  tmp = await tmpDir({ unsafeCleanup: true });
});
afterEach(async () => {
  await tmp.cleanup();
});

/** A committed volume of four multi-level trees, as a durable image, and its model. */
function buildBase(): { image: Map<number, Uint8Array>; model: ForestModel; blocks: number } {
  const blocks = 8192;
  const device = new SimDevice(blocks);
  const { store } = formatVolume(device);
  const prng = new Prng(7);
  const model: ForestModel = new Map();
  for (const id of [256, 257, 258, 259]) {
    const tree = store.createTree(id);
    const treeModel = new Map<string, Buffer>();
    for (let i = 0; i < 1200; i++) {
      const key = prng.bytes(prng.between(4, 24));
      const value = prng.bytes(prng.between(0, 80));
      tree.put(key, value);
      treeModel.set(key.toString("hex"), value);
    }
    model.set(id, treeModel);
    store.commit();
  }
  store.close();
  return { image: device.reopen().snapshotLive(), model, blocks };
}

/** Random puts and deletes in the running transaction, applied to `model` too. */
function mutate(store: ReturnType<typeof openVolume>["store"], model: ForestModel, prng: Prng): void {
  const ops = prng.between(1, 200);
  for (let n = 0; n < ops; n++) {
    const id = 256 + prng.between(0, 3);
    const tree = store.openTree(id);
    const treeModel = model.get(id)!;
    const keys = [...treeModel.keys()];
    if (prng.between(0, 2) === 0 && keys.length > 0) {
      const key = keys[prng.between(0, keys.length - 1)]!;
      tree.delete(Buffer.from(key, "hex"));
      treeModel.delete(key);
    } else {
      const key = prng.between(0, 1) === 0 && keys.length > 0 ? Buffer.from(keys[prng.between(0, keys.length - 1)]!, "hex") : prng.bytes(prng.between(4, 24));
      const value = prng.bytes(prng.between(0, 80));
      tree.put(key, value);
      treeModel.set(key.toString("hex"), value);
    }
  }
}

type FaultMode = "lose all" | "lose one" | "lose some" | "redirect one" | "redirect some";
const faultModes: FaultMode[] = ["lose all", "lose one", "lose some", "redirect one", "redirect some"];

/**
 * Arms `device` so that node writes of the next commit are lost or land on a
 * stale block (one that held a node of the base image), superblocks kept.
 * Returns the list of writes it harmed.
 */
function armFault(device: SimDevice, mode: FaultMode, prng: Prng, staleBlocks: number[]): number[] {
  const harmed: number[] = [];
  const victim = prng.between(0, 2);
  let ordinal = 0;
  device.writeFault = (lba) => {
    if (lba < 2) return "keep";
    const n = ordinal++;
    const hit = mode.endsWith("one") ? n === victim : mode === "lose all" || n === victim || prng.between(0, 3) === 0;
    if (!hit) return "keep";
    harmed.push(lba);
    if (mode.startsWith("lose")) return "lose";
    let target = staleBlocks[prng.between(0, staleBlocks.length - 1)]!;
    if (target === lba) target = staleBlocks.find((b) => b !== lba)!;
    return { redirectTo: target };
  };
  return harmed;
}

/** Opens the volume and reads every tree: the new commit exactly, or a corruption error naming the lost write. */
function readBack(device: SimDevice, model: ForestModel): "read" | "refused" {
  let store;
  try {
    store = openVolume(device).store;
    for (const [id, treeModel] of model) {
      const tree = store.openTree(id);
      const found = new Map<string, Buffer>();
      for (const [key, value] of tree.range()) found.set(key.toString("hex"), value);
      // Old data served as current is the failure this suite exists for.
      expect(found.size, `tree ${id}: item count`).toBe(treeModel.size);
      for (const [key, value] of treeModel) {
        const got = found.get(key);
        if (got === undefined || !got.equals(value)) throw new Error(`tree ${id}: key ${key} reads back old data`);
      }
    }
    expectForestEquals(store, model);
    return "read";
  } catch (error) {
    if (!(error instanceof CorruptionError)) throw error;
    expect(error.message).toMatch(namesLostWrite);
    return "refused";
  }
}

describe("lost, stale and misdirected node writes", () => {
  const base = buildBase();
  const staleBlocks = [...base.image.keys()].filter((lba) => lba >= 2);
  const stats = { cases: 0, refused: 0, harmed: 0 };

  for (const seed of seeds(Array.from({ length: 60 }, (_, i) => 1000 + i))) {
    it(`seed ${seed}: one commit's node writes are harmed, its superblock kept`, () => {
      withSeed(seed, testFile, () => {
        const prng = new Prng(seed);
        const mode = faultModes[seed % faultModes.length]!;
        const device = SimDevice.fromDurable(base.image, base.blocks);
        const { store } = openVolume(device);
        const model = cloneForest(base.model);
        mutate(store, model, prng);
        const harmed = armFault(device, mode, prng, staleBlocks);
        store.commit();
        store.close();
        device.writeFault = null;
        expect(harmed.length, `${mode}: the fault hit a node write`).toBeGreaterThan(0);
        const after = device.reopen();
        expect(readSuperblock(after).generation).toBe(readSuperblock(SimDevice.fromDurable(base.image, base.blocks)).generation + 1);
        const outcome = readBack(after, model);
        // Every node a commit writes is reachable from its superblock, so the checker always finds the harm.
        const problems = checkSpace(after).problems;
        expect(problems.length, `${mode}: the checker finds the harmed write`).toBeGreaterThan(0);
        expect(problems.join("\n")).toMatch(namesLostWrite);
        stats.cases++;
        stats.harmed += harmed.length;
        if (outcome === "refused") stats.refused++;
      });
    }, 120_000);
  }

  it("most harmed commits are refused on read, not only by the checker", () => {
    console.log(`lost-write cases: ${stats.cases}, writes harmed ${stats.harmed}, refused on read ${stats.refused}`);
    if (stats.cases >= 20) expect(stats.refused).toBeGreaterThan(stats.cases / 2);
  });

  it("names the generation the parent expects", () => {
    const device = SimDevice.fromDurable(base.image, base.blocks);
    const { store } = openVolume(device);
    const tree = store.openTree(256);
    tree.put(Buffer.from("a key of this commit"), Buffer.from("new"));
    const generation = store.generation;
    const lost: number[] = [];
    device.writeFault = (lba) => {
      if (lba < 2) return "keep";
      lost.push(lba);
      return "lose";
    };
    store.commit();
    store.close();
    const after = device.reopen();
    // The old root tree's root still holds a valid node at its LBA only if the block was reused; either way it names the loss.
    const message = (() => {
      try {
        openVolume(after).store.openTree(256).get(Buffer.from("a key of this commit"));
      } catch (error) {
        return (error as Error).message;
      }
      return "";
    })();
    expect(message).toMatch(new RegExp(`its parent expects (${generation}|a node of generation ${generation})`));
    expect(message).toMatch(/lost/);
    expect(lost.length).toBeGreaterThan(2);
  });
});

describe("lost writes through the filesystem", () => {
  it("an fsynced file whose commit's node writes were lost is an error on read, in the checker and in fsck", async () => {
    const h = new FsHarness(8192);
    h.fs.mkdir("/d", 0o755, root);
    for (let i = 0; i < 50; i++) writeFile(h.fs, `/d/old-${i}`, pattern(3000, i));
    h.fs.sync();
    writeFile(h.fs, "/d/old-7", pattern(5000, 1007));
    writeFile(h.fs, "/d/new", pattern(2000, 99));
    h.device.writeFault = (lba) => (lba < 2 ? "keep" : "lose");
    h.fs.sync();
    h.device.writeFault = null;
    h.fs.close();
    const device = h.device.reopen();
    let served: Buffer | null = null;
    try {
      const g = GroveFs.open(device);
      served = readFile(g, "/d/old-7");
      g.close();
    } catch (error) {
      expect((error as Error).message).toMatch(namesLostWrite);
    }
    // The file must never read back its old contents as if current.
    if (served !== null) expect(served.equals(pattern(5000, 1007))).toBe(true);
    const report = checkFilesystem(device.reopen(), { verifyData: true });
    expect(report.problems.join("\n")).toMatch(namesLostWrite);
    const image = path.join(tmp.path, "lost.img");
    writeImage(device.reopen(), image);
    const r = await runGrovefs(["fsck", "-n", image], { GROVEFS_RUN_DIR: path.join(tmp.path, "run") });
    expect(r.code, r.stdout + r.stderr).toBe(4);
    expect(r.stdout + r.stderr).toMatch(/lost or stale write|a lost write/);
  }, 120_000);
});

/** Writes a SimDevice's live state to an image file. */
function writeImage(device: SimDevice, image: string): void {
  const fd = fs.openSync(image, "w");
  fs.ftruncateSync(fd, device.blockCount * blockSizeBytes);
  for (const [lba, data] of device.snapshotLive()) fs.writeSync(fd, data, 0, data.length, lba * blockSizeBytes);
  fs.closeSync(fd);
}

/**
 * test/fixtures/legacy_image.img.gz was written by grovefs before checked
 * pointers (commit 9d4db69): 8 directories of 400 files each, file i holding
 * pattern(50 + (i * 37) % 500, i), then a read-only snapshot "snap", closed
 * cleanly. Its internal nodes have bare pointers and its root-tree records
 * are the 24-byte form.
 */
function legacyImage(): string {
  const image = path.join(tmp.path, "legacy.img");
  fs.writeFileSync(image, zlib.gunzipSync(fs.readFileSync(path.join(repoRoot, "test", "fixtures", "legacy_image.img.gz"))));
  return image;
}

function legacyContent(i: number): Buffer {
  return pattern(50 + ((i * 37) % 500), i);
}

/** Internal nodes reachable in the committed forest (of the trees `owners` when given), by pointer form. */
function internalNodes(device: BlockDevice, owners?: number[]): { bare: number; checked: number } {
  const forest = checkForest(device);
  const counts = { bare: 0, checked: 0 };
  const buf = Buffer.alloc(blockSizeBytes);
  for (let lba = 2; lba < forest.deviceBlocks; lba++) {
    if (!forest.reachable.get(lba)) continue;
    device.read(lba, buf);
    if (buf.readUInt32LE(0) !== nodeMagic || buf[32] === 0) continue;
    if (owners !== undefined && !owners.includes(Number(buf.readBigUInt64LE(24)))) continue;
    if (buf[33] === 0) counts.bare++;
    else counts.checked++;
  }
  return counts;
}

describe("an image written before checked pointers", () => {
  it("opens, reads, passes the checker, and migrates as it is rewritten", () => {
    const image = legacyImage();
    const before = internalNodes(FileDevice.open(image, { readOnly: true }));
    expect(before.checked).toBe(0);
    expect(before.bare).toBeGreaterThan(2);
    expect(readSuperblock(FileDevice.open(image, { readOnly: true })).features & featureCheckedPointers).toBe(0n);
    expect(checkFilesystem(FileDevice.open(image, { readOnly: true }), { verifyData: true }).problems).toEqual([]);

    let g = GroveFs.open(FileDevice.open(image));
    const model = new Map<string, Buffer>();
    for (let d = 0; d < 8; d++) {
      for (let f = 0; f < 400; f++) {
        const name = `/d${d}/file-${String(f).padStart(4, "0")}`;
        const i = d * 400 + f;
        expect(readFile(g, name).equals(legacyContent(i)), name).toBe(true);
        model.set(name, legacyContent(i));
      }
    }
    expect(readFile(g.snapshotView("snap"), "/d3/file-0042").equals(legacyContent(3 * 400 + 42))).toBe(true);
    // Rewrite a good part of it: changed files, deleted files, a new directory.
    for (let i = 0; i < 3200; i += 3) {
      const name = `/d${Math.floor(i / 400)}/file-${String(i % 400).padStart(4, "0")}`;
      if (i % 5 === 0) {
        g.unlink(name);
        model.delete(name);
      } else {
        const data = pattern(100 + (i % 700), 50_000 + i);
        writeFile(g, name, data);
        model.set(name, data);
      }
    }
    g.mkdir("/fresh", 0o755, root);
    for (let i = 0; i < 600; i++) {
      const data = pattern(80 + i, 90_000 + i);
      writeFile(g, `/fresh/f${i}`, data);
      model.set(`/fresh/f${i}`, data);
    }
    g.close();

    const device = FileDevice.open(image);
    expect(readSuperblock(device).features & featureCheckedPointers).toBe(featureCheckedPointers);
    const after = internalNodes(device);
    expect(after.checked).toBeGreaterThan(0);
    // Bare nodes the snapshot still shares with the rewritten tree stay as they are.
    expect(after.bare).toBeLessThanOrEqual(before.bare);
    expect(checkFilesystem(device, { verifyData: true }).problems).toEqual([]);
    g = GroveFs.open(device);
    for (const [name, data] of model) expect(readFile(g, name).equals(data), name).toBe(true);
    // The snapshot still holds the old contents, through nodes it shares with the rewritten tree.
    const snap = g.snapshotView("snap");
    for (let i = 0; i < 3200; i += 97) {
      const name = `/d${Math.floor(i / 400)}/file-${String(i % 400).padStart(4, "0")}`;
      expect(readFile(snap, name).equals(legacyContent(i)), `snap:${name}`).toBe(true);
    }
    g.close();
  }, 120_000);
});

/**
 * test/fixtures/legacy_kvstore.img.gz was written before checked pointers
 * (commit 9d4db69) through alloc's formatVolume on a 4096-block SimDevice:
 * trees 256 and 257, each with the 12000 keys `key-<id>-<n>` (n zero-padded
 * to 6 digits, inserted in the order (i * 7919) % 12000) holding `v<i % 10>`,
 * and tree 258 with 3000 keys `key-258-<n>-xxx…` (180 x), likewise. Trees
 * 256 and 257 are each a root of bare pointers over some 120 leaves, too many
 * to fit one node once widened, so the first change splits it; tree 258 has
 * two levels of bare internal nodes, so deletes meet bare siblings.
 */
function legacyKvstore(): { device: SimDevice; model: ForestModel } {
  const raw = zlib.gunzipSync(fs.readFileSync(path.join(repoRoot, "test", "fixtures", "legacy_kvstore.img.gz")));
  const blocks = new Map<number, Uint8Array>();
  for (let lba = 0; lba < raw.length / blockSizeBytes; lba++) {
    const block = raw.subarray(lba * blockSizeBytes, (lba + 1) * blockSizeBytes);
    if (block.some((b) => b !== 0)) blocks.set(lba, new Uint8Array(block));
  }
  const model: ForestModel = new Map();
  for (const id of [256, 257]) {
    const treeModel = new Map<string, Buffer>();
    for (let i = 0; i < 12000; i++) {
      const key = Buffer.from(`key-${id}-${String((i * 7919) % 12000).padStart(6, "0")}`);
      treeModel.set(key.toString("hex"), Buffer.from(`v${i % 10}`));
    }
    model.set(id, treeModel);
  }
  const deep = new Map<string, Buffer>();
  for (let i = 0; i < 3000; i++) {
    const key = Buffer.from(`key-258-${String((i * 7919) % 3000).padStart(6, "0")}-${"x".repeat(180)}`);
    deep.set(key.toString("hex"), Buffer.from(`v${i % 10}`));
  }
  model.set(258, deep);
  return { device: SimDevice.fromDurable(blocks, raw.length / blockSizeBytes), model };
}

describe("a kvstore written before checked pointers", () => {
  for (const seed of seeds([31, 32])) {
    it(`seed ${seed}: deletes and inserts over bare nodes, then every path rewritten: all checked, nothing lost`, () => {
      withSeed(seed, testFile, () => {
        const { device, model } = legacyKvstore();
        const before = internalNodes(device, [256, 257, 258]);
        expect(before.checked).toBe(0);
        expect(before.bare).toBeGreaterThan(10);
        let volume = openVolume(device);
        expectForestEquals(volume.store, model);
        const prng = new Prng(seed);
        // A run of deletes empties one region of tree 258, whose nodes then merge with or refill bare neighbours.
        const deep = volume.store.openTree(258);
        const deepModel = model.get(258)!;
        const start = prng.between(0, 1500);
        for (const key of [...deepModel.keys()].sort().slice(start, start + 700)) {
          deep.delete(Buffer.from(key, "hex"));
          deepModel.delete(key);
        }
        volume.store.commit();
        expectForestEquals(volume.store, model);
        expectClean(device, volume.space);
        // Random deletes merge and refill; inserts split widened nodes.
        for (let round = 0; round < 6; round++) {
          for (const [id, treeModel] of model) {
            const tree = volume.store.openTree(id);
            for (const key of [...treeModel.keys()]) {
              if (prng.between(0, 9) < 3) {
                tree.delete(Buffer.from(key, "hex"));
                treeModel.delete(key);
              }
            }
            for (let i = 0; i < 500; i++) {
              const key = Buffer.from(`new-${round}-${prng.between(0, 99999)}`);
              const value = prng.bytes(prng.between(0, 60));
              tree.put(key, value);
              treeModel.set(key.toString("hex"), value);
            }
          }
          volume.store.commit();
          expectForestEquals(volume.store, model);
          expectClean(device, volume.space);
        }
        for (const [id, treeModel] of model) {
          const tree = volume.store.openTree(id);
          for (const key of treeModel.keys()) tree.touch(Buffer.from(key, "hex"));
        }
        volume.store.commit();
        volume.store.close();
        const reopened = device.reopen();
        expect(internalNodes(reopened, [256, 257, 258]).bare).toBe(0);
        volume = openVolume(reopened);
        expectForestEquals(volume.store, model);
        expectClean(reopened, volume.space);
        volume.store.close();
      });
    }, 120_000);
  }
});
