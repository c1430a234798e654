/**
 * The one module that touches fuse-native (libfuse 2.9's high-level,
 * path-based API). It adds what the package lacks: types, the mount options
 * this project always needs, promise-based mount/unmount, unmounting without
 * fusermount, and a guard so that no handler can kill the process.
 *
 * fuse-native is used as patched and rebuilt by scripts/setup_fuse.mjs (the
 * postinstall): utimens gets both times as {sec, nsec} with UTIME_NOW /
 * UTIME_OMIT intact, and is called when only one time changes (touch -a/-m);
 * stat times may be bigint nanoseconds; `callerContext()` tells a handler who
 * made the request (uid, gid, pid from libfuse's fuse_get_context()); the
 * binding finds its bundled libfuse.so.2 through an rpath. Loading checks the
 * patch level and says how to fix a stale install.
 *
 * Calling convention (fuse-native's): every handler gets its arguments and a
 * callback last. The callback takes 0 or a negative errno (see `Errno`), then
 * the result; read and write instead call back with the byte count or a
 * negative errno. Handlers run on the main thread; a FUSE thread waits for
 * each callback. A process must never make synchronous fs calls on its own
 * mount (they deadlock): drive a mount from another process. Every handler is
 * wrapped: a throw or a rejected promise answers EIO (and is reported), a
 * callback with null/undefined means 0 and with a non-number EIO, and a second
 * callback is ignored; unguarded, each of these kills the process or corrupts
 * a request. Requests have no timeout unless `timeoutMs` is given.
 *
 * Mount options always include big_writes (128 KiB writes instead of 4 KiB),
 * use_ino (st_ino is ours), default_permissions (the kernel checks modes),
 * allow_other when running as root, fsname and subtype; and ro on request.
 * fuse-native has no fields for big_writes and use_ino, so a subclass
 * overrides its option builder. An unknown option fails after the kernel
 * mount succeeded; the patched binding undoes that mount, and `mount` makes
 * sure none is left.
 *
 * Limits of the binding: uid, gid, mode, nlink, ino and fh are 32-bit; the
 * caller is known only during a handler's synchronous part, and without its
 * supplementary groups; create gets no open flags;
 * fgetattr is routed to getattr (so it is not in `FuseHandlers`).
 */
import type { StatFs } from "./api.js";
import { execFile } from "node:child_process";
import * as fs from "node:fs";
import { createRequire } from "node:module";
import * as os from "node:os";
import * as path from "node:path";

/** The lowest fuse-native patch level this module works with (scripts/setup_fuse.mjs). */
const expectedPatchLevel = 2;

// ---- types --------------------------------------------------------------

/** utimens: set this time to the current time (tv_nsec as libfuse passes it). */
export const UTIME_NOW = 0x3fffffff;
/** utimens: leave this time unchanged. */
export const UTIME_OMIT = 0x3ffffffe;

/** A time as utimens receives it. `nsec` is 0..999999999, UTIME_NOW or UTIME_OMIT. */
export interface FuseTimespec {
  sec: number;
  nsec: number;
}

/** A stat time: bigint nanoseconds since the epoch (exact), a number of ms, or a Date. */
export type FuseTime = bigint | number | Date;

/** What getattr (and readdir, optionally) reports. Missing numbers are 0 (nlink 1); missing times are now. */
export interface FuseStat {
  mode: number;
  uid?: number;
  gid?: number;
  size?: number;
  dev?: number;
  nlink?: number;
  ino?: number;
  rdev?: number;
  blksize?: number;
  blocks?: number;
  atime?: FuseTime;
  mtime?: FuseTime;
  ctime?: FuseTime;
}

/** statfs result, as the library API gives it; every field is a uint32. */
export type FuseStatfs = StatFs;

/** Calls back with 0 or a negative errno. */
export type DoneCb = (err: number) => void;
/** Calls back with 0 and a value, or a negative errno. */
export type ValueCb<T> = (err: number, value?: T) => void;
/** read/write: calls back with the byte count, or a negative errno. */
export type CountCb = (bytesOrErr: number) => void;

/**
 * The handlers, as fuse-native calls them. Implement only what you need: an
 * absent handler answers ENOSYS (getattr: EPERM, except "/" as an empty dir).
 * `fd` is the number open/opendir/create called back with (uint32; 0 means
 * none). `pos` and `size` are exact up to 2^53.
 */
