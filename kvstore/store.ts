/**
 * The store: a device, the node cache, the root tree and the running
 * transaction.
 *
 * There is always exactly one running transaction, generation
 * `committedGeneration + 1`. Mutations change nodes in memory; `commit` makes
 * them durable with the protocol of DESIGN.md:
 *   1. fixpoint: record tree roots in the root tree and the allocator's delta
 *      in the free-space trees, until neither changes;
 *   2. seal every dirty node bottom-up, so that each parent (and each root-tree
 *      record, and the superblock) records its child's generation and crc
 *      (node.ts), then write them; 3. flush;
 *   4. write the superblock slot of this generation; 5. flush; and with
 *      superblock copies, 6. write its twin and backups; 7. flush
 *      (superblock_copies.ts).
 * A crash at any point leaves either the old or the new generation on disk.
 * A failed write or flush poisons the store: every later call fails with EIO
 * until the device is opened again.
 *
 * The root tree maps a tree id (u64, big-endian) to that tree's root:
 *
 *   offset  size  field
 *   ------  ----  ------------------------
 *        0     8  root LBA
 *        8     8  item count
 *       16     1  level of the root
 *       17     7  (zero)
 *       24     8  root's generation (0 = not known)
 *       32     4  root's crc32c (its node header's crc field)
 *       36     4  (zero)
 *       40     8  second LBA of the root (0 = none; duplicate metadata)
 *
 * A record of 24 bytes is an older one, without the check; it is rewritten
 * in the 48-byte form when its tree next changes. A 48-byte record is written
 * with generation 0 and filled in when the commit seals the root, before the
 * root-tree leaf holding it is sealed.
 */
import { randomBytes } from "node:crypto";
import {
  blockSizeBytes,
  commitFixpointRoundsMax,
  deviceBlocksMax,
  deviceBlocksMin,
  firstAllocatableLba,
  nodeCacheBytesDefault,
  treeDepthMax,
  treeIdRoot,
} from "./constants.js";
import type { BlockDevice } from "./device.js";
import { allocBlock, writeU64BE, writeU64LE } from "./bytes.js";
import { CorruptionError, GroveError, IoError, assert } from "./errors.js";
import { NodeStore, Tree, TreeMeta } from "./btree.js";
import {
  EdgeReader,
  ItemEdges,
  NodeSharing,
  ReservePurpose,
  SpaceManager,
  SpaceProvider,
  noEdges,
  unshared,
} from "./interfaces.js";
import { Node, NodeExpectation, decodeNode, ownerMatches, sealNode } from "./node.js";
import { NodeCache } from "./node_cache.js";
import { WrittenExtents, encodeLogRecord, logExtentsMax, logRecordsMax, readLog } from "./fsync_log.js";
import {
  CompressedUsage,
  Superblock,
  featureCheckedPointers,
  featureCompressLz4,
  featureFsyncLog,
  labelSizeMaxBytes,
  noCompressedUsage,
  featureSuperblockCopies,
  featureDupMetadata,
} from "./superblock.js";
import {
  SuperblockReport,
  inspectSuperblocks,
  repairCopies,
  reservedExtents,
  reservedStartFor,
  wipeSuperblockCopies,
  writeSuperblockCopies,
} from "./superblock_copies.js";

const META_ROOT_LBA = 0;
const META_COUNT = META_ROOT_LBA + 8;
const META_LEVEL = META_COUNT + 8;
const legacyMetaBytes = META_LEVEL + 8;
const META_ROOT_GENERATION = legacyMetaBytes;
const META_ROOT_CRC = META_ROOT_GENERATION + 8;
const META_ROOT_LBA2 = META_ROOT_CRC + 8;
const metaBytes = META_ROOT_LBA2 + 8;

/** Dropped references charged like one freed range at admission (refcount entries sharing a leaf). */
const dropsPerRange = 32;

/** A gathered write of adjacent dirty nodes stops at this many blocks (IOV_MAX is 1024). */
const writeRunBlocksMax = 1024;

export interface StoreOptions {
  /** Bound on clean cached nodes, in bytes. */
  cacheBytes?: number;
  sharing?: NodeSharing;
  /** Which leaf values hold block pointers (the roots of trees, data extents). */
  edges?: EdgeReader;
  readOnly?: boolean;
  /**
   * Rescue (implies read-only): open the newest superblock generation whose
   * root tree and allocator trees read, falling back to older ones, and let a
   * damaged allocator tree be skipped (nothing is allocated). What was skipped
   * is told in `rescueNotes`.
   */
  rescue?: boolean;
  /** Flush between a superblock slot and its twin (default true; false only for bench_commit's baseline). */
  twinFlush?: boolean;
  /** Told of every repair of a damaged node copy from its twin (duplicate metadata), from the open on. */
  onRepair?: (note: string) => void;
}

export interface FormatOptions extends StoreOptions {
  /** Twin and backup superblocks (featureSuperblockCopies); default true. */
  superblockCopies?: boolean;
  /** Every tree node written twice (featureDupMetadata); default false (single metadata). */
  dupMetadata?: boolean;
  label?: string;
  uuid?: Buffer;
  /** Default compression of new file data (0 none, 1 lz4). */
  compression?: number;
}

export function treeKey(id: number): Buffer {
  const key = Buffer.allocUnsafe(8);
  writeU64BE(key, 0, id);
  return key;
}

function encodeMeta(meta: TreeMeta): Buffer {
  const value = Buffer.alloc(metaBytes);
  writeU64LE(value, META_ROOT_LBA, meta.rootLba);
  writeU64LE(value, META_COUNT, meta.count);
  value.writeUInt8(meta.level, META_LEVEL);
  writeU64LE(value, META_ROOT_GENERATION, meta.rootGeneration ?? 0);
  value.writeUInt32LE((meta.rootCrc ?? 0) >>> 0, META_ROOT_CRC);
  writeU64LE(value, META_ROOT_LBA2, meta.rootMirror ?? 0);
  return value;
}

/** Decodes a root-tree value; a malformed one is corruption. */
export function decodeMeta(value: Buffer, id: number, deviceBlocks: number): TreeMeta {
  const bad = (why: string): never => {
    throw new CorruptionError("EIO_tree_meta", `root tree entry for tree ${id} is corrupt: ${why}`);
  };
  if (value.length !== metaBytes && value.length !== legacyMetaBytes) bad(`length ${value.length}`);
  const checked = value.length === metaBytes;
  const meta = {
    rootLba: Number(value.readBigUInt64LE(META_ROOT_LBA)),
    count: Number(value.readBigUInt64LE(META_COUNT)),
    level: value.readUInt8(META_LEVEL),
    rootGeneration: checked ? Number(value.readBigUInt64LE(META_ROOT_GENERATION)) : 0,
    rootCrc: checked ? value.readUInt32LE(META_ROOT_CRC) : 0,
    rootMirror: checked ? Number(value.readBigUInt64LE(META_ROOT_LBA2)) : 0,
  };
  if (meta.rootLba < firstAllocatableLba || meta.rootLba >= deviceBlocks) bad(`root LBA ${meta.rootLba}`);
  if (meta.rootMirror !== 0 && (meta.rootMirror < firstAllocatableLba || meta.rootMirror >= deviceBlocks || meta.rootMirror === meta.rootLba)) {
    bad(`second root LBA ${meta.rootMirror}`);
  }
  if (meta.level >= treeDepthMax) bad(`level ${meta.level}`);
  return meta;
}

