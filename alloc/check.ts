/**
 * The space checker: the two free-space trees describe the same coalesced set
 * of extents inside the volume, and every block of the device is exactly one
 * of superblock, reachable from the committed root, or free. It reports
 * leaked blocks (none of these) and blocks owned twice (more than one), by LBA.
 */
import { ForestOptions, ForestReport, ItemVisitor, checkForest, firstAllocatableLba } from "../kvstore/index.js";
import type { BlockDevice } from "../kvstore/index.js";
import type { Extent } from "./extent_set.js";
import { treeIdFreeByLba, treeIdFreeByLength } from "./free_space.js";

export interface SpaceReport {
  problems: string[];
  forest: ForestReport;
  free: Extent[];
  freeBlocks: number;
  leaked: Extent[];
  ownedTwice: Extent[];
}

export function checkSpace(device: BlockDevice, visitItem?: ItemVisitor, options: ForestOptions = {}): SpaceReport {
  const byLba: Extent[] = [];
  const byLength = new Set<string>();
  const problems: string[] = [];
  const forest = checkForest(device, (treeId, key, value, edges) => {
    if (treeId === treeIdFreeByLba) {
      if (key.length !== 8 || value.length !== 8) problems.push(`free-by-LBA entry has a malformed key or value`);
      else byLba.push({ start: Number(key.readBigUInt64BE(0)), length: Number(value.readBigUInt64LE(0)) });
    } else if (treeId === treeIdFreeByLength) {
      if (key.length !== 16 || value.length !== 0) problems.push(`free-by-length entry has a malformed key or value`);
      else byLength.add(`${Number(key.readBigUInt64BE(8))}+${Number(key.readBigUInt64BE(0))}`);
    }
    visitItem?.(treeId, key, value, edges);
  }, options);
  problems.unshift(...forest.problems);
  const deviceBlocks = forest.deviceBlocks;
  if (forest.trees.length > 0) {
    const ids = new Set(forest.trees.map((t) => t.id));
    if (!ids.has(treeIdFreeByLba) || !ids.has(treeIdFreeByLength)) problems.push("a free-space tree is missing");
  }

  let freeBlocks = 0;
  let end = firstAllocatableLba;
  for (const e of byLba) {
    if (e.length <= 0 || e.start < firstAllocatableLba || e.start + e.length > deviceBlocks) {
      problems.push(`free extent ${e.start}+${e.length} lies outside the allocatable range`);
    } else if (e.start < end) {
      problems.push(`free extent ${e.start}+${e.length} overlaps the one before it`);
    } else if (e.start === end && end !== firstAllocatableLba) {
      problems.push(`free extent ${e.start}+${e.length} is not coalesced with the one before it`);
    }
    end = Math.max(end, e.start + e.length);
    freeBlocks += Math.max(0, e.length);
    if (!byLength.delete(`${e.start}+${e.length}`)) {
      problems.push(`free extent ${e.start}+${e.length} is missing from the by-length tree`);
    }
  }
  for (const extra of byLength) problems.push(`by-length tree holds ${extra}, which the by-LBA tree does not`);

  const { leaked, ownedTwice } = classifyBlocks(forest, byLba);
  for (const e of leaked) problems.push(`blocks ${e.start}+${e.length} are leaked (neither reachable nor free)`);
  for (const e of ownedTwice) problems.push(`blocks ${e.start}+${e.length} are owned twice (reachable and free)`);
  return { problems, forest, free: byLba, freeBlocks, leaked, ownedTwice };
}

/**
 * Every block is exactly one of superblock, reachable or free. The sweep goes
 * by runs, not blocks: between the boundaries of the free extents, the
 * reachable bitmap's runs (whole pages at a time where nothing was marked),
 * so time and memory follow the extents and the blocks in use, not the size
 * of the device.
 */
function classifyBlocks(forest: ForestReport, free: Extent[]): { leaked: Extent[]; ownedTwice: Extent[] } {
  const end = forest.deviceBlocks;
  // How many free extents cover each stretch of the device: a sweep over their starts and ends.
  const edges: Array<[number, number]> = [];
  for (const e of free) {
    const from = Math.max(0, e.start);
    const to = Math.min(end, e.start + e.length);
    if (to > from) edges.push([from, 1], [to, -1]);
  }
  edges.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  const leaked: Extent[] = [];
  const ownedTwice: Extent[] = [];
  const note = (list: Extent[], from: number, to: number): void => {
    const last = list[list.length - 1];
    if (last !== undefined && last.start + last.length === from) last.length += to - from;
    else list.push({ start: from, length: to - from });
  };
  const classify = (from: number, to: number, freeOwners: number): void => {
    if (from >= to) return;
    if (freeOwners > 1) return note(ownedTwice, from, to);
    // The superblock slots count as an owner of their own.
    const fixedTo = Math.min(to, firstAllocatableLba);
    if (from < fixedTo) {
      if (freeOwners > 0) note(ownedTwice, from, fixedTo);
      forest.reachable.forEachRun(from, fixedTo, (a, b, set) => {
        if (set && freeOwners === 0) note(ownedTwice, a, b);
      });
      from = fixedTo;
      if (from >= to) return;
    }
    forest.reachable.forEachRun(from, to, (a, b, set) => {
      if (freeOwners === 0 && !set) note(leaked, a, b);
      else if (freeOwners === 1 && set) note(ownedTwice, a, b);
    });
  };
  let at = 0;
  let owners = 0;
  for (const [lba, delta] of edges) {
    classify(at, lba, owners);
    at = Math.max(at, lba);
    owners += delta;
  }
  classify(at, end, owners);
  return { leaked, ownedTwice };
}
