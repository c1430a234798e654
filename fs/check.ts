/**
 * The filesystem checker. Two passes:
 * - physical: the snapshot checker (which runs the space and tree checkers)
 *   walks every block once, following the edges held in records (the roots
 *   of directory and extent trees, and data extents, via `fsEdges`), so free
 *   space and reference counts are checked against everything the
 *   filesystem references;
 * - logical: each live subvolume's inode tree is read in key order, shared
 *   parts included, and its inodes, entries and extents are checked.
 *
 * Logical checks: link counts equal the entries naming each inode (plus "."
 * and subdirectories' ".." for a directory); a directory is named exactly
 * once, by its parent; entry types match inode modes; no entry dangles; an
 * inode with no links is an orphan; extents lie inside the file, do not
 * overlap, and add up to the inode's block count (unwritten, preallocated
 * ones included, and only those may lie past the end of the file); an
 * unwritten record's blocks are named by no other record of its file, and
 * it was preallocated by a committed transaction; inode numbers lie below
 * the counter. With `verifyData`, every written data block is read once and
 * its crc32c checked (unwritten blocks hold nothing to check).
 */
import { constants as C } from "node:fs";
import {
  BlockDevice,
  GroveError,
  Store,
  Tree,
  blockSizeBytes,
  compressedUsageProblems,
  crc32c,
  unreadableSlots,
  featurePreallocated,
} from "../kvstore/index.js";
import type { SpaceReport } from "../alloc/index.js";
import { SnapshotReport, checkSnapshots, openVolume } from "../snapshot/index.js";
import { rootIno, treeIdDefaultSubvolume } from "./constants.js";
import {
  Extent,
  Inode,
  PayloadKind,
  countersKey,
  decodeCounters,
  decodeDirent,
  Compression,
  decodeExtent,
  decodeInode,
  decodeItems,
  extentCrc,
  orphanIno,
} from "./format.js";
import { fsEdges } from "./edges.js";
import { decompressUnit } from "./compression.js";
import { mapOwner } from "./item_map.js";

/** A problem the repair can fix in one subvolume's inode tree (see repair.ts). */
export interface InodeFix {
  subvolume: number;
  ino: number;
  /** nlink: set the link count; addOrphanKey: list the inode as an orphan; dropOrphanKey: unlist it. */
  kind: "nlink" | "addOrphanKey" | "dropOrphanKey";
  nlink?: number;
}

export interface FsReport {
  problems: string[];
  /**
   * What is worth telling but is not a problem: a superblock slot that does
   * not decode beside a valid one (torn by power loss during a commit, which
   * is expected, or damaged, in which case the newest commit may be lost).
   * The next commit (any write, or fsck -y) rewrites that slot.
   */
  notes: string[];
  /** The part of `problems` the repair knows how to fix, inode by inode. */
  fixes: InodeFix[];
  /**
   * Every tree was walked whole and every record's block pointers were read:
   * the reachability the walk computed is complete (a repair may trust it).
   */
  walkComplete: boolean;
  snapshots: SnapshotReport;
  space: SpaceReport;
  /** Inodes and directories over every live subvolume. */
  inodes: number;
  directories: number;
  /** Blocks of reachable data extents. */
  dataBlocks: number;
  /** Unwritten (preallocated) extent records seen, over every live subvolume. */
  preallocatedExtents: number;
  subvolumes: number;
}

interface Seen {
  inode: Inode;
  /** Entries naming this inode. */
  names: number;
  subdirs: number;
  parents: number[];
  extentBlocks: number;
  extentEnd: number;
  /** The end of the last written (not unwritten) extent. */
  dataEnd: number;
}

