/**
 * The kernel transport's session: reads requests from the /dev/fuse
 * descriptor, answers FUSE_INIT, hands every other request to the bridge and
 * writes its reply, until the kernel ends the connection (ENODEV: unmounted).
 *
 * Two ways of waiting for a request:
 * - In place (the default): the JS thread itself blocks in read(2) and serves
 *   what it reads, so a request costs no hand-off between threads. Measured on
 *   `cp -a` of 4,200 small files: 3.2 s against 4.3 s with pool reads.
 *   While the thread is blocked nothing else in the process runs (timers, the
 *   control socket, child processes), so the loop lets the event loop turn
 *   every few milliseconds while busy, and a small waker thread pokes an idle,
 *   blocked session with statfs(2) on the mountpoint (a STATFS request) once
 *   a period. After a STATFS, or while some answer is still pending (`hold`),
 *   the session waits on the pool instead, until the next request.
 * - On libuv's pool (`GROVEFS_SESSION=pool`, and between in-place runs):
 *   reads block pool threads and complete on the event loop. With pool reads
 *   only, several are kept outstanding, so requests pipeline; in the mixed
 *   mode exactly one is, so that no pool thread still holds a read when the
 *   thread goes back to blocking in place.
 * - Only one session of a process can block the JS thread: while it did,
 *   another mount's requests would wait for its waker. When a second session
 *   starts, the first switches to pool reads only (`usePoolReads`) and stays
 *   there, and the second starts with them.
 *
 * Each read has its own buffer, large enough for the biggest request
 * negotiated (max_write plus headers). A request is served and answered
 * synchronously before its buffer is read into again, so views into it
 * (names, write data) stay valid while used.
 *
 * Invariants:
 * - Every request is answered, except those that take no reply (FORGET,
 *   BATCH_FORGET, INTERRUPT). A request that does not decode is answered EIO
 *   (when its header is readable) and logged, never fatal.
 * - A reply the kernel no longer wants (ENOENT: the request was interrupted
 *   and abandoned) is dropped silently.
 * - Notifications (invalidations) are written asynchronously, on the pool: the
 *   kernel may need a lock that a request waiting for this thread holds, and
 *   a synchronous write would deadlock.
 * - The thread blocks in place only when no pool read is outstanding and no
 *   held work (a deferred answer, a child process the session must see exit,
 *   an open control-socket connection) is pending.
 */
import * as fs from "node:fs";
import { Worker } from "node:worker_threads";
import { KernelBridge } from "./kernel_bridge.js";
import * as P from "./protocol.js";
import { Opcode, initFlag } from "./protocol.js";

/** Reads kept outstanding with pool reads only: each holds a pool thread (see UV_THREADPOOL_SIZE in bin/grovefs.mjs). */
export const outstandingReads = 3;
/** While serving in place without a pause, the event loop gets a turn this often. */
const turnIntervalMs = 4;
/** An idle session blocked in place is poked after at most two of these. */
const wakerPeriodMs = 1000;
/** The waker's shared words. */
const wakeStop = 0;
const wakeBlocked = 1;
const wakeTurns = 2;

export type SessionMode = "in-place" | "pool";

/** GROVEFS_SESSION=pool selects pool reads only (for comparisons); in place is the default. */
export function sessionModeFromEnv(): SessionMode {
  return process.env.GROVEFS_SESSION === "pool" ? "pool" : "in-place";
}
/** 1 MiB reads and writes: max_pages 256. */
export const maxWriteBytes = 1 << 20;
const maxPages = maxWriteBytes / 4096;
/** Room for the request headers in front of a full write (the kernel wants at least 8 KiB of it). */
const requestHeaderRoomBytes = 64 * 1024;
const readaheadMaxBytes = 1 << 20;
const logLinesMax = 64;
/** GROVEFS_FUSE_STATS=1 in the daemon's environment: per-opcode counts and times, logged when the session ends. */
const statsWanted = process.env.GROVEFS_FUSE_STATS === "1";

