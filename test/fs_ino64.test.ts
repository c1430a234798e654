/**
 * Inode numbers past 2^32 (issue 16), through the library: a volume whose
 * counter is set just below 2^32, and one just below the largest number
 * (inoMax, 2^48 - 1), takes creates, stats, readdir, rename, unlink, hard
 * links and snapshots across the boundary, with directories and files big
 * enough that their maps spill into per-inode trees (the owner ids that must
 * not collide); after a snapshot, changes to those trees copy them without
 * touching the snapshot. The volume gains feature bit 7 only once a number
 * reaches 2^32, keeps its files over a reopen, refuses at the bound with
 * ENOSPC_inodes, sends and receives them with their numbers, and fsck finds
 * it clean.
 */
import { describe, expect, it } from "vitest";
import { SimDevice, featureWideInodes, readSuperblock } from "../kvstore/index.js";
import { writeSuperblockCopies } from "../kvstore/superblock_copies.js";
import { GroveFs, checkFilesystem, inoMax, repairFilesystem, send } from "../fs/index.js";
import { objectOwnedMax, objectTreeOwner, ownerObject, ownerSubvolume, subvolumeIdMax } from "../snapshot/index.js";
import { openVolume } from "../snapshot/index.js";
import { PayloadKind, decodeInode, inodeKey } from "../fs/format.js";
import { fsEdges } from "../fs/edges.js";
import { foldIno } from "../fs/fuse_bridge.js";
import { O_CREAT, O_RDWR, expectBytes, expectErrno, expectFsClean, pattern, readFile, testClock } from "./fs_helpers.js";

const caller = { uid: 0, gid: 0 };
/** Entries that spill a directory's names into its own tree, and writes that spill a file's extents. */
const spillEntries = 120;
const spillExtents = 120;

function fresh(): { device: SimDevice; fs: GroveFs } {
  let device = new SimDevice(16384);
  GroveFs.format(device, { clock: testClock() });
  device = device.reopen();
  return { device, fs: GroveFs.open(device, { clock: testClock() }) };
}

function put(fs: GroveFs, path: string, data: Buffer): number {
  const fh = fs.create(path, 0o644, O_CREAT | O_RDWR, caller);
  fs.write(fh, data, data.length, 0);
  fs.release(fh);
  return fs.getattr(path).ino;
}

/** A file of `spillExtents` separate one-block extents (every other block written). */
function fragmented(fs: GroveFs, path: string, seed: number): { ino: number; data: Buffer } {
  const fh = fs.create(path, 0o644, O_CREAT | O_RDWR, caller);
  const data = Buffer.alloc((2 * spillExtents - 1) * 4096);
  for (let i = 0; i < spillExtents; i++) {
    const block = pattern(4096, seed + i);
    block.copy(data, 2 * i * 4096);
    fs.write(fh, block, block.length, 2 * i * 4096);
    if (i % 16 === 15) fs.fsync(fh, false);
  }
  fs.release(fh);
  return { ino: fs.getattr(path).ino, data };
}

/** How inode `ino` of the default subvolume holds its map, committed on `device`. */
function mapKind(device: SimDevice, ino: number): PayloadKind {
  const { store } = openVolume(device.reopen(), { readOnly: true, edges: fsEdges });
  try {
    return decodeInode(ino, store.openTree(256).get(inodeKey(ino))!).kind;
  } finally {
    store.close();
  }
}

function hasWide(device: SimDevice): boolean {
  return (readSuperblock(device).features & featureWideInodes) !== 0n;
}

/** Exercises every operation across the counter's position `start`; returns what it expects to read back. */
function crossBoundary(fs: GroveFs, start: number): Map<string, Buffer> {
  fs.reserveIno(start);
  const expected = new Map<string, Buffer>();
  fs.mkdir("/d", 0o755, caller);
  expect(fs.getattr("/d").ino).toBe(start);
  const small = put(fs, "/d/small", pattern(100, 1));
  expect(small).toBe(start + 1);
  fs.mkdir("/big", 0o755, caller);
  const bigDir = fs.getattr("/big").ino;
  for (let i = 0; i < spillEntries; i++) {
    const data = pattern(50 + i, 100 + i);
    const ino = put(fs, `/big/e${i}`, data);
    expect(ino).toBe(bigDir + 1 + i);
    expected.set(`/big/e${i}`, data);
  }
  const file = fragmented(fs, "/big/frag", 7);
  expected.set("/big/frag", file.data);
  expected.set("/d/small", pattern(100, 1));
  // readdir reports every number as stat does.
  const listed = fs.readdir("/big").filter((e) => e.name !== "." && e.name !== "..");
  expect(listed.length).toBe(spillEntries + 1);
  for (const e of listed) expect(e.ino).toBe(fs.getattr(`/big/${e.name}`).ino);
  // Hard links both ways across the boundary, a rename between the directories, an unlink.
  fs.link("/d/small", "/big/small-link");
  fs.link("/big/frag", "/d/frag-link");
  expect(fs.getattr("/big/small-link").ino).toBe(small);
  expect(fs.getattr("/d/frag-link").ino).toBe(file.ino);
  expect(fs.getattr("/d/frag-link").nlink).toBe(2);
  expected.set("/big/small-link", pattern(100, 1));
  expected.set("/d/frag-link", file.data);
  fs.rename("/big/e3", "/d/e3-moved");
  expected.set("/d/e3-moved", expected.get("/big/e3")!);
  expected.delete("/big/e3");
  fs.unlink("/big/e4");
  expected.delete("/big/e4");
  fs.sync();
  return expected;
}

