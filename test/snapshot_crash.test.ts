/**
 * Crash simulation around snapshots: a seeded workload writes files, takes
 * snapshots and clones, rewrites and unlinks files, and deletes subvolumes a
 * node or so at a time with a commit after each step, on a simulated device
 * that loses power at its Nth block write or flush. Unflushed writes are
 * then kept, dropped or torn at random, and the volume is reopened. It must:
 *
 * - pass the full checker (refcounts recomputed by a full walk, data
 *   checksums, the partly deleted trees walked from their progress key);
 * - show exactly the state of the last commit: every subvolume's name, kind
 *   and file contents, recorded after each commit of an uncrashed run;
 * - finish the interrupted deletions on the next open and stay clean.
 *
 * The lz4 seed runs the same workload on a volume formatted with lz4 as its
 * default and writes compressible bytes, so that snapshots share compressed
 * extents, rewrites cut them, and deletions free them (each free moving the
 * superblock's compressed-extent counters, which the checker compares with
 * a walk).
 *
 * Replay a seed with GROVE_SEED=n; GROVE_CRASH_POINTS bounds the points tested.
 */
import { createHash } from "node:crypto";
import { describe, expect, it } from "vitest";
import { Prng, SimDevice, SimulatedCrash, readSuperblock } from "../kvstore/index.js";
import { GroveFs, type FileSystemOps, type GroveFsOptions } from "../fs/index.js";
import { seeds, withSeed } from "./helpers.js";
import { O_CREAT, O_RDWR, compressionCensus, expectFsClean, mixedCompressible, pattern, readFile, testClock } from "./fs_helpers.js";

const testFile = "test/snapshot_crash.test.ts";
const deviceBlocks = 8192;
const crashPointsPerSeed = Number(process.env.GROVE_CRASH_POINTS ?? 150);
const caller = { uid: 0, gid: 0 };

/** What a user can see of the volume: each subvolume, its kind, and each file's size and digest. */
function volumeState(image: Map<number, Uint8Array>): string[] {
  let device = SimDevice.fromDurable(image, deviceBlocks);
  const fs = GroveFs.open(device, { readOnly: true });
  const lines: string[] = [];
  const subvolumes = fs.listSubvolumes();
  const describe = (name: string, view: FileSystemOps): void => {
    for (const entry of view.readdir("/")) {
      if (entry.name === "." || entry.name === "..") continue;
      const bytes = readFile(view, `/${entry.name}`);
      lines.push(`${name}:/${entry.name} ${bytes.length} ${createHash("sha256").update(bytes).digest("hex").slice(0, 16)}`);
    }
  };
  for (const s of subvolumes) {
    lines.push(`subvolume ${s.name} ${s.readOnly ? "ro" : "rw"}`);
    if (s.readOnly) describe(s.name, fs.snapshotView(s.name));
  }
  lines.push(`pending deletions ${fs.pendingDeletions()}`);
  fs.close();
  for (const s of subvolumes) {
    if (s.readOnly || s.name === "default") continue;
    device = device.reopen();
    const clone = GroveFs.open(device, { readOnly: true, subvolume: s.name });
    describe(s.name, clone);
    clone.close();
  }
  device = device.reopen();
  const main = GroveFs.open(device, { readOnly: true });
  describe("default", main);
  main.close();
  return lines.sort();
}

/** The volume's default compression, and the bytes a write puts at `at`. */
interface Variant {
  compression: NonNullable<GroveFsOptions["compression"]>;
  data: (length: number, seed: number, at: number) => Buffer;
}

const plain: Variant = { compression: "none", data: (length, seed, at) => pattern(length, seed, at) };

/** Compressible writes, kept across runs: every run of a seed writes the same ones (generating them is slow). */
const compressibleWrites = new Map<string, Buffer>();

const lz4: Variant = {
  compression: "lz4",
  data: (length, seed, at) => {
    const key = `${length}:${seed}:${at}`;
    let data = compressibleWrites.get(key);
    if (data === undefined) {
      data = mixedCompressible(length, seed * 1_000_003 + at);
      compressibleWrites.set(key, data);
    }
    return data;
  },
};

function baseImage(variant: Variant): Map<number, Uint8Array> {
  const device = new SimDevice(deviceBlocks);
  GroveFs.format(device, { clock: testClock(), compression: variant.compression });
  return device.snapshotLive();
}

interface Run {
  device: SimDevice;
  crashed: boolean;
  /** Committed generation → the state it made durable (recorded only in an uncrashed run). */
  states: Map<number, string[]>;
  /** Subvolume deletions after which the volume held fewer compressed extents than before. */
  deletionsFreeingCompressed: number;
}

/**
 * The workload. `record` captures the state after every commit (slow: only
 * for the uncrashed run); with `crashAt` finite the device dies there.
 */
