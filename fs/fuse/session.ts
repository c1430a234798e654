/**
 * The kernel transport's session: reads requests from the /dev/fuse
 * descriptor, answers FUSE_INIT, hands every other request to the bridge and
 * writes its reply, until the kernel ends the connection (ENODEV: unmounted).
 *
 * Several reads are kept outstanding on libuv's thread pool (each blocks a
 * pool thread until a request comes), so the next requests are already read
 * while one is being served: requests pipeline. Each read has its own buffer,
 * large enough for the biggest request negotiated (max_write plus headers).
 * A request is served and answered synchronously before its buffer is read
 * into again, so views into it (names, write data) stay valid while used.
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
 */
import * as fs from "node:fs";
import { KernelBridge } from "./kernel_bridge.js";
import * as P from "./protocol.js";
import { Opcode, initFlag } from "./protocol.js";

/** Reads kept outstanding: each holds a pool thread (see UV_THREADPOOL_SIZE in bin/grovefs.mjs). */
export const outstandingReads = 3;
/** 1 MiB reads and writes: max_pages 256. */
export const maxWriteBytes = 1 << 20;
const maxPages = maxWriteBytes / 4096;
/** Room for the request headers in front of a full write (the kernel wants at least 8 KiB of it). */
const requestHeaderRoomBytes = 64 * 1024;
const readaheadMaxBytes = 1 << 20;
const logLinesMax = 64;

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
  private ended = false;
  private closed = false;
  private logLines = 0;
  negotiated: Negotiated | null = null;
  private settle!: () => void;
  /** Settles once the kernel has ended the connection and no read is outstanding. */
  readonly done: Promise<void>;

  constructor(
    private readonly fd: number,
    private readonly bridge: KernelBridge,
  ) {
    this.done = new Promise((resolve) => (this.settle = resolve));
  }

  /** Starts serving: the first request the kernel sends is INIT. */
  start(): void {
    for (let i = 0; i < outstandingReads; i++) {
      const buffer = Buffer.allocUnsafe(maxWriteBytes + requestHeaderRoomBytes);
      this.buffers.push(buffer);
      this.readInto(buffer);
    }
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
      this.serve(buffer, length);
      this.readInto(buffer);
    });
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
    try {
      fs.closeSync(this.fd);
    } catch {
      // Already closed.
    }
    this.settle();
  }

  private serve(buffer: Buffer, length: number): void {
    let request: P.Request;
    try {
      request = P.decodeRequest(buffer, length, { setxattrExt: false });
    } catch (error) {
      this.malformed(buffer, length, error);
      return;
    }
    if (request.op === Opcode.INIT) {
      this.reply(this.init(request));
      return;
    }
    const reply = this.bridge.handle(request);
    // A promise: answered later (the request's fields were decoded out of the buffer, which is read into again).
    if (reply instanceof Promise) reply.then((late) => this.reply(late));
    else if (reply !== null) this.reply(reply);
    if (request.op === Opcode.DESTROY) this.end();
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
