/**
 * Scrub: reads every node copy reachable from the durable state straight
 * from the device (never the cache), checks each against what its pointer
 * expects (checksum, header, generation, crc), and queues a damaged copy
 * whose twin is good to be rewritten from it (`Store.queueRepair`: the next
 * durable point writes it back in place), unless the pass is read-only
 * (`repair` false: it only counts them, as `correctable`). The layers above
 * verify data blocks through `ScrubHooks.item`.
 *
 * A pass runs in steps, so that a mounted volume keeps serving between
 * them. The durable state's blocks stay intact until the next durable point
 * (blocks it frees become reusable only then), and no step spans one: a step
 * that finds the durable state changed restarts the walk from the new one.
 * Restarts cost little: the walk goes in one order (the root tree's trees by
 * id, each in key order, a record's nested trees with the record) and
 * resumes after `position`, the last record of a top-level tree whose
 * subtree is done; and subtrees verified already (by LBA and the crc their
 * pointer records) are skipped, so a snapshot's shared nodes are read once.
 * What changed behind the position was written since the pass began.
 *
 * An internal node's children (both copies) are read ahead in LBA order,
 * each run of adjacent blocks in one request, before the walk visits them.
 */
import { blockSizeBytes, treeDepthMax, treeIdRoot } from "./constants.js";
import { Bitmap } from "./check.js";
import { GroveError } from "./errors.js";
import { ReadAhead } from "./read_ahead.js";
import { type ItemEdges } from "./interfaces.js";
import { compareBytes, decodeNode, validateNodeBytes, type NodeExpectation } from "./node.js";
import { decodeMeta, type Store } from "./store.js";
import type { TreeMeta } from "./btree.js";
import type { Superblock } from "./superblock.js";

/** Where a pass resumes: after record `key` (hex) of top-level tree `tree`. */
export interface ScrubPosition {
  tree: number;
  key: string;
}

export interface ScrubCounters {
  /** Nodes read (each copy counted in `copies`). */
  nodes: number;
  copies: number;
  /** Data blocks verified by the layers above. */
  dataBlocks: number;
  bytesRead: number;
  /** Damaged node copies queued to be rewritten from their twin. */
  corrected: number;
  /** Damaged node copies with a good twin that a read-only pass left as they are (a pass that repairs corrects them). */
  correctable: number;
  /** Damage left as it is: nodes with no good copy, data blocks that fail their checksum. */
  uncorrected: number;
  /** Walks begun again from a newer durable state. */
  restarts: number;
}

export interface ScrubHooks {
  /** Whether tree `id` (of the root tree) is walked: false for a tree being deleted, whose released blocks may be reused. */
  walkTree?(id: number): boolean;
  /** Sees every leaf item of every tree but the root tree; `top` is the top-level tree it lies under (a subvolume). */
  item?(treeId: number, key: Buffer, value: Buffer, top: number, pass: ScrubPass): void;
}

/** A step reads about this many blocks before it yields. */
export const scrubStepBlocks = 256;

/** Verified subtrees remembered before the set is dropped (it is only a saving: memory stays bounded). */
const verifiedMax = 1 << 20;


interface Check {
  generation: number;
  crc: number;
  mirror: number;
}

export class ScrubPass {
  readonly counters: ScrubCounters = { nodes: 0, copies: 0, dataBlocks: 0, bytesRead: 0, corrected: 0, correctable: 0, uncorrected: 0, restarts: 0 };
  /** One line per damage found, in the order found. */
  readonly findings: string[] = [];
  position: ScrubPosition | null;
  done = false;
  private readonly verified = new Map<number, number>();
  /** Child blocks of the nodes being walked, read ahead in runs of adjacent LBAs. */
  private readonly ahead: ReadAhead;
  private dataSeen: Bitmap;
  private walk: Generator<void, void> | null = null;
  private walkState: Superblock | null = null;
  private budget = 0;

  constructor(
    readonly store: Store,
    private readonly hooks: ScrubHooks = {},
    from: ScrubPosition | null = null,
    /** False: a read-only pass, which reports damaged copies with a good twin and rewrites nothing. */
    readonly repair = true,
  ) {
    this.position = from;
    this.dataSeen = new Bitmap(store.deviceBlocks);
    this.ahead = new ReadAhead(store.device, store.deviceBlocks);
  }

  /** Reads about `blocks` blocks; returns whether the pass is done. */
  step(blocks = scrubStepBlocks): boolean {
    if (this.done) return true;
    const durable = this.store.durableSuperblock;
    if (this.walk !== null && this.walkState !== durable) {
      this.walk = null;
      this.counters.restarts++;
      // Read from the old durable state, whose freed blocks may be reused from now on.
      this.ahead.clear();
    }
    if (this.walk === null) {
      this.walkState = durable;
      this.walk = this.walkForest(durable);
    }
    this.budget = blocks;
    while (this.budget > 0) {
      if (this.walk.next().done === true) {
        this.done = true;
        this.walk = null;
        return true;
      }
    }
    return false;
  }

