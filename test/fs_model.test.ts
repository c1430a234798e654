/**
 * Model-based test of GroveFs: a seeded PRNG drives random operations
 * against the filesystem and against an in-memory tree of inodes (names,
 * bytes, links, attributes, open handles), and every result and errno is
 * compared as it happens. Now and then the volume is synced, closed and
 * reopened, or crashed (every unflushed write lost) and reopened, in which
 * case the model falls back to its state at the last sync. At the end the
 * whole tree is compared and the checker runs.
 *
 * Where POSIX allows more than one errno for a call (say rename of a
 * directory into its own subtree over a non-empty one), the model accepts
 * any of them; otherwise the errno must match exactly.
 *
 * With compression on (the lz4 seeds), the volume is formatted with lz4 as
 * its default, writes are mostly compressible and sometimes large, and each
 * reopen or crash picks lz4 or none for what is written next, so that raw
 * writes land in compressed units and the other way round. The event loop
 * runs between operations, as between FUSE requests, so that units filled
 * by a write are compressed in the background while later operations
 * change them or not, and write-out takes the results it may.
 */
import { constants as C } from "node:fs";
import { setImmediate as yieldToEventLoop, setTimeout as sleep } from "node:timers/promises";
import { describe, expect, it } from "vitest";
import { GroveError, Prng } from "../kvstore/index.js";
import {
  GroveFs,
  renameExchange,
  renameNoReplace,
  treeIdDefaultSubvolume,
  xattrCreate,
  xattrReplace,
} from "../fs/index.js";
import { seeds, withSeedAsync } from "./helpers.js";
import {
  FsHarness,
  O_APPEND,
  O_CREAT,
  O_EXCL,
  O_RDONLY,
  O_RDWR,
  O_TRUNC,
  O_WRONLY,
  compressedHarness,
  compressionCensus,
  expectBytes,
  expectFsClean,
  mixedCompressible,
  readFile,
} from "./fs_helpers.js";

const testFile = "test/fs_model.test.ts";
const opsPerSeed = Number(process.env.GROVE_OPS ?? 4000);
/** Short names, and long ones so that a directory with a few entries spills from its inode record to a tree. */
const names = ["a", "b", "c", "d", "e", "f", "L".repeat(200), "M".repeat(254) + "m"];
const depthMax = 3;
const fileBytesMax = 256 * 1024;
const sparseOffsetMax = 1024 * 1024;
const handlesMax = 8;
const xattrNames = ["user.a", "user.b", "trusted.c"];

type Kind = "file" | "dir" | "symlink" | "fifo";

interface MInode {
  kind: Kind;
  /** The real inode number, learnt when the inode is created. */
  ino: number;
  mode: number;
  nlink: number;
  data: Buffer;
  target: string;
  entries: Map<string, MInode>;
  parent: MInode | null;
  xattrs: Map<string, Buffer>;
}

interface MHandle {
  fh: number;
  inode: MInode;
  flags: number;
}

/** A set of acceptable errnos; empty means the call must succeed. */
type Expect = Set<string>;

const typeBits: Record<Kind, number> = { file: C.S_IFREG, dir: C.S_IFDIR, symlink: C.S_IFLNK, fifo: C.S_IFIFO };

function newInode(kind: Kind, mode: number, parent: MInode | null = null): MInode {
  return {
    kind,
    ino: 0,
    mode: typeBits[kind] | (mode & 0o7777),
    nlink: kind === "dir" ? 2 : 1,
    data: Buffer.alloc(0),
    target: "",
    entries: new Map(),
    parent,
    xattrs: new Map(),
  };
}

/** A deep copy of the tree under `root`, keeping hard links shared. */
function cloneTree(root: MInode): MInode {
  const copies = new Map<MInode, MInode>();
  const copy = (inode: MInode, parent: MInode | null): MInode => {
    const seen = copies.get(inode);
    if (seen !== undefined) return seen;
    const out: MInode = {
      ...inode,
      data: Buffer.from(inode.data),
      entries: new Map(),
      parent,
      xattrs: new Map([...inode.xattrs].map(([k, v]) => [k, Buffer.from(v)])),
    };
    copies.set(inode, out);
    for (const [name, child] of inode.entries) out.entries.set(name, copy(child, out));
    return out;
  };
  return copy(root, null);
}

type Lookup = { inode: MInode } | { error: string };
type ParentLookup = { dir: MInode; name: string } | { error: string };

class Model {
  root: MInode;
  handles: MHandle[] = [];
  /** The tree as of the last sync: what a crash falls back to. */
  durable: MInode;

  constructor() {
    this.root = newInode("dir", 0o755);
    this.root.ino = 1;
    this.durable = cloneTree(this.root);
  }

  resolve(path: string): Lookup {
    let at = this.root;
    for (const part of parts(path)) {
      if (at.kind !== "dir") return { error: "ENOTDIR" };
      const next = at.entries.get(part);
      if (next === undefined) return { error: "ENOENT" };
      at = next;
    }
    return { inode: at };
  }

