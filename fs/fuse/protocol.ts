/**
 * The FUSE kernel wire protocol, defined once: the messages the kernel writes
 * to /dev/fuse (requests) and the ones we write back (replies and
 * notifications). Pure encode/decode on Buffers, no I/O. The model is
 * linux/fuse.h at protocol 7.38 (this machine's header); the kernel may speak
 * a later minor (7.45 here) and the INIT reply negotiates it down to ours.
 * Fields later minors add are noted where they fall, and never used.
 *
 * Invariants:
 * - Every length is validated before it is used: a request is decoded only
 *   when its header's len equals the bytes read, its body holds the opcode's
 *   struct, each string ends with a NUL inside the body, and each variable
 *   tail (names, link target, write data, xattr value) ends exactly where the
 *   body ends. Anything else is a ProtocolError, never a RangeError, and never
 *   a silently truncated value.
 * - A 64-bit number the kernel echoes back from us (nodeid, fh, nlookup) must
 *   be a safe integer, or the request is a ProtocolError. A 64-bit byte offset
 *   or length a user chose (read/write/lseek offsets, truncate sizes,
 *   fallocate and copy_file_range ranges) is exact when it is at most 2^53 - 1
 *   and is `offsetBeyondSafe` (Infinity) above that: it lies beyond any file
 *   we can store, so comparing it with a size gives the POSIX answer (EOF on
 *   read, EFBIG on write and truncate, ENXIO on SEEK_DATA) with no wrong
 *   offset ever reaching the filesystem.
 * - Nothing else in the codebase touches raw offsets: the session and the
 *   handlers see only the decoded shapes and the encoders below.
 * - Encoders assert their inputs (a bad reply is our bug, not the kernel's)
 *   and return the exact bytes of one message: one fs.writeSync of a Buffer,
 *   or one fs.writevSync of a Buffer[] (`replyData`, so READ data is not
 *   copied). /dev/fuse takes one message per write call.
 *
 * Versions: the decoder assumes the negotiated minor is at least 7.23 (the
 * struct sizes below are those of every minor since; setattr gained ctime in
 * 7.23) and a kernel that honours it. Structs that changed size later are
 * handled where the change is negotiated: fuse_init_in grew flags2 (7.36,
 * read only with FUSE_INIT_EXT) and fuse_setxattr_in grew to 16 bytes only
 * when FUSE_SETXATTR_EXT is negotiated (`DecodeOptions.setxattrExt`).
 * Extensions (7.38: security contexts, supplementary groups) follow the body
 * and are counted by in_header.total_extlen in 8-byte units; they are skipped.
 *
 * All integers are little-endian; offsets in the tables are decimal bytes.
 *
 * Request header and reply header:
 *
 *   fuse_in_header (40)               fuse_out_header (16)
 *    0  u32 len (header + body)        0  u32 len (header + payload)
 *    4  u32 opcode                     4  i32 error (-errno, or 0; the notify
 *    8  u64 unique                            code when unique is 0)
 *   16  u64 nodeid                     8  u64 unique (0: a notification)
 *   24  u32 uid
 *   28  u32 gid
 *   32  u32 pid
 *   36  u16 total_extlen (7.38; 8-byte units)
 *   38  u16 padding
 *
 * Request bodies (after the header; a name is NUL-terminated):
 *
 *   fuse_forget_in (8)     0 u64 nlookup
 *   fuse_batch_forget_in   0 u32 count, 4 u32 dummy; then count x
 *     (8)                    fuse_forget_one (16): 0 u64 nodeid, 8 u64 nlookup
 *   fuse_getattr_in (16)   0 u32 getattr_flags, 4 u32 dummy, 8 u64 fh
 *   fuse_setattr_in (88)   0 u32 valid, 4 u32 padding, 8 u64 fh, 16 u64 size,
 *                          24 u64 lock_owner, 32 u64 atime, 40 u64 mtime,
 *                          48 u64 ctime, 56 u32 atimensec, 60 u32 mtimensec,
 *                          64 u32 ctimensec, 68 u32 mode, 72 u32 unused4,
 *                          76 u32 uid, 80 u32 gid, 84 u32 unused5
 *   fuse_mknod_in (16)     0 u32 mode, 4 u32 rdev, 8 u32 umask, 12 u32 padding;
 *                          name
 *   fuse_mkdir_in (8)      0 u32 mode, 4 u32 umask; name
 *   SYMLINK                name, target (both NUL-terminated; no struct)
 *   fuse_rename_in (8)     0 u64 newdir; oldname, newname
 *   fuse_rename2_in (16)   0 u64 newdir, 8 u32 flags, 12 u32 padding;
 *                          oldname, newname
 *   fuse_link_in (8)       0 u64 oldnodeid; newname
 *   fuse_open_in (8)       0 u32 flags, 4 u32 open_flags
 *   fuse_create_in (16)    0 u32 flags, 4 u32 mode, 8 u32 umask,
 *                          12 u32 open_flags; name
 *   fuse_read_in (40)      0 u64 fh, 8 u64 offset, 16 u32 size,
 *                          20 u32 read_flags, 24 u64 lock_owner, 32 u32 flags,
 *                          36 u32 padding
 *   fuse_write_in (40)     as fuse_read_in, 20 u32 write_flags; then size
 *                          bytes of data
 *   fuse_release_in (24)   0 u64 fh, 8 u32 flags, 12 u32 release_flags,
 *                          16 u64 lock_owner
 *   fuse_flush_in (24)     0 u64 fh, 8 u32 unused, 12 u32 padding,
 *                          16 u64 lock_owner
 *   fuse_fsync_in (16)     0 u64 fh, 8 u32 fsync_flags, 12 u32 padding
 *   fuse_setxattr_in       0 u32 size, 4 u32 flags, [8 u32 setxattr_flags,
 *     (16, or 8 without      12 u32 padding]; name, then size bytes of value
 *     SETXATTR_EXT)
 *   fuse_getxattr_in (8)   0 u32 size, 4 u32 padding; name (GETXATTR only)
 *   REMOVEXATTR            name
 *   fuse_access_in (8)     0 u32 mask, 4 u32 padding
 *   fuse_init_in (64)      0 u32 major, 4 u32 minor, 8 u32 max_readahead,
 *     (16 before 7.36)       12 u32 flags, 16 u32 flags2, 20 u32 unused[11]
 *   fuse_interrupt_in (8)  0 u64 unique
 *   fuse_fallocate_in (32) 0 u64 fh, 8 u64 offset, 16 u64 length, 24 u32 mode,
 *                          28 u32 padding
 *   fuse_lseek_in (24)     0 u64 fh, 8 u64 offset, 16 u32 whence,
 *                          20 u32 padding
 *   fuse_copy_file_range_in 0 u64 fh_in, 8 u64 off_in, 16 u64 nodeid_out,
 *     (56)                 24 u64 fh_out, 32 u64 off_out, 40 u64 len,
 *                          48 u64 flags
 *
 * Reply payloads (after the out header):
 *
 *   fuse_attr (88)         0 u64 ino, 8 u64 size, 16 u64 blocks (512 B),
 *                          24 u64 atime, 32 u64 mtime, 40 u64 ctime (seconds,
 *                          signed in practice), 48 u32 atimensec,
 *                          52 u32 mtimensec, 56 u32 ctimensec, 60 u32 mode,
 *                          64 u32 nlink, 68 u32 uid, 72 u32 gid, 76 u32 rdev,
 *                          80 u32 blksize, 84 u32 flags (FUSE_ATTR_*)
 *   fuse_entry_out (128)   0 u64 nodeid, 8 u64 generation, 16 u64 entry_valid,
 *                          24 u64 attr_valid, 32 u32 entry_valid_nsec,
 *                          36 u32 attr_valid_nsec, 40 fuse_attr
 *   fuse_attr_out (104)    0 u64 attr_valid, 8 u32 attr_valid_nsec,
 *                          12 u32 dummy, 16 fuse_attr
 *   fuse_open_out (16)     0 u64 fh, 8 u32 open_flags, 12 u32 padding
 *                          (7.40: i32 backing_id, for passthrough)
 *   CREATE                 fuse_entry_out, then fuse_open_out (144)
 *   fuse_write_out (8)     0 u32 size, 4 u32 padding (also COPY_FILE_RANGE's)
 *   fuse_statfs_out (80)   0 u64 blocks, 8 u64 bfree, 16 u64 bavail,
 *                          24 u64 files, 32 u64 ffree, 40 u32 bsize,
 *                          44 u32 namelen, 48 u32 frsize, 52 u32 padding,
 *                          56 u32 spare[6]
 *   fuse_getxattr_out (8)  0 u32 size, 4 u32 padding
 *   fuse_lseek_out (8)     0 u64 offset
 *   fuse_init_out (64)     0 u32 major, 4 u32 minor, 8 u32 max_readahead,
 *                          12 u32 flags, 16 u16 max_background,
 *                          18 u16 congestion_threshold, 20 u32 max_write,
 *                          24 u32 time_gran, 28 u16 max_pages,
 *                          30 u16 map_alignment, 32 u32 flags2,
 *                          36 u32 unused[7] (7.40: 36 u32 max_stack_depth;
 *                          7.43: 40 u16 request_timeout)
 *   fuse_dirent (24+name)  0 u64 ino, 8 u64 off, 16 u32 namelen, 20 u32 type,
 *                          24 name (no NUL); the record is zero-padded to a
 *                          multiple of 8 (FUSE_DIRENT_ALIGN)
 *   fuse_direntplus        0 fuse_entry_out, 128 fuse_dirent (name at 152),
 *                          padded to a multiple of 8
 *
 * Notifications (unique 0, error = notify code):
 *
 *   fuse_notify_inval_inode_out (24)  0 u64 ino, 8 i64 off, 16 i64 len
 *   fuse_notify_inval_entry_out (16)  0 u64 parent, 8 u32 namelen,
 *                                     12 u32 flags; name, NUL
 *   fuse_notify_delete_out (24)       0 u64 parent, 8 u64 child,
 *                                     16 u32 namelen, 20 u32 padding;
 *                                     name, NUL
 */
import { assert } from "../../kvstore/index.js";
import { nameSizeMaxBytes } from "../constants.js";

// ---- errors -----------------------------------------------------------------

/** The request a ProtocolError belongs to, when its header could be read. */
export interface RequestContext {
  unique: bigint;
  opcode: number;
}

/**
 * The kernel sent bytes that are not a valid request. `detail` is a stable
 * code (`request_len_mismatch`, `name_unterminated`, ...). When `unique` is
 * set the header was read, and the session should answer that request with
 * EIO (unless `expectsReply(opcode)` is false) so its caller is not left
 * waiting; when it is unset there is nothing to answer.
 */
export class ProtocolError extends Error {
  readonly code = "EIO";
  readonly errno = 5;
  readonly unique?: bigint;
  readonly opcode?: number;

  constructor(
    readonly detail: string,
    message: string = detail,
    context?: RequestContext,
  ) {
    super(`fuse protocol: ${message}`);
    this.name = "ProtocolError";
    // No request has unique 0 (that is a notification's), so there is nothing to answer.
    this.unique = context?.unique === 0n ? undefined : context?.unique;
    this.opcode = context?.opcode;
  }
}

