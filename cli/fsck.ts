/**
 * grovefs fsck IMAGE [-n|--readonly] [-y|--repair] [--json] [--progress]
 *
 * Runs the checker of every layer over the last committed generation
 * (`checkFilesystem` with data checksums: node checksums and tree
 * invariants, free space against reachability, both free-space trees,
 * reference counts against a full walk, the subvolume table, link counts,
 * entries, orphans and extents), prints one line per problem and a summary.
 * With -y it repairs what `repairFilesystem` can repair safely, as a new
 * committed generation, then checks again: the exit status says what that
 * second check found.
 *
 * Exit status, as e2fsck's:
 *   0  clean;
 *   1  problems found and all corrected (the second check is clean);
 *   4  problems left uncorrected (always so with -n, when any are found);
 *   8  operational error: bad options, no such image, not a grovefs image,
 *      the image mounted or in use by another grovefs process.
 * With neither -n nor -y, fsck only reports, as e2fsck does without a
 * terminal to ask on: there is no interactive mode.
 *
 * An image none of whose superblock slots carries the grovefs magic is "not a
 * grovefs image" (8). One whose slots carry the magic but are all damaged is a
 * grovefs image with a finding (4): the checker reports it and nothing can be
 * repaired, since there is no committed root to start from.
 *
 * Locking: -y opens the image read-write under the exclusive image lock, and
 * first refuses an image that the mount table (/proc/self/mountinfo) shows as
 * the source of a grovefs mount. -n takes the shared lock, so it runs beside a
 * read-only mount but not beside a read-write one, whose commits could reuse
 * blocks of the generation being checked.
 *
 * Progress: the checker is synchronous and offers no callback, so the bar
 * counts the blocks it reads through the device against the blocks in use.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { checkFilesystem, groveFsType, readMounts, repairFilesystem, replayFsyncLog, salvageDamagedTrees, type FsReport } from "../fs/index.js";
import { BlockDevice, FileDevice, GroveError, TruncatedImageError, blockSizeBytes, inspectSuperblocks } from "../kvstore/index.js";
import { openVolume } from "../snapshot/index.js";
import { CliError, debugDetail, formatError } from "./errors.js";
import { identifyContents } from "./mkfs.js";
import { mountpointOfImage } from "./mount.js";

export const fsckExit = { clean: 0, corrected: 1, uncorrected: 4, operational: 8 } as const;

export interface FsckOptions {
  readonly?: boolean;
  repair?: boolean;
  json?: boolean;
  progress?: boolean;
}

export interface FsckCounts {
  inodes: number;
  directories: number;
  subvolumes: number;
  /** Blocks of reachable data extents. */
  dataBlocks: number;
  /** Superblocks plus every reachable block (device blocks minus free ones). */
  usedBlocks: number;
  totalBlocks: number;
  generation: number;
}

/** What fsck found and did; printed as is with --json. */
export interface FsckResult {
  image: string;
  mode: "check" | "repair";
  exitCode: number;
  /** Problems the first check found. */
  problems: string[];
  /** Worth telling but not problems (an unreadable superblock slot beside a valid one); no effect on the exit code. */
  notes: string[];
  /** What the repair changed (-y only). */
  repaired: string[];
  /** Problems left: the second check's after a repair, else the first check's. */
  remaining: string[];
  /** Of the final state (after a repair, the repaired one); null when the image could not be checked. */
  counts: FsckCounts | null;
  /** Which superblock copy was used, when it is not the usual one or copies are damaged (else null). */
  superblock?: string | null;
  /** Set when a newer committed generation may have been lost: the exit status is then 4, even after -y. */
  rolledBack?: string | null;
  /** The one-line report of an operational error (exit 8). */
  error?: string;
}

// ---- progress ---------------------------------------------------------------------

const redrawIntervalMs = 100;
const barWidth = 30;

/** A one-line bar on stderr, redrawn with a carriage return and cleared at the end. */
export class ProgressBar {
  private phase = "";
  private done = 0;
  private total = 0;
  private lastDrawMs = 0;
  private drawnWidth = 0;

  constructor(
    private readonly stream: NodeJS.WriteStream | null,
    private readonly command = "fsck",
  ) {}