export interface FuseHandlers {
  init?(cb: DoneCb): void;
  access?(path: string, mode: number, cb: DoneCb): void;
  statfs?(path: string, cb: ValueCb<FuseStatfs>): void;
  getattr?(path: string, cb: ValueCb<FuseStat>): void;
  flush?(path: string, fd: number, cb: DoneCb): void;
  fsync?(path: string, datasync: number, fd: number, cb: DoneCb): void;
  fsyncdir?(path: string, datasync: number, fd: number, cb: DoneCb): void;
  /**
   * Names, and optionally one stat per name (same length). libfuse takes d_type
   * and, with use_ino, d_ino from the stats; without them d_ino is 0xffffffff.
   * "." and ".." are listed only if you include them.
   */
  readdir?(path: string, cb: (err: number, names?: string[], stats?: FuseStat[]) => void): void;
  truncate?(path: string, size: number, cb: DoneCb): void;
  ftruncate?(path: string, fd: number, size: number, cb: DoneCb): void;
  /** Each time is {sec, nsec}; nsec is UTIME_NOW or UTIME_OMIT for "now" / "leave alone". */
  utimens?(path: string, atime: FuseTimespec, mtime: FuseTimespec, cb: DoneCb): void;
  readlink?(path: string, cb: ValueCb<string>): void;
  chown?(path: string, uid: number, gid: number, cb: DoneCb): void;
  chmod?(path: string, mode: number, cb: DoneCb): void;
  mknod?(path: string, mode: number, dev: number, cb: DoneCb): void;
  setxattr?(path: string, name: string, value: Buffer, position: number, flags: number, cb: DoneCb): void;
  /** Call back with the whole value; fuse-native copies what fits and reports the full length. */
  getxattr?(path: string, name: string, position: number, cb: ValueCb<Buffer | null>): void;
  listxattr?(path: string, cb: ValueCb<string[]>): void;
  removexattr?(path: string, name: string, cb: DoneCb): void;
  open?(path: string, flags: number, cb: ValueCb<number>): void;
  opendir?(path: string, flags: number, cb: ValueCb<number>): void;
  /** Fill `buf` (valid only until cb) with up to `len` bytes at `pos`; cb(bytes) or cb(-errno). */
  read?(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: CountCb): void;
  /** `buf` is valid only until cb: copy what you keep. cb(bytes) or cb(-errno). */
  write?(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: CountCb): void;
  release?(path: string, fd: number, cb: DoneCb): void;
  releasedir?(path: string, fd: number, cb: DoneCb): void;
  create?(path: string, mode: number, cb: ValueCb<number>): void;
  unlink?(path: string, cb: DoneCb): void;
  rename?(src: string, dest: string, cb: DoneCb): void;
  link?(existing: string, newPath: string, cb: DoneCb): void;
  /** `target` is the link's content, `linkPath` the new link. */
  symlink?(target: string, linkPath: string, cb: DoneCb): void;
  mkdir?(path: string, mode: number, cb: DoneCb): void;
  rmdir?(path: string, cb: DoneCb): void;
}

export interface MountOptions {
  /** Mount read-only (`ro`). */
  readOnly?: boolean;
  /** Shown as the source in /proc/mounts, e.g. the image path. Default "grovefs". */
  fsname?: string;
  /** The type shows as fuse.<subtype>. Default "grovefs". */
  subtype?: string;
  /** More libfuse options, e.g. "kernel_cache" or "attr_timeout=1". */
  extraOptions?: string[];
  /** libfuse debug output on stderr. */
  debug?: boolean;
  /** Answer ETIMEDOUT to a request whose handler has not called back in this many ms. Default off. */
  timeoutMs?: number;
  /** Told about every exception a handler throws or rejects with (the request gets EIO). Default: stderr. */
  onHandlerError?: (op: string, err: unknown) => void;
}

/** A filesystem ready to mount. */
export interface FuseMount {
  readonly mountpoint: string;
  /** The libfuse option string, "-o..." */
  readonly options: string;
}

