/**
 * The filesystem checker. Two passes:
 * - physical: the snapshot checker (which runs the space and tree checkers)
 *   walks every block once, following the edges held in records (the roots
 *   of directory and extent trees, and data extents, via `fsEdges`), so free
 *   space and reference counts are checked against everything the
 *   filesystem references;
 * - logical: the first live subvolume's inode tree is read in key order, and
 *   its inodes, entries and extents are checked; each next one (the default
 *   subvolume first, then snapshots from the newest back, then the other
 *   writable subvolumes) is checked from the facts
 *   of the one before, updated by the difference of the two inode trees
 *   (kvstore/tree_diff.ts skips the subtrees they share), so a thousand
 *   hourly snapshots cost their changes plus a pass over typed arrays each,
 *   not a thousand walks. A subvolume that differs from the one before in
 *   more than a quarter of its inodes is walked whole.
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
  diffTrees,
  featureSuperblockCopies,
  inspectSuperblocks,
  sourceLine,
  featurePreallocated,
  featureWideInodes,
  type ForestReport,
  problemsBesideCopies,
} from "../kvstore/index.js";
import type { SpaceReport } from "../alloc/index.js";
import { SnapshotReport, checkSnapshots, openVolume } from "../snapshot/index.js";
import { checkNodeCacheBytes, inoMax, inoWideFirst, rootIno, treeIdDefaultSubvolume } from "./constants.js";
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
  orphanIno,
  inodeTreeMeta,
} from "./format.js";
import { fsEdges } from "./edges.js";
import { damagedDataBlocks } from "./scrub.js";
import { mapOwner } from "./item_map.js";

/** A problem the repair can fix in one subvolume's inode tree (see repair.ts). */
export interface InodeFix {
  subvolume: number;
  ino: number;
  /**
   * nlink: set the link count; addOrphanKey: list the inode as an orphan;
   * dropOrphanKey: unlist it; lostFound: link the inode, which no entry
   * names but which counts links (or is a directory), into /lost+found;
   * dropEntry: remove the entry `name` of directory `dir`, which names an
   * inode (`ino`) that does not exist.
   */
  kind: "nlink" | "addOrphanKey" | "dropOrphanKey" | "lostFound" | "dropEntry" | "blocks";
  /** nlink: the link count to set; blocks: the data block count to set. */
  nlink?: number;
  dir?: number;
  name?: Buffer;
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
  /**
   * Set when a newer committed generation may have been lost (superblock
   * copies: both copies of the pair it would use are damaged); also one of
   * `problems`. No repair brings it back.
   */
  rolledBack: string | null;
  /** Which superblock copy is in use, when it is not the usual one or copies are damaged. */
  superblockSource: string | null;
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
  /** The highest inode counter past 2^32 of any live subvolume (0: none), which needs feature bit 7. */
  wideInodeCounter: number;
  subvolumes: number;
}

/**
 * A column of whole numbers in [0, 2^53): four bytes each until one passes
 * 2^32 (an inode number on a volume with wide inode numbers), then eight.
 */
class NumberColumn {
  private values: Uint32Array | Float64Array;

  constructor(capacity: number) {
    this.values = new Uint32Array(capacity);
  }

  get capacity(): number {
    return this.values.length;
  }

  get(i: number): number {
    return this.values[i]!;
  }

  set(i: number, value: number): void {
    if (value > 0xffff_ffff && this.values instanceof Uint32Array) this.values = Float64Array.from(this.values);
    this.values[i] = value;
  }

  /** Room for `capacity` numbers, the first `capacity` kept. */
  resize(capacity: number): void {
    this.values = grown(this.values, capacity);
  }
}

/**
 * What the walk keeps of each inode, in typed arrays by slot: a few numbers,
 * not the decoded record (whose payload can be kilobytes), and no map from
 * inode number to slot (a million-entry Map costs tens of MiB on its own).
 * A whole walk visits the inode tree in key order, so slots [0, sorted) are
 * in ascending inode number and found by binary search; only inodes added
 * out of order (visited again by `advance`) are in a map. A removed inode's
 * slot is dead until `compact`, which puts every slot back in order. 29
 * bytes an inode (below 2^32): a million files hold about 28 MiB.
 */
class InodeFacts {
  private sorted = 0;
  private later = new Map<number, number>();
  private inos = new NumberColumn(0);
  private deadSlots = new Uint8Array(0);
  private small = new Uint32Array(0);
  private parents = new NumberColumn(0);
  private used = 0;
  private dead = 0;

  /** Live inodes. */
  get size(): number {
    return this.used - this.dead;
  }

  /** Slots, live and dead: iterate below it and skip `!live(slot)`. */
  get slots(): number {
    return this.used;
  }

  live(slot: number): boolean {
    return this.deadSlots[slot] === 0;
  }

  /** Makes room for `more` inodes at once (the walk knows the tree's item count: no growth by doubling). */
  reserve(more: number): void {
    if (this.used + more > this.inos.capacity) this.resize(this.used + more);
  }