  /** The directory holding the last component; the root has none (the callers check for it first). */
  parentOf(path: string): ParentLookup {
    const p = parts(path);
    const name = p.pop();
    if (name === undefined) return { error: "EBUSY" };
    const dir = this.resolve("/" + p.join("/"));
    if ("error" in dir) return dir;
    if (dir.inode.kind !== "dir") return { error: "ENOTDIR" };
    return { dir: dir.inode, name };
  }

  isOpen(inode: MInode): boolean {
    return this.handles.some((h) => h.inode === inode);
  }

  totalBytes(): number {
    let total = 0;
    const seen = new Set<MInode>();
    const walk = (inode: MInode): void => {
      if (seen.has(inode)) return;
      seen.add(inode);
      total += inode.data.length;
      for (const child of inode.entries.values()) walk(child);
    };
    walk(this.root);
    return total;
  }

  /** `inode` is `ancestor` or lies below it. */
  static within(inode: MInode, ancestor: MInode): boolean {
    for (let at: MInode | null = inode; at !== null; at = at.parent) if (at === ancestor) return true;
    return false;
  }

  /** Every path in the tree, directories and others. */
  paths(): Array<{ path: string; inode: MInode }> {
    const out: Array<{ path: string; inode: MInode }> = [{ path: "/", inode: this.root }];
    const walk = (dir: MInode, prefix: string): void => {
      for (const [name, child] of dir.entries) {
        const path = `${prefix}/${name}`;
        out.push({ path, inode: child });
        if (child.kind === "dir") walk(child, path);
      }
    };
    walk(this.root, "");
    return out;
  }
}

function parts(path: string): string[] {
  return path.split("/").filter((p) => p.length > 0);
}

function depthOf(path: string): number {
  return parts(path).length;
}

/** Runs one filesystem call against the expectation. Returns its result, or undefined if it failed as expected. */
function check<T>(what: string, expected: Expect, body: () => T): T | undefined {
  let result: T;
  try {
    result = body();
  } catch (error) {
    if (!(error instanceof GroveError)) throw error;
    if (error.detail === "EIO_poisoned" || !expected.has(error.code)) {
      throw new Error(
        `${what}: failed with ${error.code} (${error.detail}: ${error.message}), model expected ` +
          (expected.size === 0 ? "success" : [...expected].join(" or ")),
        { cause: error },
      );
    }
    return undefined;
  }
  if (expected.size > 0) throw new Error(`${what}: succeeded, model expected ${[...expected].join(" or ")}`);
  return result;
}

class Runner {
  readonly prng: Prng;
  readonly h: FsHarness;
  readonly model = new Model();
  readonly log: string[] = [];
  stats = new Map<string, number>();
  opIndex = 0;

  /** Compression on: compressible data, and lz4 or none chosen at every reopen. */
  readonly lz4: boolean;
  /** The most compressed extents the volume held at a periodic check. */
  compressedPeak = 0;
  /** Units write-out took from background compression, over every open so far. */
  backgroundUnits = 0;

  constructor(seed: number, compression: "none" | "lz4" = "none") {
    this.prng = new Prng(seed);
    this.lz4 = compression === "lz4";
    // Odd seeds run with a small node cache, so that tree nodes are evicted and read back.
    const options = seed % 2 === 1 ? { cacheBytes: 64 * 1024 } : {};
    this.h = this.lz4 ? compressedHarness("lz4", 16384, options) : new FsHarness(16384, options);
  }

  get fs(): GroveFs {
    return this.h.fs;
  }

  // ---- choosing arguments ------------------------------------------------------

  /** An existing path most of the time, else a fresh name somewhere (maybe under a file or nowhere). */
  path(existingBias = 0.6): string {
    const all = this.model.paths();
    if (this.prng.chance(existingBias)) {
      const pick = this.prng.pick(all);
      if (pick.path !== "/" || this.prng.chance(0.05)) return pick.path;
    }
    const parent = this.prng.pick(all.filter((p) => depthOf(p.path) < depthMax && (p.inode.kind === "dir" || this.prng.chance(0.1))));
    const base = parent.path === "/" ? "" : parent.path;
    if (this.prng.chance(0.03)) return `${base}/${this.prng.pick(names)}/${this.prng.pick(names)}`;
    return `${base}/${this.prng.pick(names)}`;
  }

  filePath(): string {
    const files = this.model.paths().filter((p) => p.inode.kind === "file");
    return files.length > 0 && this.prng.chance(0.85) ? this.prng.pick(files).path : this.path();
  }

  dirPath(): string {
    const dirs = this.model.paths().filter((p) => p.inode.kind === "dir");
    return this.prng.chance(0.85) ? this.prng.pick(dirs).path : this.path();
  }

  offset(size: number): number {
    const roll = this.prng.below(10);
    if (roll < 4) return this.prng.below(size + 1);
    if (roll < 7) return Math.max(0, size - this.prng.below(5000));
    if (roll < 9) return Math.max(0, this.prng.below(12) * 4096 + this.prng.between(-3, 3));
    return this.prng.below(sparseOffsetMax);
  }

