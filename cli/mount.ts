/**
 * grovefs mount IMAGE MOUNTPOINT [-f|--foreground] [-o ro,compress=lz4,...] [--subvol NAME]
 *
 * The serving process opens the image with an exclusive lock (shared when
 * read-only), mounts it, writes a pid record, and serves until SIGINT, SIGTERM
 * or SIGHUP (commit, unmount, exit 0) or until the kernel mount disappears
 * under it (umount by anyone: commit, close, exit 0). It serves the default
 * subvolume, or the one --subvol names: a snapshot is mounted read-only. While
 * it serves, it answers snapshot and clone requests on a control socket
 * beside its pid record (cli/control.ts). -o compress=lz4|none overrides the
 * volume's default compression (mkfs --compress) for what this mount writes;
 * with ro it is accepted and has nothing to do. -o commit=SECONDS sets the
 * periodic commit's interval (default 5 s), as ext4's and btrfs's option does.
 *
 * Daemon mode (the default): the parent checks what it can, then starts the
 * same CLI detached (own session, cwd /) with --foreground and
 * GROVEFS_READY_FD=3, a pipe. The child writes "ready" there once the mount is
 * usable, or "error <the one-line report>" if it fails; the parent exits 0
 * only after "ready" and a look at the mount table. The daemon's stdin is
 * /dev/null and its stdout and stderr go to a log file beside its pid record
 * (/run/grovefs/<name>-<hash>.log as root). It holds only reports of trouble,
 * so it is removed after a clean run if empty.
 *
 * Several subvolumes at once: a `grovefs mount` of an image that a daemon
 * already serves does not open the image (the daemon holds its lock). It
 * asks that daemon, through its control socket, to serve the new mountpoint
 * too (`attach`), with the subvolume --subvol names, and returns once the
 * mount is usable. The daemon then serves each mountpoint with its own
 * subvolume (GroveFs.attach: one store, one commit stream), with a control
 * socket and a pid record each, and exits when the last one is unmounted.
 * A subvolume is served at most once per daemon.
 */
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import {
  canonicalMountpoint,
  defaultAccessTimes,
  findMount,
  fuseDevicePath,
  groveFsType,
  mountGrove,
  transportNames,
  type AccessTimes,
  type MountHandle,
  type Transport,
} from "../fs/index.js";
import { GroveFs, type GroveFsOptions } from "../fs/index.js";
import { FileDevice, GroveError, sourceLine } from "../kvstore/index.js";
import { compressionNames, parseCompression, type CompressionName } from "./compression.js";
import { serveReceive, serveReceiveState, serveSend } from "./send_daemon.js";
import { DaemonScrub } from "./scrub.js";
import { printable, sendRequest, startControlServer, type AttachRequest, type ControlServer, type VolumeControl } from "./control.js";
import { CliError, ReportedError, formatError } from "./errors.js";
import { imageDeletedWarning, volumeReport } from "./info.js";

export interface MountOptions {
  foreground?: boolean;
  options?: string[];
  /** The subvolume to serve (default: the one mkfs made). */
  subvol?: string;
}

const readyTimeoutMs = 60_000;
const readyFdEnv = "GROVEFS_READY_FD";

// ---- where mounts are recorded ----------------------------------------------

/** /run/grovefs as root; otherwise a per-user directory. GROVEFS_RUN_DIR overrides both. */
export function runDir(): string {
  if (process.env.GROVEFS_RUN_DIR) return process.env.GROVEFS_RUN_DIR;
  const uid = process.getuid?.() ?? 0;
  if (uid === 0) return "/run/grovefs";
  return path.join(process.env.XDG_RUNTIME_DIR ?? os.tmpdir(), `grovefs-${uid}`);
}

function recordBase(mountpoint: string): string {
  const key = createHash("sha256").update(mountpoint).digest("hex").slice(0, 16);
  return path.join(runDir(), `${path.basename(mountpoint) || "root"}-${key}`);
}

export interface PidRecord {
  pid: number;
  image: string;
  mountpoint: string;
}

/**
 * The daemon's control socket. A unix socket path holds at most 107 bytes, so
 * a long mountpoint name falls back to the hash alone.
 */
export function controlSocketPath(mountpoint: string): string {
  const beside = `${recordBase(mountpoint)}.sock`;
  if (Buffer.byteLength(beside) <= unixSocketPathBytesMax) return beside;
  return path.join(runDir(), `${path.basename(recordBase(mountpoint)).slice(-16)}.sock`);
}

const unixSocketPathBytesMax = 107;

/** Every pid record in the run directory that parses. */
function pidRecords(): PidRecord[] {
  let names: string[];
  try {
    names = fs.readdirSync(runDir()).filter((name) => name.endsWith(".pid"));
  } catch {
    return [];
  }
  const records: PidRecord[] = [];
  for (const name of names) {
    try {
      const record = JSON.parse(fs.readFileSync(path.join(runDir(), name), "utf8")) as PidRecord;
      if (typeof record.mountpoint === "string" && typeof record.image === "string" && Number.isSafeInteger(record.pid)) records.push(record);
    } catch {
      // Not a record of ours, or one being written: skip it.
    }
  }
  return records;
}