  /** Adds inode `inode`; returns its slot. */
  add(inode: Inode): number {
    const slot = this.used;
    if (slot === this.inos.capacity) this.resize(Math.max(1024, Math.ceil(slot * 1.5)));
    this.used++;
    const ino = inode.ino;
    this.inos.set(slot, ino);
    if (this.later.size === 0 && this.sorted === slot && (slot === 0 || ino > this.inos.get(slot - 1))) this.sorted++;
    else this.later.set(ino, slot);
    this.setSmall(slot, F.mode, inode.mode);
    this.setSmall(slot, F.nlink, inode.nlink);
    this.setSmall(slot, F.flags, inode.flags);
    this.parents.set(slot, inode.parent);
    return slot;
  }

  /** Forgets inode `ino` (its record changed or went). */
  remove(ino: number): void {
    const slot = this.slot(ino);
    if (slot === undefined) return;
    if (this.later.get(ino) === slot) this.later.delete(ino);
    this.deadSlots[slot] = 1;
    this.dead++;
  }

  /** Drops dead slots once they outnumber the live ones, and puts the slots back in inode order. */
  compact(): void {
    if (this.dead < 1024 || this.dead < this.size) return;
    const old = { small: this.small, parents: this.parents, inos: this.inos, deadSlots: this.deadSlots, sorted: this.sorted };
    const later = [...this.later.values()].sort((a, b) => old.inos.get(a) - old.inos.get(b));
    const live = this.size;
    this.inos = new NumberColumn(0);
    this.deadSlots = new Uint8Array(0);
    this.small = new Uint32Array(0);
    this.parents = new NumberColumn(0);
    this.resize(Math.max(1024, live));
    let to = 0;
    const move = (from: number): void => {
      this.inos.set(to, old.inos.get(from));
      this.small.set(old.small.subarray(from * smallFields, (from + 1) * smallFields), to * smallFields);
      this.parents.set(to, old.parents.get(from));
      to++;
    };
    // Merge the live sorted slots with the later ones (sorted above); no inode is live in both.
    let a = 0;
    let b = 0;
    while (a < old.sorted || b < later.length) {
      if (a < old.sorted && old.deadSlots[a] !== 0) {
        a++;
        continue;
      }
      if (b >= later.length || (a < old.sorted && old.inos.get(a) < old.inos.get(later[b]!))) move(a++);
      else move(later[b++]!);
    }
    this.used = to;
    this.sorted = to;
    this.dead = 0;
    this.later = new Map();
  }

  /** Moves the arrays to room for `capacity` slots (the first `capacity` slots kept). */
  private resize(capacity: number): void {
    this.inos.resize(capacity);
    this.deadSlots = grown(this.deadSlots, capacity);
    this.small = grown(this.small, capacity * smallFields);
    this.parents.resize(capacity);
  }

  slot(ino: number): number | undefined {
    if (this.later.size > 0) {
      const slot = this.later.get(ino);
      if (slot !== undefined) return slot;
    }
    let lo = 0;
    let hi = this.sorted;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.inos.get(mid) < ino) lo = mid + 1;
      else hi = mid;
    }
    return lo < this.sorted && this.inos.get(lo) === ino && this.deadSlots[lo] === 0 ? lo : undefined;
  }

  ino(slot: number): number {
    return this.inos.get(slot);
  }

  /** The record's parent field. */
  parent(slot: number): number {
    return this.parents.get(slot);
  }

  small_(slot: number, field: F): number {
    return this.small[slot * smallFields + field]!;
  }

  setSmall(slot: number, field: F, value: number): void {
    this.small[slot * smallFields + field] = value;
  }

  isDir(slot: number): boolean {
    return (this.small_(slot, F.mode) & C.S_IFMT) === C.S_IFDIR;
  }
}

/**
 * u32 facts: the record's mode, nlink, flags; the walk's counts. (What
 * concerns one inode alone, such as its blocks against its extents, is
 * checked as it is visited and kept as its problems.)
 */
const enum F {
  mode,
  nlink,
  flags,
  /** Entries naming this inode (for a directory: its parents; one is right). */
  names,
  /**
   * A directory's subdirectories, counted by `finish`; a file's unwritten
   * (preallocated) extent records, counted by the visit.
   */
  subdirsOrPreallocated,
}
const smallFields = 5;

/**
 * Every directory entry of one subvolume, without its name (found again for
 * the few that are reported): the target inode and type, five bytes (below
 * 2^32). A directory's entries are pushed together, as one run; each run
 * costs nine bytes more (where it starts, its directory, whether it is
 * live). A changed directory's run is killed and its entries pushed again.
 */
class EntryList {
  private inos = new NumberColumn(1024);
  private types = new Uint8Array(1024);
  private runStarts = new Uint32Array(64);
  private runDirs = new NumberColumn(64);
  private runKilled = new Uint8Array(64);
  private runs = 0;
  /** Each directory's run: built at the first kill (the incremental walk), else never needed. */
  private runOf: Map<number, number> | null = null;
  private dead = 0;
  private length = 0;