  length(): number {
    const roll = this.prng.below(10);
    if (roll < 4) return this.prng.between(1, 100);
    if (roll < 7) return this.prng.between(100, 5000);
    // With compression on, one write in five is large, up to a few whole 128 KiB units.
    if (roll < (this.lz4 ? 8 : 9)) return this.prng.pick([4095, 4096, 4097, 8192, 12288]);
    return this.prng.between(5000, this.lz4 ? 400_000 : 70_000);
  }

  // ---- operations ----------------------------------------------------------------

  step(i: number): void {
    const ops: Array<[number, string, () => void]> = [
      [10, "create", () => this.create()],
      [8, "open", () => this.open()],
      [8, "release", () => this.release()],
      [18, "write", () => this.write()],
      [8, "read", () => this.read()],
      [3, "read sequentially", () => this.readSequentially()],
      [6, "truncate", () => this.truncate()],
      [6, "unlink", () => this.unlink()],
      [7, "rename", () => this.rename()],
      [6, "mkdir", () => this.mkdir()],
      [4, "rmdir", () => this.rmdir()],
      [4, "link", () => this.link()],
      [3, "symlink", () => this.symlink()],
      [1, "mknod", () => this.mknod()],
      [4, "xattr", () => this.xattr()],
      [2, "chmod", () => this.chmod()],
      [6, "getattr", () => this.getattr()],
      [3, "readdir", () => this.readdir()],
      [2, "sync", () => this.sync()],
      [1, "reopen", () => this.reopen()],
      [1, "crash", () => this.crash()],
    ];
    const total = ops.reduce((sum, [w]) => sum + w, 0);
    let roll = this.prng.below(total);
    for (const [weight, name, run] of ops) {
      if (roll < weight) {
        this.stats.set(name, (this.stats.get(name) ?? 0) + 1);
        this.opIndex = i;
        run();
        return;
      }
      roll -= weight;
    }
  }

  note(line: string): void {
    this.log.push(`${this.opIndex}: ${line}`);
    if (this.log.length > 60) this.log.shift();
  }

  create(): void {
    const path = this.path(0.3);
    const flags = O_CREAT | O_RDWR | (this.prng.chance(0.3) ? O_EXCL : 0) | (this.prng.chance(0.2) ? O_TRUNC : 0);
    const mode = this.prng.pick([0o644, 0o600, 0o755]);
    this.note(`create ${path} flags=${flags.toString(8)} mode=${mode.toString(8)}`);
    const expected = new Set<string>();
    const parent = this.model.parentOf(path);
    let existing: MInode | undefined;
    if ("error" in parent) expected.add(parent.error);
    else {
      existing = parent.dir.entries.get(parent.name);
      if (existing !== undefined && (flags & O_EXCL) !== 0) expected.add("EEXIST");
      else if (existing?.kind === "dir") expected.add("EISDIR");
      else if (existing?.kind === "symlink") expected.add("ELOOP");
    }
    // Linux says EISDIR for open("/", O_CREAT); FUSE never sends it, so any refusal will do.
    if (parts(path).length === 0) expected.add("EEXIST").add("EISDIR").add("EBUSY");
    if (expected.size === 0 && this.model.handles.length >= handlesMax) return;
    const fh = check(`create ${path}`, expected, () => this.fs.create(path, mode, flags, { uid: 1, gid: 2 }));
    if (fh === undefined || "error" in parent) return;
    if (existing !== undefined && existing.kind !== "file") {
      this.fs.release(fh);
      return;
    }
    let inode = existing;
    if (inode === undefined) {
      inode = newInode("file", mode, null);
      parent.dir.entries.set(parent.name, inode);
      inode.ino = this.fs.fgetattr(fh).ino;
    } else if ((flags & O_TRUNC) !== 0 && inode.kind === "file") {
      inode.data = Buffer.alloc(0);
    }
    this.model.handles.push({ fh, inode, flags });
  }

  open(): void {
    const path = this.filePath();
    const access = this.prng.pick([O_RDONLY, O_WRONLY, O_RDWR]);
    const flags = access | (this.prng.chance(0.15) ? O_TRUNC : 0) | (this.prng.chance(0.15) ? O_APPEND : 0);
    this.note(`open ${path} flags=${flags.toString(8)}`);
    const found = this.model.resolve(path);
    const expected = new Set<string>();
    if ("error" in found) expected.add(found.error);
    else if (found.inode.kind === "dir" && access !== O_RDONLY) expected.add("EISDIR");
    else if (found.inode.kind === "symlink") expected.add("ELOOP");
    if (expected.size === 0 && this.model.handles.length >= handlesMax) return;
    const fh = check(`open ${path}`, expected, () => this.fs.open(path, flags));
    if (fh === undefined || "error" in found) return;
    const inode = found.inode;
    if (inode.kind !== "file") {
      this.fs.release(fh);
      return;
    }
    if ((flags & O_TRUNC) !== 0 && access !== O_RDONLY) inode.data = Buffer.alloc(0);
    this.model.handles.push({ fh, inode, flags });
  }

