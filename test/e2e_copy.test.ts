/**
 * End to end through the kernel: a tree with files at every interesting size
 * (empty, one byte, around a block, a megabyte and a byte, 256 MiB), nested
 * directories, symlinks, a hard link, an empty directory, odd modes and
 * owners, is copied in with `cp -a`, compared byte for byte (sha256) and by
 * metadata (mode, owner, nanosecond mtime, link count, symlink target), copied
 * back out and compared again, then compared once more after a remount. The
 * image must pass the full checker (with data checksums) at the end.
 *
 * Everything that touches the mountpoint runs in a child process (see
 * e2e_helpers.ts).
 */
import * as fsp from "node:fs/promises";
import { afterEach, describe, expect, it } from "vitest";
import { ContentGenerator, E2eVolume, asObject, checksums, ok, sh, treeListing, e2eSkipReason } from "./e2e_helpers.js";

const MiB = 1 << 20;

/** Relative path → size. The 256 MiB file is the one that makes this suite take time. */
const files: Array<[string, number]> = [
  ["empty", 0],
  ["one", 1],
  ["a/f4095", 4095],
  ["a/f4096", 4096],
  ["a/b/f4097", 4097],
  ["a/b/c/d/e/mib_plus_one", MiB + 1],
  ["big/huge.bin", 256 * MiB],
  ["with space é.txt", 12345],
  ["hard1", 70000],
  ["modes/private", 100],
  ["modes/script.sh", 200],
  ["modes/owned", 300],
];

/** Builds the source tree in `root` (outside any mount). */
async function buildTree(root: string): Promise<void> {
  const gen = new ContentGenerator(20240601);
  for (const [i, [rel, size]] of files.entries()) {
    const file = `${root}/${rel}`;
    await fsp.mkdir(file.slice(0, file.lastIndexOf("/")), { recursive: true });
    await gen.writeFile(file, size, i + 1);
  }
  await sh(
    [
      `cd "$1"`,
      `mkdir -p emptydir a/b/c/emptyleaf locked`,
      `ln hard1 a/hard2`,
      `ln -s a/b/f4097 rel_link`,
      `ln -s ../../one a/b/up_link`,
      `ln -s /nonexistent/target dangling`,
      `chmod 600 modes/private`,
      `chmod 755 modes/script.sh`,
      `chmod 4750 modes/owned`,
      `chown 1234:5678 modes/owned`,
      `chmod 700 locked`,
      `chmod 1777 emptydir`,
      // Distinct, nanosecond-precise mtimes, which cp -a must carry over.
      `touch -d '1999-12-31 23:59:59.987654321' one`,
      `touch -d '2010-06-15 12:00:00.000000001' a/f4096`,
      `touch -h -d '2005-05-05 05:05:05.5' rel_link`,
      // Directory mtimes last, after their contents are final.
      `touch -d '2020-01-02 03:04:05.678901234' a/b/c/emptyleaf`,
    ].join(" && "),
    [root],
  );
}

let volume: E2eVolume | null = null;

afterEach(async () => {
  await volume?.cleanup();
  volume = null;
});

