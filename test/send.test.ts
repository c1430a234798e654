/**
 * Send and receive through the library API, between two simulated volumes:
 * seeded random workloads with a chain of snapshots, sent full then
 * incrementally into a second volume, each received snapshot compared with
 * its source through both volumes' APIs (bytes, holes, modes, owners, ns
 * times, symlinks, hard links, special files, xattrs, sharing); damaged
 * streams (cut at every record boundary, single-byte flips) refused with the
 * target unchanged; the tree diff skipping shared subtrees. Both volumes are
 * checked at the end of every test.
 *
 * GROVE_SEED=<n> replays a seed; GROVE_SEND_OPS=<n> sets the operations per
 * snapshot (default small for CI), GROVE_SEND_SNAPSHOTS the chain's length.
 */
import { describe, expect, it } from "vitest";
import { constants as C } from "node:fs";
import { createHash } from "node:crypto";
import { Prng, SimDevice, crc32c, diffTrees, featureCompressLz4, featureReceivedSnapshots } from "../kvstore/index.js";
import { GroveFs, send, type CompressionName, type InodeOps, type Stat } from "../fs/index.js";
import { decodeExtent, isUnwritten, PayloadKind } from "../fs/format.js";
import { O_CREAT, O_RDWR, expectFsClean, testClock } from "./fs_helpers.js";
import { seeds, withSeed } from "./helpers.js";

const caller = { uid: 0, gid: 0 };
const opsPerSnapshot = Number(process.env.GROVE_SEND_OPS ?? 60);
const snapshotsPerRun = Number(process.env.GROVE_SEND_SNAPSHOTS ?? 4);
const testFile = "test/send.test.ts";

function fresh(blocks = 32768, compression: CompressionName = "none"): { device: SimDevice; fs: GroveFs } {
  let device = new SimDevice(blocks);
  GroveFs.format(device, { clock: testClock(), compression });
  device = device.reopen();
  return { device, fs: GroveFs.open(device, { clock: testClock(2_000_000_000_000_000_000n) }) };
}

function closeAndCheck(fs: GroveFs, device: SimDevice): void {
  fs.close();
  expectFsClean(device.reopen());
}

/** Sends snapshot `name` (incremental from `parent`) of `from` as one buffer. */
function streamOf(from: GroveFs, name: string, parent?: string): Buffer {
  const chunks: Buffer[] = [];
  send.sendSnapshot(from, name, (chunk) => chunks.push(chunk), { parent });
  return Buffer.concat(chunks);
}

function sourceOf(bytes: Buffer): send.ByteSource {
  let at = 0;
  return (length) => {
    const chunk = bytes.subarray(at, Math.min(bytes.length, at + length));
    at += chunk.length;
    return chunk;
  };
}

/** A stream's records, the end record left out. */
function recordsOf(bytes: Buffer): send.StreamRecord[] {
  const reader = new send.StreamReader(sourceOf(bytes));
  const records: send.StreamRecord[] = [];
  for (let record = reader.next(); record.type !== send.RecordType.End; record = reader.next()) records.push(record);
  return records;
}

// ---- what a snapshot holds, through the API -------------------------------------------

interface Seen {
  stat: Omit<Stat, "blocks" | "blksize" | "crtimeNs">;
  target?: string;
  data?: string;
  holes?: string;
  xattrs: string;
}

/** Every name from the root, with what its inode holds (hard links show one inode at several names). */
function describeTree(view: InodeOps & { lseek?: unknown }): Map<string, Seen> {
  const seen = new Map<string, Seen>();
  const walk = (ino: number, path: string, depth: number): void => {
    if (depth > 64) throw new Error("too deep");
    const stat = view.statIno(ino);
    const { blocks: _b, blksize: _s, crtimeNs: _c, ...rest } = stat;
    const entry: Seen = { stat: rest, xattrs: xattrsOf(view, ino) };
    const type = stat.mode & C.S_IFMT;
    if (type === C.S_IFLNK) entry.target = view.readlinkIno(ino).toString("latin1");
    if (type === C.S_IFREG) {
      const fh = view.openIno(ino, C.O_RDONLY);
      const bytes = Buffer.alloc(stat.size);
      let got = 0;
      while (got < stat.size) {
        const n = view.read(fh, bytes.subarray(got), stat.size - got, got);
        if (n === 0) break;
        got += n;
      }
      view.release(fh);
      entry.data = createHash("sha256").update(bytes).digest("hex");
      entry.holes = holesOf(view as unknown as GroveFs, ino, stat.size);
    }
    seen.set(path, entry);
    if (type === C.S_IFDIR) {
      const children: { name: Buffer; ino: number }[] = [];
      view.readdirIno(ino, undefined, (e) => (children.push({ name: e.name, ino: e.ino }), true));
      for (const child of children) {
        if (child.name.toString() === "." || child.name.toString() === "..") continue;
        walk(child.ino, `${path}/${child.name.toString("latin1")}`, depth + 1);
      }
    }
  };
  walk(1, "", 0);
  return seen;
}

function xattrsOf(view: InodeOps, ino: number): string {
  return view
    .listxattrIno(ino)
    .sort()
    .map((name) => `${name}=${view.findXattrIno(ino, name)!.toString("hex")}`)
    .join(",");
}

/** Where the holes are, by SEEK_HOLE and SEEK_DATA. */
function holesOf(view: GroveFs, ino: number, size: number): string {
  const holes: string[] = [];
  let at = 0;
  while (at < size) {
    const hole = view.lseek(ino, at, "hole");
    if (hole >= size) break;
    let data: number;
    try {
      data = view.lseek(ino, hole, "data");
    } catch {
      data = size;
    }
    holes.push(`${hole}-${data}`);
    at = data;
  }
  return holes.join(",");
}

