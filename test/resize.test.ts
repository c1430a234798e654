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
 * the new space (and through either mountpoint of a daemon serving two
 * subvolumes); the refusals, each one line with its exit status.
 */
import * as nodeFs from "node:fs";
import { afterEach, describe, expect, it } from "vitest";
import { FileDevice, GroveError, Prng, SimDevice, type BlockDevice, SimulatedCrash, blockSizeBytes, readSuperblock, unreadableSlots } from "../kvstore/index.js";
import { GroveFs } from "../fs/index.js";
import { E2eVolume, e2eSkipReason, ok, run, sh } from "./e2e_helpers.js";
import { expectOneLineError, holdImage } from "./cli_helpers.js";
import { durableImage, expectErrno, expectFsClean, pattern, readFile, root, testClock, writeFile } from "./fs_helpers.js";

const mib = 1024 * 1024;
const testTimeoutMs = 120_000;

let volume: E2eVolume | null = null;
let loopDevice: string | null = null;

afterEach(async () => {
  if (loopDevice !== null) await run("losetup", ["-d", loopDevice]);
  loopDevice = null;
  await volume?.cleanup();
  volume = null;
});

function formatted(blocks: number, metadata?: "single" | "dup"): SimDevice {
  const device = new SimDevice(blocks);
  GroveFs.format(device, { clock: testClock(), metadata });
  return device.reopen();
}