describe.skipIf(e2eSkipReason !== null)("e2e: copying a tree in and out through a kernel mount", () => {
  it("cp -a in, compare, cp -a out, compare, remount, compare; the checker passes", async () => {
    volume = await E2eVolume.create("copy");
    const v = volume;
    const src = v.out("src");
    await buildTree(src);
    const srcSums = await checksums(src);
    const srcListing = await treeListing(src);
    expect(srcSums.size).toBe(files.length + 1); // a/hard2 is listed as a file of its own

    await v.mkfs("4G");
    await v.mount();
    await ok("cp", ["-a", src, v.in("tree")], { timeoutMs: 300_000 });

    // Contents and metadata in the mount equal the source.
    expect(asObject(await checksums(v.in("tree")))).toEqual(asObject(srcSums));
    expect.soft(await treeListing(v.in("tree"))).toEqual(srcListing);

    // The hard link is one inode with two names; the symlinks read back exactly.
    const links = await sh(
      `cd "$1" && stat -c '%i %h' hard1 a/hard2 && readlink rel_link a/b/up_link dangling && cat a/b/up_link | od -An -tx1`,
      [v.in("tree")],
    );
    const [ino1, ino2, ...rest] = links.trim().split("\n");
    expect(ino1).toBe(ino2);
    expect(ino1!.split(" ")[1]).toBe("2");
    expect(rest.slice(0, 3)).toEqual(["a/b/f4097", "../../one", "/nonexistent/target"]);
    expect(rest[3]!.trim()).toMatch(/^[0-9a-f]{2}$/); // following the symlink reads the 1-byte file

    // Copy back out, and compare with the source again.
    await ok("cp", ["-a", v.in("tree"), v.out("back")], { timeoutMs: 300_000 });
    expect(asObject(await checksums(v.out("back")))).toEqual(asObject(srcSums));
    expect.soft(await treeListing(v.out("back"))).toEqual(srcListing);
    await v.umount();

    // Persistence: a fresh daemon reads the same bytes and metadata from the image.
    await v.mount();
    expect(asObject(await checksums(v.in("tree")))).toEqual(asObject(srcSums));
    expect.soft(await treeListing(v.in("tree"))).toEqual(srcListing);
    await v.umount();

    const report = v.check();
    expect(report.inodes).toBeGreaterThan(files.length);
  });

  it("cp -a and cp -p give the source's mode (GNU cp sets it through the system.posix_acl_access xattr)", async () => {
    // coreutils' cp creates the file 0600, then calls fsetxattr("system.posix_acl_access") with the
    // minimal ACL equivalent to the mode, and only falls back to fchmod when that fails with
    // EOPNOTSUPP. A filesystem that stores the name as an ordinary xattr loses the mode.
    volume = await E2eVolume.create("modes");
    const v = volume;
    await v.mkfs("2G");
    await v.mount();
    const src = v.out("modesrc");
    await sh(
      `mkdir -p "$1/d" && cd "$1" && echo a > f644 && chmod 644 f644 && echo b > f755 && chmod 755 f755 && chmod 751 d`,
      [src],
    );
    await ok("cp", ["-a", src, v.in("a")]);
    await ok("cp", ["-rp", src, v.in("p")]);
    const modes = await sh(`cd "$1" && stat -c '%n %a' a/f644 a/f755 a/d p/f644 p/f755 p/d`, [v.mnt]);
    expect(modes.trim().split("\n")).toEqual(["a/f644 644", "a/f755 755", "a/d 751", "p/f644 644", "p/f755 755", "p/d 751"]);
    await v.umount();
    v.check();
  });

  it("touch -d / -m / -a set nanosecond times exactly, and they persist (the utimens fix in the binding)", async () => {
    volume = await E2eVolume.create("times");
    const v = volume;
    await v.mkfs("2G");
    await v.mount();
    const env = { ...process.env, TZ: "UTC" };
    const stamp = `cd "$1" && stat -c '%n|%x|%y' both monly aonly dir`;
    await sh(
      [
        `cd "$1"`,
        `echo hello > both && echo m > monly && echo a > aonly && mkdir dir`,
        `touch -d '2001-02-03 04:05:06.123456789' both`,
        // Set both times to known values first, then move one of them alone.
        `touch -d '2002-01-01 00:00:00.5' monly aonly`,
        `touch -m -d '2003-03-03 03:03:03.000000003' monly`,
        `touch -a -d '2004-04-04 04:04:04.999999999' aonly`,
        `touch -d '2005-05-05 05:05:05.05' dir`,
      ].join(" && "),
      [v.mnt],
      { env },
    );
    const expected = [
      "both|2001-02-03 04:05:06.123456789 +0000|2001-02-03 04:05:06.123456789 +0000",
      "monly|2002-01-01 00:00:00.500000000 +0000|2003-03-03 03:03:03.000000003 +0000",
      "aonly|2004-04-04 04:04:04.999999999 +0000|2002-01-01 00:00:00.500000000 +0000",
      "dir|2005-05-05 05:05:05.050000000 +0000|2005-05-05 05:05:05.050000000 +0000",
    ];
    expect((await sh(stamp, [v.mnt], { env })).trim().split("\n")).toEqual(expected);
    await v.umount();

    // After a remount the times come from the image, not from the kernel's attribute cache.
    // (ro: reading must not move atime either.)
    await v.mount(["-o", "ro"]);
    expect((await sh(stamp, [v.mnt], { env })).trim().split("\n")).toEqual(expected);
    await v.umount();
    v.check();
  });
});
