/**
 * ENOSPC: filling a small device ends in a clean ENOSPC that loses nothing
 * committed and leaves the volume consistent; after deletes it takes writes again.
 *
 * The filesystem cases fill small volumes (8 to 28 MiB) with many small
 * files, large ones, or both, and then delete in one burst with no commit
 * in between (as a FUSE mount does within its 5-second interval): every
 * unlink, rmdir and truncate to zero must be accepted, and the space they
 * free must take new files at once. (Issue 15: 3,004 of 16,113 unlinks got
 * ENOSPC on a 16 MiB volume of 32,226 100-byte files, because the commit
 * estimate each admission carries grew with every range the burst freed
 * while those blocks were still pending.) Seeded cases replay with
 * GROVE_SEED=n.
 */
import { describe, expect, it } from "vitest";
import { GroveError, Prng, SimDevice, deviceBlocksMin } from "../kvstore/index.js";
import { formatVolume, openVolume } from "../alloc/index.js";
import { FileSystemOps, GroveFs } from "../fs/index.js";
import { ForestModel, cloneForest, expectClean, expectForestEquals, seeds, withSeed } from "./helpers.js";
import { O_CREAT, O_RDONLY, O_RDWR, expectFsClean, pattern, root, testClock } from "./fs_helpers.js";

const testFile = "test/enospc.test.ts";
const timeout = 120_000;

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

/** A freshly formatted GroveFs on a simulated device of `blocks` 4 KiB blocks. */
function freshFs(blocks: number, metadata?: "single" | "dup"): { device: SimDevice; fs: GroveFs } {
  let device = new SimDevice(blocks);
  const clock = testClock();
  GroveFs.format(device, { clock, metadata });
  device = device.reopen();
  return { device, fs: GroveFs.open(device, { clock }) };
}

function isEnospc(error: unknown): boolean {
  return error instanceof GroveError && error.code === "ENOSPC";
}

/** Writes a new file of `bytes`; false when refused for space (the volume must not be poisoned by it). */
function tryWriteFile(fs: GroveFs, path: string, bytes: Buffer): boolean {
  let fh: number;
  try {
    fh = fs.create(path, 0o644, O_CREAT | O_RDWR, root);
  } catch (error) {
    if (!isEnospc(error) || fs.store.isPoisoned) throw error;
    return false;
  }
  try {
    fs.write(fh, bytes, bytes.length, 0);
    return true;
  } catch (error) {
    if (!isEnospc(error) || fs.store.isPoisoned) throw error;
    fs.release(fh);
    fh = -1;
    fs.unlink(path);
    return false;
  } finally {
    if (fh >= 0) fs.release(fh);
  }
}

/** Fills the volume with files of `sizeOf(i)` bytes, `perDir` to a directory, until ENOSPC; returns their paths. */
function fill(fs: GroveFs, sizeOf: (i: number) => number, perDir = 1000): string[] {
  const paths: string[] = [];
  for (let d = 0; ; d++) {
    try {
      fs.mkdir(`/d${d}`, 0o755, root);
    } catch (error) {
      if (!isEnospc(error) || fs.store.isPoisoned) throw error;
      return paths;
    }
    for (let i = 0; i < perDir; i++) {
      const path = `/d${d}/f${i}`;
      if (!tryWriteFile(fs, path, pattern(sizeOf(paths.length), paths.length))) return paths;
      paths.push(path);
    }
  }
}

/** What a full volume still does: `operation` must be accepted, whatever was deleted before it in this transaction. */
function accepted(fs: GroveFs, what: string, operation: () => void): void {
  const usage = fs.space.usage();
  try {
    operation();
  } catch (error) {
    const detail = `${what} refused with ${usage.availableBlocks} blocks available and ${usage.pendingBlocks} pending`;
    if (error instanceof Error) error.message = `${detail}: ${error.message}`;
    throw error;
  }
}

function expectContent(fs: FileSystemOps, path: string, expected: Buffer): void {
  const fh = fs.open(path, O_RDONLY);
  try {
    const out = Buffer.alloc(expected.length + 1);
    expect(fs.read(fh, out, out.length, 0)).toBe(expected.length);
    expect(out.subarray(0, expected.length).equals(expected)).toBe(true);
  } finally {
    fs.release(fh);
  }
}

