/**
 * The kvstore checker: walks the committed forest straight from the device
 * (never the cache) and reports every problem it finds instead of stopping at
 * the first.
 *
 * For every node reachable from the committed superblock it checks the
 * checksum and header (magic, own LBA, owner, level), key order inside the
 * node, that separator keys bound their subtrees, that levels step down by
 * one to leaves at level 0, that depth is bounded, that no node is newer than
 * its parent, that each node is the generation and crc its checked pointer
 * (or root-tree record, or the superblock) expects, so a lost, stale or
 * misdirected write is reported as such, and that each tree's item count
 * matches its root-tree record. A problem names the tree, the block and the
 * first key of the subtree it was found under.
 * With duplicate metadata both copies of every node are reachable, and each
 * must be a valid node matching its pointer, byte for byte the other's. A
 * damaged copy whose twin is good is a problem listed in `copyRepairs` too:
 * fsck -y rewrites it from the twin, and the walk goes on with the twin.
 * It returns the set of reachable blocks for the space checker.
 */
import { blockSizeBytes, treeDepthMax, treeIdRoot } from "./constants.js";
import type { BlockDevice } from "./device.js";
import { compareBytes, nodeGeneration, validateNodeBytes, decodeNode, type Node, type NodeExpectation } from "./node.js";
import { decodeMeta, readSuperblock } from "./store.js";
import { reservedExtents } from "./superblock_copies.js";
import { type LogReplay, logBlocksInUse, readLog } from "./fsync_log.js";
import { GroveError } from "./errors.js";
import { ReadAhead } from "./read_ahead.js";
import type { TreeMeta } from "./btree.js";
import type { ItemEdges } from "./interfaces.js";
import { type CompressedUsage, featureCompressLz4, noCompressedUsage } from "./superblock.js";

/**
 * One bit a block, in pages allocated on first use: memory follows the
 * blocks marked, not the size of the device (a 16 TiB volume holding a few
 * files needs a few pages, not 512 MiB), and indices past 2^32 stay exact.
 */
export class Bitmap {
  private static readonly pageBits = 2 ** 18;
  private readonly pages = new Map<number, Uint8Array>();
  constructor(readonly size: number) {}
  get(i: number): boolean {
    const page = this.pages.get(Math.floor(i / Bitmap.pageBits));
    if (page === undefined) return false;
    const bit = i % Bitmap.pageBits;
    return (page[bit >>> 3]! & (1 << (bit & 7))) !== 0;
  }
  set(i: number): void {
    const index = Math.floor(i / Bitmap.pageBits);
    let page = this.pages.get(index);
    if (page === undefined) {
      page = new Uint8Array(Bitmap.pageBits / 8);
      this.pages.set(index, page);
    }
    const bit = i % Bitmap.pageBits;
    page[bit >>> 3]! |= 1 << (bit & 7);
  }
  /** Bytes held by the pages. */
  get bytes(): number {
    return this.pages.size * (Bitmap.pageBits / 8);
  }
  /**
   * Calls `visit` for each maximal run of equal bits in [start, end), in
   * order; a page never marked is one run, found without scanning it.
   */
  forEachRun(start: number, end: number, visit: (from: number, to: number, set: boolean) => void): void {
    let runFrom = start;
    let runTo = start;
    let runSet = false;
    const push = (from: number, to: number, set: boolean): void => {
      if (runTo > runFrom && (set !== runSet || from !== runTo)) {
        visit(runFrom, runTo, runSet);
        runFrom = from;
      } else if (runTo === runFrom) {
        runFrom = from;
      }
      runTo = to;
      runSet = set;
    };
    let i = start;
    while (i < end) {
      const index = Math.floor(i / Bitmap.pageBits);
      const pageEnd = Math.min(end, (index + 1) * Bitmap.pageBits);
      const page = this.pages.get(index);
      if (page === undefined) {
        push(i, pageEnd, false);
        i = pageEnd;
        continue;
      }
      while (i < pageEnd) {
        const bit = i % Bitmap.pageBits;
        const byte = page[bit >>> 3]!;
        if ((bit & 7) === 0 && i + 8 <= pageEnd && (byte === 0 || byte === 0xff)) {
          push(i, i + 8, byte === 0xff);
          i += 8;
        } else {
          push(i, i + 1, (byte & (1 << (bit & 7))) !== 0);
          i++;
        }
      }
    }
    if (runTo > runFrom) visit(runFrom, runTo, runSet);
  }
}

