/**
 * Superblock copies (kvstore/superblock_copies.ts) on a simulated device:
 * - damage to one or two copies at random never loses a commit, and a
 *   read-write open rewrites the damaged copies;
 * - destroying every copy of the newest generation rolls the volume back one
 *   commit, and the report says so;
 * - power loss at every write and flush of a few commits (slot, flush, twin
 *   and backup, flush) never loses an acknowledged commit and never claims a
 *   roll-back;
 * - a truncated device is refused as truncated; an image made without copies
 *   keeps the older scheme; a resize across 64 MiB places and drops the backup.
 * Seeded: GROVE_SEED replays one seed, GROVE_SB_TRIALS sets damage trials per seed.
 */
import { describe, expect, it } from "vitest";
import {
  Prng,
  SimDevice,
  SimulatedCrash,
  TruncatedImageError,
  blockSizeBytes,
  featureSuperblockCopies,
  inspectSuperblocks,
  type SuperblockReport,
} from "../kvstore/index.js";
import { formatVolume, openVolume } from "../alloc/index.js";
import { ForestModel, cloneForest, expectClean, expectForestEquals, seeds, withSeed } from "./helpers.js";

const testFile = "test/superblock_copies.test.ts";
/** Large enough for the 64 MiB backup (LBA 16384) and the first-MiB reservation. */
const largeBlocks = 16384 + 1024;
const smallBlocks = 2048;
const treeIds = [256, 257];
const trialsPerSeed = Number(process.env.GROVE_SB_TRIALS ?? 30);
const commitsPerCrashRun = 6;
/** Random fates (kept, dropped, torn) of the unflushed writes, per crash point. */
const fatesPerCrash = 4;

interface Base {
  image: Map<number, Uint8Array>;
  blocks: number;
  /** The model at each generation that was committed. */
  models: Map<number, ForestModel>;
  newest: number;
}

/** A volume with a few commits of random items; every generation's model is kept. */
function makeBase(seed: number, blocks: number, commits = 6): Base {
  const device = new SimDevice(blocks);
  const { store } = formatVolume(device);
  for (const id of treeIds) store.createTree(id);
  store.commit();
  const prng = new Prng(seed);
  let model: ForestModel = new Map(treeIds.map((id) => [id, new Map()]));
  const models = new Map<number, ForestModel>([[store.committedGeneration, cloneForest(model)]]);
  for (let c = 0; c < commits; c++) {
    for (let i = prng.between(5, 60); i > 0; i--) {
      const id = prng.pick(treeIds);
      const key = Buffer.from([prng.below(16), prng.below(256)]);
      const value = prng.bytes(prng.between(1, 120));
      store.openTree(id).put(key, value);
      model.get(id)!.set(key.toString("hex"), value);
    }
    store.commit();
    models.set(store.committedGeneration, cloneForest(model));
    model = cloneForest(model);
  }
  const newest = store.committedGeneration;
  store.close();
  return { image: device.snapshotLive(), blocks, models, newest };
}

function copyLbas(report: SuperblockReport): number[] {
  return report.copies.map((c) => c.lba);
}

type Damage = "zero" | "random" | "bit" | "burst" | "misdirected";
const damages: Damage[] = ["zero", "random", "bit", "burst", "misdirected"];

function damage(device: SimDevice, lba: number, kind: Damage, prng: Prng, others: number[]): void {
  const buf = Buffer.alloc(blockSizeBytes);
  device.read(lba, buf);
  if (kind === "zero") buf.fill(0);
  else if (kind === "random") prng.bytes(blockSizeBytes).copy(buf);
  else if (kind === "bit") buf[prng.below(512)]! ^= 1 << prng.below(8);
  else if (kind === "burst") prng.bytes(64).copy(buf, prng.below(blockSizeBytes - 64));
  else device.read(prng.pick(others.filter((o) => o !== lba)), buf);
  device.write(lba, buf);
  device.flush();
}

/** Opens read-only, checks the generation and contents, then read-write: the copies are repaired and the checkers pass. */
function expectIntact(device: SimDevice, base: Base, generation: number): SuperblockReport {
  const report = inspectSuperblocks(device);
  expect(report.superblock.generation).toBe(generation);
  const ro = openVolume(device, { readOnly: true });
  expectForestEquals(ro.store, base.models.get(generation)!);
  const rw = openVolume(device);
  expectForestEquals(rw.store, base.models.get(generation)!);
  expectClean(device, rw.space);
  const after = inspectSuperblocks(device);
  expect(after.stale).toEqual([]);
  expect(after.problems).toEqual([]);
  // A commit after the repair is clean too.
  rw.store.openTree(treeIds[0]!).put(Buffer.from([0xff]), Buffer.from("after"));
  rw.store.commit();
  expectClean(device, rw.space);
  expect(inspectSuperblocks(device).notes).toEqual([]);
  rw.store.close();
  return report;
}