function expectSameSnapshot(a: GroveFs, nameA: string, b: GroveFs, nameB: string): void {
  const left = describeTree(a.snapshotView(nameA) as GroveFs);
  const right = describeTree(b.snapshotView(nameB) as GroveFs);
  expect([...right.keys()].sort()).toEqual([...left.keys()].sort());
  for (const [path, entry] of left) expect(right.get(path), path).toEqual(entry);
}

/** Physical extents of a snapshot's regular files, by ino: which files share blocks. */
function sharingOf(fs: GroveFs, name: string): string[] {
  const source = fs.sendSource(name);
  const owners = new Map<number, number[]>();
  for (const [key, value] of source.tree.range()) {
    if (key.length !== 8) continue;
    const ino = Number(key.readBigUInt64BE(0));
    if (ino === 0) continue;
    const inode = source.inodes.load(ino);
    if ((inode.mode & C.S_IFMT) !== C.S_IFREG || inode.kind === PayloadKind.Bytes || inode.nlink === 0) continue;
    void value;
    for (const item of source.inodes.mapOf(inode).range()) {
      const extent = decodeExtent(ino, item.key, item.value);
      if (isUnwritten(extent)) continue;
      // Block by block: a receiver may group slices into physical extents its own way.
      for (let i = 0; i < extent.blocks; i++) {
        const where = extent.extentLba * 1024 + extent.offset + i;
        const list = owners.get(where) ?? [];
        list.push(ino * 1e6 + extent.fileBlock + i);
        owners.set(where, list);
      }
    }
  }
  return [...owners.values()].filter((l) => l.length > 1).map((l) => l.sort((x, y) => x - y).join("+")).sort();
}

// ---- a random workload --------------------------------------------------------------

class Workload {
  private serial = 0;
  constructor(
    private readonly fs: GroveFs,
    private readonly rng: Prng,
  ) {}

  private all(type?: number): { ino: number; path: string; parent: number; name: Buffer }[] {
    const out: { ino: number; path: string; parent: number; name: Buffer }[] = [];
    const walk = (ino: number, path: string): void => {
      const names: { name: Buffer; ino: number }[] = [];
      this.fs.readdirIno(ino, undefined, (e) => (names.push({ name: e.name, ino: e.ino }), true));
      for (const e of names) {
        const s = e.name.toString("latin1");
        if (s === "." || s === "..") continue;
        const stat = this.fs.statIno(e.ino);
        if (type === undefined || (stat.mode & C.S_IFMT) === type) out.push({ ino: e.ino, path: `${path}/${s}`, parent: ino, name: e.name });
        if ((stat.mode & C.S_IFMT) === C.S_IFDIR) walk(e.ino, `${path}/${s}`);
      }
    };
    walk(1, "");
    return out;
  }

  private dir(): number {
    const dirs = this.all(C.S_IFDIR);
    return dirs.length === 0 || this.rng.chance(0.3) ? 1 : this.rng.pick(dirs).ino;
  }

  private newName(): Buffer {
    return Buffer.from(`n${this.serial++}`);
  }

  private data(length: number): Buffer {
    // Half compressible text, half random: both paths of the data.
    return this.rng.chance(0.5) ? Buffer.from("abcdefgh".repeat(Math.ceil(length / 8)).slice(0, length)) : this.rng.bytes(length);
  }

  step(): void {
    const fs = this.fs;
    const rng = this.rng;
    const files = this.all(C.S_IFREG);
    const op = rng.below(16);
    if (op <= 3 || files.length === 0) {
      const sizes = [0, 10, 3000, 4096, 9000, 70_000, 300_000];
      const size = rng.pick(sizes);
      const { fh } = fs.createAt(this.dir(), this.newName(), C.S_IFREG | 0o644, O_CREAT | O_RDWR, caller);
      const at = rng.chance(0.3) ? rng.below(5) * 65536 : 0;
      if (size > 0) fs.write(fh, this.data(size), size, at);
      fs.release(fh);
      return;
    }
    const file = rng.pick(files);
    switch (op) {
      case 4: {
        const size = fs.statIno(file.ino).size;
        const fh = fs.openIno(file.ino, O_RDWR);
        const n = 1 + rng.below(20_000);
        fs.write(fh, this.data(n), n, rng.below(size + 8192));
        fs.release(fh);
        return;
      }
      case 5:
        fs.setattr(file.ino, { size: rng.below(fs.statIno(file.ino).size + 100_000) });
        return;
      case 6:
        fs.mkdirAt(this.dir(), this.newName(), 0o755, caller);
        return;
      case 7: {
        const all = this.all();
        const moving = rng.pick(all);
        const into = this.dir();
        try {
          fs.renameAt(moving.parent, moving.name, into, this.newName());
        } catch {
          // Into itself: refused, nothing changed.
        }
        return;
      }
      case 8:
        fs.unlinkAt(file.parent, file.name);
        return;
      case 9:
        fs.linkAt(file.ino, this.dir(), this.newName());
        return;
      case 10:
        fs.symlinkAt(this.dir(), this.newName(), Buffer.from(`target-${rng.below(1000)}`), caller);
        return;
      case 11: {
        const kind = rng.pick([C.S_IFIFO, C.S_IFCHR, C.S_IFSOCK, C.S_IFBLK]);
        fs.mknodAt(this.dir(), this.newName(), kind | 0o640, kind === C.S_IFCHR || kind === C.S_IFBLK ? (8 << 8) | rng.below(200) : 0, caller);
        return;
      }
      case 12: {
        const all = [...this.all(C.S_IFREG), ...this.all(C.S_IFDIR)];
        const target = rng.pick(all);
        if (rng.chance(0.7)) fs.setxattrIno(target.ino, `user.k${rng.below(4)}`, rng.bytes(rng.below(300)), 0);
        else for (const name of fs.listxattrIno(target.ino)) fs.removexattrIno(target.ino, name);
        return;
      }
      case 13: {
        const all = this.all();
        const target = rng.pick(all);
        fs.setattr(target.ino, { mode: rng.below(0o1000), uid: rng.below(3) * 1000, gid: rng.below(3) * 100, mtime: BigInt(rng.below(1e9)) * 1000n + 7n, atime: "now" });
        return;
      }
      case 14: {
        // A reflink: whole blocks shared.
        const size = fs.statIno(file.ino).size;
        const { fh, stat } = fs.createAt(this.dir(), this.newName(), C.S_IFREG | 0o600, O_CREAT | O_RDWR, caller);
        fs.release(fh);
        fs.copyFileRange({ ino: file.ino }, 0, stat.ino, rng.chance(0.5) ? 0 : 4096, size);
        return;
      }
      default: {
        const dirs = this.all(C.S_IFDIR);
        if (dirs.length === 0) return;
        const dir = rng.pick(dirs);
        try {
          fs.rmdirAt(dir.parent, dir.name);
        } catch {
          // Not empty.
        }
      }
    }
  }
}