export interface TreeReport {
  id: number;
  nodes: number;
  items: number;
  depth: number;
}

export interface ForestReport {
  problems: string[];
  generation: number;
  deviceBlocks: number;
  /** Blocks holding reachable nodes. */
  reachable: Bitmap;
  reachableBlocks: number;
  /** Blocks reserved for the superblock copies (marked in `reachable`, not counted in `reachableBlocks`). */
  reservedBlocks: number;
  trees: TreeReport[];
  /**
   * References found to each block reached more than once (a node shared by
   * snapshots, a data extent held by several records): what the refcount
   * tree must record. Blocks reached once are absent (one reference is implicit).
   */
  references: Map<number, number>;
  /** Data extents reached: first LBA → blocks. */
  extents: Map<number, number>;
  /** Compressed data extents reached, each counted once: what the superblock's counters must say. */
  compressed: CompressedUsage;
  /** What the superblock's counters say. */
  compressedRecorded: CompressedUsage;
  /** Whether the superblock has the lz4 feature bit. */
  lz4Feature: boolean;
  /** The superblock's incompatible feature bits. */
  features: bigint;
  /**
   * The fsync log of the committed superblock: the walk checks the state
   * it recovers (what a read-write open would replay and commit), and its
   * blocks count as reachable. Null when the superblock was unreadable.
   */
  log: (LogReplay & { committedGeneration: number; blocks: number[] }) | null;
  /**
   * The root LBAs of the trees that hold a node that cannot be read or fails
   * its checks (read error, checksum, header, pointer), one entry per tree
   * that reaches it: a damaged node shared by a snapshot and its source
   * names both trees' roots. What fsck's salvage rebuilds.
   */
  damagedRoots: Set<number>;
  /** The ids of the walks that met a damaged node: tree ids, or the owners of trees found in records. */
  damagedTrees: Set<number>;
  /** Damaged node copies whose twin is good (duplicate metadata): rewriting `bad` with `good`'s bytes repairs each. */
  copyRepairs: CopyRepair[];
}

/** A node copy at `bad` that fails its checks, and its twin at `good` that passes them; `problem` is how the report says it. */
export interface CopyRepair {
  bad: number;
  good: number;
  problem: string;
}

/** The walk's problems that a rewrite from a good copy does not fix (a complete walk has none). */
export function problemsBesideCopies(report: ForestReport): string[] {
  const repairable = new Set(report.copyRepairs.map((r) => r.problem));
  return report.problems.filter((p) => !repairable.has(p));
}

export type { ItemEdges } from "./interfaces.js";

/** Sees every leaf item of every tree, so upper layers can check their records in the same walk. */
export type ItemVisitor = (treeId: number, key: Buffer, value: Buffer, edges: ItemEdges) => void;

export interface ForestOptions {
  /**
   * Where the walk of tree `id` starts: a tree being dropped incrementally has
   * released every key below this one (its blocks may be reused), so only the
   * rest is walked, and its item count is not checked. Asked when the tree's
   * walk begins, after every tree with a smaller id was walked.
   */
  walkFrom?: (id: number) => Buffer | null;
}