// ---- versions, opcodes, flags ----------------------------------------------

export const fuseKernelVersion = 7;
/** The minor we implement and answer INIT with. */
export const fuseKernelMinorVersion = 38;
/** The oldest negotiated minor whose struct layouts the decoder matches. */
export const fuseKernelMinorVersionMin = 23;
export const fuseRootId = 1;

/** Every opcode of fuse.h 7.38, plus the two later ones marked. */
export enum Opcode {
  LOOKUP = 1,
  FORGET = 2,
  GETATTR = 3,
  SETATTR = 4,
  READLINK = 5,
  SYMLINK = 6,
  MKNOD = 8,
  MKDIR = 9,
  UNLINK = 10,
  RMDIR = 11,
  RENAME = 12,
  LINK = 13,
  OPEN = 14,
  READ = 15,
  WRITE = 16,
  STATFS = 17,
  RELEASE = 18,
  FSYNC = 20,
  SETXATTR = 21,
  GETXATTR = 22,
  LISTXATTR = 23,
  REMOVEXATTR = 24,
  FLUSH = 25,
  INIT = 26,
  OPENDIR = 27,
  READDIR = 28,
  RELEASEDIR = 29,
  FSYNCDIR = 30,
  GETLK = 31,
  SETLK = 32,
  SETLKW = 33,
  ACCESS = 34,
  CREATE = 35,
  INTERRUPT = 36,
  BMAP = 37,
  DESTROY = 38,
  IOCTL = 39,
  POLL = 40,
  NOTIFY_REPLY = 41,
  BATCH_FORGET = 42,
  FALLOCATE = 43,
  READDIRPLUS = 44,
  RENAME2 = 45,
  LSEEK = 46,
  COPY_FILE_RANGE = 47,
  SETUPMAPPING = 48,
  REMOVEMAPPING = 49,
  SYNCFS = 50,
  TMPFILE = 51,
  /** 7.39, not in this header; only sent when the negotiated minor is at least 39. */
  STATX = 52,
  /** 7.45, not in this header; only sent when the negotiated minor is at least 45. */
  COPY_FILE_RANGE_64 = 53,
  CUSE_INIT = 4096,
  /** Reserved: CUSE_INIT byte-swapped, i.e. a kernel of the other endianness. */
  CUSE_INIT_BSWAP_RESERVED = 1048576,
  /** Reserved: FUSE_INIT byte-swapped (FUSE_INIT << 24). */
  INIT_BSWAP_RESERVED = 436207616,
}

const knownOpcodes: ReadonlySet<number> = new Set(Object.values(Opcode).filter((v): v is number => typeof v === "number"));

/** "LOOKUP", "READDIRPLUS", ...; "UNKNOWN_<n>" for a number fuse.h does not name. */
export function opcodeName(op: number): string {
  return knownOpcodes.has(op) ? Opcode[op]! : `UNKNOWN_${op}`;
}

/**
 * FORGET and BATCH_FORGET take no reply; nor does NOTIFY_REPLY. INTERRUPT
 * needs none: answer it only with EAGAIN (the original request is not seen
 * yet, requeue the interrupt) or ENOSYS (never send interrupts again).
 */
export function expectsReply(op: number): boolean {
  return op !== Opcode.FORGET && op !== Opcode.BATCH_FORGET && op !== Opcode.NOTIFY_REPLY && op !== Opcode.INTERRUPT;
}

/**
 * INIT flags as one 64-bit set: bits 0..31 travel in `flags`, bits 32..63 in
 * `flags2` (7.36), which the kernel reads only when FUSE_INIT_EXT is set in
 * `flags`.
 */
export const initFlag = {
  asyncRead: 1n << 0n,
  posixLocks: 1n << 1n,
  fileOps: 1n << 2n,
  atomicOTrunc: 1n << 3n,
  exportSupport: 1n << 4n,
  bigWrites: 1n << 5n,
  dontMask: 1n << 6n,
  spliceWrite: 1n << 7n,
  spliceMove: 1n << 8n,
  spliceRead: 1n << 9n,
  flockLocks: 1n << 10n,
  hasIoctlDir: 1n << 11n,
  autoInvalData: 1n << 12n,
  doReaddirplus: 1n << 13n,
  readdirplusAuto: 1n << 14n,
  asyncDio: 1n << 15n,
  writebackCache: 1n << 16n,
  noOpenSupport: 1n << 17n,
  parallelDirops: 1n << 18n,
  handleKillpriv: 1n << 19n,
  posixAcl: 1n << 20n,
  abortError: 1n << 21n,
  maxPages: 1n << 22n,
  cacheSymlinks: 1n << 23n,
  noOpendirSupport: 1n << 24n,
  explicitInvalData: 1n << 25n,
  mapAlignment: 1n << 26n,
  submounts: 1n << 27n,
  handleKillprivV2: 1n << 28n,
  setxattrExt: 1n << 29n,
  initExt: 1n << 30n,
  initReserved: 1n << 31n,
  securityCtx: 1n << 32n,
  hasInodeDax: 1n << 33n,
  /** Upstream lists it under 7.38, but this machine's 7.38 header lacks it. */
  createSuppGroup: 1n << 34n,
  hasExpireOnly: 1n << 35n,
  /** 7.39, not in this header (first named FUSE_DIRECT_IO_RELAX). */
  directIoAllowMmap: 1n << 36n,
  /** 7.40, not in this header. */
  passthrough: 1n << 37n,
  /** 7.40, not in this header. */
  noExportSupport: 1n << 38n,
  /** 7.40, not in this header: resent requests have bit 63 of unique set. */
  hasResend: 1n << 39n,
  /** 7.41, not in this header. */
  allowIdmap: 1n << 40n,
  /** 7.42, not in this header. */
  overIoUring: 1n << 41n,
  /** 7.43, not in this header. */
  requestTimeout: 1n << 42n,
} as const;

/** fuse_setattr_in.valid: which fields of a SETATTR to apply. */
export const fattr = {
  mode: 1 << 0,
  uid: 1 << 1,
  gid: 1 << 2,
  size: 1 << 3,
  atime: 1 << 4,
  mtime: 1 << 5,
  fh: 1 << 6,
  atimeNow: 1 << 7,
  mtimeNow: 1 << 8,
  lockowner: 1 << 9,
  ctime: 1 << 10,
  killSuidgid: 1 << 11,
} as const;

/** fuse_open_out.open_flags (FOPEN_*). */
export const fopen = {
  directIo: 1 << 0,
  keepCache: 1 << 1,
  nonseekable: 1 << 2,
  cacheDir: 1 << 3,
  stream: 1 << 4,
  noflush: 1 << 5,
  parallelDirectWrites: 1 << 6,
  /** 7.40, not in this header. */
  passthrough: 1 << 7,
} as const;

/** fuse_open_in.open_flags and fuse_create_in.open_flags (FUSE_OPEN_*). */
export const openInFlag = { killSuidgid: 1 << 0 } as const;

/** fuse_write_in.write_flags: a delayed write from the page cache, its fh guessed. */
export const writeCache = 1 << 0;
/** fuse_write_in.write_flags: lock_owner is valid. */
export const writeLockowner = 1 << 1;
/** fuse_write_in.write_flags: clear suid and sgid (FUSE_WRITE_KILL_PRIV is an alias). */
export const writeKillSuidgid = 1 << 2;
/** The same three bits as one object. */
export const writeFlag = { cache: writeCache, lockowner: writeLockowner, killSuidgid: writeKillSuidgid } as const;
/** fuse_open_in.open_flags: clear suid and sgid if the file is executable (O_TRUNC opens). */
export const openKillSuidgid = openInFlag.killSuidgid;
/** fuse_read_in.read_flags: lock_owner is valid. */
export const readLockowner = 1 << 1;
/** fuse_getattr_in.getattr_flags: fh is valid. */
export const getattrFh = 1 << 0;
/** fuse_fsync_in.fsync_flags: data only (fdatasync). */
export const fsyncFdatasync = 1 << 0;

/** fuse_release_in.release_flags. */
export const releaseFlag = { flush: 1 << 0, flockUnlock: 1 << 1 } as const;
/** fuse_lk_in.lk_flags. */
export const lkFlag = { flock: 1 << 0 } as const;
/** fuse_setxattr_in.setxattr_flags (with FUSE_SETXATTR_EXT only). */
export const setxattrFlag = { aclKillSgid: 1 << 0 } as const;
/** fuse_attr.flags. */
export const attrFlag = { submount: 1 << 0, dax: 1 << 1 } as const;
/** fuse_notify_inval_entry_out.flags: FUSE_EXPIRE_ONLY, needs initFlag.hasExpireOnly. */
export const invalEntryExpireOnly = 1 << 0;
/** RENAME2 flags (linux/fs.h; fuse.h passes renameat2's flags through). */
export const renameFlag = { noreplace: 1 << 0, exchange: 1 << 1, whiteout: 1 << 2 } as const;
/** FALLOCATE modes (linux/falloc.h; fuse.h passes fallocate's mode through). */
export const fallocMode = {
  keepSize: 0x01,
  punchHole: 0x02,
  noHideStale: 0x04,
  collapseRange: 0x08,
  zeroRange: 0x10,
  insertRange: 0x20,
  unshareRange: 0x40,
} as const;
/** LSEEK whence: the kernel sends only these two (SEEK_SET/CUR/END stay in the kernel). */
export const seekWhence = { data: 3, hole: 4 } as const;

/** Notification codes (fuse_out_header.error when unique is 0). */
export const notifyCode = {
  poll: 1,
  invalInode: 2,
  invalEntry: 3,
  store: 4,
  retrieve: 5,
  delete: 6,
  /** 7.40, not in this header. */
  resend: 7,
  /** 7.44, not in this header. */
  incEpoch: 8,
  /** 7.45, not in this header. */
  prune: 9,
} as const;

// ---- limits -----------------------------------------------------------------

/** FUSE_MIN_READ_BUFFER: the kernel refuses a /dev/fuse read into less. */
export const fuseMinReadBufferBytes = 8192;
/** Room past max_write for the headers of a WRITE (libfuse's FUSE_BUFFER_HEADER_SIZE). */
export const requestHeaderRoomBytes = 4096;
/** XATTR_NAME_MAX: the VFS refuses longer xattr names (ERANGE) before FUSE sees them. */
export const xattrNameSizeMaxProtocolBytes = 255;
/** XATTR_SIZE_MAX: the VFS refuses longer xattr values (E2BIG). */
export const xattrValueSizeMaxProtocolBytes = 65536;
/** The kernel refuses a reply whose error is <= -512 (ERESTARTSYS and kin). */
const replyErrnoLimit = 512;
/** A readlink reply fills one page, less the NUL the kernel appends. */
const readlinkTargetSizeMaxBytes = 4095;
/** A 64-bit user offset or length above 2^53 - 1 decodes as this. */
export const offsetBeyondSafe = Number.POSITIVE_INFINITY;

// ---- layouts: offsets derived one from the next ----------------------------