function names(fs: GroveFs): string {
  return fs.listSubvolumes().map((s) => `${s.name}:${s.id}:${s.readOnly}`).join(",");
}

// ---- tests ----------------------------------------------------------------------------

/**
 * The model-based runs: seeds on uncompressed volumes, and seeds whose sender
 * compresses (lz4 extents go as stored) into a receiver that does not (so
 * every compressed extent there came as stored, and the compressed figures
 * must be equal) or does too.
 */
const modelRuns: { seed: number; sender: CompressionName; receiver: CompressionName }[] = [
  ...seeds([1, 2, 3]).map((seed) => ({ seed, sender: "none" as const, receiver: "none" as const })),
  ...seeds([4, 5]).map((seed) => ({ seed, sender: "lz4" as const, receiver: "none" as const })),
  ...seeds([8]).map((seed) => ({ seed, sender: "lz4" as const, receiver: "lz4" as const })),
];

describe("send and receive", () => {
  for (const { seed, sender, receiver } of modelRuns) {
    const volumes = sender === "none" && receiver === "none" ? "" : ` (--compress ${sender} into --compress ${receiver})`;
    it(`seed ${seed}${volumes}: a chain of snapshots, full then incremental, arrives equal`, () => {
      withSeed(seed, testFile, () => {
        const a = fresh(32768, sender);
        const b = fresh(32768, receiver);
        const rng = new Prng(seed);
        const work = new Workload(a.fs, rng);
        let parent: string | undefined;
        let storedRecords = 0;
        for (let s = 0; s < snapshotsPerRun; s++) {
          for (let i = 0; i < opsPerSnapshot; i++) work.step();
          const name = `s${s}`;
          a.fs.createSubvolume(name, { readOnly: true });
          const bytes = streamOf(a.fs, name, parent);
          storedRecords += recordsOf(bytes).filter((r) => r.type === send.RecordType.Stored).length;
          const summary = send.receiveStream(b.fs, sourceOf(bytes));
          expect(summary.snapshot).toBe(name);
          expectSameSnapshot(a.fs, name, b.fs, name);
          expect(sharingOf(b.fs, name)).toEqual(sharingOf(a.fs, name));
          if (sender === "lz4" && receiver === "none") {
            // Every lz4 extent arrived as stored, each once: the same figures (the live subvolume adds none, it is the last snapshot).
            expect(b.fs.info().compressed).toEqual(a.fs.info().compressed);
          }
          parent = name;
        }
        if (sender === "lz4") expect(storedRecords).toBeGreaterThan(0);
        else expect(storedRecords).toBe(0);
        // Every earlier snapshot is still equal (the receives did not touch them).
        for (let s = 0; s < snapshotsPerRun; s++) expectSameSnapshot(a.fs, `s${s}`, b.fs, `s${s}`);
        expect(b.fs.partialReceives()).toEqual([]);
        closeAndCheck(a.fs, a.device);
        closeAndCheck(b.fs, b.device);
      });
    }, 120_000);
  }

  it("a reflink's shared last partial block stays shared when its source has grown since (seeds 1, 13, 16 at 150 ops)", () => {
    // The sender shares whole blocks from the parent's file, which has grown past the shared block:
    // the receiver shares three blocks and shrinks onto the last one, whose tail is zero already.
    const a = fresh();
    const b = fresh();
    const fs = a.fs;
    const data = Buffer.alloc(9000, 0x5a);
    const one = fs.createAt(1, Buffer.from("one"), C.S_IFREG | 0o644, O_CREAT | O_RDWR, caller);
    fs.write(one.fh, data, data.length, 0);
    fs.release(one.fh);
    fs.createSubvolume("s0", { readOnly: true });
    const two = fs.createAt(1, Buffer.from("two"), C.S_IFREG | 0o644, O_CREAT | O_RDWR, caller);
    fs.release(two.fh);
    fs.copyFileRange({ ino: one.stat.ino }, 0, two.stat.ino, 4096, data.length);
    fs.setattr(one.stat.ino, { size: 67_486 });
    fs.createSubvolume("s1", { readOnly: true });
    const three = fs.createAt(1, Buffer.from("three"), C.S_IFREG | 0o644, O_CREAT | O_RDWR, caller);
    fs.release(three.fh);
    fs.copyFileRange({ ino: two.stat.ino }, 0, three.stat.ino, 4096, 4096 + data.length);
    fs.createSubvolume("s2", { readOnly: true });
    expect(sharingOf(fs, "s2")).toContain(`${one.stat.ino * 1e6 + 2}+${two.stat.ino * 1e6 + 3}+${three.stat.ino * 1e6 + 4}`);
    let parent: string | undefined;
    for (const name of ["s0", "s1", "s2"]) {
      send.receiveStream(b.fs, sourceOf(streamOf(fs, name, parent)));
      expectSameSnapshot(fs, name, b.fs, name);
      expect(sharingOf(b.fs, name), name).toEqual(sharingOf(fs, name));
      parent = name;
    }
    closeAndCheck(a.fs, a.device);
    closeAndCheck(b.fs, b.device);
  });

  it("a truncate onto a shared last block whose tail is zero keeps it shared; a tail with bytes is unshared", () => {
    const a = fresh();
    const fs = a.fs;
    const src = fs.createAt(1, Buffer.from("src"), C.S_IFREG | 0o644, O_CREAT | O_RDWR, caller);
    fs.write(src.fh, Buffer.alloc(9000, 1), 9000, 0);
    fs.release(src.fh);
    for (const [name, size] of [["zero", 9000], ["bytes", 8500]] as const) {
      const dst = fs.createAt(1, Buffer.from(name), C.S_IFREG | 0o644, O_CREAT | O_RDWR, caller);
      fs.release(dst.fh);
      fs.copyFileRange({ ino: src.stat.ino }, 0, dst.stat.ino, 0, 9000);
      fs.setattr(dst.stat.ino, { size: 12_288 });
      fs.setattr(dst.stat.ino, { size });
    }
    fs.createSubvolume("snap", { readOnly: true });
    const sharing = sharingOf(fs, "snap");
    const [zero, bytes] = ["zero", "bytes"].map((n) => fs.lookup(1, Buffer.from(n)).ino);
    expect(sharing).toContain(`${src.stat.ino * 1e6 + 2}+${zero! * 1e6 + 2}`);
    expect(sharing.some((s) => s.includes(`${bytes! * 1e6 + 2}`))).toBe(false);
    const view = fs.snapshotView("snap");
    const back = Buffer.alloc(9000);
    const fh = view.openIno(bytes!, C.O_RDONLY);
    expect(view.read(fh, back, 9000, 0)).toBe(8500);
    view.release(fh);
    expect(back.subarray(0, 8500).every((x) => x === 1)).toBe(true);
    closeAndCheck(a.fs, a.device);
  });

  it("keeps hard links, special files, xattrs, holes, times and reflinks", () => {
    const a = fresh();
    const b = fresh();
    const fs = a.fs;
    const dir = fs.mkdirAt(1, Buffer.from("d"), 0o750, caller).ino;
    const { fh, stat } = fs.createAt(dir, Buffer.from("sparse"), C.S_IFREG | 0o644, O_CREAT | O_RDWR, caller);
    const block = Buffer.alloc(65536, 7);
    fs.write(fh, block, block.length, 0);
    fs.write(fh, block, block.length, 10 * 1024 * 1024);
    fs.release(fh);
    fs.linkAt(stat.ino, 1, Buffer.from("hard"));
    const copy = fs.createAt(1, Buffer.from("reflink"), C.S_IFREG | 0o644, O_CREAT | O_RDWR, caller);
    fs.release(copy.fh);
    fs.copyFileRange({ ino: stat.ino }, 0, copy.stat.ino, 0, fs.statIno(stat.ino).size);
    fs.mknodAt(dir, Buffer.from("fifo"), C.S_IFIFO | 0o600, 0, caller);
    fs.mknodAt(dir, Buffer.from("tty"), C.S_IFCHR | 0o620, (4 << 8) | 1, caller);
    fs.symlinkAt(dir, Buffer.from("link"), Buffer.from("../hard"), caller);
    fs.setxattrIno(stat.ino, "user.colour", Buffer.from("blue"), 0);
    fs.setattr(dir, { mtime: 123_456_789_123_456_789n, atime: 5n, uid: 1000, gid: 1000 });
    fs.createSubvolume("snap", { readOnly: true });
    send.receiveStream(b.fs, sourceOf(streamOf(fs, "snap")), { name: "copy" });
    expectSameSnapshot(fs, "snap", b.fs, "copy");
    const view = b.fs.snapshotView("copy");
    expect(view.lookup(1, Buffer.from("hard")).ino).toBe(view.lookup(dir, Buffer.from("sparse")).ino);
    expect(view.lookup(1, Buffer.from("hard")).nlink).toBe(2);
    expect(view.statIno(dir).mtimeNs).toBe(123_456_789_123_456_789n);
    expect(sharingOf(b.fs, "copy")).toEqual(sharingOf(fs, "snap"));
    expect(sharingOf(b.fs, "copy").length).toBeGreaterThan(0);
    // Holes stay holes: the received volume holds the data once, not the 10 MiB gap.
    const used = b.fs.info().usedBytes;
    expect(used).toBeLessThan(4 * 1024 * 1024);
    expect(b.fs.listSubvolumes().find((s) => s.name === "copy")!.readOnly).toBe(true);
    closeAndCheck(a.fs, a.device);
    closeAndCheck(b.fs, b.device);
  });

  it("the first receive sets the received-snapshots feature bit (older code would call its table keys unknown); the sender's volume stays without it", () => {
    const a = fresh();
    const b = fresh();
    a.fs.mkdirAt(1, Buffer.from("x"), 0o755, caller);
    a.fs.createSubvolume("s", { readOnly: true });
    expect(b.fs.store.hasFeature(featureReceivedSnapshots)).toBe(false);
    send.receiveStream(b.fs, sourceOf(streamOf(a.fs, "s")));
    expect(b.fs.store.hasFeature(featureReceivedSnapshots)).toBe(true);
    expect(a.fs.store.hasFeature(featureReceivedSnapshots)).toBe(false);
    closeAndCheck(a.fs, a.device);
    b.fs.close();
    const reopened = b.device.reopen();
    expectFsClean(reopened);
    const again = GroveFs.open(reopened, { clock: testClock() });
    expect(again.store.hasFeature(featureReceivedSnapshots)).toBe(true);
    again.close();
  });

  it("a send in steps (as a mount daemon runs it) writes the same stream, the tree comparison in steps too, and holds its snapshots from deletion until it ends", () => {
    const a = fresh();
    const fs = a.fs;
    const work = new Workload(fs, new Prng(11));
    for (let i = 0; i < 30; i++) work.step();
    fs.createSubvolume("one", { readOnly: true });
    for (let i = 0; i < 30; i++) work.step();
    fs.createSubvolume("two", { readOnly: true });
    const whole = streamOf(fs, "two", "one");
    const chunks: Buffer[] = [];
    const run = send.startSend(fs, "two", (c) => chunks.push(c), { parent: "one" });
    const release = fs.holdSubvolumes(["two", "one"]);
    let steps = 0;
    // Steps that wrote nothing: the comparison's (after the header, before the first change is known).
    let silent = 0;
    let silentBeforeSecondRecord = 0;
    while (!run.step(1)) {
      steps++;
      const written = chunks.length;
      if (written + silent < steps) {
        silent++;
        if (written === 1) silentBeforeSecondRecord++;
      }
      // Between steps the live subvolume changes, and the snapshots cannot go.
      if (steps % 5 === 0) work.step();
      if (steps === 3) for (const name of ["one", "two"]) expect(() => fs.deleteSubvolume(name)).toThrow(/being sent/);
    }
    release();
    expect(Buffer.concat(chunks).equals(whole)).toBe(true);
    expect(silent).toBeGreaterThan(0);
    expect(silentBeforeSecondRecord).toBe(silent);
    expect(run.summary.records).toBe(steps + 1 - silent);
    expect(run.summary.nodesRead).toBeGreaterThan(0);
    fs.deleteSubvolume("one");
    closeAndCheck(a.fs, a.device);
  });

  it("preallocated ranges arrive preallocated and crtimes as they were (stream version 2), full and incremental", () => {
    const a = fresh();
    const b = fresh();
    const fs = a.fs;
    const file = (name: string): number => {
      const { fh, stat } = fs.createAt(1, Buffer.from(name), C.S_IFREG | 0o644, O_CREAT | O_RDWR, caller);
      fs.release(fh);
      return stat.ino;
    };
    const one = file("one");
    fs.fallocate(one, 0, 0, 64 * 1024);
    const data = Buffer.alloc(10_000, 3);
    fs.write(fs.openIno(one, O_RDWR), data, data.length, 8192);
    const two = file("two");
    fs.write(fs.openIno(two, O_RDWR), data, data.length, 0);
    fs.fallocate(two, 1, 40_960, 32 * 1024); // KEEP_SIZE: past the end of file
    fs.setattr(two, { crtime: 1_234_567_890_123_456_789n });
    fs.createSubvolume("s0", { readOnly: true });
    // Incremental: a write into a preallocated range, a new range over data (ZERO_RANGE), one punched away.
    fs.write(fs.openIno(one, O_RDWR), data, data.length, 40_000);
    fs.fallocate(two, 0x10, 0, 8192); // ZERO_RANGE
    fs.fallocate(two, 0x03, 40_960, 32 * 1024); // PUNCH_HOLE | KEEP_SIZE
    const three = file("three");
    fs.fallocate(three, 0, 0, 20_000);
    fs.createSubvolume("s1", { readOnly: true });
    const unwritten = (volume: GroveFs, snap: string): string[] => {
      const source = volume.sendSource(snap);
      const out: string[] = [];
      for (const ino of [one, two, three]) {
        const inode = source.inodes.tryLoad(ino);
        if (inode === undefined || inode.kind === PayloadKind.Bytes) continue;
        for (const item of source.inodes.mapOf(inode).range()) {
          const extent = decodeExtent(ino, item.key, item.value);
          if (isUnwritten(extent)) out.push(`${ino}:${extent.fileBlock}+${extent.blocks}`);
        }
      }
      return out;
    };
    const crtimes = (volume: GroveFs, snap: string): bigint[] => [one, two, 1].map((ino) => volume.snapshotView(snap).statIno(ino).crtimeNs);
    let parent: string | undefined;
    for (const name of ["s0", "s1"]) {
      send.receiveStream(b.fs, sourceOf(streamOf(fs, name, parent)));
      expectSameSnapshot(fs, name, b.fs, name);
      expect(unwritten(b.fs, name).join(" "), name).toEqual(unwritten(fs, name).join(" "));
      expect(crtimes(b.fs, name), name).toEqual(crtimes(fs, name));
      parent = name;
    }
    expect(unwritten(fs, "s0").length).toBeGreaterThan(1);
    expect(unwritten(fs, "s1")).not.toEqual(unwritten(fs, "s0"));
    expect(b.fs.snapshotView("s0").statIno(two).crtimeNs).toBe(1_234_567_890_123_456_789n);
    closeAndCheck(a.fs, a.device);
    closeAndCheck(b.fs, b.device);
  });

  it("a version 1 stream (an older grovefs's: no preallocated ranges, attrs without crtime) is still received", () => {
    const a = fresh();
    const b = fresh();
    const work = new Workload(a.fs, new Prng(21));
    for (let i = 0; i < 40; i++) work.step();
    a.fs.createSubvolume("old", { readOnly: true });
    const records: send.StreamRecord[] = [];
    const reader = new send.StreamReader(sourceOf(streamOf(a.fs, "old")));
    for (;;) {
      const record = reader.next();
      if (record.type === send.RecordType.End) break;
      if (record.type === send.RecordType.Attr) delete record.attrs.crtimeNs;
      records.push(record);
    }
    const chunks: Buffer[] = [];
    const writer = new send.StreamWriter((c) => chunks.push(c), undefined, 1);
    for (const record of records) writer.write(record);
    writer.end();
    const v1 = Buffer.concat(chunks);
    expect(v1.readUInt16LE(send.recordHeaderBytes + 8)).toBe(1);
    send.receiveStream(b.fs, sourceOf(v1));
    expectSameSnapshot(a.fs, "old", b.fs, "old");
    closeAndCheck(a.fs, a.device);
    closeAndCheck(b.fs, b.device);
  });

  it("a version 2 stream (before stored extents) is still received; a version 2 writer cannot carry a stored extent", () => {
    const a = fresh();
    const b = fresh();
    const work = new Workload(a.fs, new Prng(22));
    for (let i = 0; i < 40; i++) work.step();
    a.fs.createSubvolume("old", { readOnly: true });
    const chunks: Buffer[] = [];
    const writer = new send.StreamWriter((c) => chunks.push(c), undefined, 2);
    for (const record of recordsOf(streamOf(a.fs, "old"))) writer.write(record);
    writer.end();
    const v2 = Buffer.concat(chunks);
    expect(v2.readUInt16LE(send.recordHeaderBytes + 8)).toBe(2);
    send.receiveStream(b.fs, sourceOf(v2));
    expectSameSnapshot(a.fs, "old", b.fs, "old");
    const stored = { type: send.RecordType.Stored, ino: 2, offset: 0, stored: { unitBlocks: 2, offset: 0, blocks: 2, data: Buffer.alloc(10), crcs: Buffer.alloc(4) } } as const;
    expect(() => send.encodeRecord(stored, 2)).toThrow(/no stored extents/);
    closeAndCheck(a.fs, a.device);
    closeAndCheck(b.fs, b.device);
  });

  it("refuses an incremental stream whose parent is not there, and a name that is taken", () => {
    const a = fresh();
    const b = fresh();
    a.fs.createSubvolume("one", { readOnly: true });
    a.fs.mkdirAt(1, Buffer.from("x"), 0o755, caller);
    a.fs.createSubvolume("two", { readOnly: true });
    const incremental = streamOf(a.fs, "two", "one");
    expect(() => send.receiveStream(b.fs, sourceOf(incremental))).toThrow(/parent snapshot is not on this volume/);
    send.receiveStream(b.fs, sourceOf(streamOf(a.fs, "one")));
    expect(() => send.receiveStream(b.fs, sourceOf(streamOf(a.fs, "one")))).toThrow(/exists/);
    send.receiveStream(b.fs, sourceOf(incremental));
    expectSameSnapshot(a.fs, "two", b.fs, "two");
    closeAndCheck(a.fs, a.device);
    closeAndCheck(b.fs, b.device);
  });
});