export function checkFilesystem(device: BlockDevice, options: { verifyData?: boolean } = {}): FsReport {
  const edgeProblems: string[] = [];
  const snapshots = checkSnapshots(device, (treeId, key, value, edges) => {
    try {
      fsEdges(treeId, key, value, edges);
    } catch (error) {
      edgeProblems.push((error as Error).message);
    }
  });
  const problems = [...snapshots.problems, ...edgeProblems, ...compressedUsageProblems(snapshots.space.forest)];
  const report: FsReport = {
    problems,
    notes: [],
    fixes: [],
    walkComplete: snapshots.space.forest.problems.length === 0 && edgeProblems.length === 0 && snapshots.space.forest.trees.length > 0,
    snapshots,
    space: snapshots.space,
    inodes: 0,
    directories: 0,
    dataBlocks: 0,
    preallocatedExtents: 0,
    subvolumes: snapshots.live.length,
  };
  for (const blocks of snapshots.space.forest.extents.values()) report.dataBlocks += blocks;
  if (snapshots.space.forest.trees.length === 0) return report;
  for (const note of unreadableSlots(device)) {
    report.notes.push(`${note}; generation ${snapshots.space.forest.generation} in the other slot is in use`);
  }
  let store: Store;
  try {
    // The caller owns the device: this store is never closed, only dropped.
    store = openVolume(device, { readOnly: true, edges: fsEdges }).store;
  } catch (error) {
    problems.push(`cannot open the volume for the logical check: ${(error as Error).message}`);
    return report;
  }
  const verified = new Set<string>();
  for (const record of snapshots.live) {
    const prefix = record.id === treeIdDefaultSubvolume ? "" : `subvolume ${JSON.stringify(record.name)}: `;
    const walk = new FsWalk(device, options.verifyData ?? false, verified, record.id, snapshots.space.forest.generation);
    const found: string[] = [];
    try {
      walk.run(store);
      walk.finish(found);
    } catch (error) {
      found.push(`cannot be walked: ${(error as Error).message}`);
    }
    found.unshift(...walk.problems);
    for (const problem of found) problems.push(prefix + problem);
    report.fixes.push(...walk.fixes);
    report.inodes += walk.seen.size;
    report.directories += walk.directories;
    report.preallocatedExtents += walk.preallocatedExtents;
  }
  if (report.preallocatedExtents > 0 && !store.hasFeature(featurePreallocated)) {
    problems.push(`superblock: ${report.preallocatedExtents} unwritten (preallocated) extents exist but the feature that says so is not set`);
  }
  return report;
}

class FsWalk {
  readonly problems: string[] = [];
  readonly fixes: InodeFix[] = [];
  readonly seen = new Map<number, Seen>();
  private readonly orphans = new Set<number>();
  private readonly entries: Array<{ dir: number; name: string; ino: number; type: number }> = [];
  private nextIno = 0;
  directories = 0;
  preallocatedExtents = 0;

  constructor(
    private readonly device: BlockDevice,
    private readonly verifyData: boolean,
    /** Data slices already verified (shared by snapshots: read once). */
    private readonly verified: Set<string>,
    private readonly subvolumeId: number,
    /** The committed generation: no record can be newer. */
    private readonly generation: number,
  ) {}

  /** The physical slices ([offset, end) in the extent) of each extent's records in the inode being walked. */
  private slices = { ino: -1, byExtent: new Map<number, Array<{ fileBlock: number; from: number; to: number; unwritten: boolean }>>() };

  run(store: Store): void {
    const tree = store.openTree(this.subvolumeId);
    for (const [key, value] of tree.range()) {
      try {
        const spilled = this.visitInodeTree(key, value);
        if (spilled !== null) {
          const map: Tree = store.openDetachedTree(mapOwner(this.subvolumeId, spilled.ino), {
            rootLba: spilled.treeRoot,
            level: spilled.treeLevel,
            count: spilled.treeCount,
          });
          for (const [k, v] of map.range()) this.visitMapItem(spilled.ino, k, v);
        }
      } catch (error) {
        this.problems.push((error as Error).message);
      }
    }
  }

