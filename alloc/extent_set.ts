/**
 * An in-memory set of block extents, always coalesced: no two extents overlap
 * or touch. Indexed by start, and optionally by (length, start) for best fit.
 *
 * This is the allocator's working state for a transaction (the btrfs, LMDB and
 * dm-thin pattern); the free-space B+-trees are its durable form.
 */
import sortedBTreeModule from "sorted-btree";
import { assert } from "../kvstore/index.js";

// sorted-btree is CommonJS with its class on `default`; ESM loaders disagree on which one they hand over.
type BTreeClass = typeof sortedBTreeModule.default;
type SortedMap<K, V> = InstanceType<typeof sortedBTreeModule.default<K, V>>;
const BTree: BTreeClass = sortedBTreeModule.default ?? (sortedBTreeModule as unknown as BTreeClass);

export interface Extent {
  start: number;
  length: number;
}

type LengthKey = [length: number, start: number];

const compareLengthKeys = (a: LengthKey, b: LengthKey): number => a[0] - b[0] || a[1] - b[1];

export class ExtentSet {
  private readonly byStart: SortedMap<number, number> = new BTree<number, number>();
  private readonly byLength: SortedMap<LengthKey, undefined> | null;
  private total = 0;

  constructor(options: { bestFit?: boolean } = {}) {
    this.byLength = options.bestFit ? new BTree<LengthKey, undefined>(undefined, compareLengthKeys) : null;
  }

  /** Blocks in the set. */
  get blocks(): number {
    return this.total;
  }

  /** Extents in the set. */
  get size(): number {
    return this.byStart.size;
  }

  /** Adds blocks that must not already be in the set; merges with touching neighbours. */
  add(start: number, length: number): void {
    assert(length > 0, "an extent has blocks");
    let newStart = start;
    let newLength = length;
    const before = this.byStart.getPairOrNextLower(start);
    if (before !== undefined) {
      assert(before[0] + before[1] <= start, `extent ${start}+${length} overlaps ${before[0]}+${before[1]}`);
      if (before[0] + before[1] === start) {
        this.removeExact(before[0], before[1]);
        newStart = before[0];
        newLength += before[1];
      }
    }
    const after = this.byStart.getPairOrNextHigher(start);
    if (after !== undefined) {
      assert(start + length <= after[0], `extent ${start}+${length} overlaps ${after[0]}+${after[1]}`);
      if (start + length === after[0]) {
        this.removeExact(after[0], after[1]);
        newLength += after[1];
      }
    }
    this.insertExact(newStart, newLength);
    this.total += length;
  }

  /** Removes blocks that must all lie in one extent of the set. */
  remove(start: number, length: number): void {
    const owner = this.byStart.getPairOrNextLower(start);
    assert(owner !== undefined, `blocks ${start}+${length} are in the set`);
    const [ownerStart, ownerLength] = owner;
    assert(start + length <= ownerStart + ownerLength, `blocks ${start}+${length} lie in one extent`);
    this.removeExact(ownerStart, ownerLength);
    if (ownerStart < start) this.insertExact(ownerStart, start - ownerStart);
    if (start + length < ownerStart + ownerLength) {
      this.insertExact(start + length, ownerStart + ownerLength - (start + length));
    }
    this.total -= length;
  }

  /** The extent holding `lba`, if any. */
  containing(lba: number): Extent | undefined {
    const pair = this.byStart.getPairOrNextLower(lba);
    if (pair === undefined || pair[0] + pair[1] <= lba) return undefined;
    return { start: pair[0], length: pair[1] };
  }

  /** True if no block of [start, start+length) is in the set. */
  disjoint(start: number, length: number): boolean {
    const before = this.byStart.getPairOrNextLower(start);
    if (before !== undefined && before[0] + before[1] > start) return false;
    const after = this.byStart.nextHigherPair(start);
    return after === undefined || after[0] >= start + length;
  }

  /** The first extent starting at or after `lba`. */
  atOrAfter(lba: number): Extent | undefined {
    const pair = this.byStart.getPairOrNextHigher(lba);
    return pair === undefined ? undefined : { start: pair[0], length: pair[1] };
  }

  /** The smallest extent of at least `length` blocks; ties go to the lowest start. */
  bestFit(length: number): Extent | undefined {
    assert(this.byLength !== null, "best fit needs the length index");
    const pair = this.byLength.getPairOrNextHigher([length, 0]);
    return pair === undefined ? undefined : { start: pair[0][1], length: pair[0][0] };
  }

  /** The longest extent; ties go to the highest start. */
  largest(): Extent | undefined {
    assert(this.byLength !== null, "the largest extent needs the length index");
    const key = this.byLength.maxKey();
    return key === undefined ? undefined : { start: key[1], length: key[0] };
  }

  /** Extents that overlap or touch [lo, hi). */
  touching(lo: number, hi: number): Extent[] {
    const out: Extent[] = [];
    const first = this.byStart.getPairOrNextLower(lo);
    const from = first !== undefined && first[0] + first[1] >= lo ? first[0] : lo;
    this.byStart.forRange(from, hi, true, (start: number, length: number) => {
      out.push({ start, length });
    });
    return out;
  }

  *extents(): Generator<Extent> {
    for (const [start, length] of this.byStart.entries()) yield { start, length };
  }

  clear(): void {
    this.byStart.clear();
    this.byLength?.clear();
    this.total = 0;
  }

  private insertExact(start: number, length: number): void {
    this.byStart.set(start, length);
    this.byLength?.set([length, start], undefined);
  }

  private removeExact(start: number, length: number): void {
    this.byStart.delete(start);
    this.byLength?.delete([length, start]);
  }
}

/** Merges two sorted, coalesced, disjoint lists into one coalesced list. */
export function mergeExtents(a: Extent[], b: Extent[]): Extent[] {
  if (b.length === 0) return a;
  if (a.length === 0) return b;
  const out: Extent[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    const next = j >= b.length || (i < a.length && a[i]!.start < b[j]!.start) ? a[i++]! : b[j++]!;
    const last = out[out.length - 1];
    if (last !== undefined && last.start + last.length >= next.start) {
      assert(last.start + last.length === next.start, "the lists being merged are disjoint");
      last.length += next.length;
    } else {
      out.push({ start: next.start, length: next.length });
    }
  }
  return out;
}