describe("damaged streams", () => {
  /** Record boundaries of a stream, by its headers' lengths. */
  function boundaries(bytes: Buffer): number[] {
    const out: number[] = [];
    let at = 0;
    while (at < bytes.length) {
      out.push(at);
      at += send.recordHeaderBytes + bytes.readUInt32LE(at + 4) + send.recordCrcBytes;
    }
    return out;
  }

  it("a stream cut at any record boundary, or with any of many single bytes flipped, is refused and changes nothing", () => {
    withSeed(7, testFile, () => {
      const a = fresh();
      const b = fresh();
      const rng = new Prng(7);
      const work = new Workload(a.fs, rng);
      for (let i = 0; i < 40; i++) work.step();
      a.fs.createSubvolume("base", { readOnly: true });
      send.receiveStream(b.fs, sourceOf(streamOf(a.fs, "base")));
      for (let i = 0; i < 30; i++) work.step();
      a.fs.createSubvolume("next", { readOnly: true });
      const bytes = streamOf(a.fs, "next", "base");
      const before = names(b.fs);
      const usedBefore = b.fs.info().usedBytes;
      const cuts = boundaries(bytes);
      expect(cuts.length).toBeGreaterThan(5);
      for (const cut of [...cuts.slice(1), bytes.length - 1]) {
        expect(() => send.receiveStream(b.fs, sourceOf(bytes.subarray(0, cut))), `cut at ${cut}`).toThrow(/cut short/);
        expect(names(b.fs)).toBe(before);
        // What arrived is kept hidden, to resume; abandoned here.
        for (const partial of b.fs.partialReceives()) b.fs.abortReceive(partial.name);
      }
      const flips = Number(process.env.GROVE_SEND_FLIPS ?? 60);
      for (let i = 0; i < flips; i++) {
        const damaged = Buffer.from(bytes);
        const at = rng.below(damaged.length);
        damaged[at] ^= 1 << rng.below(8);
        expect(() => send.receiveStream(b.fs, sourceOf(damaged)), `flip at ${at}`).toThrow();
        expect(names(b.fs)).toBe(before);
        expect(b.fs.partialReceives()).toEqual([]);
      }
      b.fs.finishDeletions();
      // Every refused receive's space came back.
      expect(b.fs.info().usedBytes).toBeLessThanOrEqual(usedBefore + 64 * 1024);
      send.receiveStream(b.fs, sourceOf(bytes));
      expectSameSnapshot(a.fs, "next", b.fs, "next");
      closeAndCheck(a.fs, a.device);
      closeAndCheck(b.fs, b.device);
    });
  }, 120_000);

  it("a stored lz4 record that does not hold together (bytes against crcs, length prefix, decompressed length, a reference) is refused and changes nothing", () => {
    const a = fresh(32768, "lz4");
    const b = fresh();
    const text = Buffer.from("compressible text, compressible text. ".repeat(2000)).subarray(0, 65536);
    for (let i = 0; i < 3; i++) {
      const { fh } = a.fs.createAt(1, Buffer.from(`f${i}`), C.S_IFREG | 0o644, O_CREAT | O_RDWR, caller);
      a.fs.write(fh, text, text.length, 0);
      if (i === 1) {
        a.fs.fsyncAll();
        a.fs.write(fh, Buffer.alloc(4096, 1), 4096, 8192); // written out over block 2: the extent now holds two slices
      }
      a.fs.release(fh);
    }
    a.fs.createSubvolume("s", { readOnly: true });
    const records = recordsOf(streamOf(a.fs, "s"));
    const stored = records.filter((r) => r.type === send.RecordType.Stored);
    expect(stored.some((r) => r.again === undefined)).toBe(true);
    expect(stored.some((r) => r.again !== undefined)).toBe(true);
    const resealed = (change: (r: Extract<send.StreamRecord, { type: send.RecordType.Stored }>) => void, which: (r: send.StreamRecord) => boolean): Buffer => {
      const chunks: Buffer[] = [];
      const writer = new send.StreamWriter((chunk) => chunks.push(chunk));
      let done = false;
      for (const record of records) {
        if (!done && record.type === send.RecordType.Stored && which(record)) {
          const copy = { ...record, stored: { ...record.stored, data: Buffer.from(record.stored.data), crcs: Buffer.from(record.stored.crcs) } };
          change(copy);
          writer.write(copy);
          done = true;
        } else writer.write(record);
      }
      writer.end();
      expect(done).toBe(true);
      return Buffer.concat(chunks);
    };
    const first = (r: send.StreamRecord): boolean => r.type === send.RecordType.Stored && r.again === undefined;
    const again = (r: send.StreamRecord): boolean => r.type === send.RecordType.Stored && r.again !== undefined;
    const bad: [string, Buffer, RegExp][] = [
      ["a byte of the compressed data", resealed((r) => (r.stored.data[r.stored.data.length - 1] ^= 0x10), first), /does not match its crc/],
      ["a crc", resealed((r) => (r.stored.crcs[0] ^= 1), first), /does not match its crc/],
      ["the unit size", resealed((r) => (r.stored.unitBlocks = 4), first), /unit of 4/],
      [
        "the length prefix (crcs resealed too)",
        resealed((r) => {
          r.stored.data.writeUInt32LE(r.stored.data.readUInt32LE(0) - 4096, 0);
          const block = Buffer.alloc(4096);
          r.stored.data.copy(block, 0, 0, Math.min(4096, r.stored.data.length));
          r.stored.crcs.writeUInt32LE(crc32c(block), 0);
        }, first),
        /length prefix/,
      ],
      ["the slice past its unit", resealed((r) => (r.stored.offset = r.stored.unitBlocks), first), /outside a unit/],
      ["a reference to where no such extent is", resealed((r) => (r.again!.offset += 4096 * 40), again), /holds no such compressed extent/],
      ["a reference with other crcs", resealed((r) => (r.stored.crcs[0] ^= 1), again), /holds no such compressed extent/],
    ];
    const before = names(b.fs);
    expect(b.fs.store.hasFeature(featureCompressLz4)).toBe(false);
    for (const [what, bytes, why] of bad) {
      expect(() => send.receiveStream(b.fs, sourceOf(bytes)), what).toThrow(why);
      expect(names(b.fs), what).toBe(before);
      expect(b.fs.partialReceives(), what).toEqual([]);
    }
    // The refused receives' hidden subvolumes are gone, their extents freed and uncounted.
    b.fs.finishDeletions();
    expect(b.fs.info().compressed.extents).toBe(0);
    // The same stream whole arrives; the lz4 feature bit is set on a volume that had none, as a compressed write sets it.
    send.receiveStream(b.fs, sourceOf(streamOf(a.fs, "s")));
    expect(b.fs.store.hasFeature(featureCompressLz4)).toBe(true);
    expectSameSnapshot(a.fs, "s", b.fs, "s");
    expect(b.fs.info().compressed).toEqual(a.fs.info().compressed);
    closeAndCheck(a.fs, a.device);
    closeAndCheck(b.fs, b.device);
  });

  it("refuses a wrong version and a foreign stream with their own words", () => {
    const a = fresh();
    const b = fresh();
    a.fs.createSubvolume("s", { readOnly: true });
    const bytes = streamOf(a.fs, "s");
    expect(() => send.receiveStream(b.fs, sourceOf(Buffer.from("not a stream at all, really")))).toThrow();
    const wrongVersion = Buffer.from(bytes);
    wrongVersion.writeUInt16LE(9, send.recordHeaderBytes + 8);
    // Re-seal the header record's crc, so that only the version is wrong.
    const length = wrongVersion.readUInt32LE(4);
    const { crc32c } = require("@node-rs/crc32") as { crc32c: (b: Buffer) => number };
    wrongVersion.writeUInt32LE(crc32c(wrongVersion.subarray(0, send.recordHeaderBytes + length)) >>> 0, send.recordHeaderBytes + length);
    expect(() => send.receiveStream(b.fs, sourceOf(wrongVersion))).toThrow(/version 9/);
    closeAndCheck(a.fs, a.device);
    closeAndCheck(b.fs, b.device);
  });
});

