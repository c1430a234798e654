/**
 * Messages that never lose data, end to end (the CLI on real image files,
 * mounts through the kernel):
 * - a truncated image: fsck and mount name it, with the `truncate -s` hint,
 *   no leak finding and no mkfs advice; truncating back recovers it;
 * - an image file deleted while mounted: `grovefs info` and the daemon's log
 *   warn, and the log says so again at unmount.
 */
import * as fs from "node:fs";
import { afterEach, describe, expect, it } from "vitest";
import { E2eVolume, e2eSkipReason } from "./e2e_helpers.js";

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
