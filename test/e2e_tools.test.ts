/**
 * End to end through the kernel with everyday tools: git (init, commit, log,
 * status, gc, fsck), a tar round trip, renames and removals, df, xattrs,
 * `ls -la`, a read-only mount, and the CLI's refusals (an image already
 * mounted, a mountpoint that does not exist). Each test formats its own image,
 * mounts it with the CLI, works through child processes only, unmounts with
 * the CLI and runs the full checker over the image.
 */
import { afterEach, describe, expect, it } from "vitest";
import { ContentGenerator, E2eVolume, type RunResult, checksums, mountsAt, ok, pidsHolding, sh, shRun, e2eSkipReason } from "./e2e_helpers.js";
import { expectOneLineError as expectOneLine } from "./cli_helpers.js";

let volume: E2eVolume | null = null;

afterEach(async () => {
  await volume?.cleanup();
  volume = null;
});

/** A fresh, formatted, mounted volume, cleaned up after the test. */
async function mounted(name: string, size = "2G"): Promise<E2eVolume> {
  volume = await E2eVolume.mounted(name, size);
  return volume;
}

/** A CLI failure as the CLI promises it: non-zero, exactly one line on stderr, "grovefs: ... — ...", no stack. */
function expectOneLineError(r: RunResult, mentions: RegExp): void {
  expectOneLine(r, mentions);
}

const gitEnv = {
  ...process.env,
  GIT_CONFIG_NOSYSTEM: "1",
  HOME: "/nonexistent-home-for-git",
  GIT_AUTHOR_DATE: "2024-01-02T03:04:05Z",
  GIT_COMMITTER_DATE: "2024-01-02T03:04:05Z",
};