  start(phase: string, total: number): void {
    this.phase = phase;
    this.done = 0;
    this.total = total;
    this.draw(true);
  }

  advance(count: number): void {
    this.done += count;
    if (this.stream === null || this.phase === "") return;
    const now = Date.now();
    if (now - this.lastDrawMs >= redrawIntervalMs) this.draw(false);
  }

  clear(): void {
    this.phase = "";
    if (this.stream === null || this.drawnWidth === 0) return;
    this.stream.write(`\r${" ".repeat(this.drawnWidth)}\r`);
    this.drawnWidth = 0;
  }

  private draw(force: boolean): void {
    if (this.stream === null) return;
    const now = Date.now();
    if (!force && now - this.lastDrawMs < redrawIntervalMs) return;
    this.lastDrawMs = now;
    let line: string;
    if (this.total > 0) {
      // The total is an estimate (blocks in use): the last percent waits for the end.
      const fraction = Math.min(0.99, this.done / this.total);
      const filled = Math.round(fraction * barWidth);
      line = `${this.command}: ${this.phase} [${"#".repeat(filled)}${"-".repeat(barWidth - filled)}] ${Math.floor(fraction * 100)}%`;
    } else {
      line = `${this.command}: ${this.phase}…`;
    }
    const pad = Math.max(0, this.drawnWidth - line.length);
    this.stream.write(`\r${line}${" ".repeat(pad)}`);
    this.drawnWidth = line.length;
  }
}

/**
 * The image's device as the checker and the repair see it: counts blocks
 * read, for the bar, and ignores close (the repair closes the device it is
 * given; fsck keeps it, and its lock, for the second check).
 */
class FsckDevice implements BlockDevice {
  constructor(
    private readonly inner: FileDevice,
    private readonly onRead: (blocks: number) => void,
  ) {}

  get blockCount(): number {
    return this.inner.blockCount;
  }
  get path(): string {
    return this.inner.path;
  }
  read(lba: number, buf: Uint8Array): void {
    this.inner.read(lba, buf);
    this.onRead(buf.length / blockSizeBytes);
  }
  write(lba: number, buf: Uint8Array): void {
    this.inner.write(lba, buf);
  }
  writev(lba: number, bufs: readonly Uint8Array[]): void {
    this.inner.writev(lba, bufs);
  }
  flush(): void {
    this.inner.flush();
  }
  close(): void {}
}

// ---- opening the image -----------------------------------------------------------

function checkImagePath(image: string, shown: string): void {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(image);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") {
      throw new CliError(`${shown}: no such image or device`, "check the path");
    }
    throw error;
  }
  if (!stat.isFile() && !stat.isBlockDevice()) {
    throw new CliError(`${shown} is not an image file or block device`, "give the image that grovefs mkfs formatted");
  }
}

function samePath(a: string, b: string): boolean {
  const real = (p: string) => {
    try {
      return fs.realpathSync(p);
    } catch {
      return path.resolve(p);
    }
  };
  return real(a) === real(b);
}

/** Where the mount table, or a running grovefs's pid record, says `image` is mounted; null if nowhere. */
function mountedAt(image: string): string | null {
  try {
    const entry = readMounts().find((e) => e.fstype === groveFsType && samePath(e.source, image));
    if (entry !== undefined) return entry.mountpoint;
  } catch {
    // No /proc/self/mountinfo: the image lock below still refuses an image in use.
  }
  return mountpointOfImage(image);
}

function openImage(image: string, shown: string, repair: boolean): FileDevice {
  checkImagePath(image, shown);
  const mountpoint = repair ? mountedAt(image) : null;
  if (mountpoint !== null) {
    throw new CliError(`${shown} is mounted at ${mountpoint}: fsck does not repair a mounted image`, `unmount it first (grovefs umount ${mountpoint}), or check it read-only with -n`);
  }
  try {
    return FileDevice.open(image, { readOnly: !repair, lock: true });
  } catch (error) {
    if (!(error instanceof GroveError) || error.detail !== "EBUSY_image_locked") throw error;
    const where = mountedAt(image);
    const what = where !== null ? `mounted at ${where}` : "in use by another grovefs process";
    const hint = where !== null ? `unmount it first (grovefs umount ${where})` : "wait for the other grovefs command to finish";
    throw new CliError(`${shown} is ${what}: fsck ${repair ? "does not repair" : "cannot check"} an image in use`, hint);
  }
}

