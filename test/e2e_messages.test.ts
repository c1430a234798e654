/**
 * Messages that never lose data, end to end (the CLI on real image files,
 * mounts through the kernel):
 * - a truncated image: fsck and mount name it, with the `truncate -s` hint,
 *   no leak finding and no mkfs advice; truncating back recovers it (with
 *   duplicate metadata, after fsck -y rewrites the second copies past the cut);
 * - an image file deleted while mounted: `grovefs info` and the daemon's log
 *   warn, and the log says so again at unmount.
 */
import * as fs from "node:fs";
import { afterEach, describe, expect, it } from "vitest";
import { E2eVolume, e2eSkipReason, sh } from "./e2e_helpers.js";

const sizeBytes = 128 * 1024 * 1024;

describe.skipIf(e2eSkipReason !== null)("messages for a truncated or deleted image", () => {
  let volume: E2eVolume | null = null;
  afterEach(async () => {
    await volume?.cleanup();
    volume = null;
  });

  it("a truncated image is named as such, with the truncate -s hint; truncating back recovers it", async () => {
    // Single metadata: nothing lives past the cut, so truncating back recovers every block. With dup, the
    // second copies placed in the cut half come back as zeros, and fsck -y must rewrite them (issue 12's note).
    const v = await E2eVolume.create("truncated");
    volume = v;
    await v.mkfs("128M", ["--metadata", "single"]);
    await v.mount();
    await v.umount();
    fs.truncateSync(v.image, sizeBytes / 2);
    const hint = new RegExp(`the image is ${sizeBytes / 2} bytes but the volume is ${sizeBytes} bytes.* — if the file was cut, truncate -s ${sizeBytes} \\S*image.grove restores its size`);

    const check = await v.grove(["fsck", "-n", v.image]);
    expect(check.code).toBe(8);
    expect(check.stderr.trim().split("\n")).toHaveLength(1);
    expect(check.stderr).toMatch(hint);
    expect(check.stdout + check.stderr).not.toMatch(/leak|mkfs/);

    const mount = await v.grove(["mount", v.image, v.mnt]);
    expect(mount.code).not.toBe(0);
    expect(mount.stderr).toMatch(hint);
    expect(mount.stderr).not.toMatch(/mkfs|^\s+at /m);

    fs.truncateSync(v.image, sizeBytes);
    expect((await v.grove(["fsck", "-n", v.image])).code).toBe(0);
    v.check();
  });

  it("a truncated dup image: the hint adds fsck -y; truncated back, fsck -n finds the lost second copies (4), -y rewrites them (1), then clean, every file intact", async () => {
    const v = await E2eVolume.create("truncated-dup");
    volume = v;
    await v.mkfs("128M", ["--metadata", "dup"]);
    await v.mount();
    // The files are made outside the mount and copied in by a child process (the mount is for child processes).
    fs.mkdirSync(v.out("src", "d"), { recursive: true });
    for (let i = 0; i < 200; i++) fs.writeFileSync(v.out("src", "d", `f${i}`), `file ${i} `.repeat(1 + (i % 50) * 40));
    await sh('cp -a "$1"/. "$2"/', [v.out("src"), v.mnt]);
    await v.umount();
    // Every second copy lies at least an eighth of the volume past its first copy, so a cut there takes them all.
    fs.truncateSync(v.image, sizeBytes / 8);
    const check = await v.grove(["fsck", "-n", v.image]);
    expect(check.code).toBe(8);
    expect(check.stderr).toMatch(
      new RegExp(`truncate -s ${sizeBytes} \\S*image.grove restores its size, then grovefs fsck -y \\S*image.grove rewrites the second metadata copies that were past the cut`),
    );
    expect(check.stdout + check.stderr).not.toMatch(/leak|mkfs/);

    fs.truncateSync(v.image, sizeBytes);
    const before = await v.grove(["fsck", "-n", v.image]);
    expect(before.code, before.stdout + before.stderr).toBe(4);
    const repair = await v.grove(["fsck", "-y", v.image]);
    expect(repair.code, repair.stdout + repair.stderr).toBe(1);
    const after = await v.grove(["fsck", "-n", v.image]);
    expect(after.code, after.stdout + after.stderr).toBe(0);
    await v.mount();
    await sh('diff -r "$1" "$2"', [v.out("src"), v.mnt]);
    await v.umount();
    v.check();
  });

  it("an image file deleted while mounted: info and the daemon's log warn, and the log says so at unmount", async () => {
    const v = await E2eVolume.mounted("deleted", "64M");
    volume = v;
    fs.unlinkSync(v.image);
    const info = await v.groveOk(["info", v.mnt]);
    expect(info.stdout).toMatch(/^warning: +the image file \S+ was deleted while mounted: .*copy the files out of the mount first$/m);
    const json = JSON.parse((await v.groveOk(["info", "--json", v.mnt])).stdout) as { imageDeleted?: string };
    expect(json.imageDeleted).toMatch(/was deleted while mounted/);
    expect(await v.daemonLogs()).toMatch(/grovefs: warning: the image file \S+ was deleted while mounted/);
    await v.groveOk(["umount", v.mnt]);
    expect(await v.daemonLogs()).toMatch(/grovefs: warning: unmounted; the image file \S+ had been deleted while mounted, so its data is gone/);
  });
});
