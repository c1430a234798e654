/**
 * Duplicate metadata through the CLI and the kernel: an image made by
 * `mkfs --metadata dup` whose inode tree copies are damaged on disk mounts
 * and reads back whole (through the kernel, from other processes); the
 * daemon logs each repair, `grovefs info` on the mountpoint shows its live
 * counters, the repairs are written by the next commit, and fsck is then
 * clean; damaged again while unmounted, fsck -y corrects it (1), then 0.
 */
import { afterEach, describe, expect, it } from "vitest";
import { checkFilesystem } from "../fs/index.js";
import { FileDevice, Prng, blockSizeBytes } from "../kvstore/index.js";
import { E2eVolume, checksums, e2eSkipReason, sh, overwriteBlock } from "./e2e_helpers.js";
import { reachableNodes } from "./helpers.js";

const nodeLbaOffset = 8;

/** First copies of the default subvolume's inode tree nodes (owner 256): every file's stat reads them. */
function inodeTreeFirstCopies(image: string): number[] {
  const device = FileDevice.open(image, { readOnly: true });
  try {
    const report = checkFilesystem(device);
    expect(report.problems).toEqual([]);
    const block = Buffer.alloc(blockSizeBytes);
    return reachableNodes(device, report.space.forest)
      .filter((n) => n.owner === 256)
      .filter((n) => {
        device.read(n.lba, block);
        return Number(block.readBigUInt64LE(nodeLbaOffset)) === n.lba;
      })
      .map((n) => n.lba);
  } finally {
    device.close();
  }
}

describe.skipIf(e2eSkipReason !== null)("duplicate metadata through the CLI and the kernel", () => {
  let volume: E2eVolume | null = null;
  afterEach(async () => {
    await volume?.cleanup();
    volume = null;
  });

  it("damaged inode tree copies heal on read (files intact, repairs logged and counted, fsck clean after); fsck -y heals them unmounted", async () => {
    const v = await E2eVolume.create("dup");
    volume = v;
    await v.mkfs("128M", ["--metadata", "dup"]);
    const info0 = JSON.parse((await v.groveOk(["info", "--json", v.image])).stdout) as { metadata: string };
    expect(info0.metadata).toBe("dup");
    await v.mount();
    await sh(`mkdir -p "$1/d" && for i in $(seq 1 300); do echo "file $i" > "$1/d/f$i"; done && head -c 200000 /dev/urandom > "$1/big"`, [v.mnt]);
    const before = await checksums(v.mnt);
    await v.umount();

    const damaged = inodeTreeFirstCopies(v.image);
    expect(damaged.length).toBeGreaterThan(1);
    const prng = new Prng(12);
    for (const lba of damaged) overwriteBlock(v.image, lba, prng.bytes(blockSizeBytes));
    const check = await v.grove(["fsck", "-n", v.image]);
    expect(check.code, check.stdout + check.stderr).toBe(4);
    expect(check.stdout).toMatch(/its second copy at block \d+ is good/);

    await v.mount();
    expect(await checksums(v.mnt)).toEqual(before);
    const live = JSON.parse((await v.groveOk(["info", "--json", v.mnt])).stdout) as { metadata: string; metadataRepairs: { found: number; rewritten: number } };
    expect(live.metadata).toBe("dup");
    expect(live.metadataRepairs.found).toBe(damaged.length);
    await v.groveOk(["sync", v.mnt]);
    const text = (await v.groveOk(["info", v.mnt])).stdout;
    expect(text).toMatch(new RegExp(`repairs: +${damaged.length} damaged node copies read from the twin, ${damaged.length} rewritten \\(since mounted\\)`));
    expect(await v.daemonLogs()).toMatch(new RegExp(`metadata repair: block ${damaged[0]} is damaged`));
    await v.umount();

    const after = await v.grove(["fsck", "-n", v.image]);
    expect(after.code, after.stdout + after.stderr).toBe(0);

    // Unmounted: fsck -y rewrites damaged copies from their twins (exit 1), and the next fsck is clean (0).
    const again = inodeTreeFirstCopies(v.image);
    for (const lba of again) overwriteBlock(v.image, lba, Buffer.alloc(blockSizeBytes, 0x33));
    const repair = await v.grove(["fsck", "-y", v.image]);
    expect(repair.code, repair.stdout + repair.stderr).toBe(1);
    expect(repair.stdout).toMatch(new RegExp(`block ${again[0]}: rewritten from its copy at block \\d+`));
    const clean = await v.grove(["fsck", "-n", v.image]);
    expect(clean.code, clean.stdout + clean.stderr).toBe(0);
  });
});