  pickHandle(): MHandle | undefined {
    if (this.model.handles.length === 0) return undefined;
    return this.prng.pick(this.model.handles);
  }

  release(): void {
    const handle = this.pickHandle();
    if (handle === undefined) return;
    this.note(`release fh=${handle.fh}`);
    this.fs.release(handle.fh);
    this.model.handles.splice(this.model.handles.indexOf(handle), 1);
    const inode = handle.inode;
    if (inode.nlink === 0 && !this.model.isOpen(inode)) {
      expect(this.fs.hasInode(inode.ino), "a released orphan is freed").toBe(false);
    }
  }

  write(): void {
    const handle = this.pickHandle();
    if (handle === undefined) return this.create();
    const inode = handle.inode;
    const tooBig = this.model.totalBytes() > 16 * 1024 * 1024;
    let at = this.offset(inode.data.length);
    let length = this.length();
    if (tooBig || at + length > sparseOffsetMax + 70_000) {
      at = 0;
      length = 1;
    }
    const data = this.lz4 && this.prng.chance(0.8) ? mixedCompressible(length, this.prng.u32()) : this.prng.bytes(length);
    this.note(`write fh=${handle.fh} at=${at} length=${length} (size ${inode.data.length})`);
    const expected = new Set<string>();
    if ((handle.flags & 3) === O_RDONLY) expected.add("EBADF");
    const n = check(`write ${inode.ino} at ${at}`, expected, () => this.fs.write(handle.fh, data, length, at));
    if (n === undefined) return;
    expect(n).toBe(length);
    const start = (handle.flags & O_APPEND) !== 0 ? inode.data.length : at;
    const end = start + length;
    if (end > inode.data.length) {
      const grown = Buffer.alloc(end);
      inode.data.copy(grown);
      inode.data = grown;
    }
    data.copy(inode.data, start);
  }

  read(): void {
    const handle = this.pickHandle();
    if (handle === undefined) return;
    const inode = handle.inode;
    const at = this.offset(inode.data.length);
    const length = this.length();
    this.note(`read fh=${handle.fh} at=${at} length=${length} (size ${inode.data.length})`);
    const expected = new Set<string>();
    if ((handle.flags & 3) === O_WRONLY) expected.add("EBADF");
    const out = Buffer.alloc(length);
    const n = check(`read ${inode.ino}`, expected, () => this.fs.read(handle.fh, out, length, at));
    if (n === undefined) return;
    expectBytes(out.subarray(0, n), inode.data.subarray(at, at + length), `read of inode ${inode.ino} at ${at}`);
  }

  /**
   * Reads one handle front to back in chunks (GroveFs reads ahead for a
   * sequential reader), with writes, truncates and syncs mixed in between.
   */
  readSequentially(): void {
    const readable = this.model.handles.filter((h) => (h.flags & 3) !== O_WRONLY);
    if (readable.length === 0) return;
    const handle = this.prng.pick(readable);
    const chunk = this.prng.pick([1000, 4096, 7000, 65_536]);
    this.note(`read sequentially fh=${handle.fh} in ${chunk}-byte chunks (size ${handle.inode.data.length})`);
    for (let at = 0; at < handle.inode.data.length; at += chunk) {
      const out = Buffer.alloc(chunk);
      const n = this.fs.read(handle.fh, out, chunk, at);
      expectBytes(out.subarray(0, n), handle.inode.data.subarray(at, at + chunk), `sequential read at ${at}`);
      const roll = this.prng.below(20);
      if (roll === 0) this.write();
      else if (roll === 1) this.sync();
      else if (roll === 2) this.truncate();
      if (!this.model.handles.includes(handle)) return;
    }
  }

  truncate(): void {
    const size = this.prng.chance(0.5) ? this.prng.below(20_000) : this.prng.below(fileBytesMax);
    const handle = this.prng.chance(0.4) ? this.pickHandle() : undefined;
    const expected = new Set<string>();
    let inode: MInode | undefined;
    if (handle !== undefined) {
      this.note(`ftruncate fh=${handle.fh} size=${size}`);
      if ((handle.flags & 3) === O_RDONLY) expected.add("EBADF");
      inode = handle.inode;
      check(`ftruncate ${inode.ino}`, expected, () => this.fs.ftruncate(handle.fh, size));
    } else {
      const path = this.filePath();
      this.note(`truncate ${path} size=${size}`);
      const found = this.model.resolve(path);
      if ("error" in found) expected.add(found.error);
      else if (found.inode.kind === "dir") expected.add("EISDIR");
      else if (found.inode.kind !== "file") expected.add("EINVAL");
      else inode = found.inode;
      check(`truncate ${path}`, expected, () => this.fs.truncate(path, size));
    }
    if (expected.size > 0 || inode === undefined) return;
    const resized = Buffer.alloc(size);
    inode.data.copy(resized, 0, 0, Math.min(size, inode.data.length));
    inode.data = resized;
  }

