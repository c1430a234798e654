/**
 * The FUSE bridge: fuse-native's callback handlers on one side, the
 * synchronous FileSystemOps contract (GroveFs) on the other.
 *
 * Invariants:
 * - No handler ever throws into the binding: a throw there kills the process
 *   and leaves a stale mount. Every handler answers exactly once: 0 (or a
 *   count) on success, a negative errno on failure. A GroveError answers its
 *   own errno (CorruptionError and IoError are EIO); anything else is a bug,
 *   answered with EIO and logged to stderr with its stack (once per stack).
 * - fuse-native runs every handler on the JS thread, one at a time, so the
 *   filesystem sees no concurrency. This process must never make synchronous
 *   calls on its own mount (they deadlock): the mount state is read from
 *   /proc/self/mountinfo, never by a stat of the mountpoint.
 * - After the volume is closed, every handler answers EIO without touching it.
 *
 * Binding limits handled here (fuse-native 2.2.6 over libfuse 2.9, patched; see
 * fuse_binding.ts): `create` gets no open flags; the buffers of read, write and
 * setxattr are only valid until the handler answers; fgetattr is routed to
 * getattr by path; and the caller's credentials come from the binding's
 * callerContext(), primary group only (`callerOf`).
 */
import { readFileSync } from "node:fs";
import { resolve as resolvePath } from "node:path";
import { errnos, GroveError } from "../kvstore/index.js";
import type { Caller, DirEntry, FileSystemOps, Stat, SubvolumeOps, TimeSpec } from "./api.js";
import {
  callerContext,
  createMount,
  mount,
  timeSpecOf,
  unmount,
  type FuseHandlers,
  type FuseStat,
  type FuseTimespec,
} from "./fuse_binding.js";
import { servesSnapshots, SnapshotDirFs } from "./snapshot_dir.js";
import { syncMount } from "./fuse/kernel_mount.js";

export { canonicalMountpoint, isMounted, unmountPath } from "./fuse_binding.js";

/** What the bridge needs: the contract plus the periodic commit check. */
export interface BridgedFs extends FileSystemOps {
  /** Commits when the commit interval elapsed or dirty data passed its bound. */
  maintenance(): void;
}

export interface MountGroveOptions {
  readOnly?: boolean;
  /** How to speak to the kernel (default: `defaultTransport()`). */
  transport?: "kernel" | "fuse-native";
  /** Shown as the mount's source in the mount table. */
  imagePath: string;
  /** Kernel mount flags, already validated (nosuid, nodev, noexec and the atime flags); each transport passes those it can. */
  extraOptions?: string[];
}

const bugStacksLoggedMax = 64;

const sIfMt = 0o170000;
const sIfDir = 0o040000;
const oRdwr = 2;
const oCreat = 0o100;

// ---------------------------------------------------------------------------
// Errors

const loggedBugs = new Set<string>();

export function reportBug(op: string, error: unknown): void {
  const text = error instanceof Error ? (error.stack ?? `${error.name}: ${error.message}`) : String(error);
  if (loggedBugs.has(text) || loggedBugs.size >= bugStacksLoggedMax) return;
  loggedBugs.add(text);
  try {
    process.stderr.write(`grovefs: bug: ${op} threw a non-GroveError, answered EIO:\n${text}\n`);
  } catch {
    // stderr is gone (daemon without a log): nothing more can be done.
  }
}

/** The negative errno that answers `error`; logs anything that is not a GroveError. */
export function negativeErrno(op: string, error: unknown): number {
  if (error instanceof GroveError) return -error.errno;
  reportBug(op, error);
  return -errnos.EIO;
}

// ---------------------------------------------------------------------------
// Conversions between the contract and fuse-native's shapes

const inoFoldSpan = 2 ** 32;

/**
 * The 32-bit st_ino fuse-native can pass (libfuse 2.9's high-level API, as
 * the binding converts it): a number at or above 2^32 is folded onto
 * 2 … 2^32 - 1 (never 0 or the root's 1), where it may equal another
 * file's. Like the views' numbers (snapshot_dir.ts), a collision confuses
 * only tools that compare inode numbers (loop and hard-link detection); data
 * is served by path. The kernel transport shows every number as it is.
 */
