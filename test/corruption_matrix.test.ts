/**
 * The corruption matrix (issue 4): every kind of damage fsck claims to find,
 * injected into a fresh copy of one image, then `grovefs fsck` run as a child
 * process. `-n` must report it with exit 4; where a repair is claimed, `-y`
 * must repair it with exit 1 and a second fsck must be clean (0); where none
 * is, `-y` must exit 4 and leave no more problems than it found. A damaged
 * node of a filesystem tree (an inode tree, a directory's or a file's map)
 * is salvaged: -y exits 1, and every file left reads back as it was, at its
 * old path or in /lost+found.
 *
 * The image holds files (inline, one-extent and multi-extent), hard links, a
 * symlink, directories with inline entries and one spilled into a tree, a
 * snapshot and a writable clone written to after it was taken, so that every
 * kind of node exists and the refcount tree holds entries.
 *
 * Damaged nodes are found by reading the image: the blocks the checker found
 * reachable whose header (kvstore/node.ts) carries the node magic, classified
 * by owner and level. Logical damage (counts, links, orphans, free space) is
 * made through the library and committed as a normal generation, so that the
 * intended damage is the only one.
 */
import { execFile } from "node:child_process";
import { constants as C } from "node:fs";
import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { dir as tmpDir, type DirectoryResult } from "tmp-promise";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GroveFs, checkFilesystem } from "../fs/index.js";
import { fsEdges } from "../fs/edges.js";
import { decodeInode, decodeItems, encodeDirent, encodeInode, encodeItems, inodeKey, orphanKey, PayloadKind } from "../fs/format.js";
import { FileDevice, blockSizeBytes } from "../kvstore/index.js";
import { liveKey, openVolume, type Volume } from "../snapshot/index.js";
import { O_RDWR, expectBytes, fileInventory, pattern, readFile, root, writeFile, type FileInventory } from "./fs_helpers.js";
import { reachableNodes, type NodeInfo } from "./helpers.js";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const bin = path.join(repoRoot, "bin", "grovefs.mjs");
const commandTimeoutMs = 120_000;
const imageBytes = 32 * 1024 * 1024;

// Node header fields (the layout table at the top of kvstore/node.ts).
/** The last byte of a node: inside its first item (items fill the heap from the end). */
const nodeFlipOffset = blockSizeBytes - 1;

const treeIdRoot = 1;
const treeIdFreeByLba = 2;
const treeIdFreeByLength = 3;
const treeIdRefcounts = 4;
const treeIdSubvolumes = 5;
const treeIdDefault = 256;
const perInodeOwnerBase = 2 ** 32;

interface FsckJson {
  image: string;
  mode: string;
  exitCode: number;
  problems: string[];
  repaired: string[];
  remaining: string[];
  counts: { inodes: number; subvolumes: number; usedBlocks: number; totalBlocks: number } | null;
}

/** What the base image holds, for the damage to aim at. */
interface Base {
  image: string;
  nodes: NodeInfo[];
  /** First blocks of reachable data extents. */
  dataExtents: number[];
  /** A data extent only one record references. */
  unshared: { lba: number; blocks: number };
  /** A node that several parents reference (its count is in the refcount tree). */
  sharedNode: number;
  ino: Record<"dir" | "sub" | "big" | "small" | "lonely" | "deleted", number>;
  cloneId: number;
}

let tmp: DirectoryResult;
let base: Base;
let baseFiles: FileInventory;
let copies = 0;