const inHeaderLen = 0;
const inHeaderOpcode = inHeaderLen + 4;
const inHeaderUnique = inHeaderOpcode + 4;
const inHeaderNodeid = inHeaderUnique + 8;
const inHeaderUid = inHeaderNodeid + 8;
const inHeaderGid = inHeaderUid + 4;
const inHeaderPid = inHeaderGid + 4;
const inHeaderTotalExtlen = inHeaderPid + 4;
const inHeaderPadding = inHeaderTotalExtlen + 2;
export const inHeaderBytes = inHeaderPadding + 2;
/** total_extlen counts extensions in units of this. */
const extlenUnitBytes = 8;

const outHeaderLen = 0;
const outHeaderError = outHeaderLen + 4;
const outHeaderUnique = outHeaderError + 4;
export const outHeaderBytes = outHeaderUnique + 8;

const forgetInNlookup = 0;
const forgetInBytes = forgetInNlookup + 8;

const batchForgetInCount = 0;
const batchForgetInDummy = batchForgetInCount + 4;
const batchForgetInBytes = batchForgetInDummy + 4;
const forgetOneNodeid = 0;
const forgetOneNlookup = forgetOneNodeid + 8;
const forgetOneBytes = forgetOneNlookup + 8;

const getattrInFlags = 0;
const getattrInDummy = getattrInFlags + 4;
const getattrInFh = getattrInDummy + 4;
const getattrInBytes = getattrInFh + 8;

const setattrInValid = 0;
const setattrInPadding = setattrInValid + 4;
const setattrInFh = setattrInPadding + 4;
const setattrInSize = setattrInFh + 8;
const setattrInLockOwner = setattrInSize + 8;
const setattrInAtime = setattrInLockOwner + 8;
const setattrInMtime = setattrInAtime + 8;
const setattrInCtime = setattrInMtime + 8;
const setattrInAtimensec = setattrInCtime + 8;
const setattrInMtimensec = setattrInAtimensec + 4;
const setattrInCtimensec = setattrInMtimensec + 4;
const setattrInMode = setattrInCtimensec + 4;
const setattrInUnused4 = setattrInMode + 4;
const setattrInUid = setattrInUnused4 + 4;
const setattrInGid = setattrInUid + 4;
const setattrInUnused5 = setattrInGid + 4;
const setattrInBytes = setattrInUnused5 + 4;

const mknodInMode = 0;
const mknodInRdev = mknodInMode + 4;
const mknodInUmask = mknodInRdev + 4;
const mknodInPadding = mknodInUmask + 4;
const mknodInBytes = mknodInPadding + 4;

const mkdirInMode = 0;
const mkdirInUmask = mkdirInMode + 4;
const mkdirInBytes = mkdirInUmask + 4;

const renameInNewdir = 0;
const renameInBytes = renameInNewdir + 8;

const rename2InNewdir = 0;
const rename2InFlags = rename2InNewdir + 8;
const rename2InPadding = rename2InFlags + 4;
const rename2InBytes = rename2InPadding + 4;

const linkInOldnodeid = 0;
const linkInBytes = linkInOldnodeid + 8;

const openInFlags = 0;
const openInOpenFlags = openInFlags + 4;
const openInBytes = openInOpenFlags + 4;

const createInFlags = 0;
const createInMode = createInFlags + 4;
const createInUmask = createInMode + 4;
const createInOpenFlags = createInUmask + 4;
const createInBytes = createInOpenFlags + 4;

/** fuse_read_in and fuse_write_in share one layout; field 20 is read_flags or write_flags. */
const rwInFh = 0;
const rwInOffset = rwInFh + 8;
const rwInSize = rwInOffset + 8;
const rwInIoFlags = rwInSize + 4;
const rwInLockOwner = rwInIoFlags + 4;
const rwInFlags = rwInLockOwner + 8;
const rwInPadding = rwInFlags + 4;
const rwInBytes = rwInPadding + 4;

const releaseInFh = 0;
const releaseInFlags = releaseInFh + 8;
const releaseInReleaseFlags = releaseInFlags + 4;
const releaseInLockOwner = releaseInReleaseFlags + 4;
const releaseInBytes = releaseInLockOwner + 8;

const flushInFh = 0;
const flushInUnused = flushInFh + 8;
const flushInPadding = flushInUnused + 4;
const flushInLockOwner = flushInPadding + 4;
const flushInBytes = flushInLockOwner + 8;

const fsyncInFh = 0;
const fsyncInFsyncFlags = fsyncInFh + 8;
const fsyncInPadding = fsyncInFsyncFlags + 4;
const fsyncInBytes = fsyncInPadding + 4;

const setxattrInSize = 0;
const setxattrInFlags = setxattrInSize + 4;
/** FUSE_COMPAT_SETXATTR_IN_SIZE: the struct ends here unless FUSE_SETXATTR_EXT. */
const setxattrInCompatBytes = setxattrInFlags + 4;
const setxattrInSetxattrFlags = setxattrInCompatBytes;
const setxattrInPadding = setxattrInSetxattrFlags + 4;
const setxattrInBytes = setxattrInPadding + 4;

const getxattrInSize = 0;
const getxattrInPadding = getxattrInSize + 4;
const getxattrInBytes = getxattrInPadding + 4;

const accessInMask = 0;
const accessInPadding = accessInMask + 4;
const accessInBytes = accessInPadding + 4;

const initInMajor = 0;
const initInMinor = initInMajor + 4;
const initInMaxReadahead = initInMinor + 4;
const initInFlags = initInMaxReadahead + 4;
/** The 7.6..7.35 fuse_init_in ends here. */
const initInCompatBytes = initInFlags + 4;
const initInFlags2 = initInCompatBytes;
const initInUnused = initInFlags2 + 4;
const initInBytes = initInUnused + 11 * 4;

const interruptInUnique = 0;
const interruptInBytes = interruptInUnique + 8;

const fallocateInFh = 0;
const fallocateInOffset = fallocateInFh + 8;
const fallocateInLength = fallocateInOffset + 8;
const fallocateInMode = fallocateInLength + 8;
const fallocateInPadding = fallocateInMode + 4;
const fallocateInBytes = fallocateInPadding + 4;

const lseekInFh = 0;
const lseekInOffset = lseekInFh + 8;
const lseekInWhence = lseekInOffset + 8;
const lseekInPadding = lseekInWhence + 4;
const lseekInBytes = lseekInPadding + 4;

const copyInFhIn = 0;
const copyInOffIn = copyInFhIn + 8;
const copyInNodeidOut = copyInOffIn + 8;
const copyInFhOut = copyInNodeidOut + 8;
const copyInOffOut = copyInFhOut + 8;
const copyInLen = copyInOffOut + 8;
const copyInFlags = copyInLen + 8;
const copyInBytes = copyInFlags + 8;

const attrIno = 0;
const attrSize = attrIno + 8;
const attrBlocks = attrSize + 8;
const attrAtime = attrBlocks + 8;
const attrMtime = attrAtime + 8;
const attrCtime = attrMtime + 8;
const attrAtimensec = attrCtime + 8;
const attrMtimensec = attrAtimensec + 4;
const attrCtimensec = attrMtimensec + 4;
const attrMode = attrCtimensec + 4;
const attrNlink = attrMode + 4;
const attrUid = attrNlink + 4;
const attrGid = attrUid + 4;
const attrRdev = attrGid + 4;
const attrBlksize = attrRdev + 4;
const attrFlags = attrBlksize + 4;
const attrBytes = attrFlags + 4;

const entryOutNodeid = 0;
const entryOutGeneration = entryOutNodeid + 8;
const entryOutEntryValid = entryOutGeneration + 8;
const entryOutAttrValid = entryOutEntryValid + 8;
const entryOutEntryValidNsec = entryOutAttrValid + 8;
const entryOutAttrValidNsec = entryOutEntryValidNsec + 4;
const entryOutAttr = entryOutAttrValidNsec + 4;
const entryOutBytes = entryOutAttr + attrBytes;

const attrOutAttrValid = 0;
const attrOutAttrValidNsec = attrOutAttrValid + 8;
const attrOutDummy = attrOutAttrValidNsec + 4;
const attrOutAttr = attrOutDummy + 4;
const attrOutBytes = attrOutAttr + attrBytes;

const openOutFh = 0;
const openOutOpenFlags = openOutFh + 8;
const openOutPadding = openOutOpenFlags + 4;
const openOutBytes = openOutPadding + 4;

const writeOutSize = 0;
const writeOutPadding = writeOutSize + 4;
const writeOutBytes = writeOutPadding + 4;
/** fuse_copy_file_range_out (8): 0 u64 bytes_copied. */
const copiedOutBytesCopied = 0;
const copiedOutBytes = copiedOutBytesCopied + 8;

const statfsBlocks = 0;
const statfsBfree = statfsBlocks + 8;
const statfsBavail = statfsBfree + 8;
const statfsFiles = statfsBavail + 8;
const statfsFfree = statfsFiles + 8;
const statfsBsize = statfsFfree + 8;
const statfsNamelen = statfsBsize + 4;
const statfsFrsize = statfsNamelen + 4;
const statfsPadding = statfsFrsize + 4;
const statfsSpare = statfsPadding + 4;
const statfsBytes = statfsSpare + 6 * 4;

const getxattrOutSize = 0;
const getxattrOutPadding = getxattrOutSize + 4;
const getxattrOutBytes = getxattrOutPadding + 4;

const lseekOutOffset = 0;
const lseekOutBytes = lseekOutOffset + 8;

const initOutMajor = 0;
const initOutMinor = initOutMajor + 4;
const initOutMaxReadahead = initOutMinor + 4;
const initOutFlags = initOutMaxReadahead + 4;
const initOutMaxBackground = initOutFlags + 4;
const initOutCongestionThreshold = initOutMaxBackground + 2;
const initOutMaxWrite = initOutCongestionThreshold + 2;
const initOutTimeGran = initOutMaxWrite + 4;
const initOutMaxPages = initOutTimeGran + 4;
const initOutMapAlignment = initOutMaxPages + 2;
const initOutFlags2 = initOutMapAlignment + 2;
const initOutUnused = initOutFlags2 + 4;
const initOutBytes = initOutUnused + 7 * 4;

const direntIno = 0;
const direntOff = direntIno + 8;
const direntNamelen = direntOff + 8;
const direntType = direntNamelen + 4;
/** FUSE_NAME_OFFSET. */
const direntName = direntType + 4;
/** FUSE_NAME_OFFSET_DIRENTPLUS. */
const direntplusName = entryOutBytes + direntName;
/** FUSE_REC_ALIGN: dirent records are padded to a multiple of 8 bytes. */
const direntAlignBytes = 8;

const invalInodeIno = 0;
const invalInodeOff = invalInodeIno + 8;
const invalInodeLen = invalInodeOff + 8;
const invalInodeBytes = invalInodeLen + 8;

const invalEntryParent = 0;
const invalEntryNamelen = invalEntryParent + 8;
const invalEntryFlags = invalEntryNamelen + 4;
const invalEntryBytes = invalEntryFlags + 4;

const deleteParent = 0;
const deleteChild = deleteParent + 8;
const deleteNamelen = deleteChild + 8;
const deletePadding = deleteNamelen + 4;
const deleteBytes = deletePadding + 4;

