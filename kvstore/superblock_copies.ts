/**
 * Superblock copies (feature bit 4, `featureSuperblockCopies`): where each
 * generation's superblock is written, how open picks the copy to trust, and
 * what it can tell about damage and roll-back.
 *
 * Places (LBAs; all fixed, none ever allocated):
 *
 *   copy      LBA                 written for generation G
 *   -------   ------------------  ---------------------------------------
 *   slot      0, 1                G % 2: first, then flush
 *   twin      2, 3                2 + G % 2: after the slot is durable
 *   backup    16384    (64 MiB)   with the twin, if the volume has > 16384 blocks
 *   backup    67108864 (256 GiB)  with the twin, if the volume has > 67108864 blocks
 *
 * A commit writes: nodes, flush; slot, flush; twin and backups, flush. So the
 * pair (slot, twin) of the previous generation is never touched by a commit,
 * and a crash can leave at most one of a pair torn: the slot torn with its
 * twin still holding G-2, or the slot durable at G with the twin (and the
 * backups) not yet written. Both copies of a pair unreadable, or the slot older
 * than its twin, cannot come from a crash: that is damage.
 *
 * Open takes the newest valid copy (ties: slot, twin, backup). Then:
 *   - copies of that generation that are missing or stale are rewritten from
 *     it at the next read-write open (`repairCopies`); a stale twin or backup
 *     beside a good slot is what an interrupted commit leaves (a note), a bad
 *     slot beside a good twin or backup is damage (a problem);
 *   - generation N+1 may have been durable and lost only if no backup holds N
 *     (a commit writes its backups before it returns) and both copies of the
 *     pair N+1 would use are unreadable. Then the volume may have been rolled
 *     back, and open says so (`rolledBack`).
 *   - a copy that is valid but names more blocks than the device has means a
 *     truncated image: open refuses it (TruncatedImageError) rather than
 *     falling back to an older generation of the longer volume.
 *
 * Reserved blocks: [2, reservedStartBlocks) and each backup LBA inside the
 * volume. mkfs reserves the first MiB of a volume larger than 64 MiB, so that
 * overwriting the start of the image (a partition table, a stray dd) loses
 * only superblock copies, which the backup restores.
 *
 * An image without the feature keeps the older scheme: one copy per
 * generation, alternating between LBA 0 and 1, and nothing reserved.
 */
import type { BlockDevice } from "./device.js";
import { blockSizeBytes, firstAllocatableLba, superblockSlotLbas } from "./constants.js";
import { CorruptionError } from "./errors.js";
import {
  Superblock,
  TruncatedSuperblock,
  decodeSuperblock,
  encodeSuperblock,
  featureSuperblockCopies,
  reservedStartBlocksMax,
  slotForGeneration,
  superblockCopyLbasMin,
} from "./superblock.js";

export const twinSlotLbas = [2, 3] as const;
export const backupSuperblockLbas = [16384, 67108864] as const;
/** A volume made larger than this keeps its first MiB free (mkfs). */
export const firstMibReservedAboveBlocks = 16384;

export type CopyRole = "slot" | "twin" | "backup";

export interface CopyState {
  lba: number;
  role: CopyRole;
  superblock: Superblock | null;
  /** Why it is not valid (null when valid). */
  reason: string | null;
}

export interface SuperblockReport {
  /** The copy in use: the newest valid one. */
  superblock: Superblock;
  source: CopyState;
  copies: CopyState[];
  /** Copies that should hold the generation in use and do not: rewritten by `repairCopies`. */
  stale: CopyState[];
  /** Damage found (fsck problems; a read-write open repairs them). */
  problems: string[];
  /** What an interrupted commit leaves, or old copies that were damaged: nothing lost. */
  notes: string[];
  /** Set when a newer committed generation may have been lost. */
  rolledBack: string | null;
}

/** The volume's superblock copies were found, but the image is shorter than the volume they describe. */
export class TruncatedImageError extends CorruptionError {
  constructor(
    readonly imageBytes: number,
    readonly volumeBytes: number,
    path?: string,
    /** Duplicate metadata: once the size is restored, the second copies that were past the cut are zeros for fsck -y to rewrite. */
    readonly dupMetadata = false,
  ) {
    super(
      "EIO_truncated_image",
      `the image is ${imageBytes} bytes but the volume is ${volumeBytes} bytes: a truncated image`,
      path === undefined ? {} : { path },
    );
  }
}

export function hasCopies(sb: { features: bigint }): boolean {
  return (sb.features & featureSuperblockCopies) !== 0n;
}

