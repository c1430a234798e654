/**
 * Crash simulation through GroveFs: a seeded workload of file operations
 * with periodic sync, fsync and fsyncdir runs on a simulated device that
 * loses power at its Nth block write or flush. Unflushed writes are then
 * kept, dropped or torn at random, and the volume is reopened. It must:
 *
 * - pass the full checker, data checksums included;
 * - show exactly the tree that the last completed sync made durable, or the
 *   tree of the sync in flight if that sync's superblock reached the disk
 *   (names, types, link counts, sizes, modes, owners, times but atime,
 *   bytes, symlink targets and extended attributes);
 * - have freed every orphan (files unlinked while open) and leak no block;
 * - take new writes and commit them cleanly.
 *
 * The expected trees are snapshots the workload itself takes after each of
 * its syncs, through the same calls in every run, so a crashed run does
 * exactly what the full run did up to the crash point.
 *
 * A compression variant runs the same workload on a volume formatted with
 * lz4 as its default, writing mostly compressible bytes in larger pieces
 * over files that span several 128 KiB units, so that syncs write
 * compressed extents, and later writes, truncates and unlinks cut and free
 * them (the checker then also compares the superblock's compressed-extent
 * counters with a walk, and decompresses every compressed extent).
 */
import { constants as C } from "node:fs";
import { describe, expect, it } from "vitest";
import { GroveError, Prng, SimDevice, SimulatedCrash, crc32c, readDurableSuperblock } from "../kvstore/index.js";
import { GroveFs, type GroveFsOptions } from "../fs/index.js";
import { seeds, testMetadata, withSeed } from "./helpers.js";
import {
  O_CREAT,
  O_RDONLY,
  O_RDWR,
  O_WRONLY,
  compressionCensus,
  durableImage,
  expectFsClean,
  mixedCompressible,
  pattern,
  readFile,
  root,
  testClock,
  usedBlocks,
  writeFile,
} from "./fs_helpers.js";

const testFile = "test/fs_crash.test.ts";
const deviceBlocks = 4096;
const stepsPerRun = 220;
/** Crash points tested per seed at most; beyond it they are spread evenly over the run. */
const crashPointsPerSeed = Number(process.env.GROVE_CRASH_POINTS ?? 300);
const dirs = ["/", "/a", "/b", "/a/c"];
const files = ["f0", "f1", "f2", "f3", "f4", "f5"];

/** What a run writes, and where: the plain workload's, or the compression variant's. */
interface Variant {
  name: string;
  /** The volume's default compression, given to format. */
  compression: NonNullable<GroveFsOptions["compression"]>;
  /** The bytes a write puts at `at`. */
  data: (prng: Prng, length: number, seed: number, at: number) => Buffer;
  /** Writes start below this offset. */
  writeAtMax: number;
  writeLengths: readonly number[];
  truncateSizes: readonly number[];
}

const plain: Variant = {
  name: "plain",
  compression: "none",
  data: (_prng, length, seed, at) => pattern(length, seed, at),
  writeAtMax: 60_000,
  writeLengths: [1, 100, 600, 4096, 5000, 9000, 30_000],
  truncateSizes: [0, 10, 4095, 4096, 5000, 20_000, 70_000],
};

/** Compressible writes, kept across runs: every run of a seed writes the same ones (generating them is slow). */
const compressibleWrites = new Map<string, Buffer>();

/**
 * Files of up to about 400 KiB (units at 0, 128 and 256 KiB), written in
 * pieces of up to 200 KiB, mostly compressible (a fifth `pattern`'s random
 * bytes, which stay raw); truncates land inside units.
 */
const lz4: Variant = {
  name: "lz4",
  compression: "lz4",
  data: (prng, length, seed, at) => {
    if (prng.chance(0.2)) return pattern(length, seed, at);
    const key = `${length}:${seed}:${at}`;
    let data = compressibleWrites.get(key);
    if (data === undefined) {
      data = mixedCompressible(length, seed * 1_000_003 + at);
      compressibleWrites.set(key, data);
    }
    return data;
  },
  writeAtMax: 200_000,
  writeLengths: [1, 600, 4096, 9000, 30_000, 70_000, 131_072, 200_000],
  truncateSizes: [0, 10, 4096, 20_000, 70_000, 131_072, 140_000, 300_000],
};

