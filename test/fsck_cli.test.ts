/**
 * `grovefs fsck`, run as a child process (`node bin/grovefs.mjs`): exit codes
 * (e2fsck's: 0 clean, 1 corrected, 4 left uncorrected, 8 operational error),
 * the summary line, the JSON report, one-line errors, refusing an image in use
 * (locked by another process, or mounted: the mount test needs root and
 * /dev/fuse), and the progress bar on stderr. The damage kinds themselves are
 * in corruption_matrix.test.ts.
 */
import type { ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { dir as tmpDir, type DirectoryResult } from "tmp-promise";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { formatFsckText, type FsckResult } from "../cli/fsck.js";
import { GroveFs } from "../fs/index.js";
import { fsEdges } from "../fs/edges.js";
import { decodeInode, encodeInode, inodeKey } from "../fs/format.js";
import { FileDevice, blockSizeBytes } from "../kvstore/index.js";
import { openVolume } from "../snapshot/index.js";
import { pattern, root, writeFile } from "./fs_helpers.js";
import { expectOneLineError, holdImage as holdImageIn, run, runGrovefs, type RunResult } from "./cli_helpers.js";

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

function grovefs(...args: string[]): Promise<RunResult> {
  return runGrovefs(args, { GROVEFS_RUN_DIR: path.join(tmp.path, "run") });
}

/** An operational error: exit 8, one line on stderr in the CLI's form, no stack trace. */
function expectOperationalError(r: RunResult, pattern: RegExp): void {
  expectOneLineError(r, pattern, 8);
}

/** A formatted image with a few files and a snapshot. */
function makeImage(name = "vol.img"): string {
  const image = path.join(tmp.path, name);
  let device = FileDevice.createImage(image, 16 * 1024 * 1024);
  GroveFs.format(device, { label: "fsck" });
  device = FileDevice.open(image);
  const g = GroveFs.open(device);
  g.mkdir("/dir", 0o755, root);
  writeFile(g, "/dir/a", pattern(20_000, 1));
  writeFile(g, "/b", pattern(100, 2));
  g.createSubvolume("snap", { readOnly: true });
  g.close();
  return image;
}

/** Raises the link count of /b: a problem the repair fixes. */
function damageNlink(image: string): void {
  const g = GroveFs.open(FileDevice.open(image, { readOnly: true }), { readOnly: true });
  const ino = g.inoOf("/b");
  g.close();
  const v = openVolume(FileDevice.open(image), { edges: fsEdges });
  const tree = v.store.openTree(256);
  const inode = decodeInode(ino, tree.get(inodeKey(ino))!);
  inode.nlink += 1;
  tree.put(inodeKey(ino), encodeInode(inode));
  v.store.commit({ force: true });
  v.store.close();
}

/** Damages both superblock slots past their magic: still a grovefs image, but no committed root to start from. */
/** Damages every superblock copy: the slots (LBA 0, 1) and their twins (LBA 2, 3); a 16 MiB image has no backup. */
function damageBothSuperblocks(image: string): void {
  const fd = fs.openSync(image, "r+");
  for (const slot of [0, 1, 2, 3]) fs.writeSync(fd, Buffer.from([0xff, 0xee]), 0, 2, slot * blockSizeBytes + 100);
  fs.closeSync(fd);
}

/** Another process holding the image's lock (shared for a read-only open) until killed. */
async function holdImage(image: string, readOnly: boolean): Promise<ChildProcess> {
  const child = await holdImageIn(image, tmp.path, readOnly);
  holder = child;
  return child;
}

describe("grovefs fsck", () => {
  it("says clean with exit 0 and an e2fsck-like summary; -y on a clean image changes nothing", async () => {
    const image = makeImage();
    const r = await grovefs("fsck", image);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toBe("");
    expect(r.stdout).toMatch(new RegExp(`^${image}: clean, \\d+ inodes, 2 subvolumes, \\d+/4096 blocks\\n$`));
    const before = fs.readFileSync(image);
    const y = await grovefs("fsck", "-y", image);
    expect(y.code, y.stderr).toBe(0);
    expect(y.stdout).toBe(r.stdout);
    expect(fs.readFileSync(image).equals(before)).toBe(true);
  });

  it("prints one JSON object with --json", async () => {
    const image = makeImage();
    const r = await grovefs("fsck", "--json", image);
    expect(r.code, r.stderr).toBe(0);
    const report = JSON.parse(r.stdout) as FsckResult;
    expect(report).toMatchObject({ image, mode: "check", exitCode: 0, problems: [], repaired: [], remaining: [] });
    expect(report.counts).toMatchObject({ subvolumes: 2, totalBlocks: 4096 });
    expect(report.counts!.inodes).toBeGreaterThanOrEqual(6);
    expect(report.counts!.usedBlocks).toBeGreaterThan(0);
    expect(report.counts!.dataBlocks).toBeGreaterThan(0);
  });

  it("reports damage with exit 4 under -n, and by default (no -n, no -y), without changing the image", async () => {
    const image = makeImage();
    damageNlink(image);
    const before = fs.readFileSync(image);
    for (const args of [["-n"], ["--readonly"], []]) {
      const r = await grovefs("fsck", ...args, image);
      expect(r.code, r.stdout + r.stderr).toBe(4);
      expect(r.stderr).toBe("");
      const lines = r.stdout.trimEnd().split("\n");
      expect(lines[0]).toMatch(/^inode \d+: nlink 2, but 1 entries name it$/);
      expect(lines[lines.length - 1]).toMatch(new RegExp(`^${image}: 1 problem found \\(checked read-only; grovefs fsck -y .+\\)$`));
    }
    const json = JSON.parse((await grovefs("fsck", "-n", "--json", image)).stdout) as FsckResult;
    expect(json).toMatchObject({ mode: "check", exitCode: 4, repaired: [] });
    expect(json.problems).toHaveLength(1);
    expect(json.remaining).toEqual(json.problems);
    expect(fs.readFileSync(image).equals(before)).toBe(true);
  });

  it("repairs with -y: exit 1, what it found and did, then a clean check", async () => {
    const image = makeImage();
    damageNlink(image);
    const r = await grovefs("fsck", "-y", image);
    expect(r.code, r.stdout + r.stderr).toBe(1);
    expect(r.stdout).toMatch(/^problem: inode \d+: nlink 2, but 1 entries name it$/m);
    expect(r.stdout).toMatch(/^repaired: .*nlink 2 set to 1$/m);
    expect(r.stdout).toMatch(new RegExp(`^${image}: 1 problem found and repaired; now clean, \\d+ inodes, 2 subvolumes, \\d+/4096 blocks$`, "m"));
    expect((await grovefs("fsck", "-n", image)).code).toBe(0);
  });

  it("refuses a missing image, a directory, a non-grovefs file and a tiny file with exit 8", async () => {
    expectOperationalError(await grovefs("fsck", path.join(tmp.path, "missing.img")), /missing\.img: no such image/);
    expectOperationalError(await grovefs("fsck", "-y", path.join(tmp.path, "missing.img")), /no such image/);
    expectOperationalError(await grovefs("fsck", tmp.path), /is not an image file or block device/);
    const data = path.join(tmp.path, "data.img");
    fs.writeFileSync(data, pattern(2 * 1024 * 1024, 3));
    expectOperationalError(await grovefs("fsck", data), /is not a grovefs image \(it holds data\)/);
    const zeros = path.join(tmp.path, "zeros.img");
    fs.writeFileSync(zeros, Buffer.alloc(2 * 1024 * 1024));
    expectOperationalError(await grovefs("fsck", "-y", zeros), /is not a grovefs image/);
    const tiny = path.join(tmp.path, "tiny.img");
    fs.writeFileSync(tiny, "hello");
    expectOperationalError(await grovefs("fsck", tiny), /too small/);
    // --json still prints one object, with the error and exit code 8.
    const json = await grovefs("fsck", "--json", data);
    expect(json.code).toBe(8);
    expect(JSON.parse(json.stdout)).toMatchObject({ exitCode: 8, error: expect.stringMatching(/not a grovefs image/) });
  });

  it("treats a grovefs image whose superblock copies are all damaged as a finding: exit 4, even with -y", async () => {
    const image = makeImage();
    damageBothSuperblocks(image);
    const n = await grovefs("fsck", "-n", "--json", image);
    expect(n.code, n.stderr).toBe(4);
    const report = JSON.parse(n.stdout) as FsckResult;
    expect(report.problems.join("\n")).toMatch(/every superblock copy is damaged/);
    expect(report.counts).toBeNull();
    const before = fs.readFileSync(image);
    const y = await grovefs("fsck", "-y", image);
    expect(y.code, y.stderr).toBe(4);
    expect(y.stdout).toMatch(/left unrepaired$/m);
    expect(fs.readFileSync(image).equals(before)).toBe(true);
  });

  it("repairs a damaged slot of the newest generation from its twin; notes a stale twin, which a read-write open rewrites", async () => {
    const image = makeImage();
    const generations = () => {
      const fd = fs.openSync(image, "r");
      const gens = [0, 1].map((slot) => {
        const buf = Buffer.alloc(8);
        fs.readSync(fd, buf, 0, 8, slot * blockSizeBytes + 24);
        return buf.readBigUInt64LE(0);
      });
      fs.closeSync(fd);
      return gens;
    };
    const damage = (lba: number) => {
      const fd = fs.openSync(image, "r+");
      fs.writeSync(fd, Buffer.from([0xff, 0xee]), 0, 2, lba * blockSizeBytes + 200);
      fs.closeSync(fd);
    };
    const [g0, g1] = generations();
    const newest = g0! > g1! ? 0 : 1;
    damage(newest);
    const n = await grovefs("fsck", "-n", image);
    expect(n.code, n.stderr).toBe(4);
    expect(n.stdout).toMatch(new RegExp(`^superblock slot at LBA ${newest} is unreadable \\(checksum mismatch\\), not generation \\d+: damaged; generation \\d+ was read from the superblock twin at LBA ${2 + newest}$`, "m"));
    const y = await grovefs("fsck", "-y", image);
    expect(y.code, y.stdout + y.stderr).toBe(1);
    expect(y.stdout).toMatch(new RegExp(`^repaired: superblock slot at LBA ${newest}: rewritten with generation \\d+ from LBA ${2 + newest}$`, "m"));
    expect((await grovefs("fsck", "-n", image)).code).toBe(0);

    // A twin that does not hold the newest generation beside a good slot is what an interrupted commit leaves: a note.
    const [h0, h1] = generations();
    const twin = 2 + (h0! > h1! ? 0 : 1);
    damage(twin);
    const noted = await grovefs("fsck", "-n", image);
    expect(noted.code, noted.stderr).toBe(0);
    expect(noted.stdout).toMatch(new RegExp(`^note: superblock twin at LBA ${twin} is unreadable \\(checksum mismatch\\)`, "m"));
    // Any read-write open rewrites it: a snapshot is one.
    expect((await grovefs("snapshot", "create", image, "s")).code).toBe(0);
    const again = await grovefs("fsck", "-n", image);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).not.toMatch(/note:/);
  });

  it("exits 8 on bad usage: -n with -y, an unknown option, no image", async () => {
    const image = makeImage();
    expectOperationalError(await grovefs("fsck", "-n", "-y", image), /-n \(--readonly\) and -y \(--repair\) contradict each other/);
    expectOperationalError(await grovefs("fsck", "--readonly", "--repair", "--json", image), /contradict/);
    expectOperationalError(await grovefs("fsck", "--bogus", image), /unknown option '--bogus'/);
    expectOperationalError(await grovefs("fsck"), /missing required argument 'image'/);
    const help = await grovefs("fsck", "--help");
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/--readonly/);
  });

  it("refuses -y on an image another process holds, and -n unless that hold is shared (read-only)", async () => {
    const image = makeImage();
    damageNlink(image);
    const exclusive = await holdImage(image, false);
    expectOperationalError(await grovefs("fsck", "-y", image), /in use by another grovefs process: fsck does not repair an image in use/);
    expectOperationalError(await grovefs("fsck", "-n", image), /in use by another grovefs process: fsck cannot check an image in use/);
    const exited = new Promise((resolve) => exclusive.once("exit", resolve));
    exclusive.kill("SIGKILL");
    await exited;

    await holdImage(image, true);
    expectOperationalError(await grovefs("fsck", "-y", image), /does not repair an image in use/);
    const n = await grovefs("fsck", "-n", image);
    expect(n.code, n.stderr).toBe(4);
  });

  it("draws a progress bar on stderr with --progress, cleared at the end, and stdout is unchanged", async () => {
    const image = makeImage();
    const plain = await grovefs("fsck", image);
    const withBar = await grovefs("fsck", "--progress", image);
    expect(withBar.code).toBe(0);
    expect(withBar.stdout).toBe(plain.stdout);
    expect(withBar.stderr).toMatch(/^\rfsck: checking \[[#-]+\] \d+%/);
    // Every redraw starts with a carriage return, and the last one blanks the line.
    const frames = withBar.stderr.split("\r").slice(1);
    expect(frames[frames.length - 1]).toBe("");
    expect(frames[frames.length - 2]).toMatch(/^ +$/);
    expect(withBar.stderr).not.toMatch(/\n/);

    const json = await grovefs("fsck", "--progress", "--json", image);
    expect(json.code).toBe(0);
    expect(JSON.parse(json.stdout)).toMatchObject({ exitCode: 0 });

    damageNlink(image);
    const repaired = await grovefs("fsck", "-y", "--progress", image);
    expect(repaired.code).toBe(1);
    expect(repaired.stderr).toMatch(/fsck: repairing/);
    expect(repaired.stderr).toMatch(/fsck: checking again/);
    expect(repaired.stdout).not.toMatch(/\r/);
  });

  it("formats its report as one line a problem and an e2fsck-like summary", () => {
    const base: FsckResult = { image: "x.img", mode: "check", exitCode: 4, problems: ["p1", "p2"], notes: [], repaired: [], remaining: ["p1", "p2"], counts: null };
    expect(formatFsckText(base)).toBe("p1\np2\nx.img: 2 problems found (checked read-only; grovefs fsck -y x.img repairs what can be repaired safely)\n");
    const repair: FsckResult = { ...base, mode: "repair", repaired: ["fixed p1"], remaining: ["p2"] };
    expect(formatFsckText(repair)).toBe("problem: p1\nproblem: p2\nrepaired: fixed p1\nremaining: p2\nx.img: 2 problems found, 1 problem left unrepaired\n");
    const clean: FsckResult = {
      ...base,
      exitCode: 0,
      problems: [],
      remaining: [],
      counts: { inodes: 1, directories: 1, subvolumes: 1, dataBlocks: 0, usedBlocks: 10, totalBlocks: 256, generation: 2 },
    };
    expect(formatFsckText(clean)).toBe("x.img: clean, 1 inode, 1 subvolume, 10/256 blocks\n");
  });
});

// ---- through the kernel ---------------------------------------------------------

// CI runs as root with /dev/fuse: there the mount test must run.
const canMount = process.env.CI === "true" || (process.getuid?.() === 0 && fs.existsSync("/dev/fuse"));

describe.skipIf(!canMount)("grovefs fsck on a mounted image", () => {
  it("refuses -y on a mounted image (read-write or read-only) with exit 8; -n runs beside a read-only mount only", async () => {
    const image = makeImage();
    const mnt = path.join(tmp.path, "mnt");
    fs.mkdirSync(mnt);
    try {
      for (const options of [[], ["-o", "ro"]]) {
        const mount = await grovefs("mount", ...options, image, mnt);
        expect(mount.code, mount.stderr).toBe(0);
        // The mount table names the image: the refusal says where it is mounted.
        expectOperationalError(await grovefs("fsck", "-y", image), new RegExp(`is mounted at ${mnt}: fsck does not repair a mounted image`));
        const n = await grovefs("fsck", "-n", image);
        if (options.length === 0) expectOperationalError(n, new RegExp(`is mounted at ${mnt}: fsck cannot check an image in use`));
        else expect(n.code, n.stderr).toBe(0);
        const umount = await grovefs("umount", mnt);
        expect(umount.code, umount.stderr).toBe(0);
      }
      expect((await grovefs("fsck", "-y", image)).code).toBe(0);
    } finally {
      await run("umount", ["-l", mnt]);
    }
  });
});