export function checkForest(device: BlockDevice, visitItem?: ItemVisitor, options: ForestOptions = {}): ForestReport {
  const problems: string[] = [];
  let sb;
  try {
    sb = readSuperblock(device);
  } catch (error) {
    if (!(error instanceof GroveError)) throw error;
    return {
      problems: [error.message],
      generation: 0,
      deviceBlocks: device.blockCount,
      reachable: new Bitmap(device.blockCount),
      reachableBlocks: 0,
      reservedBlocks: 0,
      trees: [],
      references: new Map(),
      extents: new Map(),
      compressed: { ...noCompressedUsage },
      compressedRecorded: { ...noCompressedUsage },
      lz4Feature: false,
      features: 0n,
      log: null,
      damagedRoots: new Set(),
      damagedTrees: new Set(),
      copyRepairs: [],
    };
  }
  const committed = sb;
  let log: LogReplay;
  try {
    log = readLog(device, committed);
  } catch (error) {
    if (!(error instanceof GroveError)) throw error;
    problems.push(`fsync log: ${error.message}`);
    log = { state: committed, chain: [], nextLba: committed.logHeadLba, validRecords: 0, end: error.message };
  }
  sb = log.state;
  const reachable = new Bitmap(sb.deviceBlocks);
  // The superblock copies' reserved places own their blocks: a node found there is reached twice, a free one is owned twice.
  let reservedBlocks = 0;
  for (const r of reservedExtents(sb, sb.deviceBlocks)) {
    for (let lba = r.start; lba < r.start + r.length; lba++) reachable.set(lba);
    reservedBlocks += r.length;
  }
  const logBlocks = logBlocksInUse(committed, log);
  const walker = new TreeWalker(device, sb.deviceBlocks, sb.generation, reachable, problems, visitItem);
  const trees: TreeReport[] = [];
  const metas: Array<{ id: number } & TreeMeta> = [];
  const rootCheck = { generation: sb.rootGeneration, crc: sb.rootCrc, mirror: sb.rootMirror };
  const rootReport = walker.walk(treeIdRoot, sb.rootLba, sb.rootLevel, sb.rootCount, rootCheck, (key, value) => {
    if (key.length !== 8) {
      problems.push(`root tree: key of ${key.length} bytes is not a tree id`);
      return;
    }
    const id = Number(key.readBigUInt64BE(0));
    try {
      metas.push({ id, ...decodeMeta(value, id, sb.deviceBlocks) });
    } catch (error) {
      problems.push((error as Error).message);
    }
  });
  trees.push(rootReport);
  for (const meta of metas) {
    const check = { generation: meta.rootGeneration ?? 0, crc: meta.rootCrc ?? 0, mirror: meta.rootMirror ?? 0 };
    trees.push(walker.walk(meta.id, meta.rootLba, meta.level, meta.count, check, undefined, options.walkFrom?.(meta.id) ?? null));
  }
  // Trees found in records are walked breadth-first, so nesting never deepens the stack.
  for (let i = 0; i < walker.queued.length; i++) {
    const next = walker.queued[i]!;
    const check = { generation: next.meta.rootGeneration ?? 0, crc: next.meta.rootCrc ?? 0, mirror: next.meta.rootMirror ?? 0 };
    trees.push(walker.walk(next.owner, next.meta.rootLba, next.meta.level, next.meta.count, check));
  }
  for (const lba of logBlocks) {
    if (reachable.get(lba)) problems.push(`fsync log block ${lba} is also reachable from the forest`);
    reachable.set(lba);
  }
  return {
    problems,
    generation: sb.generation,
    deviceBlocks: sb.deviceBlocks,
    reachable,
    reachableBlocks: walker.marked + logBlocks.length,
    reservedBlocks,
    trees,
    references: walker.references,
    extents: walker.extents,
    compressed: walker.compressed,
    compressedRecorded: sb.compressed,
    lz4Feature: (sb.features & featureCompressLz4) !== 0n,
    features: sb.features,
    log: { ...log, committedGeneration: committed.generation, blocks: logBlocks },
    damagedRoots: walker.damagedRoots,
    damagedTrees: walker.damagedTrees,
    copyRepairs: walker.copyRepairs,
  };
}

/**
 * Where the superblock's compressed-extent counters and lz4 feature bit
 * disagree with the walk. Kept apart from the walk's problems: the walk is
 * still complete, and a repair rewrites them from it.
 */
export function compressedUsageProblems(report: ForestReport): string[] {
  const problems: string[] = [];
  const found = report.compressed;
  const recorded = report.compressedRecorded;
  if (found.extents !== recorded.extents || found.diskBlocks !== recorded.diskBlocks || found.logicalBlocks !== recorded.logicalBlocks) {
    problems.push(`superblock: compressed extent counters say ${usageText(recorded)} but the walk found ${usageText(found)}`);
  }
  if (found.extents > 0 && !report.lz4Feature) {
    problems.push(`superblock: ${found.extents} compressed extents exist but the lz4 feature is not set`);
  }
  return problems;
}

