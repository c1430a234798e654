/**
 * Scrub through the library (fs/scrub.ts over kvstore/scrub.ts): a seeded
 * volume of files, hard links, a fragmented file, a snapshot, a clone and a
 * snapshot being deleted.
 * - Duplicate metadata, up to 1% of the node copies damaged (one copy of a
 *   node each: garbage or a flipped bit): scrub counts each as corrected,
 *   the next commit rewrites it, every file reads back, and the checker
 *   (data checksums too) is then clean; a second scrub finds nothing.
 * - Scrub stepped with writes, commits, a snapshot and a deletion between
 *   the steps (as a mount daemon runs it): it restarts from each new durable
 *   state, reports no false damage, and still corrects what was damaged
 *   before it began.
 * - A subvolume being deleted is skipped: the nodes its deletion released are
 *   free, and overwritten here, as a reuse would.
 * - Read-ahead (scrub and the checker): an internal node's children come in
 *   runs of adjacent blocks.
 * - A damaged data block: named with its path, subvolume and bytes, as uncorrected.
 * - Single metadata: a damaged node is uncorrected, and named.
 * - A pass resumed from its position reads only what lies after it.
 *
 * GROVE_SEED=<n> replays one seed; GROVE_SCRUB_TRIALS=<n> sets the trials per seed (default 3).
 */
import { describe, expect, it } from "vitest";
import { Prng, SimDevice, blockSizeBytes, checkForest } from "../kvstore/index.js";
import { GroveFs, checkFilesystem } from "../fs/index.js";
import { O_CREAT, O_RDWR, expectFsClean, fileExtents, fileInventory, root, writeFile, type FileInventory } from "./fs_helpers.js";
import { reachableNodes, seeds, withSeed } from "./helpers.js";

const trials = Number(process.env.GROVE_SCRUB_TRIALS ?? 3);
/** Where a node's header holds its (first copy's) LBA: the layout table in kvstore/node.ts. */
const nodeLbaOffset = 8;

function inventory(device: SimDevice): FileInventory {
  return fileInventory((subvolume) => GroveFs.open(device.reopen(), { readOnly: true, subvolume }));
}

function build(rng: Prng, metadata: "single" | "dup"): SimDevice {
  let device = new SimDevice(16384);
  GroveFs.format(device, { metadata });
  device = device.reopen();
  let g = GroveFs.open(device);
  const dirs = ["/"];
  const files: string[] = [];
  for (let i = 0; i < 200; i++) {
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
      for (let k = 0; k < 12; k++) g.write(fh, rng.bytes(4096), 4096, rng.below(200) * 4096);
      g.release(fh);
      files.push(p);
    } else {
      writeFile(g, p, rng.bytes(rng.chance(0.5) ? rng.below(3000) : rng.below(60_000)));
      files.push(p);
    }
  }
  g.createSubvolume("snap", { readOnly: true });
  g.createSubvolume("clone", { readOnly: false });
  g.createSubvolume("doomed", { readOnly: false });
  for (let i = 0; i < 30; i++) writeFile(g, rng.pick(files), rng.bytes(rng.below(9000)));
  g.close();
  device = device.reopen();
  g = GroveFs.open(device, { subvolume: "clone" });
  for (let i = 0; i < 30; i++) writeFile(g, `/c${i}`, rng.bytes(rng.below(9000)));
  g.close();
  device = device.reopen();
  // A clone with nodes and data of its own, for the tests that delete it.
  g = GroveFs.open(device, { subvolume: "doomed" });
  g.mkdir("/own", 0o755, root);
  for (let i = 0; i < 150; i++) writeFile(g, `/own/f${i}`, rng.bytes(rng.below(3000)));
  g.close();
  return device.reopen();
}

/** The node copies of the volume: first copy's LBA → its copies' LBAs. */
function nodeCopies(device: SimDevice): number[][] {
  const copies = new Map<number, number[]>();
  const header = Buffer.alloc(blockSizeBytes);
  for (const node of reachableNodes(device, checkFilesystem(device).space.forest)) {
    device.read(node.lba, header);
    const first = Number(header.readBigUInt64LE(nodeLbaOffset));
    copies.set(first, [...(copies.get(first) ?? []), node.lba]);
  }
  return [...copies.values()];
}