  push(dir: number, ino: number, type: number): void {
    const last = this.runs - 1;
    if (last < 0 || this.runKilled[last] !== 0 || this.runDirs.get(last) !== dir) this.startRun(dir);
    if (this.length === this.types.length) {
      this.inos.resize(this.length * 2);
      this.types = grown(this.types, this.length * 2);
    }
    this.inos.set(this.length, ino);
    this.types[this.length] = type;
    this.length++;
  }

  private startRun(dir: number): void {
    if (this.runs === this.runStarts.length) {
      this.runStarts = grown(this.runStarts, this.runs * 2);
      this.runDirs.resize(this.runs * 2);
      this.runKilled = grown(this.runKilled, this.runs * 2);
    }
    this.runStarts[this.runs] = this.length;
    this.runDirs.set(this.runs, dir);
    this.runKilled[this.runs] = 0;
    this.runOf?.set(dir, this.runs);
    this.runs++;
  }

  private runEnd(run: number): number {
    return run + 1 < this.runs ? this.runStarts[run + 1]! : this.length;
  }

  /** Kills the entries of directory `dir` (it has at most one run: a directory is visited once until it is unvisited). */
  removeDir(dir: number): void {
    if (this.runOf === null) {
      this.runOf = new Map();
      for (let run = 0; run < this.runs; run++) if (this.runKilled[run] === 0) this.runOf.set(this.runDirs.get(run), run);
    }
    const run = this.runOf.get(dir);
    if (run === undefined) return;
    this.runOf.delete(dir);
    this.runKilled[run] = 1;
    this.dead += this.runEnd(run) - this.runStarts[run]!;
  }

  compact(): void {
    if (this.dead < 4096 || this.dead < this.length - this.dead) return;
    let to = 0;
    let runsTo = 0;
    for (let run = 0; run < this.runs; run++) {
      if (this.runKilled[run] !== 0) continue;
      const start = this.runStarts[run]!;
      const end = this.runEnd(run);
      this.runStarts[runsTo] = to;
      this.runDirs.set(runsTo, this.runDirs.get(run));
      this.runKilled[runsTo] = 0;
      runsTo++;
      for (let from = start; from < end; from++) {
        this.inos.set(to, this.inos.get(from));
        this.types[to] = this.types[from]!;
        to++;
      }
    }
    this.length = to;
    this.runs = runsTo;
    this.dead = 0;
    this.runOf = null;
  }

  /** Calls `visit` with each live entry: its directory, target inode and type. */
  forEach(visit: (dir: number, ino: number, type: number) => void): void {
    for (let run = 0; run < this.runs; run++) {
      if (this.runKilled[run] !== 0) continue;
      const dir = this.runDirs.get(run);
      const end = this.runEnd(run);
      for (let i = this.runStarts[run]!; i < end; i++) visit(dir, this.inos.get(i), this.types[i]!);
    }
  }
}

/** A copy of `from` with room for `capacity` (the first `capacity` kept). */
function grown<T extends Uint8Array | Uint32Array | Float64Array>(from: T, capacity: number): T {
  const to = new (from.constructor as new (n: number) => T)(capacity);
  to.set(from.subarray(0, Math.min(from.length, capacity)));
  return to;
}

function hasSuperblockCopies(sb: { features: bigint }): boolean {
  return (sb.features & featureSuperblockCopies) !== 0n;
}

/** What the superblock copies tell: damaged copies (problems -y repairs), interrupted commits (notes), a roll-back. */
function superblockFindings(device: BlockDevice, report: FsReport): void {
  const sb = inspectSuperblocks(device);
  if (!hasSuperblockCopies(sb.superblock)) {
    for (const note of sb.notes) report.notes.push(`${note}; generation ${sb.superblock.generation} in the other slot is in use`);
    return;
  }
  report.problems.push(...sb.problems);
  report.notes.push(...sb.notes);
  if (sb.rolledBack !== null) {
    report.rolledBack = sb.rolledBack;
    report.problems.push(sb.rolledBack);
  }
  if (sb.problems.length > 0 || sb.notes.length > 0 || sb.rolledBack !== null || sb.source.role !== "slot") report.superblockSource = sourceLine(sb);
}

export interface CheckOptions {
  /** Read every written data block and check its crc32c. */
  verifyData?: boolean;
  /**
   * Check each subvolume after the first from the one before it, through the
   * tree diff (default true); false walks every subvolume whole. Both find
   * the same problems (test/checkers.test.ts compares them).
   */
  incremental?: boolean;
}