/** The same image file or block device, however it is spelled. */
function sameImage(a: string, b: string): boolean {
  if (a === b) return true;
  try {
    const x = fs.statSync(a);
    const y = fs.statSync(b);
    if (x.isBlockDevice() && y.isBlockDevice()) return x.rdev === y.rdev;
    return x.dev === y.dev && x.ino === y.ino;
  } catch {
    return false;
  }
}

/** Where a running grovefs process serves `image` (absolute), from the pid records; null if none does. */
export function mountpointOfImage(image: string): string | null {
  for (const record of pidRecords()) {
    if (sameImage(record.image, image) && servingPid(record.mountpoint) === record.pid) return record.mountpoint;
  }
  return null;
}

/** The mountpoints the running daemon `pid` serves, from the pid records. */
export function mountpointsOfDaemon(pid: number): string[] {
  return pidRecords()
    .filter((record) => record.pid === pid && servingPid(record.mountpoint) === pid)
    .map((record) => record.mountpoint);
}

export function readPidRecord(mountpoint: string): PidRecord | null {
  try {
    const record = JSON.parse(fs.readFileSync(`${recordBase(mountpoint)}.pid`, "utf8")) as PidRecord;
    return record.mountpoint === mountpoint && Number.isSafeInteger(record.pid) ? record : null;
  } catch {
    return null;
  }
}

function writePidRecord(record: PidRecord): void {
  fs.mkdirSync(runDir(), { recursive: true, mode: 0o755 });
  fs.writeFileSync(`${recordBase(record.mountpoint)}.pid`, `${JSON.stringify(record)}\n`);
}

function removePidRecord(mountpoint: string): void {
  const record = readPidRecord(mountpoint);
  if (record?.pid === process.pid) fs.rmSync(`${recordBase(mountpoint)}.pid`, { force: true });
}

/** Alive and not a zombie (a zombie has closed everything already). */
export function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
  } catch {
    return false;
  }
}

/** The process serving `mountpoint`: its pid record, if that process still runs and was started to mount. */
export function servingPid(mountpoint: string): number | null {
  const record = readPidRecord(mountpoint);
  if (record === null || !isRunning(record.pid)) return null;
  try {
    const cmdline = fs.readFileSync(`/proc/${record.pid}/cmdline`, "utf8").split("\0");
    return cmdline.includes("mount") ? record.pid : null;
  } catch {
    return null;
  }
}


/**
 * Removes the pid records, and their control sockets, of daemons that are
 * gone: one killed by a signal cannot remove its own. Run by every command
 * (cli/main.ts); never fails one. A daemon starting for the same mountpoint
 * meanwhile is left alone: its record differs from the one read here, and
 * its socket is newer than the dead one's record (a daemon makes its socket
 * before its record).
 */
export function removeStaleRecords(): void {
  let names: string[];
  try {
    names = fs.readdirSync(runDir()).filter((name) => name.endsWith(".pid"));
  } catch {
    return;
  }
  for (const name of names) {
    const file = path.join(runDir(), name);
    try {
      const text = fs.readFileSync(file, "utf8");
      const record = JSON.parse(text) as PidRecord;
      if (typeof record.mountpoint !== "string" || !Number.isSafeInteger(record.pid)) continue;
      if (isRunning(record.pid) && servingPid(record.mountpoint) === record.pid) continue;
      const recordTime = fs.statSync(file).mtimeMs;
      if (fs.readFileSync(file, "utf8") !== text) continue;
      fs.rmSync(file, { force: true });
      const socket = controlSocketPath(record.mountpoint);
      const stat = fs.lstatSync(socket, { throwIfNoEntry: false });
      if (stat?.isSocket() && stat.mtimeMs <= recordTime) fs.rmSync(socket, { force: true });
    } catch {
      // Being written, not ours, or already gone: leave it.
    }
  }
}

// ---- option parsing and checks ------------------------------------------------

/**
 * The generic mount options (mount(8)'s "FILESYSTEM-INDEPENDENT MOUNT
 * OPTIONS"), as mount(8), fstab and mount.fuse hand them over. Each flag has
 * an opposite, and the last of a pair wins, as in mount(8).
 */
const negatedFlags = new Map([
  ["nosuid", "suid"],
  ["nodev", "dev"],
  ["noexec", "exec"],
]);
const atimeUpdates = new Map<string, AccessTimes["update"]>([
  ["noatime", "noatime"],
  ["atime", "relatime"],
  ["relatime", "relatime"],
  ["strictatime", "strictatime"],
]);
/**
 * Accepted and meaning nothing to grovefs: fstab's and mount(8)'s own
 * (auto, noauto, user, users, nouser, owner, group, nofail, _netdev, x-* and
 * X-*, comment=; loop is set up by mount(8) before the helper runs), the
 * defaults (defaults, async), nonempty (a mountpoint with files is mounted
 * over on either transport, as mount(8) does) and lazytime (times stay in
 * memory until the next commit anyway).
 */