  /** Checks one item of the inode tree; returns an inode whose map is a tree, for the caller to walk. */
  private visitInodeTree(key: Buffer, value: Buffer): Inode | null {
    if (key.equals(countersKey)) {
      this.nextIno = decodeCounters(value);
      return null;
    }
    const orphan = orphanIno(key);
    if (orphan !== undefined) {
      this.orphans.add(orphan);
      return null;
    }
    const ino = Number(key.readBigUInt64BE(0));
    if (key.length !== 8) {
      // An extended attribute chunk: it sorts after its inode's record, which must exist.
      const owner = this.seen.get(ino);
      if (owner === undefined) this.problems.push(`extended attribute of inode ${ino}, which does not exist`);
      else if ((owner.inode.flags & 1) === 0) this.problems.push(`inode ${ino} has extended attributes but not the flag that says so`);
      return null;
    }
    const inode = decodeInode(ino, value);
    this.seen.set(ino, { inode, names: 0, subdirs: 0, parents: [], extentBlocks: 0, extentEnd: 0, dataEnd: 0 });
    if ((inode.mode & C.S_IFMT) === C.S_IFDIR) this.directories++;
    if (inode.kind === PayloadKind.Tree) return inode;
    if (inode.kind === PayloadKind.Items) {
      for (const item of decodeItems(ino, inode.payload)) this.visitMapItem(ino, item.key, item.value);
    }
    return null;
  }

  private visitMapItem(ino: number, key: Buffer, value: Buffer): void {
    const seen = this.seen.get(ino)!;
    if ((seen.inode.mode & C.S_IFMT) === C.S_IFDIR) {
      const entry = decodeDirent(ino, value);
      this.entries.push({ dir: ino, name: key.toString("utf8"), ino: entry.ino, type: entry.type });
      return;
    }
    const extent = decodeExtent(ino, key, value);
    if (extent.fileBlock < seen.extentEnd) this.problems.push(`inode ${ino}: extent at file block ${extent.fileBlock} overlaps the one before`);
    seen.extentEnd = extent.fileBlock + extent.blocks;
    seen.extentBlocks += extent.blocks;
    this.noteSlice(ino, extent);
    if (extent.preallocatedIn !== undefined) {
      this.preallocatedExtents++;
      if (extent.preallocatedIn > this.generation) {
        this.problems.push(
          `inode ${ino}: unwritten extent at file block ${extent.fileBlock} says generation ${extent.preallocatedIn}, after the last commit (${this.generation})`,
        );
      }
      return;
    }
    seen.dataEnd = seen.extentEnd;
    if (this.verifyData) this.verifyExtent(ino, extent);
  }

  /**
   * Write-out writes an unwritten block in place only while no other record
   * names it: within one file (where a copy of a written slice may land)
   * that shows as two records of one extent covering the same blocks.
   * Records of an inode are visited together, so the check runs per inode.
   */
  private noteSlice(ino: number, extent: Extent): void {
    if (this.slices.ino !== ino) this.checkSlices();
    this.slices.ino = ino;
    let list = this.slices.byExtent.get(extent.extentLba);
    if (list === undefined) {
      list = [];
      this.slices.byExtent.set(extent.extentLba, list);
    }
    const unwritten = extent.preallocatedIn !== undefined;
    // An lz4 record's offset is into its decompressed unit, but an unwritten block is never in an lz4 extent.
    list.push({ fileBlock: extent.fileBlock, from: extent.offset, to: extent.offset + extent.blocks, unwritten });
  }

  private checkSlices(): void {
    for (const [lba, list] of this.slices.byExtent) {
      if (!list.some((slice) => slice.unwritten)) continue;
      for (const a of list) {
        if (!a.unwritten) continue;
        const clash = list.find((b) => b !== a && b.from < a.to && a.from < b.to);
        if (clash !== undefined) {
          this.problems.push(
            `inode ${this.slices.ino}: unwritten extent at file block ${a.fileBlock} shares blocks of extent ${lba} with the record at file block ${clash.fileBlock}`,
          );
        }
      }
    }
    this.slices.byExtent.clear();
  }