/**
 * What grovefs asks for at INIT, each only where the kernel offers it, and why:
 * - asyncRead: several reads of one file in flight (readahead).
 * - atomicOTrunc: O_TRUNC is done in open, not by a separate SETATTR.
 * - bigWrites, maxPages: 1 MiB reads and writes (256 pages), not 4 KiB or 128 KiB.
 * - writebackCache: small writes are absorbed by the page cache and written back in large requests.
 * - handleKillprivV2: the filesystem clears set-id bits on write, truncate and chown, so the kernel
 *   does not ask for security.capability before every write.
 * - doReaddirplus, readdirplusAuto: a listing carries the attributes (ls -l, find, cp -a: no LOOKUP each).
 * - parallelDirops: lookups and readdirs of one directory are not serialised by the kernel.
 * - cacheSymlinks: readlink answers are kept in the page cache.
 * - asyncDio: direct I/O requests of one call in flight together.
 * - initExt: the second flags word is read (needed for the flags above bit 31; none is asked for now).
 * Left off on purpose: posixLocks and flockLocks (the kernel keeps locks locally, which is right for a
 * single-host filesystem), dontMask (the kernel applies the umask), autoInvalData (nothing changes
 * files behind the kernel), exportSupport (no NFS export), setxattrExt and posixAcl (no ACLs).
 */
const wantedFlags =
  initFlag.asyncRead |
  initFlag.atomicOTrunc |
  initFlag.bigWrites |
  initFlag.maxPages |
  initFlag.writebackCache |
  initFlag.handleKillprivV2 |
  initFlag.doReaddirplus |
  initFlag.readdirplusAuto |
  initFlag.parallelDirops |
  initFlag.cacheSymlinks |
  initFlag.asyncDio |
  initFlag.initExt;

export interface Negotiated {
  major: number;
  minor: number;
  flags: bigint;
  maxWrite: number;
}

export class KernelSession {
  private readonly buffers: Buffer[] = [];
  private reading = 0;
  /** Work that needs the event loop to run until it settles (see `hold`). */
  private holds = 0;
  private waker: Waker | null = null;
  private ended = false;
  private closed = false;
  private logLines = 0;
  private readonly stats = statsWanted ? new Map<string, { count: number; serveNs: bigint; replyNs: bigint }>() : null;
  negotiated: Negotiated | null = null;
  private settle!: () => void;
  /** Settles once the kernel has ended the connection and no read is outstanding. */
  readonly done: Promise<void>;

  constructor(
    private readonly fd: number,
    private readonly bridge: KernelBridge,
    private mode: SessionMode = "pool",
    /** Where the waker pokes an idle session (in place only). */
    private readonly mountpoint: string | null = null,
  ) {
    this.done = new Promise((resolve) => (this.settle = resolve));
  }

  /** Starts serving: the first request the kernel sends is INIT. */
  start(): void {
    const inPlace = this.mode === "in-place" && this.mountpoint !== null;
    for (let i = 0; i < (inPlace ? 1 : outstandingReads); i++) {
      const buffer = Buffer.allocUnsafe(maxWriteBytes + requestHeaderRoomBytes);
      this.buffers.push(buffer);
      this.readInto(buffer);
    }
    if (inPlace) {
      // Without its waker the session must not block in place: it would sit there while the control socket waits.
      this.waker = new Waker(this.mountpoint!, (why) => {
        this.log(`the waker thread stopped (${why}); reading on the pool from now on`);
        this.waker = null;
      });
    }
  }

  /**
   * Keeps the event loop running until `work` settles: the session waits for
   * requests on the pool meanwhile. For work that waits on something other
   * than a request (a child process, a deferred answer).
   */
  hold<T>(work: Promise<T>): Promise<T> {
    this.holds++;
    const release = () => {
      this.holds--;
    };
    work.then(release, release);
    return work;
  }

  /**
   * From now on requests are read on the pool only, several outstanding:
   * another session in this process needs the JS thread too. Called on the
   * event loop, so this session is not blocked in place now; one that is
   * serving in place goes back to the pool before it would block again.
   */
  usePoolReads(): void {
    this.mode = "pool";
    this.quiesce();
    while (!this.ended && this.buffers.length < outstandingReads) {
      const buffer = Buffer.allocUnsafe(maxWriteBytes + requestHeaderRoomBytes);
      this.buffers.push(buffer);
      this.readInto(buffer);
    }
  }

  /** Stops poking: before an unmount, so that no statfs(2) holds the mountpoint busy. */
  quiesce(): void {
    this.waker?.stop();
    this.waker = null;
  }

  /** Sends a notification; failures (the kernel no longer knows the node) are ignored. */
  notify(message: Buffer): void {
    if (this.ended) return;
    fs.write(this.fd, message, 0, message.length, null, (error) => {
      if (error !== null && (error as NodeJS.ErrnoException).code !== "ENOENT") this.log(`notification failed: ${error.message}`);
    });
  }