const ignoredOptions = new Set(["defaults", "async", "auto", "noauto", "user", "users", "nouser", "owner", "group", "nofail", "_netdev", "loop", "nonempty", "lazytime"]);
const ignoredPrefixes = ["x-", "X-", "comment="];
/** Refused with the reason: grovefs commits on its own schedule, not on every write. */
const synchronousOptions = new Set(["sync", "dirsync"]);

export interface ParsedMountOptions {
  readOnly: boolean;
  /** Kernel mount flags in a fixed order (nosuid, nodev, noexec, then the atime flags); each transport passes those it can. */
  extra: string[];
  /** How reads move atime (the server keeps it). */
  accessTimes: AccessTimes;
  /** transport=: how the daemon speaks to the kernel; absent for the default (kernel as root). */
  transport?: Transport;
  /** compress=: overrides the volume's default for new writes; absent when not given. */
  compression?: CompressionName;
  /** commit=SECONDS: the periodic commit's interval (ext4's and btrfs's option); absent for the default 5 s. */
  commitSeconds?: number;
  /** subvol=: the subvolume to serve, as btrfs's option (for fstab, where --subvol cannot go). */
  subvolume?: string;
  /** rescue: read-only, and what cannot be read is skipped where the volume can do without it (GroveFsOptions.rescue). */
  rescue?: boolean;
}

const compressOption = "compress";
const compressSpelled = (name: string) => `-o ${compressOption}=${name}`;
const subvolOption = "subvol";
const transportOption = "transport";

export function parseMountOptions(lists: readonly string[]): ParsedMountOptions {
  const parsed: ParsedMountOptions = { readOnly: false, extra: [], accessTimes: { ...defaultAccessTimes } };
  const flags = new Set<string>();
  let readWriteAsked = false;
  for (const option of lists.flatMap((list) => list.split(",")).map((o) => o.trim())) {
    if (option === "" || ignoredOptions.has(option) || ignoredPrefixes.some((prefix) => option.startsWith(prefix))) continue;
    if (option === "rw") readWriteAsked = true;
    if (option === "rescue") {
      parsed.rescue = true;
      continue;
    }
    const negated = [...negatedFlags].find(([, opposite]) => opposite === option)?.[0];
    const update = atimeUpdates.get(option);
    if (option === "ro" || option === "rw") parsed.readOnly = option === "ro";
    else if (negatedFlags.has(option)) flags.add(option);
    else if (negated !== undefined) flags.delete(negated);
    else if (update !== undefined) parsed.accessTimes.update = update;
    else if (option === "nodiratime" || option === "diratime") parsed.accessTimes.directories = option === "diratime";
    else if (synchronousOptions.has(option)) {
      throw new CliError(
        `mount option '${option}' is not supported: grovefs commits on fsync, grovefs sync, unmount and periodically (every 5 s; -o commit= sets it), not on every write`,
        "mount without it, and fsync (or grovefs sync MOUNTPOINT) what must be durable at once",
      );
    } else if (option.startsWith(`${transportOption}=`)) {
      parsed.transport = parseTransport(option.slice(transportOption.length + 1));
    } else if (option.startsWith("commit=")) {
      parsed.commitSeconds = parseCommitSeconds(option.slice("commit=".length));
    } else if (option.startsWith(`${compressOption}=`)) {
      parsed.compression = parseCompression(option.slice(compressOption.length + 1), `-o ${compressOption}`, compressSpelled);
    } else if (option === compressOption || option.startsWith(`${compressOption}-`)) {
      // btrfs's bare "compress" (its default algorithm) and compress-force: grovefs wants the algorithm named.
      throw new CliError(`mount option '${printable(option)}' is not supported`, `accepted: ${compressionNames.map(compressSpelled).join(", ")}`);
    } else if (option.startsWith(`${subvolOption}=`) && option.length > subvolOption.length + 1) {
      parsed.subvolume = option.slice(subvolOption.length + 1);
    } else {
      throw new CliError(`unknown mount option '${printable(option)}'`, `known options: ${knownOptions}`);
    }
  }
  if (parsed.rescue === true) {
    if (readWriteAsked) throw new CliError("mount option 'rescue' mounts read-only: it cannot be combined with 'rw'", "drop rw (a rescue mount is always read-only)");
    parsed.readOnly = true;
  }
  parsed.extra = [...[...negatedFlags.keys()].filter((flag) => flags.has(flag)), ...kernelAtimeFlags(parsed.accessTimes)];
  return parsed;
}

