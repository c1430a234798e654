/**
 * Corruption: any single changed byte of any node is a corruption error on
 * read, never a crash, a hang or wrong data; a damaged superblock slot falls
 * back to the other; bad devices and images get clear errors.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import {
  CorruptionError,
  FileDevice,
  GroveError,
  Prng,
  SimDevice,
  checkForest,
  deviceSizeMinBytes,
  readSuperblock,
  reservedExtents,
} from "../kvstore/index.js";
import { decodeNode } from "../kvstore/node.js";
import { checkSpace, formatVolume, openVolume } from "../alloc/index.js";
import { ForestModel, expectForestEquals } from "./helpers.js";

/** A committed volume with multi-level trees: the root tree, both free-space trees and two user trees. */
function buildVolume(): { device: SimDevice; model: ForestModel } {
  const device = new SimDevice(8192);
  const { store } = formatVolume(device);
  const prng = new Prng(42);
  const model: ForestModel = new Map();
  for (const id of [256, 257]) {
    const tree = store.createTree(id);
    const treeModel = new Map<string, Buffer>();
    for (let i = 0; i < 1500; i++) {
      const key = prng.bytes(prng.between(4, 40));
      const value = prng.bytes(prng.between(0, 120));
      tree.put(key, value);
      treeModel.set(key.toString("hex"), value);
    }
    model.set(id, treeModel);
  }
  // Scattered deletes fragment free space, so the free-space trees have real content.
  store.commit();
  for (const [id, treeModel] of model) {
    const tree = store.openTree(id);
    let i = 0;
    for (const key of [...treeModel.keys()]) {
      if (i++ % 3 === 0) {
        tree.delete(Buffer.from(key, "hex"));
        treeModel.delete(key);
      }
    }
  }
  store.commit();
  store.close();
  return { device: device.reopen(), model };
}

/** Every reachable node with the tree and level it belongs to. */
function reachableNodes(device: SimDevice): Array<{ lba: number; owner: number; level: number }> {
  const nodes: Array<{ lba: number; owner: number; level: number }> = [];
  const report = checkForest(device);
  expect(report.problems).toEqual([]);
  const buf = Buffer.alloc(4096);
  // The superblock copies' reserved blocks are marked reachable too, but hold no node.
  const reserved = reservedExtents(readSuperblock(device), device.blockCount);
  const isReserved = (lba: number) => reserved.some((r) => lba >= r.start && lba < r.start + r.length);
  for (let lba = 2; lba < device.blockCount; lba++) {
    if (!report.reachable.get(lba) || isReserved(lba)) continue;
    device.read(lba, buf);
    nodes.push({ lba, owner: Number(buf.readBigUInt64LE(24)), level: buf[32]! });
  }
  return nodes;
}