// The sizes fuse.h gives (sizeof and its FUSE_COMPAT_* constants), checked once at load.
assert(inHeaderBytes === 40, "fuse_in_header is 40 bytes");
assert(outHeaderBytes === 16, "fuse_out_header is 16 bytes");
assert(setattrInBytes === 88, "fuse_setattr_in is 88 bytes");
assert(rwInBytes === 40, "fuse_read_in and fuse_write_in are 40 bytes");
assert(setxattrInCompatBytes === 8, "FUSE_COMPAT_SETXATTR_IN_SIZE is 8");
assert(initInBytes === 64, "fuse_init_in is 64 bytes");
assert(copyInBytes === 56, "fuse_copy_file_range_in is 56 bytes");
assert(attrBytes === 88, "fuse_attr is 88 bytes");
assert(entryOutBytes === 128, "fuse_entry_out is 128 bytes");
assert(attrOutBytes === 104, "fuse_attr_out is 104 bytes");
assert(statfsBytes === 80, "fuse_kstatfs is 80 bytes");
assert(initOutBytes === 64, "fuse_init_out is 64 bytes");
assert(direntName === 24, "FUSE_NAME_OFFSET is 24");
assert(direntplusName === 152, "FUSE_NAME_OFFSET_DIRENTPLUS is 152");
assert(requestHeaderRoomBytes >= inHeaderBytes + rwInBytes, "a WRITE's headers fit the header room");

// ---- decoding requests -----------------------------------------------------

export interface InHeader {
  len: number;
  opcode: number;
  /** Only echoed back in the reply, so never converted. */
  unique: bigint;
  nodeid: number;
  uid: number;
  gid: number;
  pid: number;
  /** Extensions after the body, in 8-byte units. */
  totalExtlen: number;
}

export interface DecodeOptions {
  /** FUSE_SETXATTR_EXT was negotiated: fuse_setxattr_in is 16 bytes, not 8. */
  setxattrExt: boolean;
}

/** The decode options that follow from the INIT flags both sides agreed on. */
export function decodeOptionsFromInit(negotiatedFlags: bigint): DecodeOptions {
  return { setxattrExt: (negotiatedFlags & initFlag.setxattrExt) !== 0n };
}

interface RequestBase<O> {
  op: O;
  header: InHeader;
}

/** One union member per opcode for a shape several opcodes share, so `case` narrows to the opcode. */
type PerOpcode<O extends Opcode, Fields> = O extends Opcode ? RequestBase<O> & Fields : never;

/**
 * Requests that carry directory-entry names. `nameTooLong` is set when a name
 * (either name, for RENAME) is longer than NAME_MAX: the kernel legitimately
 * sends up to FUSE_NAME_MAX (1024; later kernels PATH_MAX - 1) because it
 * leaves the limit to the filesystem, so this is a request to answer with
 * ENAMETOOLONG, not a protocol error. Names are never empty and never hold
 * '/' (the VFS guarantees both; a request that breaks that is a ProtocolError).
 */
interface NamedRequest {
  nameTooLong: boolean;
}

interface NameFields extends NamedRequest {
  name: Buffer;
}
export type LookupRequest = PerOpcode<Opcode.LOOKUP, NameFields>;
export type UnlinkRequest = PerOpcode<Opcode.UNLINK, NameFields>;
export type RmdirRequest = PerOpcode<Opcode.RMDIR, NameFields>;
export type NameRequest = LookupRequest | UnlinkRequest | RmdirRequest;
export interface ForgetRequest extends RequestBase<Opcode.FORGET> {
  nlookup: number;
}
export interface ForgetOne {
  nodeid: number;
  nlookup: number;
}
export interface BatchForgetRequest extends RequestBase<Opcode.BATCH_FORGET> {
  forgets: ForgetOne[];
}
export interface GetattrRequest extends RequestBase<Opcode.GETATTR> {
  getattrFlags: number;
  /** Valid only with `getattrFh` in getattrFlags (otherwise 0). */
  fh: number;
}
export interface SetattrRequest extends RequestBase<Opcode.SETATTR> {
  /** `fattr` bits: which of the fields below to apply. */
  valid: number;
  fh: number;
  /** Exact, or `offsetBeyondSafe`. */
  size: number;
  lockOwner: bigint;
  /** Seconds, signed: u64 on the wire, but times before 1970 are negative. */
  atime: bigint;
  mtime: bigint;
  ctime: bigint;
  atimensec: number;
  mtimensec: number;
  ctimensec: number;
  mode: number;
  uid: number;
  gid: number;
}
export type EmptyRequest = PerOpcode<Opcode.READLINK | Opcode.STATFS | Opcode.DESTROY, {}>;
export interface SymlinkRequest extends RequestBase<Opcode.SYMLINK>, NamedRequest {
  name: Buffer;
  /** Any bytes but NUL. */
  target: Buffer;
}
export interface MknodRequest extends RequestBase<Opcode.MKNOD>, NamedRequest {
  mode: number;
  rdev: number;
  umask: number;
  name: Buffer;
}
export interface MkdirRequest extends RequestBase<Opcode.MKDIR>, NamedRequest {
  mode: number;
  umask: number;
  name: Buffer;
}
export interface RenameRequest extends RequestBase<Opcode.RENAME>, NamedRequest {
  newdir: number;
  name: Buffer;
  newname: Buffer;
}
export interface Rename2Request extends RequestBase<Opcode.RENAME2>, NamedRequest {
  newdir: number;
  /** `renameFlag` bits. */
  flags: number;
  name: Buffer;
  newname: Buffer;
}
export interface LinkRequest extends RequestBase<Opcode.LINK>, NamedRequest {
  oldnodeid: number;
  /** The new name, in the directory header.nodeid. */
  name: Buffer;
}
interface OpenFields {
  /** open(2) flags. */
  flags: number;
  /** `openInFlag` bits. */
  openFlags: number;
}
export type OpenRequest = PerOpcode<Opcode.OPEN | Opcode.OPENDIR, OpenFields>;
export interface CreateRequest extends RequestBase<Opcode.CREATE>, NamedRequest {
  flags: number;
  mode: number;
  umask: number;
  openFlags: number;
  name: Buffer;
}
interface ReadFields {
  fh: number;
  /** Exact, or `offsetBeyondSafe` (a user may lseek anywhere, directories too). */
  offset: number;
  size: number;
  readFlags: number;
  lockOwner: bigint;
  flags: number;
}
export type ReadRequest = PerOpcode<Opcode.READ | Opcode.READDIR | Opcode.READDIRPLUS, ReadFields>;
export interface WriteRequest extends RequestBase<Opcode.WRITE> {
  fh: number;
  offset: number;
  size: number;
  writeFlags: number;
  lockOwner: bigint;
  flags: number;
  /** A view into the request buffer; data.length === size. */
  data: Buffer;
}
interface ReleaseFields {
  fh: number;
  flags: number;
  releaseFlags: number;
  lockOwner: bigint;
}
export type ReleaseRequest = PerOpcode<Opcode.RELEASE | Opcode.RELEASEDIR, ReleaseFields>;
export interface FlushRequest extends RequestBase<Opcode.FLUSH> {
  fh: number;
  lockOwner: bigint;
}
interface FsyncFields {
  fh: number;
  fsyncFlags: number;
}
export type FsyncRequest = PerOpcode<Opcode.FSYNC | Opcode.FSYNCDIR, FsyncFields>;
export interface SetxattrRequest extends RequestBase<Opcode.SETXATTR> {
  size: number;
  /** XATTR_CREATE / XATTR_REPLACE. */
  flags: number;
  /** `setxattrFlag` bits; 0 unless FUSE_SETXATTR_EXT. */
  setxattrFlags: number;
  /** Full name with namespace ("user.x"), 1..255 bytes. */
  name: Buffer;
  value: Buffer;
}
export interface GetxattrRequest extends RequestBase<Opcode.GETXATTR> {
  /** 0: answer the value's size with replyGetxattrSize; else the value, or ERANGE. */
  size: number;
  name: Buffer;
}
export interface ListxattrRequest extends RequestBase<Opcode.LISTXATTR> {
  size: number;
}
export interface RemovexattrRequest extends RequestBase<Opcode.REMOVEXATTR> {
  name: Buffer;
}
export interface AccessRequest extends RequestBase<Opcode.ACCESS> {
  mask: number;
}
export interface InterruptRequest extends RequestBase<Opcode.INTERRUPT> {
  interruptUnique: bigint;
}
export interface InitRequest extends RequestBase<Opcode.INIT> {
  major: number;
  minor: number;
  maxReadahead: number;
  /** flags | flags2 << 32 (flags2 only when the kernel set FUSE_INIT_EXT). */
  flags: bigint;
}
export interface FallocateRequest extends RequestBase<Opcode.FALLOCATE> {
  fh: number;
  offset: number;
  length: number;
  /** `fallocMode` bits. */
  mode: number;
}
export interface LseekRequest extends RequestBase<Opcode.LSEEK> {
  fh: number;
  offset: number;
  /** `seekWhence.data` or `.hole`. */
  whence: number;
}
/** COPY_FILE_RANGE answers fuse_write_out (u32 size); COPY_FILE_RANGE_64 (7.45) the same request, answered with a u64. */
export interface CopyFileRangeRequest extends RequestBase<Opcode.COPY_FILE_RANGE | Opcode.COPY_FILE_RANGE_64> {
  fhIn: number;
  offIn: number;
  nodeidOut: number;
  fhOut: number;
  offOut: number;
  len: number;
  /** copy_file_range(2) flags, always 0 today; u64 on the wire. */
  flags: bigint;
}

type DecodedRequest =
  | NameRequest
  | ForgetRequest
  | BatchForgetRequest
  | GetattrRequest
  | SetattrRequest
  | EmptyRequest
  | SymlinkRequest
  | MknodRequest
  | MkdirRequest
  | RenameRequest
  | Rename2Request
  | LinkRequest
  | OpenRequest
  | CreateRequest
  | ReadRequest
  | WriteRequest
  | ReleaseRequest
  | FlushRequest
  | FsyncRequest
  | SetxattrRequest
  | GetxattrRequest
  | ListxattrRequest
  | RemovexattrRequest
  | AccessRequest
  | InterruptRequest
  | InitRequest
  | FallocateRequest
  | LseekRequest
  | CopyFileRangeRequest;

/** Opcodes fuse.h names whose bodies we do not decode (GETLK, IOCTL, STATX, ...). */
export type UnsupportedOpcode = Exclude<Opcode, DecodedRequest["op"]>;
/**
 * The `op` of a request whose opcode fuse.h does not name (a later kernel's);
 * its number is in header.opcode. No opcode is 0, and a literal (not `number`)
 * keeps `switch (req.op)` narrowing the union.
 */
export const opcodeUnknown = 0;
export type UnknownOpcode = typeof opcodeUnknown;

/** Answer ENOSYS (the kernel then stops sending most of these). */
export interface UnsupportedRequest extends RequestBase<UnsupportedOpcode | UnknownOpcode> {}

export type Request = DecodedRequest | UnsupportedRequest;

/**
 * Decodes the request in buf[0, length), where `length` is what the read of
 * /dev/fuse returned. Names, the link target, xattr values and write data are
 * views into `buf`: copy them before reusing the buffer for the next read.
 */
