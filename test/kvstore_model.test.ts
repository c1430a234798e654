/**
 * Model-based randomised test of the B+-tree forest against Maps: puts,
 * deletes, gets and cursors in both directions over several trees, with
 * commits, aborts, reopens, and trees created and dropped along the way. Both
 * checkers run after every commit.
 */
import { describe, expect, it } from "vitest";
import { Prng, SimDevice, Store, Tree, keySizeMaxBytes, valueSizeMaxBytes } from "../kvstore/index.js";
import { FreeSpace, Volume, formatVolume, openVolume } from "../alloc/index.js";
import {
  ForestModel,
  TreeModel,
  cloneForest,
  expectClean,
  expectForestEquals,
  seeds,
  testMetadata,
  withSeed,
} from "./helpers.js";

const opsPerSeed = Number(process.env.GROVE_OPS ?? 100_000);

class Harness {
  device: SimDevice;
  store!: Store;
  space!: FreeSpace;
  model: ForestModel = new Map();
  committed: ForestModel = new Map();
  nextTreeId = 256;
  commits = 0;

  constructor(readonly prng: Prng) {
    this.device = new SimDevice(65536);
    this.attach(formatVolume(this.device, { cacheBytes: 2 * 1024 * 1024, dupMetadata: testMetadata === "dup" }));
    for (let i = 0; i < 3; i++) this.createTree();
    this.commit();
  }

  attach(volume: Volume): void {
    this.store = volume.store;
    this.space = volume.space;
  }

  createTree(): void {
    const id = this.nextTreeId++;
    this.store.createTree(id);
    this.model.set(id, new Map());
  }

  tree(): [Tree, TreeModel] {
    const ids = [...this.model.keys()];
    const id = this.prng.pick(ids);
    return [this.store.openTree(id), this.model.get(id)!];
  }

  /** Keys from a small alphabet so that puts replace and deletes hit; sometimes very long. */
  key(): Buffer {
    const p = this.prng;
    if (p.chance(0.02)) return p.bytes(p.between(1, keySizeMaxBytes));
    const length = p.between(0, 6);
    const key = Buffer.alloc(length);
    for (let i = 0; i < length; i++) key[i] = p.below(24);
    return key;
  }

  value(): Buffer {
    const p = this.prng;
    if (p.chance(0.05)) return p.bytes(p.between(300, valueSizeMaxBytes));
    return p.bytes(p.between(0, 60));
  }

  existingKey(model: TreeModel): Buffer | null {
    if (model.size === 0) return null;
    // Sampling a Map by position is O(n); a bounded walk from a random start is enough here.
    const skip = this.prng.below(Math.min(model.size, 64));
    let i = 0;
    for (const key of model.keys()) if (i++ === skip) return Buffer.from(key, "hex");
    return null;
  }

  commit(): void {
    this.store.commit();
    this.committed = cloneForest(this.model);
    this.commits++;
    expectClean(this.device, this.space);
  }

  reopen(): void {
    this.store.close();
    this.device = this.device.reopen();
    this.attach(openVolume(this.device, { cacheBytes: this.prng.pick([64 * 1024, 4 * 1024 * 1024]) }));
    this.model = cloneForest(this.committed);
    expectForestEquals(this.store, this.model);
  }

  abort(): void {
    this.store.abort();
    this.model = cloneForest(this.committed);
    expectForestEquals(this.store, this.model);
  }

  step(): void {
    const p = this.prng;
    const roll = p.below(100_000);
    if (roll < 55_000) {
      const [tree, model] = this.tree();
      const key = p.chance(0.3) ? (this.existingKey(model) ?? this.key()) : this.key();
      const value = this.value();
      const isNew = tree.put(key, value);
      expect(isNew).toBe(!model.has(key.toString("hex")));
      model.set(key.toString("hex"), value);
    } else if (roll < 67_000) {
      const [tree, model] = this.tree();
      const key = p.chance(0.8) ? (this.existingKey(model) ?? this.key()) : this.key();
      expect(tree.delete(key)).toBe(model.delete(key.toString("hex")));
    } else if (roll < 85_000) {
      const [tree, model] = this.tree();
      const key = p.chance(0.5) ? (this.existingKey(model) ?? this.key()) : this.key();
      const got = tree.get(key);
      const expected = model.get(key.toString("hex"));
      if (expected === undefined) expect(got).toBeUndefined();
      else expect(got?.equals(expected)).toBe(true);
    } else if (roll < 99_000) {
      this.cursorWalk();
    } else if (roll < 99_800) {
      this.commit();
    } else if (roll < 99_900) {
      this.reopen();
    } else if (roll < 99_980) {
      this.abort();
    } else if (roll < 99_990) {
      if (this.model.size < 6) this.createTree();
    } else if (this.model.size > 1) {
      const id = p.pick([...this.model.keys()]);
      this.store.dropTree(id);
      this.model.delete(id);
    }
  }