/** Negative errno values, as handlers return them (Linux numbering, as fuse-native's). */
export const Errno = Object.freeze({
  EPERM: -os.constants.errno.EPERM,
  ENOENT: -os.constants.errno.ENOENT,
  EIO: -os.constants.errno.EIO,
  EBADF: -os.constants.errno.EBADF,
  EAGAIN: -os.constants.errno.EAGAIN,
  ENOMEM: -os.constants.errno.ENOMEM,
  EACCES: -os.constants.errno.EACCES,
  EBUSY: -os.constants.errno.EBUSY,
  EEXIST: -os.constants.errno.EEXIST,
  EXDEV: -os.constants.errno.EXDEV,
  ENOTDIR: -os.constants.errno.ENOTDIR,
  EISDIR: -os.constants.errno.EISDIR,
  EINVAL: -os.constants.errno.EINVAL,
  EMFILE: -os.constants.errno.EMFILE,
  EFBIG: -os.constants.errno.EFBIG,
  ENOSPC: -os.constants.errno.ENOSPC,
  EROFS: -os.constants.errno.EROFS,
  EMLINK: -os.constants.errno.EMLINK,
  ERANGE: -os.constants.errno.ERANGE,
  ENAMETOOLONG: -os.constants.errno.ENAMETOOLONG,
  ENOSYS: -os.constants.errno.ENOSYS,
  ENOTEMPTY: -os.constants.errno.ENOTEMPTY,
  ELOOP: -os.constants.errno.ELOOP,
  ENODATA: -os.constants.errno.ENODATA,
  EOVERFLOW: -os.constants.errno.EOVERFLOW,
  EOPNOTSUPP: -os.constants.errno.EOPNOTSUPP,
  ETIMEDOUT: -os.constants.errno.ETIMEDOUT,
});

/** utimens time → nanoseconds, "now" or "omit". */
export function timeSpecOf(t: FuseTimespec): bigint | "now" | "omit" {
  if (t.nsec === UTIME_NOW) return "now";
  if (t.nsec === UTIME_OMIT) return "omit";
  return BigInt(t.sec) * 1_000_000_000n + BigInt(t.nsec);
}

// ---- fuse-native, loaded on first use -------------------------------------

type NodeCb = (err: Error | null) => void;

interface NativeFuse {
  readonly mnt: string;
  mount(cb: NodeCb): void;
  unmount(cb: NodeCb): void;
}

interface FuseNativeClass {
  new (mnt: string, ops: object, opts: object): NativeFuse & { _thread: Buffer | null; _fuseOptions(): string };
  binding?: { grovefs_patch?: number; grovefs_caller?: Uint32Array; fuse_native_unmount(mnt: string, thread: Buffer | null): void };
}

type GroveFuseClass = new (mnt: string, ops: object, opts: object, optionString: string) => NativeFuse;

let groveFuse: GroveFuseClass | undefined;

/** The binding's [uid, gid, pid] of the op being dispatched; written just before each handler runs. */
let callerSlots: Uint32Array | undefined;
/** How many guarded handlers are on the stack (0 or 1: dispatch is sequential). */
let handlerDepth = 0;

/** Who made a FUSE request. */
export interface CallerContext {
  /** The caller's filesystem uid (the one the kernel checks permissions with). */
  uid: number;
  /** The caller's filesystem gid (primary group only: supplementary groups are not passed). */
  gid: number;
  /** The calling thread's id (the pid for a single-threaded process); 0 (as are uid and gid) for a request the kernel sends without credentials, e.g. release. */
  pid: number;
}

/**
 * The credentials of the request whose handler is running, from libfuse's
 * fuse_get_context(). Valid only in a handler's synchronous part (before its
 * first await or callback deferral): the binding overwrites them for the next
 * request. Called anywhere else it throws. Use it, e.g., to give a file that
 * create/mkdir/mknod/symlink makes the caller's uid and gid, as a kernel
 * filesystem would (with allow_other, requests come from any user).
 */
export function callerContext(): CallerContext {
  if (handlerDepth === 0 || !callerSlots) throw new Error("callerContext() called outside the synchronous part of a FUSE handler");
  return { uid: callerSlots[0], gid: callerSlots[1], pid: callerSlots[2] };
}

function loadFuse(): GroveFuseClass {
  if (groveFuse) return groveFuse;
  const fix = "run `node scripts/setup_fuse.mjs` (the postinstall) to patch and build it";
  let Fuse: FuseNativeClass;
  try {
    Fuse = createRequire(import.meta.url)("fuse-native") as FuseNativeClass;
  } catch (err) {
    throw new Error(`cannot load fuse-native (${(err as Error).message.split("\n")[0]}); ${fix}`);
  }
  const binding = Fuse.binding;
  if (!binding || (binding.grovefs_patch ?? 0) < expectedPatchLevel || !(binding.grovefs_caller instanceof Uint32Array)) {
    throw new Error(`fuse-native is not patched (level ${binding?.grovefs_patch ?? "none"}, want ${expectedPatchLevel} or later); ${fix}`);
  }
  callerSlots = binding.grovefs_caller;

  class GroveFuse extends Fuse {
    private readonly optionString: string;

    constructor(mnt: string, ops: object, opts: object, optionString: string) {
      super(mnt, ops, opts);
      this.optionString = optionString;
    }

    /** fuse-native's option list has no big_writes or use_ino: build the whole string here. */
    override _fuseOptions(): string {
      return this.optionString;
    }

    /** fuse-native unmounts with `fusermount -uz`, which may be absent. */
    _close(cb: NodeCb): void {
      unmountPath(this.mnt).then(() => {
        try {
          binding!.fuse_native_unmount(this.mnt, this._thread);
        } catch (err) {
          cb(err as Error);
          return;
        }
        cb(null);
      }, cb);
    }
  }
  groveFuse = GroveFuse;
  return groveFuse;
}

