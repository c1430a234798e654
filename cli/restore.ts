/**
 * grovefs restore IMAGE DIR [--subvol NAME] [--path PATH] [--dry-run] [--overwrite] [-v] [--json]
 *
 * Copies every readable file out of an image, damaged or not, into DIR (as
 * `btrfs restore` does): the volume is opened in rescue mode (read-only; an
 * older superblock generation when the newest cannot be opened; the
 * allocator's and subvolume table's damage skipped), and the tree is walked
 * from the root of the subvolume (or of PATH in it). What cannot be read is
 * reported and the walk goes on:
 * - a file whose data blocks fail their checks is restored with zeros in the
 *   damaged ranges, which are reported by byte range;
 * - a file, directory or symlink whose inode cannot be read is skipped;
 * - a directory whose entries cannot all be read keeps those it could read.
 *
 * Restored: regular files (holes stay holes), directories, symlinks, hard
 * links (one inode, several names, as in the image), fifos and device nodes
 * (with mkfifo(1) and mknod(1); device nodes need root), modes, owners (as
 * root), atime and mtime (to the microsecond: utimes(2)'s precision in
 * Node). Not restored: sockets (nothing can listen on them), extended
 * attributes (Node has no setxattr; they are counted in the summary), ctime
 * and crtime (no call sets them).
 *
 * Names are handled as bytes, so a name that is not UTF-8 is restored
 * exactly. An entry that already exists in DIR is left alone and counted,
 * unless --overwrite is given (a directory that exists is merged into).
 *
 * Exit status: 0 everything was restored; 4 something could not be read (the
 * lines on stderr say what); 1 nothing could be done (no image, not a grovefs
 * image, DIR unusable); 2 a usage error.
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { GroveFs, type Stat } from "../fs/index.js";
import { FileDevice, GroveError, blockSizeBytes } from "../kvstore/index.js";
import { CliError } from "./errors.js";
import { mountpointOfImage } from "./mount.js";

export const restoreExit = { complete: 0, partial: 4 } as const;

export interface RestoreOptions {
  subvol?: string;
  path?: string;
  dryRun?: boolean;
  overwrite?: boolean;
  verbose?: boolean;
  json?: boolean;
}

export interface RestoreSummary {
  image: string;
  target: string;
  subvolume: string;
  /** The superblock generation read (older than the newest when the newest could not be opened). */
  generation: number;
  files: number;
  directories: number;
  symlinks: number;
  hardLinks: number;
  special: number;
  /** Bytes of file data written (holes not counted). */
  bytes: number;
  /** Entries already in DIR, left as they were. */
  existing: number;
  /** Files with extended attributes, which are not restored. */
  xattrsNotRestored: number;
  /** Sockets, which are not restored. */
  socketsSkipped: number;
  /** What could not be read, by path. */
  damaged: Array<{ path: string; problem: string }>;
  /** What the rescue open skipped to open the volume at all. */
  notes: string[];
}

const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFIFO = 0o010000;
const S_IFCHR = 0o020000;
const S_IFBLK = 0o060000;
const S_IFSOCK = 0o140000;
const O_RDONLY = 0;
const rootIno = 1;

/** File data is copied in pieces of this size; a piece that fails is read again block by block. */
const chunkBytes = 1024 * 1024;

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** An error from reading the image (damage), as opposed to one writing DIR (which ends the restore). */
function isImageError(error: unknown): boolean {
  return error instanceof GroveError;
}

function shownPath(parts: readonly Buffer[]): string {
  return parts.length === 0 ? "/" : `/${parts.map((p) => p.toString("utf8")).join("/")}`;
}

function joinOut(dir: Buffer, name: Buffer): Buffer {
  return Buffer.concat([dir, Buffer.from("/"), name]);
}

function exists(p: Buffer): boolean {
  try {
    fs.lstatSync(p);
    return true;
  } catch {
    return false;
  }
}

interface DirTask {
  ino: number;
  stat: Stat;
  out: Buffer;
  parts: Buffer[];
  /** Set once its entries were walked: then its own mode and times are set. */
  entered: boolean;
}

class Restorer {
  readonly summary: RestoreSummary;
  private readonly links = new Map<number, Buffer>();
  private readonly asRoot = (process.getuid?.() ?? 1) === 0;

  constructor(
    private readonly volume: GroveFs,
    private readonly options: RestoreOptions,
    private readonly log: (line: string) => void,
    summary: RestoreSummary,
  ) {
    this.summary = summary;
  }

  private damage(parts: readonly Buffer[], problem: string): void {
    const entry = { path: shownPath(parts), problem };
    this.summary.damaged.push(entry);
    this.log(`${entry.path}: ${problem}`);
  }