  unlink(): void {
    const path = this.path(0.8);
    this.note(`unlink ${path}`);
    const expected = new Set<string>();
    const parent = this.model.parentOf(path);
    let target: MInode | undefined;
    if (parts(path).length === 0) expected.add("EBUSY").add("EISDIR");
    else if ("error" in parent) expected.add(parent.error);
    else {
      target = parent.dir.entries.get(parent.name);
      if (target === undefined) expected.add("ENOENT");
      else if (target.kind === "dir") expected.add("EISDIR");
    }
    check(`unlink ${path}`, expected, () => this.fs.unlink(path));
    if (expected.size > 0 || "error" in parent || target === undefined) return;
    parent.dir.entries.delete(parent.name);
    this.dropLink(target);
  }

  dropLink(target: MInode): void {
    target.nlink--;
    if (target.nlink === 0 && !this.model.isOpen(target)) {
      expect(this.fs.hasInode(target.ino), `inode ${target.ino} is freed at its last unlink`).toBe(false);
    }
  }

  mkdir(): void {
    const path = this.path(0.2);
    const mode = this.prng.pick([0o755, 0o700, 0o1777]);
    this.note(`mkdir ${path}`);
    const expected = new Set<string>();
    const parent = this.model.parentOf(path);
    if (parts(path).length === 0) expected.add("EEXIST");
    else if ("error" in parent) expected.add(parent.error);
    else if (parent.dir.entries.has(parent.name)) expected.add("EEXIST");
    if (expected.size === 0 && depthOf(path) > depthMax) return;
    const st = check(`mkdir ${path}`, expected, () => this.fs.mkdir(path, mode, { uid: 3, gid: 4 }));
    if (st === undefined || "error" in parent) return;
    const dir = newInode("dir", mode, parent.dir);
    // A directory inherits the set-group-ID bit of its parent (and with it the gid).
    dir.mode |= parent.dir.mode & 0o2000;
    dir.ino = st.ino;
    parent.dir.entries.set(parent.name, dir);
    parent.dir.nlink++;
  }

  rmdir(): void {
    const path = this.dirPath();
    this.note(`rmdir ${path}`);
    const expected = new Set<string>();
    const parent = this.model.parentOf(path);
    let target: MInode | undefined;
    if (parts(path).length === 0) expected.add("EBUSY");
    else if ("error" in parent) expected.add(parent.error);
    else {
      target = parent.dir.entries.get(parent.name);
      if (target === undefined) expected.add("ENOENT");
      else if (target.kind !== "dir") expected.add("ENOTDIR");
      else if (target.entries.size > 0) expected.add("ENOTEMPTY");
    }
    check(`rmdir ${path}`, expected, () => this.fs.rmdir(path));
    if (expected.size > 0 || "error" in parent || target === undefined) return;
    parent.dir.entries.delete(parent.name);
    parent.dir.nlink--;
    expect(this.fs.hasInode(target.ino)).toBe(false);
  }

  rename(): void {
    const from = this.path(0.85);
    const to = this.path(0.5);
    const flags = this.prng.pick([0, 0, 0, renameNoReplace, renameExchange]);
    this.note(`rename ${from} -> ${to} flags=${flags}`);
    const expected = new Set<string>();
    const src = this.model.parentOf(from);
    const dst = this.model.parentOf(to);
    if (parts(from).length === 0 || parts(to).length === 0) expected.add("EBUSY");
    if ("error" in src && parts(from).length > 0) expected.add(src.error);
    if ("error" in dst && parts(to).length > 0) expected.add(dst.error);
    let moving: MInode | undefined;
    let existing: MInode | undefined;
    if (expected.size === 0 && !("error" in src) && !("error" in dst)) {
      moving = src.dir.entries.get(src.name);
      existing = dst.dir.entries.get(dst.name);
      if (moving === undefined) expected.add("ENOENT");
      else if (flags === renameExchange) {
        if (existing === undefined) expected.add("ENOENT");
        else if (existing !== moving) {
          if (moving.kind === "dir" && Model.within(dst.dir, moving)) expected.add("EINVAL");
          if (existing.kind === "dir" && Model.within(src.dir, existing)) expected.add("EINVAL");
        }
      } else {
        if (existing !== undefined && flags === renameNoReplace) expected.add("EEXIST");
        if (existing !== undefined && existing !== moving) {
          if (moving.kind === "dir" && existing.kind !== "dir") expected.add("ENOTDIR");
          if (moving.kind !== "dir" && existing.kind === "dir") expected.add("EISDIR");
          if (existing.kind === "dir" && existing.entries.size > 0) expected.add("ENOTEMPTY");
        }
        if (existing !== moving && moving.kind === "dir" && Model.within(dst.dir, moving)) expected.add("EINVAL");
      }
    }
    // A move that would nest deeper than the model's bound is skipped, not attempted.
    if (expected.size === 0 && moving !== undefined && depthOf(to) + this.height(moving) > depthMax + 1) return;
    check(`rename ${from} -> ${to}`, expected, () => this.fs.rename(from, to, flags));
    if (expected.size > 0 || moving === undefined || "error" in src || "error" in dst) return;
    if (existing === moving) return;
    if (flags === renameExchange) {
      src.dir.entries.set(src.name, existing!);
      dst.dir.entries.set(dst.name, moving);
      if (moving.kind === "dir") {
        src.dir.nlink--;
        dst.dir.nlink++;
        moving.parent = dst.dir;
      }
      if (existing!.kind === "dir") {
        dst.dir.nlink--;
        src.dir.nlink++;
        existing!.parent = src.dir;
      }
      return;
    }
    if (existing !== undefined) {
      dst.dir.entries.delete(dst.name);
      if (existing.kind === "dir") dst.dir.nlink--;
      else this.dropLink(existing);
    }
    src.dir.entries.delete(src.name);
    dst.dir.entries.set(dst.name, moving);
    if (moving.kind === "dir") {
      src.dir.nlink--;
      dst.dir.nlink++;
      moving.parent = dst.dir;
    }
  }

