/**
 * fsck's logical pass carries each subvolume's facts over to the next one
 * through the tree diff (fs/check.ts, FsWalk.advance) instead of walking
 * every snapshot whole. It must find exactly what the whole walk finds:
 * seeded random workloads with many snapshots and clones, then logical damage
 * made in some of them through the library (wrong link counts, dangling and
 * mistyped entries, missing and stale orphan keys, stray extended-attribute
 * chunks, a counter too low), checked both ways and compared.
 *
 * GROVE_SEED=<n> replays one seed; GROVE_CHECK_SNAPSHOTS=<n> sets the
 * snapshots per seed (default 12).
 */
import { describe, expect, it } from "vitest";
import { GroveFs, checkFilesystem, type FsReport } from "../fs/index.js";
import { fsEdges } from "../fs/edges.js";
import { decodeInode, decodeItems, encodeDirent, encodeInode, encodeItems, inodeKey, orphanKey, PayloadKind, countersKey } from "../fs/format.js";
import { SimDevice } from "../kvstore/index.js";
import { Prng } from "../kvstore/prng.js";
import { openVolume } from "../snapshot/index.js";
import { O_RDWR, fileExtents, pattern, root, writeFile } from "./fs_helpers.js";
import { seeds, withSeed } from "./helpers.js";

const snapshotsPerSeed = Number(process.env.GROVE_CHECK_SNAPSHOTS ?? 12);
const S_IFREG = 0o100000;

function summary(report: FsReport): { problems: string[]; fixes: string[]; inodes: number; directories: number; prealloc: number } {
  return {
    problems: [...report.problems].sort(),
    fixes: report.fixes.map((f) => JSON.stringify(f)).sort(),
    inodes: report.inodes,
    directories: report.directories,
    prealloc: report.preallocatedExtents,
  };
}

function workload(g: GroveFs, rng: Prng, live: string[], dirs: string[], serial: { n: number }, ops: number): void {
  for (let i = 0; i < ops; i++) {
    const r = rng.below(100);
    try {
      if (r < 30 || live.length === 0) {
        const p = `${dirs[rng.below(dirs.length)]}/f${serial.n++}`;
        writeFile(g, p, pattern(rng.below(3) === 0 ? 9000 : 1 + rng.below(300), serial.n));
        live.push(p);
      } else if (r < 40) {
        const p = `/d${serial.n++}`;
        g.mkdir(p, 0o755, root);
        dirs.push(p);
      } else if (r < 55) {
        const at = rng.below(live.length);
        g.unlink(live[at]!);
        live.splice(at, 1);
      } else if (r < 65) {
        const p = `${dirs[rng.below(dirs.length)]}/l${serial.n++}`;
        g.link(live[rng.below(live.length)]!, p);
        live.push(p);
      } else if (r < 75) {
        const at = rng.below(live.length);
        const to = `${dirs[rng.below(dirs.length)]}/r${serial.n++}`;
        g.rename(live[at]!, to);
        live[at] = to;
      } else if (r < 85) {
        const fh = g.open(live[rng.below(live.length)]!, O_RDWR);
        g.write(fh, pattern(4096, serial.n++), 4096, rng.below(5) * 4096);
        g.release(fh);
      } else if (r < 90) {
        g.truncate(live[rng.below(live.length)]!, rng.below(10_000));
      } else if (r < 95) {
        g.setxattr(live[rng.below(live.length)]!, `user.k${rng.below(4)}`, pattern(1 + rng.below(100), serial.n++), 0);
      } else {
        g.fallocate(g.inoOf(live[rng.below(live.length)]!), 0, 0, 8192 + rng.below(4) * 4096);
      }
    } catch (error) {
      const code = (error as { code?: string }).code;
      if (code !== "ENOENT" && code !== "EEXIST" && code !== "EISDIR" && code !== "EOPNOTSUPP") throw error;
    }
  }
}

/** A formatted volume of `blocks` blocks, reopened, and a GroveFs on it. */
function freshVolume(blocks: number): { device: SimDevice; g: GroveFs } {
  const formatted = new SimDevice(blocks);
  GroveFs.format(formatted, {});
  const device = formatted.reopen();
  return { device, g: GroveFs.open(device) };
}