/** A formatted, empty volume: the durable image every run starts from. */
function baseImage(variant: Variant): Map<number, Uint8Array> {
  const device = new SimDevice(deviceBlocks);
  GroveFs.format(device, { clock: testClock(), compression: variant.compression, metadata: testMetadata });
  return device.snapshotLive();
}

/** Every name in the tree with what a user could observe of it (file bytes by crc32c), as sorted lines. */
function snapshotTree(fs: GroveFs): string[] {
  const lines: string[] = [];
  const walk = (dir: string): void => {
    for (const entry of fs.readdir(dir)) {
      if (entry.name === "." || entry.name === "..") continue;
      const path = `${dir === "/" ? "" : dir}/${entry.name}`;
      const st = fs.getattr(path);
      const type = st.mode & C.S_IFMT;
      let body = "";
      if (type === C.S_IFREG) body = crc32c(readFile(fs, path)).toString(16);
      else if (type === C.S_IFLNK) body = fs.readlink(path);
      const xattrs = fs
        .listxattr(path)
        .sort()
        .map((name) => `${name}=${fs.getxattr(path, name).toString("hex")}`)
        .join(",");
      lines.push(
        `${path} ino=${st.ino} type=${entry.type} mode=${st.mode.toString(8)} nlink=${st.nlink} uid=${st.uid} ` +
          `size=${st.size} mtime=${st.mtimeNs} ctime=${st.ctimeNs} crtime=${st.crtimeNs} xattrs=[${xattrs}] ${body}`,
      );
      if (type === C.S_IFDIR) walk(path);
    }
  };
  walk("/");
  return lines.sort();
}

interface SyncPoint {
  generation: number;
  tree: string[];
}

interface RunResult {
  device: SimDevice;
  /** Syncs completed, each with the generation it committed and the tree it made durable. */
  synced: SyncPoint[];
  /** The tree the sync in flight would have committed, if the crash hit one. */
  inflight: string[] | null;
  crashed: boolean;
  orphansHeld: number;
  /** Compressed extents the run wrote out and freed (counted as the volume's counters move). */
  compressedSeen: { written: number; freed: number };
}

/**
 * The workload. With `crashAt` finite, the device dies at that operation and
 * the run stops there.
 */
