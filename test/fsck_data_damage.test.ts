/**
 * fsck's report of damaged file data: one line per file, with its path, its
 * subvolume, the blocks and the damaged byte ranges; and no advice to run -y,
 * which cannot give data back.
 */
import { describe, expect, it } from "vitest";
import { formatFsckText, type FsckResult } from "../cli/fsck.js";
import { checkFilesystem } from "../fs/index.js";
import { SimDevice, blockSizeBytes } from "../kvstore/index.js";
import { FsHarness, fileExtents, pattern, root, writeFile } from "./fs_helpers.js";

const B = blockSizeBytes;

function flip(device: SimDevice, lba: number, offset: number): SimDevice {
  const image = device.reopen().snapshotLive();
  image.get(lba)![offset]! ^= 0x40;
  return SimDevice.fromDurable(image, device.blockCount);
}

describe("fsck: damaged data blocks", () => {
  it("are reported once per file, with path, subvolume and byte ranges, and -y is not suggested", () => {
    const h = new FsHarness(4096);
    h.fs.mkdir("/d", 0o755, root);
    writeFile(h.fs, "/d/f", pattern(4 * B, 5));
    writeFile(h.fs, "/g", pattern(2 * B, 6));
    const ino = h.fs.getattr("/d/f").ino;
    h.fs.close();
    h.device = h.device.reopen();
    const extents = fileExtents(h.device, ino);
    expect(extents.length).toBe(1);
    const lba = extents[0]!.lba;
    const damaged = flip(flip(h.device, lba, 10), lba + 2, 4000);

    const report = checkFilesystem(damaged, { verifyData: true });
    expect(report.problems).toEqual([
      `inode ${ino} ("/d/f" in the default subvolume): data blocks ${lba}, ${lba + 2} fail their checksum; ` +
        `damaged file bytes 0-${B - 1}, ${2 * B}-${3 * B - 1} (${2 * B} bytes)`,
    ]);

    const result: FsckResult = {
      image: "disk.img",
      mode: "check",
      exitCode: 4,
      problems: report.problems,
      notes: [],
      repaired: [],
      remaining: report.problems,
      counts: null,
    };
    const text = formatFsckText(result);
    expect(text).not.toMatch(/fsck -y disk\.img/);
    expect(text).toMatch(/fsck -y cannot repair it: restore the damaged files from a backup or a snapshot/);
  });
});