  /** A walk of up to 40 steps from a random key, in a random direction, sometimes mutating mid-walk. */
  cursorWalk(): void {
    const p = this.prng;
    const [tree, model] = this.tree();
    const sorted = [...model.keys()].sort();
    const from = this.key().toString("hex");
    const forward = p.chance(0.5);
    const cursor = tree.cursor();
    let ok = forward ? cursor.seek(Buffer.from(from, "hex")) : cursor.seekLE(Buffer.from(from, "hex"));
    let index = forward ? sorted.findIndex((k) => k >= from) : findLastIndex(sorted, (k) => k <= from);
    if (index === -1) index = forward ? sorted.length : -1;
    if (!forward) {
      // scanFromLE: the same start (the first key when none is <= from), forward, views of up to 40 items.
      const seen: string[] = [];
      tree.scanFromLE(Buffer.from(from, "hex"), (key, value) => {
        expect(value.equals(model.get(key.toString("hex"))!)).toBe(true);
        seen.push(key.toString("hex"));
        return seen.length < 40;
      });
      const start = Math.max(index, 0);
      expect(seen).toEqual(sorted.slice(start, start + 40));
    }
    for (let stepCount = 0; stepCount < 40; stepCount++) {
      const expected = sorted[index];
      expect(ok).toBe(expected !== undefined);
      if (!ok || expected === undefined) return;
      expect(cursor.key().toString("hex")).toBe(expected);
      expect(cursor.value().equals(model.get(expected)!)).toBe(true);
      if (p.chance(0.003)) {
        // Delete the current key under the cursor: the walk must continue at its neighbour.
        tree.delete(Buffer.from(expected, "hex"));
        model.delete(expected);
        sorted.splice(index, 1);
        if (!forward) index--;
        ok = forward ? cursor.next() : cursor.prev();
        continue;
      }
      ok = forward ? cursor.next() : cursor.prev();
      index += forward ? 1 : -1;
    }
  }
}

function findLastIndex<T>(items: T[], predicate: (item: T) => boolean): number {
  for (let i = items.length - 1; i >= 0; i--) if (predicate(items[i]!)) return i;
  return -1;
}

describe("B+-tree forest against a Map model", () => {
  for (const seed of seeds([1, 2, 3, 4])) {
    it(`seed ${seed}: ${opsPerSeed} operations`, () => {
      withSeed(seed, "test/kvstore_model.test.ts", () => {
        const h = new Harness(new Prng(seed));
        for (let i = 0; i < opsPerSeed; i++) h.step();
        h.commit();
        h.reopen();
        expect(h.commits).toBeGreaterThan(10);
        console.log(`seed ${seed}: ${opsPerSeed} ops, ${h.commits} commits, trees ${[...h.model.values()].map((m) => m.size).join("/")}`);
      });
    });
  }

  it("a tree emptied by deletes shrinks back to one root leaf and returns its blocks", () => {
    const device = new SimDevice(16384);
    const { store, space } = formatVolume(device);
    const before = space.usage().usedBlocks;
    const tree = store.createTree(256);
    const prng = new Prng(7);
    const keys: Buffer[] = [];
    for (let i = 0; i < 20_000; i++) {
      const key = prng.bytes(16);
      keys.push(key);
      tree.put(key, prng.bytes(100));
    }
    store.commit();
    expect(tree.level).toBeGreaterThanOrEqual(2);
    for (const key of keys) expect(tree.delete(key)).toBe(true);
    store.commit();
    expect(tree.level).toBe(0);
    expect(tree.count).toBe(0);
    expectClean(device, space);
    // One more block than before: the tree's own (empty) root leaf.
    expect(space.usage().usedBlocks).toBe(before + 1);
    store.dropTree(256);
    store.commit();
    expect(space.usage().usedBlocks).toBe(before);
    expectClean(device, space);
  });

  it("a node is copied at most once per transaction", () => {
    const device = new SimDevice(16384);
    const { store, space } = formatVolume(device);
    const tree = store.createTree(256);
    const prng = new Prng(8);
    for (let i = 0; i < 5_000; i++) tree.put(prng.bytes(16), prng.bytes(50));
    store.commit();
    const writesBefore = device.writes;
    const key = prng.bytes(16);
    for (let i = 0; i < 1_000; i++) tree.put(key, prng.bytes(50));
    const dirty = store.dirtyBytes / 4096;
    // One leaf-to-root path of the tree, plus the root tree's and free-space trees' at commit.
    expect(dirty).toBe(tree.level + 1);
    store.commit();
    expect(device.writes - writesBefore).toBeLessThan(20);
    expectClean(device, space);
  });
});