function runWorkload(variant: Variant, seed: number, base: Map<number, Uint8Array>, crashAt: number): RunResult {
  const device = SimDevice.fromDurable(base, deviceBlocks);
  const fs = GroveFs.open(device, { clock: testClock(2_000_000_000_000_000_000n), cacheBytes: 512 * 1024 });
  device.crashAtOperation = crashAt;
  const compressedSeen = { written: 0, freed: 0 };
  const countCompressed = fs.store.countCompressed.bind(fs.store);
  fs.store.countCompressed = (sign, diskBlocks, logicalBlocks) => {
    if (sign > 0) compressedSeen.written++;
    else compressedSeen.freed++;
    countCompressed(sign, diskBlocks, logicalBlocks);
  };
  const prng = new Prng(seed);
  const synced: SyncPoint[] = [{ generation: readDurableSuperblock(device).generation, tree: snapshotTree(fs) }];
  // The directories are made in the first transaction, and committed by the first sync.
  for (const dir of dirs.slice(1)) fs.mkdir(dir, 0o755, root);
  const handles: number[] = [];
  let orphansHeld = 0;
  const file = (): string => {
    const dir = prng.pick(dirs);
    return `${dir === "/" ? "" : dir}/${prng.pick(files)}`;
  };
  const anyPath = (): string => (prng.chance(0.8) ? file() : prng.pick(dirs.slice(1)));
  const attempt = (body: () => void): void => {
    try {
      body();
    } catch (error) {
      if (error instanceof SimulatedCrash || device.crashed) throw error;
      if (!(error instanceof GroveError)) throw error;
      // ENOENT, EEXIST, ENOTEMPTY...: the same in every run, so just go on.
    }
  };
  try {
    for (let step = 0; step < stepsPerRun; step++) {
      const roll = prng.below(100);
      if (roll < 30) {
        // Write somewhere in a file, through a handle that may stay open.
        const path = file();
        const at = prng.chance(0.3) ? 0 : prng.below(variant.writeAtMax);
        const length = prng.pick(variant.writeLengths);
        const data = variant.data(prng, length, seed + step, at);
        attempt(() => {
          const fh = fs.create(path, 0o644, O_CREAT | O_RDWR, root);
          fs.write(fh, data, length, at);
          if (prng.chance(0.2) && handles.length < 6) handles.push(fh);
          else fs.release(fh);
        });
      } else if (roll < 38) {
        attempt(() => fs.truncate(file(), prng.pick(variant.truncateSizes)));
      } else if (roll < 48) {
        const path = file();
        attempt(() => {
          // Sometimes hold the file open across its unlink: an orphan.
          if (prng.chance(0.4) && handles.length < 6) {
            const fh = fs.open(path, O_RDWR);
            handles.push(fh);
            orphansHeld++;
          }
          fs.unlink(path);
        });
      } else if (roll < 56) {
        attempt(() => fs.rename(anyPath(), anyPath()));
      } else if (roll < 60) {
        const dir = prng.pick(["/a/d", "/b/e", "/a/c/g"]);
        attempt(() => (prng.chance(0.6) ? fs.mkdir(dir, 0o755, root) : fs.rmdir(dir)));
      } else if (roll < 65) {
        attempt(() => fs.link(file(), file()));
      } else if (roll < 69) {
        attempt(() => fs.symlink(prng.chance(0.2) ? "x".repeat(prng.between(600, 4095)) : file(), file(), root));
      } else if (roll < 75) {
        const value = pattern(prng.pick([0, 10, 700, 3000]), step);
        attempt(() => fs.setxattr(anyPath(), prng.pick(["user.a", "user.b"]), value, 0));
      } else if (roll < 78) {
        attempt(() => fs.chmod(anyPath(), prng.below(0o1000)));
      } else if (roll < 86) {
        if (handles.length > 0) fs.release(handles.splice(prng.below(handles.length), 1)[0]!);
      } else if (roll < 90) {
        // Writes through a held handle, orphan or not.
        if (handles.length > 0) {
          const fh = prng.pick(handles);
          const at = prng.below(variant.writeAtMax + 20_000);
          const data = variant.data(prng, prng.pick([1, 3000, 8192]), seed * 7 + step, at);
          attempt(() => fs.write(fh, data, data.length, at));
        }
      } else {
        // A sync of one kind or another; the model moves on only once it returns.
        const tree = snapshotTree(fs);
        const kind = prng.below(3);
        try {
          if (kind === 0 || handles.length === 0) fs.sync();
          else if (kind === 1) fs.fsync(prng.pick(handles), prng.chance(0.5));
          else {
            const dir = prng.pick(dirs);
            const dfh = fs.readdir("/").some((e) => `/${e.name}` === dir) ? fs.opendir(dir) : fs.opendir("/");
            fs.fsyncdir(dfh, false);
            fs.releasedir(dfh);
          }
        } catch (error) {
          if (error instanceof SimulatedCrash) return { device, synced, inflight: tree, crashed: true, orphansHeld, compressedSeen };
          throw error;
        }
        synced.push({ generation: readDurableSuperblock(device).generation, tree });
      }
    }
    // The run ends with a final sync, handles still open: orphans stay durable.
    const tree = snapshotTree(fs);
    try {
      fs.sync();
    } catch (error) {
      if (error instanceof SimulatedCrash) return { device, synced, inflight: tree, crashed: true, orphansHeld, compressedSeen };
      throw error;
    }
    synced.push({ generation: readDurableSuperblock(device).generation, tree });
  } catch (error) {
    // A crash outside a sync is a bug in this test's assumption that only commits write.
    if (error instanceof SimulatedCrash) throw new Error(`device written outside a sync: ${error.message}`);
    throw error;
  }
  return { device, synced, inflight: null, crashed: false, orphansHeld, compressedSeen };
}

