/**
 * Regressions found in review: each test drove one correctness bug through the
 * public API and failed before its fix.
 */
import { describe, expect, it } from "vitest";
import { GroveError, Prng, SimDevice, Store, Tree } from "../kvstore/index.js";
import { FreeSpace, checkSpace, formatVolume, openVolume } from "../alloc/index.js";
import { expectClean } from "./helpers.js";

/** A volume holding tree 256 with one committed key, "a" = "1". */
function oneKeyVolume(): { device: SimDevice; store: Store; space: FreeSpace; tree: Tree } {
  const device = new SimDevice(4096);
  const { store, space } = formatVolume(device);
  const tree = store.createTree(256);
  tree.put(Buffer.from("a"), Buffer.from("1"));
  store.commit();
  return { device, store, space, tree };
}

describe("regressions", () => {
  it("dropTree of a large tree on a full volume frees it instead of poisoning the volume", () => {
    const device = new SimDevice(1024);
    const { store, space } = formatVolume(device);
    store.createTree(256);
    store.commit();
    const prng = new Prng(1);
    let refusal: unknown = null;
    for (let n = 1; refusal === null; n++) {
      try {
        store.openTree(256).put(prng.bytes(16), prng.bytes(prng.between(100, 400)));
        if (n % 50 === 0) store.commit();
      } catch (error) {
        refusal = error;
      }
    }
    expect((refusal as GroveError).code).toBe("ENOSPC");
    store.commit();
    expect(store.isPoisoned).toBe(false);

    // Dropping the tree is how a user gets space back. It must either succeed or
    // refuse cleanly. It used to fail the nested root-tree delete's reserve after
    // every node of the tree was already freed, and poison the volume.
    let error: unknown = null;
    try {
      store.dropTree(256);
    } catch (caught) {
      error = caught;
    }
    expect(store.isPoisoned).toBe(false);
    expect(error).toBeNull();
    store.commit();
    expect(store.hasTree(256)).toBe(false);
    expectClean(device, space);
  });

  it("every createTree the volume accepted can be committed (root-tree growth is reserved)", () => {
    const device = new SimDevice(4096);
    const { store, space } = formatVolume(device);
    let created = 0;
    let refusal: unknown = null;
    try {
      for (;;) {
        store.createTree(256 + created);
        created++;
      }
    } catch (error) {
      refusal = error;
    }
    expect((refusal as GroveError).code).toBe("ENOSPC");
    expect(store.isPoisoned).toBe(false);
    // The refused call changed nothing; the accepted ones must commit. It used
    // to be that the commit fixpoint ran out of blocks while recording the new trees
    // in the root tree (ENOSPC_alloc) and poisoned the volume.
    let commitError: unknown = null;
    try {
      store.commit();
    } catch (error) {
      commitError = error;
    }
    expect(commitError).toBeNull();
    expect(store.isPoisoned).toBe(false);
    expect(store.treeIds().filter((id) => id >= 256).length).toBe(created);
    expectClean(device, space);
  });

  it("a tree handle held across dropTree + abort stays the live tree", () => {
    const { device, store, tree } = oneKeyVolume();

    store.dropTree(256);
    // abort(): every tree returns to its committed state, tree 256 included.
    store.abort();
    expect(tree.get(Buffer.from("a"))).toEqual(Buffer.from("1"));

    // The handle still works, so a caller keeps using it. It used to be an
    // orphan: the store registered a second Tree object for 256, so the put's new
    // root was never recorded, while the committed nodes it shadowed were freed.
    tree.put(Buffer.from("b"), Buffer.from("2"));
    store.commit();
    expect(checkSpace(device).problems).toEqual([]);
    store.close();
    const reopened = openVolume(device.reopen());
    expect(reopened.store.openTree(256).get(Buffer.from("b"))).toEqual(Buffer.from("2"));
  });

  it("a cursor whose key was deleted under it does not report valid and then fail an assertion", () => {
    const device = new SimDevice(4096);
    const { store, space } = formatVolume(device);
    const tree = store.createTree(256);
    for (let i = 0; i < 10; i++) tree.put(Buffer.from([i]), Buffer.from([i]));
    const cursor = tree.cursor();
    expect(cursor.seek(Buffer.from([5]))).toBe(true);
    tree.delete(Buffer.from([5]));
    // It used to report valid and then fail value() with an AssertionFailure,
    // the class reserved for broken invariants.
    expect(cursor.valid).toBe(false);
    expect(() => cursor.value()).toThrow(expect.objectContaining({ code: "ENOENT" }));
    // The walk itself continues correctly at the neighbours.
    expect(cursor.next()).toBe(true);
    expect(cursor.key()).toEqual(Buffer.from([6]));
    store.commit();
    expectClean(device, space);
  });

  it("a dropped tree's handle fails with ENOENT once the drop commits", () => {
    const { device, store, space, tree } = oneKeyVolume();
    store.dropTree(256);
    store.commit();
    expect(() => tree.get(Buffer.from("a"))).toThrow(expect.objectContaining({ code: "ENOENT" }));
    const again = store.createTree(256);
    expect(again.get(Buffer.from("a"))).toBeUndefined();
    store.commit();
    expectClean(device, space);
  });
});

describe("poisoning and the node cache", () => {
  for (const failure of ["write", "flush"] as const) {
    it(`a failed ${failure} during commit poisons the volume until it is reopened`, () => {
      const { device, store, tree } = oneKeyVolume();
      tree.put(Buffer.from("lost"), Buffer.from("2"));
      // The first operation of the next commit is a node write; the one after all writes is the flush.
      const before = device.operations;
      device.failAtOperation = failure === "write" ? before + 1 : before + 1 + store.dirtyBytes / 4096;
      expect(() => store.commit()).toThrow(expect.objectContaining({ code: "EIO" }));
      expect(store.isPoisoned).toBe(true);
      for (const call of [
        () => tree.get(Buffer.from("a")),
        () => tree.put(Buffer.from("x"), Buffer.from("y")),
        () => store.commit(),
        () => store.openTree(256),
      ]) {
        expect(call).toThrow(expect.objectContaining({ code: "EIO", detail: "EIO_poisoned" }));
      }
      store.close();
      const reopened = openVolume(device.reopen());
      const again = reopened.store.openTree(256);
      expect(again.get(Buffer.from("a"))).toEqual(Buffer.from("1"));
      expect(again.get(Buffer.from("lost"))).toBeUndefined();
      expectClean(reopened.store.device, reopened.space);
    });
  }

  it("keeps clean nodes within the configured bound", () => {
    const device = new SimDevice(16384);
    const { store } = formatVolume(device);
    const tree = store.createTree(256);
    const prng = new Prng(4);
    for (let i = 0; i < 20_000; i++) tree.put(prng.bytes(16), prng.bytes(100));
    store.commit();
    store.close();
    const bound = 256 * 1024;
    const reopened = openVolume(device.reopen(), { cacheBytes: bound });
    let count = 0;
    for (const _ of reopened.store.openTree(256).range()) count++;
    expect(count).toBe(20_000);
    expect(reopened.store.cachedCleanBytes).toBeGreaterThan(0);
    expect(reopened.store.cachedCleanBytes).toBeLessThanOrEqual(bound);
  });
});