/**
 * Superblock copies that do not decode beside the valid one in use (for an
 * older image: its unreadable slot). Empty when no copy is valid at all.
 */
export function unreadableSlots(device: BlockDevice): string[] {
  let report: SuperblockReport;
  try {
    report = inspectSuperblocks(device);
  } catch {
    return [];
  }
  return [...report.problems, ...report.notes];
}

/** Every valid superblock copy's generation, newest first, one copy each (rescue tries them in turn). */
export function readSuperblocks(device: BlockDevice): Superblock[] {
  let report: SuperblockReport;
  try {
    report = inspectSuperblocks(device);
  } catch {
    return [];
  }
  const found: Superblock[] = [];
  for (const copy of report.copies) {
    const sb = copy.superblock;
    if (sb !== null && !found.some((f) => f.generation === sb.generation)) found.push(sb);
  }
  return found.sort((a, b) => b.generation - a.generation);
}

/** Reads every superblock copy and returns the valid one with the highest generation (superblock_copies.ts). */
export function readSuperblock(device: BlockDevice): Superblock {
  return inspectSuperblocks(device).superblock;
}

/**
 * The durable state: the newest committed superblock with its fsync log
 * applied (what an open shows; a read-write open then commits it).
 */
export function readDurableSuperblock(device: BlockDevice): Superblock {
  return readLog(device, readSuperblock(device)).state;
}

export class Store implements NodeStore {
  readonly device: BlockDevice;
  readonly readOnly: boolean;
  /** Opened with `rescue`: what could not be read and was skipped, in order. */
  readonly rescueNotes: string[] | null;
  readonly sharing: NodeSharing;
  readonly edges: EdgeReader;
  /** The running transaction's generation; every node it writes carries it. */
  generation: number;
  rootTree!: Tree;
  private space: SpaceManager | null = null;
  private superblock: Superblock;
  private readonly cache: NodeCache;
  private readonly trees = new Map<number, Tree>();
  /** Trees dropped by the running transaction: abort brings their handles back to life. */
  private readonly droppedTrees = new Map<number, Tree>();
  private poisoned: unknown = null;
  private committing = false;
  private headroomSpender = false;
  /** Inside `admitted`: the whole unit was reserved once, so its steps are not checked one by one. */
  private admittedScope = false;
  private allocHint = firstAllocatableLba;
  /** The running transaction's feature bits and compressed-extent counters (the superblock holds the committed ones). */
  private features: bigint;
  private compressed: CompressedUsage;
  /** The running transaction's volume size in blocks: differs from the superblock's only inside `resize`. */
  private volumeBlocks: number;
  private readonly twinFlush: boolean;
  /** What open found of the superblock copies (null for a store made by format). */
  superblockReport: SuperblockReport | null = null;
  /** Copies rewritten by a read-write open, one line each. */
  superblockRepairs: string[] = [];
  /**
   * The fsync log (fsync_log.ts). `superblock` is the durable state: the
   * committed superblock, or the state of the last log record. A commit
   * writes the superblock pair of its generation's parity (superblock_copies.ts),
   * which must never be the pair holding the committed superblock the log
   * extends: so a transaction's generation always has the other parity than
   * `logBase` (`alignGeneration`), and logged fsyncs skip a number.
   */
  /** The generation of the committed superblock, which the chain's records extend. */
  private logBase: number;
  private logHead = 0;
  /** Blocks of the records written since the last commit, head first. */
  private logChain: number[] = [];
  /** The block the next record goes to (the head when the chain is empty). */
  private logNext = 0;
  /** Asked for by `logSync` before the head exists: the next commit reserves it. */
  private logWanted = false;
  /** Data extents written since the last durable point, for the next record to list. */
  private readonly written = new WrittenExtents();
  /** Duplicate metadata (featureDupMetadata): every node is written twice. Fixed at format. */
  readonly dupMetadata: boolean;
  /** Damaged node copies read from their twin, by LBA, with the good bytes to write back (`queueRepair`). */
  private readonly repairs = new Map<number, Buffer>();
  /** Since open: damaged copies found (read from their twin), and those rewritten by a durable point. */
  readonly repairCounters = { found: 0, rewritten: 0 };
  /** Told of every repair, one line each (the fs layer logs them). */
  onRepair: ((note: string) => void) | null = null;

  private constructor(device: BlockDevice, superblock: Superblock, options: StoreOptions) {
    this.device = device;
    this.superblock = superblock;
    this.features = superblock.features;
    this.compressed = { ...superblock.compressed };
    this.volumeBlocks = superblock.deviceBlocks;
    this.generation = superblock.generation + 1;
    this.logBase = superblock.generation;
    this.logHead = superblock.logHeadLba;
    this.logNext = superblock.logHeadLba;
    this.readOnly = (options.readOnly ?? false) || (options.rescue ?? false);
    this.rescueNotes = options.rescue === true ? [] : null;
    this.twinFlush = options.twinFlush ?? true;
    this.sharing = options.sharing ?? unshared;
    this.edges = options.edges ?? noEdges;
    this.cache = new NodeCache(options.cacheBytes ?? nodeCacheBytesDefault);
    this.dupMetadata = (superblock.features & featureDupMetadata) !== 0n;
    this.onRepair = options.onRepair ?? null;
  }

  /** Blocks one node write takes: 2 with duplicate metadata. */
  get nodeCopies(): number {
    return this.dupMetadata ? 2 : 1;
  }

  /** Writes an empty forest to `device`, destroying what it held. */
  static format(device: BlockDevice, provider: SpaceProvider, options: FormatOptions = {}): Store {
    const label = options.label ?? "";
    if (Buffer.byteLength(label, "utf8") > labelSizeMaxBytes) {
      throw new GroveError("EINVAL", "EINVAL_label_too_long", `label exceeds ${labelSizeMaxBytes} bytes`);
    }
    // Wipe every copy first, so that a crash mid-format cannot leave an old volume's superblock in charge.
    wipeSuperblockCopies(device);
    const copies = options.superblockCopies ?? true;
    const superblock: Superblock = {
      generation: 0,
      rootLba: 0,
      rootCount: 0,
      rootLevel: 0,
      rootGeneration: 0,
      rootCrc: 0,
      rootMirror: 0,
      deviceBlocks: device.blockCount,
      uuid: options.uuid ?? randomBytes(16),
      label,
      features: ((options.compression ?? 0) !== 0 ? featureCompressLz4 : 0n) | featureCheckedPointers | (copies ? featureSuperblockCopies : 0n) | (options.dupMetadata === true ? featureDupMetadata : 0n),
      compression: options.compression ?? 0,
      compressed: { ...noCompressedUsage },
      reservedStartBlocks: copies ? reservedStartFor(device.blockCount) : 0,
      logHeadLba: 0,
    };
    const store = new Store(device, superblock, { ...options, readOnly: false });
    store.space = provider.format(store);
    const root = store.newNode(0, treeIdRoot);
    store.rootTree = new Tree(store, treeIdRoot, { rootLba: root.lba, level: 0, count: 0, rootMirror: root.mirror });
    store.commit();
    // A second generation fills the other slot, so that both are valid from the start.
    store.commit({ force: true });
    return store;
  }

  /**
   * Opens the newest committed superblock with its fsync log applied: a
   * read-write open commits the recovered state (replay), a read-only one
   * only shows it.
   */
  static open(device: BlockDevice, provider: SpaceProvider, options: StoreOptions = {}): Store {
    if (options.rescue === true) return Store.openRescue(device, provider, options);
    const report = inspectSuperblocks(device);
    return Store.openAt(device, provider, options, report.superblock, report);
  }