/** The first line where two trees differ, for a readable failure. */
function expectSameTree(actual: string[], expected: string[], what: string): void {
  if (actual.length === expected.length && actual.every((line, i) => line === expected[i])) return;
  const a = new Set(actual);
  const e = new Set(expected);
  const missing = expected.filter((line) => !a.has(line)).map((l) => l.slice(0, 200));
  const extra = actual.filter((line) => !e.has(line)).map((l) => l.slice(0, 200));
  throw new Error(`${what}: tree differs\nmissing:\n${missing.slice(0, 5).join("\n")}\nunexpected:\n${extra.slice(0, 5).join("\n")}`);
}

/** Reopens the crashed device and checks it. Returns which sync survived, and the compressed extents it holds. */
function verifyRecovery(
  variant: Variant,
  seed: number,
  crashAt: number,
  run: RunResult,
): { survived: "old" | "new"; compressedExtents: number } {
  const recovered = run.device.recover(new Prng(seed * 1_000_003 + crashAt));
  // The committed generation decides which tree must be there; the superblock is read before open frees orphans.
  const generation = readDurableSuperblock(recovered).generation;
  const last = run.synced[run.synced.length - 1]!;
  let survived: "old" | "new";
  let expected: string[];
  if (generation === last.generation) {
    survived = "old";
    expected = last.tree;
  } else {
    // Newer than the last sync (not always by one: after a logged fsync a commit skips a generation, to keep
    // the parity that puts it in the other superblock pair; kvstore/store.ts alignGeneration).
    expect(generation, `crash at ${crashAt}: committed generation`).toBeGreaterThan(last.generation);
    expect(run.inflight).not.toBeNull();
    survived = "new";
    expected = run.inflight!;
  }
  let fs = GroveFs.open(recovered, { clock: testClock(3_000_000_000_000_000_000n) });
  expect(fs.info().orphans, `crash at ${crashAt}: orphans after open`).toBe(0);
  const report = expectFsClean(recovered);
  expectSameTree(snapshotTree(fs), expected, `crash at ${crashAt} (${survived} state)`);
  // The recovered volume takes new writes (compressed ones in the lz4 variant) and commits them cleanly.
  const after = variant.compression === "lz4" ? mixedCompressible(40_000, crashAt) : pattern(9000, crashAt);
  writeFile(fs, "/after-crash", after);
  fs.mkdir("/after-dir", 0o755, root);
  fs.sync();
  expectFsClean(recovered);
  fs.close();
  const again = recovered.reopen();
  fs = GroveFs.open(again);
  expect(readFile(fs, "/after-crash").equals(after)).toBe(true);
  fs.close();
  return { survived, compressedExtents: report.space.forest.compressed.extents };
}

/**
 * Runs the whole workload once, then again crashing at each crash point (at
 * most `pointsMax`, spread evenly), and checks every recovery. Returns the
 * crash points tested.
 */
function crashEverywhere(variant: Variant, seed: number, base: Map<number, Uint8Array>, pointsMax: number): number {
  const full = runWorkload(variant, seed, base, Number.POSITIVE_INFINITY);
  expect(full.crashed).toBe(false);
  const operations = full.device.operations;
  // The full run itself ends clean, with its orphans still open, and reopens to its last tree.
  expectFsClean(full.device);
  const reopened = GroveFs.open(SimDevice.fromDurable(durableImage(full.device), deviceBlocks));
  expect(reopened.info().orphans).toBe(0);
  expectSameTree(snapshotTree(reopened), full.synced[full.synced.length - 1]!.tree, "after the full run");
  reopened.close();

  const stride = Math.max(1, operations / pointsMax);
  const points = new Set<number>();
  for (let p = 1; p <= operations; p += stride) points.add(Math.floor(p));
  points.add(operations);
  let survivedNew = 0;
  let compressedRecovered = 0;
  for (const crashAt of points) {
    const run = runWorkload(variant, seed, base, crashAt);
    expect(run.crashed, `crash at ${crashAt}`).toBe(true);
    const recovery = verifyRecovery(variant, seed, crashAt, run);
    if (recovery.survived === "new") survivedNew++;
    if (recovery.compressedExtents > 0) compressedRecovered++;
  }
  console.log(
    `${variant.name} seed ${seed}: ${operations} device operations, ${full.synced.length - 1} syncs, ` +
      `${full.orphansHeld} files unlinked while open; ${points.size} crash points tested, ` +
      `${survivedNew} kept the sync in flight, ${compressedRecovered} recovered with compressed extents`,
  );
  expect(survivedNew).toBeGreaterThan(0);
  expect(survivedNew).toBeLessThan(points.size);
  if (variant.compression === "lz4") {
    // The variant did what it is for: compressed units written, cut by later writes and truncates, and freed.
    const census = compressionCensus(SimDevice.fromDurable(durableImage(full.device), deviceBlocks));
    console.log(`${variant.name} seed ${seed}: at the end ${JSON.stringify(census)}; ${JSON.stringify(full.compressedSeen)}`);
    expect(census.extents).toBeGreaterThan(0);
    expect(census.rawExtents).toBeGreaterThan(0);
    expect(census.slices).toBeGreaterThan(0);
    expect(full.compressedSeen.freed).toBeGreaterThan(0);
    expect(compressedRecovered).toBeGreaterThan(points.size / 2);
  }
  return points.size;
}

