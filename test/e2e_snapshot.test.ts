/**
 * End to end through the kernel: snapshots, clones and /.snapshots on a real
 * mount, driven by the CLI and by child processes only (see e2e_helpers.ts).
 * A snapshot taken while a process writes holds everything written before
 * the command; /.snapshots is hidden from `ls -a /` but browsable, read-only,
 * with inode numbers of its own; a clone mounted with --subvol is writable and
 * independent, a snapshot mounts read-only; deleting a snapshot gives its
 * space back in df, even while one of its files is open; refusals and a dead
 * daemon are one line. Every mutating test ends with the checker on the image.
 */
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import * as fsp from "node:fs/promises";
import * as path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import {
  ContentGenerator,
  E2eVolume,
  checksums,
  e2eSkipReason,
  mountsAt,
  ok,
  pidsHolding,
  processAlive,
  sh,
  shRun,
  waitFor,
  asObject,
  type RunResult,
} from "./e2e_helpers.js";
import { expectOneLineError as expectOneLine } from "./cli_helpers.js";

let volume: E2eVolume | null = null;

afterEach(async () => {
  await volume?.cleanup();
  volume = null;
});

const MiB = 1024 ** 2;
const chunkBytes = 4096;
/** Generous bounds for background work to show (not timed assertions: the state is checked after). */
const settleMs = 120_000;

/** A fresh, formatted, mounted volume, cleaned up after the test. */
async function mounted(name: string, size = "2G"): Promise<E2eVolume> {
  volume = await E2eVolume.mounted(name, size);
  return volume;
}

/** A CLI failure as the CLI promises it: exit 1 (32 for a failed mount), exactly one line on stderr, "grovefs: ... — ...", no stack. */
function expectOneLineError(r: RunResult, mentions: RegExp, code = 1): void {
  expectOneLine(r, mentions, code);
}

/** Chunk i of the writer's log: its number, 8 digits, repeated to 4 KiB. */
function logChunk(i: number): Buffer {
  return Buffer.from(String(i).padStart(8, "0").repeat(chunkBytes / 8));
}

function logSha256(chunks: number): string {
  const hash = createHash("sha256");
  for (let i = 0; i < chunks; i++) hash.update(logChunk(i));
  return hash.digest("hex");
}

/** Appends chunks to `file` (one write(2) each) and prints each chunk's number once its write returned. */
const writerScript = String.raw`
import os, sys
path, stop, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
for i in range(limit):
    if os.path.exists(stop):
        break
    data = (b"%08d" % i) * 512
    assert os.write(fd, data) == len(data)
    print(i, flush=True)
os.close(fd)
`;

async function df(mnt: string): Promise<{ size: number; used: number; avail: number }> {
  const text = await sh(`sync && df -B1 --output=size,used,avail "$1" | tail -1`, [mnt]);
  const [size, used, avail] = text.trim().split(/\s+/).map(Number);
  return { size: size!, used: used!, avail: avail! };
}