function usageText(usage: CompressedUsage): string {
  return `${usage.extents} extents, ${usage.diskBlocks} blocks on disk, ${usage.logicalBlocks} decompressed`;
}

/** What a pointer expects of the node it names (generation 0: an older, unchecked pointer). */
interface PointerCheck {
  generation: number;
  crc: number;
  /** The node's second copy (0: none). */
  mirror: number;
}

/** A key for a problem report: hex, shortened past 24 bytes. */
function keyText(key: Buffer): string {
  return key.length <= 24 ? `0x${key.toString("hex")}` : `0x${key.subarray(0, 24).toString("hex")}…`;
}

class TreeWalker implements ItemEdges {
  marked = 0;
  readonly queued: Array<{ owner: number; meta: TreeMeta }> = [];
  readonly references = new Map<number, number>();
  readonly extents = new Map<number, number>();
  readonly compressed: CompressedUsage = { ...noCompressedUsage };
  readonly copyRepairs: CopyRepair[] = [];
  /** Decompressed blocks of each compressed extent reached, so every record of it must agree. */
  private readonly logical = new Map<number, number>();
  private readonly nodes: Bitmap;
  /** Items under each node walked, so a shared subtree counts toward every tree that reaches it. */
  private readonly subtreeItems = new Map<number, number>();
  /** The current walk skips subtrees whose keys all lie below this. */
  private from: Buffer | null = null;
  readonly damagedRoots = new Set<number>();
  readonly damagedTrees = new Set<number>();
  /** The root and id of the tree being walked, and the damaged nodes found so far. */
  private walkRoot = 0;
  private walkId = 0;
  private damagedNodes = 0;
  /** Nodes whose subtree holds a damaged node, so a tree that shares one is damaged too. */
  private readonly damagedSubtrees = new Set<number>();
  /** Child blocks of the nodes being walked, read ahead in runs of adjacent LBAs (the walk is synchronous: nothing changes them). */
  private readonly ahead: ReadAhead;

  constructor(
    private readonly device: BlockDevice,
    private readonly deviceBlocks: number,
    private readonly generation: number,
    private readonly reachable: Bitmap,
    private readonly problems: string[],
    private readonly visitItem?: ItemVisitor,
  ) {
    this.nodes = new Bitmap(deviceBlocks);
    this.ahead = new ReadAhead(device, deviceBlocks);
  }

  private referenceAgain(lba: number): void {
    this.references.set(lba, (this.references.get(lba) ?? 1) + 1);
  }

  tree(owner: number, meta: TreeMeta): void {
    this.queued.push({ owner, meta });
  }

  blocks(lba: number, count: number, what: string, logicalBlocks = count): void {
    if (!Number.isSafeInteger(lba) || !Number.isSafeInteger(count) || count <= 0 || lba < 2 || lba + count > this.deviceBlocks) {
      this.problems.push(`${what}: blocks ${lba}+${count} lie outside the volume`);
      return;
    }
    const known = this.extents.get(lba);
    if (known === count) {
      const unit = this.logical.get(lba) ?? count;
      if (unit !== logicalBlocks) {
        this.problems.push(`${what}: extent ${lba}+${count} holds ${logicalBlocks} blocks decompressed, but another record says ${unit}`);
      }
      this.referenceAgain(lba);
      return;
    }
    if (known !== undefined) {
      this.problems.push(`${what}: extent ${lba}+${count} overlaps extent ${lba}+${known}`);
      return;
    }
    this.extents.set(lba, count);
    if (logicalBlocks !== count) {
      this.logical.set(lba, logicalBlocks);
      this.compressed.extents++;
      this.compressed.diskBlocks += count;
      this.compressed.logicalBlocks += logicalBlocks;
    }
    for (let b = lba; b < lba + count; b++) {
      if (this.reachable.get(b)) {
        this.problems.push(`${what}: block ${b} is reachable twice`);
        continue;
      }
      this.reachable.set(b);
      this.marked++;
    }
  }

