/**
 * Typed errors: a POSIX errno plus a precise detail code.
 *
 * Lower layers throw these; only the FUSE bridge turns them into negative
 * errnos. Corruption and I/O failures are their own classes and both map to
 * EIO. A broken invariant is not an error value: it is an assertion (see
 * `assert`), and it crashes loudly.
 */

export const errnos = {
  EPERM: 1,
  ENOENT: 2,
  EIO: 5,
  ENXIO: 6,
  E2BIG: 7,
  EBADF: 9,
  EAGAIN: 11,
  EACCES: 13,
  EBUSY: 16,
  EEXIST: 17,
  EXDEV: 18,
  ENODEV: 19,
  ENOTDIR: 20,
  EISDIR: 21,
  EINVAL: 22,
  EFBIG: 27,
  ENOSPC: 28,
  ESPIPE: 29,
  EROFS: 30,
  EMLINK: 31,
  ERANGE: 34,
  ENAMETOOLONG: 36,
  ENOSYS: 38,
  ENOTEMPTY: 39,
  ELOOP: 40,
  ENODATA: 61,
  EOVERFLOW: 75,
  EOPNOTSUPP: 95,
} as const;

export type ErrnoCode = keyof typeof errnos;

export interface GroveErrorOptions {
  path?: string;
  syscall?: string;
  cause?: unknown;
}

/**
 * Codes that answer a request rather than report a failure: a missing name,
 * an existing one, a refused operation. They are thrown on hot paths (every
 * miss of an lseek, a setattr after unlink, an unsupported xattr), so they
 * carry no stack trace, which costs more than the rest of the error. EIO,
 * ENOSPC, EBADF and the others keep theirs: those can point at a bug.
 */
const answers: ReadonlySet<ErrnoCode> = new Set<ErrnoCode>([
  "ENOENT",
  "EEXIST",
  "ENOTEMPTY",
  "ENOTDIR",
  "EISDIR",
  "ENODATA",
  "EOPNOTSUPP",
  "ERANGE",
  "ENAMETOOLONG",
  "EXDEV",
  "ENXIO",
  "EACCES",
  "EPERM",
  "EROFS",
  "EMLINK",
  "ELOOP",
]);

export class GroveError extends Error {
  readonly code: ErrnoCode;
  readonly errno: number;
  /** A stable, precise reason, e.g. `ENOSPC_node_alloc`. */
  readonly detail: string;
  readonly path?: string;
  readonly syscall?: string;

  constructor(code: ErrnoCode, detail: string, message: string, options: GroveErrorOptions = {}) {
    const stackLimit = Error.stackTraceLimit;
    if (answers.has(code)) Error.stackTraceLimit = 0;
    try {
      super(message, options.cause === undefined ? undefined : { cause: options.cause });
    } finally {
      Error.stackTraceLimit = stackLimit;
    }
    this.name = "GroveError";
    this.code = code;
    this.errno = errnos[code];
    this.detail = detail;
    this.path = options.path;
    this.syscall = options.syscall;
  }
}

/** The image holds bytes that cannot be what grovefs wrote: a checksum, magic or bound failed. */
export class CorruptionError extends GroveError {
  constructor(detail: string, message: string, options: GroveErrorOptions = {}) {
    super("EIO", detail, message, options);
    this.name = "CorruptionError";
  }
}

/** The device failed a read, write or flush, or the volume is poisoned by an earlier failure. */
export class IoError extends GroveError {
  constructor(detail: string, message: string, options: GroveErrorOptions = {}) {
    super("EIO", detail, message, options);
    this.name = "IoError";
  }
}

export class AssertionFailure extends Error {
  constructor(message: string) {
    super(`assertion failed: ${message}`);
    this.name = "AssertionFailure";
  }
}

/** Invariants stay checked in production: a broken one is a bug, so stop loudly. */
export function assert(condition: unknown, message: string): asserts condition {
  if (!condition) throw new AssertionFailure(message);
}