export function foldIno(ino: number): number {
  if (ino < inoFoldSpan) return ino;
  return 2 + ((ino - 2) % (inoFoldSpan - 2));
}

export function toFuseStat(st: Stat): FuseStat {
  return {
    mode: st.mode,
    uid: st.uid,
    gid: st.gid,
    size: st.size,
    dev: 0,
    nlink: st.nlink,
    ino: foldIno(st.ino),
    rdev: st.rdev,
    blksize: st.blksize,
    blocks: st.blocks,
    atime: st.atimeNs,
    mtime: st.mtimeNs,
    ctime: st.ctimeNs,
  };
}

/** The one place utimens arguments are mapped (UTIME_NOW and UTIME_OMIT arrive intact). */
export function utimensFromFuse(atime: FuseTimespec, mtime: FuseTimespec): [TimeSpec, TimeSpec] {
  return [timeSpecOf(atime), timeSpecOf(mtime)];
}

/**
 * Who asked, for the owner of what create/mkdir/mknod/symlink make: the
 * request's fuse_get_context(), valid in a handler's synchronous part (ours
 * are wholly synchronous). Outside a mounted handler (unit tests) it is this
 * process's own uid and gid.
 */
function callerOf(): Caller {
  try {
    const { uid, gid } = callerContext();
    return { uid, gid };
  } catch {
    return { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 };
  }
}

/** Names plus a stat each: libfuse takes d_type and (with use_ino) d_ino from them. */
function readdirReply(entries: DirEntry[]): [string[], FuseStat[]] {
  const names: string[] = [];
  const stats: FuseStat[] = [];
  if (!entries.some((e) => e.name === ".")) {
    names.push(".", "..");
    stats.push({ mode: sIfDir, atime: 0, mtime: 0, ctime: 0 }, { mode: sIfDir, atime: 0, mtime: 0, ctime: 0 });
  }
  for (const entry of entries) {
    names.push(entry.name);
    stats.push({ mode: entry.type & sIfMt, ino: foldIno(entry.ino), atime: 0, mtime: 0, ctime: 0 });
  }
  return [names, stats];
}

// ---------------------------------------------------------------------------
// Handlers

interface BridgeState {
  closed: boolean;
}

type Fail = (negativeErrno: number) => void;

/**
 * Runs `work`; on success `done` answers with its result, on failure `fail`
 * answers the negative errno. `done` is guarded too, so nothing escapes into
 * the binding.
 */
function serve<T>(state: BridgeState, op: string, fail: Fail, work: () => T, done: (result: T) => void): void {
  let result: T;
  try {
    if (state.closed) {
      fail(-errnos.EIO);
      return;
    }
    result = work();
  } catch (error) {
    answerFailure(op, fail, negativeErrno(op, error));
    return;
  }
  try {
    done(result);
  } catch (error) {
    // Shaping the answer failed before it was sent: answer EIO instead (the binding ignores a second answer).
    reportBug(`${op} (answer)`, error);
    answerFailure(op, fail, -errnos.EIO);
  }
}

function answerFailure(op: string, fail: Fail, code: number): void {
  try {
    fail(code);
  } catch (error) {
    reportBug(`${op} (answer)`, error);
  }
}

