/**
 * The checkers find what they claim to: damage is injected into a committed
 * image (with valid checksums, so only the structural checks can see it) and
 * each checker must name it.
 */
import { describe, expect, it } from "vitest";
import { Bitmap, Prng, SimDevice, checkForest, readSuperblock, treeIdRoot, treeKey } from "../kvstore/index.js";
import { nodeMagic } from "../kvstore/node.js";
import { encodeSuperblock, slotForGeneration } from "../kvstore/superblock.js";
import { crc32c } from "../kvstore/checksum.js";
import { checkSpace, formatVolume, openVolume, treeIdFreeByLba, treeIdFreeByLength } from "../alloc/index.js";
import { freeByLbaKey, freeByLengthKey, encodeLength } from "../alloc/free_space.js";

function buildImage(): SimDevice {
  const device = new SimDevice(4096);
  const { store } = formatVolume(device);
  const tree = store.createTree(256);
  const prng = new Prng(3);
  for (let i = 0; i < 3000; i++) tree.put(prng.bytes(12), prng.bytes(prng.between(10, 80)));
  store.commit();
  // Scattered deletes leave free-space holes, so the free-space trees hold several extents.
  let i = 0;
  for (const [key] of [...tree.range()]) if (i++ % 5 === 0) tree.delete(key);
  store.commit();
  store.close();
  return device.reopen();
}

/**
 * Rewrites one node in place with a fresh checksum, as a buggy writer would,
 * and gives what points at it (a parent's checked pointer, a root-tree
 * record, the superblock) the new crc, up to the superblock: the checked
 * pointers would otherwise report the rewrite first, and these tests are
 * about the structural checks behind them.
 */
function rewriteNode(device: SimDevice, lba: number, edit: (buf: Buffer) => void): void {
  const reachable = checkForest(device).reachable;
  const buf = Buffer.alloc(4096);
  device.read(lba, buf);
  edit(buf);
  buf.writeUInt32LE(crc32c(buf.subarray(8)), 4);
  device.write(lba, buf);
  repointParents(device, reachable, lba, buf.readUInt32LE(4));
  device.flush();
}

/** Gives the pointer to the node at `lba` the crc `crc`, and so on upward. */
function repointParents(device: SimDevice, reachable: Bitmap, lba: number, crc: number): void {
  const sb = readSuperblock(device);
  if (sb.rootLba === lba) {
    device.write(slotForGeneration(sb.generation), encodeSuperblock({ ...sb, rootCrc: crc }));
    return;
  }
  const buf = Buffer.alloc(4096);
  for (let parent = 2; parent < device.blockCount; parent++) {
    if (!reachable.get(parent)) continue;
    device.read(parent, buf);
    if (buf.readUInt32LE(0) !== nodeMagic) continue;
    const level = buf[32]!;
    const rootTreeLeaf = level === 0 && Number(buf.readBigUInt64LE(24)) === treeIdRoot;
    if (level === 0 ? !rootTreeLeaf : buf[33] === 0) continue;
    for (let i = 0; i < buf.readUInt16LE(34); i++) {
      const off = buf.readUInt16LE(40 + 2 * i);
      const value = off + 4 + buf.readUInt16LE(off);
      const valueLen = buf.readUInt16LE(off + 2);
      if (rootTreeLeaf ? valueLen !== 48 : valueLen !== 28) continue;
      if (Number(buf.readBigUInt64LE(value)) !== lba) continue;
      buf.writeUInt32LE(crc, value + (rootTreeLeaf ? 32 : 16));
      buf.writeUInt32LE(crc32c(buf.subarray(8)), 4);
      device.write(parent, buf);
      repointParents(device, reachable, parent, buf.readUInt32LE(4));
      return;
    }
  }
  throw new Error(`nothing points at block ${lba}`);
}