function expectFiles(fs: { getattr(path: string): { ino: number } } & Parameters<typeof readFile>[0], files: Map<string, Buffer>): void {
  for (const [path, data] of files) expectBytes(readFile(fs, path), data, path);
}

describe("inode numbers past 2^32", () => {
  it("encode one-to-one owner ids below 2^53, the old form unchanged below 2^32", () => {
    const cases: Array<[number, number]> = [
      [256, 1],
      [256, 2 ** 32 - 1],
      [subvolumeIdMax, 2 ** 32 - 1],
      [256, 2 ** 32],
      [257, 2 ** 32],
      [256, 2 ** 32 + 1],
      [subvolumeIdMax, inoMax],
      [256, objectOwnedMax],
    ];
    const seen = new Map<number, string>();
    for (const [subvolume, ino] of cases) {
      const owner = objectTreeOwner(subvolume, ino);
      expect(Number.isSafeInteger(owner)).toBe(true);
      expect(owner).toBeGreaterThanOrEqual(2 ** 32);
      expect(owner % 2 ** 32, "kvstore matches owners by their low word").toBe(ino % 2 ** 32);
      expect(ownerObject(owner)).toBe(ino);
      if (ino < 2 ** 32) {
        expect(owner).toBe(subvolume * 2 ** 32 + ino);
        expect(ownerSubvolume(owner)).toBe(subvolume);
      } else {
        expect(ownerSubvolume(owner)).toBeNull();
        // A wide owner is the same in every subvolume (a snapshot's shared nodes keep matching).
        expect(objectTreeOwner(subvolume === 256 ? 300 : 256, ino)).toBe(owner);
      }
      const key = ino < 2 ** 32 ? `${subvolume}/${ino}` : `*/${ino}`;
      const before = seen.get(owner);
      expect(before === undefined || before === key, `${key} and ${before} share owner ${owner}`).toBe(true);
      seen.set(owner, key);
    }
    expect(inoMax).toBeLessThan(objectOwnedMax);
  });

  for (const [what, start] of [
    ["just below 2^32", 2 ** 32 - 2],
    ["just below the largest number, 2^48 - 1", inoMax - spillEntries - 4],
  ] as const) {
    it(`create, stat, readdir, link, rename, unlink and snapshot with the counter ${what}; fsck clean`, () => {
      const { device, fs } = fresh();
      put(fs, "/before", pattern(10, 1));
      // A clone taken first has an older last snapshot than the default subvolume's will be: a node's
      // sharing must be judged by its own subvolume's (an owner read as the clone's would skip the copy).
      fs.createSubvolume("early", { readOnly: false });
      fs.sync();
      expect(hasWide(device), "no wide numbers yet: older code can open the image").toBe(false);
      const files = crossBoundary(fs, start);
      expect(hasWide(device)).toBe(true);
      expect(fs.getattr("/big").ino).toBeGreaterThanOrEqual(2 ** 32);
      expect(mapKind(device, fs.getattr("/big").ino), "the directory's names spilled").toBe(PayloadKind.Tree);
      expect(mapKind(device, fs.getattr("/big/frag").ino), "the file's extents spilled").toBe(PayloadKind.Tree);
      files.set("/before", pattern(10, 1));
      expectFiles(fs, files);

      // A snapshot shares the per-inode trees; changing them afterwards copies them, the snapshot keeps its view.
      fs.createSubvolume("snap", { readOnly: true });
      const frag = fs.getattr("/big/frag").ino;
      const fh = fs.open("/big/frag", O_RDWR);
      const changed = pattern(4096, 999);
      fs.write(fh, changed, changed.length, 4096);
      fs.release(fh);
      for (let i = 0; i < 20; i++) fs.unlink(`/big/e${i + 10}`);
      put(fs, "/big/after", pattern(300, 5));
      fs.sync();
      const view = fs.snapshotView("snap");
      expectFiles(view, files);
      expect(view.getattr("/big/frag").ino).toBe(frag);
      expect(view.readdir("/big").length).toBe(fs.readdir("/big").length + 19);
      const now = new Map(files);
      const fragNow = Buffer.from(files.get("/big/frag")!);
      changed.copy(fragNow, 4096);
      now.set("/big/frag", fragNow);
      now.set("/d/frag-link", fragNow);
      for (let i = 0; i < 20; i++) now.delete(`/big/e${i + 10}`);
      now.set("/big/after", pattern(300, 5));
      expectFiles(fs, now);
      fs.close();

      expectFsClean(device.reopen());
      const again = GroveFs.open(device.reopen(), { clock: testClock() });
      expectFiles(again, now);
      again.deleteSubvolume("snap");
      again.finishDeletions();
      again.close();
      expectFsClean(device.reopen());
    });
  }

  it("send and receive a snapshot with numbers past 2^32 (incremental too): the receiver keeps them and gains the feature bit", () => {
    const a = fresh();
    const files = crossBoundary(a.fs, 2 ** 32 - 2);
    a.fs.createSubvolume("s1", { readOnly: true });
    const frag = a.fs.open("/big/frag", O_RDWR);
    const changed = pattern(4096, 77);
    a.fs.write(frag, changed, changed.length, 8192);
    a.fs.release(frag);
    a.fs.unlink("/big/e20");
    put(a.fs, "/big/later", pattern(20, 8));
    a.fs.createSubvolume("s2", { readOnly: true });
    const b = fresh();
    for (const [name, parent] of [["s1", undefined], ["s2", "s1"]] as const) {
      const chunks: Buffer[] = [];
      send.sendSnapshot(a.fs, name, (chunk) => chunks.push(chunk), { parent });
      const bytes = Buffer.concat(chunks);
      let at = 0;
      send.receiveStream(b.fs, (length) => {
        const chunk = bytes.subarray(at, Math.min(bytes.length, at + length));
        at += chunk.length;
        return chunk;
      });
    }
    b.fs.sync();
    expect(hasWide(b.device)).toBe(true);
    const s1 = b.fs.snapshotView("s1");
    expectFiles(s1, files);
    expect(s1.getattr("/big/frag").ino).toBe(a.fs.snapshotView("s1").getattr("/big/frag").ino);
    const s2 = b.fs.snapshotView("s2");
    expect(s2.getattr("/big/later").ino).toBe(a.fs.getattr("/big/later").ino);
    expect(s2.getattr("/big/later").ino).toBeGreaterThan(2 ** 32);
    expectBytes(readFile(s2, "/big/frag"), readFile(a.fs, "/big/frag"), "/big/frag in s2");
    a.fs.close();
    b.fs.close();
    expectFsClean(a.device.reopen());
    expectFsClean(b.device.reopen());
  });

  it("a counter past 2^32 without feature bit 7 is found by the checker and the bit set by repair, every file intact", () => {
    const { device, fs } = fresh();
    fs.reserveIno(2 ** 32 + 5);
    const data = pattern(5000, 3);
    const ino = put(fs, "/wide", data);
    expect(ino).toBeGreaterThan(2 ** 32);
    fs.close();
    const sb = readSuperblock(device.reopen());
    expect(sb.features & featureWideInodes).toBe(featureWideInodes);
    const damaged = device.reopen();
    writeSuperblockCopies(damaged, { ...sb, features: sb.features & ~featureWideInodes });
    const report = checkFilesystem(damaged);
    expect(report.problems).toEqual([expect.stringMatching(/^superblock: an inode counter is at \d+, past 2\^32, but the feature for wide inode numbers is not set$/)]);
    expect(repairFilesystem(damaged, report).fixed).toContain("superblock: set the feature bit of inode numbers past 2^32");
    const repaired = damaged.reopen();
    expect(readSuperblock(repaired).features & featureWideInodes).toBe(featureWideInodes);
    expectFsClean(repaired);
    const again = GroveFs.open(repaired.reopen(), { clock: testClock() });
    expectBytes(readFile(again, "/wide"), data);
    expect(again.getattr("/wide").ino).toBe(ino);
    again.close();
  });

  it("fold onto 32 bits for fuse-native, never onto 0 or the root's 1", () => {
    for (const ino of [1, 2, 2 ** 32 - 1]) expect(foldIno(ino)).toBe(ino);
    expect(foldIno(2 ** 32)).toBe(2);
    expect(foldIno(2 ** 32 + 2)).toBe(4);
    for (const ino of [2 ** 32 + 1, 2 * 2 ** 32 - 4, 2 * 2 ** 32 - 3, inoMax]) {
      const folded = foldIno(ino);
      expect(folded).toBeGreaterThanOrEqual(2);
      expect(folded).toBeLessThanOrEqual(2 ** 32 - 1);
    }
  });

  it("hand out the largest number, then refuse with ENOSPC_inodes (and refuse a counter past it)", () => {
    const { device, fs } = fresh();
    fs.reserveIno(inoMax - 1);
    fs.mkdir("/a", 0o755, caller);
    expect(put(fs, "/a/last", pattern(10, 2))).toBe(inoMax);
    expectErrno(() => put(fs, "/a/more", pattern(10, 3)), "ENOSPC", "ENOSPC_inodes");
    expectErrno(() => fs.mkdir("/b", 0o755, caller), "ENOSPC", "ENOSPC_inodes");
    expectErrno(() => fs.reserveIno(inoMax + 2), "EINVAL", "EINVAL_ino_reserve");
    expect(fs.statfs().ffree).toBe(0);
    fs.unlink("/a/last");
    fs.close();
    expectFsClean(device.reopen());
  });
});
