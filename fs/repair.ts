/**
 * fsck's repair: fixes what the checker found and can be fixed safely, as
 * one new committed generation (never in place: the commit protocol keeps the
 * previous generation intact until the new superblock is durable).
 *
 * Repaired:
 * - free space: both free-space trees are rebuilt from the walk's
 *   reachability, which fixes leaked blocks, blocks both reachable and free,
 *   and trees that disagree with each other;
 * - reference counts: set to what the walk counted;
 * - link counts: set to the entries found; a file's data block count, to
 *   what its extents hold;
 * - damaged node copies with a good twin (duplicate metadata): rewritten in
 *   place from the twin, by the same commit (the committed state reads the
 *   twin, which is not touched; store.queueRepair);
 * - orphans: an inode nothing names with nlink 0 is listed as an orphan
 *   (the next read-write mount frees it, as after a crash); an orphan key on
 *   an inode that has names, or on none, is removed;
 * - lost names: an inode nothing names that still counts links, or a
 *   directory nothing names, is linked into /lost+found as `#INO`
 *   (e2fsck's convention), and an entry naming an inode that does not exist
 *   is removed; in snapshots too (read-only to users, not to fsck), so that
 *   every subvolume is consistent again.
 *
 * Not repaired (reported as remaining): damaged nodes or trees (a failed
 * checksum, broken order), data blocks whose checksum fails, and anything found in a volume whose trees could not be walked
 * whole — rebuilding free space from a partial walk would free live blocks.
 */
import { BlockDevice, GroveError, type Store, blockSizeBytes, compressedUsageProblems, featureCompressLz4, featurePreallocated, featureReceivedSnapshots, featureWideInodes, firstAllocatableLba } from "../kvstore/index.js";
import type { Extent } from "../alloc/index.js";
import { openVolume } from "../snapshot/index.js";
import type { FsReport } from "./check.js";
import { fsEdges } from "./edges.js";
import { decodeInode, encodeInode, inodeKey, orphanKey } from "./format.js";
import { GroveFs } from "./filesystem.js";
import type { InodeFix } from "./check.js";

export interface RepairResult {
  fixed: string[];
  /**
   * Problems not attempted: all of them when the walk was incomplete. A
   * second check is what tells whether the volume is clean now.
   */
  remaining: string[];
}

/**
 * fsck -y on a volume with an fsync log: a read-write open replays it (the
 * newest record whose blocks all landed) and commits, which discards the
 * rest. Returns what it did, or null when there was no log; closes the device.
 */
export function replayFsyncLog(device: BlockDevice, report: FsReport): string | null {
  const log = report.space.forest.log;
  if (log === null || log.validRecords === 0) return null;
  let store: Store;
  try {
    store = openVolume(device, { edges: fsEdges }).store;
  } catch (error) {
    if (!(error instanceof GroveError)) throw error;
    return `fsync log: the replay failed and changed nothing: ${error.message}`;
  }
  const generation = store.committedGeneration;
  store.close();
  const discarded = log.validRecords - log.chain.length;
  return (
    `fsync log: replayed ${log.chain.length} record${log.chain.length === 1 ? "" : "s"} onto generation ${log.committedGeneration}, committed as generation ${generation}` +
    (discarded > 0 ? `; discarded a last record whose blocks did not all land` : "")
  );
}