  private told(parts: readonly Buffer[]): void {
    if (this.options.verbose === true) process.stdout.write(`${shownPath(parts)}\n`);
  }

  run(startIno: number, startStat: Stat, out: Buffer, parts: Buffer[]): void {
    if ((startStat.mode & S_IFMT) !== S_IFDIR) {
      this.entry(startIno, startStat, out, parts);
      return;
    }
    const stack: DirTask[] = [{ ino: startIno, stat: startStat, out, parts, entered: false }];
    if (this.options.dryRun !== true) fs.mkdirSync(out, { recursive: true });
    while (stack.length > 0) {
      const task = stack[stack.length - 1]!;
      if (task.entered) {
        stack.pop();
        this.finish(task.out, task.stat, task.parts);
        continue;
      }
      task.entered = true;
      this.summary.directories++;
      for (const child of this.entries(task)) {
        const childParts = [...task.parts, child.name];
        const childOut = joinOut(task.out, child.name);
        let stat: Stat;
        try {
          stat = this.volume.statIno(child.ino);
        } catch (error) {
          if (!isImageError(error)) throw error;
          this.damage(childParts, `its inode ${child.ino} cannot be read (${message(error)}); skipped`);
          continue;
        }
        if ((stat.mode & S_IFMT) === S_IFDIR) {
          if (this.options.dryRun !== true) {
            if (exists(childOut) && !fs.lstatSync(childOut).isDirectory()) {
              this.summary.existing++;
              continue;
            }
            fs.mkdirSync(childOut, { recursive: true, mode: 0o700 });
          }
          this.told(childParts);
          stack.push({ ino: child.ino, stat, out: childOut, parts: childParts, entered: false });
        } else {
          this.entry(child.ino, stat, childOut, childParts);
        }
      }
    }
  }

  /** The entries of a directory that could be read; a damaged part of the directory is reported. */
  private entries(task: DirTask): Array<{ name: Buffer; ino: number }> {
    const found: Array<{ name: Buffer; ino: number }> = [];
    try {
      this.volume.readdirIno(task.ino, undefined, (entry) => {
        const name = entry.name.toString("latin1");
        if (name !== "." && name !== "..") found.push({ name: Buffer.from(entry.name), ino: entry.ino });
        return true;
      });
    } catch (error) {
      if (!isImageError(error)) throw error;
      this.damage(task.parts, `${found.length === 0 ? "its entries" : `its entries after the ${found.length} read`} cannot be read (${message(error)})`);
    }
    return found;
  }

  private entry(ino: number, stat: Stat, out: Buffer, parts: Buffer[]): void {
    const type = stat.mode & S_IFMT;
    if (type === S_IFSOCK) {
      this.summary.socketsSkipped++;
      return;
    }
    if (this.options.dryRun !== true && exists(out)) {
      if (this.options.overwrite !== true) {
        this.summary.existing++;
        return;
      }
      fs.rmSync(out, { force: true });
    }
    this.told(parts);
    const first = stat.nlink > 1 ? this.links.get(ino) : undefined;
    if (first !== undefined) {
      if (this.options.dryRun !== true) fs.linkSync(first, out);
      this.summary.hardLinks++;
      return;
    }
    if (type === S_IFREG) {
      this.copyFile(ino, stat, out, parts);
      this.summary.files++;
    } else if (type === S_IFLNK) {
      let target: Buffer;
      try {
        target = this.volume.readlinkIno(ino);
      } catch (error) {
        if (!isImageError(error)) throw error;
        this.damage(parts, `the symlink's target cannot be read (${message(error)}); skipped`);
        return;
      }
      if (this.options.dryRun !== true) fs.symlinkSync(target, out);
      this.summary.symlinks++;
    } else if (type === S_IFIFO || type === S_IFCHR || type === S_IFBLK) {
      if (this.options.dryRun !== true && !this.special(type, stat, out, parts)) return;
      this.summary.special++;
    } else {
      this.damage(parts, `unknown file type 0o${type.toString(8)}; skipped`);
      return;
    }
    if (stat.nlink > 1) this.links.set(ino, out);
    this.countXattrs(ino);
    this.finish(out, stat, parts);
  }

  private special(type: number, stat: Stat, out: Buffer, parts: Buffer[]): boolean {
    const mode = (stat.mode & 0o7777).toString(8);
    const major = Math.floor(stat.rdev / 256) & 0xfff;
    const minor = (stat.rdev & 0xff) | ((stat.rdev >>> 12) & 0xfff00);
    const args =
      type === S_IFIFO ? ["mkfifo", "-m", mode, "--", out.toString("latin1")] : ["mknod", "-m", mode, "--", out.toString("latin1"), type === S_IFCHR ? "c" : "b", `${major}`, `${minor}`];
    const result = spawnSync(args[0]!, args.slice(1), { encoding: "utf8" });
    if (result.status !== 0) {
      this.damage(parts, `could not be made (${(result.stderr ?? "").trim() || result.error?.message || "failed"}); skipped`);
      return false;
    }
    return true;
  }

