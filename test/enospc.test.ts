/**
 * ENOSPC: filling a small device ends in a clean ENOSPC that loses nothing
 * committed and leaves the volume consistent; after deletes it takes writes again.
 */
import { describe, expect, it } from "vitest";
import { GroveError, Prng, SimDevice, deviceBlocksMin } from "../kvstore/index.js";
import { formatVolume, openVolume } from "../alloc/index.js";
import { ForestModel, cloneForest, expectClean, expectForestEquals } from "./helpers.js";

describe("ENOSPC", () => {
  it("fills a minimum-size device, fails cleanly, and recovers after deletes", () => {
    let device = new SimDevice(deviceBlocksMin);
    const volume = formatVolume(device);
    let { store, space } = volume;
    const prng = new Prng(5);
    const model: ForestModel = new Map([[256, new Map()]]);
    store.createTree(256);
    store.commit();
    let committed = cloneForest(model);
    let failure: unknown = null;
    for (let i = 0; i < 100_000 && failure === null; i++) {
      const key = prng.bytes(12);
      const value = prng.bytes(prng.between(100, 400));
      try {
        store.openTree(256).put(key, value);
        model.get(256)!.set(key.toString("hex"), value);
        if (i % 25 === 24) {
          store.commit();
          committed = cloneForest(model);
        }
      } catch (error) {
        failure = error;
      }
    }
    expect(failure).toBeInstanceOf(GroveError);
    expect((failure as GroveError).code).toBe("ENOSPC");
    expect((failure as GroveError).errno).toBe(28);
    // The refused put changed nothing: everything before it commits.
    expectForestEquals(store, model);
    store.commit();
    committed = cloneForest(model);
    expectClean(device, space);
    const fullUsage = space.usage();
    expect(fullUsage.usedBlocks).toBeGreaterThan(deviceBlocksMin * 0.6);

    store.close();
    device = device.reopen();
    ({ store, space } = openVolume(device));
    expectForestEquals(store, committed);

    // Deletes still run on a full volume (copy-on-write needs space for them too).
    const tree = store.openTree(256);
    const keys = [...model.get(256)!.keys()];
    for (let i = 0; i < keys.length; i++) {
      if (i % 2 === 0) continue;
      expect(tree.delete(Buffer.from(keys[i]!, "hex"))).toBe(true);
      model.get(256)!.delete(keys[i]!);
      if (i % 21 === 0) store.commit();
    }
    store.commit();
    expectClean(device, space);
    expect(space.usage().freeBlocks).toBeGreaterThan(fullUsage.freeBlocks);

    for (let i = 0; i < 20; i++) {
      const key = prng.bytes(12);
      const value = prng.bytes(200);
      tree.put(key, value);
      model.get(256)!.set(key.toString("hex"), value);
    }
    store.commit();
    expectForestEquals(store, model);
    expectClean(device, space);
  });
});