/** Repairs `device` from a fresh `report` of it; closes the device. Run the checker again to confirm. */
export function repairFilesystem(device: BlockDevice, report: FsReport): RepairResult {
  const forest = report.space.forest;
  if (!report.walkComplete) {
    device.close();
    return { fixed: [], remaining: [...report.problems] };
  }
  if ((forest.log?.validRecords ?? 0) > 0) {
    // Opening read-write would replay and commit the log first, which the free set below (the report's) does not know.
    device.close();
    return { fixed: [], remaining: [...report.problems, "the fsync log was not replayed (replayFsyncLog first, then check again)"] };
  }
  const volume = openVolume(device, { edges: fsEdges });
  const { store } = volume;
  // Opening read-write rewrote the damaged superblock copies from the one in use.
  const fixed: string[] = [...store.superblockRepairs];
  const nameFixes = new Map<string, InodeFix[]>();
  const remaining: string[] = [];
  try {
    // Free space first: every block allocated from here on must really be free.
    const free: Extent[] = [];
    for (let lba = firstAllocatableLba; lba < forest.deviceBlocks; lba++) {
      if (forest.reachable.get(lba)) continue;
      const last = free[free.length - 1];
      if (last !== undefined && last.start + last.length === lba) last.length++;
      else free.push({ start: lba, length: 1 });
    }
    const spaceProblems = report.space.problems.length - forest.problems.length;
    volume.space.rebuild(free);
    if (spaceProblems > 0) fixed.push(`rebuilt the free-space trees from reachability (${spaceProblems} problems)`);

    const usageProblems = compressedUsageProblems(forest);
    store.setCompressedUsage(forest.compressed);
    if (forest.compressed.extents > 0) store.enableFeature(featureCompressLz4);
    if (report.preallocatedExtents > 0 && !store.hasFeature(featurePreallocated)) {
      store.enableFeature(featurePreallocated);
      fixed.push("superblock: set the feature bit of unwritten (preallocated) extents");
    }
    if (report.wideInodeCounter !== 0 && !store.hasFeature(featureWideInodes)) {
      store.enableFeature(featureWideInodes);
      fixed.push("superblock: set the feature bit of inode numbers past 2^32");
    }
    if (report.snapshots.receivedRecords > 0 && !store.hasFeature(featureReceivedSnapshots)) {
      store.enableFeature(featureReceivedSnapshots);
      fixed.push("superblock: set the feature bit of received-snapshot identities");
    }
    for (const problem of usageProblems) fixed.push(`${problem}: set from the walk`);

    for (const r of forest.copyRepairs) {
      const good = Buffer.alloc(blockSizeBytes);
      device.read(r.good, good);
      store.queueRepair(r.bad, r.good, good, "fsck");
      fixed.push(`block ${r.bad}: rewritten from its copy at block ${r.good}`);
    }

    for (const m of report.snapshots.refcountMismatches) {
      volume.refcounts.setCount(m.lba, m.blocks, Math.max(1, m.found));
      fixed.push(`block ${m.lba}: refcount ${m.recorded} set to ${m.found}`);
    }

    const names = new Map(volume.subvolumes.list().map((record) => [record.id, record.name]));
    for (const fix of report.fixes) {
      if (fix.kind === "lostFound" || fix.kind === "dropEntry") {
        const name = names.get(fix.subvolume);
        if (name !== undefined) nameFixes.set(name, [...(nameFixes.get(name) ?? []), fix]);
        continue;
      }
      const tree = store.openTree(fix.subvolume);
      const where = `subvolume ${fix.subvolume}, inode ${fix.ino}`;
      if (fix.kind === "nlink") {
        const value = tree.get(inodeKey(fix.ino));
        if (value === undefined) continue;
        const inode = decodeInode(fix.ino, value);
        const was = inode.nlink;
        inode.nlink = fix.nlink!;
        tree.put(inodeKey(fix.ino), encodeInode(inode));
        fixed.push(`${where}: nlink ${was} set to ${fix.nlink}`);
      } else if (fix.kind === "blocks") {
        const value = tree.get(inodeKey(fix.ino));
        if (value === undefined) continue;
        const inode = decodeInode(fix.ino, value);
        const was = inode.blocks;
        inode.blocks = fix.nlink!;
        tree.put(inodeKey(fix.ino), encodeInode(inode));
        fixed.push(`${where}: data block count ${was} set to ${fix.nlink}, what its extents hold`);
      } else if (fix.kind === "addOrphanKey") {
        const value = tree.get(inodeKey(fix.ino));
        if (value === undefined) continue;
        const inode = decodeInode(fix.ino, value);
        if (inode.nlink !== 0) {
          inode.nlink = 0;
          tree.put(inodeKey(fix.ino), encodeInode(inode));
        }
        tree.put(orphanKey(fix.ino), Buffer.alloc(0));
        fixed.push(`${where}: unnamed, listed as an orphan (freed by the next read-write mount)`);
      } else {
        tree.delete(orphanKey(fix.ino));
        fixed.push(`${where}: stale orphan key removed`);
      }
    }
    store.commit({ force: true });
    if (nameFixes.size === 0) {
      store.close();
      return { fixed, remaining };
    }
  } catch (error) {
    store.close();
    if (error instanceof GroveError) {
      return { fixed: [], remaining: [...report.problems, `the repair failed and changed nothing: ${error.message}`] };
    }
    throw error;
  }
  // The names, through the filesystem (its directory maps and link rules), one writable subvolume at a time; closing commits.
  let first: GroveFs | null = null;
  try {
    for (const [name, fixes] of nameFixes) {
      const fs: GroveFs = first === null ? (first = GroveFs.onVolume(volume, name)) : first.repairing(name);
      const dangling = fixes.filter((f) => f.kind === "dropEntry").map((f) => ({ dir: f.dir!, name: f.name! }));
      const lost = fixes.filter((f) => f.kind === "lostFound").map((f) => f.ino);
      const where = name === "default" ? "" : `subvolume ${JSON.stringify(name)}: `;
      for (const line of fs.repairNames(dangling, lost)) fixed.push(where + line);
      if (fs !== first) fs.close();
    }
  } catch (error) {
    if (!(error instanceof GroveError)) throw error;
    remaining.push(`the name repairs stopped: ${error.message}`);
  } finally {
    if (first !== null) first.close();
    else store.close();
  }
  return { fixed, remaining };
}
