/**
 * grovefs restore and mount -o rescue's open (issue 12's rescue): every
 * readable file copied out of an image, intact or damaged, with what could
 * not be read named by path. The image is built through the library; restore
 * runs as the CLI in a child process, and its output is compared with the
 * library's view of the undamaged image, file by file.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { dir as tmpDir, type DirectoryResult } from "tmp-promise";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GroveFs, checkFilesystem, type Stat } from "../fs/index.js";
import { FileDevice, blockSizeBytes } from "../kvstore/index.js";
import { decodeNode } from "../kvstore/node.js";
import { runGrovefs, type RunResult } from "./cli_helpers.js";
import { e2eSkipReason, grove, mountsAt } from "./e2e_helpers.js";
import { O_RDWR, expectBytes, pattern, readFile, root, writeFile } from "./fs_helpers.js";
import { reachableNodes, type NodeInfo } from "./helpers.js";

const imageBytes = 32 * 1024 * 1024;
const treeIdRoot = 1;
const treeIdFreeByLba = 2;
const treeIdSubvolumes = 5;
const treeIdDefault = 256;
const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFIFO = 0o010000;
const manyFiles = 400;
const oddName = Buffer.from([0x6f, 0x64, 0x64, 0xff, 0xfe]);
const mtimeNs = 1_234_567_890_123_456_000n;

interface Base {
  image: string;
  nodes: NodeInfo[];
  /** Path of each regular file → its bytes, in the default subvolume. */
  files: Map<string, Buffer>;
  /** A data extent of /lonely alone: its first block. */
  lonelyLba: number;
  ino: Record<string, number>;
}

let tmp: DirectoryResult;
let base: Base;
let copies = 0;

function buildBase(image: string): Base {
  let device = FileDevice.createImage(image, imageBytes);
  // Single metadata: restore is for damage no second copy heals.
  GroveFs.format(device, { label: "restore", metadata: "single" });
  device = FileDevice.open(image);
  const g = GroveFs.open(device);
  const files = new Map<string, Buffer>();
  const put = (p: string, data: Buffer): void => {
    writeFile(g, p, data);
    files.set(p, data);
  };
  g.mkdir("/dir", 0o750, root);
  g.mkdir("/dir/sub", 0o755, root);
  g.mkdir("/many", 0o755, root);
  for (let i = 0; i < manyFiles; i++) put(`/many/f${String(i).padStart(3, "0")}`, pattern(i % 7 === 0 ? 6000 : 50 + i, i));
  put("/big", pattern(300 * blockSizeBytes + 99, 1));
  put("/lonely", pattern(3 * blockSizeBytes, 3));
  put("/dir/small", pattern(100, 2));
  put("/dir/sub/deep", pattern(10_000, 4));
  g.link("/dir/small", "/dir/sub/small-link");
  g.symlink("../small", "/dir/sub/sym", root);
  g.mknod("/dir/fifo", S_IFIFO | 0o640, 0, root);
  // A sparse file: data at 8 MiB in a 16 MiB file.
  const fh = g.create("/sparse", 0o644, O_RDWR, root);
  g.write(fh, pattern(5000, 5), 5000, 8 * 1024 * 1024);
  g.ftruncate(fh, 16 * 1024 * 1024);
  g.release(fh);
  const sparse = Buffer.alloc(16 * 1024 * 1024);
  pattern(5000, 5).copy(sparse, 8 * 1024 * 1024);
  files.set("/sparse", sparse);
  // A name that is not UTF-8.
  const odd = g.createAt(g.inoOf("/dir"), oddName, 0o600, O_RDWR, root);
  g.write(odd.fh, pattern(77, 6), 77, 0);
  g.release(odd.fh);
  g.setxattr("/dir/small", "user.note", Buffer.from("kept in the image"), 0);
  g.chmod("/big", 0o4755);
  g.chown("/dir/sub/deep", 1000, 1001);
  g.utimens("/dir/sub/deep", mtimeNs, mtimeNs);
  g.utimens("/dir/sub", mtimeNs, mtimeNs);
  const ino = { lonely: g.inoOf("/lonely"), many: g.inoOf("/many"), small: g.inoOf("/dir/small") };
  g.createSubvolume("snap", { readOnly: true });
  // After the snapshot: the live subvolume differs from it.
  writeFile(g, "/dir/small", pattern(100, 99));
  files.set("/dir/small", pattern(100, 99));
  g.unlink("/lonely");
  put("/lonely", pattern(3 * blockSizeBytes, 3));
  ino.lonely = g.inoOf("/lonely");
  g.close();

  device = FileDevice.open(image, { readOnly: true });
  const report = checkFilesystem(device, { verifyData: true });
  expect(report.problems).toEqual([]);
  const forest = report.space.forest;
  const nodes = reachableNodes(device, forest);
  device.close();
  // /lonely was written after the snapshot, so its extent is its own.
  return { image, nodes, files, lonelyLba: findLonely(image, files.get("/lonely")!), ino };
}