/** fuse-native's handler table for `fs`. Exported for tests; `mountGrove` is the way in. */
export function fuseHandlers(fs: BridgedFs, state: BridgeState = { closed: false }): FuseHandlers {
  return {
    init: (cb) => answerFailure("init", cb, 0),
    getattr: (path, cb) => serve(state, "getattr", cb, () => toFuseStat(fs.getattr(path)), (st) => cb(0, st)),
    access: (path, mode, cb) => serve(state, "access", cb, () => fs.access(path, mode), () => cb(0)),
    statfs: (_path, cb) => serve(state, "statfs", cb, () => fs.statfs(), (st) => cb(0, st)),
    readdir: (path, cb) =>
      serve(state, "readdir", cb, () => readdirReply(fs.readdir(path)), ([names, stats]) => cb(0, names, stats)),
    opendir: (path, _flags, cb) => serve(state, "opendir", cb, () => fs.opendir(path), (fh) => cb(0, fh)),
    releasedir: (_path, fh, cb) => serve(state, "releasedir", cb, () => fs.releasedir(fh), () => cb(0)),
    fsyncdir: (_path, datasync, fh, cb) => serve(state, "fsyncdir", cb, () => fs.fsyncdir(fh, datasync !== 0), () => cb(0)),
    mkdir: (path, mode, cb) => serve(state, "mkdir", cb, () => fs.mkdir(path, mode, callerOf()), () => cb(0)),
    rmdir: (path, cb) => serve(state, "rmdir", cb, () => fs.rmdir(path), () => cb(0)),
    unlink: (path, cb) => serve(state, "unlink", cb, () => fs.unlink(path), () => cb(0)),
    rename: (from, to, cb) => serve(state, "rename", cb, () => fs.rename(from, to), () => cb(0)),
    link: (existing, newPath, cb) => serve(state, "link", cb, () => fs.link(existing, newPath), () => cb(0)),
    symlink: (target, linkPath, cb) =>
      serve(state, "symlink", cb, () => fs.symlink(target, linkPath, callerOf()), () => cb(0)),
    readlink: (path, cb) => serve(state, "readlink", cb, () => fs.readlink(path), (target) => cb(0, target)),
    mknod: (path, mode, rdev, cb) => serve(state, "mknod", cb, () => fs.mknod(path, mode, rdev, callerOf()), () => cb(0)),
    // The binding passes no open flags to create; the kernel has checked access already.
    create: (path, mode, cb) =>
      serve(state, "create", cb, () => fs.create(path, mode, oCreat | oRdwr, callerOf()), (fh) => cb(0, fh)),
    open: (path, flags, cb) => serve(state, "open", cb, () => fs.open(path, flags), (fh) => cb(0, fh)),
    // read and write answer a byte count; their buffer is dead once they answer.
    read: (_path, fh, buf, len, pos, cb) => serve(state, "read", cb, () => fs.read(fh, buf, len, pos), (n) => cb(n)),
    write: (_path, fh, buf, len, pos, cb) => serve(state, "write", cb, () => fs.write(fh, buf, len, pos), (n) => cb(n)),
    truncate: (path, size, cb) => serve(state, "truncate", cb, () => fs.truncate(path, size), () => cb(0)),
    ftruncate: (_path, fh, size, cb) => serve(state, "ftruncate", cb, () => fs.ftruncate(fh, size), () => cb(0)),
    flush: (_path, fh, cb) => serve(state, "flush", cb, () => fs.flush(fh), () => cb(0)),
    fsync: (_path, datasync, fh, cb) => serve(state, "fsync", cb, () => fs.fsync(fh, datasync !== 0), () => cb(0)),
    release: (_path, fh, cb) => serve(state, "release", cb, () => fs.release(fh), () => cb(0)),
    chmod: (path, mode, cb) => serve(state, "chmod", cb, () => fs.chmod(path, mode), () => cb(0)),
    chown: (path, uid, gid, cb) => serve(state, "chown", cb, () => fs.chown(path, uid, gid), () => cb(0)),
    utimens: (path, atime, mtime, cb) =>
      serve(state, "utimens", cb, () => fs.utimens(path, ...utimensFromFuse(atime, mtime)), () => cb(0)),
    // The binding copies the value out (what fits) and answers its full length.
    // fuse-native answers ENODATA for an undefined value; no error object is built for the common miss.
    getxattr: (path, name, _position, cb) => serve(state, "getxattr", cb, () => fs.findXattr(path, name), (v) => cb(0, v)),
    setxattr: (path, name, value, _position, flags, cb) =>
      serve(state, "setxattr", cb, () => fs.setxattr(path, name, Buffer.from(value), flags), () => cb(0)),
    listxattr: (path, cb) => serve(state, "listxattr", cb, () => fs.listxattr(path), (names) => cb(0, names)),
    removexattr: (path, name, cb) => serve(state, "removexattr", cb, () => fs.removexattr(path, name), () => cb(0)),
  };
}

// ---------------------------------------------------------------------------
// The mount table, read from /proc/self/mountinfo (never by a stat of a mountpoint).

export interface MountEntry {
  /** major:minor of the mounted filesystem; unique per FUSE connection. */
  device: string;
  mountpoint: string;
  fstype: string;
  source: string;
}

function unescapeMountinfo(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)));
}