describe("resumable receive", () => {
  const runs = [...seeds([6, 7]).map((seed) => ({ seed, compression: "none" as const })), ...seeds([9]).map((seed) => ({ seed, compression: "lz4" as const }))];
  for (const { seed, compression } of runs) {
    const volumes = compression === "none" ? "" : " (--compress lz4 into --compress none)";
    it(`seed ${seed}${volumes}: receives cut at random points, each resumed with its token, end identical; abort frees every block`, () => {
      withSeed(seed, testFile, () => {
        const a = fresh(32768, compression);
        const b = fresh();
        const rng = new Prng(seed);
        const work = new Workload(a.fs, rng);
        for (let i = 0; i < opsPerSnapshot; i++) work.step();
        a.fs.createSubvolume("base", { readOnly: true });
        send.receiveStream(b.fs, sourceOf(streamOf(a.fs, "base")));
        for (let i = 0; i < opsPerSnapshot; i++) work.step();
        a.fs.createSubvolume("next", { readOnly: true });
        for (const parent of [undefined, "base"]) {
          const name = parent === undefined ? "full" : "incremental";
          const bytes = streamOf(a.fs, "next", parent);
          // The first piece is cut anywhere; each resumed piece is cut again, until one gets through.
          let piece = bytes.subarray(0, 1 + rng.below(bytes.length - 1));
          for (let round = 0; ; round++) {
            try {
              send.receiveStream(b.fs, sourceOf(piece), { name });
              break;
            } catch (error) {
              expect(String(error)).toMatch(/cut short/);
            }
            const partial = send.partialNameFor(name);
            const token = send.resumeTokenOf(b.fs, partial);
            expect(b.fs.listSubvolumes().some((s) => s.name === name)).toBe(false);
            if (token === undefined) {
              // Cut inside the header: nothing to resume.
              b.fs.abortReceive(partial);
              piece = bytes;
              continue;
            }
            const chunks: Buffer[] = [];
            send.sendSnapshot(a.fs, "next", (c) => chunks.push(c), { parent, resume: send.decodeResumeToken(token) });
            const rest = Buffer.concat(chunks);
            piece = round < 3 && rng.chance(0.7) ? rest.subarray(0, 1 + rng.below(rest.length - 1)) : rest;
          }
          expectSameSnapshot(a.fs, "next", b.fs, name);
          expect(sharingOf(b.fs, name)).toEqual(sharingOf(a.fs, "next"));
        }
        // A token for the wrong state is refused; abort frees every block the partial receive took.
        b.fs.finishDeletions();
        b.fs.sync();
        const used = b.fs.info().usedBytes;
        expect(() => send.receiveStream(b.fs, sourceOf(streamOf(a.fs, "next").subarray(0, 50_000)), { name: "dropped" })).toThrow(/cut short/);
        b.fs.abortReceive(send.partialNameFor("dropped"));
        b.fs.finishDeletions();
        b.fs.sync();
        expect(b.fs.info().usedBytes).toBe(used);
        expect(b.fs.partialReceives()).toEqual([]);
        closeAndCheck(a.fs, a.device);
        closeAndCheck(b.fs, b.device);
      });
    }, 120_000);
  }
});