/** Writes `count` files of `bytes` each under /d, stopping at the first ENOSPC; returns how many fit. */
function fill(g: GroveFs, count: number, bytes: number, seed = 1): number {
  try {
    g.mkdir("/d", 0o755, root);
  } catch (error) {
    if (!(error instanceof GroveError) || error.code !== "EEXIST") throw error;
  }
  for (let i = 0; i < count; i++) {
    try {
      writeFile(g, `/d/f${i}`, pattern(bytes, seed + i));
      g.sync();
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
    // Single metadata: nothing is moved by a shrink, and with dup the second copies of the nodes that survive
    // lie an eighth of the volume past them, which puts the floor past 8 MiB here (see the README's resize section).
    let device = formatted(8192, "single"); // 32 MiB
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

/** Opens `path` (an image or a block device) in this process, writes `count` files of 1 MiB, and closes it. */
function fillDevice(path: string, count: number, seed: number): number {
  const device = FileDevice.open(path, { lock: true });
  try {
    const g = GroveFs.open(device);
    try {
      return fill(g, count, mib, seed);
    } finally {
      g.close();
    }
  } finally {
    device.close();
  }
}

/** The files fillDevice wrote are all there, byte for byte. */
function expectFilled(path: string, count: number, seed: number): void {
  const device = FileDevice.open(path, { readOnly: true, lock: true });
  try {
    const g = GroveFs.open(device, { readOnly: true });
    for (let i = 0; i < count; i++) expect(readFile(g, `/d/f${i}`).equals(pattern(mib, seed + i)), `/d/f${i}`).toBe(true);
    g.close();
  } finally {
    device.close();
  }
}

function checkDevice(device: BlockDevice): void {
  try {
    expectFsClean(device);
  } finally {
    device.close();
  }
}

async function volumeBytes(v: E2eVolume, target: string): Promise<number> {
  const r = await v.groveOk(["info", target, "--json"]);
  return (JSON.parse(r.stdout) as { sizeBytes: number }).sizeBytes;
}

describe("grovefs resize on image files", () => {
  it(
    "grows an image to SIZE, by +SIZE and to max after truncate(1); the new space takes data, fsck clean",
    async () => {
      volume = await E2eVolume.create("resize-image");
      const v = volume;
      await v.mkfs("16M");
      let r = await v.groveOk(["resize", v.image, "48M"]);
      expect(r.stdout).toBe(`${v.image} grew from 16.0 MiB to 48.0 MiB (50331648 bytes)\n`);
      expect(nodeFs.statSync(v.image).size).toBe(48 * mib);
      r = await v.groveOk(["resize", v.image, "+16M"]);
      expect(r.stdout).toMatch(/grew from 48\.0 MiB to 64\.0 MiB/);
      nodeFs.truncateSync(v.image, 96 * mib + 1000);
      r = await v.groveOk(["resize", v.image, "max"]);
      expect(r.stdout).toMatch(/grew from 64\.0 MiB to 96\.0 MiB \(100663296 bytes\)/);
      r = await v.groveOk(["resize", v.image, "max"]);
      expect(r.stdout).toMatch(/is already 96\.0 MiB .*nothing changed/);
      r = await v.groveOk(["resize", v.image, "+6000"]);
      expect(r.stdout).toMatch(/grew from 96\.0 MiB to 96\.0 MiB \(100667392 bytes\) \(rounded down to a multiple of 4 KiB\)/);
      expect(await volumeBytes(v, v.image)).toBe(96 * mib + 4096);
      // Five times the first size, in files that land far past the old end.
      expect(fillDevice(v.image, 80, 1)).toBe(80);
      expectFilled(v.image, 80, 1);
      await v.groveOk(["fsck", v.image]);
      v.check();
    },
    testTimeoutMs,
  );

  it(
    "shrinks an image by -SIZE and to SIZE over free space, cutting the file; fsck clean",
    async () => {
      volume = await E2eVolume.create("resize-shrink");
      const v = volume;
      await v.mkfs("64M");
      expect(fillDevice(v.image, 8, 3)).toBe(8);
      let r = await v.groveOk(["resize", v.image, "-32M"]);
      expect(r.stdout).toMatch(/shrank from 64\.0 MiB to 32\.0 MiB/);
      expect(nodeFs.statSync(v.image).size).toBe(32 * mib);
      r = await v.groveOk(["resize", v.image, "16M"]);
      expect(r.stdout).toBe(`${v.image} shrank from 32.0 MiB to 16.0 MiB (16777216 bytes)\n`);
      expect(nodeFs.statSync(v.image).size).toBe(16 * mib);
      expectFilled(v.image, 8, 3);
      await v.groveOk(["fsck", v.image]);
      v.check();
    },
    testTimeoutMs,
  );

  it(
    "refuses a shrink over data, changing nothing; after deletes it shrinks to the size the refusal names",
    async () => {
      volume = await E2eVolume.create("resize-refused");
      const v = volume;
      await v.mkfs("64M");
      expect(fillDevice(v.image, 48, 3)).toBe(48);
      const refused = await v.grove(["resize", v.image, "16M"]);
      expectOneLineError(refused, /cannot shrink the volume to 4096 blocks \(16 MiB\): \d+ of the 12288 blocks past the new end are in use .*— delete what lies past the new end/, 1);
      expect(refused.stdout).toBe("");
      expect(nodeFs.statSync(v.image).size).toBe(64 * mib);
      expect(await volumeBytes(v, v.image)).toBe(64 * mib);
      v.check();
      const device = FileDevice.open(v.image, { lock: true });
      const g = GroveFs.open(device);
      for (let i = 8; i < 48; i++) g.unlink(`/d/f${i}`);
      g.close();
      device.close();
      // The deletes copied a few tree nodes into what was free then, high up; nothing is moved, so the floor lies there.
      const again = await v.grove(["resize", v.image, "16M"]);
      const floorBlocks = Number(/smallest size it can shrink to now is (\d+) blocks/.exec(again.stderr)?.[1] ?? "0");
      expect(floorBlocks, again.stderr).toBeGreaterThan(4096);
      expect(floorBlocks).toBeLessThan(16384);
      const r = await v.groveOk(["resize", v.image, String(floorBlocks * blockSizeBytes)]);
      expect(r.stdout).toMatch(/shrank from 64\.0 MiB to/);
      expect(nodeFs.statSync(v.image).size).toBe(floorBlocks * blockSizeBytes);
      expectFilled(v.image, 8, 3);
      await v.groveOk(["fsck", v.image]);
      v.check();
    },
    testTimeoutMs,
  );

  it("refuses bad sizes and targets in one line with exit status 1 (2 for usage), changing nothing", async () => {
    volume = await E2eVolume.create("resize-refuse");
    const v = volume;
    await v.mkfs("16M");
    expectOneLineError(await v.grove(["resize", v.image, "512K"]), /cannot resize the volume to 524288 bytes: a volume is at least 1048576 bytes/, 1);
    expectOneLineError(await v.grove(["resize", v.image, "-16M"]), /cannot resize the volume to 0 bytes/, 1);
    expectOneLineError(await v.grove(["resize", v.image, "-17M"]), /it cannot shrink by 17825792 bytes/, 1);
    expectOneLineError(await v.grove(["resize", v.image, "3Q"]), /invalid size '3Q' — give SIZE/, 1);
    expectOneLineError(await v.grove(["resize", v.image, "+max"]), /invalid size '\+max'/, 1);
    expectOneLineError(await v.grove(["resize", v.image, "--bogus"]), /invalid size '--bogus'/, 1);
    expectOneLineError(await v.grove(["resize", v.out("missing.img"), "32M"]), /no such image or mount point/, 1);
    expectOneLineError(await v.grove(["resize", v.mnt, "32M"]), /is a directory, but no grovefs is mounted there/, 1);
    expectOneLineError(await v.grove(["resize", v.image]), /missing required argument 'size'/, 2);
    nodeFs.writeFileSync(v.out("plain.img"), Buffer.alloc(2 * mib));
    expectOneLineError(await v.grove(["resize", v.out("plain.img"), "4M"]), /not a grovefs volume/, 1);
    const holder = await holdImage(v.image, v.dir);
    try {
      expectOneLineError(await v.grove(["resize", v.image, "32M"]), /in use by another grovefs process/, 1);
    } finally {
      holder.kill("SIGKILL");
    }
    expect(nodeFs.statSync(v.image).size).toBe(16 * mib);
    expect(await volumeBytes(v, v.image)).toBe(16 * mib);
    v.check();
  });
});

describe.skipIf(e2eSkipReason !== null)("grovefs resize on a loop device and a mounted volume", () => {
  it(
    "a loop device: refused past its size, grown to max after losetup -c, the new space takes data, fsck clean",
    async () => {
      volume = await E2eVolume.create("resize-loop");
      const v = volume;
      const backing = v.out("backing.img");
      nodeFs.writeFileSync(backing, "");
      nodeFs.truncateSync(backing, 16 * mib);
      loopDevice = (await ok("losetup", ["-f", "--show", backing])).trim();
      const loop = loopDevice;
      await v.groveOk(["mkfs", loop]);
      expectOneLineError(await v.grove(["resize", loop, "32M"]), /the device holds 16777216 bytes; the volume cannot grow to 33554432 bytes — grow the device first \(losetup -c/, 1);
      nodeFs.truncateSync(backing, 48 * mib);
      // The loop device still has its old size until losetup -c.
      expect((await v.groveOk(["resize", loop, "max"])).stdout).toMatch(/is already 16\.0 MiB/);
      await ok("losetup", ["-c", loop]);
      expect((await v.groveOk(["resize", loop, "max"])).stdout).toBe(`${loop} grew from 16.0 MiB to 48.0 MiB (50331648 bytes)\n`);
      expect(await volumeBytes(v, loop)).toBe(48 * mib);
      expect(fillDevice(loop, 40, 5)).toBe(40);
      expectFilled(loop, 40, 5);
      await v.groveOk(["fsck", loop]);
      checkDevice(FileDevice.open(loop, { readOnly: true }));
      // A block device is never cut: a shrink lowers the volume only.
      expectOneLineError(await v.grove(["resize", loop, "16M"]), /blocks past the new end are in use/, 1);
      expect(nodeFs.statSync(backing).size).toBe(48 * mib);
    },
    testTimeoutMs,
  );

  it(
    "a mounted volume grows and shrinks online: df follows, the new space takes data, refusals change nothing, fsck clean",
    async () => {
      // Single metadata, as in the library's shrink test: dup's second copies would put the floor past 24M.
      volume = await E2eVolume.create("resize-mount");
      await volume.mkfs("16M", ["--metadata", "single"]);
      await volume.mount();
      const v = volume;
      const dfBytes = async (): Promise<number> => Number((await sh('df -B1 --output=size "$1" | tail -1', [v.mnt])).trim());
      expect(await dfBytes()).toBe(16 * mib);
      expect((await v.groveOk(["resize", v.mnt, "64M"])).stdout).toBe(`${v.mnt} grew from 16.0 MiB to 64.0 MiB (67108864 bytes)\n`);
      expect(await dfBytes()).toBe(64 * mib);
      expect(nodeFs.statSync(v.image).size).toBe(64 * mib);
      // Three times what the volume held before, written through the kernel.
      await sh('dd if=/dev/urandom of="$1/big" bs=1M count=48 status=none && sha256sum "$1/big" > "$2"', [v.mnt, v.out("big.sum")]);
      expectOneLineError(await v.grove(["resize", v.mnt, "32M"]), /past the new end are in use/, 1);
      expect(await dfBytes()).toBe(64 * mib);
      // Through the image a daemon serves, too.
      expect((await v.groveOk(["resize", v.image, "+16M"])).stdout).toMatch(/grew from 64\.0 MiB to 80\.0 MiB/);
      expect(await dfBytes()).toBe(80 * mib);
      await sh('sha256sum -c --quiet "$1"', [v.out("big.sum")]);
      await sh('rm "$1/big"', [v.mnt]);
      // The daemon commits the delete before it looks: the space is free at once.
      expect((await v.groveOk(["resize", v.mnt, "24M"])).stdout).toMatch(/shrank from 80\.0 MiB to 24\.0 MiB/);
      expect(await dfBytes()).toBe(24 * mib);
      expect(nodeFs.statSync(v.image).size).toBe(24 * mib);
      await sh('dd if=/dev/urandom of="$1/again" bs=1M count=16 status=none && sync "$1/again"', [v.mnt]);
      await v.finish();
      expect(await volumeBytes(v, v.image)).toBe(24 * mib);
      await v.groveOk(["fsck", v.image]);
    },
    testTimeoutMs,
  );

  it(
    "a daemon serving two subvolumes resizes through either mountpoint: df follows on both, both take data, fsck clean",
    async () => {
      volume = await E2eVolume.mounted("resize-two", "16M");
      const v = volume;
      const second = v.out("second");
      nodeFs.mkdirSync(second);
      await v.groveOk(["clone", v.mnt, "default", "other"]);
      await v.groveOk(["mount", v.image, second, "--subvol", "other"]);
      try {
        const dfBytes = async (mountpoint: string): Promise<number> => Number((await sh('df -B1 --output=size "$1" | tail -1', [mountpoint])).trim());
        expect((await v.groveOk(["resize", second, "+32M"])).stdout).toMatch(/grew from 16\.0 MiB to 48\.0 MiB/);
        expect(await dfBytes(v.mnt)).toBe(48 * mib);
        expect(await dfBytes(second)).toBe(48 * mib);
        await sh('dd if=/dev/urandom of="$1/a" bs=1M count=16 status=none && dd if=/dev/urandom of="$2/b" bs=1M count=16 status=none && sync "$1/a" "$2/b"', [v.mnt, second]);
        expectOneLineError(await v.grove(["resize", v.mnt, "16M"]), /past the new end are in use/, 1);
      } finally {
        await v.groveOk(["umount", second]);
      }
      await v.finish();
      await v.groveOk(["fsck", v.image]);
    },
    testTimeoutMs,
  );
});