  private readInto(buffer: Buffer): void {
    if (this.ended) {
      this.closeIfIdle();
      return;
    }
    this.reading++;
    fs.read(this.fd, buffer, 0, buffer.length, null, (error, length) => {
      this.reading--;
      if (error !== null) {
        this.readFailed(error as NodeJS.ErrnoException, buffer);
        return;
      }
      const op = this.serve(buffer, length);
      // The event loop ran: an idle period starts now, not at the waker's last look.
      this.waker?.turned();
      if (this.waker !== null && op !== Opcode.STATFS && this.holds === 0 && !this.ended) void this.serveInPlace(buffer);
      else this.readInto(buffer);
    });
  }

  /**
   * Serves requests read by this thread until a STATFS (the waker's poke, or
   * anyone's) or held work sends the session back to the pool.
   */
  private async serveInPlace(buffer: Buffer): Promise<void> {
    const waker = this.waker!;
    let turned = performance.now();
    for (;;) {
      // The event loop ran (a turn below): if pool reads were chosen meanwhile, this thread must not block again.
      if (this.waker !== waker) {
        this.readInto(buffer);
        return;
      }
      let length: number;
      waker.blocked(true);
      try {
        length = fs.readSync(this.fd, buffer, 0, buffer.length, null);
      } catch (error) {
        waker.blocked(false);
        const code = (error as NodeJS.ErrnoException).code;
        if (code === "ENOENT" || code === "EINTR" || code === "EAGAIN") continue;
        if (code !== "ENODEV") this.log(`reading /dev/fuse failed: ${(error as Error).message}`);
        this.end();
        return;
      }
      waker.blocked(false);
      const op = this.serve(buffer, length);
      if (this.ended) {
        this.closeIfIdle();
        return;
      }
      if (op === Opcode.STATFS || this.holds > 0 || this.waker === null) {
        this.readInto(buffer);
        return;
      }
      if (performance.now() - turned >= turnIntervalMs) {
        await new Promise((resolve) => setImmediate(resolve));
        waker.turned();
        turned = performance.now();
      }
    }
  }

  private readFailed(error: NodeJS.ErrnoException, buffer: Buffer): void {
    // ENOENT: the request was interrupted before it was read; EINTR, EAGAIN: just try again.
    if (error.code === "ENOENT" || error.code === "EINTR" || error.code === "EAGAIN") {
      this.readInto(buffer);
      return;
    }
    if (error.code !== "ENODEV") this.log(`reading /dev/fuse failed: ${error.message}`);
    this.end();
  }

  private end(): void {
    this.ended = true;
    this.closeIfIdle();
  }

  private closeIfIdle(): void {
    if (this.reading > 0 || this.closed) return;
    this.closed = true;
    this.quiesce();
    this.logStats();
    try {
      fs.closeSync(this.fd);
    } catch {
      // Already closed.
    }
    this.settle();
  }

  /** Serves one request; returns its opcode (-1 for one that did not decode). */
  private serve(buffer: Buffer, length: number): number {
    let request: P.Request;
    try {
      request = P.decodeRequest(buffer, length, { setxattrExt: false });
    } catch (error) {
      this.malformed(buffer, length, error);
      return -1;
    }
    if (request.op === Opcode.INIT) {
      this.reply(this.init(request));
      return request.op;
    }
    const started = this.stats === null ? 0n : process.hrtime.bigint();
    const reply = this.bridge.handle(request);
    const served = this.stats === null ? 0n : process.hrtime.bigint();
    // A promise: answered later (the request's fields were decoded out of the buffer, which is read into again).
    if (reply instanceof Promise) void this.hold(reply.then((late) => this.reply(late)));
    else if (reply !== null) this.reply(reply);
    if (this.stats !== null) this.count(P.opcodeName(request.op), started, served);
    if (request.op === Opcode.DESTROY) this.end();
    return request.op;
  }

  private count(op: string, started: bigint, served: bigint): void {
    const entry = this.stats!.get(op) ?? { count: 0, serveNs: 0n, replyNs: 0n };
    entry.count++;
    entry.serveNs += served - started;
    entry.replyNs += process.hrtime.bigint() - served;
    this.stats!.set(op, entry);
  }

  private logStats(): void {
    if (this.stats === null) return;
    const rows = [...this.stats].sort((a, b) => b[1].count - a[1].count);
    const us = (ns: bigint, n: number): string => (Number(ns) / 1000 / n).toFixed(1);
    const lines = rows.map(([op, e]) => `  ${op.padEnd(16)} ${String(e.count).padStart(9)}  serve ${us(e.serveNs, e.count).padStart(8)} us  reply ${us(e.replyNs, e.count).padStart(7)} us`);
    try {
      process.stderr.write(`grovefs: requests served (opcode, count, mean serve and reply-write time):\n${lines.join("\n")}\n`);
    } catch {
      // No log to write to.
    }
  }

