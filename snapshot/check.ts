/**
 * The snapshot layer's checker: runs the space checker (which runs the tree
 * checker) and, in the same walk, reads the refcount tree and the subvolume
 * table. The walk counts every reference to each block (a node reached from
 * several parents, an extent held by several records); those counts must
 * equal the refcount tree, which holds exactly the blocks with two or more.
 * The subvolume table must name each subvolume tree once, and every
 * subvolume tree must have a record.
 */
import { BlockDevice, ItemVisitor, featureReceivedSnapshots, treeIdFirstDynamic } from "../kvstore/index.js";
import { SpaceReport, checkSpace } from "../alloc/index.js";
import {
  RefcountEntry,
  SubvolumeRecord,
  decodeCounters,
  decodeRefcount,
  decodeSubvolume,
  deletingRange,
  decodeReceived,
  receivedKeyId,
  receivedRange,
  liveRange,
  refcountKeyLba,
  subvolumeCountersKey,
  treeIdRefcounts,
  treeIdSubvolumes,
} from "./format.js";

export interface RefcountMismatch {
  lba: number;
  blocks: number;
  /** What the refcount tree says (1 when it holds nothing). */
  recorded: number;
  /** References the walk found (0: the block is not reachable at all). */
  found: number;
}

export interface SnapshotReport {
  problems: string[];
  space: SpaceReport;
  live: SubvolumeRecord[];
  deleting: SubvolumeRecord[];
  refcountMismatches: RefcountMismatch[];
  /** Received-snapshot identities in the table ([0x03][id]). */
  receivedRecords: number;
}

export function checkSnapshots(device: BlockDevice, visitItem?: ItemVisitor): SnapshotReport {
  const problems: string[] = [];
  const recorded = new Map<number, RefcountEntry>();
  const live: SubvolumeRecord[] = [];
  const deleting: SubvolumeRecord[] = [];
  const received: number[] = [];
  let nextId = 0;
  const progress = new Map<number, Buffer>();
  const space = checkSpace(
    device,
    (treeId, key, value, edges) => {
      try {
        if (treeId === treeIdRefcounts) {
          const lba = refcountKeyLba(key);
          recorded.set(lba, decodeRefcount(lba, value));
        } else if (treeId === treeIdSubvolumes) {
          if (key.equals(subvolumeCountersKey)) nextId = decodeCounters(value);
          else if (key.compare(liveRange.from) >= 0 && key.compare(liveRange.to) < 0) {
            const record = decodeSubvolume(value);
            if (key.subarray(1).toString("utf8") !== record.name) problems.push(`subvolume ${record.id}: record is filed under another name`);
            live.push(record);
          } else if (key.compare(deletingRange.from) >= 0 && key.compare(deletingRange.to) < 0) {
            const record = decodeSubvolume(value);
            deleting.push(record);
            progress.set(record.id, record.progress);
          } else if (key.compare(receivedRange.from) >= 0 && key.compare(receivedRange.to) < 0) {
            decodeReceived(value);
            received.push(receivedKeyId(key));
          } else {
            problems.push(`subvolume table: unknown key ${key.toString("hex")}`);
          }
        }
      } catch (error) {
        problems.push((error as Error).message);
      }
      visitItem?.(treeId, key, value, edges);
    },
    { walkFrom: (id) => progress.get(id) ?? null },
  );
  problems.unshift(...space.problems);
  const forest = space.forest;
  if (forest.trees.length === 0) return { problems, space, live, deleting, refcountMismatches: [], receivedRecords: received.length };

  // The subvolume table against the trees.
  const treeIds = new Set(forest.trees.map((t) => t.id));
  if (!treeIds.has(treeIdRefcounts)) problems.push("the refcount tree is missing");
  if (!treeIds.has(treeIdSubvolumes)) problems.push("the subvolume table is missing");
  const ids = new Map<number, string>();
  for (const record of [...live, ...deleting]) {
    const what = `subvolume ${JSON.stringify(record.name)} (id ${record.id})`;
    if (ids.has(record.id)) problems.push(`${what}: id also used by ${ids.get(record.id)}`);
    ids.set(record.id, what);
    if (!treeIds.has(record.id)) problems.push(`${what}: its tree is missing`);
    if (record.id >= nextId) problems.push(`${what}: id is not below the counter ${nextId}`);
    if (record.lastSnapshotGeneration > forest.generation) problems.push(`${what}: last snapshot generation lies in the future`);
  }
  const liveIds = new Set(live.map((record) => record.id));
  for (const id of received) if (!liveIds.has(id)) problems.push(`received identity of subvolume ${id}, which is not live`);
  if (received.length > 0 && (forest.features & featureReceivedSnapshots) === 0n) {
    problems.push(`superblock: ${received.length} received-snapshot identities exist but the feature that says so is not set`);
  }
  for (const id of treeIds) {
    if (id >= treeIdFirstDynamic && id < 2 ** 32 && !ids.has(id)) problems.push(`tree ${id} is a subvolume tree without a record`);
  }

  // Reference counts: the walk against the refcount tree.
  const refcountMismatches: RefcountMismatch[] = [];
  for (const [lba, entry] of recorded) {
    const found = forest.references.get(lba) ?? (forest.reachable.get(lba) ? 1 : 0);
    if (found !== entry.count) refcountMismatches.push({ lba, blocks: entry.blocks, recorded: entry.count, found });
    else {
      const extent = forest.extents.get(lba);
      if ((extent ?? 1) !== entry.blocks) {
        problems.push(`refcount of block ${lba} covers ${entry.blocks} blocks, but the extent there has ${extent ?? 1}`);
      }
    }
  }
  for (const [lba, found] of forest.references) {
    if (!recorded.has(lba)) refcountMismatches.push({ lba, blocks: forest.extents.get(lba) ?? 1, recorded: 1, found });
  }
  refcountMismatches.sort((a, b) => a.lba - b.lba);
  for (const m of refcountMismatches) {
    problems.push(`block ${m.lba}: refcount ${m.recorded} recorded, but ${m.found} references found`);
  }
  return { problems, space, live, deleting, refcountMismatches, receivedRecords: received.length };
}