describe("a full volume always takes deletes, then writes", () => {
  it(
    "28 MiB of 50k+ 100-byte files in directories of 1,000: unlink of every other one, then new files, in one burst",
    () => {
      const { device, fs } = freshFs(7168);
      const paths = fill(fs, () => 100);
      // Small files live in the tree nodes: duplicate metadata holds half as many.
      expect(paths.length).toBeGreaterThan(50_000 / fs.store.nodeCopies);
      const generation = fs.store.committedGeneration;
      for (let i = 0; i < paths.length; i += 2) accepted(fs, `unlink ${paths[i]}`, () => fs.unlink(paths[i]!));
      // The deletes committed on their own when they needed what they had freed, and rarely.
      const commits = fs.store.committedGeneration - generation;
      expect(commits).toBeGreaterThan(0);
      expect(commits).toBeLessThan(paths.length / 200);
      const deleted = Math.ceil(paths.length / 2);
      for (let i = 0; i < deleted / 2; i++) expect(tryWriteFile(fs, `/d0/new${i}`, pattern(100, -i)), `new file ${i}`).toBe(true);
      for (let i = 1; i < paths.length; i += 998) expectContent(fs, paths[i]!, pattern(100, i));
      fs.close();
      expectFsClean(device.reopen());
    },
    timeout,
  );

  for (const seed of seeds([1, 2, 3, 4, 5])) {
    it(
      `seed ${seed}: 16 MiB of mixed small and large files; unlink, truncate to zero and rmdir of half in random order, then refill`,
      () => {
        withSeed(seed, testFile, () => {
          const rng = new Prng(seed);
          const { device, fs } = freshFs(4096);
          // Mostly inline files, some of a few blocks, a few of ten.
          const sizes = [...new Array<number>(40).fill(100), 700, 3000, 9000, 40_000];
          const sizeOf = new Map<number, number>();
          const paths = fill(
            fs,
            (i) => {
              const size = sizes[rng.below(sizes.length)]!;
              sizeOf.set(i, size);
              return size;
            },
            200,
          );
          expect(paths.length).toBeGreaterThan(1000);
          const full = fs.space.usage();
          const order = paths.map((_, i) => i);
          for (let i = order.length - 1; i > 0; i--) {
            const j = rng.below(i + 1);
            [order[i], order[j]] = [order[j]!, order[i]!];
          }
          const gone = new Set<number>();
          for (const i of order.slice(0, Math.ceil(order.length / 2))) {
            const path = paths[i]!;
            if (rng.below(3) === 0) {
              accepted(fs, `truncate ${path} to 0`, () => fs.truncate(path, 0));
              sizeOf.set(i, 0);
            } else {
              accepted(fs, `unlink ${path}`, () => fs.unlink(path));
              gone.add(i);
            }
          }
          // Directories left empty go too.
          let removedDirs = 0;
          for (const dir of fs.readdir("/").filter((e) => e.name.startsWith("d"))) {
            if (fs.readdir(`/${dir.name}`).length > 2) continue;
            accepted(fs, `rmdir /${dir.name}`, () => fs.rmdir(`/${dir.name}`));
            removedDirs++;
          }
          expect(fs.space.usage().freeBlocks).toBeGreaterThan(full.freeBlocks);
          // What was freed takes new files at once: as many small ones as were deleted, at the least a tenth.
          fs.mkdir("/again", 0o755, root);
          let written = 0;
          while (written < gone.size && tryWriteFile(fs, `/again/n${written}`, pattern(100, written))) written++;
          expect(written).toBeGreaterThan(gone.size / 10);
          for (let i = 0; i < paths.length; i += 37) {
            if (gone.has(i) || (removedDirs > 0 && sizeOf.get(i) === undefined)) continue;
            expectContent(fs, paths[i]!, sizeOf.get(i) === 0 ? Buffer.alloc(0) : pattern(sizeOf.get(i)!, i));
          }
          fs.close();
          expectFsClean(device.reopen());
        });
      },
      timeout,
    );
  }

  it(
    "8 MiB of 256 KiB files: unlink and truncate to zero of every other one, then new large files",
    () => {
      const { device, fs } = freshFs(2048);
      const paths = fill(fs, () => 256 * 1024, 10);
      expect(paths.length).toBeGreaterThan(20);
      for (let i = 0; i < paths.length; i += 2) {
        const path = paths[i]!;
        if (i % 4 === 0) accepted(fs, `unlink ${path}`, () => fs.unlink(path));
        else accepted(fs, `truncate ${path} to 0`, () => fs.truncate(path, 0));
      }
      let written = 0;
      while (tryWriteFile(fs, `/d0/big${written}`, pattern(256 * 1024, 1000 + written))) written++;
      expect(written).toBeGreaterThanOrEqual(Math.floor(paths.length / 2) - 1);
      fs.close();
      expectFsClean(device.reopen());
    },
    timeout,
  );

  it(
    "16 MiB full of 100-byte files with a snapshot taken when full: deletes are refused cleanly or taken; deleting the snapshot frees room for the rest",
    () => {
      const { device, fs } = freshFs(4096);
      const paths = fill(fs, () => 100);
      expect(paths.length).toBeGreaterThan(30_000 / fs.store.nodeCopies);
      fs.createSubvolume("full", { readOnly: true });
      // The snapshot shares every node: an unlink frees nothing and copies a path. The reserve pays for some;
      // the rest is refused up front, changing nothing, and the volume stays usable.
      const gone = new Set<number>();
      let refused = 0;
      for (let i = 0; i < paths.length; i += 2) {
        try {
          fs.unlink(paths[i]!);
          gone.add(i);
        } catch (error) {
          if (!isEnospc(error) || fs.store.isPoisoned) throw error;
          refused++;
        }
      }
      expect(gone.size).toBeGreaterThan(0);
      expect(fs.getattr(paths[1]!).size).toBe(100);
      // Deleting the snapshot is always accepted, and gives back what only it held.
      accepted(fs, "delete the snapshot", () => fs.deleteSubvolume("full"));
      fs.finishDeletions();
      for (let i = 0; i < paths.length; i += 2) {
        if (!gone.has(i)) accepted(fs, `unlink ${paths[i]} after the snapshot went`, () => fs.unlink(paths[i]!));
      }
      for (let i = 0; i < paths.length / 4; i++) expect(tryWriteFile(fs, `/d0/new${i}`, pattern(100, -i)), `new file ${i}`).toBe(true);
      expect(refused).toBeGreaterThan(0);
      fs.close();
      expectFsClean(device.reopen());
    },
    timeout,
  );

  it(
    "8 MiB of 100-byte files, a snapshot at half full: what was written after it is always deleted, the snapshot's files stay intact",
    () => {
      // Single metadata: on 8 MiB with dup, the shared unlinks spend all that the deletes freed, and no new file fits (see the note of issue 12).
      const { device, fs } = freshFs(2048, "single");
      const before: string[] = [];
      fs.mkdir("/old", 0o755, root);
      for (let i = 0; i < 6000; i++) {
        expect(tryWriteFile(fs, `/old/f${i}`, pattern(100, i))).toBe(true);
        before.push(`/old/f${i}`);
      }
      fs.createSubvolume("half", { readOnly: true });
      const after = fill(fs, () => 100);
      expect(after.length).toBeGreaterThan(1000);
      for (const path of after) accepted(fs, `unlink ${path}`, () => fs.unlink(path));
      // Files the snapshot shares: refused cleanly once the reserve is spent, never poisoning.
      let taken = 0;
      for (let i = 0; i < before.length; i += 2) {
        try {
          fs.unlink(before[i]!);
          taken++;
        } catch (error) {
          if (!isEnospc(error) || fs.store.isPoisoned) throw error;
        }
      }
      expect(taken).toBeGreaterThan(0);
      let written = 0;
      while (written < after.length / 2 && tryWriteFile(fs, `/old/new${written}`, pattern(100, -written))) written++;
      expect(written).toBeGreaterThan(after.length / 4);
      const view = fs.snapshotView("half");
      for (let i = 0; i < before.length; i += 101) expectContent(view, before[i]!, pattern(100, i));
      fs.close();
      expectFsClean(device.reopen());
    },
    timeout,
  );
});
