/**
 * grovefs scrub through the CLI and a real mount:
 * - second copies of a directory's nodes damaged in the image underneath a
 *   mount (normal reads never read them): `grovefs scrub MNT` finds and
 *   rewrites them while another process writes files, exits 1 (corrected),
 *   every file reads back, and fsck is clean after the unmount; a second
 *   scrub exits 0;
 * - a damaged data block: exit 4, the file named by path;
 * - a slow background scrub cut off by an unmount resumes at the next mount
 *   and finishes (`scrub status` shows it, on the image and on the mount);
 * - an unmounted image: scrub corrects (1), then is clean (0); refusals exit 8;
 * - --readonly: on an image and on a read-only mount it reports damaged
 *   copies as correctable (4) and changes no byte of the image; a plain
 *   scrub of the read-only mount is refused (8) and names --readonly; then a
 *   plain scrub of the image corrects them (1); `grovefs info` shows the
 *   last scrub, on the image and on the mount.
 */
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import { afterEach, describe, expect, it } from "vitest";
import { checkFilesystem } from "../fs/index.js";
import { FileDevice, blockSizeBytes } from "../kvstore/index.js";
import { E2eVolume, checksums, e2eSkipReason, sh, shRun, overwriteBlock } from "./e2e_helpers.js";
import { fileExtents } from "./fs_helpers.js";
import { reachableNodes } from "./helpers.js";

const nodeLbaOffset = 8;

/** Second copies of the per-inode trees' nodes (a large directory's entries), as the image holds them now. */
function perInodeSecondCopies(image: string): number[] {
  const device = FileDevice.open(image, { readOnly: true });
  try {
    const report = checkFilesystem(device);
    expect(report.problems).toEqual([]);
    const block = Buffer.alloc(blockSizeBytes);
    return reachableNodes(device, report.space.forest)
      .filter((n) => n.owner >= 2 ** 32)
      .filter((n) => {
        device.read(n.lba, block);
        return Number(block.readBigUInt64LE(nodeLbaOffset)) !== n.lba;
      })
      .map((n) => n.lba);
  } finally {
    device.close();
  }
}

interface Record {
  state: string;
  readonly?: boolean;
  corrected: number;
  correctable?: number;
  uncorrected: number;
  resumed: number;
  bytesRead: number;
  damagedFiles: string[];
}