  private verifyExtent(ino: number, extent: Extent): void {
    const compressed = extent.compression !== Compression.None;
    // A compressed extent is read whole by any of its records: verified once for each distinct way its records describe it.
    const slice = compressed
      ? `${extent.extentLba}z${extent.compressedBytes}:${extent.unitBlocks}:${extent.crcs.toString("hex")}`
      : `${extent.lba}+${extent.diskBlocks}`;
    if (this.verified.has(slice)) return;
    this.verified.add(slice);
    const data = Buffer.allocUnsafe(extent.diskBlocks * blockSizeBytes);
    try {
      this.device.read(extent.lba, data);
    } catch (error) {
      this.problems.push(`inode ${ino}: reading data blocks ${extent.lba}+${extent.diskBlocks} failed: ${(error as Error).message}`);
      return;
    }
    let intact = true;
    for (let i = 0; i < extent.diskBlocks; i++) {
      if (crc32c(data.subarray(i * blockSizeBytes, (i + 1) * blockSizeBytes)) !== extentCrc(extent, i)) {
        this.problems.push(`inode ${ino}: data block ${extent.lba + i} fails its checksum`);
        intact = false;
      }
    }
    if (!compressed || !intact) return;
    try {
      decompressUnit(ino, extent, data);
    } catch (error) {
      if (!(error instanceof GroveError)) throw error;
      this.problems.push(error.message);
    }
  }

  finish(problems: string[]): void {
    this.checkSlices();
    for (const entry of this.entries) {
      const target = this.seen.get(entry.ino);
      const where = `directory ${entry.dir}, entry "${entry.name}"`;
      if (target === undefined) {
        problems.push(`${where}: names inode ${entry.ino}, which does not exist`);
        continue;
      }
      target.names++;
      if (entry.type !== target.inode.mode >>> 12) problems.push(`${where}: type ${entry.type} does not match the inode's mode`);
      if ((target.inode.mode & C.S_IFMT) === C.S_IFDIR) {
        target.parents.push(entry.dir);
        const parent = this.seen.get(entry.dir);
        if (parent !== undefined) parent.subdirs++;
      }
    }
    const root = this.seen.get(rootIno);
    if (root === undefined) problems.push("the root directory is missing");
    for (const [ino, seen] of this.seen) this.checkInode(ino, seen, problems);
    for (const ino of this.orphans) {
      const seen = this.seen.get(ino);
      if (seen === undefined) problems.push(`orphan ${ino} names no inode`);
      else if (seen.names > 0) problems.push(`orphan ${ino} still has ${seen.names} names (nlink ${seen.inode.nlink})`);
      else continue;
      this.fix(ino, "dropOrphanKey");
    }
  }

  private fix(ino: number, kind: InodeFix["kind"], nlink?: number): void {
    this.fixes.push({ subvolume: this.subvolumeId, ino, kind, nlink });
  }

  private checkInode(ino: number, seen: Seen, problems: string[]): void {
    const inode = seen.inode;
    const where = `inode ${ino}`;
    if (ino >= this.nextIno && ino !== rootIno) problems.push(`${where}: number is not below the counter ${this.nextIno}`);
    if ((inode.mode & C.S_IFMT) === C.S_IFDIR) {
      const expected = 2 + seen.subdirs;
      if (inode.nlink !== expected) {
        problems.push(`${where}: nlink ${inode.nlink}, but ${expected} links exist`);
        this.fix(ino, "nlink", expected);
      }
      if (ino === rootIno) {
        if (seen.parents.length !== 0 || inode.parent !== rootIno) problems.push(`${where}: the root has a parent`);
      } else if (seen.parents.length !== 1) {
        problems.push(`${where}: directory is named by ${seen.parents.length} entries`);
      } else if (seen.parents[0] !== inode.parent) {
        problems.push(`${where}: parent field ${inode.parent} but it lives in ${seen.parents[0]}`);
      }
      return;
    }
    if (inode.nlink !== seen.names) {
      problems.push(`${where}: nlink ${inode.nlink}, but ${seen.names} entries name it`);
      this.fix(ino, "nlink", seen.names);
    }
    if (seen.names === 0 && !this.orphans.has(ino)) {
      // An inode nothing names is listed as an orphan, so the next read-write mount frees it.
      problems.push(`${where}: has no name and is not an orphan`);
      this.fix(ino, "addOrphanKey");
    }
    if (inode.blocks !== seen.extentBlocks) {
      problems.push(`${where}: records ${inode.blocks} data blocks, but its extents hold ${seen.extentBlocks}`);
    }
    if (seen.dataEnd > Math.ceil(inode.size / blockSizeBytes)) {
      problems.push(`${where}: a written extent lies past the end of the file (size ${inode.size})`);
    }
  }
}