// ---- mounting -------------------------------------------------------------

const natives = new WeakMap<FuseMount, NativeFuse>();

function escapeOption(value: string): string {
  return value.replace(/[\\,]/g, (c) => `\\${c}`);
}

function optionString(opts: MountOptions): string {
  const list = ["big_writes", "use_ino", "default_permissions"];
  if (process.getuid?.() === 0) list.push("allow_other");
  if (opts.readOnly) list.push("ro");
  const subtype = opts.subtype ?? "grovefs";
  if (!/^[A-Za-z0-9_.-]+$/.test(subtype)) throw new Error(`bad FUSE subtype ${JSON.stringify(subtype)}`);
  list.push(`fsname=${escapeOption(opts.fsname ?? "grovefs")}`, `subtype=${subtype}`);
  if (opts.debug) list.push("debug");
  for (const o of opts.extraOptions ?? []) {
    if (!/^[a-z_]+(=[^,\\]*)?$/.test(o)) throw new Error(`bad FUSE option ${JSON.stringify(o)}`);
    list.push(o);
  }
  const s = `-o${list.join(",")}`;
  // The binding copies options into a 1024-byte buffer and would silently cut them.
  if (Buffer.byteLength(s) >= 1024) throw new Error(`FUSE options are ${Buffer.byteLength(s)} bytes; the binding takes under 1024`);
  return s;
}

/** 0 for null/undefined/false; a number as is; anything else (an Error) is EIO. */
function errnoOf(err: unknown): number {
  if (typeof err === "number") return err;
  return err === null || err === undefined || err === false ? 0 : Errno.EIO;
}

/**
 * Wraps a handler so that a throw, a rejected promise, a non-numeric error or
 * a second callback cannot reach the binding (any of them would kill the
 * process or corrupt the request). The callback is always the last argument.
 */
function guard(op: string, fn: (...args: unknown[]) => unknown, self: object, report: (op: string, err: unknown) => void) {
  return function guarded(...args: unknown[]): void {
    const cb = args[args.length - 1] as (...r: unknown[]) => void;
    let done = false;
    args[args.length - 1] = (err: unknown, ...rest: unknown[]) => {
      if (done) return;
      // fuse-native's reply callback sends the reply last: if it throws,
      // nothing was sent, and the caller would wait forever unless `fail`
      // still answers EIO. So `done` is set only once it returned.
      try {
        cb(errnoOf(err), ...rest);
      } catch (replyError) {
        fail(replyError);
        return;
      }
      done = true;
    };
    const fail = (err: unknown) => {
      report(op, err);
      if (!done) {
        done = true;
        cb(Errno.EIO);
      }
    };
    handlerDepth++;
    try {
      const r = fn.apply(self, args) as { then?: unknown } | undefined;
      if (r && typeof r.then === "function") (r as Promise<unknown>).then(undefined, fail);
    } catch (err) {
      fail(err);
    } finally {
      handlerDepth--;
    }
  };
}

function defaultReport(op: string, err: unknown): void {
  console.error(`fuse: ${op} handler failed: ${(err as Error)?.stack ?? String(err)}`);
}

/** Builds a mount (not yet mounted) of `handlers` at `mountpoint`. */
export function createMount(mountpoint: string, handlers: FuseHandlers, opts: MountOptions = {}): FuseMount {
  const Fuse = loadFuse();
  const mnt = path.resolve(mountpoint);
  if (Buffer.byteLength(mnt) >= 1024) throw new Error(`mountpoint path is too long for the binding: ${mnt}`);
  const report = opts.onHandlerError ?? defaultReport;
  const ops: Record<string, unknown> = {};
  for (const [name, fn] of Object.entries(handlers)) {
    if (typeof fn === "function") ops[name] = guard(name, fn as (...args: unknown[]) => unknown, handlers, report);
  }
  const options = optionString(opts);
  const native = new Fuse(mnt, ops, { timeout: opts.timeoutMs ?? false }, options);
  const m: FuseMount = { mountpoint: mnt, options };
  natives.set(m, native);
  return m;
}