/** Logical damage in subvolume tree `id`: one of several kinds, chosen by `rng`. */
/** Returns what it did and the device to go on with (the volume closed its own). */
function damage(device: SimDevice, id: number, rng: Prng): { what: string; device: SimDevice } {
  const v = openVolume(device, { edges: fsEdges });
  try {
    const tree = v.store.openTree(id);
    const inodes: Array<{ ino: number; dir: boolean; inline: boolean }> = [];
    for (const [key, value] of tree.range()) {
      if (key.length !== 8 || key.equals(countersKey)) continue;
      const ino = Number(key.readBigUInt64BE(0));
      const inode = decodeInode(ino, value);
      inodes.push({ ino, dir: (inode.mode & 0o170000) === 0o040000, inline: inode.kind === PayloadKind.Items });
    }
    const pick = <T>(list: T[]): T => list[rng.below(list.length)]!;
    const edit = (ino: number, change: (inode: ReturnType<typeof decodeInode>) => void): void => {
      const inode = decodeInode(ino, tree.get(inodeKey(ino))!);
      change(inode);
      tree.put(inodeKey(ino), encodeInode(inode));
    };
    const kind = rng.below(6);
    let what: string;
    if (kind === 0) {
      const victim = pick(inodes.filter((i) => !i.dir));
      edit(victim.ino, (inode) => (inode.nlink += 1));
      what = `nlink of ${victim.ino}`;
    } else if (kind === 1) {
      const dir = pick(inodes.filter((i) => i.dir && i.inline));
      edit(dir.ino, (inode) => {
        const items = decodeItems(dir.ino, inode.payload);
        items.push({ key: Buffer.from(`zz-dangling-${rng.below(1000)}`), value: encodeDirent(999_999, S_IFREG) });
        items.sort((a, b) => Buffer.compare(a.key, b.key));
        inode.payload = encodeItems(items);
      });
      what = `dangling entry in ${dir.ino}`;
    } else if (kind === 2) {
      const victim = pick(inodes.filter((i) => !i.dir));
      tree.put(orphanKey(victim.ino), Buffer.alloc(0));
      what = `orphan key of named ${victim.ino}`;
    } else if (kind === 3) {
      const victim = pick(inodes.filter((i) => !i.dir));
      edit(victim.ino, (inode) => (inode.blocks += 3));
      what = `blocks of ${victim.ino}`;
    } else if (kind === 4) {
      const key = Buffer.concat([inodeKey(888_888), Buffer.from([1, 2, 3])]);
      tree.put(key, Buffer.from("stray"));
      what = "xattr chunk of a missing inode";
    } else {
      const dir = pick(inodes.filter((i) => i.dir && i.ino !== 1));
      edit(dir.ino, (inode) => (inode.parent = 424_242));
      what = `parent of ${dir.ino}`;
    }
    v.store.commit({ force: true });
    return { what, device };
  } finally {
    v.store.close();
  }
}