export function checkFilesystem(device: BlockDevice, options: CheckOptions = {}): FsReport {
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
    rolledBack: null,
    superblockSource: null,
    fixes: [],
    walkComplete: problemsBesideCopies(snapshots.space.forest).length === 0 && edgeProblems.length === 0 && snapshots.space.forest.trees.length > 0,
    snapshots,
    space: snapshots.space,
    inodes: 0,
    directories: 0,
    dataBlocks: 0,
    preallocatedExtents: 0,
    wideInodeCounter: 0,
    subvolumes: snapshots.live.length,
  };
  for (const blocks of snapshots.space.forest.extents.values()) report.dataBlocks += blocks;
  if (snapshots.space.forest.trees.length === 0) return report;
  superblockFindings(device, report);
  report.notes.push(...fsyncLogNotes(snapshots.space.forest));
  let store: Store;
  try {
    // The caller owns the device: this store is never closed, only dropped.
    store = openVolume(device, { readOnly: true, edges: fsEdges, cacheBytes: checkNodeCacheBytes }).store;
  } catch (error) {
    problems.push(`cannot open the volume for the logical check: ${(error as Error).message}`);
    return report;
  }
  const verifyData = options.verifyData ?? false;
  const incremental = options.incremental ?? true;
  const verified = new Set<string>();
  // The default subvolume, then the snapshots from the newest back, then the other writable subvolumes:
  // each one's tree is then close to the one before it, and the walk carries its facts over through the
  // tree diff. (What is shared is reported in the first subvolume that has it: the default, where it can.)
  const rank = (r: { id: number; readOnly: boolean }): number => (r.id === treeIdDefaultSubvolume ? 0 : r.readOnly ? 1 : 2);
  const order = [...snapshots.live].sort((a, b) => rank(a) - rank(b) || (rank(a) === 1 ? b.id - a.id : a.id - b.id));
  const found = new Map<number, { list: string[]; damage: string[] }>();
  let walk: FsWalk | null = null;
  const treeItems = new Map(snapshots.space.forest.trees.map((t) => [t.id, t.items]));
  for (const record of order) {
    const list: string[] = [];
    const carried = incremental && walk !== null && walk.complete && walk.advance(store, record.id);
    if (!carried) walk = new FsWalk(device, verifyData, verified, record.id, snapshots.space.forest.generation);
    const w = walk!;
    try {
      if (!carried) w.run(store, treeItems.get(record.id) ?? 0);
      w.finish(list);
    } catch (error) {
      w.complete = false;
      list.push(`cannot be walked: ${(error as Error).message}`);
    }
    list.unshift(...w.walkProblems());
    if (w.counter > inoMax + 1) list.push(`the inode counter ${w.counter} is past the largest inode number ${inoMax}`);
    if (w.counter > inoWideFirst) report.wideInodeCounter = Math.max(report.wideInodeCounter, w.counter);
    const subvolume = record.id === treeIdDefaultSubvolume ? "the default subvolume" : `subvolume ${JSON.stringify(record.name)}`;
    const damage = w.dataDamage().map((d) => dataDamageLine(w.pathOf(d.ino), d.ino, subvolume, d.lbas, d.ranges));
    found.set(record.id, { list, damage });
    report.fixes.push(...w.fixes);
    report.inodes += w.facts.size;
    report.directories += w.directories;
    report.preallocatedExtents += w.preallocatedExtents;
  }
  for (const record of snapshots.live) {
    const prefix = record.id === treeIdDefaultSubvolume ? "" : `subvolume ${JSON.stringify(record.name)}: `;
    const of = found.get(record.id);
    for (const problem of of?.list ?? []) problems.push(prefix + problem);
    problems.push(...(of?.damage ?? []));
  }
  if (report.wideInodeCounter !== 0 && !store.hasFeature(featureWideInodes)) {
    problems.push(`superblock: an inode counter is at ${report.wideInodeCounter}, past 2^32, but the feature for wide inode numbers is not set`);
  }
  if (report.preallocatedExtents > 0 && !store.hasFeature(featurePreallocated)) {
    problems.push(`superblock: ${report.preallocatedExtents} unwritten (preallocated) extents exist but the feature that says so is not set`);
  }
  return report;
}

/** A walk up the entries to the root is bounded: a cycle or a corrupt chain ends it. */
const pathDepthMax = 4096;

/** One line per damaged file: its path, subvolume, blocks and byte ranges (what -y cannot give back). */
function dataDamageLine(path: string | null, ino: number, subvolume: string, lbas: number[], ranges: Array<{ from: number; to: number }>): string {
  const where = path === null ? `inode ${ino} (no path found, ${subvolume})` : `inode ${ino} (${JSON.stringify(path)} in ${subvolume})`;
  const list = <T>(items: T[], shown: (item: T) => string): string => {
    const first = items.slice(0, 8).map(shown);
    if (items.length > first.length) first.push(`${items.length - first.length} more`);
    return first.join(", ");
  };
  const blocks = lbas.length === 1 ? `data block ${lbas[0]} fails its checksum` : `data blocks ${list(lbas, String)} fail their checksum`;
  const bytes = ranges.reduce((n, r) => n + r.to - r.from, 0);
  return `${where}: ${blocks}; damaged file bytes ${list(ranges, (r) => `${r.from}-${r.to - 1}`)} (${bytes} bytes)`;
}

/** Thrown from inside the tree diff when a subvolume differs too much from the one before to be worth carrying over. */
class TooManyChanges extends Error {}

