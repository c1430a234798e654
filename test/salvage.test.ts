/**
 * fsck -y on randomly damaged metadata, single and duplicate, through the
 * library: a seeded volume of files, directories, hard links, a snapshot and
 * a clone; then 1–4 of its reachable nodes (of any tree but the root tree)
 * are overwritten with garbage or have a byte flipped.
 * The check, salvage, check, repair steps of `grovefs fsck -y` must leave a
 * volume whose checker is clean, on which every file that is left reads back
 * as it was (at one of its paths or in /lost+found), unless the salvage
 * named its extent map as rebuilt.
 *
 * GROVE_SEED=<n> replays one seed; GROVE_SALVAGE_TRIALS=<n> sets the trials
 * per seed (default 4).
 */
import { describe, expect, it } from "vitest";
import { Prng, SimDevice, blockSizeBytes } from "../kvstore/index.js";
import { GroveFs, checkFilesystem, repairFilesystem, salvageDamagedTrees } from "../fs/index.js";
import { O_CREAT, O_RDWR, expectFsClean, fileInventory, root, writeFile, type FileInventory } from "./fs_helpers.js";
import { reachableNodes, seeds, withSeed } from "./helpers.js";

const trials = Number(process.env.GROVE_SALVAGE_TRIALS ?? 4);
const treeIdRoot = 1;
/** Where a node's header holds its (first copy's) LBA: the layout table in kvstore/node.ts. */
const nodeLbaOffset = 8;

function inventory(device: SimDevice): FileInventory {
  return fileInventory((subvolume) => GroveFs.open(device.reopen(), { readOnly: true, subvolume }));
}

/** A random tree of files (small, inline, multi-extent, sparse), hard links, a snapshot and a diverged clone. */
function build(rng: Prng, metadata: "single" | "dup"): SimDevice {
  let device = new SimDevice(16384);
  GroveFs.format(device, { metadata });
  device = device.reopen();
  let g = GroveFs.open(device);
  const dirs = ["/"];
  const files: string[] = [];
  const content = (n: number): Buffer => rng.bytes(n);
  for (let i = 0; i < 180; i++) {
    const dir = rng.pick(dirs);
    const p = `${dir === "/" ? "" : dir}/n${i}`;
    const r = rng.below(10);
    if (r < 2) {
      g.mkdir(p, 0o755, root);
      dirs.push(p);
    } else if (r < 3 && files.length > 0) {
      g.link(rng.pick(files), p);
    } else if (r < 4) {
      const fh = g.create(p, 0o644, O_CREAT | O_RDWR, root);
      for (let k = 0; k < 12; k++) g.write(fh, content(4096), 4096, rng.below(200) * 4096);
      g.release(fh);
      files.push(p);
    } else {
      writeFile(g, p, content(rng.chance(0.5) ? rng.below(3000) : rng.below(60_000)));
      files.push(p);
    }
  }
  g.createSubvolume("snap", { readOnly: true });
  g.createSubvolume("clone", { readOnly: false });
  for (let i = 0; i < 30; i++) writeFile(g, rng.pick(files), content(rng.below(9000)));
  g.close();
  device = device.reopen();
  g = GroveFs.open(device, { subvolume: "clone" });
  for (let i = 0; i < 30; i++) writeFile(g, `/c${i}`, content(rng.below(9000)));
  g.close();
  return device.reopen();
}

/**
 * Damages 1–4 random nodes (garbage or a flipped bit). With duplicate
 * metadata a node is its two copies (a second copy's header names the
 * first's LBA): half the time one copy is damaged (healed from the other),
 * else both (salvaged, as with single metadata).
 */
function damage(device: SimDevice, rng: Prng): number[] {
  const copies = new Map<number, number[]>();
  const header = Buffer.alloc(blockSizeBytes);
  for (const node of reachableNodes(device, checkFilesystem(device).space.forest)) {
    if (node.owner === treeIdRoot) continue;
    device.read(node.lba, header);
    const first = Number(header.readBigUInt64LE(nodeLbaOffset));
    copies.set(first, [...(copies.get(first) ?? []), node.lba]);
  }
  const nodes = [...copies.values()];
  const victims: number[] = [];
  for (let k = 1 + rng.below(4); k > 0; k--) {
    const pair = rng.pick(nodes);
    for (const lba of pair.length > 1 && rng.chance(0.5) ? [rng.pick(pair)] : pair) {
      const block = Buffer.alloc(blockSizeBytes);
      device.read(lba, block);
      if (rng.chance(0.5)) block.set(rng.bytes(blockSizeBytes));
      else block[rng.below(blockSizeBytes)]! ^= 1 << rng.below(8);
      device.write(lba, block);
      victims.push(lba);
    }
  }
  device.flush();
  return victims;
}

describe.each([
  { metadata: "single" as const, defaults: [1, 2, 3] },
  { metadata: "dup" as const, defaults: [4, 5] },
])("salvage of random metadata damage ($metadata metadata)", ({ metadata, defaults }) => {
  for (const seed of seeds(defaults)) {
    it(`seed ${seed}: fsck -y's steps leave a clean volume on which every file left reads back`, () => {
      withSeed(seed, "test/salvage.test.ts", () => {
        const rng = new Prng(seed);
        const pristine = build(rng, metadata);
        const base = inventory(pristine.reopen());
        for (let t = 0; t < trials; t++) {
          let device = pristine.reopen();
          const victims = damage(device, rng);
          device = device.reopen();
          const first = checkFilesystem(device, { verifyData: true });
          expect(first.problems.length, `damage at ${victims.join(", ")} is found`).toBeGreaterThan(0);
          const salvage = salvageDamagedTrees(device, first);
          expect(salvage?.remaining ?? [], `trial ${t}, damage at ${victims.join(", ")}`).toEqual([]);
          device = device.reopen();
          const repair = repairFilesystem(device, checkFilesystem(device, { verifyData: true }));
          expect(repair.remaining, `trial ${t}, damage at ${victims.join(", ")}`).toEqual([]);
          device = device.reopen();
          expectFsClean(device);
          const rebuilt = new Set((salvage?.fixed ?? []).flatMap((l) => [...l.matchAll(/inode (\d+)(?: \("[^"]*"\))?: rebuilt its extent map/g)].map((m) => Number(m[1]))));
          for (const [key, file] of inventory(device.reopen())) {
            const was = base.get(key);
            expect(was, `trial ${t}: ${key} was in the base volume`).toBeDefined();
            for (const p of file.paths) expect(was!.paths.has(p) || p.startsWith("/lost+found/"), `trial ${t}: ${key} at ${p}`).toBe(true);
            if (!rebuilt.has(Number(key.split(":")[1]))) expect(file.sha, `trial ${t}: ${key} (${[...file.paths].join(", ")}) reads back`).toBe(was!.sha);
          }
          // Still usable: a read-write mount writes, and the checker stays clean.
          const g = GroveFs.open(device.reopen());
          writeFile(g, "/after-salvage", Buffer.from("ok"));
          g.close();
          expectFsClean(device.reopen());
        }
      });
    });
  }
});