/** Damages one copy of up to 1% of the nodes (at least one); returns the damaged blocks. */
function damageOneCopy(device: SimDevice, rng: Prng): number[] {
  const pairs = nodeCopies(device);
  const count = 1 + rng.below(Math.max(1, Math.floor((pairs.length * 2) / 100)));
  const victims = new Set<number>();
  for (let k = 0; k < count; k++) {
    const pair = rng.pick(pairs);
    if (pair.some((lba) => victims.has(lba))) continue;
    victims.add(rng.pick(pair));
  }
  for (const lba of victims) {
    const block = Buffer.alloc(blockSizeBytes);
    device.read(lba, block);
    if (rng.chance(0.5)) block.set(rng.bytes(blockSizeBytes));
    else block[rng.below(blockSizeBytes)]! ^= 1 << rng.below(8);
    device.write(lba, block);
  }
  device.flush();
  return [...victims].sort((a, b) => a - b);
}

function expectSameFiles(device: SimDevice, base: FileInventory, what: string): void {
  const now = inventory(device);
  expect([...now.keys()].sort(), what).toEqual([...base.keys()].sort());
  for (const [key, file] of base) expect(now.get(key)!.sha, `${what}: ${key} (${[...file.paths].join(", ")})`).toBe(file.sha);
}