  /** How many levels of names lie below `inode` (0 for anything but a non-empty directory). */
  height(inode: MInode): number {
    let h = 0;
    for (const child of inode.entries.values()) h = Math.max(h, 1 + this.height(child));
    return h;
  }

  link(): void {
    const existingPath = this.filePath();
    const newPath = this.path(0.3);
    this.note(`link ${existingPath} -> ${newPath}`);
    const expected = new Set<string>();
    const found = this.model.resolve(existingPath);
    const dst = this.model.parentOf(newPath);
    if ("error" in found) expected.add(found.error);
    else if (found.inode.kind === "dir") expected.add("EPERM");
    if (parts(newPath).length === 0) expected.add("EEXIST");
    else if ("error" in dst) expected.add(dst.error);
    else if (dst.dir.entries.has(dst.name)) expected.add("EEXIST");
    const st = check(`link ${existingPath} -> ${newPath}`, expected, () => this.fs.link(existingPath, newPath));
    if (st === undefined || "error" in found || "error" in dst) return;
    found.inode.nlink++;
    dst.dir.entries.set(dst.name, found.inode);
    expect(st.ino).toBe(found.inode.ino);
    expect(st.nlink).toBe(found.inode.nlink);
  }

  symlink(): void {
    const path = this.path(0.2);
    const target = this.prng.chance(0.1) ? "t".repeat(this.prng.between(500, 4095)) : this.path();
    this.note(`symlink ${path} -> ${target.length} bytes`);
    const expected = new Set<string>();
    const parent = this.model.parentOf(path);
    if (parts(path).length === 0) expected.add("EEXIST");
    else if ("error" in parent) expected.add(parent.error);
    else if (parent.dir.entries.has(parent.name)) expected.add("EEXIST");
    const st = check(`symlink ${path}`, expected, () => this.fs.symlink(target, path, { uid: 0, gid: 0 }));
    if (st === undefined || "error" in parent) return;
    const link = newInode("symlink", 0o777);
    link.ino = st.ino;
    link.target = target;
    parent.dir.entries.set(parent.name, link);
  }

  mknod(): void {
    const path = this.path(0.2);
    this.note(`mknod ${path}`);
    const expected = new Set<string>();
    const parent = this.model.parentOf(path);
    if (parts(path).length === 0) expected.add("EEXIST");
    else if ("error" in parent) expected.add(parent.error);
    else if (parent.dir.entries.has(parent.name)) expected.add("EEXIST");
    const st = check(`mknod ${path}`, expected, () => this.fs.mknod(path, C.S_IFIFO | 0o640, 0, { uid: 0, gid: 0 }));
    if (st === undefined || "error" in parent) return;
    const fifo = newInode("fifo", 0o640);
    fifo.ino = st.ino;
    parent.dir.entries.set(parent.name, fifo);
  }

