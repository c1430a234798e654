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

/** Walks every block once: superblock, reachable, free, or a problem. */
function classifyBlocks(forest: ForestReport, free: Extent[]): { leaked: Extent[]; ownedTwice: Extent[] } {
  const freeMap = new Uint8Array(forest.deviceBlocks);
  for (const e of free) {
    for (let b = Math.max(0, e.start); b < Math.min(forest.deviceBlocks, e.start + e.length); b++) freeMap[b]! += 1;
  }
  const leaked: Extent[] = [];
  const ownedTwice: Extent[] = [];
  const note = (list: Extent[], lba: number): void => {
    const last = list[list.length - 1];
    if (last !== undefined && last.start + last.length === lba) last.length++;
    else list.push({ start: lba, length: 1 });
  };
  for (let lba = 0; lba < forest.deviceBlocks; lba++) {
    const owners = (lba < firstAllocatableLba ? 1 : 0) + (forest.reachable.get(lba) ? 1 : 0) + freeMap[lba]!;
    if (owners === 0) note(leaked, lba);
    else if (owners > 1) note(ownedTwice, lba);
  }
  return { leaked, ownedTwice };
}