export function backupLbasFor(volumeBlocks: number): number[] {
  return backupSuperblockLbas.filter((lba) => lba < volumeBlocks);
}

/** The blocks [0, n) a new volume of `volumeBlocks` keeps free of nodes and data. */
export function reservedStartFor(volumeBlocks: number): number {
  return volumeBlocks > firstMibReservedAboveBlocks ? reservedStartBlocksMax : superblockCopyLbasMin;
}

/** Allocatable-range blocks that are never allocated, sorted: the twins (and the first MiB), the backups. */
export function reservedExtents(sb: { features: bigint; reservedStartBlocks: number }, volumeBlocks: number): Array<{ start: number; length: number }> {
  if (!hasCopies(sb)) return [];
  const out = [{ start: firstAllocatableLba, length: Math.min(volumeBlocks, sb.reservedStartBlocks) - firstAllocatableLba }];
  for (const lba of backupLbasFor(volumeBlocks)) out.push({ start: lba, length: 1 });
  return out;
}

/** Where generation `sb.generation` is written, in the order of writing. */
export function copyLbasOf(sb: Superblock): Array<{ lba: number; role: CopyRole }> {
  if (!hasCopies(sb)) return [{ lba: slotForGeneration(sb.generation), role: "slot" }];
  const parity = sb.generation % 2;
  return [
    { lba: superblockSlotLbas[parity]!, role: "slot" },
    { lba: twinSlotLbas[parity]!, role: "twin" },
    ...backupLbasFor(sb.deviceBlocks).map((lba) => ({ lba, role: "backup" as const })),
  ];
}

export interface WriteCopiesOptions {
  /** Flush between the slot and the twin (the default). Off only for the benchmark's baseline. */
  twinFlush?: boolean;
}

/** Writes the superblock of a commit: slot, flush, twin and backups, flush. */
export function writeSuperblockCopies(device: BlockDevice, sb: Superblock, options: WriteCopiesOptions = {}): void {
  const [first, ...rest] = copyLbasOf(sb);
  device.write(first!.lba, encodeSuperblock(sb, first!.lba));
  if (rest.length === 0) {
    device.flush();
    return;
  }
  if (options.twinFlush ?? true) device.flush();
  for (const copy of rest) device.write(copy.lba, encodeSuperblock(sb, copy.lba));
  device.flush();
}

/** Zeroes every place a superblock copy can be, so that no older volume's copy survives a format. */
export function wipeSuperblockCopies(device: BlockDevice): void {
  const lbas = [...superblockSlotLbas, ...twinSlotLbas, ...backupSuperblockLbas].filter((lba) => lba < device.blockCount);
  const zero = Buffer.alloc(blockSizeBytes);
  for (const lba of lbas) device.write(lba, zero);
  device.flush();
}

function readCopy(device: BlockDevice, lba: number, role: CopyRole): CopyState & { truncated?: TruncatedSuperblock } {
  const buf = Buffer.allocUnsafe(blockSizeBytes);
  device.read(lba, buf);
  // The slots of an older image do not record their LBA; every other copy must.
  const decoded = decodeSuperblock(buf, device.blockCount, lba);
  if (decoded.ok) {
    if (role !== "slot" && !hasCopies(decoded.superblock)) return { lba, role, superblock: null, reason: "not a superblock copy" };
    return { lba, role, superblock: decoded.superblock, reason: null };
  }
  return { lba, role, superblock: null, reason: decoded.reason, ...(decoded.truncated ? { truncated: decoded.truncated } : {}) };
}

function describe(copy: { lba: number; role: CopyRole }): string {
  if (copy.role === "backup") return `backup superblock at LBA ${copy.lba} (${(copy.lba * blockSizeBytes) / 2 ** 20} MiB)`;
  return `superblock ${copy.role} at LBA ${copy.lba}`;
}

/** What a copy holds, for a message. */
function holds(copy: CopyState): string {
  return copy.superblock !== null ? `holds generation ${copy.superblock.generation}` : `is unreadable (${copy.reason})`;
}