  xattr(): void {
    const path = this.path(0.9);
    const name = this.prng.pick(xattrNames);
    const found = this.model.resolve(path);
    const expected = new Set<string>();
    if ("error" in found) expected.add(found.error);
    const roll = this.prng.below(4);
    if (roll === 0) {
      this.note(`getxattr ${path} ${name}`);
      if (!("error" in found) && !found.inode.xattrs.has(name)) expected.add("ENODATA");
      const value = check(`getxattr ${path} ${name}`, expected, () => this.fs.getxattr(path, name));
      if (value !== undefined && !("error" in found)) expectBytes(value, found.inode.xattrs.get(name)!, `xattr ${name}`);
    } else if (roll === 1) {
      this.note(`removexattr ${path} ${name}`);
      if (!("error" in found) && !found.inode.xattrs.has(name)) expected.add("ENODATA");
      check(`removexattr ${path} ${name}`, expected, () => this.fs.removexattr(path, name));
      if (expected.size === 0 && !("error" in found)) found.inode.xattrs.delete(name);
    } else {
      const flags = this.prng.pick([0, 0, xattrCreate, xattrReplace]);
      const value = this.prng.bytes(this.prng.chance(0.2) ? this.prng.between(513, 4000) : this.prng.below(100));
      this.note(`setxattr ${path} ${name} flags=${flags} ${value.length} bytes`);
      if (!("error" in found)) {
        const inode = found.inode;
        if (name.startsWith("user.") && inode.kind !== "file" && inode.kind !== "dir") expected.add("EPERM");
        else if (flags === xattrCreate && inode.xattrs.has(name)) expected.add("EEXIST");
        else if (flags === xattrReplace && !inode.xattrs.has(name)) expected.add("ENODATA");
      }
      check(`setxattr ${path} ${name}`, expected, () => this.fs.setxattr(path, name, value, flags));
      if (expected.size === 0 && !("error" in found)) found.inode.xattrs.set(name, value);
    }
    if (expected.size === 0 && !("error" in found)) {
      expect(this.fs.listxattr(path).sort()).toEqual([...found.inode.xattrs.keys()].sort());
    }
  }

  chmod(): void {
    const path = this.path(0.9);
    const mode = this.prng.below(0o10000);
    this.note(`chmod ${path} ${mode.toString(8)}`);
    const found = this.model.resolve(path);
    const expected = new Set<string>();
    if ("error" in found) expected.add(found.error);
    check(`chmod ${path}`, expected, () => this.fs.chmod(path, mode));
    if (!("error" in found)) found.inode.mode = (found.inode.mode & C.S_IFMT) | mode;
  }

  getattr(): void {
    const path = this.path(0.9);
    this.note(`getattr ${path}`);
    const found = this.model.resolve(path);
    const expected = new Set<string>();
    if ("error" in found) expected.add(found.error);
    const st = check(`getattr ${path}`, expected, () => this.fs.getattr(path));
    if (st !== undefined && !("error" in found)) this.compareStat(path, found.inode);
  }

  readdir(): void {
    const path = this.dirPath();
    this.note(`readdir ${path}`);
    const found = this.model.resolve(path);
    const expected = new Set<string>();
    if ("error" in found) expected.add(found.error);
    else if (found.inode.kind !== "dir") expected.add("ENOTDIR");
    const listed = check(`readdir ${path}`, expected, () => this.fs.readdir(path));
    if (listed === undefined || "error" in found) return;
    const dir = found.inode;
    expect(listed.slice(0, 2).map((e) => e.name)).toEqual([".", ".."]);
    expect(listed[0]!.ino).toBe(dir.ino);
    expect(listed[1]!.ino).toBe(dir.parent?.ino ?? 1);
    const actual = listed.slice(2).map((e) => `${e.name}:${e.ino}:${e.type}`);
    const model = [...dir.entries].map(([name, child]) => `${name}:${child.ino}:${child.mode & C.S_IFMT}`);
    expect(actual.sort()).toEqual(model.sort());
  }

  sync(): void {
    const roll = this.prng.below(3);
    const handle = this.pickHandle();
    this.note(`sync (${roll})`);
    if (roll === 0 || handle === undefined) this.fs.sync();
    else if (roll === 1) this.fs.fsync(handle.fh, this.prng.chance(0.5));
    else {
      const fh = this.fs.opendir("/");
      this.fs.fsyncdir(fh, false);
      this.fs.releasedir(fh);
    }
    this.model.durable = cloneTree(this.model.root);
  }

  reopen(): void {
    this.note("close and reopen");
    this.tallyBackground();
    this.h.reopen(this.restartOptions());
    this.afterRestart(this.model.root);
  }

  crash(): void {
    this.note("crash and reopen");
    this.tallyBackground();
    this.h.crashAndReopen(this.restartOptions());
    this.afterRestart(cloneTree(this.model.durable));
  }

  /** Counts what this open's write-outs took from background compression (an open starts from 0). */
  tallyBackground(): void {
    const data = (this.fs as unknown as { data: { unitsCompressedInBackground: number } }).data;
    this.backgroundUnits += data.unitsCompressedInBackground;
  }

  /** With compression on, a restart picks what new data is written with; lz4 stays the volume's default. */
  private restartOptions(): { compression?: "lz4" | "none" } {
    if (!this.lz4) return {};
    const compression = this.prng.pick(["lz4", "lz4", "none"] as const);
    this.note(`  (compression ${compression} from here)`);
    expect(this.fs.info().compression).toBe("lz4");
    return { compression };
  }

  private afterRestart(root: MInode): void {
    this.model.root = root;
    this.model.handles = [];
    this.model.durable = cloneTree(root);
    expect(this.fs.info().orphans).toBe(0);
    this.compareTree(true);
  }

  // ---- comparing ---------------------------------------------------------------------