/** The atime flags for the mount table (relatime is the kernel's default, so it goes unsaid). */
function kernelAtimeFlags(accessTimes: AccessTimes): string[] {
  const update = accessTimes.update === "relatime" ? [] : [accessTimes.update];
  return accessTimes.directories ? update : [...update, "nodiratime"];
}

const knownOptions =
  "ro, rw, rescue, nosuid, nodev, noexec, noatime, relatime, strictatime, nodiratime (and suid, dev, exec, atime, diratime), " +
  `${subvolOption}=NAME, commit=SECONDS, ${compressOption}=${compressionNames.join("|")}, ${transportOption}=${transportNames.join("|")}; ` +
  "defaults, async, auto, noauto, user, users, nouser, owner, group, nofail, _netdev, loop, nonempty, lazytime, comment=, x-* and X-* are accepted and ignored";

/** commit=N: whole seconds, 1 to 3600; 0 means the default, as in ext4 and btrfs. */
function parseCommitSeconds(value: string): number | undefined {
  const seconds = /^\d{1,7}$/.test(value) ? Number(value) : Number.NaN;
  if (seconds === 0) return undefined;
  if (!(seconds >= 1 && seconds <= 3600)) {
    throw new CliError(`bad mount option 'commit=${printable(value)}'`, "commit= takes whole seconds from 1 to 3600 (0 for the default, 5)");
  }
  return seconds;
}

function parseTransport(value: string): Transport {
  const name = transportNames.find((t) => t === value);
  if (name === undefined) {
    throw new CliError(`unknown transport '${printable(value)}'`, `-o ${transportOption}= takes ${transportNames.join(" or ")}`);
  }
  if (name === "kernel" && process.getuid?.() !== 0) {
    throw new CliError("-o transport=kernel needs root (it mounts with mount(8))", `use -o ${transportOption}=fuse-native`);
  }
  return name;
}

function checkImage(image: string): void {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(image);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") {
      throw new CliError(`${image}: no such image or device`, "check the path, or create one with: grovefs mkfs IMAGE --size 1G");
    }
    throw error;
  }
  if (!stat.isFile() && !stat.isBlockDevice()) {
    throw new CliError(`${image} is not an image file or block device`, "give the image that grovefs mkfs formatted");
  }
}

function checkMountpoint(mountpoint: string, shown: string): void {
  const entry = findMount(mountpoint);
  if (entry?.fstype === groveFsType && servingPid(mountpoint) === null) {
    throw new CliError(`${shown} is a stale grovefs mount (its process is gone)`, `clean it up with: grovefs umount ${shown}`);
  }
  if (entry !== undefined) {
    throw new CliError(`${shown} is already a mount point`, `unmount it first (grovefs umount ${shown}), or use another directory`);
  }
  let stat: fs.Stats;
  try {
    stat = fs.statSync(mountpoint);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") {
      throw new CliError(`mount point ${shown} does not exist`, `create it first: mkdir ${shown}`);
    }
    throw error;
  }
  if (!stat.isDirectory()) throw new CliError(`mount point ${shown} is not a directory`, "give a directory");
}

/** Either transport opens /dev/fuse: what would fail there is said now, before a daemon starts. */
function checkFuseDevice(): void {
  try {
    fs.accessSync(fuseDevicePath, fs.constants.R_OK | fs.constants.W_OK);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") {
      throw new CliError(`there is no ${fuseDevicePath}`, "load the FUSE module (modprobe fuse); in a container, pass /dev/fuse in");
    }
    throw new CliError(`cannot open ${fuseDevicePath}: permission denied`, "mount as root, or give this user read and write access to it");
  }
}

// ---- serving in this process -------------------------------------------------

/** In a daemon child, tells the parent how the mount went. */
export function notifyParent(message: string): void {
  const fd = Number(process.env[readyFdEnv]);
  if (!Number.isInteger(fd) || fd < 0) return;
  delete process.env[readyFdEnv];
  try {
    fs.writeSync(fd, `${message}\n`);
    fs.closeSync(fd);
  } catch {
    // The parent gave up waiting; nothing else to tell.
  }
}

/** What the mount options ask of the filesystem serving `subvolume`. */
function filesystemOptions(options: ParsedMountOptions, subvolume: string | undefined): GroveFsOptions {
  const { readOnly } = options;
  // A read-only mount writes nothing: compress= is accepted and left out.
  const compression = readOnly ? undefined : options.compression;
  return {
    readOnly,
    subvolume,
    // Duplicate metadata: each damaged node copy read from its twin, and its rewrite, goes to the log.
    onMetadataRepair: (note) => process.stderr.write(`grovefs: metadata repair: ${note}\n`),
    ...(options.rescue === true ? { rescue: true } : {}),
    accessTimes: options.accessTimes,
    ...(compression === undefined ? {} : { compression }),
    ...(options.commitSeconds === undefined ? {} : { commitIntervalMs: options.commitSeconds * 1000 }),
  };
}