/** Reads every copy and picks the one to trust; throws when none is valid. */
export function inspectSuperblocks(device: BlockDevice): SuperblockReport {
  const copies = [
    ...superblockSlotLbas.map((lba) => readCopy(device, lba, "slot")),
    ...twinSlotLbas.filter((lba) => lba < device.blockCount).map((lba) => readCopy(device, lba, "twin")),
    ...backupSuperblockLbas.filter((lba) => lba < device.blockCount).map((lba) => readCopy(device, lba, "backup")),
  ];
  let best: CopyState | null = null;
  for (const copy of copies) {
    if (copy.superblock !== null && (best === null || copy.superblock.generation > best.superblock!.generation)) best = copy;
  }
  // A whole copy newer than every valid one that only lacks blocks: the image was cut, not damaged.
  let truncated: TruncatedSuperblock | undefined;
  for (const copy of copies) {
    if (copy.truncated !== undefined && (truncated === undefined || copy.truncated.generation > truncated.generation)) truncated = copy.truncated;
  }
  if (truncated !== undefined && (best === null || truncated.generation > best.superblock!.generation)) {
    // An image file's device knows its path, for the hint (duck-typed: BlockDevice has none).
    const path = (device as { path?: unknown }).path;
    throw new TruncatedImageError(
      device.blockCount * blockSizeBytes,
      truncated.volumeBlocks * blockSizeBytes,
      typeof path === "string" ? path : undefined,
      truncated.dupMetadata,
    );
  }
  if (best === null) {
    const reasons = copies.filter((c) => c.role === "slot" || c.reason !== "no grovefs magic").map((c) => `LBA ${c.lba}: ${c.reason}`);
    throw new CorruptionError("EIO_no_superblock", `not a grovefs volume, or every superblock copy is damaged (${reasons.join("; ")})`);
  }
  return judge(best, copies);
}

function judge(best: CopyState, copies: CopyState[]): SuperblockReport {
  const sb = best.superblock!;
  const report: SuperblockReport = { superblock: sb, source: best, copies, stale: [], problems: [], notes: [], rolledBack: null };
  const at = (lba: number) => copies.find((c) => c.lba === lba);
  if (!hasCopies(sb)) {
    // The older scheme: an unreadable slot cannot be told from one torn in mid-commit.
    for (const c of copies.filter((c) => c.role === "slot" && c.superblock === null)) {
      report.notes.push(`superblock slot ${c.lba} is unreadable (${c.reason})`);
    }
    return report;
  }
  const expected = copyLbasOf(sb).map((place) => at(place.lba)!);
  const isCurrent = (c: CopyState) => c.superblock !== null && c.superblock.generation === sb.generation;
  const slotGood = isCurrent(expected[0]!);
  for (const c of expected) {
    if (isCurrent(c)) continue;
    report.stale.push(c);
    const line = `${describe(c)} ${holds(c)}, not generation ${sb.generation}`;
    if (slotGood) report.notes.push(`${line} (the commit was interrupted before writing it, or it was damaged; it is rewritten from LBA ${best.lba})`);
    else report.problems.push(`${line}: damaged; generation ${sb.generation} was read from the ${describe(best)}`);
  }
  if (best.lba !== expected[0]!.lba) report.notes.push(`generation ${sb.generation} was read from the ${describe(best)}`);
  const nextParity = (sb.generation + 1) % 2;
  const pair = [at(superblockSlotLbas[nextParity]!)!, at(twinSlotLbas[nextParity]!)!];
  const backupProves = expected.some((c) => c.role === "backup" && isCurrent(c));
  if (!backupProves && pair.every((c) => c.superblock === null)) {
    report.rolledBack =
      `the volume may have been rolled back to generation ${sb.generation}: both copies of the superblock pair that generation ${sb.generation + 1} ` +
      `would use (LBA ${pair[0]!.lba} and ${pair[1]!.lba}) are damaged, which no crash leaves; if they held generation ${sb.generation + 1}, ` +
      `the data committed in it is lost`;
  } else {
    for (const c of pair.filter((c) => c.superblock === null)) {
      report.notes.push(`${describe(c)} ${holds(c)} (torn by an interrupted commit, or an older generation's copy was damaged: nothing committed is lost)`);
    }
  }
  return report;
}

/** Rewrites the stale copies of the generation in use from it: slot first, then the rest, as a commit does. */
export function repairCopies(device: BlockDevice, report: SuperblockReport): string[] {
  const done: string[] = [];
  const sb = report.superblock;
  const order = copyLbasOf(sb).filter((place) => report.stale.some((c) => c.lba === place.lba));
  for (const place of order) {
    device.write(place.lba, encodeSuperblock(sb, place.lba));
    device.flush();
    done.push(`${describe(place)}: rewritten with generation ${sb.generation} from LBA ${report.source.lba}`);
  }
  return done;
}

/** One line for a mount's log or fsck: which copy is in use. */
export function sourceLine(report: SuperblockReport): string {
  return `superblock: generation ${report.superblock.generation} from the ${describe(report.source)}`;
}