/** Refuses what is not a grovefs image at all; a grovefs image with both superblocks damaged is the checker's finding. */
function checkIsGrovefs(device: FileDevice, shown: string): void {
  const blocks = Math.min(device.blockCount, Math.ceil((64 * 1024 + blockSizeBytes) / blockSizeBytes));
  const head = Buffer.alloc(blocks * blockSizeBytes);
  device.read(0, head);
  const found = identifyContents(head);
  // A cut image is refused as such; and if its start was overwritten, a backup superblock still makes it a grovefs image.
  try {
    inspectSuperblocks(device);
    return;
  } catch (error) {
    if (error instanceof TruncatedImageError) throw error;
  }
  if (found === "a grovefs volume") return;
  throw new CliError(`${shown} is not a grovefs image (it holds ${found ?? "no filesystem: it is empty"})`, "give the image that grovefs mkfs formatted");
}

// ---- the check and the repair ----------------------------------------------------------

/** Blocks in use by the committed generation, for the bar; 0 when the volume cannot be opened. */
function usedBlocksEstimate(device: BlockDevice): number {
  try {
    // Dropped, not closed: closing the store would close the device.
    return openVolume(device, { readOnly: true }).space.usage().usedBlocks;
  } catch {
    return 0;
  }
}

function counts(report: FsReport): FsckCounts | null {
  const forest = report.space.forest;
  if (forest.trees.length === 0) return null;
  return {
    inodes: report.inodes,
    directories: report.directories,
    subvolumes: report.subvolumes,
    dataBlocks: report.dataBlocks,
    usedBlocks: forest.deviceBlocks - report.space.freeBlocks,
    totalBlocks: forest.deviceBlocks,
    generation: forest.generation,
  };
}

interface Checker {
  device: FsckDevice;
  bar: ProgressBar;
  check(phase: string): FsReport;
}

function checker(inner: FileDevice, bar: ProgressBar): Checker {
  const device = new FsckDevice(inner, (blocks) => bar.advance(blocks));
  return {
    device,
    bar,
    check(phase: string): FsReport {
      bar.clear();
      const total = usedBlocksEstimate(device);
      bar.start(phase, total);
      return checkFilesystem(device, { verifyData: true });
    },
  };
}

function repairAndRecheck(c: Checker, first: FsReport, result: FsckResult): void {
  c.bar.start("repairing", 0);
  // Trees holding damaged nodes are rebuilt from what they can read first; the repair then works from a check of that.
  const salvage = salvageDamagedTrees(c.device, first);
  const from = salvage !== null && salvage.fixed.length > 0 ? c.check("checking the salvaged volume") : first;
  if (from !== first) c.bar.start("repairing", 0);
  const repair = repairFilesystem(c.device, from);
  result.repaired = [...(salvage?.fixed ?? []), ...repair.fixed];
  const second = c.check("checking again");
  result.counts = counts(second) ?? result.counts;
  // The second check is the truth; a repair's own note of what it could not do is kept if it adds something.
  const notes = [...(salvage?.remaining ?? []), ...repair.remaining].filter((line) => !first.problems.includes(line) && !from.problems.includes(line));
  result.remaining = [...second.problems, ...(second.problems.length > 0 ? notes : [])];
  result.exitCode = second.problems.length === 0 ? fsckExit.corrected : fsckExit.uncorrected;
  if (first.rolledBack !== null) {
    // Rewriting the superblocks made the volume consistent again; what the lost generation held stays lost.
    result.remaining.push(`${first.rolledBack} (no repair brings it back)`);
    result.exitCode = fsckExit.uncorrected;
  }
}

/**
 * Runs fsck on `imageArg`; never throws for an operational error: that is the
 * result's `error` (exit 8), and `cause` is what was thrown (for GROVEFS_DEBUG).
 */