export function decodeRequest(buf: Buffer, length: number, options: DecodeOptions): Request {
  assert(Number.isSafeInteger(length), "request length is an integer");
  assert(length >= 0, "request length is not negative");
  assert(length <= buf.length, "request length fits the buffer read into");
  const header = decodeInHeader(buf, length);
  const decode = bodyDecoders.get(header.opcode);
  if (decode === undefined) {
    return { op: knownOpcodes.has(header.opcode) ? (header.opcode as UnsupportedOpcode) : opcodeUnknown, header };
  }
  const bodyEnd = header.len - header.totalExtlen * extlenUnitBytes;
  return decode(new Body(buf, inHeaderBytes, bodyEnd, header), header, options);
}

/**
 * The unique of whatever was read, if it reached that far: for answering EIO
 * to a request decodeRequest refused (ProtocolError.unique has the same,
 * once the header's length checks passed).
 */
export function uniqueOf(buf: Buffer, length: number): bigint | null {
  if (length < inHeaderUnique + 8) return null;
  const unique = buf.readBigUInt64LE(inHeaderUnique);
  return unique === 0n ? null : unique;
}

function decodeInHeader(buf: Buffer, length: number): InHeader {
  if (length < inHeaderBytes) {
    throw new ProtocolError("request_header_short", `read ${length} bytes, less than the ${inHeaderBytes}-byte header`);
  }
  const context = { unique: buf.readBigUInt64LE(inHeaderUnique), opcode: buf.readUInt32LE(inHeaderOpcode) };
  const len = buf.readUInt32LE(inHeaderLen);
  if (len !== length) {
    throw new ProtocolError("request_len_mismatch", `header len ${len} but ${length} bytes read`, context);
  }
  const nodeid = readSafeU64(buf, inHeaderNodeid);
  if (nodeid === undefined) {
    throw new ProtocolError("request_nodeid_unsafe", "nodeid above 2^53 - 1, which no reply of ours gave", context);
  }
  const totalExtlen = buf.readUInt16LE(inHeaderTotalExtlen);
  if (totalExtlen * extlenUnitBytes > len - inHeaderBytes) {
    throw new ProtocolError("request_extlen_overflow", `${totalExtlen * extlenUnitBytes} extension bytes exceed the body`, context);
  }
  return {
    len,
    opcode: context.opcode,
    unique: context.unique,
    nodeid,
    uid: buf.readUInt32LE(inHeaderUid),
    gid: buf.readUInt32LE(inHeaderGid),
    pid: buf.readUInt32LE(inHeaderPid),
    totalExtlen,
  };
}

const two32 = 4294967296;
/** The high word of 2^53 - 1. */
const safeHighWordMax = 0x1fffff;

function readSafeU64(buf: Buffer, at: number): number | undefined {
  const high = buf.readUInt32LE(at + 4);
  if (high > safeHighWordMax) return undefined;
  return high * two32 + buf.readUInt32LE(at);
}

/** A NUL-terminated string found in the body, and the body position after its NUL. */
interface CString {
  bytes: Buffer;
  next: number;
}

/**
 * A request body: buf[start, end), extensions excluded. Positions are relative
 * to start. Every read is preceded by `need`, or lies inside a string `cstring`
 * found, so no read can leave the body.
 */
class Body {
  constructor(
    private readonly buf: Buffer,
    private readonly start: number,
    private readonly end: number,
    private readonly header: InHeader,
  ) {}

  get size(): number {
    return this.end - this.start;
  }

  fail(detail: string, message: string): never {
    throw new ProtocolError(detail, `${opcodeName(this.header.opcode)}: ${message}`, {
      unique: this.header.unique,
      opcode: this.header.opcode,
    });
  }

  need(structBytes: number, struct: string): void {
    if (this.size < structBytes) this.fail("body_short", `body of ${this.size} bytes, ${struct} needs ${structBytes}`);
  }

  u32(at: number): number {
    return this.buf.readUInt32LE(this.start + at);
  }

  u64(at: number): bigint {
    return this.buf.readBigUInt64LE(this.start + at);
  }

  i64(at: number): bigint {
    return this.buf.readBigInt64LE(this.start + at);
  }

  /** A 64-bit number we handed the kernel (nodeid, fh, nlookup): a safe integer or a ProtocolError. */
  id(at: number, field: string): number {
    const value = readSafeU64(this.buf, this.start + at);
    if (value === undefined) this.fail("id_unsafe", `${field} above 2^53 - 1, which no reply of ours gave`);
    return value;
  }

  /** A 64-bit offset or length a user chose: exact, or offsetBeyondSafe. */
  range(at: number): number {
    return readSafeU64(this.buf, this.start + at) ?? offsetBeyondSafe;
  }

  cstring(at: number, field: string): CString {
    const nul = this.buf.subarray(this.start + at, this.end).indexOf(0);
    if (nul < 0) this.fail("string_unterminated", `${field} has no NUL inside the body`);
    return { bytes: this.buf.subarray(this.start + at, this.start + at + nul), next: at + nul + 1 };
  }

  rest(at: number): Buffer {
    return this.buf.subarray(this.start + at, this.end);
  }

  /** The last field ended at `at`: a variable tail must fill the body exactly. */
  done(at: number): void {
    if (at !== this.size) this.fail("body_trailing_bytes", `${this.size - at} bytes after the last field`);
  }
}

type Decoder = (body: Body, header: InHeader, options: DecodeOptions) => Request;

/** A directory-entry name: non-empty and free of '/'. Its length is checked by the caller (nameTooLong). */
function entryName(body: Body, at: number, field: string): CString {
  const name = body.cstring(at, field);
  if (name.bytes.length === 0) body.fail("name_empty", `${field} is empty`);
  if (name.bytes.includes(0x2f)) body.fail("name_slash", `${field} contains '/'`);
  return name;
}

function xattrName(body: Body, at: number): CString {
  const name = body.cstring(at, "xattr name");
  if (name.bytes.length === 0) body.fail("xattr_name_empty", "xattr name is empty");
  if (name.bytes.length > xattrNameSizeMaxProtocolBytes) {
    body.fail("xattr_name_too_long", `xattr name of ${name.bytes.length} bytes, XATTR_NAME_MAX is ${xattrNameSizeMaxProtocolBytes}`);
  }
  return name;
}

function tooLong(...names: Buffer[]): boolean {
  return names.some((name) => name.length > nameSizeMaxBytes);
}

function decodeName(body: Body, header: InHeader): Request {
  const name = entryName(body, 0, "name");
  body.done(name.next);
  return { op: header.opcode as NameRequest["op"], header, name: name.bytes, nameTooLong: tooLong(name.bytes) };
}

function decodeForget(body: Body, header: InHeader): Request {
  body.need(forgetInBytes, "fuse_forget_in");
  return { op: Opcode.FORGET, header, nlookup: body.id(forgetInNlookup, "nlookup") };
}

function decodeBatchForget(body: Body, header: InHeader): Request {
  body.need(batchForgetInBytes, "fuse_batch_forget_in");
  const count = body.u32(batchForgetInCount);
  const listBytes = body.size - batchForgetInBytes;
  if (count * forgetOneBytes !== listBytes) {
    body.fail("batch_forget_count", `count ${count} needs ${count * forgetOneBytes} bytes, body has ${listBytes}`);
  }
  const forgets: ForgetOne[] = [];
  for (let i = 0, at = batchForgetInBytes; i < count; i++, at += forgetOneBytes) {
    forgets.push({ nodeid: body.id(at + forgetOneNodeid, "nodeid"), nlookup: body.id(at + forgetOneNlookup, "nlookup") });
  }
  return { op: Opcode.BATCH_FORGET, header, forgets };
}

function decodeGetattr(body: Body, header: InHeader): Request {
  body.need(getattrInBytes, "fuse_getattr_in");
  return { op: Opcode.GETATTR, header, getattrFlags: body.u32(getattrInFlags), fh: body.id(getattrInFh, "fh") };
}

function decodeSetattr(body: Body, header: InHeader): Request {
  body.need(setattrInBytes, "fuse_setattr_in");
  return {
    op: Opcode.SETATTR,
    header,
    valid: body.u32(setattrInValid),
    fh: body.id(setattrInFh, "fh"),
    size: body.range(setattrInSize),
    lockOwner: body.u64(setattrInLockOwner),
    atime: body.i64(setattrInAtime),
    mtime: body.i64(setattrInMtime),
    ctime: body.i64(setattrInCtime),
    atimensec: body.u32(setattrInAtimensec),
    mtimensec: body.u32(setattrInMtimensec),
    ctimensec: body.u32(setattrInCtimensec),
    mode: body.u32(setattrInMode),
    uid: body.u32(setattrInUid),
    gid: body.u32(setattrInGid),
  };
}

function decodeEmpty(_body: Body, header: InHeader): Request {
  return { op: header.opcode as EmptyRequest["op"], header };
}

function decodeSymlink(body: Body, header: InHeader): Request {
  const name = entryName(body, 0, "name");
  const target = body.cstring(name.next, "target");
  body.done(target.next);
  return { op: Opcode.SYMLINK, header, name: name.bytes, target: target.bytes, nameTooLong: tooLong(name.bytes) };
}

function decodeMknod(body: Body, header: InHeader): Request {
  body.need(mknodInBytes, "fuse_mknod_in");
  const name = entryName(body, mknodInBytes, "name");
  body.done(name.next);
  return {
    op: Opcode.MKNOD,
    header,
    mode: body.u32(mknodInMode),
    rdev: body.u32(mknodInRdev),
    umask: body.u32(mknodInUmask),
    name: name.bytes,
    nameTooLong: tooLong(name.bytes),
  };
}

function decodeMkdir(body: Body, header: InHeader): Request {
  body.need(mkdirInBytes, "fuse_mkdir_in");
  const name = entryName(body, mkdirInBytes, "name");
  body.done(name.next);
  return {
    op: Opcode.MKDIR,
    header,
    mode: body.u32(mkdirInMode),
    umask: body.u32(mkdirInUmask),
    name: name.bytes,
    nameTooLong: tooLong(name.bytes),
  };
}

/** Two names after a struct: RENAME and RENAME2. */
function renameNames(body: Body, at: number): { name: Buffer; newname: Buffer; nameTooLong: boolean } {
  const name = entryName(body, at, "oldname");
  const newname = entryName(body, name.next, "newname");
  body.done(newname.next);
  return { name: name.bytes, newname: newname.bytes, nameTooLong: tooLong(name.bytes, newname.bytes) };
}

function decodeRename(body: Body, header: InHeader): Request {
  body.need(renameInBytes, "fuse_rename_in");
  return { op: Opcode.RENAME, header, newdir: body.id(renameInNewdir, "newdir"), ...renameNames(body, renameInBytes) };
}

function decodeRename2(body: Body, header: InHeader): Request {
  body.need(rename2InBytes, "fuse_rename2_in");
  return {
    op: Opcode.RENAME2,
    header,
    newdir: body.id(rename2InNewdir, "newdir"),
    flags: body.u32(rename2InFlags),
    ...renameNames(body, rename2InBytes),
  };
}