  /**
   * The newest generation whose root tree and allocator open, trying older
   * superblock copies when the newest fails; an older generation is said so in
   * `rescueNotes` (its freed blocks may have been reused: what it names is
   * read under every check, and what fails answers EIO).
   */
  private static openRescue(device: BlockDevice, provider: SpaceProvider, options: StoreOptions): Store {
    const candidates = readSuperblocks(device);
    if (candidates.length === 0) return Store.openAt(device, provider, options, readSuperblock(device), null);
    const failures: string[] = [];
    for (const superblock of candidates) {
      try {
        const store = Store.openAt(device, provider, options, superblock, null);
        if (failures.length > 0) {
          store.rescueNotes!.unshift(
            `generation ${candidates[0]!.generation} could not be opened (${failures.join("; ")}); using the older generation ${superblock.generation}`,
          );
        }
        return store;
      } catch (error) {
        if (!(error instanceof GroveError) || error.code !== "EIO") throw error;
        failures.push(`generation ${superblock.generation}: ${error.message}`);
      }
    }
    throw new CorruptionError("EIO_rescue", `no superblock generation could be opened (${failures.join("; ")})`);
  }

  private static openAt(device: BlockDevice, provider: SpaceProvider, options: StoreOptions, committed: Superblock, report: SuperblockReport | null): Store {
    const log = readLog(device, committed);
    // The durable state: the committed superblock with its fsync log applied.
    const superblock = log.state;
    const store = new Store(device, superblock, options);
    store.superblockReport = report;
    store.logBase = committed.generation;
    store.logChain = log.chain;
    store.logNext = log.nextLba;
    store.alignGeneration();
    store.rootTree = new Tree(store, treeIdRoot, {
      rootLba: superblock.rootLba,
      level: superblock.rootLevel,
      count: superblock.rootCount,
      rootGeneration: superblock.rootGeneration,
      rootCrc: superblock.rootCrc,
      rootMirror: superblock.rootMirror,
    });
    store.rootTree.root();
    store.space = provider.open(store);
    // Only once the forest opened: a damaged copy is rewritten from one that proved readable.
    if (!store.readOnly && report !== null && report.stale.length > 0) store.superblockRepairs = repairCopies(device, report);
    // A record whose own blocks did not all land is discarded the same way: the commit makes it stale.
    if (log.validRecords > 0 && !store.readOnly) store.commit({ force: true });
    return store;
  }

  /** Records applied from the fsync log that the next commit makes obsolete (0 after a commit). */
  get logRecords(): number {
    return this.logChain.length;
  }

  /**
   * Writes file data blocks (new blocks, or unwritten ones that no durable
   * state reads): the next logged fsync lists them, so replay can tell
   * whether they reached the disk.
   */
  writeData(lba: number, blocks: Buffer[]): void {
    // Without a log head every fsync is a commit (which clears the list): nothing to track.
    if (this.logHead !== 0) this.written.add(lba, blocks);
    if (blocks.length === 1) this.device.write(lba, blocks[0]!);
    else this.device.writev(lba, blocks);
  }

  get committedGeneration(): number {
    return this.superblock.generation;
  }

  /** The durable state (the committed superblock, or the last fsync log record's): a new object at each durable point. */
  get durableSuperblock(): Readonly<Superblock> {
    return this.superblock;
  }

  /** The volume's size in blocks (the device may hold more). */
  get deviceBlocks(): number {
    return this.volumeBlocks;
  }

  get label(): string {
    return this.superblock.label;
  }

  get uuid(): Buffer {
    return Buffer.from(this.superblock.uuid);
  }

  /** Default compression of new file data, set by format (0 none, 1 lz4). */
  get compression(): number {
    return this.superblock.compression;
  }

  /** The running transaction's compressed data extents (each counted once). */
  get compressedUsage(): CompressedUsage {
    return { ...this.compressed };
  }

  /** Sets an incompatible feature bit; the next commit records it (before anything that needs it is reachable). */
  enableFeature(bit: bigint): void {
    this.features |= bit;
  }

  hasFeature(bit: bigint): boolean {
    return (this.features & bit) !== 0n;
  }

  /**
   * Compressed data extents were written (`sign` 1) or freed (-1). The
   * counters stop at zero: counters that a damaged image left too low must
   * not stop commits (fsck finds and resets them).
   */
  countCompressed(sign: 1 | -1, diskBlocks: number, logicalBlocks: number, extents = 1): void {
    const c = this.compressed;
    c.extents = Math.max(0, c.extents + sign * extents);
    c.diskBlocks = Math.max(0, c.diskBlocks + sign * diskBlocks);
    c.logicalBlocks = Math.max(0, c.logicalBlocks + sign * logicalBlocks);
  }

  /** Repair: the counters as a full walk found them. */
  setCompressedUsage(usage: CompressedUsage): void {
    this.compressed = { ...usage };
  }

  /** Memory held by the running transaction's nodes. */
  get dirtyBytes(): number {
    return this.cache.dirtyCount * blockSizeBytes;
  }

  get cachedCleanBytes(): number {
    return this.cache.cleanBytes;
  }

  get isPoisoned(): boolean {
    return this.poisoned !== null;
  }

  // ---- trees ----------------------------------------------------------------

  hasTree(id: number): boolean {
    this.checkHealthy();
    return this.trees.has(id) || this.rootTree.has(treeKey(id));
  }

  openTree(id: number): Tree {
    this.checkHealthy();
    const open = this.trees.get(id);
    if (open !== undefined) return open;
    const value = this.rootTree.get(treeKey(id));
    if (value === undefined) throw new GroveError("ENOENT", "ENOENT_tree", `tree ${id} does not exist`);
    const tree = new Tree(this, id, decodeMeta(value, id, this.deviceBlocks));
    this.trees.set(id, tree);
    return tree;
  }

  /** Creates an empty tree and records it in the root tree at once, so that a refusal (ENOSPC) changes nothing. */
  createTree(id: number): Tree {
    assert(id !== treeIdRoot, "the root tree is created by format");
    if (this.hasTree(id)) throw new GroveError("EEXIST", "EEXIST_tree", `tree ${id} already exists`);
    this.beginMutation(1, "grow");
    const root = this.newNode(0, id);
    const tree = new Tree(this, id, { rootLba: root.lba, level: 0, count: 0, rootMirror: root.mirror });
    try {
      this.rootTree.put(treeKey(id), encodeMeta(tree.meta()));
    } catch (error) {
      // Refused before it changed the root tree: give the new root back and pass the refusal on.
      if (this.poisoned === null) this.releaseNode(root);
      throw error;
    }
    this.trees.set(id, tree);
    return tree;
  }

  /**
   * fsck's salvage of a tree with damaged nodes: tree `id` gets a new root
   * holding `items` (its readable items, `Tree.salvageItems`) and is
   * recorded at once. The old nodes are not released (a damaged one cannot
   * be read to find what it references): they become unreachable, and the
   * repair that follows rebuilds free space and reference counts from a walk.
   */
  rebuildTree(id: number, items: Iterable<[Buffer, Buffer]>): Tree {
    assert(id !== treeIdRoot, "the root tree is not rebuilt");
    assert(!this.trees.get(id)?.metaDirty, "a rebuilt tree has no changes of its own");
    this.beginMutation(1, "grow");
    const root = this.newNode(0, id);
    const tree = new Tree(this, id, { rootLba: root.lba, level: 0, count: 0, rootMirror: root.mirror });
    this.rootTree.put(treeKey(id), encodeMeta(tree.meta()));
    this.trees.set(id, tree);
    for (const [key, value] of items) tree.put(key, value);
    return tree;
  }