/**
 * The logical walk of one subvolume, kept as facts by inode so that the next
 * subvolume can be checked by applying the difference between the two inode
 * trees (`advance`): an inode whose record changed is forgotten and visited
 * again whole (its entries or extents with it: a changed map always changes
 * the record that holds its root), and everything that is not per inode
 * (link counts, entries against inodes, orphans, the counter) is computed
 * again from the facts by `finish`, over typed arrays. A snapshot taken after
 * a small change then costs the change plus a pass over the arrays, not a
 * walk of its tree.
 */
class FsWalk {
  /** Problems found by visiting records, by inode (0: the counters record). */
  private readonly visitProblems = new Map<number, string[]>();
  /** Files whose record's blocks disagree with their extents, found by the visit: the extents' blocks (carried over with the problems). */
  private readonly blocksFixes = new Map<number, number>();
  /** The inode being visited: where its last extent ends, where its last written one ends, the blocks its extents hold. */
  private extentEnd = 0;
  private dataEnd = 0;
  private extentBlocks = 0;
  /**
   * Damaged data found by this subvolume's visits, by inode: not carried over,
   * as data shared with the next subvolume is verified once (`verified`) and
   * reported in the first subvolume that names it. `dataProblems` holds what
   * is not a checksum failure (a read error, a unit that does not decompress);
   * `damaged` the blocks that fail and the file byte ranges they hold.
   */
  private dataProblems = new Map<number, string[]>();
  private damaged = new Map<number, { lbas: number[]; ranges: Array<{ from: number; to: number }> }>();
  /** Set by `finish`: directories named by an entry in another directory than their record's parent field, and that directory. */
  private livesElsewhere = new Map<number, number>();
  /** `parentIndex`'s map, for the subvolume the facts are of (dropped when they move on). */
  private parents: Map<number, number> | null = null;
  fixes: InodeFix[] = [];
  readonly facts = new InodeFacts();
  private readonly orphans = new Set<number>();
  private readonly entries = new EntryList();
  /** Extended-attribute chunks by inode: checked against the inodes by `finish`. */
  private readonly xattrChunks = new Map<number, number>();
  /** Kept to find again the names of the entries reported. */
  private store: Store | null = null;
  private nextIno = 0;
  /** The facts are the whole subvolume's: they may be carried over to the next. */
  complete = true;
  directories = 0;
  preallocatedExtents = 0;

  constructor(
    private readonly device: BlockDevice,
    private readonly verifyData: boolean,
    /** Data slices already verified (shared by snapshots: read once). */
    private readonly verified: Set<string>,
    private subvolumeId: number,
    /** The committed generation: no record can be newer. */
    private readonly generation: number,
  ) {}

  /** The physical slices ([offset, end) in the extent) of each extent's records in the inode being walked. */
  private slices = { ino: -1, byExtent: new Map<number, Array<{ fileBlock: number; from: number; to: number; unwritten: boolean }>>() };

  /** Problems found by visiting records, in inode order. */
  /** The subvolume's inode counter, as its counters record holds it. */
  get counter(): number {
    return this.nextIno;
  }

  walkProblems(): string[] {
    const inos = new Set([...this.visitProblems.keys(), ...this.dataProblems.keys()]);
    return [...inos].sort((a, b) => a - b).flatMap((ino) => [...(this.visitProblems.get(ino) ?? []), ...(this.dataProblems.get(ino) ?? [])]);
  }

  private problem(ino: number, message: string, problems = this.visitProblems): void {
    const list = problems.get(ino);
    if (list === undefined) problems.set(ino, [message]);
    else list.push(message);
  }

  private dataProblem(ino: number, message: string): void {
    this.problem(ino, message, this.dataProblems);
  }

  /** Walks the subvolume whole; `items` (what the tree checker counted in it) sizes the facts once. */
  run(store: Store, items: number): void {
    this.store = store;
    this.complete = false;
    const tree = store.openTree(this.subvolumeId);
    this.facts.reserve(Math.min(items, tree.count));
    for (const [key, value] of tree.range()) this.visit(key, value);
    this.complete = true;
  }

  /**
   * Moves the facts to subvolume `id` by the difference of the two inode
   * trees. False when the trees differ in more than a quarter of the inodes
   * (or the diff cannot read them): the caller then walks `id` whole.
   */
  advance(store: Store, id: number): boolean {
    const limit = Math.max(4096, Math.floor(this.facts.size / 4));
    let changes = 0;
    const from = this.subvolumeId;
    this.complete = false;
    this.dataProblems = new Map();
    this.damaged = new Map();
    this.parents = null;
    try {
      diffTrees(store.openTree(from), store.openTree(id), (change) => {
        if (++changes > limit) throw new TooManyChanges();
        if (change.before !== undefined) this.unvisit(change.key);
        if (change.after !== undefined) {
          this.subvolumeId = id;
          this.visit(change.key, change.after);
          this.subvolumeId = from;
        }
      });
    } catch (error) {
      if (error instanceof TooManyChanges || error instanceof GroveError) return false;
      throw error;
    }
    this.subvolumeId = id;
    this.store = store;
    this.complete = true;
    return true;
  }