/**
 * Tells the log which superblock copy the volume was opened from when it is
 * not the usual one, what was damaged or rewritten, and a possible roll-back.
 */
function reportSuperblock(volume: GroveFs): void {
  const report = volume.store.superblockReport;
  if (report === null) return;
  const lines = [...report.problems, ...report.notes];
  if (report.rolledBack !== null) lines.unshift(`warning: ${report.rolledBack}; run grovefs fsck -n IMAGE after unmounting`);
  if (lines.length === 0 && report.source.role === "slot") return;
  process.stderr.write(`grovefs: ${sourceLine(report)}\n`);
  for (const line of lines) process.stderr.write(`grovefs: ${line}\n`);
  for (const line of volume.store.superblockRepairs) process.stderr.write(`grovefs: repaired: ${line}\n`);
}

/** GroveFs.open, with a missing or invalid --subvol said in the CLI's terms. */
function openVolume(device: FileDevice, image: string, options: ParsedMountOptions, subvolume: string | undefined): GroveFs {
  try {
    return GroveFs.open(device, filesystemOptions(options, subvolume));
  } catch (error) {
    if (subvolume !== undefined && error instanceof GroveError && (error.code === "ENOENT" || error.code === "EINVAL")) {
      throw new CliError(
        `cannot mount subvolume '${printable(subvolume)}' of ${image}: ${error.message}`,
        `grovefs subvolume list ${image} lists the subvolumes`,
      );
    }
    throw error;
  }
}

async function openAndMount(
  image: string,
  mountpoint: string,
  options: ParsedMountOptions,
  subvolume?: string,
): Promise<{ handle: MountHandle; volume: GroveFs }> {
  const device = FileDevice.open(image, { readOnly: options.readOnly, lock: true });
  let volume: GroveFs;
  try {
    volume = openVolume(device, image, options, subvolume);
  } catch (error) {
    device.close();
    throw error;
  }
  for (const note of volume.rescueNotes ?? []) process.stderr.write(`grovefs: rescue: ${note}\n`);
  reportSuperblock(volume);
  try {
    // A snapshot opens read-only whatever was asked: the kernel mount must say so too.
    const readOnly = options.readOnly || volume.readOnly;
    const handle = await mountGrove(volume, mountpoint, {
      readOnly,
      imagePath: image,
      extraOptions: options.extra,
      ...(options.transport === undefined ? {} : { transport: options.transport }),
    });
    return { handle, volume };
  } catch (error) {
    try {
      volume.close();
    } finally {
      device.close();
    }
    throw error;
  }
}

/** Serves until a signal or an external umount of every mount; resolves once the volume is committed and closed. */
async function serveForeground(image: string, mountpoint: string, options: ParsedMountOptions, subvolume?: string): Promise<void> {
  const { handle, volume } = await openAndMount(image, mountpoint, options, subvolume);
  const daemon = process.env[readyFdEnv] !== undefined;
  const mounts = new MountDaemon(image, handle.transport);
  await mounts.add(mountpoint, handle, volume);
  const watch = setInterval(() => mounts.watchImage(volume), imageWatchIntervalMs);
  watch.unref();
  const stop = () => mounts.unmountAll();
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) process.on(signal, stop);
  if (daemon) notifyParent("ready");
  else process.stdout.write(`grovefs: serving ${image} at ${mountpoint}; Ctrl-C or grovefs umount ${mountpoint} unmounts it\n`);
  try {
    await mounts.finished;
  } finally {
    clearInterval(watch);
    mounts.watchImage(volume);
    mounts.reportUnmount();
  }
  if (daemon) removeEmptyLog(mountpoint);
}

/** How often a daemon looks whether its image file still has a name. */
const imageWatchIntervalMs = 5000;

/** A daemon serves at most this many mountpoints: each session keeps reads of /dev/fuse outstanding on libuv's pool (16 threads). */
const mountsPerDaemonMax = 4;

/** One mountpoint a daemon serves. */
interface DaemonMount {
  handle: MountHandle;
  volume: GroveFs;
  control: ControlServer | null;
}

/**
 * The mounts one daemon serves: the first, which opened the image, and those
 * attached since through a control socket, each with its own subvolume,
 * control socket and pid record, all on one open volume. `finished` settles
 * when the last one is gone (rejected with the first failure to close one);
 * a signal unmounts them all.
 */
class MountDaemon {
  private readonly mounts = new Map<string, DaemonMount>();
  private failure: unknown = null;
  private settle!: { resolve: () => void; reject: (error: unknown) => void };
  readonly finished = new Promise<void>((resolve, reject) => (this.settle = { resolve, reject }));

  /** Once the image file is found deleted (link count 0), said once in the log, and again at unmount. */
  private imageDeleted = false;
  /** The volume's scrub (one per daemon: every mount serves the same volume); made by the first mount. */
  private scrubber: DaemonScrub | null = null;