  /**
   * Drops the tree's reference to its root and forgets it: every block only
   * it references is freed, a shared subtree loses one reference instead.
   * The tree is walked read-only first, so that a refusal (ENOSPC: recording
   * the frees costs the commit space) changes nothing.
   */
  dropTree(id: number): void {
    const tree = this.openTree(id);
    this.releaseTree(tree, () => this.rootTree.delete(treeKey(id)));
    this.trees.delete(id);
    this.droppedTrees.set(id, tree);
  }

  /**
   * A new tree `id` that shares tree `source`'s root (a snapshot or clone):
   * O(1), one more reference on the root. The source must be committed
   * (no node of it written in the running transaction), so that its nodes
   * are never again modified in place.
   */
  cloneTree(source: number, id: number): Tree {
    const from = this.openTree(source);
    if (this.hasTree(id)) throw new GroveError("EEXIST", "EEXIST_tree", `tree ${id} already exists`);
    const root = from.root();
    assert(root.generation < this.generation && !from.metaDirty, "a tree is cloned only once it is committed");
    this.beginMutation(1, "grow");
    try {
      this.rootTree.put(treeKey(id), encodeMeta(from.meta()));
      this.sharing.addRef(root.lba, 1);
    } catch (error) {
      this.poison(error);
    }
    const tree = new Tree(this, id, from.meta());
    this.trees.set(id, tree);
    return tree;
  }

  /** Forgets tree `id` without touching its blocks: the caller has released them (an incremental drop). */
  forgetTree(id: number): void {
    const tree = this.openTree(id);
    this.beginMutation(0, "shrink");
    try {
      this.rootTree.delete(treeKey(id));
    } catch (error) {
      this.poison(error);
    }
    tree.dropped = true;
    tree.modCount++;
    this.trees.delete(id);
    this.droppedTrees.set(id, tree);
  }

  /**
   * A tree whose root lives in a record of a layer above (a file's extents,
   * a directory's names), not in the root tree. Its owner keeps the record
   * current from `tree.meta()` after each mutation; on abort the owner must
   * reopen it from the committed record.
   */
  createDetachedTree(owner: number): Tree {
    assert(owner !== treeIdRoot, "the root tree is created by format");
    this.beginMutation(1, "grow");
    const root = this.newNode(0, owner);
    return new Tree(this, owner, { rootLba: root.lba, level: 0, count: 0, rootMirror: root.mirror });
  }

  openDetachedTree(owner: number, meta: TreeMeta): Tree {
    this.checkHealthy();
    const mirror = meta.rootMirror ?? 0;
    const badMirror = mirror !== 0 && (mirror < firstAllocatableLba || mirror >= this.deviceBlocks || mirror === meta.rootLba);
    if (meta.rootLba < firstAllocatableLba || meta.rootLba >= this.deviceBlocks || meta.level >= treeDepthMax || badMirror) {
      throw new CorruptionError("EIO_tree_meta", `tree ${owner} has root ${meta.rootLba} at level ${meta.level}`);
    }
    return new Tree(this, owner, meta);
  }

  /**
   * What releasing a detached tree adds to the commit's work, in ranges (a
   * read-only walk, so a corrupt node is found before any change).
   */
  detachedTreeRanges(tree: Tree): number {
    const plan = this.planRelease();
    plan.node(tree.rootLba, tree.level, tree.id, 0, tree.rootGeneration, tree.rootCrc, tree.rootMirror);
    return plan.ranges();
  }

  /** Releases a detached tree, as `dropTree` does for a recorded one: blocks only it references are freed. */
  freeDetachedTree(tree: Tree): void {
    this.releaseTree(tree, () => {});
  }

  /** An empty plan of references to drop: fill it (read-only), then `applyRelease`. */
  planRelease(): ReleasePlan {
    this.checkHealthy();
    return new ReleasePlan(this);
  }

  /**
   * Carries out a plan: admitted first (a refusal changes nothing), then every
   * shared block loses a reference and every other one is freed.
   */
  applyRelease(plan: ReleasePlan, alsoApply: () => void = () => {}): void {
    // Freed runs each cost the commit a free-space record; dropped references cost the refcount
    // tree about a leaf per few dozen (many share a leaf), so they are charged as such.
    const dropRanges = Math.ceil(plan.drops.length / dropsPerRange);
    // The records changed beside (a table entry, a root-tree entry) copy a path or two each.
    this.admitted(4 * (this.rootTree.level + 4), "shrink", plan.ranges() + dropRanges, () => {
      alsoApply();
      for (const lba of plan.drops) this.sharing.dropRef(lba);
      const c = plan.compressedFreed;
      if (c.extents > 0) this.countCompressed(-1, c.diskBlocks, c.logicalBlocks, c.extents);
      for (const [lba, count] of plan.frees) {
        if (count === 1) {
          const node = this.cache.get(lba);
          if (node !== undefined) {
            this.cache.remove(node);
            node.retire();
          }
        }
        this.space!.free(lba, count);
      }
    });
  }

  private releaseTree(tree: Tree, unlink: () => void): void {
    assert(!tree.dropped, "a dropped tree is not dropped again");
    const plan = this.planRelease();
    plan.node(tree.rootLba, tree.level, tree.id, 0, tree.rootGeneration, tree.rootCrc, tree.rootMirror);
    this.applyRelease(plan, unlink);
    tree.dropped = true;
    tree.modCount++;
  }

  /** Ids of every tree but the root tree, ascending. */
  treeIds(): number[] {
    this.checkHealthy();
    const ids = new Set<number>(this.trees.keys());
    for (const [key] of this.rootTree.range()) ids.add(Number(key.readBigUInt64BE(0)));
    return [...ids].sort((a, b) => a - b);
  }

  /** Blocks of a volume of `volumeBlocks` that the allocator never hands out (the superblock copies' places). */
  reservedExtents(volumeBlocks = this.volumeBlocks): Array<{ start: number; length: number }> {
    return reservedExtents(this.superblock, volumeBlocks);
  }

  // ---- transactions ---------------------------------------------------------

  /** Makes the running transaction durable. A no-op when nothing changed, unless forced. */
  commit(options: { force?: boolean } = {}): void {
    this.checkHealthy();
    if (this.readOnly) throw new GroveError("EROFS", "EROFS_commit", "volume is open read-only");
    if (!options.force && !this.hasChanges() && this.logChain.length === 0) return;
    assert(this.space !== null, "an allocator is attached before commit");
    this.committing = true;
    let next: Superblock;
    try {
      this.retireLog();
      this.settleTrees();
      if (this.cache.dirtyCount > 0) this.features |= featureCheckedPointers;
      this.writeNodes(this.sealDirtyNodes());
      this.writeRepairs();
      this.device.flush();
      next = { ...this.durableState(), deviceBlocks: this.volumeBlocks, logHeadLba: this.logHead };
      writeSuperblockCopies(this.device, next, { twinFlush: this.twinFlush });
    } catch (error) {
      this.poison(error);
    } finally {
      this.committing = false;
    }
    this.logBase = next.generation;
    this.logChain = [];
    this.logNext = this.logHead;
    this.written.clear();
    this.becameDurable(next);
  }

