/**
 * fsck's repair through the library: each kind of damage it claims to fix is
 * made as a normal committed generation, found by the checker, repaired as a
 * new generation, and then the checker is clean and the files read back.
 * (The CLI's corruption matrix, with damaged nodes too, is in corruption_matrix.test.ts.)
 */
import { describe, expect, it } from "vitest";
import { SimDevice } from "../kvstore/index.js";
import { openVolume } from "../snapshot/index.js";
import { GroveFs, checkFilesystem, repairFilesystem } from "../fs/index.js";
import { decodeInode, encodeInode, inodeKey, orphanKey } from "../fs/format.js";
import { fsEdges } from "../fs/edges.js";
import { O_CREAT, O_RDWR, expectBytes, expectFsClean, pattern, readFile, testClock } from "./fs_helpers.js";

const caller = { uid: 0, gid: 0 };

/** A volume with files, a snapshot and a clone; returns the device (closed) and the data written. */
function volume(): { device: SimDevice; data: Buffer } {
  let device = new SimDevice(4096);
  GroveFs.format(device, { clock: testClock() });
  device = device.reopen();
  const fs = GroveFs.open(device, { clock: testClock() });
  const data = pattern(300_000, 5);
  for (const name of ["a", "b", "c"]) {
    const fh = fs.create(`/${name}`, 0o644, O_CREAT | O_RDWR, caller);
    fs.write(fh, data, data.length, 0);
    fs.release(fh);
  }
  fs.createSubvolume("snap", { readOnly: true });
  fs.createSubvolume("clone", { readOnly: false });
  const fh = fs.open("/a", O_RDWR);
  fs.write(fh, pattern(5000, 9), 5000, 10_000);
  fs.release(fh);
  fs.close();
  return { device: device.reopen(), data };
}

/** Damages the volume through `damage`, committed as a normal generation; expects the checker to see it and the repair to fix it. */
function damageAndRepair(damage: (v: ReturnType<typeof openVolume>) => void, expectProblem: RegExp): void {
  let { device, data } = volume();
  expectFsClean(device);
  const v = openVolume(device, { edges: fsEdges });
  damage(v);
  v.store.commit({ force: true });
  v.store.close();
  device = device.reopen();
  const report = checkFilesystem(device, { verifyData: true });
  expect(report.problems.some((p) => expectProblem.test(p)), report.problems.join("\n")).toBe(true);
  const result = repairFilesystem(device, report);
  expect(result.fixed.length).toBeGreaterThan(0);
  device = device.reopen();
  expectFsClean(device);
  const fs = GroveFs.open(device);
  expectBytes(readFile(fs, "/b"), data);
  expectBytes(readFile(fs.snapshotView("snap"), "/a"), data);
  fs.close();
  expectFsClean(device.reopen());
}

describe("fsck repair (library)", () => {
  it("a leaked block is given back", () => {
    damageAndRepair((v) => v.space.allocate(1), /leaked/);
  });

  it("a wrong refcount is set to what the walk counts, both too high and missing", () => {
    damageAndRepair((v) => {
      const [lba, entry] = [...v.refcounts.entries()][0]!;
      v.refcounts.setCount(lba, entry.blocks, entry.count + 3);
    }, /refcount/);
    damageAndRepair((v) => {
      const [lba, entry] = [...v.refcounts.entries()][0]!;
      v.refcounts.setCount(lba, entry.blocks, 1);
    }, /refcount/);
  });

  it("a wrong link count is set to the entries found", () => {
    damageAndRepair((v) => {
      const tree = v.store.openTree(256);
      const value = tree.get(inodeKey(2))!;
      const inode = decodeInode(2, value);
      inode.nlink += 1;
      tree.put(inodeKey(2), encodeInode(inode));
    }, /nlink/);
  });
});

describe("fsck repair (library): orphans", () => {
  it("an orphan key on an inode that still has a name is reported and dropped in one repair, with nlink set back", () => {
    damageAndRepair((v) => {
      const tree = v.store.openTree(256);
      const inode = decodeInode(2, tree.get(inodeKey(2))!);
      inode.nlink = 0;
      tree.put(inodeKey(2), encodeInode(inode));
      tree.put(orphanKey(2), Buffer.alloc(0));
    }, /orphan 2 still has 1 names/);
  });
});