  constructor(
    private readonly image: string,
    private readonly transport: Transport,
  ) {}

  /** Warns in the log, once, when the image file has been deleted while mounted. */
  watchImage(volume: GroveFs): void {
    if (this.imageDeleted) return;
    let warning: string | null;
    try {
      warning = imageDeletedWarning(this.image, volume);
    } catch {
      return;
    }
    if (warning === null) return;
    this.imageDeleted = true;
    process.stderr.write(`grovefs: warning: ${warning}\n`);
  }

  /** At unmount: what a deleted image means now. */
  reportUnmount(): void {
    if (this.imageDeleted) process.stderr.write(`grovefs: warning: unmounted; the image file ${this.image} had been deleted while mounted, so its data is gone\n`);
  }

  /** Starts serving the control socket of a mount now usable, and records it; unmounts it if that fails. */
  async add(mountpoint: string, handle: MountHandle, volume: GroveFs): Promise<void> {
    let control: ControlServer | null;
    try {
      // A snapshot may be of any subvolume served here: every mount's dirty pages are written back first.
      control = await startControl(handle, mountpoint, this.control(volume), () => this.flushKernels());
    } catch (error) {
      await handle.unmount().catch(() => {});
      throw error;
    }
    this.mounts.set(mountpoint, { handle, volume, control });
    writePidRecord({ pid: process.pid, image: this.image, mountpoint });
    if (this.scrubber === null) {
      this.scrubber = new DaemonScrub(volume, this.image);
      // A scrub cut off by the last unmount (or a killed daemon) goes on.
      this.scrubber.resumeInterrupted();
    }
    handle.closed.then(
      () => this.gone(mountpoint),
      (error: unknown) => {
        this.failure ??= error;
        this.gone(mountpoint);
      },
    );
  }

  unmountAll(): void {
    for (const { handle } of this.mounts.values()) handle.unmount().catch(() => {});
  }

  private gone(mountpoint: string): void {
    const mount = this.mounts.get(mountpoint);
    if (mount === undefined) return;
    mount.control?.close();
    removePidRecord(mountpoint);
    this.mounts.delete(mountpoint);
    if (this.mounts.size > 0) {
      // The scrub reads through one mount's view of the volume: when that mount goes, another takes it on
      // (a read-write one if there is one: a read-only view runs only a read-only scrub).
      if (this.scrubber?.scrubsThrough(mount.volume) === true) {
        const rest = [...this.mounts.values()];
        this.scrubber = this.scrubber.handOver((rest.find((m) => !m.volume.readOnly) ?? rest[0]!).volume);
      }
      return;
    }
    this.scrubber?.stop();
    if (this.failure === null) this.settle.resolve();
    else this.settle.reject(this.failure);
  }

  /** What the control socket of the mount serving `volume` offers about the whole daemon. */
  private control(volume: GroveFs): VolumeControl {
    return {
      sync: async () => {
        await this.flushKernels();
        volume.sync();
      },
      info: () => {
        this.watchImage(volume);
        return volumeReport(this.image, volume);
      },
      // Every mount's dirty pages first: a shrink must see the space they will take.
      resize: async (size) => {
        await this.flushKernels();
        return volume.resize(size);
      },
      attach: (request) => this.attachReported(request),
      send: (request, begin, sink) => serveSend(volume, request, begin, sink),
      receive: (request, source) => serveReceive(volume, request, source),
      receiveState: (request) => serveReceiveState(volume, request),
      // A scrub reads the committed state: what the kernel holds dirty is committed first.
      scrub: async (request) => {
        if (request.action === "start") await this.flushKernels();
        return this.scrubber!.handle(request);
      },
      mountpoints: () => {
        const byName = new Map<string, string[]>();
        for (const [mountpoint, mount] of this.mounts) byName.set(mount.volume.subvolumeName, [...(byName.get(mount.volume.subvolumeName) ?? []), mountpoint]);
        return byName;
      },
    };
  }

  /** Every mount's dirty pages written back: a commit holds what any of them acknowledged. */
  async flushKernels(): Promise<void> {
    await Promise.all([...this.mounts.values()].map((mount) => mount.handle.flushKernel()));
  }

  /** `attach`, its refusal carried to the client as the one line to print (a GroveError the socket can carry). */
  private async attachReported(request: AttachRequest): Promise<void> {
    try {
      await this.attach(request);
    } catch (error) {
      const code = error instanceof GroveError ? error.code : "EINVAL";
      throw new GroveError(code, attachRefusedDetail, formatError(error));
    }
  }

