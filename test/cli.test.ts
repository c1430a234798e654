/**
 * The grovefs command line, run as child processes (`node bin/grovefs.mjs`):
 * mkfs, info, errors (one line, no stack, non-zero exit), image locking, and
 * one mount round trip through the kernel (skipped without root and
 * /dev/fuse). This process never touches a mount itself: every file access on
 * one runs in a child (`sh -c`), so a hung daemon cannot hang the worker.
 */
import type { ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { dir as tmpDir, type DirectoryResult } from "tmp-promise";
import { afterAll, afterEach, beforeEach, describe, expect, it } from "vitest";
import { formatSize, parseSize } from "../cli/size.js";
import { identifyContents } from "../cli/mkfs.js";
import { parseMountOptions } from "../cli/mount.js";
import { fuseHandlers, parseMountinfo, type BridgedFs } from "../fs/fuse_bridge.js";
import { GroveError, IoError } from "../kvstore/index.js";
import { bin, expectOneLineError, holdImage as holdImageIn, run, runGrovefs, type RunResult } from "./cli_helpers.js";

function grovefs(...args: string[]): Promise<RunResult> {
  return runGrovefs(args);
}

describe("size parsing", () => {
  it("accepts bytes and binary suffixes", () => {
    expect(parseSize("1048576")).toBe(1048576);
    expect(parseSize("4096B")).toBe(4096);
    expect(parseSize("512K")).toBe(512 * 1024);
    expect(parseSize("512k")).toBe(512 * 1024);
    expect(parseSize("64M")).toBe(64 * 2 ** 20);
    expect(parseSize("4G")).toBe(4 * 2 ** 30);
    expect(parseSize("4GiB")).toBe(4 * 2 ** 30);
    expect(parseSize("1T")).toBe(2 ** 40);
    expect(parseSize("1.5G")).toBe(1.5 * 2 ** 30);
    expect(parseSize(" 2M ")).toBe(2 * 2 ** 20);
  });

  it("rejects garbage, fractions of a byte and overflow", () => {
    for (const bad of ["", "G", "4X", "-1G", "4 G B", "1e9", "0x100", "4iB", "1.5", "0.1K", "99999999999P", "4G4"]) {
      expect(() => parseSize(bad), bad).toThrow(/invalid size/);
    }
  });

  it("formats sizes for people", () => {
    expect(formatSize(512)).toBe("512 bytes");
    expect(formatSize(64 * 2 ** 20)).toBe("64.0 MiB");
    expect(formatSize(2 ** 40)).toBe("1.0 TiB");
  });
});

describe("mount options", () => {
  const relatime = { update: "relatime", directories: true };

  it("maps the generic options, ignores fstab's, and refuses the rest before mounting", () => {
    expect(parseMountOptions([])).toEqual({ readOnly: false, extra: [], accessTimes: relatime });
    expect(parseMountOptions(["ro,noatime", "nosuid"])).toEqual({
      readOnly: true,
      extra: ["nosuid", "noatime"],
      accessTimes: { update: "noatime", directories: true },
    });
    expect(parseMountOptions(["ro,rw,defaults"])).toEqual({ readOnly: false, extra: [], accessTimes: relatime });
    // What mount.fuse and fstab hand over: all accepted, none of it a kernel flag.
    const fstab = "rw,dev,suid,exec,async,auto,noauto,user,users,nouser,owner,group,nofail,_netdev,loop,nonempty,lazytime";
    expect(parseMountOptions([`${fstab},x-systemd.automount,x-systemd.device-timeout=10,X-mount.mkdir,comment=systemd.x`])).toEqual({
      readOnly: false,
      extra: [],
      accessTimes: relatime,
    });
    // Each flag and its opposite: the last one wins, as in mount(8).
    expect(parseMountOptions(["nodev,noexec,nosuid,exec"]).extra).toEqual(["nosuid", "nodev"]);
    expect(parseMountOptions(["nodev", "dev"]).extra).toEqual([]);
    expect(parseMountOptions(["noatime,strictatime,nodiratime"])).toMatchObject({
      extra: ["strictatime", "nodiratime"],
      accessTimes: { update: "strictatime", directories: false },
    });
    expect(parseMountOptions(["noatime,relatime,nodiratime,diratime"])).toMatchObject({ extra: [], accessTimes: relatime });
    expect(parseMountOptions(["noatime,atime"]).accessTimes).toEqual(relatime);
    expect(parseMountOptions(["subvol=experiment,ro"])).toMatchObject({ readOnly: true, subvolume: "experiment" });
    for (const option of ["sync", "dirsync"]) {
      expect(() => parseMountOptions([`ro,${option}`])).toThrow(new RegExp(`mount option '${option}' is not supported: grovefs commits on fsync`));
    }
    for (const bad of ["allow_other", "bogus", "subvol=", "constructor", "offset=4096", "noatim"]) {
      expect(() => parseMountOptions([bad]), bad).toThrow(/unknown mount option/);
    }
  });

  it("takes commit=SECONDS (1 to 3600; 0 is the default), and refuses anything else", () => {
    expect(parseMountOptions(["commit=30"]).commitSeconds).toBe(30);
    expect(parseMountOptions(["commit=1,commit=3600"]).commitSeconds).toBe(3600);
    expect(parseMountOptions(["commit=0"]).commitSeconds).toBeUndefined();
    expect(parseMountOptions(["rw"]).commitSeconds).toBeUndefined();
    for (const bad of ["commit=", "commit=-1", "commit=1.5", "commit=3601", "commit=5s", "commit=0x10"]) {
      expect(() => parseMountOptions([bad]), bad).toThrow(/bad mount option 'commit=/);
    }
  });

  it("takes compress=lz4 and compress=none (the last one wins), and refuses any other compression", () => {
    expect(parseMountOptions(["compress=lz4"])).toEqual({ readOnly: false, extra: [], accessTimes: relatime, compression: "lz4" });
    expect(parseMountOptions(["ro,compress=none", "noatime"])).toMatchObject({ readOnly: true, extra: ["noatime"], compression: "none" });
    expect(parseMountOptions(["compress=none,compress=lz4"]).compression).toBe("lz4");
    expect(parseMountOptions(["rw"]).compression).toBeUndefined();
    for (const bad of ["compress=zstd", "compress=", "compress=LZ4", "compress=lz4:3"]) {
      expect(() => parseMountOptions([bad]), bad).toThrow(/unknown compression/);
    }
    expect(() => parseMountOptions(["compress"])).toThrow(/mount option 'compress' is not supported/);
    expect(() => parseMountOptions(["compress-force=lz4"])).toThrow(/not supported/);
  });
});

describe("fuse bridge handlers", () => {
  /** A filesystem whose every method throws what `failure` says. */
  function failing(failure: () => never): BridgedFs {
    return new Proxy({} as BridgedFs, { get: () => () => failure() });
  }

  it("answers a GroveError's errno, EIO for corruption and I/O, and EIO (logged) for bugs", () => {
    const answers: number[] = [];
    const cb = (code: number) => answers.push(code);
    fuseHandlers(failing(() => { throw new GroveError("ENOENT", "ENOENT_test", "missing"); })).getattr!("/x", cb);
    fuseHandlers(failing(() => { throw new IoError("EIO_test", "disk gone"); })).unlink!("/x", cb);
    const stderr = process.stderr.write;
    let logged = "";
    process.stderr.write = ((text: string) => ((logged += text), true)) as typeof process.stderr.write;
    try {
      fuseHandlers(failing(() => { throw new TypeError("a bug"); })).read!("/x", 1, Buffer.alloc(4), 4, 0, cb);
    } finally {
      process.stderr.write = stderr;
    }
    expect(answers).toEqual([-2, -5, -5]);
    expect(logged).toMatch(/read threw a non-GroveError[\s\S]*TypeError: a bug[\s\S]*\n\s+at /);
  });

  it("maps results: byte counts, stats with ns times, names with . and ..", () => {
    const stat = {
      ino: 7, mode: 0o100644, nlink: 1, uid: 0, gid: 0, rdev: 0, size: 3, blocks: 8, blksize: 4096,
      atimeNs: 1n, mtimeNs: 2n, ctimeNs: 3n, crtimeNs: 4n,
    };
    const fs = {
      getattr: () => stat,
      read: (_fh: number, buf: Buffer) => buf.write("abc"),
      readdir: () => [{ name: "f", ino: 7, type: 0o100000 }],
    } as unknown as BridgedFs;
    const handlers = fuseHandlers(fs);
    const seen: unknown[][] = [];
    handlers.getattr!("/f", (...args: unknown[]) => seen.push(args));
    handlers.read!("/f", 1, Buffer.alloc(8), 8, 0, (...args: unknown[]) => seen.push(args));
    handlers.readdir!("/", (...args: unknown[]) => seen.push(args));
    expect(seen[0]![0]).toBe(0);
    expect(seen[0]![1]).toMatchObject({ ino: 7, mode: 0o100644, size: 3, atime: 1n, mtime: 2n, ctime: 3n });
    expect(seen[1]).toEqual([3]);
    expect(seen[2]![1]).toEqual([".", "..", "f"]);
  });

  it("reads the mount table, unescaping paths", () => {
    const text =
      "36 35 98:0 / /mnt/with\\040space rw,relatime shared:1 - fuse.grovefs /img\\040a rw,user_id=0\n" +
      "37 35 0:5 / /proc rw - proc proc rw\n";
    expect(parseMountinfo(text)).toEqual([
      { device: "98:0", mountpoint: "/mnt/with space", fstype: "fuse.grovefs", source: "/img a" },
      { device: "0:5", mountpoint: "/proc", fstype: "proc", source: "proc" },
    ]);
  });
});

describe("content detection", () => {
  it("names known signatures and reports any other data", () => {
    const head = Buffer.alloc(68 * 1024);
    expect(identifyContents(head)).toBeNull();
    const ext = Buffer.from(head);
    ext.writeUInt16LE(0xef53, 1024 + 0x38);
    ext.writeUInt32LE(0x40, 1024 + 0x60);
    expect(identifyContents(ext)).toBe("an ext4 filesystem");
    const xfs = Buffer.from(head);
    xfs.write("XFSB", 0);
    expect(identifyContents(xfs)).toBe("an XFS filesystem");
    const data = Buffer.from(head);
    data[40000] = 1;
    expect(identifyContents(data)).toBe("data");
  });
});

describe("grovefs mkfs and info", () => {
  let tmp: DirectoryResult;
  beforeEach(async () => {
    tmp = await tmpDir({ unsafeCleanup: true });
  });
  afterEach(async () => {
    await tmp.cleanup();
  });

  it("a reader that closes the pipe early stops the command quietly (status 141, as SIGPIPE), never with a stack trace", async () => {
    const image = path.join(tmp.path, "pipe.img");
    expect((await grovefs("mkfs", image, "--size", "64M")).code).toBe(0);
    for (let i = 0; i < 3; i++) {
      // `true` exits before reading: info's first write meets a closed pipe.
      const r = await run("bash", ["-c", `"$0" "$1" info "$2" | true; echo "status \${PIPESTATUS[0]}" >&2`, process.execPath, bin, image]);
      expect(r.stderr).toMatch(/^status (0|141)\n$/);
    }
  });

  it("lists every command, and each has --help", async () => {
    const help = await grovefs("--help");
    expect(help.code).toBe(0);
    for (const command of ["mkfs", "mount", "umount", "info"]) {
      expect(help.stdout).toContain(command);
      const sub = await grovefs(command, "--help");
      expect(sub.code, sub.stderr).toBe(0);
      expect(sub.stdout).toContain(`Usage: grovefs ${command}`);
    }
  });

  it("creates a sparse image of the given size and reports it", async () => {
    const image = path.join(tmp.path, "a.img");
    const r = await grovefs("mkfs", image, "--size", "64M", "--label", "alpha");
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain("alpha");
    expect(r.stdout).toMatch(/uuid:\s+[0-9a-f]{32}/);
    expect(fs.statSync(image).size).toBe(64 * 2 ** 20);

    const info = await grovefs("info", image);
    expect(info.code, info.stderr).toBe(0);
    for (const field of ["label:", "uuid:", "size:", "used:", "free:", "generation:", "trees:", "inodes:", "subvolumes:"]) {
      expect(info.stdout).toContain(field);
    }
    expect(info.stdout).toContain("alpha");
    expect(info.stdout).toContain("(67108864 bytes)");

    const json = await grovefs("info", image, "--json");
    expect(json.code, json.stderr).toBe(0);
    const report = JSON.parse(json.stdout) as Record<string, unknown>;
    expect(report).toMatchObject({ label: "alpha", sizeBytes: 64 * 2 ** 20, inUse: false, inodes: 1, subvolumes: 1, snapshots: 0, pendingDeletions: 0 });
    expect(report.uuid).toMatch(/^[0-9a-f]{32}$/);
    expect(report.usedBytes as number).toBeGreaterThan(0);
    expect((report.usedBytes as number) + (report.freeBytes as number)).toBe(64 * 2 ** 20);
    expect(typeof report.generation).toBe("number");
    expect(typeof report.trees).toBe("number");
  });

  it("formats with --compress lz4 or none, and info shows the volume's default compression", async () => {
    const lz4 = path.join(tmp.path, "lz4.img");
    const made = await grovefs("mkfs", lz4, "--size", "64M", "--compress", "lz4");
    expect(made.code, made.stderr).toBe(0);
    expect(made.stdout).toMatch(/^ {2}compression: +lz4\b/m);
    const info = await grovefs("info", lz4);
    expect(info.code, info.stderr).toBe(0);
    expect(info.stdout).toMatch(/^compression: +lz4 /m);
    expect(info.stdout).toMatch(/^used: +.* on disk \(\d+ bytes, [\d.]+%\), .* logical \(ratio [\d.]+x\)$/m);
    expect(info.stdout).toMatch(/^compressed: +0 data extents$/m);
    const json = JSON.parse((await grovefs("info", lz4, "--json")).stdout) as Record<string, unknown>;
    expect(json).toMatchObject({ compression: "lz4", compressed: { extents: 0, diskBytes: 0, logicalBytes: 0 } });
    // Nothing is compressed yet: logical and physical usage agree.
    expect(json.logicalUsedBytes).toBe(json.usedBytes);

    for (const [name, args] of [["none.img", ["--compress", "none"]], ["default.img", []]] as const) {
      const image = path.join(tmp.path, name);
      const r = await grovefs("mkfs", image, "--size", "16M", ...args);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toMatch(/^ {2}compression: +none$/m);
      expect(JSON.parse((await grovefs("info", image, "--json")).stdout)).toMatchObject({ compression: "none" });
    }
  });

  it("refuses an unknown --compress in one line and leaves the target alone", async () => {
    const image = path.join(tmp.path, "z.img");
    for (const bad of ["zstd", "LZ4", ""]) {
      const r = await grovefs("mkfs", image, "--size", "16M", "--compress", bad);
      expectOneLineError(r, /unknown compression .* for --compress — accepted: --compress lz4, --compress none/, 1);
      expect(fs.existsSync(image), `mkfs --compress '${bad}' created the image`).toBe(false);
    }
    // An existing volume, even with --force, is not touched.
    expect((await grovefs("mkfs", image, "--size", "16M", "--label", "kept")).code).toBe(0);
    const before = fs.readFileSync(image);
    expectOneLineError(await grovefs("mkfs", image, "--force", "--label", "new", "--compress", "zstd"), /unknown compression 'zstd'/, 1);
    expect(fs.readFileSync(image).equals(before)).toBe(true);
    expect(JSON.parse((await grovefs("info", image, "--json")).stdout)).toMatchObject({ label: "kept", compression: "none" });
  });

  it("formats a 1 TiB sparse image in a few blocks", async () => {
    const image = path.join(tmp.path, "huge.img");
    const started = performance.now();
    const r = await grovefs("mkfs", image, "--size", "1T");
    expect(r.code, r.stderr).toBe(0);
    expect(performance.now() - started).toBeLessThan(10_000);
    const stat = fs.statSync(image);
    expect(stat.size).toBe(2 ** 40);
    expect(stat.blocks * 512).toBeLessThan(16 * 2 ** 20);
  });

  it("refuses a size the host filesystem cannot hold, before anything changes", async (context) => {
    // ext4's largest file is 16 TiB - 4 KiB; other hosts may take 64 TiB, and then there is nothing to refuse.
    const host = (await run("stat", ["-f", "-c", "%T", tmp.path])).stdout.trim();
    if (host !== "ext2/ext3") context.skip();
    const fresh = path.join(tmp.path, "too-big.img");
    expectOneLineError(await grovefs("mkfs", fresh, "--size", "64T"), /cannot make a file of 70368744177664 bytes.*smaller --size/);
    expect(fs.existsSync(fresh), "a refused mkfs left a new file behind").toBe(false);
    const kept = path.join(tmp.path, "kept.img");
    expect((await grovefs("mkfs", kept, "--size", "8M", "--label", "kept")).code).toBe(0);
    expectOneLineError(await grovefs("mkfs", kept, "--size", "64T", "--force"), /cannot make a file/);
    expect(fs.statSync(kept).size).toBe(8 * 2 ** 20);
    expect((await grovefs("info", kept)).stdout).toContain("kept");
  });

  it("formats an existing empty (sparse) file at its own size, and resizes with --size", async () => {
    const image = path.join(tmp.path, "sparse.img");
    fs.closeSync(fs.openSync(image, "w"));
    fs.truncateSync(image, 8 * 2 ** 20);
    const r = await grovefs("mkfs", image);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain("(8388608 bytes)");
    const again = await grovefs("mkfs", image, "--size", "16M", "--force");
    expect(again.code, again.stderr).toBe(0);
    expect(fs.statSync(image).size).toBe(16 * 2 ** 20);
  });

  it("refuses to overwrite a grovefs volume or data without --force", async () => {
    const image = path.join(tmp.path, "a.img");
    expect((await grovefs("mkfs", image, "--size", "8M", "--label", "first")).code).toBe(0);
    expectOneLineError(await grovefs("mkfs", image), /contains a grovefs volume labelled "first".*--force/);
    expectOneLineError(await grovefs("mkfs", image, "--size", "16M"), /contains a grovefs volume/);
    expect(fs.statSync(image).size).toBe(8 * 2 ** 20);

    const forced = await grovefs("mkfs", image, "--force", "--label", "second");
    expect(forced.code, forced.stderr).toBe(0);
    expect((await grovefs("info", image)).stdout).toContain("second");

    const data = path.join(tmp.path, "notes.txt");
    fs.writeFileSync(data, "precious\n");
    expectOneLineError(await grovefs("mkfs", data, "--size", "8M"), /contains data.*--force/);
    expect(fs.readFileSync(data, "utf8")).toBe("precious\n");

    const ext = path.join(tmp.path, "ext.img");
    const head = Buffer.alloc(4096);
    head.writeUInt16LE(0xef53, 1024 + 0x38);
    head.writeUInt32LE(0x40, 1024 + 0x60);
    fs.writeFileSync(ext, head);
    fs.truncateSync(ext, 8 * 2 ** 20);
    expectOneLineError(await grovefs("mkfs", ext), /contains an ext4 filesystem/);
  });

  it("reports bad input in one line without a stack trace", async () => {
    const image = path.join(tmp.path, "x.img");
    expectOneLineError(await grovefs("mkfs", image, "--size", "4X"), /invalid size '4X'/);
    expectOneLineError(await grovefs("mkfs", image, "--size", "1.5"), /invalid size/);
    expectOneLineError(await grovefs("mkfs", image, "--size", "512K"), /too small/);
    expectOneLineError(await grovefs("mkfs", image), /does not exist.*--size/);
    expectOneLineError(await grovefs("mkfs", path.join(tmp.path, "no", "such", "dir", "x.img"), "--size", "8M"), /directory .* does not exist/);
    expectOneLineError(await grovefs("mkfs", tmp.path), /is a directory/);
    expectOneLineError(await grovefs("info", image), /no such image/);
    fs.writeFileSync(image, Buffer.alloc(2 * 2 ** 20));
    expectOneLineError(await grovefs("info", image), /not a grovefs volume/);
    expectOneLineError(await grovefs("frobnicate"), /unknown command 'frobnicate'/);
    expectOneLineError(await grovefs("mkfs"), /missing required argument/);
    expectOneLineError(await grovefs("info", image, "--bogus"), /unknown option '--bogus'/);
    expectOneLineError(await grovefs("umount", path.join(tmp.path, "nowhere")), /does not exist/);
    expectOneLineError(await grovefs("umount", tmp.path), /is not mounted/);
    const mnt = path.join(tmp.path, "mnt");
    fs.mkdirSync(mnt);
    // A failed mount exits 32 and a usage error 1, as mount(8) and its helpers do.
    const failed = 32;
    expectOneLineError(await grovefs("mount", path.join(tmp.path, "none.img"), mnt), /no such image/, failed);
    expectOneLineError(await grovefs("mount", image, path.join(tmp.path, "nomnt")), /mount point .* does not exist/, failed);
    expectOneLineError(await grovefs("mount", image, image), /not a directory/, failed);
    expectOneLineError(await grovefs("mount", "-o", "ro,bogus", image, mnt), /unknown mount option 'bogus'.*compress=lz4\|none/, failed);
    expectOneLineError(await grovefs("mount", "-o", "ro,sync", image, mnt), /mount option 'sync' is not supported/, failed);
    // Refused before the image or the mount point is looked at, in either mode.
    for (const mode of [[], ["--foreground"]]) {
      const bogus = await grovefs("mount", ...mode, "-o", "compress=bogus", image, mnt);
      expectOneLineError(bogus, /unknown compression 'bogus' for -o compress — accepted: -o compress=lz4, -o compress=none/, failed);
    }
    expectOneLineError(await grovefs("mount", "-o", "rw,compress", image, mnt), /mount option 'compress' is not supported.*compress=lz4/, failed);
    expectOneLineError(await grovefs("mount", image), /missing required argument 'mountpoint'/, 1);
    expectOneLineError(await grovefs("mount", "--bogus", image, mnt), /unknown option '--bogus'/, 1);
    expectOneLineError(await grovefs("install-helpers", "--bogus"), /unknown option '--bogus'/, 2);
  });
});

describe("image locking", () => {
  let tmp: DirectoryResult;
  let holder: ChildProcess | null = null;

  beforeEach(async () => {
    tmp = await tmpDir({ unsafeCleanup: true });
  });
  afterEach(async () => {
    holder?.kill("SIGKILL");
    holder = null;
    await tmp.cleanup();
  });

  /** Another process that opens the image as grovefs does and holds it until killed. */
  async function holdImage(image: string): Promise<ChildProcess> {
    const child = await holdImageIn(image, tmp.path);
    holder = child;
    return child;
  }

  it("refuses an image open in another process, and a SIGKILL releases it", async () => {
    const image = path.join(tmp.path, "a.img");
    expect((await grovefs("mkfs", image, "--size", "8M", "--label", "held", "--compress", "lz4")).code).toBe(0);
    const child = await holdImage(image);

    expectOneLineError(await grovefs("mkfs", image, "--force"), /is in use by another grovefs process/);
    const mnt = path.join(tmp.path, "mnt");
    fs.mkdirSync(mnt);
    expectOneLineError(await grovefs("mount", "--foreground", image, mnt), /is in use by another grovefs process/, 32);

    // info still shows the committed superblock, marked as in use, and its default compression.
    const info = await grovefs("info", image, "--json");
    expect(info.code, info.stderr).toBe(0);
    expect(JSON.parse(info.stdout)).toMatchObject({ inUse: true, label: "held", sizeBytes: 8 * 2 ** 20, compression: "lz4" });
    expect(JSON.parse(info.stdout).usedBytes).toBeUndefined();

    const exited = new Promise((resolve) => child.once("exit", resolve));
    child.kill("SIGKILL");
    await exited;
    holder = null;
    const forced = await grovefs("mkfs", image, "--force", "--label", "free");
    expect(forced.code, forced.stderr).toBe(0);
  });
});

// ---- through the kernel ---------------------------------------------------------

// CI runs as root with /dev/fuse: there the mount tests must run, and fail if they cannot mount.
const canMount = process.env.CI === "true" || (process.getuid?.() === 0 && fs.existsSync("/dev/fuse"));

describe.skipIf(!canMount)("grovefs mount and umount (daemon mode)", () => {
  let tmp: DirectoryResult;
  const mounted = new Set<string>();

  beforeEach(async () => {
    tmp = await tmpDir({ unsafeCleanup: true });
  });
  afterEach(async () => {
    // Never leave a mount behind, whatever failed.
    for (const mountpoint of mounted) await run("umount", ["-l", mountpoint]);
    mounted.clear();
    await tmp.cleanup();
  });
  afterAll(() => {
    expect(mounted.size).toBe(0);
  });

  const isMountpoint = async (mountpoint: string) => (await run("mountpoint", ["-q", mountpoint])).code === 0;
  const sh = (script: string) => run("sh", ["-c", script]);

  it("mounts in the background, serves files, and keeps them across a remount", async () => {
    const image = path.join(tmp.path, "vol.img");
    const mnt = path.join(tmp.path, "mnt");
    fs.mkdirSync(mnt);
    expect((await grovefs("mkfs", image, "--size", "64M")).code).toBe(0);

    const mount = await grovefs("mount", image, mnt);
    mounted.add(mnt);
    expect(mount.code, mount.stderr).toBe(0);
    expect(await isMountpoint(mnt)).toBe(true);

    const write = await sh(`printf 'hello grove\\n' > '${mnt}/greeting' && mkdir '${mnt}/dir' && cat '${mnt}/greeting'`);
    expect(write.code, write.stderr).toBe(0);
    expect(write.stdout).toBe("hello grove\n");

    expectOneLineError(await grovefs("mount", image, mnt), /already a mount point/, 32);
    const other = path.join(tmp.path, "other");
    fs.mkdirSync(other);
    // A second mount of the image attaches to its daemon, which already serves the default subvolume.
    expectOneLineError(await grovefs("mount", image, other), /subvolume 'default' of .* is already mounted at /);

    const umount = await grovefs("umount", mnt);
    expect(umount.code, umount.stderr).toBe(0);
    expect(await isMountpoint(mnt)).toBe(false);
    mounted.delete(mnt);
    // umount returned only after the daemon closed the image: it is unlocked and committed.
    const info = await grovefs("info", image, "--json");
    expect(JSON.parse(info.stdout)).toMatchObject({ inUse: false, inodes: 3 });

    const remount = await grovefs("mount", image, mnt);
    expect(remount.code, remount.stderr).toBe(0);
    mounted.add(mnt);
    const read = await sh(`cat '${mnt}/greeting' && ls '${mnt}'`);
    expect(read.stdout).toBe("hello grove\ndir\ngreeting\n");
    expect((await grovefs("umount", mnt)).code).toBe(0);
    mounted.delete(mnt);
    expect(await isMountpoint(mnt)).toBe(false);
  });

  it("mounts through a symlink to the mountpoint, and umount through either path waits for the daemon", async () => {
    const image = path.join(tmp.path, "vol.img");
    const mnt = path.join(tmp.path, "mnt");
    const link = path.join(tmp.path, "link");
    fs.mkdirSync(mnt);
    fs.symlinkSync(mnt, link);
    expect((await grovefs("mkfs", image, "--size", "64M")).code).toBe(0);
    const mount = await grovefs("mount", image, link);
    mounted.add(mnt);
    expect(mount.code, mount.stderr).toBe(0);
    expect(await isMountpoint(mnt)).toBe(true);
    expect((await sh(`printf 'via link\\n' > '${link}/f'`)).code).toBe(0);
    const snapshot = await grovefs("snapshot", "create", link, "s");
    expect(snapshot.code, snapshot.stderr).toBe(0);
    const umount = await grovefs("umount", link);
    expect(umount.code, umount.stderr).toBe(0);
    mounted.delete(mnt);
    // umount returned after the daemon committed and released the image.
    const info = await grovefs("info", image, "--json");
    expect(JSON.parse(info.stdout)).toMatchObject({ inUse: false, inodes: 2, snapshots: 1 });
  });

  it("exits cleanly when unmounted by plain umount, and mounts read-only with -o ro", async () => {
    const image = path.join(tmp.path, "vol.img");
    const mnt = path.join(tmp.path, "mnt");
    fs.mkdirSync(mnt);
    expect((await grovefs("mkfs", image, "--size", "16M")).code).toBe(0);
    const mount = await grovefs("mount", image, mnt);
    expect(mount.code, mount.stderr).toBe(0);
    mounted.add(mnt);
    expect((await sh(`echo kept > '${mnt}/f'`)).code).toBe(0);
    expect((await run("umount", [mnt])).code).toBe(0);
    mounted.delete(mnt);
    // The daemon notices within its one-second tick, commits and releases the image.
    let info: RunResult | null = null;
    for (let attempt = 0; attempt < 50; attempt++) {
      info = await grovefs("info", image, "--json");
      if (JSON.parse(info.stdout).inUse === false) break;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    expect(JSON.parse(info!.stdout)).toMatchObject({ inUse: false, inodes: 2 });

    const mountRo = await grovefs("mount", "-o", "ro", image, mnt);
    expect(mountRo.code, mountRo.stderr).toBe(0);
    mounted.add(mnt);
    const read = await sh(`cat '${mnt}/f'`);
    expect(read.stdout).toBe("kept\n");
    const write = await sh(`echo no > '${mnt}/g'`);
    expect(write.code).not.toBe(0);
    expect(write.stderr).toMatch(/Read-only file system/);
    expect((await grovefs("umount", mnt)).code).toBe(0);
    mounted.delete(mnt);
  });
});