  private countXattrs(ino: number): void {
    try {
      if (this.volume.listxattrIno(ino).length > 0) this.summary.xattrsNotRestored++;
    } catch (error) {
      if (!isImageError(error)) throw error;
    }
  }

  /** Copies the file's bytes; ranges that cannot be read become zeros (holes) and are reported. */
  private copyFile(ino: number, stat: Stat, out: Buffer, parts: Buffer[]): void {
    let fh: number;
    try {
      fh = this.volume.openIno(ino, O_RDONLY);
    } catch (error) {
      if (!isImageError(error)) throw error;
      this.damage(parts, `cannot be opened (${message(error)}); skipped`);
      return;
    }
    const fd = this.options.dryRun === true ? -1 : fs.openSync(out, "w", 0o600);
    const bad: Array<[number, number]> = [];
    try {
      const buffer = Buffer.allocUnsafe(chunkBytes);
      for (let at = 0; at < stat.size; at += chunkBytes) {
        const length = Math.min(chunkBytes, stat.size - at);
        try {
          const n = this.volume.read(fh, buffer, length, at);
          this.put(fd, buffer.subarray(0, n), at);
          if (n < length) break;
        } catch (error) {
          if (!isImageError(error)) throw error;
          this.copyByBlocks(fh, fd, at, length, bad);
        }
      }
      if (fd >= 0) fs.ftruncateSync(fd, stat.size);
    } finally {
      if (fd >= 0) fs.closeSync(fd);
      try {
        this.volume.release(fh);
      } catch {
        // A read-only handle holds nothing to write back.
      }
    }
    if (bad.length > 0) {
      const ranges = bad.map(([from, to]) => `${from}-${to - 1}`).join(", ");
      const bytes = bad.reduce((sum, [from, to]) => sum + to - from, 0);
      this.damage(parts, `${bytes} bytes cannot be read and were restored as zeros (bytes ${ranges})`);
    }
  }

  private copyByBlocks(fh: number, fd: number, from: number, length: number, bad: Array<[number, number]>): void {
    const block = Buffer.allocUnsafe(blockSizeBytes);
    for (let at = from; at < from + length; at += blockSizeBytes) {
      const want = Math.min(blockSizeBytes, from + length - at);
      try {
        const n = this.volume.read(fh, block, want, at);
        this.put(fd, block.subarray(0, n), at);
      } catch (error) {
        if (!isImageError(error)) throw error;
        const last = bad[bad.length - 1];
        if (last !== undefined && last[1] === at) last[1] = at + want;
        else bad.push([at, at + want]);
      }
    }
  }

  /** Writes a piece of data, leaving a hole for each block of it that is all zeros. */
  private put(fd: number, data: Buffer, at: number): void {
    for (let from = 0; from < data.length; ) {
      while (from < data.length && isZero(data.subarray(from, from + blockSizeBytes))) from += blockSizeBytes;
      let to = from;
      while (to < data.length && !isZero(data.subarray(to, to + blockSizeBytes))) to += blockSizeBytes;
      to = Math.min(to, data.length);
      if (to <= from) break;
      this.summary.bytes += to - from;
      if (fd >= 0) {
        for (let done = from; done < to; ) done += fs.writeSync(fd, data, done, to - done, at + done);
      }
      from = to;
    }
  }

  /** Owner, mode and times, in that order (chown clears set-id bits; writing into a directory moves its mtime). */
  private finish(out: Buffer, stat: Stat, parts: readonly Buffer[]): void {
    if (this.options.dryRun === true) return;
    const type = stat.mode & S_IFMT;
    try {
      if (this.asRoot) fs.lchownSync(out, stat.uid, stat.gid);
      if (type !== S_IFLNK) fs.chmodSync(out, stat.mode & 0o7777);
      // utimes(2) takes seconds as a double, which Node truncates to ns: half a microsecond more keeps the microsecond.
      const seconds = (ns: bigint): number => (Number(ns / 1000n) + 0.5) / 1e6;
      fs.lutimesSync(out, seconds(stat.atimeNs), seconds(stat.mtimeNs));
    } catch (error) {
      this.damage(parts, `restored, but its owner, mode or times could not be set (${message(error)})`);
    }
  }
}

const zeroBlock = Buffer.alloc(blockSizeBytes);

/** Whether a piece of at most one block is all zeros (compared natively, not byte by byte in JS). */
function isZero(data: Buffer): boolean {
  return data.equals(data.length === blockSizeBytes ? zeroBlock : zeroBlock.subarray(0, data.length));
}