  /** Serves `request.mountpoint` too, with its own subvolume of the served volume; resolves once it is usable. */
  private async attach(request: AttachRequest): Promise<void> {
    const options = parseMountOptions(request.options);
    const mountpoint = canonicalMountpoint(request.mountpoint);
    const shown = request.mountpoint;
    const first = [...this.mounts.entries()][0];
    if (first === undefined) throw new CliError(`the grovefs process serving ${this.image} is unmounting`, "mount again once it has exited");
    if (this.transport !== "kernel") {
      throw new CliError(`${this.image} is already mounted at ${first[0]} through fuse-native, which serves one mountpoint per process`, "mount it with the kernel transport (the default as root) to mount several subvolumes");
    }
    if (options.transport !== undefined && options.transport !== this.transport) {
      throw new CliError(`${this.image} is served through the ${this.transport} transport (at ${first[0]})`, `a second mount of it uses the same one: drop -o transport=${options.transport}`);
    }
    if (this.mounts.size >= mountsPerDaemonMax) {
      throw new CliError(`the grovefs process serving ${this.image} already serves ${this.mounts.size} mountpoints`, "unmount one first");
    }
    checkMountpoint(mountpoint, shown);
    const volume = this.attachVolume(first[1].volume, options, request.subvol, first[0]);
    let handle: MountHandle;
    try {
      handle = await mountGrove(volume, mountpoint, {
        readOnly: options.readOnly || volume.readOnly,
        imagePath: this.image,
        extraOptions: options.extra,
        transport: this.transport,
      });
    } catch (error) {
      volume.close();
      throw error;
    }
    await this.add(mountpoint, handle, volume);
  }

  /** GroveFs.attach, with its refusals said in the CLI's terms. */
  private attachVolume(served: GroveFs, options: ParsedMountOptions, subvolume: string | undefined, firstMountpoint: string): GroveFs {
    const name = subvolume ?? "default";
    try {
      return served.attach(filesystemOptions(options, subvolume));
    } catch (error) {
      if (!(error instanceof GroveError)) throw error;
      if (error.code === "EBUSY") {
        const where = [...this.mounts].find(([, mount]) => mount.volume.subvolumeName === name)?.[0] ?? firstMountpoint;
        throw new CliError(`subvolume '${printable(name)}' of ${this.image} is already mounted at ${where}`, "mount another subvolume, or use that mount");
      }
      if (error.code === "EROFS") {
        throw new CliError(`${this.image} is mounted read-only at ${firstMountpoint}, so another mount of it must be read-only too`, "add -o ro, or unmount it and mount it read-write");
      }
      if (subvolume !== undefined && (error.code === "ENOENT" || error.code === "EINVAL")) {
        throw new CliError(`cannot mount subvolume '${printable(subvolume)}' of ${this.image}: ${error.message}`, `grovefs subvolume list ${firstMountpoint} lists the subvolumes`);
      }
      throw error;
    }
  }
}

/** A daemon's refusal of an attach: the message is the one line to print. */
const attachRefusedDetail = "EINVAL_attach_refused";

/** The control socket for snapshot and clone commands on this mount (cli/control.ts). */
async function startControl(handle: MountHandle, mountpoint: string, volume: VolumeControl, flushKernels: () => Promise<void>): Promise<ControlServer | null> {
  if (handle.subvolumes === null) return null;
  fs.mkdirSync(runDir(), { recursive: true, mode: 0o755 });
  const report = (error: unknown) => {
    const text = error instanceof Error ? (error.stack ?? error.message) : String(error);
    try {
      process.stderr.write(`grovefs: bug: control request failed:\n${text}\n`);
    } catch {
      // No log to write to.
    }
  };
  return startControlServer(controlSocketPath(mountpoint), handle.subvolumes, report, flushKernels, (work) => handle.hold(work), volume);
}

/** A daemon's log holds only reports of trouble: after a clean run it is empty and goes. */
function removeEmptyLog(mountpoint: string): void {
  const log = `${recordBase(mountpoint)}.log`;
  try {
    if (fs.statSync(log).size === 0) fs.rmSync(log);
  } catch {
    // Nothing to tidy.
  }
}

// ---- daemon mode ----------------------------------------------------------------

function waitForChild(child: ReturnType<typeof spawn>, logPath: string): Promise<void> {
  return new Promise((resolve, reject) => {
    let text = "";
    let settled = false;
    const settle = (error: Error | null) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      child.stdio[3]?.removeAllListeners();
      child.stdio[3]?.destroy();
      child.removeAllListeners("exit");
      if (error) reject(error);
      else resolve();
    };
    const timer = setTimeout(() => {
      child.kill("SIGTERM");
      settle(new CliError(`the mount did not become ready within ${readyTimeoutMs / 1000} s`, `see ${logPath}`));
    }, readyTimeoutMs);
    const pipe = child.stdio[3]!;
    pipe.on("data", (chunk: Buffer) => {
      text += chunk.toString("utf8");
      const line = text.split("\n")[0]!;
      if (!text.includes("\n")) return;
      if (line === "ready") settle(null);
      else settle(new ReportedError(line.replace(/^error /, "")));
    });
    pipe.on("error", () => {});
    child.on("exit", (code, signal) => {
      // Give a last message in the pipe a moment to arrive.
      setTimeout(
        () => settle(new CliError(`the mount process exited unexpectedly (${signal ?? `code ${code}`})`, `see ${logPath}`)),
        100,
      );
    });
  });
}

