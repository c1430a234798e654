/**
 * Superblock copies end to end: the CLI (fsck, mount) on real image files,
 * mounts through the kernel, files read by child processes.
 * - The first MiB of a 128 MiB image overwritten: fsck names the backup it
 *   used, a read-only mount serves every file intact, `fsck -y` rewrites the
 *   primaries, and the volume is clean and mounts read-write afterwards.
 * - Every copy of the newest generation destroyed: fsck says the volume may
 *   have been rolled back and exits 4, with -n and with -y; mount's log says so.
 * The messages for a truncated or deleted image are in e2e_messages.test.ts.
 */
import { afterEach, describe, expect, it } from "vitest";
import { FileDevice, Prng, blockSizeBytes, inspectSuperblocks } from "../kvstore/index.js";
import { E2eVolume, checksums, e2eSkipReason, sh, overwriteBlock } from "./e2e_helpers.js";

async function filledVolume(): Promise<{ v: E2eVolume; before: Map<string, string> }> {
  const v = await E2eVolume.mounted("superblock", "128M");
  await sh(
    `mkdir -p "$1/d" && head -c 3000000 /dev/urandom > "$1/d/big" && echo hello > "$1/small" && ` +
      `for i in $(seq 1 40); do echo "file $i" > "$1/d/f$i"; done`,
    [v.mnt],
  );
  const before = await checksums(v.mnt);
  await v.umount();
  return { v, before };
}

function inspect(image: string) {
  const device = FileDevice.open(image, { readOnly: true });
  try {
    return inspectSuperblocks(device);
  } finally {
    device.close();
  }
}

describe.skipIf(e2eSkipReason !== null)("superblock copies through the CLI and the kernel", () => {
  let volume: E2eVolume | null = null;
  afterEach(async () => {
    await volume?.cleanup();
    volume = null;
  });

  it("the first MiB overwritten: mounted from the backup with everything intact; fsck -y restores the primaries", async () => {
    const { v, before } = await filledVolume();
    volume = v;
    overwriteBlock(v.image, 0, new Prng(5).bytes(1024 * 1024));

    const check = await v.grove(["fsck", "-n", v.image]);
    expect(check.code, check.stdout + check.stderr).toBe(4);
    expect(check.stdout).toMatch(/superblock: generation \d+ from the backup superblock at LBA 16384 \(64 MiB\)/);
    expect(check.stdout).not.toMatch(/not a grovefs|leaked|mkfs/);

    await v.mount(["-o", "ro"]);
    expect(await checksums(v.mnt)).toEqual(before);
    expect(await v.daemonLogs()).toMatch(/from the backup superblock at LBA 16384/);
    await v.umount();

    const repair = await v.grove(["fsck", "-y", v.image]);
    expect(repair.code, repair.stdout + repair.stderr).toBe(1);
    expect(repair.stdout).toMatch(/repaired: superblock slot at LBA \d: rewritten/);
    const after = await v.grove(["fsck", "-n", v.image]);
    expect(after.code, after.stdout).toBe(0);
    const report = inspect(v.image);
    expect(report.source.role).toBe("slot");
    expect(report.copies.filter((c) => c.superblock === null)).toEqual([]);
    v.check();
  });

  it("every copy of the newest generation destroyed: fsck exits 4 and says the volume was rolled back", async () => {
    const { v } = await filledVolume();
    volume = v;
    const newest = inspect(v.image);
    const lost = newest.copies.filter((c) => c.superblock?.generation === newest.superblock.generation);
    expect(lost.map((c) => c.lba)).toEqual([newest.superblock.generation % 2, 2 + (newest.superblock.generation % 2), 16384]);
    for (const c of lost) overwriteBlock(v.image, c.lba, Buffer.alloc(blockSizeBytes));

    const check = await v.grove(["fsck", "-n", v.image]);
    expect(check.code, check.stdout + check.stderr).toBe(4);
    expect(check.stdout).toMatch(new RegExp(`may have been rolled back to generation ${newest.superblock.generation - 1}`));
    expect(check.stdout).not.toMatch(/fsck -y .* repairs/);

    await v.mount(["-o", "ro"]);
    expect(await v.daemonLogs()).toMatch(/warning: the volume may have been rolled back/);
    await v.umount();

    const repair = await v.grove(["fsck", "-y", v.image]);
    expect(repair.code, repair.stdout + repair.stderr).toBe(4);
    expect(repair.stdout).toMatch(/rolled back.*no repair brings it back/);
    // The volume itself is consistent again (at the older generation).
    v.check();
  });
});
