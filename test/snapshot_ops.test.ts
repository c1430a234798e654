/**
 * Snapshots and clones through the library API: names and refusals, the
 * isolation of snapshots and clones from later writes, O(1) creation
 * (counted in device writes, not time), and deletions that run from the
 * maintenance tick and resume after a reopen. Every mutating test ends with
 * the checker (refcounts recomputed by a full walk).
 */
import { describe, expect, it } from "vitest";
import { SimDevice } from "../kvstore/index.js";
import { GroveFs, type GroveFsOptions } from "../fs/index.js";
import { O_CREAT, O_RDWR, expectBytes, expectErrno, expectFsClean, pattern, readFile, testClock } from "./fs_helpers.js";

const caller = { uid: 0, gid: 0 };

function fresh(blocks = 16384, options: GroveFsOptions = {}): { device: SimDevice; fs: GroveFs } {
  let device = new SimDevice(blocks);
  GroveFs.format(device, { clock: testClock() });
  device = device.reopen();
  return { device, fs: GroveFs.open(device, { clock: testClock(), ...options }) };
}

function put(fs: GroveFs, path: string, data: Buffer, at = 0): void {
  const fh = fs.create(path, 0o644, O_CREAT | O_RDWR, caller);
  fs.write(fh, data, data.length, at);
  fs.release(fh);
}

function closeAndCheck(fs: GroveFs, device: SimDevice): void {
  fs.close();
  expectFsClean(device.reopen());
}

