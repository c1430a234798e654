/**
 * Several subvolumes served at once through the library: GroveFs.attach
 * makes a second filesystem on an open volume. They share one commit
 * stream, so a commit by either holds the buffered data of both (checked
 * against the durable image, as after power loss); admission leaves free
 * what both were promised; a served subvolume is never served twice or
 * deleted; and the store outlives the first filesystem closed. Every test
 * ends with the checker.
 */
import { describe, expect, it } from "vitest";
import { SimDevice } from "../kvstore/index.js";
import { GroveFs } from "../fs/index.js";
import { O_CREAT, O_RDWR, durableImage, expectBytes, expectErrno, expectFsClean, pattern, readFile, testClock } from "./fs_helpers.js";

const caller = { uid: 0, gid: 0 };
const blocks = 16384;

function fresh(deviceBlocks = blocks): { device: SimDevice; fs: GroveFs } {
  let device = new SimDevice(deviceBlocks);
  GroveFs.format(device, { clock: testClock() });
  device = device.reopen();
  return { device, fs: GroveFs.open(device, { clock: testClock() }) };
}

/** A file written (buffered, not committed) and left closed. */
function put(fs: GroveFs, path: string, data: Buffer): void {
  const fh = fs.create(path, 0o644, O_CREAT | O_RDWR, caller);
  fs.write(fh, data, data.length, 0);
  fs.release(fh);
}

/** The volume as power loss now would leave it. */
function afterPowerLoss(device: SimDevice): SimDevice {
  return SimDevice.fromDurable(durableImage(device), blocks);
}