  /** Runs the pass to its end (an unmounted volume: no commit comes between steps). */
  run(): void {
    while (!this.step(1 << 16)) {
      /* step after step */
    }
  }

  /**
   * For the data hook: whether any of blocks `lba`..`lba+count` is new to
   * this pass (then they are verified now). Data blocks are never
   * overwritten while the durable state names them, so once is enough.
   */
  claimData(lba: number, count: number): boolean {
    let fresh = false;
    for (let b = lba; b < lba + count; b++) {
      if (this.dataSeen.get(b)) continue;
      this.dataSeen.set(b);
      fresh = true;
    }
    return fresh;
  }

  /** For the data hook: `blocks` data blocks were read. */
  readData(blocks: number): void {
    this.counters.dataBlocks += blocks;
    this.counters.bytesRead += blocks * blockSizeBytes;
    this.budget -= blocks;
  }

  /** For the data hook: damage that cannot be corrected. */
  reportData(finding: string): void {
    this.counters.uncorrected++;
    this.findings.push(finding);
  }

  private *walkForest(sb: Superblock): Generator<void, void> {
    const from = this.position;
    const check = { generation: sb.rootGeneration, crc: sb.rootCrc, mirror: sb.rootMirror };
    const roots: Array<{ id: number; meta: TreeMeta }> = [];
    // The root tree first, whole (it is small); each tree it lists after it.
    yield* this.visit(treeIdRoot, sb.rootLba, sb.rootLevel, check, null, null, treeIdRoot, null, (key, value) => {
      if (key.length !== 8) return;
      const id = Number(key.readBigUInt64BE(0));
      if (from !== null && id < from.tree) return;
      try {
        roots.push({ id, meta: decodeMeta(value, id, this.store.deviceBlocks) });
      } catch (error) {
        if (!(error instanceof GroveError)) throw error;
        this.uncorrected(`root tree: the record of tree ${id}: ${error.message}`);
      }
    });
    for (const { id, meta } of roots) {
      if (this.hooks.walkTree?.(id) === false) continue;
      const after = from !== null && id === from.tree ? Buffer.from(from.key, "hex") : null;
      const rootCheck = { generation: meta.rootGeneration ?? 0, crc: meta.rootCrc ?? 0, mirror: meta.rootMirror ?? 0 };
      yield* this.visit(id, meta.rootLba, meta.level, rootCheck, null, null, id, after);
    }
  }

  /**
   * Visits the subtree at `lba` of tree `id` (keys in [lo, hi)), under
   * top-level tree `top`; records at or before `after` are skipped.
   */
  private *visit(
    id: number,
    lba: number,
    level: number,
    check: Check,
    lo: Buffer | null,
    hi: Buffer | null,
    top: number,
    after: Buffer | null,
    onRootItem?: (key: Buffer, value: Buffer) => void,
  ): Generator<void, void> {
    const where = lo === null ? `tree ${id}, block ${lba}` : `tree ${id}, block ${lba} (keys from 0x${lo.toString("hex").slice(0, 48)})`;
    if (check.crc !== 0 && this.verified.get(lba) === check.crc) return;
    if (level >= treeDepthMax || !Number.isSafeInteger(lba) || lba < 2 || lba >= this.store.deviceBlocks) {
      this.uncorrected(`${where}: pointer outside the volume`);
      return;
    }
    const buf = this.readCopies(id, lba, level, check, where);
    if (this.budget <= 0) yield;
    if (buf !== null) {
      const node = decodeNode(buf, { lba, level, owner: id, deviceBlocks: this.store.deviceBlocks });
      if (level === 0) {
        for (let i = 0; i < node.count; i++) {
          const key = node.keyAt(i);
          if (after !== null && compareBytes(key, after) <= 0) continue;
          const value = node.valueAt(i);
          if (id === treeIdRoot) onRootItem?.(key, value);
          else yield* this.visitItem(id, key, value, top);
          if (id === top && id !== treeIdRoot) this.position = { tree: top, key: key.toString("hex") };
          if (this.budget <= 0) yield;
        }
      } else {
        const ahead = this.readAhead(node, after, hi);
        for (let i = 0; i < node.count; i++) {
          const childHi = i + 1 < node.count ? node.keyAt(i + 1) : hi;
          if (after !== null && childHi !== null && compareBytes(childHi, after) <= 0) continue;
          const childLo = i === 0 ? lo : Buffer.from(node.keyAt(i));
          const childCheck = { generation: node.childGenerationAt(i), crc: node.childCrcAt(i), mirror: node.childMirrorAt(i) };
          yield* this.visit(id, node.childAt(i), level - 1, childCheck, childLo, childHi === null ? null : Buffer.from(childHi), top, after, onRootItem);
        }
        // What a child skipped (verified already) did not take.
        this.ahead.drop(ahead);
      }
    }
    if (check.crc !== 0) {
      if (this.verified.size >= verifiedMax) this.verified.clear();
      this.verified.set(lba, check.crc);
    }
  }