  walk(
    id: number,
    rootLba: number,
    level: number,
    count: number,
    check: PointerCheck,
    onItem?: (key: Buffer, value: Buffer) => void,
    from: Buffer | null = null,
  ): TreeReport {
    const report: TreeReport = { id, nodes: 0, items: 0, depth: level + 1 };
    this.from = from;
    if (level >= treeDepthMax) {
      this.problems.push(`tree ${id}: depth ${level + 1} exceeds ${treeDepthMax}`);
      return report;
    }
    this.walkRoot = rootLba;
    this.walkId = id;
    this.visit(id, rootLba, level, null, null, this.generation, check, report, onItem);
    this.from = null;
    if (from === null && report.items !== count) {
      this.problems.push(`tree ${id}: holds ${report.items} items but its record says ${count}`);
    }
    return report;
  }

  /** Visits the subtree at `lba`, whose keys must lie in [lo, hi). */
  private visit(
    id: number,
    lba: number,
    level: number,
    lo: Buffer | null,
    hi: Buffer | null,
    parentGeneration: number,
    check: PointerCheck,
    report: TreeReport,
    onItem?: (key: Buffer, value: Buffer) => void,
  ): void {
    const where = lo === null ? `tree ${id}, block ${lba}` : `tree ${id}, block ${lba} (keys from ${keyText(lo)})`;
    if (!Number.isSafeInteger(lba) || lba < 2 || lba >= this.deviceBlocks) {
      this.problems.push(`${where}: pointer outside the volume`);
      this.damaged();
      return;
    }
    if (this.nodes.get(lba)) {
      this.referenceAgain(lba);
      report.items += this.subtreeItems.get(lba) ?? 0;
      if (this.damagedSubtrees.has(lba)) this.damaged(false);
      return;
    }
    const itemsBefore = report.items;
    const damagedBefore = this.damagedNodes;
    try {
      this.visitNode(id, lba, level, lo, hi, parentGeneration, check, report, where, onItem);
    } finally {
      this.subtreeItems.set(lba, report.items - itemsBefore);
      if (this.damagedNodes > damagedBefore) this.damagedSubtrees.add(lba);
    }
  }

  /** The tree being walked reaches a damaged node (`found`: one not seen before). */
  private damaged(found = true): void {
    if (found) this.damagedNodes++;
    this.damagedRoots.add(this.walkRoot);
    this.damagedTrees.add(this.walkId);
  }

  private visitNode(
    id: number,
    lba: number,
    level: number,
    lo: Buffer | null,
    hi: Buffer | null,
    parentGeneration: number,
    check: PointerCheck,
    report: TreeReport,
    where: string,
    onItem?: (key: Buffer, value: Buffer) => void,
  ): void {
    if (this.reachable.get(lba)) {
      this.problems.push(`${where}: block is reachable twice`);
      return;
    }
    this.reachable.set(lba);
    this.nodes.set(lba);
    this.marked++;
    report.nodes++;
    const buf = this.readCopies(id, lba, level, check, where);
    if (buf === null) {
      this.damaged();
      return;
    }
    const generation = nodeGeneration(buf);
    if (generation > parentGeneration) {
      this.problems.push(`${where}: generation ${generation} is newer than its parent's ${parentGeneration}`);
    }
    const node = decodeNode(buf, { lba, level, owner: id, deviceBlocks: this.deviceBlocks });
    this.checkBounds(node, lo, hi, where);
    if (level === 0) {
      report.items += node.count;
      // Views into this node's own buffer, which the walk never reuses: visitors may keep them.
      for (let i = 0; i < node.count; i++) {
        const key = node.keyAt(i);
        const value = node.valueAt(i);
        onItem?.(key, value);
        this.visitItem?.(id, key, value, this);
      }
      return;
    }
    if (node.count === 0) this.problems.push(`${where}: internal node has no children`);
    const wanted: number[] = [];
    for (let i = 0; i < node.count; i++) {
      const childHi = i + 1 < node.count ? node.keyAt(i + 1) : hi;
      if (this.from !== null && childHi !== null && compareBytes(childHi, this.from) <= 0) continue;
      // A child walked already (a shared subtree) is not read again.
      if (!this.nodes.get(node.childAt(i))) wanted.push(node.childAt(i), node.childMirrorAt(i));
    }
    const ahead = this.ahead.fill(wanted);
    for (let i = 0; i < node.count; i++) {
      const childLo = i === 0 ? lo : Buffer.from(node.keyAt(i));
      const childHi = i + 1 < node.count ? Buffer.from(node.keyAt(i + 1)) : hi;
      if (this.from !== null && childHi !== null && compareBytes(childHi, this.from) <= 0) continue;
      const childCheck = { generation: node.childGenerationAt(i), crc: node.childCrcAt(i), mirror: node.childMirrorAt(i) };
      this.visit(id, node.childAt(i), level - 1, childLo, childHi, generation, childCheck, report, onItem);
    }
    this.ahead.drop(ahead);
  }