describe("GroveFs.attach: several subvolumes of one volume", () => {
  it("a commit by either filesystem holds the buffered data of both", () => {
    const { device, fs } = fresh();
    fs.createSubvolume("clone", { readOnly: false });
    const clone = fs.attach({ subvolume: "clone" });
    expect(clone.subvolumeName).toBe("clone");
    put(fs, "/in-default", pattern(300_000, 1));
    put(clone, "/in-clone", pattern(200_000, 2));
    clone.mkdir("/dir", 0o755, caller);
    // Only the default's sync: the clone's data and its new inodes (counters) must be in it too.
    fs.sync();
    const crashed = afterPowerLoss(device);
    expectFsClean(crashed);
    const a = GroveFs.open(crashed, { readOnly: true });
    expectBytes(readFile(a, "/in-default"), pattern(300_000, 1));
    a.close();
    const b = GroveFs.open(SimDevice.fromDurable(durableImage(device), blocks), { readOnly: true, subvolume: "clone" });
    expectBytes(readFile(b, "/in-clone"), pattern(200_000, 2));
    expect(b.getattr("/dir").mode & 0o170000).toBe(0o040000);
    b.close();
    // And the other way round, with a file of each made after the first commit.
    put(fs, "/second", pattern(5000, 3));
    put(clone, "/second", pattern(7000, 4));
    clone.sync();
    const again = GroveFs.open(afterPowerLoss(device), { readOnly: true, subvolume: "clone" });
    expectBytes(readFile(again, "/second"), pattern(7000, 4));
    again.close();
    const again2 = GroveFs.open(afterPowerLoss(device), { readOnly: true });
    expectBytes(readFile(again2, "/second"), pattern(5000, 3));
    again2.close();
    clone.close();
    fs.close();
    expectFsClean(device.reopen());
  });

  it("closing the first leaves the second serving; the store closes with the last", () => {
    const { device, fs } = fresh();
    fs.createSubvolume("clone", { readOnly: false });
    const clone = fs.attach({ subvolume: "clone" });
    put(fs, "/a", pattern(10_000, 5));
    fs.close();
    expectErrno(() => fs.getattr("/a"), "EBADF");
    put(clone, "/b", pattern(20_000, 6));
    clone.createSubvolume("snap-of-clone", { readOnly: true });
    expectBytes(readFile(clone.snapshotView("snap-of-clone"), "/b"), pattern(20_000, 6));
    // A third, attached through the one still open.
    const again = clone.attach({});
    expectBytes(readFile(again, "/a"), pattern(10_000, 5));
    clone.close();
    expect(again.listSubvolumes().map((s) => s.name)).toContain("snap-of-clone");
    again.close();
    expectFsClean(device.reopen());
    const reopened = GroveFs.open(device.reopen(), { subvolume: "clone", readOnly: true });
    expectBytes(readFile(reopened, "/b"), pattern(20_000, 6));
    reopened.close();
  });

  it("refuses serving a subvolume twice, deleting one served anywhere, and writes to a snapshot", () => {
    const { device, fs } = fresh();
    fs.createSubvolume("clone", { readOnly: false });
    fs.createSubvolume("snap", { readOnly: true });
    expectErrno(() => fs.attach({}), "EBUSY", "EBUSY_subvolume_served");
    expectErrno(() => fs.attach({ subvolume: "nope" }), "ENOENT");
    expectErrno(() => fs.attach({ commitIntervalMs: 10 }), "EINVAL");
    const clone = fs.attach({ subvolume: "clone" });
    const snap = fs.attach({ subvolume: "snap" });
    expect(snap.readOnly).toBe(true);
    expectErrno(() => snap.mkdir("/x", 0o755, caller), "EROFS");
    expectErrno(() => fs.deleteSubvolume("clone"), "EBUSY", "EBUSY_subvolume_mounted");
    expectErrno(() => clone.deleteSubvolume("snap"), "EBUSY", "EBUSY_subvolume_mounted");
    expectErrno(() => snap.deleteSubvolume("clone"), "EBUSY");
    expectErrno(() => clone.attach({ subvolume: "clone" }), "EBUSY");
    clone.close();
    // Once it is no longer served, it can go (from the read-only one too: the volume is writable).
    snap.deleteSubvolume("clone");
    snap.close();
    fs.finishDeletions();
    fs.close();
    expectFsClean(device.reopen());
  });

  it("on a volume opened read-only, only read-only ones attach", () => {
    const { device, fs } = fresh();
    fs.createSubvolume("clone", { readOnly: false });
    fs.close();
    const ro = GroveFs.open(device.reopen(), { readOnly: true });
    expectErrno(() => ro.attach({ subvolume: "clone" }), "EROFS");
    const clone = ro.attach({ subvolume: "clone", readOnly: true });
    expect(clone.readOnly).toBe(true);
    clone.close();
    ro.close();
  });

  it("deleting a snapshot tells every watcher, and closes its one view for all of them", () => {
    const { device, fs } = fresh();
    put(fs, "/f", pattern(9000, 7));
    fs.createSubvolume("clone", { readOnly: false });
    const clone = fs.attach({ subvolume: "clone" });
    const seen: string[] = [];
    fs.watchSubvolumes({ deleting: (n) => seen.push(`a-deleting ${n}`), changed: (n) => seen.push(`a-changed ${n}`) });
    const stop = clone.watchSubvolumes({ deleting: (n) => seen.push(`b-deleting ${n}`), changed: (n) => seen.push(`b-changed ${n}`) });
    fs.createSubvolume("snap", { readOnly: true });
    const view = clone.snapshotView("snap");
    expect(fs.snapshotView("snap")).toBe(view);
    expectBytes(readFile(view, "/f"), pattern(9000, 7));
    clone.deleteSubvolume("snap");
    expect(seen).toEqual(["a-changed snap", "b-changed snap", "a-deleting snap", "b-deleting snap", "a-changed snap", "b-changed snap"]);
    expectErrno(() => view.getattr("/f"), "EBADF");
    stop();
    expectErrno(() => fs.deleteSubvolume("clone"), "EBUSY");
    expect(seen).toHaveLength(6);
    clone.close();
    fs.finishDeletions();
    fs.close();
    expectFsClean(device.reopen());
  });

  it("admission leaves free what the other filesystem's buffered data was promised", () => {
    // A small volume: the clone buffers most of the free space, then the default may not take it.
    const small = 4096;
    let device = new SimDevice(small);
    GroveFs.format(device, { clock: testClock() });
    device = device.reopen();
    const fs = GroveFs.open(device, { clock: testClock() });
    fs.createSubvolume("clone", { readOnly: false });
    const clone = fs.attach({ subvolume: "clone" });
    const free = fs.statfs().bavail;
    const big = Math.floor(free * 0.6) * 4096;
    put(clone, "/big", pattern(big, 8));
    // statfs on either counts the other's buffered data.
    expect(fs.statfs().bavail).toBeLessThan(free - big / 4096 + 16);
    const fh = fs.create("/other", 0o644, O_CREAT | O_RDWR, caller);
    expectErrno(() => fs.write(fh, pattern(big, 9), big, 0), "ENOSPC");
    fs.release(fh);
    // The clone's promise is kept: its data reaches the disk.
    fs.sync();
    expectBytes(readFile(clone, "/big"), pattern(big, 8));
    clone.close();
    fs.close();
    expectFsClean(device.reopen());
  });

  it("an orphan of the attached subvolume is freed when it is attached", () => {
    const { device, fs } = fresh();
    fs.createSubvolume("clone", { readOnly: false });
    const clone = fs.attach({ subvolume: "clone" });
    put(clone, "/gone", pattern(50_000, 10));
    const fh = clone.open("/gone", O_RDWR);
    clone.unlink("/gone");
    clone.sync();
    // Power loss with the unlinked file still open: an orphan in the clone's tree.
    const crashed = afterPowerLoss(device);
    const first = GroveFs.open(crashed, { clock: testClock() });
    const used = first.space.usage().usedBlocks;
    const again = first.attach({ subvolume: "clone" });
    expect(again.info().orphans).toBe(0);
    expect(first.space.usage().usedBlocks).toBeLessThan(used);
    again.close();
    first.close();
    expectFsClean(crashed.reopen());
    void fh;
  });
});