  private malformed(buffer: Buffer, length: number, error: unknown): void {
    const why = error instanceof Error ? error.message : String(error);
    this.log(`malformed request (${length} bytes) answered EIO: ${why}`);
    if (length < 16) return;
    // The header's unique id is at offset 8 whatever else is wrong; a request without one cannot be answered.
    const unique = P.uniqueOf(buffer, length);
    if (unique !== null) this.reply(P.replyError(unique, 5));
  }

  private init(request: P.InitRequest): Buffer {
    const unique = request.header.unique;
    if (request.major < P.fuseKernelVersion) return P.replyError(unique, 71 /* EPROTO */);
    if (request.major > P.fuseKernelVersion) {
      // The kernel will send INIT again with our major version.
      return P.replyInit(unique, { major: P.fuseKernelVersion, minor: P.fuseKernelMinorVersion, maxReadahead: 0, flags: 0n, maxBackground: 0, congestionThreshold: 0, maxWrite: 0, timeGran: 0, maxPages: 0 });
    }
    const flags = request.flags & wantedFlags;
    const minor = Math.min(request.minor, P.fuseKernelMinorVersion);
    const maxWrite = maxWriteBytes;
    this.negotiated = { major: P.fuseKernelVersion, minor, flags, maxWrite };
    this.bridge.configure({ writeback: (flags & initFlag.writebackCache) !== 0n, maxWrite });
    return P.replyInit(unique, {
      major: P.fuseKernelVersion,
      minor: P.fuseKernelMinorVersion,
      maxReadahead: Math.min(request.maxReadahead, readaheadMaxBytes),
      flags,
      maxBackground: 64,
      congestionThreshold: 48,
      maxWrite,
      timeGran: 1,
      maxPages: (flags & initFlag.maxPages) !== 0n ? maxPages : 0,
    });
  }

  private reply(reply: Buffer | Buffer[]): void {
    try {
      if (Array.isArray(reply)) fs.writevSync(this.fd, reply);
      else fs.writeSync(this.fd, reply);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      // ENOENT: the request was interrupted and the kernel gave up on it.
      if (code === "ENOENT") return;
      if (code === "ENODEV") {
        this.end();
        return;
      }
      this.log(`writing a reply failed: ${(error as Error).message}`);
    }
  }

  private log(text: string): void {
    if (this.logLines >= logLinesMax) return;
    this.logLines++;
    try {
      process.stderr.write(`grovefs: ${text}\n`);
    } catch {
      // No log to write to.
    }
  }
}

/**
 * A thread that pokes the session when it has sat blocked in place for a
 * whole period without the event loop turning: statfs(2) on the mountpoint
 * makes the kernel send STATFS, which the session answers and then waits on
 * the pool, so timers, the control socket and child processes get their turn.
 * The thread only reads shared words the session writes (no wake-ups per
 * request).
 */
class Waker {
  private readonly words = new Int32Array(new SharedArrayBuffer(3 * Int32Array.BYTES_PER_ELEMENT));
  private readonly worker: Worker;

  private stopped = false;

  constructor(mountpoint: string, failed: (why: string) => void) {
    this.worker = new Worker(wakerSource, { eval: true, workerData: { words: this.words, mountpoint, periodMs: wakerPeriodMs } });
    this.worker.unref();
    this.worker.on("error", (error) => {
      if (!this.stopped) failed(error.message);
    });
    this.worker.on("exit", (code) => {
      if (!this.stopped) failed(`exit ${code}`);
    });
  }

  blocked(yes: boolean): void {
    this.words[wakeBlocked] = yes ? 1 : 0;
  }

  turned(): void {
    this.words[wakeTurns] = (this.words[wakeTurns]! + 1) | 0;
  }

  stop(): void {
    this.stopped = true;
    Atomics.store(this.words, wakeStop, 1);
    Atomics.notify(this.words, wakeStop);
  }
}

const wakerSource = `
const { workerData } = require("node:worker_threads");
const { statfsSync } = require("node:fs");
const { words, mountpoint, periodMs } = workerData;
let seen = -1;
while (Atomics.wait(words, ${wakeStop}, 0, periodMs) === "timed-out") {
  const turns = Atomics.load(words, ${wakeTurns});
  if (Atomics.load(words, ${wakeBlocked}) === 1 && turns === seen) {
    try { statfsSync(mountpoint); } catch {}
  }
  seen = Atomics.load(words, ${wakeTurns});
}
`;