  /** The node's bytes from a copy that passes every check (null: none does, and why is reported). */
  private readCopies(id: number, lba: number, level: number, check: PointerCheck, where: string): Buffer | null {
    const expect = { lba, level, owner: id, deviceBlocks: this.deviceBlocks, generation: check.generation, crc: check.crc };
    const first = this.readCopy(lba, expect);
    const mirror = check.mirror;
    if (mirror === 0) {
      if (first.reason !== null) this.problems.push(`${where}: ${first.reason}`);
      return first.reason === null ? first.buf : null;
    }
    if (!Number.isSafeInteger(mirror) || mirror < 2 || mirror >= this.deviceBlocks) {
      this.problems.push(`${where}: second copy's pointer ${mirror} lies outside the volume`);
      return first.reason === null ? first.buf : null;
    }
    if (this.reachable.get(mirror)) {
      this.problems.push(`${where}: its second copy's block ${mirror} is reachable twice`);
    } else {
      this.reachable.set(mirror);
      this.marked++;
    }
    const second = this.readCopy(mirror, expect);
    if (first.reason !== null && second.reason !== null) {
      this.problems.push(`${where}: ${first.reason}; its second copy at block ${mirror} too: ${second.reason}`);
      return null;
    }
    if (first.reason !== null) {
      this.copyProblem(lba, mirror, `${where}: ${first.reason} (its second copy at block ${mirror} is good)`);
      return second.buf;
    }
    if (second.reason !== null) {
      this.copyProblem(mirror, lba, `${where}: second copy at block ${mirror}: ${second.reason} (the first copy is good)`);
    } else if (!first.buf.equals(second.buf)) {
      this.copyProblem(mirror, lba, `${where}: second copy at block ${mirror} differs from the first`);
    }
    return first.buf;
  }

  private copyProblem(bad: number, good: number, problem: string): void {
    this.problems.push(problem);
    this.copyRepairs.push({ bad, good, problem });
  }

  /** One copy's bytes, checked as the node at `expect.lba` (a second copy's header names the first's LBA). */
  private readCopy(at: number, expect: NodeExpectation): { buf: Buffer; reason: string | null } {
    const early = this.ahead.take(at);
    if (early !== undefined) return { buf: early, reason: validateNodeBytes(early, expect) };
    const buf = Buffer.allocUnsafeSlow(blockSizeBytes);
    try {
      this.device.read(at, buf);
    } catch (error) {
      return { buf, reason: `read failed: ${(error as Error).message}` };
    }
    return { buf, reason: validateNodeBytes(buf, expect) };
  }

  private checkBounds(node: Node, lo: Buffer | null, hi: Buffer | null, where: string): void {
    const first = node.level > 0 ? 1 : 0;
    for (let i = first; i < node.count; i++) {
      const key = node.keyAt(i);
      if (lo !== null && compareBytes(key, lo) < 0) {
        this.problems.push(`${where}: key ${i} lies below its separator`);
        return;
      }
      if (hi !== null && compareBytes(key, hi) >= 0) {
        this.problems.push(`${where}: key ${i} lies at or above the next separator`);
        return;
      }
    }
  }
}