  /** Takes one item of the inode tree into the facts; what is wrong with it is a problem of its inode. */
  private visit(key: Buffer, value: Buffer): void {
    if (key.equals(countersKey)) {
      try {
        this.nextIno = decodeCounters(value);
      } catch (error) {
        this.problem(0, (error as Error).message);
      }
      return;
    }
    const orphan = orphanIno(key);
    if (orphan !== undefined) {
      this.orphans.add(orphan);
      return;
    }
    const ino = key.length >= 8 ? Number(key.readBigUInt64BE(0)) : 0;
    if (key.length !== 8) {
      // An extended attribute chunk: it sorts after its inode's record, which must exist.
      this.xattrChunks.set(ino, (this.xattrChunks.get(ino) ?? 0) + 1);
      return;
    }
    try {
      this.visitInode(ino, value);
    } catch (error) {
      this.problem(ino, (error as Error).message);
    }
    this.checkSlices();
  }

  /** Undoes `visit` of the item at `key` (its value changed or went). */
  private unvisit(key: Buffer): void {
    if (key.equals(countersKey)) {
      this.nextIno = 0;
      this.visitProblems.delete(0);
      return;
    }
    const orphan = orphanIno(key);
    if (orphan !== undefined) {
      this.orphans.delete(orphan);
      return;
    }
    const ino = key.length >= 8 ? Number(key.readBigUInt64BE(0)) : 0;
    if (key.length !== 8) {
      const chunks = (this.xattrChunks.get(ino) ?? 1) - 1;
      if (chunks > 0) this.xattrChunks.set(ino, chunks);
      else this.xattrChunks.delete(ino);
      return;
    }
    this.facts.remove(ino);
    this.entries.removeDir(ino);
    this.visitProblems.delete(ino);
    this.blocksFixes.delete(ino);
    this.dataProblems.delete(ino);
    this.damaged.delete(ino);
  }

  /** Checks one inode record and its map (names or extents, inline or in a tree of its own). */
  private visitInode(ino: number, value: Buffer): void {
    const inode = decodeInode(ino, value);
    const slot = this.facts.add(inode);
    this.extentEnd = 0;
    this.dataEnd = 0;
    this.extentBlocks = 0;
    if (inode.kind === PayloadKind.Items) {
      for (const item of decodeItems(ino, inode.payload)) this.visitMapItem(ino, slot, item.key, item.value);
    } else if (inode.kind === PayloadKind.Tree) {
      const map: Tree = this.store!.openDetachedTree(mapOwner(this.subvolumeId, ino), inodeTreeMeta(inode));
      for (const [k, v] of map.range()) this.visitMapItem(ino, slot, k, v);
    }
    if (this.facts.isDir(slot)) return;
    if (inode.blocks !== this.extentBlocks) {
      this.problem(ino, `inode ${ino}: records ${inode.blocks} data blocks, but its extents hold ${this.extentBlocks}`);
      this.blocksFixes.set(ino, this.extentBlocks);
    }
    if (this.dataEnd > Math.ceil(inode.size / blockSizeBytes)) {
      this.problem(ino, `inode ${ino}: a written extent lies past the end of the file (size ${inode.size})`);
    }
  }

  private visitMapItem(ino: number, slot: number, key: Buffer, value: Buffer): void {
    const facts = this.facts;
    if (facts.isDir(slot)) {
      const entry = decodeDirent(ino, value);
      this.entries.push(ino, entry.ino, entry.type);
      return;
    }
    const extent = decodeExtent(ino, key, value);
    if (extent.fileBlock < this.extentEnd) {
      this.problem(ino, `inode ${ino}: extent at file block ${extent.fileBlock} overlaps the one before`);
    }
    this.extentEnd = extent.fileBlock + extent.blocks;
    this.extentBlocks += extent.blocks;
    this.noteSlice(ino, extent);
    if (extent.preallocatedIn !== undefined) {
      facts.setSmall(slot, F.subdirsOrPreallocated, facts.small_(slot, F.subdirsOrPreallocated) + 1);
      if (extent.preallocatedIn > this.generation) {
        this.problem(
          ino,
          `inode ${ino}: unwritten extent at file block ${extent.fileBlock} says generation ${extent.preallocatedIn}, after the last commit (${this.generation})`,
        );
      }
      return;
    }
    this.dataEnd = this.extentEnd;
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
    const ino = this.slices.ino;
    for (const [lba, list] of this.slices.byExtent) {
      if (!list.some((slice) => slice.unwritten)) continue;
      for (const a of list) {
        if (!a.unwritten) continue;
        const clash = list.find((b) => b !== a && b.from < a.to && a.from < b.to);
        if (clash !== undefined) {
          this.problem(ino, `inode ${ino}: unwritten extent at file block ${a.fileBlock} shares blocks of extent ${lba} with the record at file block ${clash.fileBlock}`);
        }
      }
    }
    this.slices.byExtent.clear();
    this.slices.ino = -1;
  }