describe.skipIf(e2eSkipReason !== null)("e2e: snapshots and clones through a kernel mount", () => {
  it("a snapshot taken while a process writes holds everything written before the command; /.snapshots is hidden, browsable and read-only", async () => {
    const v = await mounted("snap");
    const gen = new ContentGenerator(41);
    await fsp.mkdir(v.out("src", "deep"), { recursive: true });
    await gen.writeFile(v.out("src", "big.bin"), 5 * MiB + 123, 1);
    await gen.writeFile(v.out("src", "deep", "small.bin"), 10_000, 2);
    await fsp.writeFile(v.out("src", "note.txt"), "before the snapshot\n");
    await sh(`mkdir "$2/data" && cp -a "$1/." "$2/data/"`, [v.out("src"), v.mnt]);
    const sums = await checksums(v.out("src"));
    expect(asObject(await checksums(v.in("data")))).toEqual(asObject(sums));

    // A writer appends 4 KiB chunks; the snapshot is taken while it runs.
    const writer = spawn("python3", ["-c", writerScript, v.in("log.bin"), v.out("stop"), "200000"], { stdio: ["ignore", "pipe", "pipe"] });
    v.children.add(writer);
    let reported = -1;
    let pending = "";
    writer.stdout!.setEncoding("utf8").on("data", (text: string) => {
      pending += text;
      const lines = pending.split("\n");
      pending = lines.pop()!;
      if (lines.length > 0) reported = Number(lines.at(-1));
    });
    let writerErrors = "";
    writer.stderr!.setEncoding("utf8").on("data", (text: string) => (writerErrors += text));
    const writerDone = new Promise<number | null>((resolve) => writer.on("exit", resolve));
    expect(await waitFor(() => reported >= 300, settleMs), `the writer got to chunk ${reported}: ${writerErrors}`).toBe(true);
    const writtenBefore = reported + 1;
    const created = await v.groveOk(["snapshot", "create", v.mnt, "snap1"]);
    expect(created.stdout).toMatch(/^snapshot 'snap1' of 'default' created \(id \d+\); browse it in .*\/\.snapshots\/snap1\n$/);
    const afterCommand = reported;
    expect(await waitFor(() => reported >= afterCommand + 300, settleMs), `the writer stopped at ${reported}: ${writerErrors}`).toBe(true);
    await fsp.writeFile(v.out("stop"), "");
    expect(await writerDone, writerErrors).toBe(0);
    const writtenTotal = reported + 1;

    // Change the live tree after the snapshot.
    await sh(`cd "$1/data" && echo after > note.txt && rm deep/small.bin && truncate -s 1000 big.bin && echo new > new.txt`, [v.mnt]);

    // Hidden from ls -a /, but there.
    const rootListing = (await ok("ls", ["-a", v.mnt])).split("\n").filter(Boolean);
    expect(rootListing.sort()).toEqual([".", "..", "data", "log.bin"]);
    expect(await ok("ls", [v.in(".snapshots")])).toBe("snap1\n");
    expect(await ok("ls", ["-a", v.in(".snapshots")])).toBe(".\n..\nsnap1\n");
    expect(await ok("ls", ["-a", v.in(".snapshots", "snap1")])).toBe(".\n..\ndata\nlog.bin\n");
    expect((await sh(`stat -c '%A %U %G' "$1"`, [v.in(".snapshots")])).trim()).toBe("dr-xr-xr-x root root");

    // The snapshot holds the files as they were, byte for byte.
    const snap = v.in(".snapshots", "snap1");
    expect(asObject(await checksums(path.join(snap, "data")))).toEqual(asObject(sums));
    expect(await ok("cat", [path.join(snap, "data", "note.txt")])).toBe("before the snapshot\n");
    const snapLogBytes = Number((await sh(`stat -c %s "$1"`, [path.join(snap, "log.bin")])).trim());
    expect(snapLogBytes % chunkBytes).toBe(0);
    const snapChunks = snapLogBytes / chunkBytes;
    expect(snapChunks, "every chunk written before the command is in the snapshot").toBeGreaterThanOrEqual(writtenBefore);
    expect(snapChunks).toBeLessThanOrEqual(writtenTotal);
    const snapSum = (await sh(`sha256sum < "$1"`, [path.join(snap, "log.bin")])).split(" ")[0];
    expect(snapSum).toBe(logSha256(snapChunks));
    const liveSum = (await sh(`sha256sum < "$1"`, [v.in("log.bin")])).split(" ")[0];
    expect(liveSum).toBe(logSha256(writtenTotal));

    // Inode numbers of its own: no loop between /.snapshots/snap1 and /, no hard links with the live files.
    const inos = (await sh(`stat -c %i "$1" "$1/.snapshots" "$1/.snapshots/snap1" "$1/data/big.bin" "$1/.snapshots/snap1/data/big.bin"`, [v.mnt]))
      .trim()
      .split("\n");
    expect(new Set(inos).size, inos.join(" ")).toBe(5);
    const found = await shRun(`find "$1/.snapshots" | sort && du -s "$1/.snapshots" >/dev/null`, [v.mnt]);
    expect(found.code, found.stderr).toBe(0);
    expect(found.stderr).toBe("");
    expect(found.stdout.split("\n").filter(Boolean).map((p) => path.relative(v.mnt, p))).toEqual([
      ".snapshots",
      ".snapshots/snap1",
      ".snapshots/snap1/data",
      ".snapshots/snap1/data/big.bin",
      ".snapshots/snap1/data/deep",
      ".snapshots/snap1/data/deep/small.bin",
      ".snapshots/snap1/data/note.txt",
      ".snapshots/snap1/log.bin",
    ]);

    // Nothing under it changes.
    const attempts = [
      `echo x > "$1/.snapshots/snap1/new"`,
      `echo x >> "$1/.snapshots/snap1/data/note.txt"`,
      `touch "$1/.snapshots/snap1/data/note.txt"`,
      `mkdir "$1/.snapshots/snap1/dir"`,
      `mkdir "$1/.snapshots/other"`,
      `rm "$1/.snapshots/snap1/log.bin"`,
      `rm -r "$1/.snapshots/snap1"`,
      `mv "$1/.snapshots/snap1/data/note.txt" "$1/.snapshots/snap1/moved"`,
      `ln -s x "$1/.snapshots/snap1/sym"`,
      `chmod 600 "$1/.snapshots/snap1/data/note.txt"`,
      `truncate -s 0 "$1/.snapshots/snap1/data/note.txt"`,
      `python3 -c 'import os,sys; os.setxattr(sys.argv[1], "user.a", b"b")' "$1/.snapshots/snap1/data/note.txt"`,
    ];
    for (const attempt of attempts) {
      const r = await shRun(attempt, [v.mnt]);
      expect(r.code, `${attempt} succeeded under /.snapshots`).not.toBe(0);
      expect(r.stderr, attempt).toMatch(/Read-only file system/);
    }
    for (const attempt of [`mkdir "$1/.snapshots"`, `ln -sT x "$1/.snapshots"`, `mkdir "$1/data/d" && mv -T "$1/data/d" "$1/.snapshots"`]) {
      const r = await shRun(attempt, [v.mnt]);
      expect(r.code, attempt).not.toBe(0);
      expect(r.stderr, attempt).toMatch(/File exists/);
    }
    const moved = await shRun(`mv "$1/data/new.txt" "$1/.snapshots"`, [v.mnt]);
    expect(moved.code).not.toBe(0);
    expect(await ok("cat", [path.join(snap, "data", "note.txt")])).toBe("before the snapshot\n");

    // Listed by the CLI through the mount and, once unmounted, on the image; it survives a remount.
    const listed = (await v.groveOk(["snapshot", "list", v.mnt])).stdout.trimEnd().split("\n");
    expect(listed[1]).toMatch(/^snap1\s+\d+\s+default\s+\S+Z$/);
    await v.umount();
    v.check();
    const onImage = JSON.parse((await v.groveOk(["snapshot", "list", v.image, "--json"])).stdout) as { name: string }[];
    expect(onImage.map((s) => s.name)).toEqual(["snap1"]);
    await v.mount();
    expect(asObject(await checksums(v.in(".snapshots", "snap1", "data")))).toEqual(asObject(sums));
    await v.finish();
  });

  it("a clone mounted with --subvol is writable and independent; a snapshot mounts read-only; an unknown one mounts nothing", async () => {
    const v = await mounted("clone");
    await sh(`cd "$1" && echo original > f && mkdir d && echo inner > d/g`, [v.mnt]);
    const cloned = await v.groveOk(["clone", v.mnt, "default", "c1"]);
    expect(cloned.stdout).toMatch(new RegExp(`^clone 'c1' of 'default' created \\(id \\d+\\); mount it with: grovefs mount ${v.image} MOUNTPOINT --subvol c1\\n$`));
    await v.groveOk(["snapshot", "create", v.mnt, "s1"]);
    expect(await ok("ls", [v.in(".snapshots")])).toBe("s1\n");
    const subvolumes = JSON.parse((await v.groveOk(["subvolume", "list", v.mnt, "--json"])).stdout) as { name: string; readOnly: boolean }[];
    expect(subvolumes.map((s) => [s.name, s.readOnly])).toEqual([["c1", false], ["default", false], ["s1", true]]);
    await v.umount();

    await v.mount(["--subvol", "c1"]);
    expect((await mountsAt(v.mnt)).at(-1)!.options.split(",")).toContain("rw");
    expect(await ok("cat", [v.in("f")])).toBe("original\n");
    await sh(`cd "$1" && echo clone > f && echo new > g && rm d/g`, [v.mnt]);
    // A snapshot through this mount is of the clone.
    const cs1 = await v.groveOk(["snapshot", "create", v.mnt, "cs1"]);
    expect(cs1.stdout).toMatch(/^snapshot 'cs1' of 'c1' created/);
    expectOneLineError(await v.grove(["subvolume", "delete", v.mnt, "c1"]), /cannot delete 'c1': it is the subvolume mounted at .* — unmount it first \(grovefs umount .*\), then delete it/);
    await v.umount();
    v.check();

    await v.mount();
    expect(await sh(`cat "$1/f" "$1/d/g"; ls "$1"`, [v.mnt])).toBe("original\ninner\nd\nf\n");
    expect(await ok("ls", [v.in(".snapshots")])).toBe("cs1\ns1\n");
    expect(await sh(`cat "$1/.snapshots/cs1/f" "$1/.snapshots/cs1/g"`, [v.mnt])).toBe("clone\nnew\n");
    await v.umount();

    await v.mount(["--subvol", "s1"]);
    expect((await mountsAt(v.mnt)).at(-1)!.options.split(",")).toContain("ro");
    expect(await ok("cat", [v.in("f")])).toBe("original\n");
    for (const attempt of [`echo x > "$1/f"`, `touch "$1/new"`, `rm "$1/f"`, `mkdir "$1/x"`]) {
      const r = await shRun(attempt, [v.mnt]);
      expect(r.code, attempt).not.toBe(0);
      expect(r.stderr, attempt).toMatch(/Read-only file system/);
    }
    expectOneLineError(await v.grove(["snapshot", "delete", v.mnt, "s1"]), /cannot delete 's1'.*mounted at/);
    await v.umount();

    expectOneLineError(await v.grove(["mount", v.image, v.mnt, "--subvol", "nope"]), /cannot mount subvolume 'nope'.*— grovefs subvolume list/, 32);
    expect(await mountsAt(v.mnt)).toEqual([]);
    expect(await pidsHolding(v.image)).toEqual([]);
    v.check();
  });

  it("deleting a snapshot on a mount gives its space back in df, even with one of its files open", async () => {
    const v = await mounted("delete");
    const base = await df(v.mnt);
    await sh(`dd if=/dev/urandom of="$1/big" bs=1M count=200 status=none`, [v.mnt]);
    await v.groveOk(["snapshot", "create", v.mnt, "s1"]);
    await sh(`rm "$1/big"`, [v.mnt]);
    const held = await df(v.mnt);
    expect(held.used - base.used, "the snapshot keeps the deleted file's blocks").toBeGreaterThanOrEqual(200 * MiB);

    // A reader holds a file of the snapshot open across the deletion.
    const reader = spawn(
      "python3",
      [
        "-c",
        `import os, sys, errno
fd = os.open(sys.argv[1], os.O_RDONLY)
print("open", flush=True)
sys.stdin.readline()
try:
    os.pread(fd, 4096, 150 * 1024 * 1024)
    print("read", flush=True)
except OSError as e:
    print(errno.errorcode[e.errno], flush=True)`,
        v.in(".snapshots", "s1", "big"),
      ],
      { stdio: ["pipe", "pipe", "pipe"] },
    );
    v.children.add(reader);
    let readerOut = "";
    reader.stdout!.setEncoding("utf8").on("data", (text: string) => (readerOut += text));
    reader.stderr!.setEncoding("utf8").on("data", (text: string) => (readerOut += text));
    const readerDone = new Promise((resolve) => reader.on("exit", resolve));
    expect(await waitFor(() => readerOut.includes("open"), settleMs), readerOut).toBe(true);

    const deleted = await v.groveOk(["snapshot", "delete", v.mnt, "s1"]);
    expect(deleted.stdout).toBe("snapshot 's1' deleted; its space is freed in the background\n");
    expect(await ok("ls", ["-A", v.in(".snapshots")])).toBe("");
    const gone = await shRun(`cat "$1/.snapshots/s1/big" > /dev/null`, [v.mnt]);
    expect(gone.stderr).toMatch(/No such file or directory/);
    reader.stdin!.end("go\n");
    await readerDone;
    // The read reaches the daemon (nothing of the file was cached), which answers ENOENT; the page cache may turn that into EIO.
    expect(readerOut).toMatch(/^open\n(ENOENT|EIO)\n$/);
    expect(await ok("ls", ["-A", v.mnt]), "the daemon still serves").toBe("");

    let now = held;
    const freed = await waitFor(async () => {
      now = await df(v.mnt);
      return now.used < base.used + 16 * MiB;
    }, settleMs);
    expect(freed, `used ${now.used} bytes, ${base.used} before the 200 MiB file`).toBe(true);
    expect(await v.groveOk(["snapshot", "list", v.mnt])).toMatchObject({ stdout: "no snapshots\n" });
    await v.finish();
    const info = JSON.parse((await v.groveOk(["info", v.image, "--json"])).stdout) as { usedBytes: number };
    expect(info.usedBytes).toBeLessThan(base.used + 16 * MiB);
  });

  it("refusals through a mount are one line, the image points at its mount point, and a dead daemon is named as such", async () => {
    const v = await mounted("refuse");
    await sh(`echo data > "$1/f"`, [v.mnt]);
    await v.groveOk(["snapshot", "create", v.mnt, "s1"]);
    const socket = (await fsp.readdir(v.out("run"))).filter((name) => name.endsWith(".sock"));
    expect(socket).toHaveLength(1);
    expect((await fsp.stat(v.out("run", socket[0]!))).mode & 0o777).toBe(0o600);

    expectOneLineError(await v.grove(["snapshot", "create", v.mnt, "s1"]), /a subvolume named 's1' already exists/);
    expectOneLineError(await v.grove(["clone", v.mnt, "s1", "s1"]), /already exists/);
    expectOneLineError(await v.grove(["snapshot", "create", v.mnt, "a/b"]), /cannot create 'a\/b'/);
    expectOneLineError(await v.grove(["snapshot", "create", v.mnt, "s2", "--from", "nope"]), /cannot create 's2' from 'nope'/);
    expectOneLineError(await v.grove(["snapshot", "delete", v.mnt, "nope"]), /cannot delete 'nope'/);
    expectOneLineError(await v.grove(["snapshot", "delete", v.mnt, "default"]), /cannot delete .default.: it is the default subvolume.*clone a snapshot/);
    // Served and the default one: the hint must not send the user to a command that fails too.
    expectOneLineError(await v.grove(["subvolume", "delete", v.mnt, "default"]), /cannot delete 'default': it is the default subvolume.*clone a snapshot/);
    expectOneLineError(
      await v.grove(["snapshot", "delete", v.image, "s1"]),
      new RegExp(`is mounted at ${v.mnt} — give the mount point instead: grovefs snapshot delete ${v.mnt} s1`),
    );
    expectOneLineError(await v.grove(["snapshot", "list", v.image]), new RegExp(`grovefs snapshot list ${v.mnt}`));
    expect(await ok("ls", [v.in(".snapshots")])).toBe("s1\n");

    // A daemon killed with SIGKILL leaves a stale mount and a stale socket.
    const pid = await v.daemonPid();
    process.kill(pid, "SIGKILL");
    expect(await waitFor(() => !processAlive(pid), settleMs)).toBe(true);
    expectOneLineError(await v.grove(["snapshot", "list", v.mnt]), /is a stale grovefs mount \(its process is gone\) — clean it up with: grovefs umount/);
    expectOneLineError(await v.grove(["snapshot", "create", v.mnt, "s2"]), /stale grovefs mount/);
    await v.groveOk(["umount", v.mnt]);
    expect(await mountsAt(v.mnt)).toEqual([]);
    // The committed state (with s1: creating it committed) is intact.
    v.check();
    const left = JSON.parse((await v.groveOk(["snapshot", "list", v.image, "--json"])).stdout) as { name: string }[];
    expect(left.map((s) => s.name)).toEqual(["s1"]);
    // The next mount replaces the stale socket.
    await v.mount();
    expect(await ok("ls", [v.in(".snapshots")])).toBe("s1\n");
    await v.groveOk(["snapshot", "delete", v.mnt, "s1"]);
    await v.finish();
    expect((await fsp.readdir(v.out("run"))).filter((name) => name.endsWith(".sock"))).toEqual([]);
  });
});