  /**
   * fsync: makes the running transaction durable with one log record and
   * one flush (fsync_log.ts), or with a full commit when the log cannot take
   * it (no head yet, a full chain, too many extents, a resize, low space).
   */
  logSync(): void {
    this.checkHealthy();
    if (this.readOnly) throw new GroveError("EROFS", "EROFS_commit", "volume is open read-only");
    if (!this.hasChanges()) return;
    assert(this.space !== null, "an allocator is attached before commit");
    if (!this.logCanTake()) {
      this.logWanted = true;
      this.commit({ force: true });
      return;
    }
    this.committing = true;
    let next: Superblock;
    const lba = this.logNext;
    try {
      const nextLba = this.space.allocate(1);
      this.settleTrees();
      if (this.cache.dirtyCount > 0) this.features |= featureCheckedPointers;
      const nodes = this.sealDirtyNodes();
      this.writeNodes(nodes);
      // Rewritten in place, these restore what the committed state holds already: replay need not check them.
      this.writeRepairs();
      next = this.durableState();
      // First copies, then second copies: each list is in LBA order, so that adjacent blocks join one extent.
      for (const node of nodes) this.written.add(node.lba, [node.buf]);
      for (const node of nodes) if (node.mirror !== 0) this.written.add(node.mirror, [node.buf]);
      const extents = this.written.triples();
      assert(extents.length / 3 <= logExtentsMax, "logCanTake bounds the record's extents");
      const record = { base: this.logBase, sequence: this.logChain.length + 1, lba, nextLba, state: next, extents };
      this.device.write(lba, encodeLogRecord(record));
      this.device.flush();
      this.logChain.push(lba);
      this.logNext = nextLba;
    } catch (error) {
      this.poison(error);
    } finally {
      this.committing = false;
    }
    this.written.clear();
    this.becameDurable(next);
  }

  /**
   * Gives the running transaction a generation of the other parity than the
   * committed superblock's (`logBase`): its commit then writes the other
   * superblock pair, never the one the fsync log extends. Without logged
   * fsyncs this changes nothing (each commit is the next number).
   */
  private alignGeneration(): void {
    if ((this.generation - this.logBase) % 2 === 0) this.generation++;
  }

  /** The superblock state of the running transaction once its nodes are sealed: what a commit or a log record makes durable. */
  private durableState(): Superblock {
    const root = this.sealedRootCheck(this.rootTree);
    return {
      ...this.superblock,
      generation: this.generation,
      rootLba: this.rootTree.rootLba,
      rootCount: this.rootTree.count,
      rootLevel: this.rootTree.level,
      rootGeneration: root.generation,
      rootCrc: root.crc,
      rootMirror: this.rootTree.rootMirror,
      features: this.features,
      compressed: { ...this.compressed },
    };
  }

  /** The in-memory side of a durable point (a commit or a log record): the running transaction starts afresh. */
  private becameDurable(next: Superblock): void {
    this.superblock = next;
    this.repairsWritten();
    this.droppedTrees.clear();
    // Each transaction looks for its first run from the start of the volume (see FreeSpace.startRun).
    this.allocHint = firstAllocatableLba;
    this.cache.markAllClean();
    this.rootTree.metaDirty = false;
    this.generation++;
    this.alignGeneration();
    this.space!.committed();
    this.sharing.committed();
  }

  /**
   * Whether this fsync can be a log record: a head exists, the chain has
   * room, the record's extents fit (the dirty nodes, counted as if none were
   * adjacent, plus the data extents written), the volume is not being
   * resized, and a block for the next record can be spared.
   */
  private logCanTake(): boolean {
    if (this.logHead === 0 || (this.features & featureFsyncLog) === 0n) return false;
    if (this.logChain.length + 1 >= logRecordsMax) return false;
    if (this.volumeBlocks !== this.superblock.deviceBlocks) return false;
    // The fixpoint adds nodes of its own: leave it a margin.
    if (this.written.count + this.nodeCopies * this.cache.dirtyCount + 32 > logExtentsMax && !this.dirtyNodesFit()) return false;
    try {
      this.space!.reserve(1 + this.commitOverheadBlocks(), "shrink");
    } catch (error) {
      if (error instanceof GroveError && error.code === "ENOSPC") return false;
      throw error;
    }
    return true;
  }

  /** The dirty nodes' runs of adjacent blocks, plus the data extents, fit one record with a margin for the fixpoint. */
  private dirtyNodesFit(): boolean {
    const lbas = nodeBlocks(this.cache.dirtyNodes()).map((b) => b.lba).sort((a, b) => a - b);
    let runs = 0;
    for (let i = 0; i < lbas.length; i++) if (i === 0 || lbas[i] !== lbas[i - 1]! + 1) runs++;
    return this.written.count + runs + 32 <= logExtentsMax;
  }

  /**
   * At a commit: the chain's blocks (but the head, which stays reserved)
   * are freed, and the head is reserved if an fsync asked for the log. The
   * new superblock's generation makes every record of the chain stale.
   */
  private retireLog(): void {
    for (const lba of new Set([...this.logChain, this.logNext])) {
      if (lba !== this.logHead && lba !== 0) this.space!.free(lba, 1);
    }
    if (this.logWanted && this.logHead === 0) {
      this.logHead = this.space!.allocate(1);
      this.features |= featureFsyncLog;
    }
    this.logWanted = false;
  }

  /**
   * Resizes the volume to `blocks`, in a transaction of its own: the caller
   * commits everything else first. It is one commit, so a crash leaves the
   * old size or the new one, never a mix.
   * - Growing: an image file is extended first (sparse), so the commit never
   *   names blocks the file lacks, and a crash before it leaves a longer
   *   file under the old volume, which opens as before. A block device must
   *   already hold `blocks` (refreshSize rereads what a grown one holds).
   * - Shrinking: refused, changing nothing, unless every block past the new
   *   end is free (nothing is moved). Two commits write both superblock
   *   slots with the new size, and only then is an image file cut, so that
   *   neither slot names blocks the file no longer has.
   */
  resize(blocks: number): void {
    this.checkHealthy();
    if (this.readOnly) throw new GroveError("EROFS", "EROFS_resize", "volume is open read-only");
    assert(!this.hasChanges(false), "a resize is a transaction of its own (its commit writes any pending repair)");
    if (!Number.isSafeInteger(blocks) || blocks < deviceBlocksMin || blocks > deviceBlocksMax) {
      throw new GroveError(
        "EINVAL",
        "EINVAL_resize_size",
        blocks < deviceBlocksMin
          ? `cannot resize the volume to ${Math.max(0, blocks) * blockSizeBytes} bytes: a volume is at least ${deviceBlocksMin * blockSizeBytes} bytes`
          : `cannot resize the volume to ${blocks} blocks: a volume is at most 2^48 blocks`,
      );
    }
    const old = this.volumeBlocks;
    if (blocks === old) return;
    if (blocks > old) this.growDevice(blocks);
    this.space!.resize(blocks);
    this.volumeBlocks = blocks;
    this.commit();
    if (blocks > old) return;
    this.commit({ force: true });
    if (this.device.setSize !== undefined && this.device.blockCount > blocks) this.device.setSize(blocks);
  }

  /** Makes the device hold `blocks`: an image file grows, a block device must have grown already. */
  private growDevice(blocks: number): void {
    const holds = this.device.refreshSize?.() ?? this.device.blockCount;
    if (holds >= blocks) return;
    if (this.device.setSize === undefined) {
      throw new GroveError(
        "EINVAL",
        "EINVAL_resize_past_device",
        `the device holds ${holds * blockSizeBytes} bytes; the volume cannot grow to ${blocks * blockSizeBytes} bytes`,
      );
    }
    this.device.setSize(blocks);
  }