describe("a receive fed a chunk at a time (a mount daemon's)", () => {
  it("applies records as they arrive, in chunks of any size, to the same snapshot; a stream that stops early is kept to resume", () => {
    withSeed(10, testFile, () => {
      const a = fresh(32768, "lz4");
      const b = fresh();
      const rng = new Prng(10);
      const work = new Workload(a.fs, rng);
      for (let i = 0; i < 40; i++) work.step();
      a.fs.createSubvolume("base", { readOnly: true });
      const bytes = streamOf(a.fs, "base");
      const push = new send.ReceivePush(b.fs);
      let at = 0;
      let done = false;
      while (at < bytes.length) {
        const n = 1 + rng.below(rng.chance(0.5) ? 64 : 200_000);
        push.push(bytes.subarray(at, at + n));
        at += n;
        done = push.step(1 + rng.below(5));
        // Nothing is published before the end record has arrived.
        if (at < bytes.length) expect(done).toBe(false);
      }
      const summary = push.end();
      expect(summary).toMatchObject({ snapshot: "base", records: recordsOf(bytes).length + 1, bytes: bytes.length });
      expectSameSnapshot(a.fs, "base", b.fs, "base");
      for (let i = 0; i < 20; i++) work.step();
      a.fs.createSubvolume("next", { readOnly: true });
      const next = streamOf(a.fs, "next", "base");
      const cut = new send.ReceivePush(b.fs);
      cut.push(next.subarray(0, Math.floor(next.length / 2)));
      cut.step(Number.MAX_SAFE_INTEGER);
      expect(() => cut.end()).toThrow(/cut short/);
      const [partial] = b.fs.partialReceives();
      expect(partial).toBeDefined();
      const token = send.decodeResumeToken(send.resumeTokenOf(b.fs, partial!.name)!);
      const chunks: Buffer[] = [];
      send.sendSnapshot(a.fs, "next", (c) => chunks.push(c), { parent: "base", resume: token });
      const resumed = new send.ReceivePush(b.fs);
      resumed.push(Buffer.concat(chunks));
      expect(resumed.step(Number.MAX_SAFE_INTEGER)).toBe(true);
      resumed.end();
      expectSameSnapshot(a.fs, "next", b.fs, "next");
      expect(b.fs.partialReceives()).toEqual([]);
      closeAndCheck(a.fs, a.device);
      closeAndCheck(b.fs, b.device);
    });
  });
});

