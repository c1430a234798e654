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
  type ForestReport,
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
  inodeKey,
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

/**
 * What the walk keeps of each inode, in typed arrays by slot: a few numbers,
 * not the decoded record (whose payload can be kilobytes), so the logical
 * pass over a million files holds tens of MiB, not hundreds.
 */
class InodeFacts {
  private readonly slotOf = new Map<number, number>();
  private small = new Uint32Array(0);
  private large = new Float64Array(0);
  private readonly inos: number[] = [];

  get size(): number {
    return this.inos.length;
  }

  /** Adds inode `inode`; returns its slot. */
  add(inode: Inode): number {
    const slot = this.inos.length;
    if ((slot + 1) * smallFields > this.small.length) {
      const capacity = Math.max(1024, 2 * slot);
      const small = new Uint32Array(capacity * smallFields);
      small.set(this.small);
      this.small = small;
      const large = new Float64Array(capacity * largeFields);
      large.set(this.large);
      this.large = large;
    }
    this.inos.push(inode.ino);
    this.slotOf.set(inode.ino, slot);
    this.setSmall(slot, F.mode, inode.mode);
    this.setSmall(slot, F.nlink, inode.nlink);
    this.setSmall(slot, F.flags, inode.flags);
    this.setLarge(slot, L.size, inode.size);
    this.setLarge(slot, L.blocks, inode.blocks);
    this.setLarge(slot, L.parent, inode.parent);
    return slot;
  }

  slot(ino: number): number | undefined {
    return this.slotOf.get(ino);
  }

  ino(slot: number): number {
    return this.inos[slot]!;
  }

  small_(slot: number, field: F): number {
    return this.small[slot * smallFields + field]!;
  }

  setSmall(slot: number, field: F, value: number): void {
    this.small[slot * smallFields + field] = value;
  }

  large_(slot: number, field: L): number {
    return this.large[slot * largeFields + field]!;
  }

  setLarge(slot: number, field: L, value: number): void {
    this.large[slot * largeFields + field] = value;
  }

  isDir(slot: number): boolean {
    return (this.small_(slot, F.mode) & C.S_IFMT) === C.S_IFDIR;
  }
}

/** u32 facts: the record's mode, nlink, flags; the walk's counts. */
const enum F {
  mode,
  nlink,
  flags,
  /** Entries naming this inode. */
  names,
  subdirs,
  /** Entries naming this directory (one is right). */
  parents,
}
const smallFields = 6;
/** Facts that can pass 2^32: the record's size, blocks and parent; the walk's sums. */
const enum L {
  size,
  blocks,
  parent,
  /** The directory of the first entry naming this directory. */
  firstParent,
  extentBlocks,
  extentEnd,
  /** The end of the last written (not unwritten) extent. */
  dataEnd,
}
const largeFields = 7;

/** Every directory entry of one subvolume, without its name (found again for the few that are reported). */
class EntryList {
  private dirs = new Float64Array(1024);
  private inos = new Float64Array(1024);
  private types = new Uint8Array(1024);
  length = 0;

  push(dir: number, ino: number, type: number): void {
    if (this.length === this.dirs.length) {
      const grow = <T extends Float64Array | Uint8Array>(a: T, make: (n: number) => T): T => {
        const b = make(a.length * 2);
        b.set(a);
        return b;
      };
      this.dirs = grow(this.dirs, (n) => new Float64Array(n));
      this.inos = grow(this.inos, (n) => new Float64Array(n));
      this.types = grow(this.types, (n) => new Uint8Array(n));
    }
    this.dirs[this.length] = dir;
    this.inos[this.length] = ino;
    this.types[this.length] = type;
    this.length++;
  }