  /** One leaf item: the data hook, then the trees whose roots it holds. */
  private *visitItem(id: number, key: Buffer, value: Buffer, top: number): Generator<void, void> {
    const nested: Array<{ owner: number; meta: TreeMeta }> = [];
    const edges: ItemEdges = {
      tree: (owner, meta) => nested.push({ owner, meta }),
      blocks: () => {},
    };
    try {
      this.hooks.item?.(id, key, value, top, this);
      this.store.edges(id, key, value, edges);
    } catch (error) {
      if (!(error instanceof GroveError)) throw error;
      this.uncorrected(`tree ${id}: record 0x${key.toString("hex").slice(0, 48)}: ${error.message}`);
      return;
    }
    for (const { owner, meta } of nested) {
      const check = { generation: meta.rootGeneration ?? 0, crc: meta.rootCrc ?? 0, mirror: meta.rootMirror ?? 0 };
      yield* this.visit(owner, meta.rootLba, meta.level, check, null, null, top, null);
    }
  }

  /** The node's bytes from a copy that passes its checks, every copy read; null when none does. */
  private readCopies(id: number, lba: number, level: number, check: Check, where: string): Buffer | null {
    const expect: NodeExpectation = { lba, level, owner: id, deviceBlocks: this.store.deviceBlocks, generation: check.generation, crc: check.crc };
    this.counters.nodes++;
    const first = this.readCopy(lba, expect);
    if (check.mirror === 0) {
      if (first.reason !== null) this.uncorrected(`${where}: ${first.reason}`);
      return first.reason === null ? first.buf : null;
    }
    const mirror = check.mirror;
    if (!Number.isSafeInteger(mirror) || mirror < 2 || mirror >= this.store.deviceBlocks) {
      this.uncorrected(`${where}: its second copy's pointer ${mirror} lies outside the volume`);
      return first.reason === null ? first.buf : null;
    }
    const second = this.readCopy(mirror, expect);
    if (first.reason !== null && second.reason !== null) {
      this.uncorrected(`${where}: ${first.reason}; its second copy at block ${mirror} too: ${second.reason}`);
      return null;
    }
    if (first.reason !== null) {
      this.corrected(lba, mirror, second.buf, `${where}: ${first.reason}`);
      return second.buf;
    }
    if (second.reason !== null) this.corrected(mirror, lba, first.buf, `${where}: second copy at block ${mirror}: ${second.reason}`);
    else if (!first.buf.equals(second.buf)) this.corrected(mirror, lba, first.buf, `${where}: second copy at block ${mirror} differs from the first`);
    return first.buf;
  }

  private readCopy(at: number, expect: NodeExpectation): { buf: Buffer; reason: string | null } {
    this.counters.copies++;
    this.counters.bytesRead += blockSizeBytes;
    this.budget--;
    const early = this.ahead.take(at);
    if (early !== undefined) return { buf: early, reason: validateNodeBytes(early, expect) };
    const buf = Buffer.allocUnsafeSlow(blockSizeBytes);
    try {
      this.store.device.read(at, buf);
    } catch (error) {
      return { buf, reason: `read failed: ${(error as Error).message}` };
    }
    return { buf, reason: validateNodeBytes(buf, expect) };
  }

  /** Reads ahead the copies of `node`'s children that the walk will visit; returns the LBAs read. */
  private readAhead(node: ReturnType<typeof decodeNode>, after: Buffer | null, hi: Buffer | null): number[] {
    const wanted: number[] = [];
    for (let i = 0; i < node.count; i++) {
      const childHi = i + 1 < node.count ? node.keyAt(i + 1) : hi;
      if (after !== null && childHi !== null && compareBytes(childHi, after) <= 0) continue;
      const lba = node.childAt(i);
      const crc = node.childCrcAt(i);
      if (crc !== 0 && this.verified.get(lba) === crc) continue;
      wanted.push(lba, node.childMirrorAt(i));
    }
    return this.ahead.fill(wanted);
  }

  private corrected(bad: number, good: number, bytes: Buffer, problem: string): void {
    if (!this.repair) {
      this.counters.correctable++;
      this.findings.push(`${problem}: its copy at block ${good} is good; not rewritten (read-only)`);
      return;
    }
    this.counters.corrected++;
    this.findings.push(`${problem}: rewritten from its copy at block ${good}`);
    this.store.queueRepair(bad, good, bytes, problem);
  }

  private uncorrected(problem: string): void {
    this.counters.uncorrected++;
    this.findings.push(problem);
  }
}