function grovefs(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [bin, ...args],
      { timeout: commandTimeoutMs, killSignal: "SIGKILL", encoding: "utf8", maxBuffer: 64 * 1024 * 1024 },
      (error, stdout, stderr) => {
        const code = error === null ? 0 : typeof error.code === "number" ? error.code : -1;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

async function fsck(image: string, mode: "-n" | "-y"): Promise<FsckJson> {
  const r = await grovefs("fsck", mode, "--json", image);
  expect(r.stderr, `fsck ${mode} wrote to stderr`).toBe("");
  const report = JSON.parse(r.stdout) as FsckJson;
  expect(report.exitCode).toBe(r.code);
  return report;
}

// ---- the base image -------------------------------------------------------------

function buildBase(image: string): Base {
  let device = FileDevice.createImage(image, imageBytes);
  // Single metadata: the matrix is damage with no second copy to heal from (dup_metadata.test.ts has the dup side).
  GroveFs.format(device, { label: "matrix", metadata: "single" });
  device = FileDevice.open(image);
  let g = GroveFs.open(device);
  g.mkdir("/dir", 0o755, root);
  g.mkdir("/dir/sub", 0o755, root);
  // Enough entries to spill /dir's entries into a tree of its own.
  for (let i = 0; i < 150; i++) writeFile(g, `/dir/file-${String(i).padStart(3, "0")}`, pattern(i % 10 === 0 ? 9000 : 40, i));
  // Two extents of at most 128 blocks, each with its checksums: the extent records spill into a tree.
  writeFile(g, "/big", pattern(200 * blockSizeBytes + 77, 1));
  writeFile(g, "/small", pattern(100, 2));
  writeFile(g, "/lonely", pattern(5000, 3));
  writeFile(g, "/doomed", pattern(5000, 4));
  g.link("/big", "/dir/sub/big-link");
  g.symlink("/big", "/sym", root);
  const ino = {
    dir: g.inoOf("/dir"),
    sub: g.inoOf("/dir/sub"),
    big: g.inoOf("/big"),
    small: g.inoOf("/small"),
    lonely: g.inoOf("/lonely"),
    deleted: g.inoOf("/doomed"),
  };
  g.createSubvolume("snap", { readOnly: true });
  const clone = g.createSubvolume("clone", { readOnly: false });
  // Diverge from the snapshot: shared nodes are copied, and their children's counts recorded.
  g.unlink("/doomed");
  writeFile(g, "/dir/file-007", pattern(3 * blockSizeBytes, 9));
  g.close();
  // Write into the clone, so that it owns nodes and per-inode trees of its own.
  device = FileDevice.open(image);
  g = GroveFs.open(device, { subvolume: "clone" });
  const fh = g.open("/big", O_RDWR);
  g.write(fh, pattern(5000, 5), 5000, 4096);
  g.release(fh);
  for (let i = 0; i < 40; i++) writeFile(g, `/dir/clone-${i}`, pattern(30, i));
  g.close();

  device = FileDevice.open(image, { readOnly: true });
  const report = checkFilesystem(device, { verifyData: true });
  expect(report.problems).toEqual([]);
  const forest = report.space.forest;
  const nodes = reachableNodes(device, forest);
  device.close();
  const [lba, blocks] = [...forest.extents].find(([start]) => !forest.references.has(start))!;
  const sharedNode = nodes.find((n) => forest.references.has(n.lba))!.lba;
  return { image, nodes, dataExtents: [...forest.extents.keys()], unshared: { lba, blocks }, sharedNode, ino, cloneId: clone.id };
}

async function copyOfBase(): Promise<string> {
  const image = path.join(tmp.path, `case-${copies++}.img`);
  fs.copyFileSync(base.image, image);
  return image;
}

function flipByte(image: string, lba: number, offset: number): void {
  const fd = fs.openSync(image, "r+");
  try {
    const byte = Buffer.alloc(1);
    fs.readSync(fd, byte, 0, 1, lba * blockSizeBytes + offset);
    byte[0]! ^= 0x5a;
    fs.writeSync(fd, byte, 0, 1, lba * blockSizeBytes + offset);
  } finally {
    fs.closeSync(fd);
  }
}

/** Opens the image's volume, lets `damage` change it, and commits that as a normal generation. */
function damageThroughLibrary(image: string, damage: (v: Volume) => void): void {
  const v = openVolume(FileDevice.open(image), { edges: fsEdges });
  try {
    damage(v);
    v.store.commit({ force: true });
  } finally {
    v.store.close();
  }
}

/** Rewrites inode `ino` of subvolume `subvolume` through `change`. */
function editInode(v: Volume, ino: number, change: (inode: ReturnType<typeof decodeInode>) => void, subvolume = treeIdDefault): void {
  const tree = v.store.openTree(subvolume);
  const inode = decodeInode(ino, tree.get(inodeKey(ino))!);
  change(inode);
  tree.put(inodeKey(ino), encodeInode(inode));
}

/** Edits the inline entries of directory `dir` (which must be small enough to hold them inline). */
function editInlineEntries(v: Volume, dir: number, change: (items: Array<{ key: Buffer; value: Buffer }>) => void): void {
  editInode(v, dir, (inode) => {
    expect(inode.kind).toBe(PayloadKind.Items);
    const items = decodeItems(dir, inode.payload);
    change(items);
    items.sort((a, b) => Buffer.compare(a.key, b.key));
    inode.payload = encodeItems(items);
  });
}

// ---- the expectations ----------------------------------------------------------------

/** -n finds the damage (exit 4) and changes nothing; returns what it found. */
async function expectFound(image: string, problem: RegExp): Promise<FsckJson> {
  const before = fs.readFileSync(image);
  const found = await fsck(image, "-n");
  expect(found.exitCode, found.problems.join("\n")).toBe(4);
  expect(found.problems.some((p) => problem.test(p)), `no problem matches ${problem}:\n${found.problems.join("\n")}`).toBe(true);
  expect(found.remaining).toEqual(found.problems);
  expect(fs.readFileSync(image).equals(before), "-n changed the image").toBe(true);
  return found;
}

/** -y repairs it (exit 1, a clean second check inside), and a separate fsck is clean (0). */
async function expectRepaired(image: string): Promise<void> {
  const repaired = await fsck(image, "-y");
  expect(repaired.exitCode, [...repaired.problems, "--", ...repaired.remaining].join("\n")).toBe(1);
  expect(repaired.repaired.length).toBeGreaterThan(0);
  expect(repaired.remaining).toEqual([]);
  const again = await fsck(image, "-n");
  expect(again.exitCode, again.problems.join("\n")).toBe(0);
  expect(again.counts?.subvolumes).toBe(3);
  expectContentsIntact(image);
}

/** The files the damage did not aim at read back, in each subvolume, after a read-write mount (which frees orphans); then the checker is clean. */
function expectContentsIntact(image: string): void {
  const g = GroveFs.open(FileDevice.open(image));
  expectBytes(readFile(g, "/small"), pattern(100, 2), "/small");
  expectBytes(readFile(g, "/big"), pattern(200 * blockSizeBytes + 77, 1), "/big");
  expectBytes(readFile(g, "/dir/file-007"), pattern(3 * blockSizeBytes, 9), "/dir/file-007");
  const snap = g.snapshotView("snap");
  expectBytes(readFile(snap, "/doomed"), pattern(5000, 4), "snap/doomed");
  expectBytes(readFile(snap, "/dir/file-007"), pattern(40, 7), "snap/dir/file-007");
  g.close();
  const clone = GroveFs.open(FileDevice.open(image), { subvolume: "clone" });
  const big = pattern(200 * blockSizeBytes + 77, 1);
  pattern(5000, 5).copy(big, 4096);
  expectBytes(readFile(clone, "/big"), big, "clone/big");
  clone.close();
  const device = FileDevice.open(image, { readOnly: true });
  try {
    expect(checkFilesystem(device, { verifyData: true }).problems).toEqual([]);
  } finally {
    device.close();
  }
}

function inventory(image: string): FileInventory {
  return fileInventory((subvolume) => GroveFs.open(FileDevice.open(image, { readOnly: true }), { readOnly: true, subvolume }));
}

/**
 * -y salvages a damaged filesystem tree (exit 1, and a separate fsck is
 * clean): every file left reads back as it was, at one of its old paths or
 * in /lost+found, unless the repair names its extent map as rebuilt; what
 * is gone is what the damaged node held, named by the repair.
 */
async function expectSalvaged(image: string, keepsEveryFile: boolean): Promise<void> {
  const repaired = await fsck(image, "-y");
  expect(repaired.exitCode, [...repaired.problems, "--", ...repaired.remaining].join("\n")).toBe(1);
  expect(repaired.remaining).toEqual([]);
  expect(repaired.repaired.some((line) => /rebuilt (its inode tree|its entries|its extent map|from)/.test(line)), repaired.repaired.join("\n")).toBe(true);
  const again = await fsck(image, "-n");
  expect(again.exitCode, again.problems.join("\n")).toBe(0);
  expect(again.counts?.subvolumes).toBe(3);
  const rebuiltMaps = new Set(repaired.repaired.flatMap((line) => [...line.matchAll(/inode (\d+)(?: \("[^"]*"\))?: rebuilt its extent map/g)].map((m) => Number(m[1]))));
  const after = inventory(image);
  let intact = 0;
  for (const [key, file] of after) {
    const was = baseFiles.get(key);
    expect(was, `${key} (${[...file.paths].join(", ")}) was in the base image`).toBeDefined();
    for (const p of file.paths) expect(was!.paths.has(p) || p.startsWith("/lost+found/"), `${key} at ${p}`).toBe(true);
    if (rebuiltMaps.has(Number(key.split(":")[1]))) continue;
    expect(file.sha, `${key} reads back as it was`).toBe(was!.sha);
    intact++;
  }
  // One node holds a part of the volume: most files survive it.
  if (keepsEveryFile) expect(intact).toBe(baseFiles.size);
  else expect(intact).toBeGreaterThan(baseFiles.size / 2);
}

/** -y cannot repair it (exit 4) and leaves no problem that was not there before. */
async function expectNotRepaired(image: string, found: FsckJson): Promise<void> {
  const attempt = await fsck(image, "-y");
  expect(attempt.exitCode, attempt.remaining.join("\n")).toBe(4);
  expect(attempt.remaining.length).toBeGreaterThan(0);
  const after = await fsck(image, "-n");
  expect(after.exitCode).toBe(4);
  const before = new Set(found.problems);
  expect(after.problems.filter((p) => !before.has(p)), "problems the repair added").toEqual([]);
}

// ---- the matrix ---------------------------------------------------------------------------

beforeAll(async () => {
  tmp = await tmpDir({ unsafeCleanup: true });
  base = buildBase(path.join(tmp.path, "base.img"));
  baseFiles = inventory(base.image);
  const clean = await fsck(base.image, "-n");
  expect(clean.exitCode, clean.problems.join("\n")).toBe(0);
});

afterAll(async () => {
  await tmp?.cleanup();
});

/**
 * salvaged: -y rebuilds the tree (fs/salvage.ts): a filesystem tree from what it can read, the allocator's
 * trees and the refcount tree from the walk (keepsEveryFile: their items reference nothing, so no file is lost).
 */
type NodeKind = { name: string; pick: (node: NodeInfo) => boolean; salvaged?: boolean; keepsEveryFile?: boolean };

const nodeKinds: NodeKind[] = [
  { name: "the root tree", pick: (n) => n.owner === treeIdRoot },
  { name: "the free-by-LBA tree", pick: (n) => n.owner === treeIdFreeByLba, salvaged: true, keepsEveryFile: true },
  { name: "the free-by-length tree", pick: (n) => n.owner === treeIdFreeByLength, salvaged: true, keepsEveryFile: true },
  { name: "the refcount tree", pick: (n) => n.owner === treeIdRefcounts, salvaged: true, keepsEveryFile: true },
  { name: "the subvolume table", pick: (n) => n.owner === treeIdSubvolumes, salvaged: true, keepsEveryFile: true },
  { name: "the default subvolume's inode tree (a leaf)", pick: (n) => n.owner === treeIdDefault && n.level === 0, salvaged: true },
  { name: "the default subvolume's inode tree (an internal node)", pick: (n) => n.owner === treeIdDefault && n.level > 0, salvaged: true },
  { name: "the clone's inode tree", pick: (n) => n.owner === base.cloneId, salvaged: true },
  { name: "a directory's entry tree", pick: (n) => n.owner === treeIdDefault * perInodeOwnerBase + base.ino.dir, salvaged: true },
  { name: "a file's extent tree", pick: (n) => n.owner === treeIdDefault * perInodeOwnerBase + base.ino.big, salvaged: true },
  { name: "a per-inode tree of the clone", pick: (n) => n.owner > base.cloneId * perInodeOwnerBase && n.owner < (base.cloneId + 1) * perInodeOwnerBase, salvaged: true },
];

describe("corruption matrix: a flipped byte in a node is found; -y salvages a filesystem tree, and leaves the volume's own trees", () => {
  for (const kind of nodeKinds) {
    it.concurrent(kind.name, async () => {
      const node = base.nodes.find(kind.pick);
      expect(node, `the base image has a node of ${kind.name}`).toBeDefined();
      const image = await copyOfBase();
      flipByte(image, node!.lba, nodeFlipOffset);
      const found = await expectFound(image, new RegExp(`block ${node!.lba}\\b.*checksum`));
      if (kind.salvaged) await expectSalvaged(image, kind.keepsEveryFile ?? false);
      else await expectNotRepaired(image, found);
    });
  }
});

describe("corruption matrix: a flipped data block", () => {
  it.concurrent("is found by its checksum, and -y does not make it worse", async () => {
    const image = await copyOfBase();
    const lba = base.dataExtents[0]!;
    flipByte(image, lba, 100);
    const found = await expectFound(image, new RegExp(`data block ${lba} fails its checksum`));
    await expectNotRepaired(image, found);
  });
});

interface LogicalDamage {
  name: string;
  damage: (v: Volume) => void;
  problem: RegExp;
  repaired: boolean;
}

const logicalDamages: LogicalDamage[] = [
  {
    name: "a refcount too high",
    damage: (v) => {
      const [lba, entry] = [...v.refcounts.entries()][0]!;
      v.refcounts.setCount(lba, entry.blocks, entry.count + 1);
    },
    problem: /refcount \d+ recorded, but \d+ references found/,
    repaired: true,
  },
  {
    name: "a refcount entry missing (a shared block counted once)",
    damage: (v) => {
      const [lba, entry] = [...v.refcounts.entries()][0]!;
      v.refcounts.setCount(lba, entry.blocks, 1);
    },
    problem: /refcount 1 recorded, but \d+ references found/,
    repaired: true,
  },
  {
    name: "a shared node's refcount entry missing",
    damage: (v) => v.refcounts.setCount(base.sharedNode, 1, 1),
    problem: /refcount 1 recorded, but \d+ references found/,
    repaired: true,
  },
  {
    name: "a refcount entry for an unshared block",
    damage: (v) => v.refcounts.setCount(base.unshared.lba, base.unshared.blocks, 2),
    problem: /refcount 2 recorded, but 1 references found/,
    repaired: true,
  },
  {
    name: "a leaked block",
    damage: (v) => {
      v.space.allocate(1);
    },
    problem: /leaked \(neither reachable nor free\)/,
    repaired: true,
  },
  {
    name: "a file's nlink one too high",
    damage: (v) => editInode(v, base.ino.small, (inode) => inode.nlink++),
    problem: /inode \d+: nlink 2, but 1 entries name it/,
    repaired: true,
  },
  {
    name: "a directory's nlink one too low",
    damage: (v) => editInode(v, base.ino.dir, (inode) => inode.nlink--),
    problem: /nlink 2, but 3 links exist/,
    repaired: true,
  },
  {
    name: "a wrong nlink in the clone",
    damage: (v) => editInode(v, base.ino.big, (inode) => (inode.nlink += 3), base.cloneId),
    problem: /subvolume "clone": inode \d+: nlink 5, but 2 entries name it/,
    repaired: true,
  },
  {
    name: "an orphan: an unnamed inode with nlink 0 and no orphan key",
    damage: (v) => {
      editInlineEntries(v, 1, (items) => items.splice(items.findIndex((i) => i.key.toString() === "lonely"), 1));
      editInode(v, base.ino.lonely, (inode) => (inode.nlink = 0));
    },
    problem: /has no name and is not an orphan/,
    repaired: true,
  },
  {
    name: "an orphan: an unnamed inode that still counts a link",
    damage: (v) => editInlineEntries(v, 1, (items) => items.splice(items.findIndex((i) => i.key.toString() === "lonely"), 1)),
    problem: /has no name and is not an orphan/,
    repaired: true,
  },
  {
    name: "an orphan key on a file that has links",
    damage: (v) => v.store.openTree(treeIdDefault).put(orphanKey(base.ino.small), Buffer.alloc(0)),
    problem: /orphan \d+ still has 1 names/,
    repaired: true,
  },
  {
    name: "an orphan key naming no inode",
    damage: (v) => v.store.openTree(treeIdDefault).put(orphanKey(base.ino.deleted), Buffer.alloc(0)),
    problem: new RegExp(`orphan \\d+ names no inode`),
    repaired: true,
  },
  {
    name: "a free extent missing from the by-length tree",
    damage: (v) => deleteFirstByLength(v),
    problem: /missing from the by-length tree/,
    repaired: true,
  },
  {
    name: "a reachable block also listed free (owned twice)",
    damage: (v) => v.space.free(base.unshared.lba, 1),
    problem: /owned twice \(reachable and free\)/,
    repaired: true,
  },
  {
    name: "a subvolume record missing from the subvolume table",
    damage: (v) => v.store.openTree(treeIdSubvolumes).delete(liveKey("snap")),
    problem: /tree \d+ is a subvolume tree without a record/,
    repaired: false,
  },
  {
    name: "a dangling entry (an entry naming a missing inode)",
    damage: (v) =>
      editInlineEntries(v, base.ino.sub, (items) => items.push({ key: Buffer.from("ghost"), value: encodeDirent(base.ino.deleted, C.S_IFREG) })),
    problem: /entry "ghost": names inode \d+, which does not exist/,
    repaired: true,
  },
];

/** Deletes the by-length entry of the free extent farthest from where the commit will allocate. */
function deleteFirstByLength(v: Volume): void {
  const byLength = v.store.openTree(treeIdFreeByLength);
  // Keys are (length, start): the smallest extent is first. Prefer one the commit's allocations do not touch.
  const [key] = byLength.range().next().value as [Buffer, Buffer];
  byLength.delete(key);
}

describe("corruption matrix: damage made through the library", () => {
  for (const d of logicalDamages) {
    it.concurrent(`${d.name}: found${d.repaired ? " and repaired" : ", not repaired"}`, async () => {
      const image = await copyOfBase();
      damageThroughLibrary(image, d.damage);
      const found = await expectFound(image, d.problem);
      if (d.repaired) await expectRepaired(image);
      else await expectNotRepaired(image, found);
    });
  }
});
