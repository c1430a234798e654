/**
 * Crash simulation: a random workload runs on a simulated device that loses
 * power at its Nth write or flush, for every N the workload reaches. Writes
 * not yet flushed are kept, dropped or torn at a sector boundary. After each
 * crash the volume is reopened: it must hold exactly the model at the last
 * completed commit (or at the commit in flight, if its superblock made it
 * to disk), pass both checkers, and accept new writes.
 */
import { describe, expect, it } from "vitest";
import { CorruptionError, Prng, SimDevice, SimulatedCrash } from "../kvstore/index.js";
import { formatVolume, openVolume } from "../alloc/index.js";
import { ForestModel, cloneForest, expectClean, expectForestEquals, seeds, withSeed } from "./helpers.js";

const deviceBlocks = 4096;
const commitsPerRun = 24;
const treeIds = [256, 257];

/** A freshly formatted volume holding two empty trees, durable. */
function baseImage(): Map<number, Uint8Array> {
  const device = new SimDevice(deviceBlocks);
  const { store } = formatVolume(device);
  for (const id of treeIds) store.createTree(id);
  store.commit();
  store.close();
  return device.snapshotLive();
}

interface RunResult {
  device: SimDevice;
  committed: ForestModel;
  committedGeneration: number;
  /** The model of the commit that was in flight when power went, if any. */
  inflight: ForestModel | null;
  crashed: boolean;
}

function runWorkload(seed: number, base: Map<number, Uint8Array>, crashAt: number): RunResult {
  const device = SimDevice.fromDurable(base, deviceBlocks);
  const { store } = openVolume(device, { cacheBytes: 256 * 1024 });
  device.crashAtOperation = crashAt;
  const prng = new Prng(seed);
  let model: ForestModel = new Map(treeIds.map((id) => [id, new Map()]));
  let committed = cloneForest(model);
  let committedGeneration = store.committedGeneration;
  for (let c = 0; c < commitsPerRun; c++) {
    const ops = prng.between(5, 80);
    for (let i = 0; i < ops; i++) {
      const id = prng.pick(treeIds);
      const tree = store.openTree(id);
      const treeModel = model.get(id)!;
      const key = Buffer.from([prng.below(8), prng.below(256), prng.below(4)]);
      if (prng.chance(0.7)) {
        const value = prng.bytes(prng.between(0, 200));
        tree.put(key, value);
        treeModel.set(key.toString("hex"), value);
      } else {
        tree.delete(key);
        treeModel.delete(key.toString("hex"));
      }
    }
    try {
      store.commit();
    } catch (error) {
      if (!(error instanceof SimulatedCrash)) throw error;
      return { device, committed, committedGeneration, inflight: model, crashed: true };
    }
    committed = cloneForest(model);
    committedGeneration = store.committedGeneration;
    model = cloneForest(committed);
  }
  return { device, committed, committedGeneration, inflight: null, crashed: false };
}

/** Reopens the crashed device and checks it against the models. Returns which commit survived. */
function verifyRecovery(seed: number, crashAt: number, run: RunResult): "old" | "new" {
  const recovered = run.device.recover(new Prng(seed * 100_003 + crashAt));
  const { store, space } = openVolume(recovered);
  let survived: "old" | "new";
  if (store.committedGeneration === run.committedGeneration) {
    survived = "old";
    expectForestEquals(store, run.committed);
  } else {
    expect(store.committedGeneration).toBe(run.committedGeneration + 1);
    expect(run.inflight).not.toBeNull();
    survived = "new";
    expectForestEquals(store, run.inflight!);
  }
  expectClean(recovered, space);
  // The recovered volume takes new writes and commits them cleanly.
  const tree = store.openTree(treeIds[0]!);
  for (let i = 0; i < 20; i++) tree.put(Buffer.from([9, i]), Buffer.alloc(64, i));
  store.commit();
  expectClean(recovered, space);
  store.close();
  return survived;
}

describe("crash simulation", () => {
  let distinctCrashPoints = 0;
  const base = baseImage();

  for (const seed of seeds(Array.from({ length: 8 }, (_, i) => 11 + i))) {
    it(`seed ${seed}: power loss at every write and flush`, () => {
      withSeed(seed, "test/crash.test.ts", () => {
        const full = runWorkload(seed, base, Number.POSITIVE_INFINITY);
        expect(full.crashed).toBe(false);
        const operations = full.device.operations;
        let survivedNew = 0;
        for (let crashAt = 1; crashAt <= operations; crashAt++) {
          const run = runWorkload(seed, base, crashAt);
          expect(run.crashed).toBe(true);
          if (verifyRecovery(seed, crashAt, run) === "new") survivedNew++;
          distinctCrashPoints++;
        }
        console.log(`seed ${seed}: ${operations} crash points, ${survivedNew} kept the commit in flight`);
        // Both outcomes must occur, or the test is not exercising the superblock write.
        expect(survivedNew).toBeGreaterThan(0);
        expect(survivedNew).toBeLessThan(operations);
      });
    });
  }

  it("power loss during format leaves either no volume or an empty, clean one", () => {
    const probe = new SimDevice(deviceBlocks);
    formatVolume(probe);
    for (let crashAt = 1; crashAt <= probe.operations; crashAt++) {
      const device = new SimDevice(deviceBlocks);
      device.crashAtOperation = crashAt;
      expect(() => formatVolume(device)).toThrow(SimulatedCrash);
      distinctCrashPoints++;
      const recovered = device.recover(new Prng(crashAt));
      let opened;
      try {
        opened = openVolume(recovered);
      } catch (error) {
        expect(error).toBeInstanceOf(CorruptionError);
        expect((error as CorruptionError).detail).toBe("EIO_no_superblock");
        continue;
      }
      expect(opened.store.treeIds()).toEqual([2, 3]);
      expectClean(recovered, opened.space);
    }
  });

  it("exercised at least 2,000 distinct crash points", () => {
    console.log(`crash points exercised: ${distinctCrashPoints}`);
    if (process.env.GROVE_SEED === undefined) expect(distinctCrashPoints).toBeGreaterThanOrEqual(2000);
  });
});