  private verifyExtent(ino: number, extent: Extent): void {
    const compressed = extent.compression !== Compression.None;
    // A compressed extent is read whole by any of its records: verified once for each distinct way its records describe it.
    const slice = compressed
      ? `${extent.extentLba}z${extent.compressedBytes}:${extent.unitBlocks}:${extent.crcs.toString("hex")}`
      : `${extent.lba}+${extent.diskBlocks}`;
    // Reported once, for the first file found naming it (a snapshot's or clone's record shares the blocks).
    if (this.verified.has(slice)) return;
    this.verified.add(slice);
    const bad = this.damagedBlocks(ino, extent);
    if (bad.length === 0) return;
    // A damaged compressed unit loses the whole record; an uncompressed block loses its own 4 KiB.
    const blocks = compressed ? [...Array(extent.blocks).keys()] : bad;
    let damage = this.damaged.get(ino);
    if (damage === undefined) this.damaged.set(ino, (damage = { lbas: [], ranges: [] }));
    for (const i of bad) damage.lbas.push(compressed ? extent.extentLba + i : extent.lba + i);
    for (const i of blocks) damage.ranges.push({ from: (extent.fileBlock + i) * blockSizeBytes, to: (extent.fileBlock + i + 1) * blockSizeBytes });
  }

  /** Which blocks of the slice fail their checksum; a unit that passes but does not decompress is a problem of its own. */
  private damagedBlocks(ino: number, extent: Extent): number[] {
    const { bad, problem } = damagedDataBlocks(this.device, ino, extent);
    if (problem !== null) this.dataProblem(ino, problem);
    return bad;
  }

  /** Files whose data fails its checksum: the blocks, and the damaged byte ranges (merged, in file order). */
  dataDamage(): Array<{ ino: number; lbas: number[]; ranges: Array<{ from: number; to: number }> }> {
    const out: Array<{ ino: number; lbas: number[]; ranges: Array<{ from: number; to: number }> }> = [];
    for (const [ino, { lbas, ranges: list }] of [...this.damaged].sort((a, b) => a[0] - b[0])) {
      list.sort((a, b) => a.from - b.from);
      const ranges: Array<{ from: number; to: number }> = [];
      for (const r of list) {
        const last = ranges[ranges.length - 1];
        if (last !== undefined && r.from <= last.to) last.to = Math.max(last.to, r.to);
        else ranges.push({ ...r });
      }
      out.push({ ino, lbas, ranges });
    }
    return out;
  }

  /**
   * Each named inode's lowest-numbered directory (the same path however the
   * walk met the entries), built once per subvolume and only when a damaged
   * file is to be named: one pass over the entries, not one per path step.
   */
  private parentIndex(): Map<number, number> {
    if (this.parents !== null) return this.parents;
    const parents = new Map<number, number>();
    this.entries.forEach((dir, ino) => {
      const seen = parents.get(ino);
      if (seen === undefined || dir < seen) parents.set(ino, dir);
    });
    this.parents = parents;
    return parents;
  }

  /** The path of `ino` from the subvolume's root, through the entries the walk saw; null if it has none. */
  pathOf(ino: number): string | null {
    const parts: string[] = [];
    let cur = ino;
    for (let depth = 0; cur !== rootIno; depth++) {
      if (depth >= pathDepthMax) return null;
      const dir = this.parentIndex().get(cur);
      if (dir === undefined) return null;
      const name = this.nameIn(dir, cur);
      if (name === undefined) return null;
      parts.unshift(name.toString("utf8"));
      cur = dir;
    }
    return `/${parts.join("/")}`;
  }