export function runFsck(
  imageArg: string,
  options: FsckOptions,
  progress: NodeJS.WriteStream | null,
): { result: FsckResult; cause?: unknown } {
  const repair = options.repair === true;
  const result: FsckResult = {
    image: imageArg,
    mode: repair ? "repair" : "check",
    exitCode: fsckExit.operational,
    problems: [],
    notes: [],
    repaired: [],
    remaining: [],
    counts: null,
    superblock: null,
    rolledBack: null,
  };
  const bar = new ProgressBar(progress);
  let inner: FileDevice | null = null;
  let cause: unknown;
  try {
    if (repair && options.readonly) throw new CliError("-n (--readonly) and -y (--repair) contradict each other", "give one of them");
    inner = openImage(path.resolve(imageArg), imageArg, repair);
    checkIsGrovefs(inner, imageArg);
    const c = checker(inner, bar);
    let first = c.check("checking");
    // -y replays an fsync log first (a read-only check shows its state without writing), then checks what it committed.
    const replayed = repair ? replayFsyncLog(c.device, first) : null;
    if (replayed !== null) first = c.check("checking the replayed volume");
    result.superblock = first.superblockSource;
    result.rolledBack = first.rolledBack;
    result.problems = first.problems;
    result.notes = replayed === null ? first.notes : [replayed, ...first.notes];
    result.remaining = first.problems;
    result.counts = counts(first);
    if (first.problems.length === 0) result.exitCode = fsckExit.clean;
    else if (!repair) result.exitCode = fsckExit.uncorrected;
    else repairAndRecheck(c, first, result);
  } catch (error) {
    result.exitCode = fsckExit.operational;
    result.error = formatError(error);
    cause = error;
  } finally {
    bar.clear();
    inner?.close();
  }
  return { result, cause };
}

// ---- output ---------------------------------------------------------------------------

function plural(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}

function countsText(c: FsckCounts | null): string {
  if (c === null) return "";
  return `, ${plural(c.inodes, "inode")}, ${plural(c.subvolumes, "subvolume")}, ${c.usedBlocks}/${c.totalBlocks} blocks`;
}

/** The human-readable report: one line per problem, then a summary line (e2fsck's form). */
export function formatFsckText(r: FsckResult): string {
  const lines: string[] = [...(r.superblock ? [r.superblock] : []), ...r.notes.map((n) => `note: ${n}`)];
  const found = plural(r.problems.length, "problem");
  if (r.mode === "repair" && r.problems.length > 0) {
    lines.push(...r.problems.map((p) => `problem: ${p}`));
    lines.push(...r.repaired.map((p) => `repaired: ${p}`));
    lines.push(...r.remaining.map((p) => `remaining: ${p}`));
    if (r.exitCode === fsckExit.corrected) lines.push(`${r.image}: ${found} found and repaired; now clean${countsText(r.counts)}`);
    else lines.push(`${r.image}: ${found} found, ${plural(r.remaining.length, "problem")} left unrepaired`);
  } else if (r.problems.length > 0) {
    lines.push(...r.problems);
    const repairable = r.problems.filter((p) => p !== r.rolledBack && !isDataDamage(p)).length;
    if (repairable > 0) lines.push(`${r.image}: ${found} found (checked read-only; grovefs fsck -y ${r.image} repairs what can be repaired safely)`);
    else lines.push(`${r.image}: ${found} found (fsck -y cannot repair ${r.problems.length === 1 ? "it" : "them"}: ${adviceFor(r)})`);
  } else {
    lines.push(`${r.image}: clean${countsText(r.counts)}`);
  }
  return `${lines.join("\n")}\n`;
}

/** A data block that fails its checksum: no metadata repair can give its bytes back. */
export function isDataDamage(problem: string): boolean {
  return /: data (block|blocks|bytes) .*fail(s)? (its|their) checksum/.test(problem);
}

function adviceFor(r: FsckResult): string {
  if (r.rolledBack) return "restore what the lost commit held from a backup or a snapshot";
  return "restore the damaged files from a backup or a snapshot, or delete them";
}

export function fsckCommand(image: string, options: FsckOptions): number {
  const showProgress = options.progress === true || (options.json !== true && process.stderr.isTTY === true);
  const { result, cause } = runFsck(image, options, showProgress ? process.stderr : null);
  if (options.json) process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  if (result.error !== undefined) {
    process.stderr.write(`${result.error}\n`);
    const stack = debugDetail(cause);
    if (stack !== undefined) process.stderr.write(`${stack}\n`);
  } else if (!options.json) {
    process.stdout.write(formatFsckText(result));
  }
  return result.exitCode;
}