describe("subvolume API", () => {
  it("validates names and refuses duplicates, missing sources, the served and the default subvolume", () => {
    const { device, fs } = fresh();
    expectErrno(() => fs.createSubvolume("", { readOnly: true }), "EINVAL");
    expectErrno(() => fs.createSubvolume("a/b", { readOnly: true }), "EINVAL");
    expectErrno(() => fs.createSubvolume("a\0b", { readOnly: true }), "EINVAL");
    expectErrno(() => fs.createSubvolume("a\nb", { readOnly: true }), "EINVAL");
    expectErrno(() => fs.createSubvolume("a\x7fb", { readOnly: true }), "EINVAL");
    expectErrno(() => fs.createSubvolume(".", { readOnly: true }), "EINVAL");
    expectErrno(() => fs.createSubvolume("..", { readOnly: true }), "EINVAL");
    expectErrno(() => fs.createSubvolume("x".repeat(256), { readOnly: true }), "ENAMETOOLONG");
    expectErrno(() => fs.createSubvolume("default", { readOnly: true }), "EEXIST");
    expectErrno(() => fs.createSubvolume("s", { from: "nope", readOnly: true }), "ENOENT");
    expect(fs.createSubvolume("x".repeat(255), { readOnly: true }).name).toHaveLength(255);
    fs.createSubvolume("s", { readOnly: true });
    expectErrno(() => fs.createSubvolume("s", { readOnly: false }), "EEXIST");
    expectErrno(() => fs.deleteSubvolume("default"), "EBUSY");
    expectErrno(() => fs.deleteSubvolume("nope"), "ENOENT");
    expectErrno(() => fs.snapshotView("nope"), "ENOENT");
    fs.createSubvolume("c", { readOnly: false });
    expectErrno(() => fs.snapshotView("c"), "EINVAL");
    const names = fs.listSubvolumes().map((s) => `${s.name}:${s.readOnly ? "ro" : "rw"}:${s.parentName}`);
    expect(names).toEqual(["c:rw:default", "default:rw:null", "s:ro:default", `${"x".repeat(255)}:ro:default`]);
    fs.close();
    const clone = GroveFs.open(device.reopen(), { subvolume: "c" });
    expect(clone.subvolumeName).toBe("c");
    expectErrno(() => clone.deleteSubvolume("default"), "EPERM");
    expectErrno(() => clone.deleteSubvolume("c"), "EBUSY");
    clone.close();
    expectErrno(() => GroveFs.open(device.reopen(), { subvolume: "nope" }), "ENOENT");
    expectFsClean(device.reopen());
  });

  it("a snapshot keeps what was written before it, buffered data included; later writes, truncates and unlinks do not reach it", () => {
    const { device, fs } = fresh();
    const a = pattern(700_000, 1);
    put(fs, "/a", a);
    fs.mkdir("/d", 0o755, caller);
    put(fs, "/d/small", Buffer.from("tiny"));
    // Not synced: createSubvolume commits first.
    fs.createSubvolume("before", { readOnly: true });
    put(fs, "/a", pattern(5000, 2), 100_000);
    fs.truncate("/a", 50_000);
    fs.unlink("/d/small");
    put(fs, "/new", pattern(10, 3));
    const view = fs.snapshotView("before");
    expectBytes(readFile(view, "/a"), a);
    expect(readFile(view, "/d/small").toString()).toBe("tiny");
    expectErrno(() => view.getattr("/new"), "ENOENT");
    expectErrno(() => view.unlink("/a"), "EROFS");
    expectErrno(() => view.truncate("/a", 0), "EROFS");
    expectErrno(() => view.setxattr("/a", "user.x", Buffer.from("1"), 0), "EROFS");
    expectErrno(() => view.open("/a", O_RDWR), "EROFS");
    expect(readFile(fs, "/a").length).toBe(50_000);
    closeAndCheck(fs, device);
    // A snapshot mounts read-only.
    const ro = GroveFs.open(device.reopen(), { subvolume: "before" });
    expect(ro.readOnly).toBe(true);
    expectBytes(readFile(ro, "/a"), a);
    expectErrno(() => ro.mkdir("/x", 0o755, caller), "EROFS");
    ro.close();
  });

  it("a clone is writable and independent of its source, both ways; a clone of a snapshot too", () => {
    let { device, fs } = fresh();
    const a = pattern(300_000, 1);
    put(fs, "/a", a);
    fs.createSubvolume("snap", { readOnly: true });
    fs.createSubvolume("c1", { readOnly: false });
    fs.createSubvolume("c2", { from: "snap", readOnly: false });
    put(fs, "/a", pattern(4096, 9), 8192);
    fs.close();
    for (const name of ["c1", "c2"]) {
      device = device.reopen();
      const clone = GroveFs.open(device, { subvolume: name });
      expectBytes(readFile(clone, "/a"), a);
      put(clone, "/a", pattern(1000, name === "c1" ? 5 : 6), 0);
      put(clone, `/only-${name}`, pattern(100, 7));
      clone.close();
    }
    device = device.reopen();
    fs = GroveFs.open(device);
    const main = Buffer.from(a);
    pattern(4096, 9).copy(main, 8192);
    expectBytes(readFile(fs, "/a"), main);
    expectErrno(() => fs.getattr("/only-c1"), "ENOENT");
    expectBytes(readFile(fs.snapshotView("snap"), "/a"), a);
    fs.close();
    device = device.reopen();
    const c1 = GroveFs.open(device, { subvolume: "c1" });
    const expected = Buffer.from(a);
    pattern(1000, 5).copy(expected, 0);
    expectBytes(readFile(c1, "/a"), expected);
    expectErrno(() => c1.getattr("/only-c2"), "ENOENT");
    closeAndCheck(c1, device);
  });

  it("creation is O(1): the blocks written (and flushes) for a snapshot do not grow with the volume", () => {
    const written = (files: number): number => {
      const { fs, device } = fresh(32768);
      for (let i = 0; i < files; i++) put(fs, `/f${i}`, pattern(100 + (i % 5000), i));
      fs.sync();
      const before = device.operations;
      fs.createSubvolume("s", { readOnly: true });
      const cost = device.operations - before;
      closeAndCheck(fs, device);
      return cost;
    };
    const small = written(10);
    const large = written(3000);
    console.log(`snapshot of 10 files: ${small} block writes and flushes; of 3000 files: ${large}`);
    // A few tree paths and two superblocks either way; 3000 files span hundreds of nodes.
    expect(large).toBeLessThanOrEqual(small + 8);
  });

  it("a deletion runs from the maintenance tick, a slice at a time, and resumes after a reopen", () => {
    let clockNs = 1_700_000_000_000_000_000n;
    const clock = (): bigint => (clockNs += 1_000n);
    let { device, fs } = fresh(16384, { clock, deletionStepNodes: 1 });
    for (let i = 0; i < 600; i++) put(fs, `/f${i}`, pattern(6000, i));
    fs.createSubvolume("s", { readOnly: true });
    for (let i = 0; i < 600; i++) fs.unlink(`/f${i}`);
    fs.sync();
    const usedWithSnapshot = fs.space.usage().usedBlocks;
    fs.deleteSubvolume("s");
    expect(fs.listSubvolumes().map((s) => s.name)).toEqual(["default"]);
    expect(fs.pendingDeletions()).toBe(1);
    // One step, committed, then a clean close part way: the next open carries on.
    fs.runDeletions(1);
    fs.close();
    device = device.reopen();
    expectFsClean(device);
    fs = GroveFs.open(device, { clock, deletionStepNodes: 1 });
    expect(fs.pendingDeletions()).toBe(1);
    let ticks = 0;
    while (fs.pendingDeletions() > 0 && ticks < 10_000) {
      clockNs += 2_000_000_000n;
      fs.maintenance();
      ticks++;
    }
    expect(fs.pendingDeletions()).toBe(0);
    fs.sync();
    expect(fs.space.usage().usedBlocks).toBeLessThan(usedWithSnapshot - 600);
    closeAndCheck(fs, device);
  });

  it("a full volume held by a snapshot refuses overwrites with ENOSPC, cleanly, and deleting the snapshot makes room", () => {
    const { device, fs } = fresh(2048);
    const data = pattern(5 * 1024 * 1024, 3);
    put(fs, "/big", data);
    fs.createSubvolume("s", { readOnly: true });
    // The snapshot holds the old blocks, so rewriting the file needs room the volume does not have.
    let refused = false;
    const fh = fs.open("/big", O_RDWR);
    try {
      for (let at = 0; at < data.length; at += 256 * 1024) {
        fs.write(fh, pattern(256 * 1024, 4, at), 256 * 1024, at);
        fs.fsync(fh, false);
      }
    } catch (error) {
      expect((error as { code?: string }).code).toBe("ENOSPC");
      refused = true;
    }
    fs.release(fh);
    expect(refused).toBe(true);
    expect(fs.store.isPoisoned).toBe(false);
    expectBytes(readFile(fs.snapshotView("s"), "/big"), data);
    fs.deleteSubvolume("s");
    fs.finishDeletions();
    const again = fs.open("/big", O_RDWR);
    for (let at = 0; at < data.length; at += 256 * 1024) fs.write(again, pattern(256 * 1024, 5, at), 256 * 1024, at);
    fs.release(again);
    fs.sync();
    closeAndCheck(fs, device);
  });

  it("on a volume held full by a snapshot, deletes are refused cleanly (ENOSPC, never a poisoned volume) until the snapshot goes", () => {
    const { device, fs } = fresh(2048);
    fs.mkdir("/d", 0o755, caller);
    let files = 0;
    try {
      for (;; files++) put(fs, `/d/f${files}`, Buffer.alloc(100, 7));
    } catch (error) {
      expect((error as { code?: string }).code).toBe("ENOSPC");
    }
    fs.sync();
    fs.createSubvolume("s", { readOnly: true });
    let refused = 0;
    for (let i = 0; i < files; i++) {
      try {
        fs.unlink(`/d/f${i}`);
        fs.sync();
      } catch (error) {
        expect((error as { code?: string }).code).toBe("ENOSPC");
        expect(fs.store.isPoisoned).toBe(false);
        refused++;
        if (refused > 20) break;
      }
    }
    expect(refused).toBeGreaterThan(0);
    // Deleting the snapshot is the way out, even on a full volume.
    fs.deleteSubvolume("s");
    fs.finishDeletions();
    for (let i = 0; i < files; i++) {
      try {
        fs.unlink(`/d/f${i}`);
      } catch (error) {
        expect((error as { code?: string }).code).toBe("ENOENT");
      }
    }
    expect(fs.readdir("/d").filter((e) => e.name !== "." && e.name !== "..")).toHaveLength(0);
    closeAndCheck(fs, device);
  });

  it("a deletion on a nearly full volume makes progress in smaller steps, and a refused step never stops the periodic commit", () => {
    let clockNs = 1_700_000_000_000_000_000n;
    const clock = (): bigint => (clockNs += 1_000n);
    let { device, fs } = fresh(4096, { clock });
    // Files of six one-block extents held inline; after the snapshot every record is rewritten,
    // so the snapshot holds its leaves alone but shares every extent: its drop is all dropped references.
    for (let f = 0; f < 200; f++) {
      const fh = fs.create(`/f${f}`, 0o644, O_CREAT | O_RDWR, caller);
      for (let b = 0; b < 6; b++) fs.write(fh, Buffer.alloc(10, 1), 10, b * 2 * 4096);
      fs.release(fh);
    }
    fs.createSubvolume("s", { readOnly: true });
    for (let f = 0; f < 200; f++) fs.chmod(`/f${f}`, 0o600);
    fs.sync();
    fs.deleteSubvolume("s");
    try {
      for (let n = 0; ; n++) {
        put(fs, `/e${n}`, Buffer.alloc(100, 2));
        if (n % 100 === 0) fs.sync();
      }
    } catch (error) {
      expect((error as { code?: string }).code).toBe("ENOSPC");
    }
    fs.sync();
    expect(fs.pendingDeletions()).toBe(1);
    fs.chmod("/e0", 0o600);
    const before = fs.store.committedGeneration;
    clockNs += 60_000_000_000n;
    fs.maintenance();
    expect(fs.store.committedGeneration).toBeGreaterThan(before);
    fs.finishDeletions();
    expect(fs.pendingDeletions()).toBe(0);
    fs.close();
    device = device.reopen();
    expectFsClean(device);
  });

  it("a read-only open lists subvolumes and serves views but creates and deletes nothing", () => {
    const { device, fs } = fresh();
    put(fs, "/a", pattern(10, 1));
    fs.createSubvolume("s", { readOnly: true });
    fs.close();
    const ro = GroveFs.open(device.reopen(), { readOnly: true });
    expect(ro.listSubvolumes().map((s) => s.name)).toEqual(["default", "s"]);
    expect(readFile(ro.snapshotView("s"), "/a").length).toBe(10);
    expectErrno(() => ro.createSubvolume("t", { readOnly: true }), "EROFS");
    expectErrno(() => ro.deleteSubvolume("s"), "EROFS");
    ro.close();
  });
});