export function parseMountinfo(text: string): MountEntry[] {
  const entries: MountEntry[] = [];
  for (const line of text.split("\n")) {
    const fields = line.split(" ");
    const dash = fields.indexOf("-", 6);
    if (dash < 0 || fields.length < dash + 3) continue;
    entries.push({
      device: fields[2]!,
      mountpoint: unescapeMountinfo(fields[4]!),
      fstype: fields[dash + 1]!,
      source: unescapeMountinfo(fields[dash + 2]!),
    });
  }
  return entries;
}

export function readMounts(): MountEntry[] {
  return parseMountinfo(readFileSync("/proc/self/mountinfo", "utf8"));
}

/** The mount on top at `mountpoint` (an absolute, canonical path), if any. */
export function findMount(mountpoint: string): MountEntry | undefined {
  const stack = readMounts().filter((entry) => entry.mountpoint === mountpoint);
  return stack[stack.length - 1];
}

export const groveSubtype = "grovefs";
/** The fstype grovefs mounts show in the mount table: fuse plus our subtype. */
export const groveFsType = `fuse.${groveSubtype}`;

// ---------------------------------------------------------------------------
// Mounting

/** A mount being served by one transport: what the transport-independent part (fs/mount.ts) needs. */
export interface ServedMount {
  /** What to commit, check and close: the served filesystem as the bridge sees it. */
  fs: BridgedFs;
  /** Snapshots and clones through the mount (which must see deletions); null without subvolumes. */
  subvolumes: SubvolumeOps | null;
  /** Unmounts if the kernel mount is still there, and releases the transport. */
  unmount(): Promise<void>;
  /** Settles when the kernel ends the connection by itself (an external umount); null if the transport cannot tell. */
  ended: Promise<void> | null;
  /** Stops answering requests: every later one gets EIO. */
  stop(): void;
  /** Has the kernel write back the mount's dirty pages (syncfs from a child process: this one serves the writes). */
  flushKernel(): Promise<void>;
  /** Keeps the event loop running until `work` settles (the kernel session serves in place otherwise). */
  hold<T>(work: Promise<T>): Promise<T>;
}

/**
 * The kernel mount flags libfuse 2.9 knows (its mount_flags table). It lacks
 * nodiratime, relatime and strictatime, and refuses them: they are left out,
 * since the filesystem moves atime itself (GroveFsOptions.accessTimes) and
 * the kernel's flags would change only the mount table.
 */
const libfuseMountFlags = new Set(["nosuid", "nodev", "noexec", "noatime"]);

/**
 * Mounts `volume` at `mountpoint` (absolute) through fuse-native. A
 * filesystem with snapshots (GroveFs) is served through `SnapshotDirFs`,
 * which adds the hidden /.snapshots. A mountpoint that holds files is
 * mounted over (libfuse's nonempty), as mount(8) and libfuse 3 do and as the
 * kernel transport does.
 */
export async function serveFuseNative(volume: BridgedFs, absolute: string, options: MountGroveOptions): Promise<ServedMount> {
  const fs: BridgedFs = servesSnapshots(volume) ? new SnapshotDirFs(volume) : volume;
  const state: BridgeState = { closed: false };
  let fuse: ReturnType<typeof createMount>;
  try {
    fuse = createMount(absolute, fuseHandlers(fs, state), {
      readOnly: options.readOnly ?? false,
      fsname: resolvePath(options.imagePath),
      subtype: groveSubtype,
      extraOptions: ["nonempty", ...(options.extraOptions ?? []).filter((option) => libfuseMountFlags.has(option))],
      onHandlerError: reportBug,
    });
    await mount(fuse);
  } catch (cause) {
    const why = cause instanceof Error ? cause.message : String(cause);
    throw new GroveError("EIO", "EIO_fuse_mount", `cannot mount at ${absolute}: ${why}`, { path: absolute, cause });
  }
  return {
    fs,
    subvolumes: fs instanceof SnapshotDirFs ? fs : null,
    // When the kernel mount is already gone this only releases the binding's hold on the event loop.
    unmount: () => unmount(fuse),
    ended: null,
    stop: () => {
      state.closed = true;
    },
    flushKernel: () => syncMount(absolute),
    // libfuse's own threads read the requests: the event loop always runs.
    hold: (work) => work,
  };
}