function decodeLink(body: Body, header: InHeader): Request {
  body.need(linkInBytes, "fuse_link_in");
  const name = entryName(body, linkInBytes, "newname");
  body.done(name.next);
  return { op: Opcode.LINK, header, oldnodeid: body.id(linkInOldnodeid, "oldnodeid"), name: name.bytes, nameTooLong: tooLong(name.bytes) };
}

function decodeOpen(body: Body, header: InHeader): Request {
  body.need(openInBytes, "fuse_open_in");
  return { op: header.opcode as OpenRequest["op"], header, flags: body.u32(openInFlags), openFlags: body.u32(openInOpenFlags) };
}

function decodeCreate(body: Body, header: InHeader): Request {
  body.need(createInBytes, "fuse_create_in");
  const name = entryName(body, createInBytes, "name");
  body.done(name.next);
  return {
    op: Opcode.CREATE,
    header,
    flags: body.u32(createInFlags),
    mode: body.u32(createInMode),
    umask: body.u32(createInUmask),
    openFlags: body.u32(createInOpenFlags),
    name: name.bytes,
    nameTooLong: tooLong(name.bytes),
  };
}

function decodeRead(body: Body, header: InHeader): Request {
  body.need(rwInBytes, "fuse_read_in");
  return {
    op: header.opcode as ReadRequest["op"],
    header,
    fh: body.id(rwInFh, "fh"),
    offset: body.range(rwInOffset),
    size: body.u32(rwInSize),
    readFlags: body.u32(rwInIoFlags),
    lockOwner: body.u64(rwInLockOwner),
    flags: body.u32(rwInFlags),
  };
}

function decodeWrite(body: Body, header: InHeader): Request {
  body.need(rwInBytes, "fuse_write_in");
  const size = body.u32(rwInSize);
  const data = body.rest(rwInBytes);
  if (data.length !== size) body.fail("write_size_mismatch", `size ${size} but ${data.length} bytes of data`);
  return {
    op: Opcode.WRITE,
    header,
    fh: body.id(rwInFh, "fh"),
    offset: body.range(rwInOffset),
    size,
    writeFlags: body.u32(rwInIoFlags),
    lockOwner: body.u64(rwInLockOwner),
    flags: body.u32(rwInFlags),
    data,
  };
}

function decodeRelease(body: Body, header: InHeader): Request {
  body.need(releaseInBytes, "fuse_release_in");
  return {
    op: header.opcode as ReleaseRequest["op"],
    header,
    fh: body.id(releaseInFh, "fh"),
    flags: body.u32(releaseInFlags),
    releaseFlags: body.u32(releaseInReleaseFlags),
    lockOwner: body.u64(releaseInLockOwner),
  };
}

function decodeFlush(body: Body, header: InHeader): Request {
  body.need(flushInBytes, "fuse_flush_in");
  return { op: Opcode.FLUSH, header, fh: body.id(flushInFh, "fh"), lockOwner: body.u64(flushInLockOwner) };
}

function decodeFsync(body: Body, header: InHeader): Request {
  body.need(fsyncInBytes, "fuse_fsync_in");
  return { op: header.opcode as FsyncRequest["op"], header, fh: body.id(fsyncInFh, "fh"), fsyncFlags: body.u32(fsyncInFsyncFlags) };
}

function decodeSetxattr(body: Body, header: InHeader, options: DecodeOptions): Request {
  const structBytes = options.setxattrExt ? setxattrInBytes : setxattrInCompatBytes;
  body.need(structBytes, "fuse_setxattr_in");
  const size = body.u32(setxattrInSize);
  const name = xattrName(body, structBytes);
  const value = body.rest(name.next);
  if (value.length !== size) body.fail("setxattr_size_mismatch", `size ${size} but ${value.length} bytes of value`);
  return {
    op: Opcode.SETXATTR,
    header,
    size,
    flags: body.u32(setxattrInFlags),
    setxattrFlags: options.setxattrExt ? body.u32(setxattrInSetxattrFlags) : 0,
    name: name.bytes,
    value,
  };
}

function decodeGetxattr(body: Body, header: InHeader): Request {
  body.need(getxattrInBytes, "fuse_getxattr_in");
  const name = xattrName(body, getxattrInBytes);
  body.done(name.next);
  return { op: Opcode.GETXATTR, header, size: body.u32(getxattrInSize), name: name.bytes };
}

function decodeListxattr(body: Body, header: InHeader): Request {
  body.need(getxattrInBytes, "fuse_getxattr_in");
  return { op: Opcode.LISTXATTR, header, size: body.u32(getxattrInSize) };
}

function decodeRemovexattr(body: Body, header: InHeader): Request {
  const name = xattrName(body, 0);
  body.done(name.next);
  return { op: Opcode.REMOVEXATTR, header, name: name.bytes };
}

function decodeAccess(body: Body, header: InHeader): Request {
  body.need(accessInBytes, "fuse_access_in");
  return { op: Opcode.ACCESS, header, mask: body.u32(accessInMask) };
}

function decodeInterrupt(body: Body, header: InHeader): Request {
  body.need(interruptInBytes, "fuse_interrupt_in");
  return { op: Opcode.INTERRUPT, header, interruptUnique: body.u64(interruptInUnique) };
}

/** Accepts the 16-byte fuse_init_in of kernels before 7.36; flags2 is read only under FUSE_INIT_EXT. */
function decodeInit(body: Body, header: InHeader): Request {
  body.need(initInCompatBytes, "fuse_init_in (compat)");
  let flags = BigInt(body.u32(initInFlags));
  if ((flags & initFlag.initExt) !== 0n) {
    body.need(initInBytes, "fuse_init_in with FUSE_INIT_EXT");
    flags |= BigInt(body.u32(initInFlags2)) << 32n;
  }
  return {
    op: Opcode.INIT,
    header,
    major: body.u32(initInMajor),
    minor: body.u32(initInMinor),
    maxReadahead: body.u32(initInMaxReadahead),
    flags,
  };
}

function decodeFallocate(body: Body, header: InHeader): Request {
  body.need(fallocateInBytes, "fuse_fallocate_in");
  return {
    op: Opcode.FALLOCATE,
    header,
    fh: body.id(fallocateInFh, "fh"),
    offset: body.range(fallocateInOffset),
    length: body.range(fallocateInLength),
    mode: body.u32(fallocateInMode),
  };
}

function decodeLseek(body: Body, header: InHeader): Request {
  body.need(lseekInBytes, "fuse_lseek_in");
  return { op: Opcode.LSEEK, header, fh: body.id(lseekInFh, "fh"), offset: body.range(lseekInOffset), whence: body.u32(lseekInWhence) };
}

function decodeCopyFileRange(body: Body, header: InHeader): Request {
  body.need(copyInBytes, "fuse_copy_file_range_in");
  return {
    op: header.opcode === Opcode.COPY_FILE_RANGE_64 ? Opcode.COPY_FILE_RANGE_64 : Opcode.COPY_FILE_RANGE,
    header,
    fhIn: body.id(copyInFhIn, "fh_in"),
    offIn: body.range(copyInOffIn),
    nodeidOut: body.id(copyInNodeidOut, "nodeid_out"),
    fhOut: body.id(copyInFhOut, "fh_out"),
    offOut: body.range(copyInOffOut),
    len: body.range(copyInLen),
    flags: body.u64(copyInFlags),
  };
}

/** Opcodes with a decoder; every other opcode decodes as an UnsupportedRequest. */
const bodyDecoders = new Map<number, Decoder>([
  [Opcode.LOOKUP, decodeName],
  [Opcode.UNLINK, decodeName],
  [Opcode.RMDIR, decodeName],
  [Opcode.FORGET, decodeForget],
  [Opcode.BATCH_FORGET, decodeBatchForget],
  [Opcode.GETATTR, decodeGetattr],
  [Opcode.SETATTR, decodeSetattr],
  [Opcode.READLINK, decodeEmpty],
  [Opcode.STATFS, decodeEmpty],
  [Opcode.DESTROY, decodeEmpty],
  [Opcode.SYMLINK, decodeSymlink],
  [Opcode.MKNOD, decodeMknod],
  [Opcode.MKDIR, decodeMkdir],
  [Opcode.RENAME, decodeRename],
  [Opcode.RENAME2, decodeRename2],
  [Opcode.LINK, decodeLink],
  [Opcode.OPEN, decodeOpen],
  [Opcode.OPENDIR, decodeOpen],
  [Opcode.CREATE, decodeCreate],
  [Opcode.READ, decodeRead],
  [Opcode.READDIR, decodeRead],
  [Opcode.READDIRPLUS, decodeRead],
  [Opcode.WRITE, decodeWrite],
  [Opcode.RELEASE, decodeRelease],
  [Opcode.RELEASEDIR, decodeRelease],
  [Opcode.FLUSH, decodeFlush],
  [Opcode.FSYNC, decodeFsync],
  [Opcode.FSYNCDIR, decodeFsync],
  [Opcode.SETXATTR, decodeSetxattr],
  [Opcode.GETXATTR, decodeGetxattr],
  [Opcode.LISTXATTR, decodeListxattr],
  [Opcode.REMOVEXATTR, decodeRemovexattr],
  [Opcode.ACCESS, decodeAccess],
  [Opcode.INTERRUPT, decodeInterrupt],
  [Opcode.INIT, decodeInit],
  [Opcode.FALLOCATE, decodeFallocate],
  [Opcode.LSEEK, decodeLseek],
  [Opcode.COPY_FILE_RANGE, decodeCopyFileRange],
  [Opcode.COPY_FILE_RANGE_64, decodeCopyFileRange],
]);

/** Whether decodeRequest decodes this opcode's body (false: an UnsupportedRequest, answer ENOSYS). */
export function opcodeDecoded(op: number): boolean {
  return bodyDecoders.has(op);
}

/**
 * Bytes to read /dev/fuse into. The kernel refuses a read smaller than
 * max(FUSE_MIN_READ_BUFFER, in_header + write_in + max_write); a SETXATTR
 * (up to XATTR_SIZE_MAX of value) that does not fit is failed with E2BIG
 * by the kernel itself, so the buffer also holds the largest one.
 */
export function requestSizeMax(maxWrite: number): number {
  assert(Number.isSafeInteger(maxWrite), "max_write is an integer");
  assert(maxWrite > 0, "max_write is positive");
  const setxattrMax = inHeaderBytes + setxattrInBytes + xattrNameSizeMaxProtocolBytes + 1 + xattrValueSizeMaxProtocolBytes;
  return Math.max(fuseMinReadBufferBytes, maxWrite + requestHeaderRoomBytes, setxattrMax);
}

// ---- encoding replies -------------------------------------------------------

/** Attributes as the kernel caches them. Times are nanoseconds since the epoch, negative before 1970. */
export interface Attr {
  ino: number;
  size: number;
  /** In 512-byte units. */
  blocks: number;
  atimeNs: bigint;
  mtimeNs: bigint;
  ctimeNs: bigint;
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  rdev: number;
  blksize: number;
  /** `attrFlag` bits. */
  flags?: number;
}