function runWorkload(variant: Variant, seed: number, base: Map<number, Uint8Array>, crashAt: number, record: boolean): Run {
  const device = SimDevice.fromDurable(base, deviceBlocks);
  const states = new Map<number, string[]>();
  const fs = GroveFs.open(device, { clock: testClock(2_000_000_000_000_000_000n), deletionStepNodes: 1, cacheBytes: 256 * 1024 });
  if (record) {
    states.set(readSuperblock(device).generation, volumeState(device.snapshotLive()));
    const commit = fs.store.commit.bind(fs.store);
    fs.store.commit = (options?: { force?: boolean }) => {
      commit(options);
      states.set(fs.store.committedGeneration, volumeState(device.snapshotLive()));
    };
  }
  device.crashAtOperation = crashAt;
  const prng = new Prng(seed);
  const write = (name: string): void => {
    const at = prng.chance(0.5) ? 0 : prng.below(100_000);
    const length = prng.pick([100, 600, 4096, 9000, 30_000]);
    const fh = fs.create(`/${name}`, 0o644, O_CREAT | O_RDWR, caller);
    fs.write(fh, variant.data(length, seed * 1000 + prng.below(1000), at), length, at);
    fs.release(fh);
  };
  let deletionsFreeingCompressed = 0;
  const deleteStepwise = (name: string): void => {
    const before = fs.info().compressed.extents;
    fs.deleteSubvolume(name);
    while (fs.runDeletions(1)) fs.sync();
    if (fs.info().compressed.extents < before) deletionsFreeingCompressed++;
  };
  try {
    for (let i = 0; i < 200; i++) write(`f${i}`);
    fs.sync();
    fs.createSubvolume("s1", { readOnly: true });
    for (let i = 0; i < 10; i++) write(`f${prng.below(210)}`);
    for (let i = 0; i < 4; i++) fs.unlink(`/f${prng.below(40) * 4 + i}`);
    fs.createSubvolume("c1", { readOnly: false });
    fs.createSubvolume("s2", { readOnly: true });
    for (let i = 0; i < 6; i++) write(`f${prng.below(210)}`);
    fs.sync();
    // s1 shares all but what changed since with the others: an incremental drop.
    deleteStepwise("s1");
    fs.createSubvolume("c2", { from: "s2", readOnly: false });
    for (let i = 0; i < 4; i++) write(`g${i}`);
    // s2 shares its root with c2: O(1). Then c2, and c1, each hold their root alone.
    deleteStepwise("s2");
    deleteStepwise("c2");
    deleteStepwise("c1");
    fs.close();
    return { device, crashed: false, states, deletionsFreeingCompressed };
  } catch (error) {
    if (error instanceof SimulatedCrash || device.crashed) return { device, crashed: true, states, deletionsFreeingCompressed };
    throw error;
  }
}

/** Crashes the workload at up to `pointsMax` points spread over it and checks every recovery. */
function crashEverywhere(variant: Variant, seed: number, pointsMax: number): void {
  const base = baseImage(variant);
  const full = runWorkload(variant, seed, base, Number.POSITIVE_INFINITY, true);
  expect(full.crashed).toBe(false);
  const total = full.device.operations;
  expect(full.states.size).toBeGreaterThan(30);
  const points = Math.min(pointsMax, total);
  const prng = new Prng(seed * 7919);
  let resumed = 0;
  for (let k = 0; k < points; k++) {
    const crashAt = 1 + Math.floor((k * total) / points) + prng.below(Math.max(1, Math.floor(total / points)));
    const run = runWorkload(variant, seed, base, crashAt, false);
    if (!run.crashed) continue;
    let device = run.device.recover(prng);
    try {
      expectFsClean(device);
      const generation = readSuperblock(device).generation;
      const expected = full.states.get(generation);
      expect(expected, `generation ${generation} is one the workload committed`).toBeDefined();
      expect(volumeState(device.snapshotLive())).toEqual(expected);
      // The next open resumes the deletions and ends clean.
      device = device.reopen();
      const fs = GroveFs.open(device, { deletionStepNodes: 2 });
      if (fs.pendingDeletions() > 0) resumed++;
      fs.finishDeletions();
      expect(fs.pendingDeletions()).toBe(0);
      fs.close();
      expectFsClean(device.reopen());
    } catch (error) {
      throw new Error(`crash at operation ${crashAt} of ${total}: ${(error as Error).message}`, { cause: error });
    }
  }
  console.log(`${variant.compression} seed ${seed}: ${points} crash points over ${total} operations, ${full.states.size} commits; ${resumed} resumed a deletion`);
  expect(resumed).toBeGreaterThan(0);
  if (variant.compression === "lz4") {
    // Compressed extents were written, shared by snapshots, and freed by deleting them.
    const census = compressionCensus(full.device.reopen());
    console.log(`lz4 seed ${seed}: at the end ${JSON.stringify(census)}; ${full.deletionsFreeingCompressed} deletions freed compressed extents`);
    expect(census.extents).toBeGreaterThan(0);
    expect(full.deletionsFreeingCompressed).toBeGreaterThan(0);
  }
}

describe("crash simulation: snapshot creation and incremental deletion", () => {
  for (const seed of seeds([31, 32])) {
    it(`seed ${seed}: power loss at write and flush points; each state equals its last commit`, () => {
      withSeed(seed, testFile, () => crashEverywhere(plain, seed, crashPointsPerSeed));
    });
  }
  // One seed with compression on, at a third of the crash points.
  for (const seed of seeds([33])) {
    it(`lz4 seed ${seed}: power loss with compressed extents shared by snapshots and freed by deletions`, () => {
      withSeed(seed, testFile, () => crashEverywhere(lz4, seed, Math.ceil(crashPointsPerSeed / 3)));
    });
  }
});