  dir(i: number): number {
    return this.dirs[i]!;
  }
  ino(i: number): number {
    return this.inos[i]!;
  }
  type(i: number): number {
    return this.types[i]!;
  }
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
  const logProblem = fsyncLogProblem(snapshots.space.forest);
  if (logProblem !== null) problems.push(logProblem);
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
  report.notes.push(...fsyncLogNotes(snapshots.space.forest));
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
    report.inodes += walk.facts.size;
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
  readonly facts = new InodeFacts();
  private readonly orphans = new Set<number>();
  private readonly entries = new EntryList();
  /** Kept to find again the names of the entries reported. */
  private store: Store | null = null;
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
    this.store = store;
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
      const owner = this.facts.slot(ino);
      if (owner === undefined) this.problems.push(`extended attribute of inode ${ino}, which does not exist`);
      else if ((this.facts.small_(owner, F.flags) & 1) === 0) this.problems.push(`inode ${ino} has extended attributes but not the flag that says so`);
      return null;
    }
    const inode = decodeInode(ino, value);
    this.facts.add(inode);
    if ((inode.mode & C.S_IFMT) === C.S_IFDIR) this.directories++;
    if (inode.kind === PayloadKind.Tree) return inode;
    if (inode.kind === PayloadKind.Items) {
      for (const item of decodeItems(ino, inode.payload)) this.visitMapItem(ino, item.key, item.value);
    }
    return null;
  }

  private visitMapItem(ino: number, key: Buffer, value: Buffer): void {
    const facts = this.facts;
    const slot = facts.slot(ino)!;
    if (facts.isDir(slot)) {
      const entry = decodeDirent(ino, value);
      this.entries.push(ino, entry.ino, entry.type);
      return;
    }
    const extent = decodeExtent(ino, key, value);
    if (extent.fileBlock < facts.large_(slot, L.extentEnd)) {
      this.problems.push(`inode ${ino}: extent at file block ${extent.fileBlock} overlaps the one before`);
    }
    facts.setLarge(slot, L.extentEnd, extent.fileBlock + extent.blocks);
    facts.setLarge(slot, L.extentBlocks, facts.large_(slot, L.extentBlocks) + extent.blocks);
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
    facts.setLarge(slot, L.dataEnd, facts.large_(slot, L.extentEnd));
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
    const facts = this.facts;
    const entries = this.entries;
    for (let i = 0; i < entries.length; i++) {
      const dir = entries.dir(i);
      const ino = entries.ino(i);
      const target = facts.slot(ino);
      if (target === undefined) {
        problems.push(`${this.entryWhere(dir, ino)}: names inode ${ino}, which does not exist`);
        continue;
      }
      facts.setSmall(target, F.names, facts.small_(target, F.names) + 1);
      if (entries.type(i) !== facts.small_(target, F.mode) >>> 12) {
        problems.push(`${this.entryWhere(dir, ino)}: type ${entries.type(i)} does not match the inode's mode`);
      }
      if (facts.isDir(target)) {
        const parents = facts.small_(target, F.parents);
        if (parents === 0) facts.setLarge(target, L.firstParent, dir);
        facts.setSmall(target, F.parents, parents + 1);
        const parent = facts.slot(dir);
        if (parent !== undefined) facts.setSmall(parent, F.subdirs, facts.small_(parent, F.subdirs) + 1);
      }
    }
    if (facts.slot(rootIno) === undefined) problems.push("the root directory is missing");
    for (let slot = 0; slot < facts.size; slot++) this.checkInode(slot, problems);
    for (const ino of this.orphans) {
      const slot = facts.slot(ino);
      if (slot === undefined) problems.push(`orphan ${ino} names no inode`);
      else if (facts.small_(slot, F.names) > 0) {
        problems.push(`orphan ${ino} still has ${facts.small_(slot, F.names)} names (nlink ${facts.small_(slot, F.nlink)})`);
      } else continue;
      this.fix(ino, "dropOrphanKey");
    }
  }

  /** `directory D, entry "NAME"` for the entry of `dir` naming `ino`: the name is read again, as only reported entries need it. */
  private entryWhere(dir: number, ino: number): string {
    let name: string | undefined;
    try {
      const store = this.store;
      const tree = store?.openTree(this.subvolumeId);
      const value = tree?.get(inodeKey(dir));
      if (store !== null && value !== undefined) {
        const inode = decodeInode(dir, value);
        const visit = (key: Buffer, item: Buffer): boolean => {
          if (decodeDirent(dir, item).ino !== ino) return false;
          name = key.toString("utf8");
          return true;
        };
        if (inode.kind === PayloadKind.Items) {
          for (const item of decodeItems(dir, inode.payload)) if (visit(item.key, item.value)) break;
        } else if (inode.kind === PayloadKind.Tree) {
          const map = store.openDetachedTree(mapOwner(this.subvolumeId, dir), { rootLba: inode.treeRoot, level: inode.treeLevel, count: inode.treeCount });
          for (const [k, v] of map.range()) if (visit(k, v)) break;
        }
      }
    } catch {
      // The walk has reported why the directory cannot be read; the entry is named without its name.
    }
    return name === undefined ? `directory ${dir}, an entry` : `directory ${dir}, entry "${name}"`;
  }

  private fix(ino: number, kind: InodeFix["kind"], nlink?: number): void {
    this.fixes.push({ subvolume: this.subvolumeId, ino, kind, nlink });
  }

  private checkInode(slot: number, problems: string[]): void {
    const facts = this.facts;
    const ino = facts.ino(slot);
    const nlink = facts.small_(slot, F.nlink);
    const names = facts.small_(slot, F.names);
    const where = `inode ${ino}`;
    if (ino >= this.nextIno && ino !== rootIno) problems.push(`${where}: number is not below the counter ${this.nextIno}`);
    if (facts.isDir(slot)) {
      const expected = 2 + facts.small_(slot, F.subdirs);
      if (nlink !== expected) {
        problems.push(`${where}: nlink ${nlink}, but ${expected} links exist`);
        this.fix(ino, "nlink", expected);
      }
      const parents = facts.small_(slot, F.parents);
      const parent = facts.large_(slot, L.parent);
      if (ino === rootIno) {
        if (parents !== 0 || parent !== rootIno) problems.push(`${where}: the root has a parent`);
      } else if (parents !== 1) {
        problems.push(`${where}: directory is named by ${parents} entries`);
      } else if (facts.large_(slot, L.firstParent) !== parent) {
        problems.push(`${where}: parent field ${parent} but it lives in ${facts.large_(slot, L.firstParent)}`);
      }
      return;
    }
    if (nlink !== names) {
      problems.push(`${where}: nlink ${nlink}, but ${names} entries name it`);
      this.fix(ino, "nlink", names);
    }
    if (names === 0 && !this.orphans.has(ino)) {
      // An inode nothing names is listed as an orphan, so the next read-write mount frees it.
      problems.push(`${where}: has no name and is not an orphan`);
      this.fix(ino, "addOrphanKey");
    }
    const blocks = facts.large_(slot, L.blocks);
    const extentBlocks = facts.large_(slot, L.extentBlocks);
    if (blocks !== extentBlocks) {
      problems.push(`${where}: records ${blocks} data blocks, but its extents hold ${extentBlocks}`);
    }
    if (facts.large_(slot, L.dataEnd) > Math.ceil(facts.large_(slot, L.size) / blockSizeBytes)) {
      problems.push(`${where}: a written extent lies past the end of the file (size ${facts.large_(slot, L.size)})`);
    }
  }
}

/**
 * What fsck says of the fsync log (kvstore/fsync_log.ts): the records
 * found, the state they recover (the one checked), and a last record whose
 * blocks did not all land (its fsync never returned), which replay discards.
 * A torn or stale tail is normal after power loss, so it is a note too.
 */
export function fsyncLogNotes(forest: ForestReport): string[] {
  const log = forest.log;
  if (log === null || log.validRecords === 0) return [];
  const notes = [
    `fsync log: ${log.chain.length} record${log.chain.length === 1 ? "" : "s"} extend committed generation ${log.committedGeneration}; ` +
      `the state checked is generation ${forest.generation}, which a read-write open (or fsck -y) replays and commits`,
  ];
  if (log.validRecords > log.chain.length) notes.push(`fsync log: ${log.end}; that record is discarded`);
  return notes;
}

/** Log records beyond what a chain can hold are damage the replay would not follow: report it. */
function fsyncLogProblem(forest: ForestReport): string | null {
  const log = forest.log;
  if (log === null || !log.end.startsWith("the chain is longer")) return null;
  return `fsync log: ${log.end}`;
}