/**
 * libfuse 2.9 (the fuse-native transport) prints why it failed on the
 * daemon's stderr, which is the log, while the binding reports only "fuse
 * failed": the one line takes libfuse's words instead.
 */
function withLibfuseReason(report: ReportedError, log: string, mountpoint: string, logPath: string): ReportedError {
  const libfusePrefix = "fuse: ";
  const said = log
    .split("\n")
    .filter((line) => line.startsWith(libfusePrefix))
    .map((line) => line.slice(libfusePrefix.length).trim());
  if (said.length === 0 || !report.message.startsWith(`grovefs: cannot mount at ${mountpoint}:`)) return report;
  const reason = said.join("; ");
  const hint = /permission denied|not permitted|fusermount/i.test(reason)
    ? "mount as root (without root, libfuse needs fusermount, from Debian's fuse package, and access to /dev/fuse)"
    : `see ${logPath}`;
  return new ReportedError(`grovefs: cannot mount at ${mountpoint}: libfuse: ${reason} — ${hint}`);
}

async function daemonize(image: string, mountpoint: string, optionLists: readonly string[], subvolume?: string): Promise<void> {
  fs.mkdirSync(runDir(), { recursive: true, mode: 0o755 });
  const logPath = `${recordBase(mountpoint)}.log`;
  const log = fs.openSync(logPath, "w", 0o644);
  const args = [...process.execArgv, process.argv[1]!, "mount", "--foreground", image, mountpoint];
  for (const list of optionLists) args.push("-o", list);
  if (subvolume !== undefined) args.push(`--subvol=${subvolume}`);
  let child: ReturnType<typeof spawn>;
  try {
    child = spawn(process.execPath, args, {
      cwd: "/",
      detached: true,
      stdio: ["ignore", log, log, "pipe"],
      // The kernel transport keeps reads of /dev/fuse outstanding on libuv's pool, beside lz4 and prefetch work.
      env: { UV_THREADPOOL_SIZE: "16", ...process.env, [readyFdEnv]: "3" },
    });
  } finally {
    fs.closeSync(log);
  }
  try {
    await waitForChild(child, logPath);
  } catch (error) {
    if (!(error instanceof ReportedError)) throw error;
    const log = fs.readFileSync(logPath, "utf8");
    // The child's one-line report is in its log too; the log is only worth keeping if it says more.
    if (log.trim() === error.message) fs.rmSync(logPath);
    throw withLibfuseReason(error, log, mountpoint, logPath);
  }
  child.unref();
  if (findMount(mountpoint) === undefined) {
    throw new CliError(`the mount process reported ready but ${mountpoint} is not mounted`, `see ${logPath}`);
  }
}

export async function mountCommand(imageArg: string, mountpointArg: string, options: MountOptions): Promise<void> {
  const parsed = parseMountOptions(options.options ?? []);
  const image = path.resolve(imageArg);
  const mountpoint = canonicalMountpoint(mountpointArg);
  const subvol = options.subvol ?? parsed.subvolume;
  checkImage(image);
  checkMountpoint(mountpoint, mountpointArg);
  checkFuseDevice();
  const served = mountpointOfImage(image);
  if (served !== null) await attachToDaemon(served, image, mountpoint, options, subvol);
  else if (options.foreground) await serveForeground(image, mountpoint, parsed, subvol);
  else await daemonize(image, mountpoint, options.options ?? [], subvol);
}

/**
 * A mount of an image a daemon already serves: that daemon serves this
 * mountpoint too (it holds the image's lock, so no other process could).
 */
async function attachToDaemon(served: string, image: string, mountpoint: string, options: MountOptions, subvol: string | undefined): Promise<void> {
  const pid = servingPid(served);
  if (pid === null) throw new CliError(`${image} was being served at ${served}, by a process that is gone`, "retry the mount");
  if (options.foreground) {
    throw new CliError(
      `${image} is already served at ${served} (pid ${pid}); a second mount of it is served by that process, not in the foreground`,
      "drop --foreground",
    );
  }
  const request: AttachRequest = { op: "attach", mountpoint, options: options.options ?? [], ...(subvol === undefined ? {} : { subvol }) };
  try {
    await sendRequest(controlSocketPath(served), request, { shown: served, pid, mountpoint: served });
  } catch (error) {
    if (error instanceof GroveError && error.detail === attachRefusedDetail) throw new ReportedError(error.message);
    throw error;
  }
  if (findMount(mountpoint) === undefined) {
    throw new CliError(`the grovefs process serving ${served} reported ${mountpoint} mounted, but it is not in the mount table`, `see the log in ${runDir()}`);
  }
}