describe("tree diff", () => {
  it("reads only the nodes on the paths to what changed", () => {
    const a = fresh();
    const fs = a.fs;
    for (let i = 0; i < 3000; i++) fs.mkdirAt(1, Buffer.from(`dir-${i}`), 0o755, caller);
    fs.createSubvolume("before", { readOnly: true });
    fs.mkdirAt(1, Buffer.from("one-more"), 0o755, caller);
    fs.setattr(fs.lookup(1, Buffer.from("dir-1500")).ino, { mode: 0o700 });
    fs.createSubvolume("after", { readOnly: true });
    const x = fs.sendSource("before");
    const y = fs.sendSource("after");
    const changed: number[] = [];
    const stats = diffTrees(x.tree, y.tree, (c) => changed.push(Number(c.key.readBigUInt64BE(0))));
    const records = [...new Set(changed)].filter((ino) => ino > 0);
    expect(records).toContain(1);
    expect(records).toContain(fs.lookup(1, Buffer.from("dir-1500")).ino);
    expect(records).toContain(fs.lookup(1, Buffer.from("one-more")).ino);
    expect(records.length).toBeLessThanOrEqual(4);
    // The inode tree has well over a hundred leaves; the diff reads a handful of paths.
    let leaves = 0;
    for (const _ of x.tree.range()) leaves++;
    expect(leaves).toBeGreaterThan(3000);
    expect(stats.nodesRead).toBeLessThan(30);
    const plan = send.findChanges(x, y);
    expect(plan.created).toEqual([fs.lookup(1, Buffer.from("one-more")).ino]);
    closeAndCheck(a.fs, a.device);
  });
});