  /** Discards the running transaction: every tree returns to its committed state. */
  abort(): void {
    this.checkHealthy();
    this.cache.dropDirty();
    this.written.clear();
    this.space?.aborted();
    this.sharing.aborted();
    const sb = this.superblock;
    this.features = sb.features;
    this.compressed = { ...sb.compressed };
    this.volumeBlocks = sb.deviceBlocks;
    this.resetTree(this.rootTree, {
      rootLba: sb.rootLba,
      level: sb.rootLevel,
      count: sb.rootCount,
      rootGeneration: sb.rootGeneration,
      rootCrc: sb.rootCrc,
      rootMirror: sb.rootMirror,
    });
    for (const [id, tree] of this.droppedTrees) {
      const recreated = this.trees.get(id);
      if (recreated !== undefined) recreated.dropped = true;
      tree.dropped = false;
      this.trees.set(id, tree);
    }
    this.droppedTrees.clear();
    for (const [id, tree] of this.trees) {
      const value = this.rootTree.get(treeKey(id));
      if (value === undefined) {
        tree.dropped = true;
        this.trees.delete(id);
      } else {
        this.resetTree(tree, decodeMeta(value, id, this.deviceBlocks));
      }
    }
  }

  /** Closes the device. An uncommitted transaction is discarded, as a crash would. */
  close(): void {
    this.trees.clear();
    this.device.close();
  }

  // ---- NodeStore ------------------------------------------------------------

  /**
   * A node read from the device is checked against what its pointer expects
   * (`generation`, `crc`; 0: an older, unchecked pointer). A cached node was
   * checked when it was read, or was written by this store.
   */
  readNode(lba: number, level: number, owner: number, generation = 0, crc = 0, mirror = 0): Node {
    if (this.poisoned !== null) this.checkHealthy();
    const cached = this.cache.get(lba);
    if (cached !== undefined) {
      if (cached.level !== level || !ownerMatches(owner, cached.owner)) {
        throw new CorruptionError("EIO_pointer", `block ${lba} is not a level-${level} node of tree ${owner}`);
      }
      if (cached.mirror === 0) cached.mirror = mirror;
      return cached;
    }
    if (!Number.isSafeInteger(lba) || lba < firstAllocatableLba || lba >= this.deviceBlocks) {
      throw new CorruptionError("EIO_pointer", `tree ${owner} points at block ${lba}, outside the volume`);
    }
    const expect = { lba, level, owner, deviceBlocks: this.deviceBlocks, generation, crc };
    let node: Node;
    try {
      node = decodeNode(this.readBlock(lba), expect);
    } catch (error) {
      if (mirror === 0 || !isDamage(error)) throw error;
      node = this.readMirror(lba, mirror, expect, error as GroveError);
    }
    node.mirror = mirror;
    this.cache.addClean(node);
    return node;
  }

  private readBlock(lba: number): Buffer {
    const buf = allocBlock();
    this.device.read(lba, buf);
    return buf;
  }

  /**
   * The first copy of a node failed its checks (`failure`): the node is read
   * from its second copy, and the first is queued to be rewritten with the
   * good bytes, in place, by the next durable point. Both failing is the
   * first copy's error, as with single metadata.
   */
  private readMirror(lba: number, mirror: number, expect: NodeExpectation, failure: GroveError): Node {
    if (!Number.isSafeInteger(mirror) || mirror < firstAllocatableLba || mirror >= this.deviceBlocks) throw failure;
    let node: Node;
    try {
      node = decodeNode(this.readBlock(mirror), expect);
    } catch (error) {
      // Both copies bad: the same error as single metadata gives.
      if (!isDamage(error)) throw error;
      throw failure;
    }
    this.queueRepair(lba, mirror, node.buf, failure.message);
    return node;
  }

  /**
   * Copy `bad` of a node is damaged and `good` (the node's bytes, from its
   * other copy at `from`) is not: the next commit or logged fsync writes it
   * back in place before its flush. That never touches a block the committed
   * state needs intact (it needs the good copy, which is not written), and
   * the bad block cannot be reused before then: freed blocks become free
   * only at that same durable point, when the queue is emptied.
   */
  queueRepair(bad: number, from: number, good: Buffer, why: string): void {
    if (this.repairs.has(bad)) return;
    this.repairs.set(bad, Buffer.from(good));
    this.repairCounters.found++;
    this.repairNotify(`block ${bad} is damaged (${why}); read its copy at block ${from}${this.readOnly ? "" : ", rewriting it"}`);
  }

  /** Copies read from their twin and waiting for the next durable point to be rewritten. */
  get pendingRepairs(): number {
    return this.repairs.size;
  }

  private writeRepairs(): void {
    if (this.repairs.size === 0) return;
    for (const [lba, buf] of this.repairs) this.device.write(lba, buf);
  }

  /** After the durable point that wrote them: the repairs are done. */
  private repairsWritten(): void {
    if (this.repairs.size === 0) return;
    this.repairCounters.rewritten += this.repairs.size;
    for (const lba of this.repairs.keys()) this.repairNotify(`block ${lba} rewritten from its copy`);
    this.repairs.clear();
  }

  private repairNotify(note: string): void {
    const listener = this.onRepair;
    if (listener === null) return;
    try {
      listener(note);
    } catch {
      // A listener's failure must not fail a read.
    }
  }

  readChild(parent: Node, i: number, owner: number): Node {
    const lba = parent.childAt(i);
    const level = parent.level - 1;
    // The check is looked up only on a miss: a cache hit costs what it did before pointers were checked.
    const cached = this.poisoned === null ? this.cache.get(lba) : undefined;
    if (cached !== undefined && cached.level === level && ownerMatches(owner, cached.owner)) {
      // A node cached through a path that did not know its second copy learns it here, before anything frees it.
      if (cached.mirror === 0 && this.dupMetadata) cached.mirror = parent.childMirrorAt(i);
      return cached;
    }
    return this.readNode(lba, level, owner, parent.childGenerationAt(i), parent.childCrcAt(i), parent.childMirrorAt(i));
  }

  newNode(level: number, owner: number): Node {
    const node = Node.empty(this.allocateBlock(), this.generation, owner, level);
    node.mirror = this.allocateMirror(node.lba);
    this.cache.addDirty(node);
    return node;
  }

  shadow(node: Node, treeId: number): Node {
    if (node.generation === this.generation) return node;
    const shared = this.sharing.isShared(node.lba, node.generation, treeId);
    const copy = node.copyTo(this.allocateBlock(), this.generation, treeId);
    copy.mirror = this.allocateMirror(copy.lba);
    this.cache.addDirty(copy);
    if (shared) {
      // The copy is one more parent of every child, and of every block its records point at; the original has one parent fewer.
      if (node.level > 0) {
        for (let i = 0; i < node.count; i++) this.sharing.addRef(node.childAt(i), 1);
      } else {
        const edges: ItemEdges = {
          tree: (_owner, meta) => this.sharing.addRef(meta.rootLba, 1),
          blocks: (lba, count) => this.sharing.addRef(lba, count),
        };
        for (let i = 0; i < node.count; i++) this.edges(treeId, Buffer.from(node.keyAt(i)), node.copyValue(i), edges);
      }
      this.sharing.dropRef(node.lba);
    } else {
      // Nothing references the original any more (abort rereads it from the device).
      this.cache.remove(node);
      this.freeNodeBlocks(node);
      node.retire();
    }
    return copy;
  }