  /** The checks across inodes, from the facts: computed again for every subvolume. */
  finish(problems: string[]): void {
    this.checkSlices();
    const facts = this.facts;
    const entries = this.entries;
    facts.compact();
    entries.compact();
    this.fixes = [];
    for (const [ino, blocks] of this.blocksFixes) this.fix(ino, "blocks", blocks);
    this.directories = 0;
    this.preallocatedExtents = 0;
    for (let slot = 0; slot < facts.slots; slot++) {
      if (!facts.live(slot)) continue;
      facts.setSmall(slot, F.names, 0);
      if (facts.isDir(slot)) {
        this.directories++;
        facts.setSmall(slot, F.subdirsOrPreallocated, 0);
      } else {
        this.preallocatedExtents += facts.small_(slot, F.subdirsOrPreallocated);
      }
    }
    for (const [ino] of [...this.xattrChunks].sort((a, b) => a[0] - b[0])) {
      const owner = facts.slot(ino);
      if (owner === undefined) problems.push(`extended attribute of inode ${ino}, which does not exist`);
      else if ((facts.small_(owner, F.flags) & 1) === 0) problems.push(`inode ${ino} has extended attributes but not the flag that says so`);
    }
    const danglingNames = new Map<string, Buffer[]>();
    // A directory whose first (and, if all is well, only) entry is not in the directory its record names.
    this.livesElsewhere = new Map();
    entries.forEach((dir, ino, type) => {
      const target = facts.slot(ino);
      if (target === undefined) {
        // Hard links: a directory may hold several names of the missing inode; each entry takes the next one.
        const pair = `${dir}:${ino}`;
        let names = danglingNames.get(pair);
        if (names === undefined) danglingNames.set(pair, (names = this.namesIn(dir, ino)));
        const name = names.shift();
        problems.push(`${this.entryWhere(dir, ino, name)}: names inode ${ino}, which does not exist`);
        if (name !== undefined) this.fixes.push({ subvolume: this.subvolumeId, ino, kind: "dropEntry", dir, name });
        return;
      }
      const names = facts.small_(target, F.names);
      facts.setSmall(target, F.names, names + 1);
      if (type !== facts.small_(target, F.mode) >>> 12) {
        problems.push(`${this.entryWhere(dir, ino)}: type ${type} does not match the inode's mode`);
      }
      if (facts.isDir(target)) {
        if (names === 0 && dir !== facts.parent(target)) this.livesElsewhere.set(ino, dir);
        const parent = facts.slot(dir);
        if (parent !== undefined && facts.isDir(parent)) facts.setSmall(parent, F.subdirsOrPreallocated, facts.small_(parent, F.subdirsOrPreallocated) + 1);
      }
    });
    if (facts.slot(rootIno) === undefined) problems.push("the root directory is missing");
    for (let slot = 0; slot < facts.slots; slot++) if (facts.live(slot)) this.checkInode(slot, problems);
    for (const ino of [...this.orphans].sort((a, b) => a - b)) {
      const slot = facts.slot(ino);
      if (slot === undefined) problems.push(`orphan ${ino} names no inode`);
      else if (facts.small_(slot, F.names) > 0) {
        problems.push(`orphan ${ino} still has ${facts.small_(slot, F.names)} names (nlink ${facts.small_(slot, F.nlink)})`);
      } else continue;
      this.fix(ino, "dropOrphanKey");
    }
  }

  /** `directory D, entry "NAME"` for the entry of `dir` naming `ino`: the name is read again, as only reported entries need it. */
  private entryWhere(dir: number, ino: number, name = this.nameIn(dir, ino)): string {
    return name === undefined ? `directory ${dir}, an entry` : `directory ${dir}, entry "${name.toString("utf8")}"`;
  }

  /** The name under which directory `dir` holds `ino`, read again from the tree; undefined if it cannot be read. */
  private nameIn(dir: number, ino: number): Buffer | undefined {
    return this.namesIn(dir, ino, 1)[0];
  }

  /** Up to `limit` names under which directory `dir` holds `ino`, in name order, read again from the tree. */
  private namesIn(dir: number, ino: number, limit = Infinity): Buffer[] {
    const names: Buffer[] = [];
    try {
      const store = this.store;
      const tree = store?.openTree(this.subvolumeId);
      const value = tree?.get(inodeKey(dir));
      if (store !== null && value !== undefined) {
        const inode = decodeInode(dir, value);
        const visit = (key: Buffer, item: Buffer): boolean => {
          if (decodeDirent(dir, item).ino !== ino) return false;
          names.push(Buffer.from(key));
          return names.length >= limit;
        };
        if (inode.kind === PayloadKind.Items) {
          for (const item of decodeItems(dir, inode.payload)) if (visit(item.key, item.value)) break;
        } else if (inode.kind === PayloadKind.Tree) {
          const map = store.openDetachedTree(mapOwner(this.subvolumeId, dir), inodeTreeMeta(inode));
          for (const [k, v] of map.range()) if (visit(k, v)) break;
        }
      }
    } catch {
      // The walk has reported why the directory cannot be read; the entry is named without its name.
    }
    return names;
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
      const expected = 2 + facts.small_(slot, F.subdirsOrPreallocated);
      if (nlink !== expected) {
        problems.push(`${where}: nlink ${nlink}, but ${expected} links exist`);
        this.fix(ino, "nlink", expected);
      }
      const parents = names;
      const parent = facts.parent(slot);
      const home = this.livesElsewhere.get(ino);
      if (ino === rootIno) {
        if (parents !== 0 || parent !== rootIno) problems.push(`${where}: the root has a parent`);
      } else if (parents === 0) {
        problems.push(`${where}: directory is named by no entry`);
        this.fix(ino, "lostFound");
      } else if (parents !== 1) {
        problems.push(`${where}: directory is named by ${parents} entries`);
      } else if (home !== undefined) {
        problems.push(`${where}: parent field ${parent} but it lives in ${home}`);
      }
      return;
    }
    const lost = names === 0 && !this.orphans.has(ino);
    if (nlink !== names) {
      problems.push(`${where}: nlink ${nlink}, but ${names} entries name it`);
      if (!(lost && nlink > 0)) this.fix(ino, "nlink", names);
    }
    if (lost) {
      problems.push(`${where}: has no name and is not an orphan`);
      // A file that still counts links lost its names to damage: it goes to lost+found (as e2fsck does), not away. One with
      // nlink 0 was being deleted (its orphan key lost): it is listed as an orphan, so the next read-write mount frees it.
      this.fix(ino, nlink > 0 ? "lostFound" : "addOrphanKey");
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
