/**
 * Inode numbers past 2^32 through a real kernel mount (issue 16): an image
 * whose inode counter is set just below 2^32 is mounted with the CLI, and
 * processes other than the daemon create, stat, list, link, rename and
 * unlink files across the boundary; stat(1) and `ls -i` from those processes
 * show st_ino above 2^32 exactly as the library numbers them, and a
 * snapshot's view under /.snapshots shows its own distinct numbers. The
 * image is checked after the umount.
 */
import { afterEach, describe, expect, it } from "vitest";
import { FileDevice } from "../kvstore/index.js";
import { GroveFs } from "../fs/index.js";
import { E2eVolume, e2eSkipReason, sh } from "./e2e_helpers.js";

let volume: E2eVolume | null = null;

afterEach(async () => {
  await volume?.cleanup();
  volume = null;
});

/** The next inode number of the image's default subvolume becomes `ino` (the volume is not mounted). */
function raiseCounter(image: string, ino: number): void {
  const fs = GroveFs.open(FileDevice.open(image), {});
  try {
    fs.reserveIno(ino);
  } finally {
    fs.close();
  }
}

const kernelOnly = e2eSkipReason ?? (E2eVolume.transport === "fuse-native" ? "fuse-native passes 32-bit st_ino (folded)" : null);

describe.skipIf(kernelOnly !== null)("inode numbers past 2^32 through the kernel", () => {
  it("stat and ls -i from another process show st_ino above 2^32; link, rename, unlink and a snapshot work; fsck clean", async () => {
    const v = (volume = await E2eVolume.create("ino64"));
    await v.mkfs("256M");
    const start = 2 ** 32 - 2;
    raiseCounter(v.image, start);
    await v.mount();
    const out = await sh(
      `set -e; cd "$1"
       mkdir d; echo one > d/one; mkdir big; for i in $(seq 1 100); do echo $i > big/f$i; done
       ln d/one big/one-link; ln big/f7 d/f7-link; mv big/f8 d/f8-moved; rm big/f9
       stat -c '%n %i %h' d d/one big big/f1 big/f100 big/one-link d/f7-link d/f8-moved
       ls -i big | sort -n | head -3`,
      [v.mnt],
    );
    const inos = new Map<string, { ino: number; links: number }>();
    for (const line of out.trim().split("\n").slice(0, 8)) {
      const [name, ino, links] = line.split(" ");
      inos.set(name!, { ino: Number(ino), links: Number(links) });
    }
    expect(inos.get("d")!.ino).toBe(start);
    expect(inos.get("d/one")!.ino).toBe(start + 1);
    expect(inos.get("big")!.ino).toBe(2 ** 32);
    expect(inos.get("big/f1")!.ino).toBe(2 ** 32 + 1);
    expect(inos.get("big/f100")!.ino).toBe(2 ** 32 + 100);
    expect(inos.get("big/one-link")).toEqual({ ino: start + 1, links: 2 });
    expect(inos.get("d/f7-link")).toEqual({ ino: 2 ** 32 + 7, links: 2 });
    expect(inos.get("d/f8-moved")!.ino).toBe(2 ** 32 + 8);
    // ls -i reads d_ino from readdir: the same numbers, whole.
    const listed = out.trim().split("\n").slice(8).map((l) => Number(l.trim().split(/\s+/)[0]));
    expect(listed[0]).toBe(start + 1);
    expect(listed[1]).toBe(2 ** 32 + 1);

    await v.groveOk(["snapshot", "create", v.mnt, "snap"]);
    const view = await sh(
      `set -e; cd "$1"
       echo changed > big/f1
       cat .snapshots/snap/big/f1
       stat -c '%i' .snapshots/snap/big/f1 .snapshots/snap/big/f100 big/f1`,
      [v.mnt],
    );
    const [content, snapF1, snapF100, liveF1] = view.trim().split("\n");
    expect(content).toBe("1");
    expect(Number(liveF1)).toBe(2 ** 32 + 1);
    // A view's numbers are its own (above the served subvolume's 2^48), distinct per file.
    expect(Number(snapF1)).toBeGreaterThan(2 ** 48);
    expect(Number(snapF100) - Number(snapF1)).toBe(99);
    await v.finish();
  }, 180_000);
});