/**
 * A fuse_entry_out: the answer to LOOKUP, MKNOD, MKDIR, SYMLINK, LINK and the
 * entry half of CREATE. The kernel takes one lookup count on `nodeid` for
 * every such reply it accepts (revalidating lookups included), which FORGET
 * later returns. A LOOKUP reply with nodeid 0 is a negative entry: ENOENT,
 * cached for entryValidMs (an ENOENT error reply caches nothing); see
 * `replyNegativeEntry`. Only LOOKUP may use nodeid 0: the kernel fails the
 * others with EIO. FUSE_ROOT_ID's generation must be 0.
 */
export interface Entry {
  nodeid: number;
  generation: number;
  entryValidMs: number;
  attrValidMs: number;
  attr: Attr;
}
/** fuse.h's name for it. */
export type EntryOut = Entry;

export interface OpenOut {
  fh: number;
  /** `fopen` bits. */
  openFlags: number;
}

export interface Statfs {
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  bsize: number;
  namelen: number;
  frsize: number;
}

export interface InitOut {
  major: number;
  minor: number;
  maxReadahead: number;
  /** Split into flags and flags2; a bit above 31 needs initFlag.initExt set too. */
  flags: bigint;
  maxBackground: number;
  congestionThreshold: number;
  maxWrite: number;
  /** Timestamp granularity in ns (1 to 10^9; the kernel ignores 0). */
  timeGran: number;
  maxPages: number;
  /** log2 of the DAX mapping alignment, with initFlag.mapAlignment; default 0. */
  mapAlignment?: number;
}

function assertUnique(unique: bigint): void {
  assert(unique > 0n, "a reply's unique is not 0 (0 is for notifications)");
  assert(unique < 1n << 64n, "unique fits 64 bits");
}

function assertU32(value: number, field: string): void {
  assert(Number.isInteger(value), `${field} is an integer`);
  assert(value >= 0, `${field} is not negative`);
  assert(value <= 0xffffffff, `${field} fits 32 bits`);
}

function assertU16(value: number, field: string): void {
  assert(Number.isInteger(value), `${field} is an integer`);
  assert(value >= 0, `${field} is not negative`);
  assert(value <= 0xffff, `${field} fits 16 bits`);
}

function writeU64(buf: Buffer, at: number, value: number, field: string): void {
  assert(Number.isSafeInteger(value), `${field} is a safe integer`);
  assert(value >= 0, `${field} is not negative`);
  buf.writeUInt32LE(value >>> 0, at);
  buf.writeUInt32LE(Math.floor(value / two32), at + 4);
}

function writeOutHeader(buf: Buffer, len: number, error: number, unique: bigint): void {
  buf.writeUInt32LE(len, outHeaderLen);
  buf.writeInt32LE(error, outHeaderError);
  buf.writeBigUInt64LE(unique, outHeaderUnique);
}

/** A zeroed reply with room for a fixed payload; the caller writes the payload at outHeaderBytes. */
function fixedReply(unique: bigint, payloadBytes: number): Buffer {
  assertUnique(unique);
  const buf = Buffer.alloc(outHeaderBytes + payloadBytes);
  writeOutHeader(buf, buf.length, 0, unique);
  return buf;
}

/** An error reply: exactly the 16-byte header (the kernel refuses an error with a payload). */
export function replyError(unique: bigint, errno: number): Buffer {
  assertUnique(unique);
  assert(Number.isInteger(errno), "errno is an integer");
  assert(errno > 0, `errno ${errno} is positive`);
  assert(errno < replyErrnoLimit, `errno ${errno} is below ${replyErrnoLimit} (the kernel refuses larger)`);
  const buf = Buffer.alloc(outHeaderBytes);
  writeOutHeader(buf, outHeaderBytes, -errno, unique);
  return buf;
}

/** A success reply with any payload, copied into one Buffer. */
export function replyOk(unique: bigint, payload?: Buffer | Buffer[]): Buffer {
  assertUnique(unique);
  const parts = payload === undefined ? [] : Array.isArray(payload) ? payload : [payload];
  const payloadBytes = parts.reduce((sum, part) => sum + part.length, 0);
  assertU32(outHeaderBytes + payloadBytes, "reply length");
  const buf = Buffer.allocUnsafe(outHeaderBytes + payloadBytes);
  writeOutHeader(buf, buf.length, 0, unique);
  let at = outHeaderBytes;
  for (const part of parts) at += part.copy(buf, at);
  return buf;
}

/**
 * READ data (or a GETXATTR/LISTXATTR value): [header, data], not copied.
 * Write both with one fs.writevSync(fd, parts): one call, one message.
 * data.length must not exceed the request's size.
 */
export function replyData(unique: bigint, data: Buffer): Buffer[] {
  assertUnique(unique);
  assertU32(outHeaderBytes + data.length, "reply length");
  const header = Buffer.allocUnsafe(outHeaderBytes);
  writeOutHeader(header, outHeaderBytes + data.length, 0, unique);
  return [header, data];
}

/** READLINK: the target, without a NUL. */
export function replyReadlink(unique: bigint, target: Buffer): Buffer {
  assert(target.length <= readlinkTargetSizeMaxBytes, `a link target is at most ${readlinkTargetSizeMaxBytes} bytes`);
  assert(!target.includes(0), "a link target holds no NUL");
  return replyOk(unique, target);
}

const nsPerSecond = 1_000_000_000n;
const i64Min = -(1n << 63n);
const i64Max = (1n << 63n) - 1n;

/** Floor division: -1 ns is (-1 s, 999999999 ns), as struct timespec has it. */
function splitNs(ns: bigint): { sec: bigint; nsec: number } {
  let sec = ns / nsPerSecond;
  let rem = ns % nsPerSecond;
  if (rem < 0n) {
    sec -= 1n;
    rem += nsPerSecond;
  }
  return { sec, nsec: Number(rem) };
}

function writeTime(buf: Buffer, secAt: number, nsecAt: number, ns: bigint, field: string): void {
  const { sec, nsec } = splitNs(ns);
  assert(sec >= i64Min && sec <= i64Max, `${field} seconds fit 64 bits`);
  buf.writeBigInt64LE(sec, secAt);
  buf.writeUInt32LE(nsec, nsecAt);
}

/** S_IFREG, S_IFDIR, S_IFLNK, S_IFCHR, S_IFBLK, S_IFIFO, S_IFSOCK: the kernel refuses other types with EIO. */
function validFileType(mode: number): boolean {
  return [0o100000, 0o040000, 0o120000, 0o020000, 0o060000, 0o010000, 0o140000].includes(mode & 0o170000);
}

function writeAttr(buf: Buffer, at: number, attr: Attr): void {
  assert(validFileType(attr.mode), `mode ${attr.mode.toString(8)} has a file type`);
  writeU64(buf, at + attrIno, attr.ino, "attr.ino");
  writeU64(buf, at + attrSize, attr.size, "attr.size");
  writeU64(buf, at + attrBlocks, attr.blocks, "attr.blocks");
  writeTime(buf, at + attrAtime, at + attrAtimensec, attr.atimeNs, "atime");
  writeTime(buf, at + attrMtime, at + attrMtimensec, attr.mtimeNs, "mtime");
  writeTime(buf, at + attrCtime, at + attrCtimensec, attr.ctimeNs, "ctime");
  const words: [number, number, string][] = [
    [attrMode, attr.mode, "attr.mode"],
    [attrNlink, attr.nlink, "attr.nlink"],
    [attrUid, attr.uid, "attr.uid"],
    [attrGid, attr.gid, "attr.gid"],
    [attrRdev, attr.rdev, "attr.rdev"],
    [attrBlksize, attr.blksize, "attr.blksize"],
    [attrFlags, attr.flags ?? 0, "attr.flags"],
  ];
  for (const [field, value, name] of words) {
    assertU32(value, name);
    buf.writeUInt32LE(value, at + field);
  }
}

/** A cache timeout in ms as (seconds, nanoseconds). */
function writeValidity(buf: Buffer, secAt: number, nsecAt: number, ms: number, field: string): void {
  assert(Number.isFinite(ms), `${field} is finite`);
  assert(ms >= 0, `${field} is not negative`);
  let sec = Math.floor(ms / 1000);
  let nsec = Math.round((ms - sec * 1000) * 1e6);
  if (nsec >= 1e9) {
    sec += 1;
    nsec -= 1e9;
  }
  writeU64(buf, secAt, sec, field);
  buf.writeUInt32LE(nsec, nsecAt);
}

function writeEntryOut(buf: Buffer, at: number, entry: Entry): void {
  writeU64(buf, at + entryOutNodeid, entry.nodeid, "nodeid");
  writeU64(buf, at + entryOutGeneration, entry.generation, "generation");
  writeValidity(buf, at + entryOutEntryValid, at + entryOutEntryValidNsec, entry.entryValidMs, "entryValidMs");
  writeValidity(buf, at + entryOutAttrValid, at + entryOutAttrValidNsec, entry.attrValidMs, "attrValidMs");
  if (entry.nodeid !== 0) writeAttr(buf, at + entryOutAttr, entry.attr);
}

function writeOpenOut(buf: Buffer, at: number, open: OpenOut): void {
  writeU64(buf, at + openOutFh, open.fh, "fh");
  assertU32(open.openFlags, "openFlags");
  buf.writeUInt32LE(open.openFlags, at + openOutOpenFlags);
}

/** LOOKUP, MKNOD, MKDIR, SYMLINK, LINK (see `Entry` for lookup counts and nodeid 0). */
export function replyEntry(unique: bigint, entry: Entry): Buffer {
  const buf = fixedReply(unique, entryOutBytes);
  writeEntryOut(buf, outHeaderBytes, entry);
  return buf;
}

/** Attributes that say nothing: for entries that carry none (negative lookups, "." and ".." in readdirplus). */
export const noAttr: Attr = {
  ino: 0,
  size: 0,
  blocks: 0,
  atimeNs: 0n,
  mtimeNs: 0n,
  ctimeNs: 0n,
  mode: 0,
  nlink: 0,
  uid: 0,
  gid: 0,
  rdev: 0,
  blksize: 0,
};

/** LOOKUP of a name that does not exist, remembered by the kernel for entryValidMs. Takes no lookup count. */
export function replyNegativeEntry(unique: bigint, entryValidMs: number): Buffer {
  return replyEntry(unique, { nodeid: 0, generation: 0, entryValidMs, attrValidMs: 0, attr: noAttr });
}

/** GETATTR and SETATTR. */
export function replyAttr(unique: bigint, out: { attrValidMs: number; attr: Attr }): Buffer {
  const buf = fixedReply(unique, attrOutBytes);
  writeValidity(buf, outHeaderBytes + attrOutAttrValid, outHeaderBytes + attrOutAttrValidNsec, out.attrValidMs, "attrValidMs");
  writeAttr(buf, outHeaderBytes + attrOutAttr, out.attr);
  return buf;
}

/** OPEN and OPENDIR. */
export function replyOpen(unique: bigint, open: OpenOut): Buffer {
  const buf = fixedReply(unique, openOutBytes);
  writeOpenOut(buf, outHeaderBytes, open);
  return buf;
}

/** CREATE: fuse_entry_out then fuse_open_out. The entry takes a lookup count; nodeid 0 is refused. */
export function replyCreate(unique: bigint, entry: Entry, open: OpenOut): Buffer {
  assert(entry.nodeid !== 0, "a CREATE reply names a node");
  const buf = fixedReply(unique, entryOutBytes + openOutBytes);
  writeEntryOut(buf, outHeaderBytes, entry);
  writeOpenOut(buf, outHeaderBytes + entryOutBytes, open);
  return buf;
}

