/**
 * Resizing a volume (GroveFs.resize, Store.resize, FreeSpace.resize, and
 * `grovefs resize`).
 *
 * Library level, on simulated devices: growth makes the new blocks usable at
 * once (data that did not fit before fits after, and lands past the old
 * end), survives a reopen, and a shrink is refused while any block past the
 * new end is in use, allowed once they are all free; both leave a volume the
 * full checker passes. A crash at every device operation of a grow and of a
 * shrink leaves the old size or the new one, checker-clean.
 *
 * CLI level (root, real kernel objects): an image file grown to a size, by
 * +SIZE and to max after truncate(1); a loop device grown with
 * `losetup -c` and `resize max`; a mounted volume grown and shrunk online
 * through the daemon, with df showing the new size and data written into
 * the new space; the refusals, each one line with its exit status.
 */
import { describe, expect, it } from "vitest";
import { GroveError, Prng, SimDevice, SimulatedCrash, blockSizeBytes, readSuperblock, unreadableSlots } from "../kvstore/index.js";
import { GroveFs } from "../fs/index.js";
import { durableImage, expectErrno, expectFsClean, pattern, readFile, root, testClock, writeFile } from "./fs_helpers.js";

const mib = 1024 * 1024;
const testTimeoutMs = 120_000;

function formatted(blocks: number): SimDevice {
  const device = new SimDevice(blocks);
  GroveFs.format(device, { clock: testClock() });
  return device.reopen();
}

/** Writes `count` files of `bytes` each under /d, stopping at the first ENOSPC; returns how many fit. */
function fill(fs: GroveFs, count: number, bytes: number, seed = 1): number {
  try {
    fs.mkdir("/d", 0o755, root);
  } catch (error) {
    if (!(error instanceof GroveError) || error.code !== "EEXIST") throw error;
  }
  for (let i = 0; i < count; i++) {
    try {
      writeFile(fs, `/d/f${i}`, pattern(bytes, seed + i));
      fs.sync();
    } catch (error) {
      if (error instanceof GroveError && error.code === "ENOSPC") return i;
      throw error;
    }
  }
  return count;
}

/** The highest block any file's data or any node uses, from the checker's reachability. */
function highestUsedBlock(device: SimDevice): number {
  const report = expectFsClean(device);
  let highest = 0;
  for (let lba = 0; lba < report.space.forest.deviceBlocks; lba++) if (report.space.forest.reachable.get(lba)) highest = lba;
  return highest;
}