describe("superblock copies: layout", () => {
  it("mkfs writes slot, twin and backup for both first generations and reserves their blocks", () => {
    const device = new SimDevice(largeBlocks);
    const { store, space } = formatVolume(device);
    const report = inspectSuperblocks(device);
    expect(report.superblock.features & featureSuperblockCopies).toBe(featureSuperblockCopies);
    expect(report.superblock.reservedStartBlocks).toBe(256);
    expect(copyLbas(report)).toEqual([0, 1, 2, 3, 16384]);
    const g = report.superblock.generation;
    const gens = report.copies.map((c) => c.superblock?.generation);
    expect(gens).toEqual(g % 2 === 0 ? [g, g - 1, g, g - 1, g] : [g - 1, g, g - 1, g, g]);
    expect(report.problems.concat(report.notes)).toEqual([]);
    expect(report.rolledBack).toBeNull();
    // Fill the volume: nothing may land in the first MiB or on the backup.
    const tree = store.createTree(256);
    for (let i = 0; i < 3000; i++) tree.put(Buffer.from(`k${i}`), Buffer.alloc(300, i));
    store.commit();
    expectClean(device, space);
    for (const r of store.reservedExtents()) {
      for (let lba = r.start; lba < r.start + r.length; lba++) expect(space.usage().totalBlocks).toBeGreaterThan(lba);
    }
    store.close();
  });

  it("a small volume reserves only the twins, and has no backup", () => {
    const device = new SimDevice(smallBlocks);
    formatVolume(device).store.close();
    const report = inspectSuperblocks(device.reopen());
    expect(report.superblock.reservedStartBlocks).toBe(4);
    expect(copyLbas(report)).toEqual([0, 1, 2, 3]);
  });

  it("an image made without copies keeps the alternating slots (the older scheme) and opens", () => {
    const device = new SimDevice(smallBlocks);
    const { store, space } = formatVolume(device, { superblockCopies: false });
    store.createTree(256).put(Buffer.from("a"), Buffer.from("b"));
    store.commit();
    expectClean(device, space);
    store.close();
    const report = inspectSuperblocks(device.reopen());
    expect(report.superblock.features & featureSuperblockCopies).toBe(0n);
    expect(report.superblock.reservedStartBlocks).toBe(0);
    expect(report.rolledBack).toBeNull();
  });
});

describe("superblock copies: random damage loses nothing committed", () => {
  for (const seed of seeds([101, 102, 103])) {
    it(`seed ${seed}: one or two damaged copies on a large volume, one on a small one`, () => {
      withSeed(seed, testFile, () => {
        for (const [blocks, most] of [[largeBlocks, 2], [smallBlocks, 1]] as const) {
          const base = makeBase(seed, blocks);
          const lbas = copyLbas(inspectSuperblocks(SimDevice.fromDurable(base.image, blocks)));
          const prng = new Prng(seed * 7 + blocks);
          for (let trial = 0; trial < trialsPerSeed; trial++) {
            const device = SimDevice.fromDurable(base.image, blocks);
            const count = prng.between(1, most);
            const hit = new Set<number>();
            while (hit.size < count) hit.add(prng.pick(lbas));
            for (const lba of hit) damage(device, lba, prng.pick(damages), prng, lbas);
            const report = expectIntact(device, base, base.newest);
            expect(report.rolledBack, `damaged ${[...hit].join(",")}`).toBeNull();
          }
        }
      });
    });
  }
});

describe("superblock copies: every copy of the newest generation destroyed", () => {
  for (const blocks of [largeBlocks, smallBlocks]) {
    it(`${blocks} blocks: the volume opens one generation back and says it may have been rolled back`, () => {
      const base = makeBase(7, blocks);
      const device = SimDevice.fromDurable(base.image, blocks);
      const before = inspectSuperblocks(device);
      for (const c of before.copies) if (c.superblock?.generation === base.newest) damage(device, c.lba, "zero", new Prng(1), []);
      const report = inspectSuperblocks(device);
      expect(report.superblock.generation).toBe(base.newest - 1);
      expect(report.rolledBack).toMatch(/may have been rolled back to generation/);
      const ro = openVolume(device, { readOnly: true });
      expectForestEquals(ro.store, base.models.get(base.newest - 1)!);
    });
  }

  it("the first MiB overwritten: the backup is used, nothing is lost, and the primaries are rewritten", () => {
    const base = makeBase(8, largeBlocks);
    const device = SimDevice.fromDurable(base.image, largeBlocks);
    const prng = new Prng(3);
    for (let lba = 0; lba < 256; lba++) device.write(lba, prng.bytes(blockSizeBytes));
    device.flush();
    const report = expectIntact(device, base, base.newest);
    expect(report.source.lba).toBe(16384);
    expect(report.rolledBack).toBeNull();
    expect(report.problems.join("\n")).toMatch(/damaged; generation \d+ was read from the backup superblock at LBA 16384/);
  });
});