describe("fsck's incremental logical pass", () => {
  for (const seed of seeds([1, 2, 3])) {
    it(`seed ${seed}: finds what the whole walk finds, over snapshots, clones and damage in some of them`, () => {
      withSeed(seed, "test/check_incremental.test.ts", () => {
        const rng = new Prng(seed);
        const fresh = freshVolume(16384);
        let device = fresh.device;
        const g = fresh.g;
        const live: string[] = [];
        const dirs = ["", "/a", "/b"];
        g.mkdir("/a", 0o755, root);
        g.mkdir("/b", 0o755, root);
        const serial = { n: 0 };
        workload(g, rng, live, dirs, serial, 150);
        const ids: number[] = [];
        for (let s = 0; s < snapshotsPerSeed; s++) {
          workload(g, rng, live, dirs, serial, 5 + rng.below(30));
          const readOnly = rng.below(4) !== 0;
          ids.push(g.createSubvolume(`s${s}`, { readOnly }).id);
        }
        g.close();
        device = device.reopen();
        // Undamaged: both ways clean, and the same counts.
        const cleanFull = summary(checkFilesystem(device, { verifyData: true, incremental: false }));
        const cleanIncr = summary(checkFilesystem(device, { verifyData: true }));
        expect(cleanFull.problems).toEqual([]);
        expect(cleanIncr).toEqual(cleanFull);
        // Damage a few subvolumes (the default among them), then compare again.
        const damaged: string[] = [];
        for (const id of [256, ...ids.filter(() => rng.below(3) === 0)]) {
          const done = damage(device, id, rng);
          damaged.push(`${id}: ${done.what}`);
          device = done.device.reopen();
        }
        // And damaged data: the first block of a few data extents, shared by snapshots or not.
        // Written (not preallocated) extents of files of the default subvolume, many shared with snapshots.
        const reader = GroveFs.open(device.reopen(), { readOnly: true });
        const written = live
          .filter(() => rng.below(4) === 0)
          .flatMap((p) => fileExtents(device.reopen(), reader.inoOf(p)).filter((e) => e.preallocatedIn === undefined))
          .map((e) => e.lba);
        reader.close();
        const hit = new Set<number>();
        for (let i = 0; i < 3 && written.length > 0; i++) hit.add(written[rng.below(written.length)]!);
        for (const lba of hit) {
          device.write(lba, Buffer.alloc(4096, 0xa5));
          damaged.push(`data block ${lba}`);
        }
        device.flush();
        const full = summary(checkFilesystem(device, { verifyData: true, incremental: false }));
        const incr = summary(checkFilesystem(device, { verifyData: true }));
        // Each damaged data block is reported (once per distinct slice of it that records name).
        for (const lba of hit) {
          const named = full.problems.filter((p) => new RegExp(`data blocks? (\\d+, )*${lba}\\b.* fails? (its|their) checksum`).test(p));
          expect(named.length, `${damaged.join("\n")}\n${full.problems.join("\n")}`).toBeGreaterThan(0);
        }
        expect(full.problems.length, damaged.join("\n")).toBeGreaterThan(1);
        expect(incr, damaged.join("\n")).toEqual(full);
      });
    }, 120_000);
  }

  it("a snapshot whose every inode changed since the one before: carried over, compacted, and agreeing with the whole walk", () => {
    const fresh = freshVolume(16384);
    let device = fresh.device;
    const g = fresh.g;
    const files = 1100;
    for (let i = 0; i < files; i++) writeFile(g, `/f${i}`, pattern(1 + (i % 200), i));
    // Small directories, for the damage that needs one.
    for (const dir of ["/a", "/b"]) {
      g.mkdir(dir, 0o755, root);
      writeFile(g, `${dir}/x`, pattern(100, 1));
    }
    const snap = g.createSubvolume("before", { readOnly: true }).id;
    // Every inode record of the snapshot changes, a few files go and more come, so the snapshot's
    // walk, carried over from the default subvolume by the tree diff, kills more slots (1,500) than
    // it keeps (1,101), and re-adds its inodes out of order: the facts are compacted at its finish.
    for (let i = 0; i < files; i++) g.chmod(`/f${i}`, 0o600);
    for (let i = 0; i < 10; i++) g.unlink(`/f${i * 7}`);
    for (let i = 0; i < 410; i++) writeFile(g, `/n${i}`, pattern(1 + i, i));
    g.close();
    device = device.reopen();
    const clean = summary(checkFilesystem(device, { verifyData: true }));
    expect(clean.problems).toEqual([]);
    expect(clean).toEqual(summary(checkFilesystem(device, { verifyData: true, incremental: false })));
    expect(clean.inodes).toBe(files + 5 + (files - 10 + 410 + 5));
    // Damage found in the snapshot must name the snapshot's inodes, not the default subvolume's.
    const rng = new Prng(7);
    for (let i = 0; i < 3; i++) device = damage(device, snap, rng).device.reopen();
    device = damage(device, 256, rng).device.reopen();
    const full = summary(checkFilesystem(device, { verifyData: true, incremental: false }));
    const incr = summary(checkFilesystem(device, { verifyData: true }));
    expect(full.problems.length).toBeGreaterThan(1);
    expect(incr).toEqual(full);
  }, 120_000);

  it("the counts that share a field (a directory's subdirectories, a file's unwritten extents) and a directory's parent field are reported exactly, in a snapshot too", () => {
    const fresh = freshVolume(4096);
    let device = fresh.device;
    const g = fresh.g;
    for (const dir of ["/p", "/p/c1", "/p/c2", "/q"]) g.mkdir(dir, 0o755, root);
    writeFile(g, "/p/file", pattern(100, 1));
    g.fallocate(g.inoOf("/p/file"), 0, 0, 3 * 4096);
    const c2 = g.inoOf("/p/c2");
    const q = g.inoOf("/q");
    const p = g.inoOf("/p");
    g.createSubvolume("snap", { readOnly: true });
    g.close();
    device = device.reopen();
    const clean = checkFilesystem(device);
    expect(clean.problems).toEqual([]);
    expect(clean.preallocatedExtents).toBeGreaterThan(0);
    const prealloc = clean.preallocatedExtents;
    // Both subvolumes: c2's record says it lives in /q; /p's nlink is one too many.
    for (const id of [256, clean.snapshots.live.find((r) => r.name === "snap")!.id]) {
      const v = openVolume(device, { edges: fsEdges });
      const tree = v.store.openTree(id);
      const edit = (ino: number, change: (inode: ReturnType<typeof decodeInode>) => void): void => {
        const inode = decodeInode(ino, tree.get(inodeKey(ino))!);
        change(inode);
        tree.put(inodeKey(ino), encodeInode(inode));
      };
      edit(c2, (inode) => (inode.parent = q));
      edit(p, (inode) => (inode.nlink += 1));
      v.store.commit({ force: true });
      v.store.close();
      device = device.reopen();
    }
    for (const incremental of [true, false]) {
      const report = checkFilesystem(device, { incremental });
      const expected = [`inode ${p}: nlink 5, but 4 links exist`, `inode ${c2}: parent field ${q} but it lives in ${p}`];
      expect([...report.problems].sort()).toEqual([...expected, ...expected.map((e) => `subvolume "snap": ${e}`)].sort());
      expect(report.preallocatedExtents).toBe(prealloc);
    }
  });
});
