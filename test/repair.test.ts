/**
 * fsck's repair through the library: each kind of damage it claims to fix is
 * made as a normal committed generation, found by the checker, repaired as a
 * new generation, and then the checker is clean and the files read back.
 * (The CLI's corruption matrix, with damaged nodes too, is in corruption_matrix.test.ts.)
 */
import { describe, expect, it } from "vitest";
import { SimDevice } from "../kvstore/index.js";
import { openVolume } from "../snapshot/index.js";
import { GroveFs, checkFilesystem, repairFilesystem, salvageDamagedTrees } from "../fs/index.js";
import { mapOwner } from "../fs/item_map.js";
import { reachableNodes } from "./helpers.js";
import { PayloadKind, decodeInode, decodeItems, encodeInode, encodeItems, inodeKey, orphanKey } from "../fs/format.js";
import { fsEdges } from "../fs/edges.js";
import { O_CREAT, O_RDWR, expectBytes, expectFsClean, pattern, readFile, testClock, writeFile } from "./fs_helpers.js";

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

describe("fsck repair (library): lost names go to /lost+found, dangling entries go", () => {
  /** Removes the entry `name` from directory `dir`'s inline entries, committed as a generation (damage that loses a name). */
  function dropName(v: ReturnType<typeof openVolume>, dir: number, name: string, subvolume = 256): void {
    const tree = v.store.openTree(subvolume);
    const inode = decodeInode(dir, tree.get(inodeKey(dir))!);
    expect(inode.kind).toBe(PayloadKind.Items);
    const items = decodeItems(dir, inode.payload).filter((i) => i.key.toString() !== name);
    inode.payload = encodeItems(items);
    tree.put(inodeKey(dir), encodeInode(inode));
  }

  const names = (fs: GroveFs, dir: string): string[] =>
    fs
      .readdir(dir)
      .map((e) => e.name)
      .filter((n) => n !== "." && n !== "..")
      .sort();

  function repaired(device: SimDevice): { device: SimDevice; fixed: string[] } {
    const report = checkFilesystem(device, { verifyData: true });
    const result = repairFilesystem(device, report);
    expect(result.remaining).toEqual([]);
    device = device.reopen();
    expectFsClean(device);
    return { device, fixed: result.fixed };
  }

  it("a file, a directory with its contents, and a hard-linked file lose their names: each is linked as /lost+found/#INO with its data", () => {
    let device = new SimDevice(4096);
    GroveFs.format(device, { clock: testClock() });
    device = device.reopen();
    let fs = GroveFs.open(device, { clock: testClock() });
    const data = pattern(70_000, 3);
    writeFile(fs, "/lonely", data);
    fs.mkdir("/dir", 0o755, caller);
    writeFile(fs, "/dir/inner", data.subarray(0, 5000));
    fs.mkdir("/dir/sub", 0o700, caller);
    writeFile(fs, "/twice", data.subarray(0, 100));
    fs.link("/twice", "/dir/twice2");
    const ino = { lonely: fs.inoOf("/lonely"), dir: fs.inoOf("/dir"), twice: fs.inoOf("/twice") };
    fs.close();
    device = device.reopen();
    const v = openVolume(device, { edges: fsEdges });
    for (const name of ["lonely", "dir", "twice"]) dropName(v, 1, name);
    v.store.commit({ force: true });
    v.store.close();
    device = device.reopen();
    const report = checkFilesystem(device);
    expect(report.problems.join("\n")).toMatch(new RegExp(`inode ${ino.lonely}: has no name and is not an orphan`));
    expect(report.problems.join("\n")).toMatch(new RegExp(`inode ${ino.dir}: directory is named by no entry`));
    const { device: after, fixed } = repaired(device.reopen());
    expect(fixed).toContain(`inode ${ino.lonely}: had no name, linked as /lost+found/#${ino.lonely}`);
    expect(fixed).toContain(`inode ${ino.dir}: had no name, linked as /lost+found/#${ino.dir}`);
    fs = GroveFs.open(after);
    const lf = fs.getattr("/lost+found");
    expect(lf.mode & 0o170777).toBe(0o040700);
    expect(lf.nlink).toBe(3); // ".", its entry in /, and the reconnected directory's ".."
    expectBytes(readFile(fs, `/lost+found/#${ino.lonely}`), data);
    expect(fs.getattr(`/lost+found/#${ino.lonely}`).nlink).toBe(1);
    expectBytes(readFile(fs, `/lost+found/#${ino.dir}/inner`), data.subarray(0, 5000));
    expect(fs.getattr(`/lost+found/#${ino.dir}/sub`).mode & 0o777).toBe(0o700);
    // The hard-linked file kept its other name: only its count is wrong, and no lost+found entry is made for it.
    expect(names(fs, "/lost+found")).toEqual([`#${ino.dir}`, `#${ino.lonely}`].sort());
    expect(fs.getattr(`/lost+found/#${ino.dir}/twice2`).nlink).toBe(1);
    fs.close();
  });

  it("an entry naming a missing inode is removed; a file called lost+found is left alone", () => {
    let device = new SimDevice(4096);
    GroveFs.format(device, { clock: testClock() });
    device = device.reopen();
    let fs = GroveFs.open(device, { clock: testClock() });
    writeFile(fs, "/lost+found", Buffer.from("mine"));
    writeFile(fs, "/gone", Buffer.from("x"));
    writeFile(fs, "/kept", Buffer.from("y"));
    const ino = { gone: fs.inoOf("/gone"), kept: fs.inoOf("/kept") };
    fs.close();
    device = device.reopen();
    const v = openVolume(device, { edges: fsEdges });
    v.store.openTree(256).delete(inodeKey(ino.gone));
    dropName(v, 1, "kept");
    v.store.commit({ force: true });
    v.store.close();
    device = device.reopen();
    const report = checkFilesystem(device);
    expect(report.problems.join("\n")).toMatch(/entry "gone": names inode \d+, which does not exist/);
    const { device: after, fixed } = repaired(device);
    expect(fixed).toContain(`directory 1 ("/"): removed the entry "gone", which named no inode`);
    fs = GroveFs.open(after);
    expect(names(fs, "/")).toEqual(["lost+found", "lost+found.1"]);
    expect(readFile(fs, "/lost+found").toString()).toBe("mine");
    expect(readFile(fs, `/lost+found.1/#${ino.kept}`).toString()).toBe("y");
    fs.close();
  });
});