/** The LBA of /lonely's first block, found by its contents (its bytes are unique in the image). */
function findLonely(image: string, data: Buffer): number {
  const fd = fs.openSync(image, "r");
  try {
    const block = Buffer.alloc(blockSizeBytes);
    for (let lba = 0; lba < imageBytes / blockSizeBytes; lba++) {
      fs.readSync(fd, block, 0, blockSizeBytes, lba * blockSizeBytes);
      if (block.equals(data.subarray(0, blockSizeBytes))) return lba;
    }
  } finally {
    fs.closeSync(fd);
  }
  throw new Error("the data of /lonely is not in the image");
}

function copyOfBase(): string {
  const image = path.join(tmp.path, `case-${copies++}.img`);
  fs.copyFileSync(base.image, image);
  return image;
}

function overwriteBlock(image: string, lba: number, fill = 0x5a): void {
  const fd = fs.openSync(image, "r+");
  try {
    fs.writeSync(fd, Buffer.alloc(blockSizeBytes, fill), 0, blockSizeBytes, lba * blockSizeBytes);
  } finally {
    fs.closeSync(fd);
  }
}

function outDir(): string {
  return path.join(tmp.path, `out-${copies++}`);
}

async function restore(image: string, out: string, ...args: string[]): Promise<RunResult & { summary: Record<string, unknown> }> {
  const r = await runGrovefs(["restore", image, out, "--json", ...args]);
  expect(r.stderr, "restore --json writes nothing else").toBe("");
  expect(r.code === 0 || r.code === 4, `${r.code}: ${r.stdout}`).toBe(true);
  return { ...r, summary: JSON.parse(r.stdout) as Record<string, unknown> };
}

/** Every regular file of `files` under `out` has its bytes, except those in `except`. */
function expectFiles(out: string, files: Map<string, Buffer>, except: Set<string> = new Set()): void {
  for (const [p, data] of files) {
    if (except.has(p)) continue;
    expectBytes(fs.readFileSync(path.join(out, p)), data, p);
  }
}

beforeAll(async () => {
  tmp = await tmpDir({ unsafeCleanup: true });
  base = buildBase(path.join(tmp.path, "base.img"));
}, 120_000);

afterAll(async () => {
  await tmp?.cleanup();
});