/** WRITE, and COPY_FILE_RANGE (whose reply is also fuse_write_out, so at most 4 GiB - 1 a call). */
export function replyWrite(unique: bigint, size: number): Buffer {
  assertU32(size, "written size");
  const buf = fixedReply(unique, writeOutBytes);
  buf.writeUInt32LE(size, outHeaderBytes + writeOutSize);
  return buf;
}

/** COPY_FILE_RANGE_64: fuse_copy_file_range_out, a u64 of bytes copied. */
export function replyCopied64(unique: bigint, size: number): Buffer {
  const buf = fixedReply(unique, copiedOutBytes);
  writeU64(buf, outHeaderBytes + copiedOutBytesCopied, size, "bytes copied");
  return buf;
}

export function replyStatfs(unique: bigint, st: Statfs): Buffer {
  const buf = fixedReply(unique, statfsBytes);
  const at = outHeaderBytes;
  writeU64(buf, at + statfsBlocks, st.blocks, "blocks");
  writeU64(buf, at + statfsBfree, st.bfree, "bfree");
  writeU64(buf, at + statfsBavail, st.bavail, "bavail");
  writeU64(buf, at + statfsFiles, st.files, "files");
  writeU64(buf, at + statfsFfree, st.ffree, "ffree");
  for (const [field, value, name] of [
    [statfsBsize, st.bsize, "bsize"],
    [statfsNamelen, st.namelen, "namelen"],
    [statfsFrsize, st.frsize, "frsize"],
  ] as const) {
    assertU32(value, name);
    buf.writeUInt32LE(value, at + field);
  }
  return buf;
}

/** GETXATTR or LISTXATTR asked with size 0: the size the value (or list) needs. */
export function replyGetxattrSize(unique: bigint, size: number): Buffer {
  assertU32(size, "xattr size");
  const buf = fixedReply(unique, getxattrOutBytes);
  buf.writeUInt32LE(size, outHeaderBytes + getxattrOutSize);
  return buf;
}

export function replyLseek(unique: bigint, offset: number): Buffer {
  const buf = fixedReply(unique, lseekOutBytes);
  writeU64(buf, outHeaderBytes + lseekOutOffset, offset, "offset");
  return buf;
}

/** INIT: the 64-byte fuse_init_out (7.23+ kernels read all of it). */
export function replyInit(unique: bigint, init: InitOut): Buffer {
  assert(init.flags >= 0n, "INIT flags are not negative");
  assert(init.flags < 1n << 64n, "INIT flags fit 64 bits");
  const flagsHigh = Number(init.flags >> 32n);
  assert(flagsHigh === 0 || (init.flags & initFlag.initExt) !== 0n, "flags above bit 31 are read only with FUSE_INIT_EXT");
  const buf = fixedReply(unique, initOutBytes);
  const at = outHeaderBytes;
  const words: [number, number, string][] = [
    [initOutMajor, init.major, "major"],
    [initOutMinor, init.minor, "minor"],
    [initOutMaxReadahead, init.maxReadahead, "maxReadahead"],
    [initOutFlags, Number(init.flags & 0xffffffffn), "flags"],
    [initOutMaxWrite, init.maxWrite, "maxWrite"],
    [initOutTimeGran, init.timeGran, "timeGran"],
    [initOutFlags2, flagsHigh, "flags2"],
  ];
  for (const [field, value, name] of words) {
    assertU32(value, name);
    buf.writeUInt32LE(value, at + field);
  }
  const halves: [number, number, string][] = [
    [initOutMaxBackground, init.maxBackground, "maxBackground"],
    [initOutCongestionThreshold, init.congestionThreshold, "congestionThreshold"],
    [initOutMaxPages, init.maxPages, "maxPages"],
    [initOutMapAlignment, init.mapAlignment ?? 0, "mapAlignment"],
  ];
  for (const [field, value, name] of halves) {
    assertU16(value, name);
    buf.writeUInt16LE(value, at + field);
  }
  return buf;
}

// ---- directory listings -----------------------------------------------------

/** A READDIR entry. */
export interface Dirent {
  /** st_ino as readdir shows it. */
  ino: number;
  /**
   * The offset of the NEXT entry: the kernel passes it back as READDIR's
   * offset to continue after this one. 0 would restart the listing.
   */
  off: number;
  /** DT_* (`direntTypeOf(mode)`), DT_UNKNOWN is 0. */
  type: number;
  name: Buffer;
}

/** A READDIRPLUS entry: a dirent plus the entry_out a LOOKUP of it would give. */
export interface DirentPlus extends Dirent, Entry {}
/** What DirentPacker.add takes. */
export type DirentIn = Dirent | DirentPlus;

/** DT_* from st_mode: the file type bits, shifted down. */
export function direntTypeOf(mode: number): number {
  return (mode >>> 12) & 0xf;
}

function direntRecordBytes(fixedBytes: number, nameBytes: number): number {
  return Math.ceil((fixedBytes + nameBytes) / direntAlignBytes) * direntAlignBytes;
}

function assertEntryName(name: Buffer): void {
  assert(name.length > 0, "a directory entry name is not empty");
  assert(name.length <= nameSizeMaxBytes, `a directory entry name is at most ${nameSizeMaxBytes} bytes`);
  assert(!name.includes(0x2f), "a directory entry name holds no '/' (the kernel fails the listing)");
  assert(!name.includes(0), "a directory entry name holds no NUL");
}

/**
 * Packs one READDIR or READDIRPLUS reply. `sizeMax` bounds the whole reply,
 * out header included: use `DirentPacker.forRequest(req.size, plus)`, which
 * allows exactly the request's size of entries (passing req.size itself is
 * safe but leaves 16 bytes unused). An empty finish() is end of directory,
 * so if add() refuses the very first entry, answer EINVAL instead.
 *
 * READDIRPLUS and lookup counts: the kernel takes one lookup count for every
 * entry of the reply with a nonzero nodeid, except "." and "..", even for
 * entries past what the reader's buffer holds (it forgets those it fails to
 * link with a FORGET of its own). An entry with nodeid 0 takes none (it only
 * means "no attributes for this one"). So the session counts one lookup for
 * each entry it adds with nodeid != 0 whose name is not "." or "..".
 */
export class DirentPacker {
  private readonly buf: Buffer;
  private used = outHeaderBytes;
  private added = 0;
  private finished = false;

  constructor(
    readonly sizeMax: number,
    readonly plus: boolean,
  ) {
    assert(Number.isSafeInteger(sizeMax), "sizeMax is an integer");
    assert(sizeMax >= outHeaderBytes, "sizeMax holds the out header");
    this.buf = Buffer.alloc(sizeMax);
  }

  /** A packer for a READDIR(PLUS) request of `size` bytes. */
  static forRequest(size: number, plus: boolean): DirentPacker {
    return new DirentPacker(outHeaderBytes + size, plus);
  }

  get count(): number {
    return this.added;
  }

  /** Appends an entry; false (and nothing written) when it does not fit. */
  add(entry: Dirent | DirentPlus): boolean {
    assert(!this.finished, "no add after finish");
    assertEntryName(entry.name);
    const record = direntRecordBytes(this.plus ? direntplusName : direntName, entry.name.length);
    if (this.used + record > this.sizeMax) return false;
    let at = this.used;
    if (this.plus) {
      assert("attr" in entry, "a READDIRPLUS entry carries its entry_out fields");
      writeEntryOut(this.buf, at, entry);
      at += entryOutBytes;
    }
    writeU64(this.buf, at + direntIno, entry.ino, "dirent.ino");
    writeU64(this.buf, at + direntOff, entry.off, "dirent.off");
    this.buf.writeUInt32LE(entry.name.length, at + direntNamelen);
    assertU32(entry.type, "dirent.type");
    assert(entry.type <= 0xf, "dirent.type is a DT_* value");
    this.buf.writeUInt32LE(entry.type, at + direntType);
    entry.name.copy(this.buf, at + direntName);
    this.used += record;
    this.added += 1;
    return true;
  }

  /** The reply: header and entries, at most sizeMax bytes. The padding is zero. */
  finish(unique: bigint): Buffer {
    assert(!this.finished, "finish once");
    assertUnique(unique);
    this.finished = true;
    writeOutHeader(this.buf, this.used, 0, unique);
    return this.buf.subarray(0, this.used);
  }
}

// ---- notifications ----------------------------------------------------------
//
// Written to /dev/fuse like replies, with unique 0. The write fails with
// ENOENT when the kernel has no such inode or entry cached: not an error.
// Never send inval_entry or delete from the path handling a request on the
// same directory (the kernel holds its lock while it waits for our reply).

function notification(code: number, payloadBytes: number): Buffer {
  const buf = Buffer.alloc(outHeaderBytes + payloadBytes);
  writeOutHeader(buf, buf.length, code, 0n);
  return buf;
}

/**
 * Drops the kernel's cached attributes of `nodeid`, and its page cache from
 * `offset` for `length` bytes. offset < 0 (say -1): attributes only.
 * length <= 0 (say 0): from offset to the end of the file.
 */
export function notifyInvalInode(nodeid: number, offset: number, length: number): Buffer {
  assert(nodeid > 0, "a node to invalidate (0 is not a node)");
  assert(Number.isSafeInteger(offset), "offset is an integer");
  assert(Number.isSafeInteger(length), "length is an integer");
  const buf = notification(notifyCode.invalInode, invalInodeBytes);
  writeU64(buf, outHeaderBytes + invalInodeIno, nodeid, "nodeid");
  buf.writeBigInt64LE(BigInt(offset), outHeaderBytes + invalInodeOff);
  buf.writeBigInt64LE(BigInt(length), outHeaderBytes + invalInodeLen);
  return buf;
}

/** Drops the kernel's dentry parent/name (or with invalEntryExpireOnly, only expires it). */
export function notifyInvalEntry(parent: number, name: Buffer, flags = 0): Buffer {
  assertEntryName(name);
  assert((flags & ~invalEntryExpireOnly) === 0, "inval_entry flags are FUSE_EXPIRE_ONLY or 0");
  const buf = notification(notifyCode.invalEntry, invalEntryBytes + name.length + 1);
  const at = outHeaderBytes;
  writeU64(buf, at + invalEntryParent, parent, "parent");
  buf.writeUInt32LE(name.length, at + invalEntryNamelen);
  buf.writeUInt32LE(flags, at + invalEntryFlags);
  name.copy(buf, at + invalEntryBytes);
  return buf;
}

/** Tells the kernel parent/name (naming child) is gone: it unhashes the dentry if it still names child. */
export function notifyDelete(parent: number, child: number, name: Buffer): Buffer {
  assertEntryName(name);
  const buf = notification(notifyCode.delete, deleteBytes + name.length + 1);
  const at = outHeaderBytes;
  writeU64(buf, at + deleteParent, parent, "parent");
  writeU64(buf, at + deleteChild, child, "child");
  buf.writeUInt32LE(name.length, at + deleteNamelen);
  name.copy(buf, at + deleteBytes);
  return buf;
}