  /**
   * `settled`: nothing is buffered (just synced or reopened), so st_blocks can
   * be bounded by the size. (While an overwrite of a written-out block is
   * buffered, GroveFs counts that block twice; fs_ops.test.ts has that case.)
   */
  compareStat(path: string, inode: MInode, settled = false): void {
    const st = this.fs.getattr(path);
    const where = `getattr ${path}`;
    expect(st.ino, where).toBe(inode.ino);
    expect(st.mode, where).toBe(inode.mode);
    expect(st.nlink, where).toBe(inode.nlink);
    if (inode.kind === "file") expect(st.size, where).toBe(inode.data.length);
    if (inode.kind === "symlink") expect(st.size, where).toBe(Buffer.byteLength(inode.target));
    if (settled) expect(st.blocks * 512, where).toBeLessThanOrEqual(Math.ceil(st.size / 4096) * 4096);
  }

  /** The whole tree: names, types, inode numbers, link counts, bytes, targets and attributes. */
  compareTree(settled = false): void {
    for (const { path, inode } of this.model.paths()) {
      this.compareStat(path, inode, settled);
      if (inode.kind === "dir") {
        const listed = this.fs.readdir(path).slice(2).map((e) => e.name).sort();
        expect(listed, `readdir ${path}`).toEqual([...inode.entries.keys()].sort());
      } else if (inode.kind === "file") {
        expectBytes(readFile(this.fs, path), inode.data, `contents of ${path}`);
      } else if (inode.kind === "symlink") {
        expect(this.fs.readlink(path)).toBe(inode.target);
      }
      expect(this.fs.listxattr(path).sort(), `listxattr ${path}`).toEqual([...inode.xattrs.keys()].sort());
      for (const [name, value] of inode.xattrs) expectBytes(this.fs.getxattr(path, name), value, `xattr ${name} of ${path}`);
    }
    for (const handle of this.model.handles) {
      const st = this.fs.fgetattr(handle.fh);
      expect(st.ino).toBe(handle.inode.ino);
      expect(st.size).toBe(handle.inode.data.length);
      expect(st.nlink).toBe(handle.inode.nlink);
    }
  }

  /** Returns how many inode maps were trees at the end. */
  finish(): number {
    this.compareTree();
    for (const handle of [...this.model.handles]) {
      this.fs.release(handle.fh);
      this.model.handles.splice(this.model.handles.indexOf(handle), 1);
    }
    expect(this.fs.info().orphans).toBe(0);
    this.tallyBackground();
    this.h.reopen();
    this.compareTree(true);
    const report = this.h.closeAndCheck();
    // Directory and extent maps that outgrew their inode record: the walk saw them as trees of their own.
    return report.space.forest.trees.filter((t) => t.id > treeIdDefaultSubvolume * 2 ** 32).length;
  }
}

async function runSeed(seed: number, compression: "none" | "lz4"): Promise<void> {
  await withSeedAsync(seed, testFile, async () => {
    const runner = new Runner(seed, compression);
    let spilled = 0;
    try {
      for (let i = 0; i < opsPerSeed; i++) {
        runner.step(i);
        // With compression on, background compressions finish (and are taken or dropped) between operations.
        if (runner.lz4) await (i % 20 === 19 ? sleep(1) : yieldToEventLoop());
        if (i % 250 === 249) {
          runner.fs.sync();
          runner.compareTree(true);
          runner.model.durable = cloneTree(runner.model.root);
          const report = expectFsClean(runner.h.device);
          runner.compressedPeak = Math.max(runner.compressedPeak, report.space.forest.compressed.extents);
        }
      }
      spilled = runner.finish();
    } catch (error) {
      console.error(`last operations of seed ${seed}:\n${runner.log.join("\n")}`);
      throw error;
    }
    const counts = [...runner.stats].map(([k, v]) => `${k} ${v}`).join(", ");
    console.log(`${compression} seed ${seed}: ${counts}; ${spilled} inode maps spilled to trees at the end`);
    if (compression === "lz4") {
      // Compressed units were written (some compressed in the background), and overwrites and truncates cut them into slices.
      const census = compressionCensus(runner.h.device);
      console.log(
        `lz4 seed ${seed}: at most ${runner.compressedPeak} compressed extents at a check, ` +
          `${runner.backgroundUnits} units compressed in the background; at the end ${JSON.stringify(census)}`,
      );
      expect(runner.compressedPeak).toBeGreaterThan(0);
      expect(runner.backgroundUnits).toBeGreaterThan(0);
      expect(census.extents).toBeGreaterThan(0);
      expect(census.slices).toBeGreaterThan(0);
      expect(census.records).toBeGreaterThan(census.extents);
    }
  });
}

describe("GroveFs against an in-memory model", () => {
  for (const seed of seeds([101, 202, 303, 404])) {
    it(`seed ${seed}: ${opsPerSeed} random operations`, () => runSeed(seed, "none"));
  }
  for (const seed of seeds([505])) {
    it(`lz4 seed ${seed}: ${opsPerSeed} random operations on compressible data`, () => runSeed(seed, "lz4"));
  }
});