describe("grovefs restore", () => {
  it("copies an intact image exactly: bytes, holes, names as bytes, hard links, symlinks, fifos, modes, owners, times", async () => {
    const out = outDir();
    const r = await restore(base.image, out);
    expect(r.code).toBe(0);
    expect(r.summary.damaged).toEqual([]);
    expect(r.summary).toMatchObject({ hardLinks: 1, symlinks: 1, special: 1, xattrsNotRestored: 1 });
    expect(r.summary.files).toBe(base.files.size + 1);
    expectFiles(out, base.files);
    // The same image through the library: type, mode, size and (as root) owner of every path.
    const device = FileDevice.open(base.image, { readOnly: true });
    const g = GroveFs.open(device, { readOnly: true });
    try {
      const walk = (dir: string): void => {
        for (const entry of g.readdir(dir)) {
          if (entry.name === "." || entry.name === "..") continue;
          const p = dir === "/" ? `/${entry.name}` : `${dir}/${entry.name}`;
          if (entry.name.includes("\ufffd")) continue; // the name that is not UTF-8: checked below by its bytes
          const want: Stat = g.getattr(p);
          const got = fs.lstatSync(path.join(out, p), { bigint: true });
          expect(Number(got.mode) & S_IFMT, p).toBe(want.mode & S_IFMT);
          if ((want.mode & S_IFMT) !== S_IFLNK) expect(Number(got.mode) & 0o7777, p).toBe(want.mode & 0o7777);
          if ((want.mode & S_IFMT) === S_IFREG) expect(Number(got.size), p).toBe(want.size);
          if (process.getuid?.() === 0) expect([Number(got.uid), Number(got.gid)], p).toEqual([want.uid, want.gid]);
          expect(got.mtimeNs / 1000n, p).toBe(want.mtimeNs / 1000n);
          if ((want.mode & S_IFMT) === S_IFDIR) walk(p);
        }
      };
      walk("/");
    } finally {
      g.close();
      device.close();
    }
    expect(fs.readlinkSync(path.join(out, "dir/sub/sym"))).toBe("../small");
    expect(fs.statSync(path.join(out, "dir/small")).ino).toBe(fs.statSync(path.join(out, "dir/sub/small-link")).ino);
    expect(fs.statSync(path.join(out, "dir/small")).nlink).toBe(2);
    expect(fs.lstatSync(path.join(out, "dir/fifo")).isFIFO()).toBe(true);
    expect(fs.statSync(path.join(out, "sparse")).blocks * 512).toBeLessThan(64 * 1024);
    expectBytes(fs.readFileSync(Buffer.concat([Buffer.from(`${out}/dir/`), oddName])), pattern(77, 6), "the name that is not UTF-8");
  }, 120_000);

  it("restores a snapshot (--subvol) or one subtree (--path), leaves what exists unless --overwrite", async () => {
    const out = outDir();
    let r = await restore(base.image, out, "--subvol", "snap");
    expect(r.code).toBe(0);
    expectBytes(fs.readFileSync(path.join(out, "dir/small")), pattern(100, 2), "the snapshot's /dir/small");
    r = await restore(base.image, out);
    expect(r.code).toBe(0);
    expect(r.summary.existing as number).toBeGreaterThan(base.files.size);
    expectBytes(fs.readFileSync(path.join(out, "dir/small")), pattern(100, 2), "left as it was");
    r = await restore(base.image, out, "--overwrite");
    expect(r.code).toBe(0);
    expectBytes(fs.readFileSync(path.join(out, "dir/small")), pattern(100, 99), "overwritten from the live subvolume");

    const sub = outDir();
    r = await restore(base.image, sub, "--path", "/dir/sub");
    expect(r.code).toBe(0);
    expect(fs.readdirSync(sub).sort()).toEqual(["deep", "small-link", "sym"]);
    expectBytes(fs.readFileSync(path.join(sub, "deep")), pattern(10_000, 4), "deep");

    const dry = outDir();
    r = await restore(base.image, dry, "--dry-run");
    expect(r.code).toBe(0);
    expect(r.summary.files).toBe(base.files.size + 1);
    expect(fs.existsSync(dry)).toBe(false);
  }, 120_000);

  it("a damaged data block: the file is restored with zeros there, the range named, everything else intact (exit 4)", async () => {
    const image = copyOfBase();
    overwriteBlock(image, base.lonelyLba + 1);
    const out = outDir();
    const r = await restore(image, out);
    expect(r.code).toBe(4);
    expect(r.summary.damaged).toEqual([{ path: "/lonely", problem: expect.stringContaining(`bytes ${blockSizeBytes}-${2 * blockSizeBytes - 1}`) }]);
    const want = Buffer.from(base.files.get("/lonely")!);
    want.fill(0, blockSizeBytes, 2 * blockSizeBytes);
    expectBytes(fs.readFileSync(path.join(out, "lonely")), want, "/lonely with its damaged block as zeros");
    expectFiles(out, base.files, new Set(["/lonely"]));
    // Without --json the damage is one line per path on stderr, and the summary says so.
    const plain = await runGrovefs(["restore", image, outDir()]);
    expect(plain.code).toBe(4);
    expect(plain.stderr).toMatch(/^grovefs restore: \/lonely: 4096 bytes cannot be read/m);
    expect(plain.stdout).toMatch(/1 files or directories could not be restored in full/);
  }, 120_000);

  it("a destroyed leaf of the inode tree: its files are named and skipped, every other file is restored", async () => {
    const image = copyOfBase();
    // A leaf of the default subvolume's inode tree holding only inodes of /many (not the root's).
    const device = FileDevice.open(image, { readOnly: true });
    const block = Buffer.alloc(blockSizeBytes);
    let victim: { lba: number; inos: number[] } | null = null;
    for (const n of base.nodes.filter((x) => x.owner === treeIdDefault && x.level === 0)) {
      device.read(n.lba, block);
      const node = decodeNode(Buffer.from(block), { lba: n.lba, level: 0, owner: treeIdDefault, deviceBlocks: device.blockCount });
      const inos = new Set<number>();
      for (let i = 0; i < node.count; i++) inos.add(Number(node.keyAt(i).readBigUInt64BE(0)));
      if (Math.min(...inos) > base.ino.many + 1 && inos.size >= 3) {
        victim = { lba: n.lba, inos: [...inos] };
        break;
      }
    }
    device.close();
    expect(victim, "a leaf of /many's inodes").not.toBeNull();
    overwriteBlock(image, victim!.lba);
    const out = outDir();
    const r = await restore(image, out);
    expect(r.code).toBe(4);
    const damaged = r.summary.damaged as Array<{ path: string; problem: string }>;
    expect(damaged.length).toBe(victim!.inos.length);
    for (const d of damaged) {
      expect(d.path).toMatch(/^\/many\/f\d{3}$/);
      expect(d.problem).toMatch(/cannot be read/);
    }
    const lost = new Set(damaged.map((d) => d.path));
    expectFiles(out, base.files, lost);
    for (const p of lost) expect(fs.existsSync(path.join(out, p))).toBe(false);
  }, 120_000);

  it("damaged allocator trees and subvolume table, and a destroyed newest root: restore still gets every file", async () => {
    const image = copyOfBase();
    for (const n of base.nodes.filter((x) => x.owner === treeIdFreeByLba || x.owner === treeIdSubvolumes)) overwriteBlock(image, n.lba);
    const mount = await runGrovefs(["fsck", "-n", image]);
    expect(mount.code).toBe(4);
    const out = outDir();
    const r = await restore(image, out);
    expect(r.code).toBe(0);
    expect((r.summary.notes as string[]).join("\n")).toMatch(/free-space tree is unreadable[\s\S]*subvolume table is unreadable/);
    expectFiles(out, base.files);

    // The newest generation's root-tree root destroyed: the older generation (the slot before) is used.
    const second = copyOfBase();
    const rootNodes = base.nodes.filter((x) => x.owner === treeIdRoot);
    const newestRoot = rootNodes.reduce((a, b) => (b.level > a.level ? b : a));
    overwriteBlock(second, newestRoot.lba);
    const older = outDir();
    const r2 = await restore(second, older);
    expect((r2.summary.notes as string[]).join("\n")).toMatch(/using the older generation/);
    expect(r2.summary.files as number).toBeGreaterThan(0);
  }, 120_000);

  it("refuses what it cannot use with one line: a missing image, a file as DIR, a --path that is not there", async () => {
    const missing = await runGrovefs(["restore", path.join(tmp.path, "nope.img"), outDir()]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/^grovefs: .*no such image — /);
    const file = path.join(tmp.path, "a-file");
    fs.writeFileSync(file, "x");
    const notDir = await runGrovefs(["restore", base.image, file]);
    expect(notDir.code).toBe(1);
    expect(notDir.stderr).toMatch(/is not a directory — /);
    const noPath = await runGrovefs(["restore", base.image, outDir(), "--path", "/no/such"]);
    expect(noPath.code).toBe(1);
    expect(noPath.stderr).toMatch(/no \/no in the image — /);
    for (const r of [missing, notDir, noPath]) expect(r.stderr).not.toMatch(/^\s+at /m);
  }, 60_000);
});