  freeNode(node: Node): void {
    assert(node.generation === this.generation, "only a node written in this transaction is freed directly");
    this.releaseNode(node);
  }

  /**
   * `blocks` are node writes (each takes `nodeCopies` blocks); `otherBlocks`
   * are blocks counted as they are (file data promised, reserves already in blocks).
   */
  beginMutation(blocks: number, purpose: ReservePurpose, freedRanges = 0, otherBlocks = 0): void {
    this.checkHealthy();
    if (this.readOnly) throw new GroveError("EROFS", "EROFS_mutation", "volume is open read-only");
    assert(this.space !== null, "an allocator is attached before any mutation");
    if (this.committing || this.admittedScope) return;
    const needed = this.nodeCopies * blocks + otherBlocks + this.commitOverheadBlocks();
    this.space.reserve(needed, this.headroomSpender ? "shrink" : purpose, freedRanges);
  }

  /**
   * Reserves `blocks` once for a unit of several tree updates, then runs
   * `apply` without checking each update again: a later check could refuse
   * after earlier updates changed things, leaving the unit half done. The
   * caller's estimate must cover the whole unit; a failure inside poisons.
   */
  admitted<T>(blocks: number, purpose: ReservePurpose, freedRanges: number, apply: () => T): T {
    this.beginMutation(blocks, purpose, freedRanges);
    return this.alreadyAdmitted(apply);
  }

  /**
   * Runs `apply`, admitted earlier (file data a write accepted, now written
   * out), without checks: only a truly exhausted device refuses it, and that
   * poisons.
   */
  alreadyAdmitted<T>(apply: () => T): T {
    this.checkHealthy();
    if (this.readOnly) throw new GroveError("EROFS", "EROFS_mutation", "volume is open read-only");
    if (this.admittedScope) return apply();
    this.admittedScope = true;
    try {
      return apply();
    } catch (error) {
      return this.poison(error);
    } finally {
      this.admittedScope = false;
    }
  }

  /**
   * Runs `apply` with the growth headroom open to it: for work that was
   * admitted earlier as growth and must now complete, such as writing out
   * buffered file data that a write already accepted.
   */
  spendingHeadroom<T>(apply: () => T): T {
    const before = this.headroomSpender;
    this.headroomSpender = true;
    try {
      return apply();
    } finally {
      this.headroomSpender = before;
    }
  }

  /**
   * What the commit may spend beyond the allocator's own trees: root-tree
   * leaves for changed tree roots, and the refcount tree's changes. Every
   * admission reserves it; it grows with the transaction, and a commit
   * brings it back down.
   */
  commitOverheadBlocks(): number {
    return this.nodeCopies * (this.rootTreeCommitBlocks() + this.sharing.commitBlocks());
  }

  poison(cause: unknown): never {
    if (this.poisoned === null) this.poisoned = cause;
    throw cause;
  }

  // ---- internals ------------------------------------------------------------

  private checkHealthy(): void {
    if (this.poisoned !== null) {
      throw new IoError("EIO_poisoned", "the volume failed earlier and must be reopened", { cause: this.poisoned });
    }
  }

  /**
   * What the commit may spend copying root-tree leaves to record changed tree
   * roots: a leaf-to-root path for each open tree, at most one per root-tree
   * leaf (a half-full leaf holds well over 32 records).
   */
  private rootTreeCommitBlocks(): number {
    const leaves = Math.ceil(this.rootTree.count / 32) + 1;
    return (this.rootTree.level + 2) * Math.min(this.trees.size + 2, leaves);
  }

  private hasChanges(repairs = true): boolean {
    if (this.cache.dirtyCount > 0 || this.rootTree.metaDirty) return true;
    // A copy read from its twin is rewritten by the next commit, even one with nothing else to do.
    if (repairs && this.repairs.size > 0) return true;
    if (this.features !== this.superblock.features) return true;
    if (this.volumeBlocks !== this.superblock.deviceBlocks) return true;
    const c = this.compressed;
    const committed = this.superblock.compressed;
    if (c.extents !== committed.extents || c.diskBlocks !== committed.diskBlocks || c.logicalBlocks !== committed.logicalBlocks) return true;
    for (const tree of this.trees.values()) if (tree.metaDirty) return true;
    return false;
  }

  private allocateBlock(): number {
    const lba = this.space!.allocate(1, this.allocHint);
    this.allocHint = lba + 1;
    return lba;
  }

  /** The second copy's block for a node at `lba`: an eighth of the volume away (ditto blocks), or 0 with single metadata. */
  private allocateMirror(lba: number): number {
    if (!this.dupMetadata) return 0;
    return this.space!.allocateFar(lba, Math.floor(this.volumeBlocks / 8));
  }

  /** Frees a node's block and its second copy's: the copy shares the node's life (refcounts are keyed by `lba`). */
  private freeNodeBlocks(node: Node): void {
    this.space!.free(node.lba, 1);
    if (node.mirror !== 0) this.space!.free(node.mirror, 1);
  }

  /** Gives back the block of a node written in this transaction (never shared). */
  private releaseNode(node: Node): void {
    this.cache.remove(node);
    this.freeNodeBlocks(node);
    node.retire();
  }

  private resetTree(tree: Tree, meta: TreeMeta): void {
    tree.rootLba = meta.rootLba;
    tree.rootGeneration = meta.rootGeneration ?? 0;
    tree.rootCrc = meta.rootCrc ?? 0;
    tree.rootMirror = meta.rootMirror ?? 0;
    tree.level = meta.level;
    tree.count = meta.count;
    tree.metaDirty = false;
    tree.modCount++;
  }

  /** The commit fixpoint: tree roots into the root tree, allocator delta into its trees, until stable. */
  private settleTrees(): void {
    for (let round = 0; ; round++) {
      assert(round < commitFixpointRoundsMax, "the commit fixpoint converges");
      let changed = false;
      for (const tree of this.trees.values()) {
        if (!tree.metaDirty) continue;
        tree.metaDirty = false;
        this.rootTree.put(treeKey(tree.id), encodeMeta(tree.meta()));
        changed = true;
      }
      if (this.sharing.flushToTrees()) changed = true;
      if (this.space!.flushToTrees()) changed = true;
      if (!changed) return;
    }
  }

  /**
   * Seals every dirty node, children before parents: leaves first, and every
   * other tree before the root tree, whose leaves record their roots. Each
   * checked pointer to a node of this transaction (or not known yet) gets
   * that node's generation and crc. Then every open tree's root check is
   * filled in. Returns the nodes in LBA order.
   */
  private sealDirtyNodes(): Node[] {
    const nodes = this.cache.dirtyNodes();
    const rank = (node: Node): number => (node.owner === treeIdRoot ? treeDepthMax : 0) + node.level;
    nodes.sort((a, b) => rank(a) - rank(b));
    for (const node of nodes) {
      if (node.checked) this.fillChildChecks(node);
      else if (node.owner === treeIdRoot && node.level === 0) this.fillRootRecords(node);
      sealNode(node, this.deviceBlocks);
      node.sealed = true;
    }
    for (const tree of this.trees.values()) {
      if (tree.rootGeneration !== 0 && tree.rootGeneration !== this.generation) continue;
      const root = this.cache.get(tree.rootLba);
      if (root === undefined || root.generation !== this.generation) continue;
      tree.rootGeneration = root.generation;
      tree.rootCrc = root.sealedCrc;
    }
    return nodes.sort((a, b) => a.lba - b.lba);
  }