describe("resize on the library", () => {
  it(
    "grows: data that did not fit before fits after, past the old end, and survives a reopen",
    () => {
      const oldBlocks = 2048; // 8 MiB
      let device = formatted(oldBlocks);
      let fs = GroveFs.open(device, { clock: testClock() });
      const fitted = fill(fs, 20, mib);
      expect(fitted).toBeLessThan(8);
      const result = fs.resize({ to: 32 * mib });
      expect(result).toEqual({ oldBytes: 8 * mib, newBytes: 32 * mib, deviceBytes: 32 * mib, rounded: false });
      expect(device.blockCount).toBe(8192);
      expect(fs.statfs().blocks).toBe(8192);
      expect(fill(fs, 20, mib)).toBe(20);
      fs.close();
      device = device.reopen();
      expect(readSuperblock(device).deviceBlocks).toBe(8192);
      expect(highestUsedBlock(device)).toBeGreaterThan(oldBlocks);
      fs = GroveFs.open(device, { clock: testClock() });
      for (let i = 0; i < 20; i++) expect(readFile(fs, `/d/f${i}`).equals(pattern(mib, 1 + i))).toBe(true);
      expect(fs.info().sizeBytes).toBe(32 * mib);
      fs.close();
      expectFsClean(device.reopen());
    },
    testTimeoutMs,
  );

  it("grows by a difference, rounds down to whole blocks, and takes max as the device's size", () => {
    const device = formatted(1024);
    const fs = GroveFs.open(device, { clock: testClock() });
    expect(fs.resize({ by: 4 * mib + 100 })).toEqual({ oldBytes: 4 * mib, newBytes: 8 * mib, deviceBytes: 8 * mib, rounded: true });
    // The device holds 8 MiB now: max is where the volume already is.
    expect(fs.resize({ max: true }).newBytes).toBe(8 * mib);
    const generation = fs.store.committedGeneration;
    expect(fs.resize({ by: 0 }).newBytes).toBe(8 * mib);
    expect(fs.store.committedGeneration).toBe(generation);
    fs.close();
    expectFsClean(device.reopen());
  });

  it("refuses a shrink over blocks in use, changing nothing, and allows one over free blocks", () => {
    let device = formatted(8192); // 32 MiB
    let fs = GroveFs.open(device, { clock: testClock() });
    expect(fill(fs, 24, mib)).toBe(24);
    const error = expectErrno(() => fs.resize({ to: 8 * mib }), "ENOSPC", "ENOSPC_resize_in_use");
    expect(error.message).toMatch(/blocks past the new end are in use .*smallest size it can shrink to now is \d+ blocks/);
    expect(fs.statfs().blocks).toBe(8192);
    expect(device.blockCount).toBe(8192);
    // Free everything past the first few files, then the same shrink goes through.
    for (let i = 2; i < 24; i++) fs.unlink(`/d/f${i}`);
    fs.sync();
    const floor = fs.space.shrinkFloorBlocks();
    expect(floor).toBeLessThan(2048);
    expect(fs.resize({ to: 8 * mib })).toMatchObject({ oldBytes: 32 * mib, newBytes: 8 * mib, deviceBytes: 8 * mib });
    // The image is cut after the commits, and both superblock slots name the new size.
    expect(device.blockCount).toBe(2048);
    expect(fs.statfs().blocks).toBe(2048);
    writeFile(fs, "/after", pattern(mib, 99));
    fs.close();
    device = device.reopen();
    expect(unreadableSlots(device)).toEqual([]);
    fs = GroveFs.open(device, { clock: testClock() });
    expect(readFile(fs, "/d/f1").equals(pattern(mib, 2))).toBe(true);
    expect(readFile(fs, "/after").equals(pattern(mib, 99))).toBe(true);
    fs.close();
    expectFsClean(device.reopen());
  });

  it("refuses sizes below the minimum and a read-only volume", () => {
    const device = formatted(4096);
    const fs = GroveFs.open(device, { clock: testClock() });
    expectErrno(() => fs.resize({ to: 512 * 1024 }), "EINVAL", "EINVAL_resize_size");
    expectErrno(() => fs.resize({ by: -64 * mib }), "EINVAL", "EINVAL_resize_size");
    expect(fs.statfs().blocks).toBe(4096);
    fs.close();
    const again = device.reopen();
    const readOnly = GroveFs.open(again, { readOnly: true });
    expectErrno(() => readOnly.resize({ by: mib }), "EROFS");
    readOnly.close();
    expectFsClean(again.reopen());
  });

  it(
    "a full volume grown and shrunk back to the start of its free tail is full again, and still takes deletes and new writes",
    () => {
      let device = formatted(2048);
      let fs = GroveFs.open(device, { clock: testClock() });
      const fitted = fill(fs, 2000, 16 * 1024);
      expect(fitted).toBeLessThan(2000);
      fs.resize({ to: 32 * mib });
      const floor = fs.space.shrinkFloorBlocks();
      // The grow's own commit may have put a few nodes past the old end.
      expect(floor).toBeLessThan(2048 + 64);
      expectErrno(() => fs.resize({ to: (floor - 1) * blockSizeBytes }), "ENOSPC", "ENOSPC_resize_in_use");
      fs.resize({ to: floor * blockSizeBytes });
      expect(fs.statfs().blocks).toBe(floor);
      expectErrno(() => writeFile(fs, "/more", pattern(mib, 5)), "ENOSPC");
      for (let i = 0; i < fitted; i += 2) fs.unlink(`/d/f${i}`);
      fs.sync();
      writeFile(fs, "/more", pattern(mib, 5));
      fs.close();
      device = device.reopen();
      expect(device.blockCount).toBe(floor);
      fs = GroveFs.open(device, { clock: testClock() });
      expect(readFile(fs, "/d/f1").equals(pattern(16 * 1024, 2))).toBe(true);
      expect(readFile(fs, "/more").equals(pattern(mib, 5))).toBe(true);
      fs.close();
      expectFsClean(device.reopen());
    },
    testTimeoutMs,
  );

  for (const kind of ["grow", "shrink"] as const) {
    it(
      `a crash at any device operation of a ${kind} leaves the old size or the new one, checker-clean`,
      () => {
        const base = formatted(4096);
        const setup = GroveFs.open(base, { clock: testClock() });
        writeFile(setup, "/keep", pattern(300_000, 7));
        setup.close();
        const image = durableImage(base.reopen());
        const [fromBlocks, toBlocks] = kind === "grow" ? [4096, 6144] : [4096, 2048];
        const seen = new Set<number>();
        for (let crashAt = 1; ; crashAt++) {
          const device = SimDevice.fromDurable(image, fromBlocks);
          const fs = GroveFs.open(device, { clock: testClock() });
          device.crashAtOperation = device.operations + crashAt;
          let crashed = false;
          try {
            fs.resize({ to: toBlocks * blockSizeBytes });
          } catch (error) {
            if (!(error instanceof SimulatedCrash)) throw error;
            crashed = true;
          }
          const after = crashed ? device.recover(new Prng(crashAt)) : device.reopen();
          const size = readSuperblock(after).deviceBlocks;
          expect([fromBlocks, toBlocks], `crash at ${crashAt}`).toContain(size);
          seen.add(size);
          expectFsClean(after);
          const reopened = GroveFs.open(after, { clock: testClock() });
          expect(readFile(reopened, "/keep").equals(pattern(300_000, 7))).toBe(true);
          expect(reopened.statfs().blocks).toBe(size);
          reopened.close();
          if (!crashed) break;
          expect(crashAt).toBeLessThan(200);
        }
        expect([...seen].sort()).toEqual([fromBlocks, toBlocks].sort());
      },
      testTimeoutMs,
    );
  }
});