describe("scrub", () => {
  for (const seed of seeds([11, 12])) {
    it(`seed ${seed}: dup metadata, up to 1% of the copies damaged: all corrected, files intact, checker clean`, () => {
      withSeed(seed, "test/scrub.test.ts", () => {
        const rng = new Prng(seed);
        const pristine = build(rng, "dup");
        const base = inventory(pristine.reopen());
        for (let t = 0; t < trials; t++) {
          let device = pristine.reopen();
          const victims = damageOneCopy(device, rng);
          device = device.reopen();
          const g = GroveFs.open(device);
          const scrub = g.scrub();
          scrub.run();
          const summary = scrub.summary();
          expect(summary.uncorrected, `trial ${t}, damage at ${victims.join(", ")}: ${summary.findings.join("\n")}`).toBe(0);
          // The store counts each damaged copy once, whether the open's reads or the scrub found it.
          expect(g.store.repairCounters.found, `trial ${t}, damage at ${victims.join(", ")}`).toBe(victims.length);
          expect(summary.corrected).toBeGreaterThan(0);
          expect(summary.damagedFiles).toEqual([]);
          g.close();
          device = device.reopen();
          expectFsClean(device);
          expect(checkFilesystem(device).space.forest.copyRepairs, "no damaged copy is left").toEqual([]);
          expectSameFiles(device, base, `trial ${t}`);
          const again = GroveFs.open(device.reopen());
          const second = again.scrub();
          second.run();
          expect(second.summary().corrected + second.summary().uncorrected, "a second scrub finds nothing").toBe(0);
          again.close();
        }
      });
    });

    it(`seed ${seed}: stepped between writes, commits, a snapshot and a deletion, it restarts, corrects the old damage and reports nothing false`, () => {
      withSeed(seed, "test/scrub.test.ts", () => {
        const rng = new Prng(seed);
        let device = build(rng, "dup");
        const victims = damageOneCopy(device, rng);
        device = device.reopen();
        const g = GroveFs.open(device, { deletionStepNodes: 1 });
        // A deletion under way in the durable state, its released blocks reused: scrub must not walk that tree.
        const doomed = g.listSubvolumes().find((r) => r.name === "doomed")!.id;
        g.deleteSubvolume("doomed");
        for (let i = 0; i < 12; i++) {
          g.runDeletions(1);
          g.sync();
        }
        for (let i = 0; i < 60; i++) writeFile(g, `/fill${i}`, rng.bytes(2000 + rng.below(9000)));
        g.sync();
        expect(g.store.hasTree(doomed), "the deletion is still under way").toBe(true);
        const scrub = g.scrub();
        let steps = 0;
        while (!scrub.step(8)) {
          steps++;
          const r = rng.below(20);
          if (r < 10) writeFile(g, `/w${rng.below(40)}`, rng.bytes(rng.below(20_000)));
          else if (r < 11) {
            try {
              g.unlink(`/w${rng.below(40)}`);
            } catch {
              // not there
            }
          }
          else if (r < 12 && steps % 50 === 0) g.createSubvolume(`s${steps}`, { readOnly: true });
          g.maintenance();
          if (rng.chance(0.3)) g.sync();
        }
        const summary = scrub.summary();
        expect(summary.restarts).toBeGreaterThan(0);
        expect(summary.uncorrected, summary.findings.join("\n")).toBe(0);
        // A damaged copy the writes replaced, or in the deleted clone, is no longer reachable: none is left below.
        expect(g.store.repairCounters.found).toBeLessThanOrEqual(victims.length);
        g.close();
        device = device.reopen();
        expectFsClean(device);
        expect(checkFilesystem(device).space.forest.copyRepairs, `damage at ${victims.join(", ")} is healed`).toEqual([]);
      });
    });
  }

  it("a subvolume being deleted is not walked: the nodes its deletion released, overwritten since, are not reported", () => {
    let device = build(new Prng(21), "dup");
    const g = GroveFs.open(device, { deletionStepNodes: 1 });
    const doomed = g.listSubvolumes().find((r) => r.name === "doomed")!.id;
    const before = reachableNodes(device, checkFilesystem(device).space.forest).filter((n) => n.owner === doomed);
    g.deleteSubvolume("doomed");
    g.sync();
    // Steps of one node, until a few of the tree's nodes are released (each step commits: they are free now).
    let released: typeof before = [];
    for (let i = 0; i < 200 && released.length < 4; i++) {
      g.runDeletions(1);
      g.sync();
      const durable = checkFilesystem(device).space.forest.reachable;
      released = before.filter((n) => !durable.get(n.lba));
    }
    expect(released.length, "the deletion released some of the tree's nodes").toBeGreaterThanOrEqual(4);
    expect(g.store.hasTree(doomed), "the deletion is still under way").toBe(true);
    // Whatever is written next may take them (here, garbage, as a reuse would).
    for (const n of released) device.write(n.lba, Buffer.alloc(blockSizeBytes, 0xa7));
    device.flush();
    const scrub = g.scrub();
    scrub.run();
    const summary = scrub.summary();
    expect(summary.findings).toEqual([]);
    expect(summary.corrected + summary.uncorrected).toBe(0);
    expect(g.store.hasTree(doomed)).toBe(true);
    g.finishDeletions();
    g.close();
    device = device.reopen();
    expectFsClean(device);
  });

  it("scrub and the checker read an internal node's children ahead in runs of adjacent blocks: fewer requests than node copies, the same findings", () => {
    // Small files only: their data lives in the nodes, so every request is for nodes.
    let device = new SimDevice(16384);
    GroveFs.format(device, { metadata: "dup" });
    device = device.reopen();
    const w = GroveFs.open(device);
    const rng = new Prng(31);
    for (let d = 0; d < 10; d++) {
      w.mkdir(`/d${d}`, 0o755, root);
      for (let i = 0; i < 300; i++) writeFile(w, `/d${d}/f${i}`, rng.bytes(20 + rng.below(80)));
    }
    w.close();
    device = device.reopen();
    const victims = damageOneCopy(device, rng);
    const g = GroveFs.open(device.reopen(), { readOnly: true });
    let requests = 0;
    const dev = g.store.device;
    const read = dev.read.bind(dev);
    dev.read = (lba: number, buf: Uint8Array): void => {
      requests++;
      read(lba, buf);
    };
    const scrub = g.scrub(null, false);
    scrub.run();
    const summary = scrub.summary();
    g.close();
    expect(summary.correctable + summary.uncorrected, summary.findings.join("\n")).toBe(victims.length);
    expect(summary.uncorrected).toBe(0);
    expect(summary.dataBlocks).toBe(0);
    expect(requests, `${requests} requests for ${summary.copies} node copies`).toBeLessThan(summary.copies / 4);

    // The tree checker (fsck) reads ahead the same way.
    const checked = device.reopen();
    let checkerRequests = 0;
    const checkedRead = checked.read.bind(checked);
    checked.read = (lba: number, buf: Uint8Array): void => {
      checkerRequests++;
      checkedRead(lba, buf);
    };
    const forest = checkForest(checked);
    expect(forest.copyRepairs.length).toBe(victims.length);
    expect(checkerRequests, `the checker: ${checkerRequests} requests for ${summary.copies} node copies`).toBeLessThan(summary.copies / 4);
  });

  it("a damaged data block is uncorrected, named by path, subvolume and byte range", () => {
    let device = new SimDevice(8192);
    GroveFs.format(device, { metadata: "dup" });
    device = device.reopen();
    let g = GroveFs.open(device);
    g.mkdir("/d", 0o755, root);
    writeFile(g, "/d/f", Buffer.alloc(3 * blockSizeBytes, 7));
    const ino = g.getattr("/d/f").ino;
    g.createSubvolume("snap", { readOnly: true });
    g.close();
    device = device.reopen();
    const lba = fileExtents(device, ino)[0]!.lba;
    device = device.reopen();
    const block = Buffer.alloc(blockSizeBytes);
    device.read(lba + 1, block);
    block[9]! ^= 1;
    device.write(lba + 1, block);
    device.flush();
    g = GroveFs.open(device.reopen());
    const scrub = g.scrub();
    scrub.run();
    const summary = scrub.summary();
    g.close();
    // Shared with the snapshot, the block is read (and reported) once.
    expect(summary.uncorrected).toBe(1);
    expect(summary.corrected).toBe(0);
    expect(summary.damagedFiles).toEqual([
      `"/d/f" (inode ${ino}) in subvolume "default": damaged bytes ${blockSizeBytes}-${2 * blockSizeBytes - 1} (${blockSizeBytes} bytes; data block ${lba + 1})`,
    ]);
  });

  it("single metadata: a damaged node is uncorrected and named by tree and block", () => {
    const rng = new Prng(5);
    let device = build(rng, "single");
    const pairs = nodeCopies(device);
    expect(pairs.every((p) => p.length === 1)).toBe(true);
    // A leaf of the default subvolume's inode tree.
    const header = Buffer.alloc(blockSizeBytes);
    const victim = reachableNodes(device, checkFilesystem(device).space.forest).find((n) => n.owner === 256 && n.level === 0)!;
    device.read(victim.lba, header);
    header[100]! ^= 0x10;
    device.write(victim.lba, header);
    device.flush();
    device = device.reopen();
    const g = GroveFs.open(device);
    const scrub = g.scrub();
    scrub.run();
    const summary = scrub.summary();
    g.close();
    expect(summary.corrected).toBe(0);
    expect(summary.uncorrected).toBeGreaterThanOrEqual(1);
    expect(summary.findings.some((f) => /^tree \d+, block /.test(f) && f.includes(`block ${victim.lba}`) && f.includes("checksum")), summary.findings.join("\n")).toBe(true);
  });

  it("a pass resumed from its position reads only what lies after it", () => {
    const rng = new Prng(7);
    const device = build(rng, "dup");
    const g = GroveFs.open(device);
    const whole = g.scrub();
    whole.run();
    const all = whole.summary();
    const first = g.scrub();
    while (first.pass.position === null || first.pass.position.tree < 256) first.step(4);
    for (let i = 0; i < 20; i++) first.step(4);
    const position = first.pass.position!;
    const read = first.summary().copies;
    const rest = g.scrub(position);
    rest.run();
    g.close();
    expect(rest.summary().uncorrected).toBe(0);
    expect(rest.summary().copies).toBeLessThan(all.copies);
    // Together they read at least everything once (the path down to the position twice).
    expect(read + rest.summary().copies).toBeGreaterThanOrEqual(all.copies);
    expect(all.copies).toBe(2 * all.nodes);
  });
});