function nativeOf(m: FuseMount): NativeFuse {
  const n = natives.get(m);
  if (!n) throw new Error("not a FuseMount from createMount");
  return n;
}

/** Mounts; resolves once the kernel has initialised the connection. On failure no mount is left behind. */
export function mount(m: FuseMount): Promise<void> {
  return new Promise((resolve, reject) => {
    nativeOf(m).mount((err) => {
      if (!err) return resolve();
      // The binding says only "fuse failed"; libfuse printed why on stderr, in a line starting "fuse:".
      const why = err.message === "fuse failed" ? "libfuse refused it (its reason is on stderr, after 'fuse:')" : err.message;
      const fail = (extra: string) => reject(new Error(`mounting ${m.mountpoint} failed: ${why} (options ${m.options})${extra}`));
      if (!isMounted(m.mountpoint)) return fail("");
      unmountPath(m.mountpoint).then(
        () => fail("; removed the half-made mount"),
        (e: Error) => fail(`; a stale mount is left: ${e.message}`),
      );
    });
  });
}

/** Unmounts (see unmountPath) and releases the binding's hold on the event loop. */
export function unmount(m: FuseMount): Promise<void> {
  return new Promise((resolve, reject) => nativeOf(m).unmount((err) => (err ? reject(err) : resolve())));
}

// ---- mount table and unmounting --------------------------------------------

interface MountEntry {
  id: string;
  fstype: string;
}

/**
 * The path as /proc/self/mountinfo spells it (the kernel records resolved
 * paths). Never stats a mountpoint itself: it may be a dead FUSE mount, or
 * served by this very process. A path that is not a mountpoint may be a
 * symlink to a directory, so it is resolved whole.
 */
export function canonicalMountpoint(mountpoint: string): string {
  const abs = path.resolve(mountpoint);
  let dir = path.dirname(abs);
  try {
    dir = fs.realpathSync(dir);
  } catch {
    // Keep the resolved path; the caller reports what is missing.
  }
  const joined = path.join(dir, path.basename(abs));
  if (mountsAt(joined).length > 0) return joined;
  try {
    return fs.realpathSync(joined);
  } catch {
    return joined;
  }
}

function mountsAt(target: string): MountEntry[] {
  const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  const found: MountEntry[] = [];
  for (const line of fs.readFileSync("/proc/self/mountinfo", "utf8").split("\n")) {
    const fields = line.split(" ");
    const dash = fields.indexOf("-");
    if (dash < 0 || unescape(fields[4]) !== target) continue;
    found.push({ id: fields[0], fstype: fields[dash + 1] });
  }
  return found;
}

/** True when something is mounted at `mountpoint` (from /proc/self/mountinfo). */
export function isMounted(mountpoint: string): boolean {
  return mountsAt(canonicalMountpoint(mountpoint)).length > 0;
}

function run(cmd: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: 30_000 }, (err, _stdout, stderr) => {
      if (!err) return resolve();
      const why = (err as NodeJS.ErrnoException).code === "ENOENT" ? "not installed" : stderr.trim() || err.message;
      reject(new Error(`${cmd} ${args.join(" ")}: ${why}`));
    });
  });
}

/**
 * Unmounts the FUSE filesystem at `mountpoint`; does nothing if nothing is
 * mounted there, and refuses a mount that is not FUSE. Works without
 * fusermount: as root it runs `umount`, then `umount -l` (lazy: detaches now,
 * finishes when the last open file closes); otherwise `fusermount -u`, then
 * `-uz` (fusermount3 likewise). Asynchronous on purpose: the process serving
 * the mount can call it without deadlocking.
 */
export async function unmountPath(mountpoint: string): Promise<void> {
  const target = canonicalMountpoint(mountpoint);
  const top = mountsAt(target).pop();
  if (!top) return;
  if (!top.fstype.startsWith("fuse")) throw new Error(`${target} is a ${top.fstype} mount, not FUSE; not unmounting it`);
  const attempts: [string, string[]][] =
    process.getuid?.() === 0
      ? [["umount", [target]], ["umount", ["-l", target]]]
      : [["fusermount", ["-u", target]], ["fusermount", ["-uz", target]], ["fusermount3", ["-u", target]], ["fusermount3", ["-uz", target]]];
  const failures: string[] = [];
  for (const [cmd, args] of attempts) {
    try {
      await run(cmd, args);
    } catch (err) {
      failures.push((err as Error).message);
    }
    if (!mountsAt(target).some((e) => e.id === top.id)) return;
  }
  throw new Error(`cannot unmount ${target}: ${failures.join("; ") || "still mounted"}`);
}
