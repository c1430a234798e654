/**
 * Range operations on a file's blocks, as pure functions over block ranges:
 * the fallocate(2) modes grovefs supports, the holes a preallocation fills,
 * and SEEK_DATA / SEEK_HOLE. FileData applies them to a file's extents and
 * buffered blocks; FileOps (fs/file_ops.ts) validates and admits them.
 *
 * Every function here walks the ranges it is given once, in order: a sparse
 * file costs what its extents cost, never a loop over its blocks.
 */
import { GroveError, blockSizeBytes } from "../kvstore/index.js";

/** fallocate(2) mode bits (linux/falloc.h). */
export const fallocKeepSize = 0x01;
export const fallocPunchHole = 0x02;
export const fallocNoHideStale = 0x04;
export const fallocCollapseRange = 0x08;
export const fallocZeroRange = 0x10;
export const fallocInsertRange = 0x20;
export const fallocUnshareRange = 0x40;

/**
 * - allocate (mode 0, or KEEP_SIZE): holes in the range become preallocated
 *   (unwritten) blocks; data stays; mode 0 grows the size to the range's end.
 * - punch (PUNCH_HOLE | KEEP_SIZE): the range reads as zeros and its whole
 *   blocks are deallocated; the size stays.
 * - zero (ZERO_RANGE, optionally | KEEP_SIZE): the range reads as zeros and
 *   its blocks are preallocated; without KEEP_SIZE the size grows.
 */
export type FallocateOp = "allocate" | "punch" | "zero";

export interface FallocateRequest {
  op: FallocateOp;
  keepSize: boolean;
  /** Byte range [start, end). */
  start: number;
  end: number;
}

/**
 * The request a fallocate(2) call makes: EINVAL for a bad range (as Linux,
 * checked first), EOPNOTSUPP for any mode but the four supported ones
 * (PUNCH_HOLE needs KEEP_SIZE; collapse, insert, unshare and NO_HIDE_STALE
 * are not offered, in any combination). EFBIG is the caller's (it comes
 * after the file type checks).
 */
export function fallocateRequest(mode: number, offset: number, length: number): FallocateRequest {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length <= 0 || !Number.isSafeInteger(offset + length)) {
    throw new GroveError("EINVAL", "EINVAL_fallocate_range", "fallocate needs an offset of at least 0 and a length above 0");
  }
  const end = offset + length;
  switch (mode) {
    case 0:
    case fallocKeepSize:
      return { op: "allocate", keepSize: mode === fallocKeepSize, start: offset, end };
    case fallocPunchHole | fallocKeepSize:
      return { op: "punch", keepSize: true, start: offset, end };
    case fallocZeroRange:
    case fallocZeroRange | fallocKeepSize:
      return { op: "zero", keepSize: mode !== fallocZeroRange, start: offset, end };
    default:
      throw new GroveError(
        "EOPNOTSUPP",
        "EOPNOTSUPP_fallocate_mode",
        `fallocate mode 0x${Number.isInteger(mode) ? (mode >>> 0).toString(16) : String(mode)} is not supported ` +
          "(0, KEEP_SIZE, PUNCH_HOLE|KEEP_SIZE and ZERO_RANGE with or without KEEP_SIZE are)",
      );
  }
}

/** A half-open block range [start, end). */
export type BlockRange = readonly [start: number, end: number];

/**
 * The runs of blocks in [first, end) that hold nothing: covered by none of
 * `mapped` (ascending, disjoint ranges, as a file's extents are) and not in
 * `buffered` (ascending block indices). O(mapped + buffered in the range).
 */
export function holeRuns(mapped: Iterable<BlockRange>, buffered: readonly number[], first: number, end: number): BlockRange[] {
  const runs: BlockRange[] = [];
  let b = lowerBound(buffered, first);
  const gap = (from: number, to: number): void => {
    let at = from;
    while (b < buffered.length && buffered[b]! < to) {
      const x = buffered[b++]!;
      if (x < at) continue;
      if (x > at) runs.push([at, x]);
      at = x + 1;
    }
    if (at < to) runs.push([at, to]);
  };
  let cursor = first;
  for (const [lo, hi] of mapped) {
    if (hi <= cursor) continue;
    if (lo >= end) break;
    if (lo > cursor) gap(cursor, lo);
    cursor = Math.max(cursor, hi);
    if (cursor >= end) break;
  }
  if (cursor < end) gap(cursor, end);
  return runs;
}

export type SeekWhence = "data" | "hole";

/**
 * SEEK_DATA / SEEK_HOLE at byte `offset` (0 ≤ offset < size) of a file
 * whose data is the blocks of `data` (ascending, disjoint block ranges:
 * written extents) and of `buffered` (ascending block indices). A hole is
 * any other block, and the end of the file. Returns the offset found, or
 * undefined when SEEK_DATA finds no data at or after `offset` (ENXIO).
 */
export function seekIn(data: Iterable<BlockRange>, buffered: readonly number[], size: number, offset: number, whence: SeekWhence): number | undefined {
  const sizeBlocks = Math.ceil(size / blockSizeBytes);
  const first = Math.floor(offset / blockSizeBytes);
  let b = lowerBound(buffered, first);
  const ranges = data[Symbol.iterator]();
  let range = nextEndingAfter(ranges, first);
  if (whence === "data") {
    const fromExtent = range === undefined ? Number.POSITIVE_INFINITY : Math.max(first, range[0]);
    const fromBuffer = b < buffered.length ? buffered[b]! : Number.POSITIVE_INFINITY;
    const found = Math.min(fromExtent, fromBuffer);
    if (found >= sizeBlocks) return undefined;
    return Math.max(offset, found * blockSizeBytes);
  }
  let at = first;
  while (at < sizeBlocks) {
    if (range !== undefined && range[1] <= at) range = nextEndingAfter(ranges, at);
    if (range !== undefined && range[0] <= at) {
      at = range[1];
      continue;
    }
    while (b < buffered.length && buffered[b]! < at) b++;
    if (b < buffered.length && buffered[b] === at) {
      at++;
      b++;
      continue;
    }
    break;
  }
  return at >= sizeBlocks ? size : Math.max(offset, at * blockSizeBytes);
}

function nextEndingAfter(ranges: Iterator<BlockRange>, block: number): BlockRange | undefined {
  for (;;) {
    const next = ranges.next();
    if (next.done) return undefined;
    if (next.value[1] > block) return next.value;
  }
}

/** The first index of `sorted` whose value is at least `value`. */
export function lowerBound(sorted: readonly number[], value: number): number {
  let lo = 0;
  let hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (sorted[mid]! < value) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