describe.skipIf(e2eSkipReason !== null)("e2e: tools through a kernel mount", () => {
  it("git: init, commit, log, status, gc, fsck", async () => {
    const v = await mounted("git");
    const repo = v.in("repo");
    const git = (args: string[]) => ok("git", ["-C", repo, ...args], { env: gitEnv });
    await ok("git", ["init", "-q", "-b", "main", repo], { env: gitEnv });
    await git(["config", "user.name", "Grove Tester"]);
    await git(["config", "user.email", "grove@example.invalid"]);
    await sh(
      `cd "$1" && mkdir -p src/deep docs && printf 'hello\\n' > README && seq 1 20000 > src/numbers.txt ` +
        `&& head -c 300000 /dev/urandom > src/deep/blob.bin && printf '#!/bin/sh\\necho hi\\n' > run.sh && chmod +x run.sh ` +
        `&& ln -s README docs/readme-link`,
      [repo],
    );
    await git(["add", "-A"]);
    await git(["commit", "-q", "-m", "first"]);
    await sh(`cd "$1" && echo more >> README && git mv src/numbers.txt src/renamed.txt && rm run.sh && echo new > docs/new.md`, [repo], {
      env: gitEnv,
    });
    await git(["add", "-A"]);
    await git(["commit", "-q", "-m", "second"]);

    expect((await git(["log", "--format=%s"])).trim().split("\n")).toEqual(["second", "first"]);
    expect(await git(["status", "--porcelain"])).toBe("");
    expect((await git(["ls-files"])).trim().split("\n")).toEqual([
      "README",
      "docs/new.md",
      "docs/readme-link",
      "src/deep/blob.bin",
      "src/renamed.txt",
    ]);
    await git(["fsck", "--full", "--strict"]);
    // Packing exercises mmap, renames and deletes of many small files.
    await git(["gc", "--quiet", "--aggressive", "--prune=now"]);
    await git(["fsck", "--full", "--strict"]);
    expect(await git(["status", "--porcelain"])).toBe("");
    expect((await git(["show", "HEAD~1:src/numbers.txt"])).split("\n").length).toBe(20001);

    // A clone of the repository, inside the mount, checks out the same tree.
    await ok("git", ["clone", "-q", repo, v.in("clone")], { env: gitEnv });
    const [a, b] = [await checksums(repo), await checksums(v.in("clone"))];
    for (const map of [a, b]) for (const key of [...map.keys()]) if (key.startsWith("./.git/")) map.delete(key);
    expect(b).toEqual(a);
    await v.finish();
  });

  it("tar round trip: tar c from the mount, extract into the mount, diff -r", async () => {
    const v = await mounted("tar");
    const gen = new ContentGenerator(77);
    const staging = v.out("staging");
    await sh(`mkdir -p "$1/d/e/f" "$1/empty"`, [staging]);
    for (const [i, size] of [0, 1, 4095, 4096, 4097, 131072, 3 * 1024 * 1024 + 17].entries()) {
      await gen.writeFile(`${staging}/d/${i === 0 ? "" : "e/"}file${i}`, size, i);
    }
    // Not cp -a (e2e_copy covers it): plain cp -R, then the links and modes made in the mount itself.
    await ok("cp", ["-R", staging, v.in("orig")]);
    await sh(`cd "$1" && ln -s e/file1 d/sym && ln d/e/file2 d/e/f/hard && chmod 640 d/e/file3`, [v.in("orig")]);
    await sh(`cd "$1" && ln -s e/file1 d/sym && ln d/e/file2 d/e/f/hard && chmod 640 d/e/file3`, [staging]);
    await ok("tar", ["-C", v.mnt, "-cf", v.out("orig.tar"), "orig"]);
    await ok("mkdir", [v.in("extracted")]);
    await ok("tar", ["-C", v.in("extracted"), "-xpf", v.out("orig.tar")]);
    await ok("diff", ["-r", "--no-dereference", v.in("orig"), v.in("extracted/orig")]);
    expect(await checksums(v.in("extracted/orig"))).toEqual(await checksums(staging));
    // tar preserved the hard link as a link, and the mode.
    const stats = await sh(`cd "$1" && stat -c '%i %h %a' d/e/file2 d/e/f/hard d/e/file3`, [v.in("extracted/orig")]);
    const [s1, s2, s3] = stats.trim().split("\n");
    expect(s1).toBe(s2);
    expect(s1!.split(" ")[1]).toBe("2");
    expect(s3!.split(" ")[2]).toBe("640");
    // And a tar stream piped straight through the mount gives the same archive contents.
    const listing = await sh(`tar -C "$1" -cf - orig | tar -tvf - | awk '{print $1, $3, $6}' | sort`, [v.mnt]);
    const listingOut = await sh(`tar -tvf "$1" | awk '{print $1, $3, $6}' | sort`, [v.out("orig.tar")]);
    expect(listing).toBe(listingOut);
    await v.finish();
  });

  it("mkdir -p, mv (rename, replace, across directories), ln -s, rm -r", async () => {
    const v = await mounted("mv");
    const script = [
      `cd "$1"`,
      `mkdir -p a/b/c/d x/y`,
      `echo one > a/b/c/d/f1 && echo two > a/f2 && echo three > x/f3`,
      `mv a/b/c x/y/c`, // a directory across directories
      `mv a/f2 x/f3`, // replace an existing file
      `mv x/y/c/d/f1 x/y/c/d/renamed`, // rename within a directory
      `mkdir -p p/q && mv p/q a/b/q`,
      `ln -s ../x/f3 a/link && cat a/link > a/copied`,
      `mkdir -p doomed/1/2/3 && for i in $(seq 1 50); do echo $i > doomed/1/2/3/n$i; echo $i > doomed/m$i; done`,
      `rm -r doomed`,
      `! mv x x/y/inside 2>/dev/null`, // a directory into itself is refused
      `mkdir -p e && touch e/z && ! rmdir e 2>/dev/null`, // not empty
      `find . -mindepth 1 -printf '%p %y\\n' | LC_ALL=C sort`,
      `cat x/f3 x/y/c/d/renamed a/copied`,
      `readlink a/link`,
      `stat -c '%h' . a a/b x x/y`, // directory link counts: 2 + subdirectories
    ].join("\n");
    const out = (await sh(script, [v.mnt])).trim().split("\n");
    expect(out).toEqual([
      "./a d",
      "./a/b d",
      "./a/b/q d",
      "./a/copied f",
      "./a/link l",
      "./e d",
      "./e/z f",
      "./p d",
      "./x d",
      "./x/f3 f",
      "./x/y d",
      "./x/y/c d",
      "./x/y/c/d d",
      "./x/y/c/d/renamed f",
      "two",
      "one",
      "two",
      "../x/f3",
      "6", // . has a, e, p, x
      "3", // a has b
      "3", // a/b has q
      "3", // x has y
      "3", // x/y has c
    ]);
    await v.umount();
    // Persisted: the same tree after a remount.
    await v.mount();
    const again = await sh(`cd "$1" && find . -mindepth 1 -printf '%p %y\\n' | LC_ALL=C sort && cat x/f3`, [v.mnt]);
    expect(again.trim().split("\n")).toEqual([...out.slice(0, 14), "two"]);
    await v.finish();
  });

  it("df shows the image size and used space that grows by what was written", async () => {
    const v = await mounted("df", "2G");
    const df = async () => {
      const text = await sh(`df -B1 --output=size,used,avail "$1" | tail -1`, [v.mnt]);
      const [size, used, avail] = text.trim().split(/\s+/).map(Number);
      return { size: size!, used: used!, avail: avail! };
    };
    const before = await df();
    const imageBytes = 2 * 1024 ** 3;
    expect(before.size).toBeLessThanOrEqual(imageBytes);
    expect(before.size).toBeGreaterThan(imageBytes * 0.9);
    expect(before.used).toBeLessThan(64 * 1024 ** 2);
    expect(before.avail).toBeGreaterThan(imageBytes * 0.85);
    await sh(`dd if=/dev/urandom of="$1/fifty" bs=1M count=50 status=none && sync`, [v.mnt]);
    const after = await df();
    expect(after.size).toBe(before.size);
    expect(after.used - before.used).toBeGreaterThanOrEqual(50 * 1024 ** 2);
    expect(after.used - before.used).toBeLessThan(60 * 1024 ** 2);
    expect(before.avail - after.avail).toBeGreaterThanOrEqual(50 * 1024 ** 2);
    // st_blocks of the file says 50 MiB too.
    expect((await sh(`stat -c '%s %b %B' "$1/fifty"`, [v.mnt])).trim()).toBe(`${50 * 1024 ** 2} ${(50 * 1024 ** 2) / 512} 512`);
    // Deleting gives the space back (after a commit).
    await sh(`rm "$1/fifty" && sync`, [v.mnt]);
    const freed = await df();
    expect(freed.used).toBeLessThan(before.used + 4 * 1024 ** 2);
    await v.finish();
  });

  it("xattrs: set, get, list, remove, on files and directories, persistent", async () => {
    const v = await mounted("xattr");
    // setfattr/getfattr (the attr package) may be missing: python3's os.*xattr calls the same syscalls.
    const py = String.raw`
import errno, os, sys
root = sys.argv[1]
f = os.path.join(root, "file")
d = os.path.join(root, "dir")
mode = sys.argv[2]
if mode == "set":
    open(f, "w").write("data")
    os.mkdir(d)
    os.setxattr(f, "user.color", b"blue")
    os.setxattr(f, "user.big", bytes(range(256)) * 16)
    os.setxattr(f, "user.empty", b"")
    os.setxattr(d, "user.dirattr", b"on a directory")
    os.setxattr(f, "user.gone", b"x")
    os.removexattr(f, "user.gone")
    try:
        os.setxattr(f, "user.color", b"red", os.XATTR_CREATE)
        print("XATTR_CREATE on an existing name succeeded")
    except OSError as e:
        assert e.errno == errno.EEXIST, e
    try:
        os.setxattr(f, "user.nothere", b"red", os.XATTR_REPLACE)
        print("XATTR_REPLACE on a missing name succeeded")
    except OSError as e:
        assert e.errno == errno.ENODATA, e
    os.setxattr(f, "user.color", b"green", os.XATTR_REPLACE)
for path in (f, d):
    for name in sorted(os.listxattr(path)):
        value = os.getxattr(path, name)
        print(os.path.basename(path), name, len(value), value[:16].hex())
try:
    os.getxattr(f, "user.gone")
    print("user.gone still there")
except OSError as e:
    print("user.gone", errno.errorcode[e.errno])
`;
    const expected = [
      "file user.big 4096 000102030405060708090a0b0c0d0e0f",
      "file user.color 5 677265656e",
      "file user.empty 0 ",
      "dir user.dirattr 14 6f6e2061206469726563746f7279",
      "user.gone ENODATA",
    ];
    expect((await ok("python3", ["-c", py, v.mnt, "set"])).trim().split("\n")).toEqual(expected);
    await v.umount();
    await v.mount();
    expect((await ok("python3", ["-c", py, v.mnt, "get"])).trim().split("\n")).toEqual(expected);
    await v.finish();
  });

  it("ls -la lists . and .. in the root and in subdirectories", async () => {
    const v = await mounted("ls");
    const out = await sh(`mkdir -p "$1/sub/inner" && touch "$1/sub/file" && ls -la "$1" && echo ---- && ls -la "$1/sub"`, [v.mnt]);
    const [root, sub] = out.split("----\n");
    const names = (listing: string) =>
      listing
        .trim()
        .split("\n")
        .filter((line) => !line.startsWith("total"))
        .map((line) => line.split(/\s+/).slice(8).join(" "));
    expect(names(root!).sort()).toEqual([".", "..", "sub"]);
    expect(names(sub!).sort()).toEqual([".", "..", "file", "inner"]);
    // The root is a directory with mode drwx...; nlink counts sub.
    expect(root!.split("\n").find((line) => line.endsWith(" ."))).toMatch(/^d[rwx-]{9}\.?\s+3 /);
    await v.finish();
  });

  it("a read-only mount reads, and refuses every write with 'Read-only file system'", async () => {
    volume = await E2eVolume.create("ro");
    const v = volume;
    await v.mkfs("2G");
    await v.mount();
    await sh(`cd "$1" && mkdir dir && echo content > dir/file && echo other > top`, [v.mnt]);
    await v.umount();
    await v.mount(["-o", "ro"]);
    expect((await mountsAt(v.mnt)).at(-1)!.options.split(",")).toContain("ro");
    expect(await sh(`cat "$1/dir/file"`, [v.mnt])).toBe("content\n");
    const attempts = [
      `echo x > "$1/new"`,
      `echo x >> "$1/top"`,
      `touch "$1/top"`,
      `mkdir "$1/newdir"`,
      `rm "$1/top"`,
      `mv "$1/top" "$1/moved"`,
      `ln -s top "$1/sym"`,
      `chmod 600 "$1/top"`,
      `truncate -s 0 "$1/top"`,
      `python3 -c 'import os,sys; os.setxattr(sys.argv[1], "user.a", b"b")' "$1/top"`,
    ];
    for (const attempt of attempts) {
      const r = await shRun(attempt, [v.mnt]);
      expect(r.code, `${attempt} succeeded on a read-only mount`).not.toBe(0);
      expect(r.stderr, attempt).toMatch(/Read-only file system/);
    }
    expect(await sh(`cat "$1/top" && ls "$1"`, [v.mnt])).toBe("other\ndir\ntop\n");
    await v.umount();
    v.check();
  });

  it("mounting an image that is already mounted is refused in one line, and the first mount is unharmed", async () => {
    const v = await mounted("twice");
    await sh(`echo before > "$1/f"`, [v.mnt]);
    const second = v.out("mnt2");
    await ok("mkdir", [second]);
    const r = await v.grove(["mount", v.image, second]);
    expectOneLineError(r, /in use|already|busy|locked/i);
    expect(await mountsAt(second)).toEqual([]);
    expect((await pidsHolding(v.image)).length).toBe(1);
    // Also refused read-only: a writer holds it.
    expectOneLineError(await v.grove(["mount", v.image, second, "-o", "ro"]), /in use|already|busy|locked/i);
    expect(await mountsAt(second)).toEqual([]);
    // Mounting it again on the same mountpoint is refused too.
    expectOneLineError(await v.grove(["mount", v.image, v.mnt]), /already|in use|busy/i);
    expect(await sh(`cat "$1/f" && echo after >> "$1/f" && cat "$1/f"`, [v.mnt])).toBe("before\nbefore\nafter\n");
    await v.finish();
  });

  it("mounting on a mountpoint that does not exist fails in one line and leaves nothing behind", async () => {
    volume = await E2eVolume.create("nomnt");
    const v = volume;
    await v.mkfs("2G");
    const missing = v.out("does", "not", "exist");
    expectOneLineError(await v.grove(["mount", v.image, missing]), /does not exist|no such/i);
    expect(await mountsAt(missing)).toEqual([]);
    expect(await pidsHolding(v.image)).toEqual([]);
    // A mountpoint that is a file is refused too.
    await ok("touch", [v.out("afile")]);
    expectOneLineError(await v.grove(["mount", v.image, v.out("afile")]), /not a directory/i);
    // And a missing image.
    expectOneLineError(await v.grove(["mount", v.out("no-such-image"), v.mnt]), /no such|does not exist/i);
    // The image is still perfectly mountable.
    await v.mount();
    await sh(`echo ok > "$1/f"`, [v.mnt]);
    await v.finish();
  });
});