function generationOf(volume: GroveFs): number {
  try {
    return volume.info().generation;
  } catch {
    return 0;
  }
}

function openRescue(image: string, shown: string, subvol: string | undefined): { device: FileDevice; volume: GroveFs } {
  let device: FileDevice;
  try {
    device = FileDevice.open(image, { readOnly: true, lock: true });
  } catch (error) {
    if (!(error instanceof GroveError) || error.detail !== "EBUSY_image_locked") throw error;
    const mountpoint = mountpointOfImage(image);
    throw new CliError(
      mountpoint === null ? `${shown} is in use by another grovefs process` : `${shown} is mounted read-write at ${mountpoint}`,
      mountpoint === null ? "wait for it to finish" : `copy the files from the mount, or unmount it first (grovefs umount ${mountpoint})`,
    );
  }
  try {
    return { device, volume: GroveFs.open(device, { rescue: true, subvolume: subvol }) };
  } catch (error) {
    device.close();
    throw error;
  }
}

/** Resolves --path inside the subvolume, name by name. */
function resolveStart(volume: GroveFs, inside: string | undefined): { ino: number; stat: Stat; parts: Buffer[] } {
  let ino = rootIno;
  let stat = volume.statIno(rootIno);
  const parts: Buffer[] = [];
  for (const name of (inside ?? "").split("/").filter((p) => p !== "" && p !== ".")) {
    if ((stat.mode & S_IFMT) !== S_IFDIR) throw new CliError(`--path ${inside}: ${shownPath(parts)} is not a directory`, "give a path inside the subvolume");
    let next: Stat;
    try {
      next = volume.lookup(ino, Buffer.from(name));
    } catch (error) {
      if (error instanceof GroveError && error.code === "ENOENT") throw new CliError(`--path ${inside}: no ${shownPath([...parts, Buffer.from(name)])} in the image`, "check the path (it is inside the subvolume)");
      throw error;
    }
    parts.push(Buffer.from(name));
    ino = next.ino;
    stat = next;
  }
  return { ino, stat, parts };
}

export function restoreCommand(imageArg: string, dirArg: string, options: RestoreOptions): number {
  const image = path.resolve(imageArg);
  if (!fs.existsSync(image)) throw new CliError(`${imageArg}: no such image`, "check the path");
  const target = path.resolve(dirArg);
  if (options.dryRun !== true) {
    if (exists(Buffer.from(target)) && !fs.statSync(target).isDirectory()) throw new CliError(`${dirArg} is not a directory`, "give a directory to restore into (it is created if missing)");
    if (target === "/") throw new CliError("refusing to restore into /", "give a directory of its own");
  }
  const { device, volume } = openRescue(image, imageArg, options.subvol);
  const summary: RestoreSummary = {
    image,
    target,
    subvolume: options.subvol ?? "default",
    generation: generationOf(volume),
    files: 0,
    directories: 0,
    symlinks: 0,
    hardLinks: 0,
    special: 0,
    bytes: 0,
    existing: 0,
    xattrsNotRestored: 0,
    socketsSkipped: 0,
    damaged: [],
    notes: [...(volume.rescueNotes ?? [])],
  };
  const log = (line: string): void => {
    if (options.json !== true) process.stderr.write(`grovefs restore: ${line}\n`);
  };
  for (const note of summary.notes) log(note);
  try {
    const start = resolveStart(volume, options.path);
    new Restorer(volume, options, log, summary).run(start.ino, start.stat, Buffer.from(target), start.parts);
  } finally {
    try {
      volume.close();
    } finally {
      device.close();
    }
  }
  if (options.json === true) {
    process.stdout.write(`${JSON.stringify(summary)}\n`);
  } else {
    const what = options.dryRun === true ? "would restore" : "restored";
    const links = summary.hardLinks > 0 ? `, ${summary.hardLinks} hard links` : "";
    const special = summary.special > 0 ? `, ${summary.special} special files` : "";
    process.stdout.write(
      `${what} ${summary.files} files (${summary.bytes} bytes), ${summary.directories} directories, ${summary.symlinks} symlinks${links}${special} from generation ${summary.generation}\n`,
    );
    if (summary.existing > 0) process.stdout.write(`${summary.existing} entries already in ${dirArg} were left as they were (--overwrite replaces them)\n`);
    if (summary.xattrsNotRestored > 0) process.stdout.write(`${summary.xattrsNotRestored} files have extended attributes, which restore does not copy\n`);
    if (summary.socketsSkipped > 0) process.stdout.write(`${summary.socketsSkipped} sockets were not restored\n`);
    if (summary.damaged.length > 0) process.stdout.write(`${summary.damaged.length} files or directories could not be restored in full (see above)\n`);
  }
  return summary.damaged.length > 0 ? restoreExit.partial : restoreExit.complete;
}