  /** The sealed node a pointer of this commit names: written by it (and sealed already), or committed. */
  private sealedNode(lba: number, level: number, owner: number): Node {
    const node = this.readNode(lba, level, owner);
    assert(node.generation !== this.generation || node.sealed, `node ${lba} is sealed before what points at it`);
    return node;
  }

  private fillChildChecks(node: Node): void {
    for (let i = 0; i < node.count; i++) {
      const expected = node.childGenerationAt(i);
      if (expected !== 0 && expected !== node.generation) continue;
      const child = this.sealedNode(node.childAt(i), node.level - 1, node.owner);
      node.setChildCheckAt(i, child.generation, child.sealedCrc, child.mirror);
    }
  }

  /** Fills in the root check of each 48-byte record of a root-tree leaf whose root is not known yet. */
  private fillRootRecords(leaf: Node): void {
    for (let i = 0; i < leaf.count; i++) {
      const value = leaf.valueAt(i);
      if (value.length !== metaBytes) continue;
      const expected = Number(value.readBigUInt64LE(META_ROOT_GENERATION));
      if (expected !== 0 && expected !== this.generation) continue;
      const id = Number(leaf.keyAt(i).readBigUInt64BE(0));
      const root = this.sealedNode(Number(value.readBigUInt64LE(META_ROOT_LBA)), value.readUInt8(META_LEVEL), id);
      writeU64LE(value, META_ROOT_GENERATION, root.generation);
      value.writeUInt32LE(root.sealedCrc, META_ROOT_CRC);
      writeU64LE(value, META_ROOT_LBA2, root.mirror);
    }
  }

  /** What the superblock records of the root tree's root, once it is sealed (an older image's is looked up). */
  private sealedRootCheck(tree: Tree): { generation: number; crc: number } {
    if (tree.rootGeneration === 0 || tree.rootGeneration === this.generation) {
      const root = this.sealedNode(tree.rootLba, tree.level, tree.id);
      tree.rootGeneration = root.generation;
      tree.rootCrc = root.sealedCrc;
    }
    return { generation: tree.rootGeneration, crc: tree.rootCrc };
  }

  /** Writes sealed nodes, and their second copies, in LBA order, gathering runs of adjacent blocks. */
  private writeNodes(nodes: Node[]): void {
    const blocks = nodeBlocks(nodes);
    let i = 0;
    while (i < blocks.length) {
      let j = i + 1;
      while (j < blocks.length && j - i < writeRunBlocksMax && blocks[j]!.lba === blocks[j - 1]!.lba + 1) j++;
      if (j - i === 1) {
        this.device.write(blocks[i]!.lba, blocks[i]!.buf);
      } else {
        const run: Buffer[] = [];
        for (let k = i; k < j; k++) run.push(blocks[k]!.buf);
        this.device.writev(blocks[i]!.lba, run);
      }
      i = j;
    }
  }
}

/** The blocks that sealed nodes are written to (each node, and its second copy), by LBA. */
function nodeBlocks(nodes: Node[]): Array<{ lba: number; buf: Buffer }> {
  const blocks: Array<{ lba: number; buf: Buffer }> = [];
  let mirrors = false;
  for (const node of nodes) {
    blocks.push({ lba: node.lba, buf: node.buf });
    if (node.mirror === 0) continue;
    blocks.push({ lba: node.mirror, buf: node.buf });
    mirrors = true;
  }
  if (mirrors) blocks.sort((a, b) => a.lba - b.lba);
  return blocks;
}

/** A read failure that another copy may not share: damage (corruption) or a failed device read. */
function isDamage(error: unknown): boolean {
  return error instanceof GroveError && error.code === "EIO";
}

/**
 * References to drop, planned by a read-only walk (Rodeh): a block with other
 * references loses one and is not descended into; a block with one is freed,
 * with everything it points to (children, and the trees and extents its
 * records hold) released the same way. Counts planned to drop are taken into
 * account, so two records of one extent in a plan free it once.
 */
export class ReleasePlan {
  /** Blocks losing one reference. */
  readonly drops: number[] = [];
  /** [lba, count] runs to free. */
  readonly frees: Array<[number, number]> = [];
  /** Compressed extents among the frees, for the volume's counters. */
  readonly compressedFreed: CompressedUsage = { extents: 0, diskBlocks: 0, logicalBlocks: 0 };
  /** Nodes read by the walk, a measure of its work. */
  nodesRead = 0;
  private readonly planned = new Map<number, number>();

  constructor(private readonly store: Store) {}

  /** Drops one reference to the node at `lba`, of tree `owner` at `level` (checked against `generation`, `crc` if known; second copy at `mirror`). */
  node(lba: number, level: number, owner: number, depth = 0, generation = 0, crc = 0, mirror = 0): void {
    assert(depth <= 2 * treeDepthMax, "release depth is bounded");
    if (this.takeShared(lba)) return;
    const node = this.store.readNode(lba, level, owner, generation, crc, mirror);
    this.nodesRead++;
    this.freeNode(node);
    if (node.level > 0) {
      const children: Array<[number, number, number, number]> = [];
      for (let i = 0; i < node.count; i++) children.push([node.childAt(i), node.childGenerationAt(i), node.childCrcAt(i), node.childMirrorAt(i)]);
      for (const [child, g, c, m] of children) this.node(child, level - 1, owner, depth + 1, g, c, m);
      return;
    }
    for (let i = 0; i < node.count; i++) this.item(owner, Buffer.from(node.keyAt(i)), node.copyValue(i), depth);
  }

  /** Frees a node read by the plan (its only reference), with its second copy. */
  freeNode(node: Node): void {
    this.frees.push([node.lba, 1]);
    if (node.mirror !== 0) this.frees.push([node.mirror, 1]);
  }

  /** Drops the references held by one record (a leaf item). */
  item(owner: number, key: Buffer, value: Buffer, depth = 0): void {
    this.store.edges(owner, key, value, {
      tree: (treeOwner, meta) => this.node(meta.rootLba, meta.level, treeOwner, depth + 1, 0, 0, meta.rootMirror ?? 0),
      blocks: (lba, count, _what, logicalBlocks) => this.extent(lba, count, logicalBlocks),
    });
  }

  /** Drops one reference to the data extent of `count` blocks at `lba` (decompressing to `logicalBlocks`). */
  extent(lba: number, count: number, logicalBlocks = count): void {
    if (this.takeShared(lba)) return;
    this.frees.push([lba, count]);
    if (logicalBlocks !== count) {
      this.compressedFreed.extents++;
      this.compressedFreed.diskBlocks += count;
      this.compressedFreed.logicalBlocks += logicalBlocks;
    }
  }

  /** Runs of adjacent blocks to free: what recording them costs the commit. */
  ranges(): number {
    if (this.frees.length === 0) return 0;
    const sorted = [...this.frees].sort((a, b) => a[0] - b[0]);
    let ranges = 1;
    for (let i = 1; i < sorted.length; i++) if (sorted[i]![0] !== sorted[i - 1]![0] + sorted[i - 1]![1]) ranges++;
    return ranges;
  }

  private takeShared(lba: number): boolean {
    const already = this.planned.get(lba) ?? 0;
    if (this.store.sharing.refCount(lba) - already < 2) return false;
    this.planned.set(lba, already + 1);
    this.drops.push(lba);
    return true;
  }
}