describe("GroveFs rescue open", () => {
  it("serves a volume whose free-space tree is destroyed, read-only, which a normal open refuses", () => {
    const image = copyOfBase();
    for (const n of base.nodes.filter((x) => x.owner === treeIdFreeByLba)) overwriteBlock(image, n.lba);
    const device = FileDevice.open(image, { readOnly: true });
    try {
      expect(() => GroveFs.open(device, { readOnly: true })).toThrow(/corrupt node|EIO|checksum/i);
      const g = GroveFs.open(device, { rescue: true });
      try {
        expect(g.readOnly).toBe(true);
        expect(g.rescueNotes?.join("\n")).toMatch(/free-space tree is unreadable/);
        expectBytes(readFile(g, "/big"), base.files.get("/big")!, "/big");
        expect(() => writeFile(g, "/new", Buffer.from("x"))).toThrow(/read-only/);
      } finally {
        g.close();
      }
    } finally {
      device.close();
    }
  });
});

describe.skipIf(e2eSkipReason !== null)("mount -o rescue (a real mount)", () => {
  it("mounts read-only what a normal mount refuses; a damaged file answers EIO, every other file reads back", async () => {
    const image = copyOfBase();
    for (const n of base.nodes.filter((x) => x.owner === treeIdFreeByLba)) overwriteBlock(image, n.lba);
    overwriteBlock(image, base.lonelyLba);
    const mnt = path.join(tmp.path, `mnt-${copies++}`);
    fs.mkdirSync(mnt);
    const refused = await grove(["mount", image, mnt]);
    expect(refused.code).toBe(32);
    expect(refused.stderr).toMatch(/restore|rescue/);
    const mixed = await grove(["mount", "-o", "rescue,rw", image, mnt]);
    expect(mixed.code).toBe(32);
    expect(mixed.stderr).toMatch(/cannot be combined with 'rw'/);
    const mounted = await grove(["mount", "-o", "rescue", image, mnt]);
    expect(mounted.code, mounted.stderr).toBe(0);
    try {
      expect((await mountsAt(mnt))[0]?.options).toMatch(/^ro\b/);
      for (const [p, data] of base.files) {
        if (p === "/lonely") continue;
        expectBytes(fs.readFileSync(path.join(mnt, p)), data, p);
      }
      expect(() => fs.readFileSync(path.join(mnt, "lonely"))).toThrow(/EIO/);
      expect(() => fs.writeFileSync(path.join(mnt, "new"), "x")).toThrow(/EROFS/);
    } finally {
      const r = await grove(["umount", mnt]);
      expect(r.code, r.stderr).toBe(0);
    }
  }, 120_000);
});