describe("corruption", () => {
  const { device, model } = buildVolume();
  const nodes = reachableNodes(device);

  it("covers every kind of node", () => {
    const kinds = new Set(nodes.map((n) => `${n.owner}/${n.level > 0 ? "internal" : "leaf"}`));
    for (const kind of ["1/leaf", "2/leaf", "3/leaf", "256/leaf", "256/internal", "257/leaf", "257/internal"]) {
      expect(kinds).toContain(kind);
    }
  });

  it("every single-byte change of a node of every kind is caught by the read path", () => {
    let cases = 0;
    const buf = Buffer.alloc(4096);
    const byKind = new Map<string, (typeof nodes)[number]>();
    for (const node of nodes) byKind.set(`${node.owner}/${node.level}`, node);
    for (const node of byKind.values()) {
      device.read(node.lba, buf);
      const expect_ = { lba: node.lba, level: node.level, owner: node.owner, deviceBlocks: device.blockCount };
      expect(() => decodeNode(Buffer.from(buf), expect_)).not.toThrow();
      for (let offset = 0; offset < 4096; offset++) {
        for (const mask of [0x01, 0x80, 0xff]) {
          const damaged = Buffer.from(buf);
          damaged[offset]! ^= mask;
          expect(() => decodeNode(damaged, expect_)).toThrow(CorruptionError);
          cases++;
        }
      }
    }
    expect(cases).toBe(byKind.size * 4096 * 3);
  });

  it("a flipped byte on the device gives a corruption error through the volume, never wrong data", () => {
    const prng = new Prng(9);
    for (let trial = 0; trial < 300; trial++) {
      const node = prng.pick(nodes);
      device.clearFlips();
      device.flipOnRead(node.lba, prng.below(4096), 1 << prng.below(8));
      let error: unknown = null;
      try {
        const { store } = openVolume(device);
        for (const id of store.treeIds()) for (const _ of store.openTree(id).range()) void _;
      } catch (caught) {
        error = caught;
      }
      expect(error).toBeInstanceOf(CorruptionError);
      expect((error as CorruptionError).errno).toBe(5);
    }
    device.clearFlips();
    const { store } = openVolume(device);
    expectForestEquals(store, model);
  });

  it("a damaged newest superblock slot is read from its twin; with the twin damaged too, the volume falls back a generation and says so", () => {
    const copy = SimDevice.fromDurable(device.snapshotLive(), device.blockCount);
    const { store } = openVolume(copy);
    const before = store.committedGeneration;
    store.openTree(256).put(Buffer.from("after"), Buffer.from("x"));
    store.commit();
    store.close();
    const again = copy.reopen();
    const newest = readSuperblock(again).generation;
    expect(newest).toBe(before + 1);
    again.flipOnRead(newest % 2, 100, 0x10);
    const twin = openVolume(again, { readOnly: true });
    expect(twin.store.committedGeneration).toBe(newest);
    expect(twin.store.openTree(256).get(Buffer.from("after"))).toEqual(Buffer.from("x"));
    again.flipOnRead(2 + (newest % 2), 100, 0x10);
    const reopened = openVolume(again, { readOnly: true });
    expect(reopened.store.committedGeneration).toBe(before);
    expect(reopened.store.superblockReport?.rolledBack).toMatch(/may have been rolled back/);
    expect(reopened.store.openTree(256).get(Buffer.from("after"))).toBeUndefined();
    expectForestEquals(reopened.store, model);
    for (const lba of [(newest + 1) % 2, 2 + ((newest + 1) % 2)]) again.flipOnRead(lba, 8, 0x01);
    expect(() => openVolume(again)).toThrow(/every superblock copy is damaged.*LBA 0: checksum mismatch.*LBA 1: checksum mismatch/);
  });

  it("leaves the checkers clean on the untouched image", () => {
    expect(checkSpace(device).problems).toEqual([]);
  });
});

describe("bad devices and images", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "grovefs-corrupt-"));

  it("refuses a missing image, a too-small image and a non-grovefs image with clear errors", () => {
    expect(() => FileDevice.open(path.join(dir, "missing.img"))).toThrow(/no such image/);
    const small = path.join(dir, "small.img");
    fs.writeFileSync(small, Buffer.alloc(deviceSizeMinBytes - 4096));
    expect(() => FileDevice.open(small)).toThrow(GroveError);
    expect(() => FileDevice.open(small)).toThrow(/too small/);
    const zeros = path.join(dir, "zeros.img");
    fs.writeFileSync(zeros, Buffer.alloc(deviceSizeMinBytes));
    expect(() => openVolume(FileDevice.open(zeros))).toThrow(/not a grovefs volume/);
  });

  it("formats and reopens a real image file, and refuses one truncated after format", () => {
    const image = path.join(dir, "real.img");
    const device = FileDevice.createImage(image, 8 * 1024 * 1024);
    const { store } = formatVolume(device, { label: "test" });
    store.createTree(256).put(Buffer.from("k"), Buffer.from("v"));
    store.commit();
    store.close();
    const reopened = openVolume(FileDevice.open(image));
    expect(reopened.store.label).toBe("test");
    expect(reopened.store.openTree(256).get(Buffer.from("k"))?.toString()).toBe("v");
    reopened.store.close();
    expect(checkSpace(FileDevice.open(image)).problems).toEqual([]);
    fs.truncateSync(image, 4 * 1024 * 1024);
    expect(() => openVolume(FileDevice.open(image))).toThrow(/truncated image/);
    fs.rmSync(dir, { recursive: true, force: true });
  });
});