describe("crash simulation through GroveFs", () => {
  const base = baseImage(plain);
  let crashPointsTested = 0;

  for (const seed of seeds([7, 8, 9, 10])) {
    it(`seed ${seed}: power loss at write and flush points of a file workload`, () => {
      withSeed(seed, testFile, () => {
        crashPointsTested += crashEverywhere(plain, seed, base, crashPointsPerSeed);
      });
    });
  }

  // One seed with compression on: a third of the plain seeds' crash points, over a heavier workload.
  for (const seed of seeds([11])) {
    it(`lz4 seed ${seed}: power loss at write and flush points of a workload of compressible files`, () => {
      withSeed(seed, testFile, () => {
        crashPointsTested += crashEverywhere(lz4, seed, baseImage(lz4), Math.ceil(crashPointsPerSeed / 3));
      });
    });
  }

  it("power loss while open frees orphans leaves them for the next open", () => {
    // A volume whose last commit holds orphans: files unlinked while open, then a crash.
    const device = SimDevice.fromDurable(base, deviceBlocks);
    let fs = GroveFs.open(device, { clock: testClock() });
    const baseline = usedBlocks(fs);
    writeFile(fs, "/keep", pattern(5000, 1));
    const held: number[] = [];
    for (let i = 0; i < 4; i++) {
      writeFile(fs, `/gone${i}`, pattern(50_000 + i, i));
      held.push(fs.open(`/gone${i}`, i % 2 === 0 ? O_RDONLY : O_WRONLY));
      fs.unlink(`/gone${i}`);
    }
    fs.sync();
    expect(fs.info().orphans).toBe(4);
    const image = durableImage(device);
    const expected = snapshotTree(fs);
    // Measure how many device operations freeing them takes, then crash at each.
    const probe = SimDevice.fromDurable(image, deviceBlocks);
    GroveFs.open(probe).close();
    expect(probe.operations).toBeGreaterThan(0);
    for (let crashAt = 1; crashAt <= probe.operations; crashAt++) {
      const attemptDevice = SimDevice.fromDurable(image, deviceBlocks);
      attemptDevice.crashAtOperation = crashAt;
      expect(() => GroveFs.open(attemptDevice)).toThrow(SimulatedCrash);
      const recovered = attemptDevice.recover(new Prng(crashAt));
      fs = GroveFs.open(recovered);
      expect(fs.info().orphans).toBe(0);
      expect(usedBlocks(fs)).toBeLessThanOrEqual(baseline + 4);
      expectFsClean(recovered);
      expectSameTree(snapshotTree(fs), expected, `crash at ${crashAt} while freeing orphans`);
      fs.close();
      crashPointsTested++;
    }
  });

  it("reports how many crash points were tested", () => {
    console.log(`fs crash points tested: ${crashPointsTested}`);
    if (process.env.GROVE_SEED === undefined) expect(crashPointsTested).toBeGreaterThanOrEqual(500);
  });
});