/** A leaf of tree `owner` holding at least two items. */
function findLeaf(device: SimDevice, owner: number): number {
  const report = checkForest(device);
  const buf = Buffer.alloc(4096);
  for (let lba = 2; lba < device.blockCount; lba++) {
    if (!report.reachable.get(lba)) continue;
    device.read(lba, buf);
    if (Number(buf.readBigUInt64LE(24)) === owner && buf[32] === 0 && buf.readUInt16LE(34) >= 2) return lba;
  }
  throw new Error(`no leaf of tree ${owner}`);
}

describe("checkers", () => {
  it("a clean image has no problems", () => {
    expect(checkSpace(buildImage()).problems).toEqual([]);
  });

  it("tree checker: keys out of order inside a node", () => {
    const device = buildImage();
    const lba = findLeaf(device, 256);
    rewriteNode(device, lba, (buf) => {
      const first = buf.readUInt16LE(40);
      buf.writeUInt16LE(buf.readUInt16LE(42), 40);
      buf.writeUInt16LE(first, 42);
    });
    expect(checkForest(device).problems.join("\n")).toMatch(new RegExp(`block ${lba}: keys out of order`));
  });

  it("tree checker: a key outside the bounds its parent's separators give", () => {
    const device = buildImage();
    const { store } = openVolume(device);
    const tree = store.openTree(256);
    expect(tree.level).toBeGreaterThan(0);
    // The leftmost leaf has an upper bound: the separator of its right neighbour.
    let node = tree.root();
    while (node.level > 0) node = tree.child(node, 0);
    const lba = node.lba;
    store.close();
    const damaged = device.reopen();
    // Rewrite its last key as 0xff...: still in order inside the node, but above the next separator.
    rewriteNode(damaged, lba, (buf) => {
      const count = buf.readUInt16LE(34);
      const off = buf.readUInt16LE(40 + 2 * (count - 1));
      buf.fill(0xff, off + 4, off + 4 + buf.readUInt16LE(off));
    });
    expect(checkForest(damaged).problems.join("\n")).toMatch(
      new RegExp(`block ${lba}: key \\d+ lies at or above the next separator`),
    );
  });

  it("tree checker: an item count that disagrees with the root tree's record", () => {
    const device = buildImage();
    const { store } = openVolume(device);
    const count = store.openTree(256).count;
    expect(store.rootTree.level).toBe(0);
    const rootLeaf = store.rootTree.rootLba;
    store.close();
    const damaged = device.reopen();
    rewriteNode(damaged, rootLeaf, (buf) => {
      // The root tree is one leaf here; find tree 256's record and bump its count.
      for (let i = 0; i < buf.readUInt16LE(34); i++) {
        const off = buf.readUInt16LE(40 + 2 * i);
        if (buf.subarray(off + 4, off + 12).equals(treeKey(256))) buf.writeUInt32LE(count + 7, off + 12 + 8);
      }
    });
    expect(checkForest(damaged).problems).toContain(`tree 256: holds ${count} items but its record says ${count + 7}`);
  });

  it("space checker: leaked blocks and blocks owned twice, by LBA", () => {
    const device = buildImage();
    const { store } = openVolume(device);
    const byLba = store.openTree(treeIdFreeByLba);
    const byLength = store.openTree(treeIdFreeByLength);
    expect(byLba.level).toBe(0);
    expect(byLength.level).toBe(0);
    const [tailKey, tailValue] = [...byLba.range({ reverse: true })][0]!;
    const start = Number(tailKey.readBigUInt64BE(0));
    const length = Number(tailValue.readBigUInt64LE(0));
    const leaves = { byLba: byLba.rootLba, byLength: byLength.rootLba };
    store.close();
    // Shift the tail extent one block down in both trees: its last block is then leaked,
    // and the block before it (in use, or the extents would have coalesced) is owned twice.
    const damaged = device.reopen();
    const moveEntry = (lba: number, oldKey: Buffer, newKey: Buffer, newValue?: Buffer): void =>
      rewriteNode(damaged, lba, (buf) => {
        for (let i = 0; i < buf.readUInt16LE(34); i++) {
          const off = buf.readUInt16LE(40 + 2 * i);
          if (!buf.subarray(off + 4, off + 4 + oldKey.length).equals(oldKey)) continue;
          newKey.copy(buf, off + 4);
          newValue?.copy(buf, off + 4 + newKey.length);
          return;
        }
        throw new Error("entry not found");
      });
    moveEntry(leaves.byLba, freeByLbaKey(start), freeByLbaKey(start - 1), encodeLength(length));
    moveEntry(leaves.byLength, freeByLengthKey(length, start), freeByLengthKey(length, start - 1));
    const report = checkSpace(damaged);
    expect(report.leaked).toEqual([{ start: start + length - 1, length: 1 }]);
    expect(report.ownedTwice).toEqual([{ start: start - 1, length: 1 }]);
    expect(report.problems).toContain(`blocks ${start + length - 1}+1 are leaked (neither reachable nor free)`);
  });

  it("space checker: the two free-space trees disagree", () => {
    const device = buildImage();
    const { store } = openVolume(device);
    const [key, value] = [...store.openTree(treeIdFreeByLba).range({ reverse: true })][0]!;
    const start = Number(key.readBigUInt64BE(0));
    const length = Number(value.readBigUInt64LE(0));
    store.openTree(treeIdFreeByLength).put(freeByLengthKey(length + 1, start), Buffer.alloc(0));
    store.commit();
    store.close();
    expect(checkSpace(device.reopen()).problems).toContain(
      `by-length tree holds ${start}+${length + 1}, which the by-LBA tree does not`,
    );
  });
});