describe("fsck repair (library): a damaged node is salvaged, not given up on", () => {
  it("a file's extent-map leaf destroyed: the file keeps its other extents and names the lost bytes; everything else is intact", () => {
    let device = new SimDevice(8192);
    // Single metadata: the leaf has no second copy to heal from.
    GroveFs.format(device, { clock: testClock(), metadata: "single" });
    device = device.reopen();
    let fs = GroveFs.open(device, { clock: testClock() });
    fs.mkdir("/d", 0o755, caller);
    // Small writes at spaced offsets: one extent record each, enough to spill the map into a tree of several leaves.
    const fh = fs.create("/d/big", 0o644, O_CREAT | O_RDWR, caller);
    const chunk = pattern(4096, 7);
    for (let i = 0; i < 400; i++) fs.write(fh, chunk, 4096, i * 2 * 4096);
    fs.release(fh);
    writeFile(fs, "/other", pattern(20_000, 8));
    const ino = fs.inoOf("/d/big");
    fs.close();
    device = device.reopen();
    const nodes = reachableNodes(device, checkFilesystem(device).space.forest).filter((n) => n.owner === mapOwner(256, ino) && n.level === 0);
    expect(nodes.length).toBeGreaterThan(2);
    const victim = nodes[1]!;
    const block = Buffer.alloc(4096);
    device.read(victim.lba, block);
    block[4095]! ^= 0x5a;
    device.write(victim.lba, block);
    device.flush();
    device = device.reopen();

    const report = checkFilesystem(device, { verifyData: true });
    expect(report.walkComplete).toBe(false);
    const salvage = salvageDamagedTrees(device, report)!;
    expect(salvage.remaining).toEqual([]);
    expect(salvage.fixed).toHaveLength(1);
    expect(salvage.fixed[0]).toMatch(new RegExp(`^subvolume "default": inode ${ino} \\("/d/big"\\): rebuilt its extent map from the \\d+ extents it could read; bytes \\d+-\\d+ now read as zeros$`));
    device = device.reopen();
    const repair = repairFilesystem(device, checkFilesystem(device, { verifyData: true }));
    expect(repair.remaining).toEqual([]);
    expect(repair.fixed.some((l) => /data block count \d+ set to \d+/.test(l))).toBe(true);
    device = device.reopen();
    expectFsClean(device);
    fs = GroveFs.open(device);
    const [, from, to] = /bytes (\d+)-(\d+)/.exec(salvage.fixed[0]!)!.map(Number);
    const data = readFile(fs, "/d/big");
    expect(data.length).toBe(399 * 2 * 4096 + 4096);
    let lostChunks = 0;
    for (let i = 0; i < 400; i++) {
      const at = data.subarray(i * 2 * 4096, i * 2 * 4096 + 4096);
      if (i * 2 * 4096 >= from! && i * 2 * 4096 < to!) {
        expect(at.equals(Buffer.alloc(4096)), `chunk ${i} lies in the lost range`).toBe(true);
        lostChunks++;
      } else {
        expectBytes(at, chunk);
      }
    }
    expect(lostChunks).toBeGreaterThan(0);
    expectBytes(readFile(fs, "/other"), pattern(20_000, 8));
    fs.close();
  });
});