describe.skipIf(e2eSkipReason !== null)("grovefs scrub through the CLI and the kernel", () => {
  let volume: E2eVolume | null = null;
  afterEach(async () => {
    await volume?.cleanup();
    volume = null;
  });

  it("on a mount: rewrites damaged copies while files are written (1), files intact, fsck clean, then 0", async () => {
    const v = await E2eVolume.create("scrub");
    volume = v;
    await v.mkfs("128M", ["--metadata", "dup"]);
    await v.mount();
    await sh(`mkdir -p "$1/d" "$1/w" && for i in $(seq 1 400); do echo "file $i" > "$1/d/f$i"; done && head -c 300000 /dev/urandom > "$1/d/big"`, [v.mnt]);
    await v.groveOk(["sync", v.mnt]);
    const damaged = perInodeSecondCopies(v.image);
    expect(damaged.length).toBeGreaterThan(1);
    for (const lba of damaged) overwriteBlock(v.image, lba, Buffer.alloc(blockSizeBytes, 0x5a));
    const before = await checksums(v.in("d"));

    const writer = shRun(`for i in $(seq 1 150); do head -c 5000 /dev/urandom > "$1/w/n$i"; cat "$1/d/f$i" > /dev/null; done`, [v.mnt]);
    const scrub = await v.grove(["scrub", "--rate", "0", v.mnt]);
    expect((await writer).code).toBe(0);
    expect(scrub.code, scrub.stdout + scrub.stderr).toBe(1);
    expect(scrub.stdout).toMatch(/corrected: tree \d+, block \d+.*: second copy at block \d+: .*rewritten from its copy/);
    expect(scrub.stdout).toMatch(new RegExp(`${damaged.length} damaged node copies corrected`));
    const status = JSON.parse((await v.groveOk(["scrub", "status", "--json", v.mnt])).stdout) as Record;
    expect(status.state).toBe("finished");
    expect(status.corrected).toBe(damaged.length);
    expect(await checksums(v.in("d"))).toEqual(before);
    const again = await v.grove(["scrub", "--rate", "0", v.mnt]);
    expect(again.code, again.stdout + again.stderr).toBe(0);
    expect(again.stdout).toMatch(/no damage found/);
    await v.umount();
    const report = v.check();
    expect(report.space.forest.copyRepairs).toEqual([]);
  });

  it("a damaged data block: exit 4, the file named by path; a slow background scrub cut off by an unmount resumes at the next mount", async () => {
    const v = await E2eVolume.create("scrub-data");
    volume = v;
    await v.mkfs("128M", ["--metadata", "dup"]);
    await v.mount();
    await sh(`mkdir -p "$1/d" && for i in $(seq 1 200); do head -c 6000 /dev/urandom > "$1/d/f$i"; done`, [v.mnt]);
    const ino = fs.statSync(v.in("d", "f7")).ino;
    await v.umount();
    const device = FileDevice.open(v.image, { readOnly: true });
    const lba = fileExtents(device, ino)[0]!.lba;
    device.close();
    const block = Buffer.alloc(blockSizeBytes);
    const fd = fs.openSync(v.image, "r");
    fs.readSync(fd, block, 0, blockSizeBytes, lba * blockSizeBytes);
    fs.closeSync(fd);
    block[17]! ^= 0x01;
    overwriteBlock(v.image, lba, block);

    await v.mount();
    const scrub = await v.grove(["scrub", "--rate", "0", v.mnt]);
    expect(scrub.code, scrub.stdout + scrub.stderr).toBe(4);
    expect(scrub.stdout).toMatch(/damaged file: "\/d\/f7" \(inode \d+\) in subvolume "default": damaged bytes 0-4095/);
    expect(scrub.stdout).toMatch(/restore the damaged files from a backup or a snapshot/);
    expect(scrub.stdout).not.toMatch(/fsck -y/);

    // About 50 blocks a second: a pass of this volume takes several seconds.
    const started = await v.grove(["scrub", "--rate", "0.2", "--background", v.mnt]);
    expect(started.code, started.stdout + started.stderr).toBe(0);
    expect(started.stdout).toMatch(/started in the background at 0.2 MiB\/s/);
    const busy = await v.grove(["scrub", v.mnt]);
    expect(busy.code).toBe(8);
    expect(busy.stderr).toMatch(/a scrub is running already/);
    await new Promise((resolve) => setTimeout(resolve, 1500));
    const running = JSON.parse((await v.groveOk(["scrub", "status", "--json", v.mnt])).stdout) as Record;
    expect(running.state).toBe("running");
    expect(running.bytesRead).toBeGreaterThan(0);
    await v.umount();
    const saved = JSON.parse((await v.groveOk(["scrub", "status", "--json", v.image])).stdout) as Record;
    expect(saved.state).toBe("running");

    await v.mount();
    let record: Record | null = null;
    for (let i = 0; i < 240; i++) {
      record = JSON.parse((await v.groveOk(["scrub", "status", "--json", v.mnt])).stdout) as Record;
      if (record.state !== "running") break;
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
    expect(record!.state).toBe("finished");
    expect(record!.resumed).toBe(1);
    expect(record!.bytesRead).toBeGreaterThanOrEqual(saved.bytesRead);
    const text = (await v.groveOk(["scrub", "status", v.mnt])).stdout;
    expect(text).toMatch(/scrub finished at/);
    await v.umount();
  });

  it("an unmounted image: corrects (1), then clean (0); refusals exit 8 with one line", async () => {
    const v = await E2eVolume.create("scrub-image");
    volume = v;
    await v.mkfs("64M", ["--metadata", "dup"]);
    await v.mount();
    await sh(`mkdir -p "$1/d" && for i in $(seq 1 300); do echo "x$i" > "$1/d/f$i"; done`, [v.mnt]);
    await v.umount();
    const damaged = perInodeSecondCopies(v.image);
    for (const lba of damaged) overwriteBlock(v.image, lba, Buffer.alloc(blockSizeBytes, 0x11));
    const first = await v.grove(["scrub", "--json", v.image]);
    expect(first.code, first.stdout + first.stderr).toBe(1);
    const summary = JSON.parse(first.stdout) as Record;
    expect(summary.corrected).toBe(damaged.length);
    expect(summary.uncorrected).toBe(0);
    const second = await v.grove(["scrub", v.image]);
    expect(second.code, second.stdout + second.stderr).toBe(0);
    expect(v.check().space.forest.copyRepairs).toEqual([]);

    const missing = await v.grove(["scrub", v.out("nope.img")]);
    expect(missing.code).toBe(8);
    expect(missing.stderr).toMatch(/^grovefs: .*no such image or mount point/);
    expect(missing.stderr).not.toMatch(/\n\s+at /);
    const badRate = await v.grove(["scrub", "--rate", "fast", v.image]);
    expect(badRate.code).toBe(8);
    expect(badRate.stderr).toMatch(/--rate fast is not a rate/);
    const cancel = await v.grove(["scrub", "cancel", v.image]);
    expect(cancel.code).toBe(8);
    expect(cancel.stderr).toMatch(/not mounted/);
  });

  it("--readonly reports damaged copies (4) and writes nothing, on an image and on a read-only mount; info shows the last scrub", async () => {
    const v = await E2eVolume.create("scrub-readonly");
    volume = v;
    await v.mkfs("64M", ["--metadata", "dup"]);
    const never = await v.groveOk(["info", v.image]);
    expect(never.stdout).toMatch(/^scrub: +none recorded/m);
    await v.mount();
    await sh(`mkdir -p "$1/d" && for i in $(seq 1 300); do echo "x$i" > "$1/d/f$i"; done`, [v.mnt]);
    await v.umount();
    const damaged = perInodeSecondCopies(v.image);
    expect(damaged.length).toBeGreaterThan(0);
    for (const lba of damaged) overwriteBlock(v.image, lba, Buffer.alloc(blockSizeBytes, 0x22));
    const digest = (): string => createHash("sha256").update(fs.readFileSync(v.image)).digest("hex");
    const before = digest();

    const image = await v.grove(["scrub", "--readonly", "--json", v.image]);
    expect(image.code, image.stdout + image.stderr).toBe(4);
    const summary = JSON.parse(image.stdout) as Record;
    expect(summary.readonly).toBe(true);
    expect(summary.correctable).toBe(damaged.length);
    expect(summary.corrected).toBe(0);
    expect(summary.uncorrected).toBe(0);
    expect(digest()).toBe(before);
    const shown = await v.grove(["scrub", "-r", v.image]);
    expect(shown.code).toBe(4);
    expect(shown.stdout).toMatch(/^correctable: tree \d+, block \d+.*not rewritten \(read-only\)$/m);
    expect(shown.stdout).toMatch(new RegExp(`${damaged.length} damaged node cop(y|ies) with a good twin left as they are \\(read-only\\)`));
    expect(shown.stdout).toMatch(/without --readonly.* rewrites them from their twins/);
    expect(digest()).toBe(before);
    const info = await v.groveOk(["info", v.image]);
    expect(info.stdout).toMatch(new RegExp(`^scrub: +finished at \\S+ \\(read-only, .* read\\): ${damaged.length} correctable$`, "m"));

    await v.mount(["-o", "ro"]);
    const refused = await v.grove(["scrub", v.mnt]);
    expect(refused.code).toBe(8);
    expect(refused.stderr.trim().split("\n")).toHaveLength(1);
    expect(refused.stderr).toMatch(/mounted read-only.*grovefs scrub --readonly reports them/);
    const mounted = await v.grove(["scrub", "--readonly", "--rate", "0", v.mnt]);
    expect(mounted.code, mounted.stdout + mounted.stderr).toBe(4);
    expect(mounted.stdout).toMatch(/read-only scrub finished at/);
    expect(mounted.stdout).toMatch(/with a good twin left as they are/);
    const live = JSON.parse((await v.groveOk(["info", "--json", v.mnt])).stdout) as { scrub: Record };
    expect(live.scrub.readonly).toBe(true);
    expect(live.scrub.correctable).toBe(damaged.length);
    await v.umount();
    expect(digest()).toBe(before);

    const fixed = await v.grove(["scrub", v.image]);
    expect(fixed.code, fixed.stdout + fixed.stderr).toBe(1);
    expect((await v.grove(["scrub", "--readonly", v.image])).code).toBe(0);
    const after = await v.groveOk(["info", v.image]);
    expect(after.stdout).toMatch(/^scrub: +finished at \S+ \(read-only, .* read\): no damage found$/m);
    expect(v.check().space.forest.copyRepairs).toEqual([]);
  });
});