describe("the checkers' block bitmap", () => {
  it("agrees with a dense reference on random marks, runs included, past 2^32 too", () => {
    const seed = Number(process.env.GROVE_SEED ?? 16);
    for (const base of [0, 2 ** 32 - 3000, 2 ** 40]) {
      const prng = new Prng(seed + base);
      const span = 600_000;
      const bitmap = new Bitmap(base + span);
      const dense = new Uint8Array(span);
      for (let k = 0; k < 2000; k++) {
        // Runs of marks, some long, so whole bytes and whole pages are both seen.
        const from = prng.below(span);
        const length = prng.below(10) === 0 ? prng.below(70_000) : prng.below(20);
        for (let i = from; i < Math.min(span, from + length); i++) {
          bitmap.set(base + i);
          dense[i] = 1;
        }
      }
      for (let k = 0; k < 5000; k++) {
        const i = prng.below(span);
        expect(bitmap.get(base + i), `seed ${seed}, block ${base + i}`).toBe(dense[i] === 1);
      }
      const from = prng.below(span / 2);
      const to = span / 2 + prng.below(span / 2);
      let at = from;
      let previous: boolean | null = null;
      bitmap.forEachRun(base + from, base + to, (a, b, set) => {
        expect(a, `seed ${seed}: runs are contiguous`).toBe(base + at);
        expect(b).toBeGreaterThan(a);
        expect(set, `seed ${seed}: runs are maximal`).not.toBe(previous);
        for (let i = a - base; i < b - base; i++) if ((dense[i] === 1) !== set) expect.fail(`seed ${seed}: block ${base + i} in a run of ${set}`);
        at = b - base;
        previous = set;
      });
      expect(at).toBe(to);
    }
  });

  it("costs memory for the blocks marked, not the size of the device", () => {
    const bitmap = new Bitmap(2 ** 40);
    for (let i = 0; i < 1000; i++) bitmap.set(2 ** 39 + i);
    bitmap.set(2 ** 40 - 1);
    expect(bitmap.bytes).toBeLessThanOrEqual(2 * 32 * 1024);
    let runs = 0;
    bitmap.forEachRun(0, 2 ** 40, () => runs++);
    expect(runs).toBe(4);
  });
});