describe("superblock copies: power loss at every write and flush", () => {
  for (const seed of seeds([201, 202])) {
    // Odd seeds on a volume with a backup, even ones without (where only the twin tells a torn slot from damage).
    const blocks = seed % 2 === 1 ? largeBlocks : smallBlocks;
    it(`seed ${seed} (${blocks} blocks): no acknowledged commit is lost, no roll-back is claimed`, () => {
      withSeed(seed, testFile, () => {
        const start = makeBase(seed, blocks, 1);
        const workload = (crashAt: number) => {
          const device = SimDevice.fromDurable(start.image, blocks);
          const { store } = openVolume(device);
          device.crashAtOperation = crashAt;
          const prng = new Prng(seed);
          let model = cloneForest(start.models.get(start.newest)!);
          let acked = { generation: store.committedGeneration, model: cloneForest(model) };
          let inflight: ForestModel | null = null;
          try {
            for (let c = 0; c < commitsPerCrashRun; c++) {
              for (let i = prng.between(3, 30); i > 0; i--) {
                const key = Buffer.from([prng.below(16), prng.below(256)]);
                const value = prng.bytes(prng.between(1, 100));
                store.openTree(256).put(key, value);
                model.get(256)!.set(key.toString("hex"), value);
              }
              inflight = cloneForest(model);
              store.commit();
              acked = { generation: store.committedGeneration, model: cloneForest(model) };
              inflight = null;
              model = cloneForest(model);
            }
          } catch (error) {
            if (!(error instanceof SimulatedCrash)) throw error;
            return { device, acked, inflight, crashed: true };
          }
          return { device, acked, inflight, crashed: false };
        };
        const operations = (() => {
          const full = workload(Number.POSITIVE_INFINITY);
          expect(full.crashed).toBe(false);
          return full.device.operations;
        })();
        for (let crashAt = 1; crashAt <= operations; crashAt++) {
          const run = workload(crashAt);
          for (let fate = 0; fate < fatesPerCrash; fate++) {
            const recovered = run.device.recover(new Prng(seed * 1009 + crashAt * 7 + fate));
            const report = inspectSuperblocks(recovered);
            expect(report.rolledBack, `crash at ${crashAt}`).toBeNull();
            expect(report.problems, `crash at ${crashAt}`).toEqual([]);
            const generation = report.superblock.generation;
            if (generation === run.acked.generation + 1 && run.inflight !== null) {
              expectForestEquals(openVolume(recovered, { readOnly: true }).store, run.inflight);
            } else {
              expect(generation, `crash at ${crashAt}`).toBe(run.acked.generation);
              expectForestEquals(openVolume(recovered, { readOnly: true }).store, run.acked.model);
            }
            const rw = openVolume(recovered);
            expectClean(recovered, rw.space);
            expect(inspectSuperblocks(recovered).stale).toEqual([]);
            rw.store.close();
          }
        }
      });
    });
  }
});

describe("superblock copies: truncation and resize", () => {
  it("a truncated device is refused as truncated, naming both sizes", () => {
    const base = makeBase(9, largeBlocks);
    const cut = SimDevice.fromDurable(base.image, 8192);
    let error: unknown;
    try {
      inspectSuperblocks(cut);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(TruncatedImageError);
    expect((error as TruncatedImageError).volumeBytes).toBe(largeBlocks * blockSizeBytes);
    expect((error as Error).message).toMatch(`the image is ${8192 * blockSizeBytes} bytes but the volume is ${largeBlocks * blockSizeBytes} bytes`);
  });

  it("grown past 64 MiB the volume gets its backup; shrunk below, it drops it; both stay clean", () => {
    const device = new SimDevice(8192);
    const { store, space } = formatVolume(device);
    store.createTree(256).put(Buffer.from("k"), Buffer.from("v"));
    store.commit();
    store.resize(largeBlocks);
    expectClean(device, space);
    let report = inspectSuperblocks(device);
    expect(copyLbas(report)).toContain(16384);
    expect(report.copies.find((c) => c.lba === 16384)!.superblock?.generation).toBe(report.superblock.generation);
    expect(report.superblock.reservedStartBlocks).toBe(4);
    // The backup's block does not stop a shrink: the smallest size named lies below it.
    expect(space.shrinkFloorBlocks()).toBeLessThan(16384);
    store.resize(8192);
    expectClean(device, space);
    report = inspectSuperblocks(device);
    expect(copyLbas(report)).toEqual([0, 1, 2, 3]);
    expect(report.problems.concat(report.notes)).toEqual([]);
    store.close();
  });
});
