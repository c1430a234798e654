/**
 * The FUSE wire protocol module against bytes built by hand.
 *
 * Requests here are assembled from the offsets in linux/fuse.h (7.38), written
 * out as literal numbers, never from the module's own constants, so that a
 * wrong offset in the module cannot agree with a wrong offset in the test.
 * Replies are taken apart the same way.
 */
import { describe, expect, it } from "vitest";
import { AssertionFailure, Prng } from "../kvstore/index.js";
import * as P from "../fs/fuse/protocol.js";
import { Opcode, ProtocolError, decodeRequest } from "../fs/fuse/protocol.js";
import { seeds, withSeed } from "./helpers.js";

const testFile = "test/fuse_protocol.test.ts";

// ---- building requests by hand ----------------------------------------------

const u16 = (v: number): Buffer => {
  const b = Buffer.alloc(2);
  b.writeUInt16LE(v);
  return b;
};
const u32 = (v: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v);
  return b;
};
const u64 = (v: bigint | number): Buffer => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(v));
  return b;
};
const i64 = (v: bigint): Buffer => {
  const b = Buffer.alloc(8);
  b.writeBigInt64LE(v);
  return b;
};
const cstr = (s: string | Buffer): Buffer => Buffer.concat([Buffer.from(s), Buffer.from([0])]);

interface HeaderFields {
  unique?: bigint;
  nodeid?: bigint | number;
  uid?: number;
  gid?: number;
  pid?: number;
  /** Extension bytes after the body (a multiple of 8). */
  extension?: Buffer;
}

/** fuse_in_header (len 0, opcode 4, unique 8, nodeid 16, uid 24, gid 28, pid 32, total_extlen 36) and a body. */
function request(opcode: number, body: Buffer[], h: HeaderFields = {}): Buffer {
  const ext = h.extension ?? Buffer.alloc(0);
  const payload = Buffer.concat([...body, ext]);
  const header = Buffer.concat([
    u32(40 + payload.length),
    u32(opcode),
    u64(h.unique ?? 77n),
    u64(h.nodeid ?? 5),
    u32(h.uid ?? 1000),
    u32(h.gid ?? 1001),
    u32(h.pid ?? 4242),
    u16(ext.length / 8),
    u16(0),
  ]);
  return Buffer.concat([header, payload]);
}

const decodeOptions = { setxattrExt: false };

function decode(buf: Buffer, options = decodeOptions): P.Request {
  return decodeRequest(buf, buf.length, options);
}

/** Decodes and checks the opcode, narrowing the result. */
function decodeAs<O extends Opcode>(buf: Buffer, op: O, options = decodeOptions): Extract<P.Request, { op: O }> {
  const r = decode(buf, options);
  expect(r.op).toBe(op);
  return r as Extract<P.Request, { op: O }>;
}

function refusal(buf: Buffer, length = buf.length, options = decodeOptions): ProtocolError {
  try {
    decodeRequest(buf, length, options);
  } catch (error) {
    if (error instanceof ProtocolError) return error;
    throw error;
  }
  throw new Error("decodeRequest accepted a malformed request");
}

/** Whether `view` shares memory with `buf` (a subarray, not a copy). */
function isViewInto(view: Buffer, buf: Buffer): boolean {
  return view.buffer === buf.buffer && view.byteOffset >= buf.byteOffset && view.byteOffset + view.length <= buf.byteOffset + buf.length;
}

const two53 = 2n ** 53n;

// ---- requests ------------------------------------------------------------------

describe("request header", () => {
  it("decodes every header field", () => {
    const r = decode(request(Opcode.STATFS, [], { unique: 0xfedcba9876543210n, nodeid: 2 ** 53 - 1, uid: 7, gid: 8, pid: 9 }));
    expect(r.op).toBe(Opcode.STATFS);
    expect(r.header).toEqual({
      len: 40,
      opcode: Opcode.STATFS,
      unique: 0xfedcba9876543210n,
      nodeid: 2 ** 53 - 1,
      uid: 7,
      gid: 8,
      pid: 9,
      totalExtlen: 0,
    });
  });

  it("skips extensions counted by total_extlen", () => {
    const r = decodeAs(request(Opcode.LOOKUP, [cstr("a")], { extension: Buffer.alloc(16, 0xee) }), Opcode.LOOKUP);
    expect(r.header.totalExtlen).toBe(2);
    expect(r.name.toString()).toBe("a");
  });

  it("reads only `length` bytes of a larger buffer", () => {
    const req = request(Opcode.UNLINK, [cstr("gone")]);
    const big = Buffer.alloc(8192, 0xff);
    req.copy(big);
    const r = decodeRequest(big, req.length, decodeOptions);
    expect(r.op).toBe(Opcode.UNLINK);
  });
});

describe("request shapes", () => {
  it("LOOKUP, UNLINK, RMDIR: a name, as a view into the buffer", () => {
    for (const op of [Opcode.LOOKUP, Opcode.UNLINK, Opcode.RMDIR] as const) {
      const buf = request(op, [cstr("name.txt")]);
      const r = decodeAs(buf, op);
      expect(r.name.toString()).toBe("name.txt");
      expect(r.nameTooLong).toBe(false);
      expect(isViewInto(r.name, buf)).toBe(true);
    }
  });

  it("FORGET and BATCH_FORGET", () => {
    expect(decodeAs(request(Opcode.FORGET, [u64(3)]), Opcode.FORGET).nlookup).toBe(3);
    const batch = request(Opcode.BATCH_FORGET, [u32(2), u32(0), u64(10), u64(1), u64(2 ** 40), u64(99)]);
    expect(decodeAs(batch, Opcode.BATCH_FORGET).forgets).toEqual([
      { nodeid: 10, nlookup: 1 },
      { nodeid: 2 ** 40, nlookup: 99 },
    ]);
    expect(decodeAs(request(Opcode.BATCH_FORGET, [u32(0), u32(0)]), Opcode.BATCH_FORGET).forgets).toEqual([]);
  });

  it("GETATTR", () => {
    const r = decodeAs(request(Opcode.GETATTR, [u32(1), u32(0), u64(12345)]), Opcode.GETATTR);
    expect(r.getattrFlags).toBe(P.getattrFh);
    expect(r.fh).toBe(12345);
  });

  it("SETATTR, with times before 1970 as negative seconds", () => {
    const body = [
      u32(P.fattr.size | P.fattr.atime | P.fattr.mtime | P.fattr.ctime | P.fattr.mode),
      u32(0),
      u64(9), // fh
      u64(4096), // size
      u64(0xdeadbeefcafef00dn), // lock_owner
      i64(-1n), // atime
      i64(-86400n), // mtime
      u64(1700000000), // ctime
      u32(999999999),
      u32(1),
      u32(2),
      u32(0o100644),
      u32(0), // unused4
      u32(1000),
      u32(1001),
      u32(0), // unused5
    ];
    const r = decodeAs(request(Opcode.SETATTR, body), Opcode.SETATTR);
    expect(r).toMatchObject({
      valid: P.fattr.size | P.fattr.atime | P.fattr.mtime | P.fattr.ctime | P.fattr.mode,
      fh: 9,
      size: 4096,
      lockOwner: 0xdeadbeefcafef00dn,
      atime: -1n,
      mtime: -86400n,
      ctime: 1700000000n,
      atimensec: 999999999,
      mtimensec: 1,
      ctimensec: 2,
      mode: 0o100644,
      uid: 1000,
      gid: 1001,
    });
  });

  it("READLINK, STATFS, DESTROY: no body", () => {
    for (const op of [Opcode.READLINK, Opcode.STATFS, Opcode.DESTROY] as const) expect(decode(request(op, [])).op).toBe(op);
  });

  it("SYMLINK: name then target", () => {
    const r = decodeAs(request(Opcode.SYMLINK, [cstr("link"), cstr("../some/where")]), Opcode.SYMLINK);
    expect(r.name.toString()).toBe("link");
    expect(r.target.toString()).toBe("../some/where");
  });

  it("MKNOD and MKDIR", () => {
    const mknod = decodeAs(request(Opcode.MKNOD, [u32(0o010644), u32(0x0801), u32(0o022), u32(0), cstr("fifo")]), Opcode.MKNOD);
    expect(mknod).toMatchObject({ mode: 0o010644, rdev: 0x0801, umask: 0o022 });
    expect(mknod.name.toString()).toBe("fifo");
    const mkdir = decodeAs(request(Opcode.MKDIR, [u32(0o755), u32(0o002), cstr("dir")]), Opcode.MKDIR);
    expect(mkdir).toMatchObject({ mode: 0o755, umask: 0o002 });
    expect(mkdir.name.toString()).toBe("dir");
  });

  it("RENAME, RENAME2, LINK", () => {
    const rename = decodeAs(request(Opcode.RENAME, [u64(17), cstr("old"), cstr("new")]), Opcode.RENAME);
    expect(rename.newdir).toBe(17);
    expect([rename.name.toString(), rename.newname.toString()]).toEqual(["old", "new"]);
    const body2 = [u64(18), u32(P.renameFlag.noreplace), u32(0), cstr("a"), cstr("b")];
    const rename2 = decodeAs(request(Opcode.RENAME2, body2), Opcode.RENAME2);
    expect(rename2).toMatchObject({ newdir: 18, flags: P.renameFlag.noreplace });
    expect([rename2.name.toString(), rename2.newname.toString()]).toEqual(["a", "b"]);
    const link = decodeAs(request(Opcode.LINK, [u64(33), cstr("hard")]), Opcode.LINK);
    expect(link.oldnodeid).toBe(33);
    expect(link.name.toString()).toBe("hard");
  });

  it("OPEN, OPENDIR, CREATE", () => {
    for (const op of [Opcode.OPEN, Opcode.OPENDIR] as const) {
      expect(decodeAs(request(op, [u32(0o100002), u32(1)]), op)).toMatchObject({ flags: 0o100002, openFlags: 1 });
    }
    const create = decodeAs(request(Opcode.CREATE, [u32(0o1101), u32(0o100600), u32(0o077), u32(0), cstr("new.txt")]), Opcode.CREATE);
    expect(create).toMatchObject({ flags: 0o1101, mode: 0o100600, umask: 0o077, openFlags: 0 });
    expect(create.name.toString()).toBe("new.txt");
  });

  it("READ, READDIR, READDIRPLUS", () => {
    const body = [u64(4), u64(2 ** 40), u32(131072), u32(2), u64(55n), u32(0o100000), u32(0)];
    for (const op of [Opcode.READ, Opcode.READDIR, Opcode.READDIRPLUS] as const) {
      expect(decodeAs(request(op, body), op)).toMatchObject({
        fh: 4,
        offset: 2 ** 40,
        size: 131072,
        readFlags: P.readLockowner,
        lockOwner: 55n,
        flags: 0o100000,
      });
    }
  });

  it("WRITE: data is a view of exactly size bytes", () => {
    const data = Buffer.from("hello, world");
    const buf = request(Opcode.WRITE, [u64(6), u64(100), u32(data.length), u32(P.writeKillSuidgid), u64(1n), u32(2), u32(0), data]);
    const r = decodeAs(buf, Opcode.WRITE);
    expect(r).toMatchObject({ fh: 6, offset: 100, size: data.length, writeFlags: P.writeKillSuidgid, lockOwner: 1n, flags: 2 });
    expect(r.data.equals(data)).toBe(true);
    expect(isViewInto(r.data, buf)).toBe(true);
  });

  it("RELEASE, RELEASEDIR, FLUSH, FSYNC, FSYNCDIR", () => {
    for (const op of [Opcode.RELEASE, Opcode.RELEASEDIR] as const) {
      const r = decodeAs(request(op, [u64(8), u32(2), u32(P.releaseFlag.flush), u64(77n)]), op);
      expect(r).toMatchObject({ fh: 8, flags: 2, releaseFlags: P.releaseFlag.flush, lockOwner: 77n });
    }
    expect(decodeAs(request(Opcode.FLUSH, [u64(8), u32(0), u32(0), u64(2n ** 63n)]), Opcode.FLUSH)).toMatchObject({ fh: 8, lockOwner: 2n ** 63n });
    for (const op of [Opcode.FSYNC, Opcode.FSYNCDIR] as const) {
      expect(decodeAs(request(op, [u64(3), u32(1), u32(0)]), op)).toMatchObject({ fh: 3, fsyncFlags: P.fsyncFdatasync });
    }
  });

  it("SETXATTR in both layouts: 8 bytes without SETXATTR_EXT, 16 with", () => {
    const value = Buffer.from([0, 1, 2, 0, 255]);
    const compat = decodeAs(request(Opcode.SETXATTR, [u32(value.length), u32(1), cstr("user.k"), value]), Opcode.SETXATTR);
    expect(compat).toMatchObject({ size: value.length, flags: 1, setxattrFlags: 0 });
    expect(compat.name.toString()).toBe("user.k");
    expect(compat.value.equals(value)).toBe(true);
    const extBuf = request(Opcode.SETXATTR, [u32(value.length), u32(2), u32(1), u32(0), cstr("user.k"), value]);
    const ext = decodeAs(extBuf, Opcode.SETXATTR, { setxattrExt: true });
    expect(ext).toMatchObject({ size: value.length, flags: 2, setxattrFlags: P.setxattrFlag.aclKillSgid });
    expect(ext.value.equals(value)).toBe(true);
    // The same bytes read with the wrong layout are refused, not misread.
    expect(refusal(extBuf).detail).toBe("setxattr_size_mismatch");
  });

  it("GETXATTR, LISTXATTR, REMOVEXATTR, ACCESS", () => {
    const get = decodeAs(request(Opcode.GETXATTR, [u32(0), u32(0), cstr("trusted.x")]), Opcode.GETXATTR);
    expect(get.size).toBe(0);
    expect(get.name.toString()).toBe("trusted.x");
    expect(decodeAs(request(Opcode.LISTXATTR, [u32(4096), u32(0)]), Opcode.LISTXATTR).size).toBe(4096);
    expect(decodeAs(request(Opcode.REMOVEXATTR, [cstr("user.gone")]), Opcode.REMOVEXATTR).name.toString()).toBe("user.gone");
    expect(decodeAs(request(Opcode.ACCESS, [u32(4 | 2), u32(0)]), Opcode.ACCESS).mask).toBe(6);
  });

  it("INTERRUPT", () => {
    expect(decodeAs(request(Opcode.INTERRUPT, [u64(0x8000000000000002n)]), Opcode.INTERRUPT).interruptUnique).toBe(0x8000000000000002n);
  });

  it("INIT: the 64-byte form with flags2, and the 16-byte form of old kernels", () => {
    const flags = (1 << 30) | (1 << 0) | (1 << 13);
    const full = request(Opcode.INIT, [u32(7), u32(45), u32(131072), u32(flags), u32(0b101), Buffer.alloc(44)], { nodeid: 0 });
    const r = decodeAs(full, Opcode.INIT);
    expect(r).toMatchObject({ major: 7, minor: 45, maxReadahead: 131072 });
    expect(r.flags).toBe(BigInt(flags) | (1n << 32n) | (1n << 34n));
    expect(r.flags & P.initFlag.securityCtx).toBe(P.initFlag.securityCtx);
    // Without FUSE_INIT_EXT, flags2 is not read even when present.
    const noExt = request(Opcode.INIT, [u32(7), u32(38), u32(0), u32(1), u32(0xffffffff), Buffer.alloc(44)]);
    expect(decodeAs(noExt, Opcode.INIT).flags).toBe(1n);
    const old = decodeAs(request(Opcode.INIT, [u32(7), u32(31), u32(65536), u32(0x3ffff)]), Opcode.INIT);
    expect(old).toMatchObject({ major: 7, minor: 31, maxReadahead: 65536, flags: 0x3ffffn });
  });

  it("FALLOCATE, LSEEK, COPY_FILE_RANGE", () => {
    const falloc = decodeAs(request(Opcode.FALLOCATE, [u64(1), u64(4096), u64(8192), u32(3), u32(0)]), Opcode.FALLOCATE);
    expect(falloc).toMatchObject({ fh: 1, offset: 4096, length: 8192, mode: P.fallocMode.keepSize | P.fallocMode.punchHole });
    const lseek = decodeAs(request(Opcode.LSEEK, [u64(2), u64(10), u32(P.seekWhence.hole), u32(0)]), Opcode.LSEEK);
    expect(lseek).toMatchObject({ fh: 2, offset: 10, whence: 4 });
    const copyBody = [u64(3), u64(0), u64(44), u64(5), u64(512), u64(1 << 20), u64(0)];
    const copy = decodeAs(request(Opcode.COPY_FILE_RANGE, copyBody), Opcode.COPY_FILE_RANGE);
    expect(copy).toMatchObject({ fhIn: 3, offIn: 0, nodeidOut: 44, fhOut: 5, offOut: 512, len: 1 << 20, flags: 0n });
    // 7.45's 64-bit variant: the same body, a u64 answer.
    const copy64 = decodeAs(request(Opcode.COPY_FILE_RANGE_64, [u64(3), u64(0), u64(44), u64(5), u64(512), u64(2 ** 33), u64(0)]), Opcode.COPY_FILE_RANGE_64);
    expect(copy64).toMatchObject({ fhIn: 3, nodeidOut: 44, len: 2 ** 33 });
    const reply = P.replyCopied64(9n, 2 ** 33);
    expect(reply.length).toBe(24);
    expect(reply.readUInt32LE(0)).toBe(24);
    expect(reply.readBigUInt64LE(8)).toBe(9n);
    expect(reply.readBigUInt64LE(16)).toBe(2n ** 33n);
  });

  it("user offsets above 2^53 decode as offsetBeyondSafe, never rounded", () => {
    const read = decodeAs(request(Opcode.READ, [u64(4), u64(two53), u32(10), u32(0), u64(0), u32(0), u32(0)]), Opcode.READ);
    expect(read.offset).toBe(P.offsetBeyondSafe);
    expect(read.offset).toBe(Infinity);
    const lseek = decodeAs(request(Opcode.LSEEK, [u64(2), i64(-1n), u32(3), u32(0)]), Opcode.LSEEK);
    expect(lseek.offset).toBe(Infinity);
    const setattrBody = [u32(P.fattr.size), u32(0), u64(0), u64(2n ** 60n), Buffer.alloc(64)];
    expect(decodeAs(request(Opcode.SETATTR, setattrBody), Opcode.SETATTR).size).toBe(Infinity);
    const exact = decodeAs(request(Opcode.READ, [u64(4), u64(two53 - 1n), u32(10), u32(0), u64(0), u32(0), u32(0)]), Opcode.READ);
    expect(exact.offset).toBe(Number.MAX_SAFE_INTEGER);
  });

  it("opcodes without a decoder come back as { op, header }", () => {
    const lk = decode(request(Opcode.GETLK, [Buffer.alloc(48)]));
    expect(lk.op).toBe(Opcode.GETLK);
    expect(Object.keys(lk).sort()).toEqual(["header", "op"]);
    for (const op of [Opcode.SETLK, Opcode.SETLKW, Opcode.IOCTL, Opcode.POLL, Opcode.BMAP, Opcode.STATX, Opcode.TMPFILE, Opcode.SYNCFS]) {
      expect(decode(request(op, [Buffer.alloc(8)])).op).toBe(op);
    }
    const unknown = decode(request(9999, [Buffer.alloc(3)]));
    expect(unknown.op).toBe(P.opcodeUnknown);
    expect(unknown.header.opcode).toBe(9999);
  });

  it("decodes exactly the opcodes the API names", () => {
    const decoded = [
      Opcode.LOOKUP, Opcode.FORGET, Opcode.GETATTR, Opcode.SETATTR, Opcode.READLINK, Opcode.SYMLINK, Opcode.MKNOD,
      Opcode.MKDIR, Opcode.UNLINK, Opcode.RMDIR, Opcode.RENAME, Opcode.LINK, Opcode.OPEN, Opcode.READ, Opcode.WRITE,
      Opcode.STATFS, Opcode.RELEASE, Opcode.FSYNC, Opcode.SETXATTR, Opcode.GETXATTR, Opcode.LISTXATTR,
      Opcode.REMOVEXATTR, Opcode.FLUSH, Opcode.INIT, Opcode.OPENDIR, Opcode.READDIR, Opcode.RELEASEDIR,
      Opcode.FSYNCDIR, Opcode.ACCESS, Opcode.CREATE, Opcode.INTERRUPT, Opcode.DESTROY, Opcode.BATCH_FORGET,
      Opcode.FALLOCATE, Opcode.READDIRPLUS, Opcode.RENAME2, Opcode.LSEEK, Opcode.COPY_FILE_RANGE, Opcode.COPY_FILE_RANGE_64,
    ];
    const all = Object.values(Opcode).filter((v): v is Opcode => typeof v === "number");
    for (const op of all) expect([op, P.opcodeDecoded(op)]).toEqual([op, decoded.includes(op)]);
  });

  it("a name over 255 bytes is flagged for ENAMETOOLONG, not refused", () => {
    const long = "x".repeat(256);
    expect(decodeAs(request(Opcode.LOOKUP, [cstr("y".repeat(255))]), Opcode.LOOKUP).nameTooLong).toBe(false);
    expect(decodeAs(request(Opcode.LOOKUP, [cstr(long)]), Opcode.LOOKUP).nameTooLong).toBe(true);
    expect(decodeAs(request(Opcode.CREATE, [Buffer.alloc(16), cstr("z".repeat(1024))]), Opcode.CREATE).nameTooLong).toBe(true);
    expect(decodeAs(request(Opcode.RENAME, [u64(1), cstr("short"), cstr(long)]), Opcode.RENAME).nameTooLong).toBe(true);
    expect(decodeAs(request(Opcode.SYMLINK, [cstr(long), cstr("t")]), Opcode.SYMLINK).nameTooLong).toBe(true);
    // A long link target is not a long name.
    expect(decodeAs(request(Opcode.SYMLINK, [cstr("l"), cstr("t".repeat(4000))]), Opcode.SYMLINK).nameTooLong).toBe(false);
  });
});

// ---- malformed requests ---------------------------------------------------------

describe("malformed requests are ProtocolErrors", () => {
  it("shorter than the header", () => {
    const e = refusal(request(Opcode.STATFS, []).subarray(0, 39));
    expect(e.detail).toBe("request_header_short");
    expect(e.unique).toBeUndefined();
    expect(refusal(Buffer.alloc(0)).detail).toBe("request_header_short");
  });

  it("header.len other than the bytes read, with the unique to answer", () => {
    const buf = request(Opcode.LOOKUP, [cstr("abc")], { unique: 1234n });
    const short = refusal(buf, buf.length - 1);
    expect(short.detail).toBe("request_len_mismatch");
    expect(short.unique).toBe(1234n);
    expect(short.opcode).toBe(Opcode.LOOKUP);
    const padded = Buffer.concat([buf, Buffer.alloc(8)]);
    expect(refusal(padded).detail).toBe("request_len_mismatch");
  });

  it("a body shorter than the opcode's struct", () => {
    const cases: [number, Buffer[]][] = [
      [Opcode.READ, [Buffer.alloc(39)]],
      [Opcode.WRITE, [Buffer.alloc(39)]],
      [Opcode.SETATTR, [Buffer.alloc(87)]],
      [Opcode.GETATTR, [Buffer.alloc(15)]],
      [Opcode.FORGET, [Buffer.alloc(7)]],
      [Opcode.BATCH_FORGET, [Buffer.alloc(7)]],
      [Opcode.INIT, [Buffer.alloc(15)]],
      [Opcode.COPY_FILE_RANGE, [Buffer.alloc(55)]],
      [Opcode.INTERRUPT, []],
      [Opcode.SETXATTR, [Buffer.alloc(7)]],
    ];
    for (const [op, body] of cases) {
      const e = refusal(request(op, body, { unique: 9n }));
      expect([op, e.detail, e.unique]).toEqual([op, "body_short", 9n]);
    }
    // INIT_EXT promises the 64-byte struct.
    expect(refusal(request(Opcode.INIT, [u32(7), u32(38), u32(0), u32(1 << 30)])).detail).toBe("body_short");
    // SETXATTR_EXT promises 16 bytes.
    expect(refusal(request(Opcode.SETXATTR, [u32(0), u32(0), u32(0)]), undefined, { setxattrExt: true }).detail).toBe("body_short");
  });

  it("a name without its NUL inside the body", () => {
    expect(refusal(request(Opcode.LOOKUP, [Buffer.from("abc")])).detail).toBe("string_unterminated");
    expect(refusal(request(Opcode.LOOKUP, [])).detail).toBe("string_unterminated");
    expect(refusal(request(Opcode.RENAME, [u64(1), cstr("old"), Buffer.from("new")])).detail).toBe("string_unterminated");
    expect(refusal(request(Opcode.SYMLINK, [cstr("l"), Buffer.from("target")])).detail).toBe("string_unterminated");
    // A NUL only inside the extension area does not terminate the name.
    const ext = request(Opcode.LOOKUP, [Buffer.from("abcdefgh")], { extension: Buffer.alloc(8) });
    expect(refusal(ext).detail).toBe("string_unterminated");
  });

  it("names that the VFS never sends: empty, or holding '/'", () => {
    expect(refusal(request(Opcode.LOOKUP, [cstr("")])).detail).toBe("name_empty");
    expect(refusal(request(Opcode.MKDIR, [u32(0o755), u32(0), cstr("a/b")])).detail).toBe("name_slash");
    expect(refusal(request(Opcode.REMOVEXATTR, [cstr("")])).detail).toBe("xattr_name_empty");
  });

  it("bytes after the last field of a variable tail", () => {
    expect(refusal(request(Opcode.LOOKUP, [cstr("a"), Buffer.from([1])])).detail).toBe("body_trailing_bytes");
    expect(refusal(request(Opcode.UNLINK, [cstr("a"), cstr("b")])).detail).toBe("body_trailing_bytes");
    expect(refusal(request(Opcode.GETXATTR, [u32(0), u32(0), cstr("user.a"), Buffer.alloc(1)])).detail).toBe("body_trailing_bytes");
  });

  it("a write whose size disagrees with its data", () => {
    const head = (size: number): Buffer[] => [u64(1), u64(0), u32(size), u32(0), u64(0), u32(0), u32(0)];
    expect(refusal(request(Opcode.WRITE, [...head(10), Buffer.alloc(9)])).detail).toBe("write_size_mismatch");
    expect(refusal(request(Opcode.WRITE, [...head(10), Buffer.alloc(11)])).detail).toBe("write_size_mismatch");
    expect(decodeAs(request(Opcode.WRITE, [...head(0)]), Opcode.WRITE).data.length).toBe(0);
  });

  it("a setxattr whose size disagrees with its value, and xattr names over 255", () => {
    expect(refusal(request(Opcode.SETXATTR, [u32(4), u32(0), cstr("user.a"), Buffer.alloc(3)])).detail).toBe("setxattr_size_mismatch");
    expect(refusal(request(Opcode.GETXATTR, [u32(0), u32(0), cstr(`user.${"n".repeat(251)}`)])).detail).toBe("xattr_name_too_long");
    expect(decodeAs(request(Opcode.GETXATTR, [u32(0), u32(0), cstr(`user.${"n".repeat(250)}`)]), Opcode.GETXATTR).name.length).toBe(255);
  });

  it("a BATCH_FORGET count larger (or smaller) than the body holds", () => {
    expect(refusal(request(Opcode.BATCH_FORGET, [u32(3), u32(0), u64(1), u64(1), u64(2), u64(1)])).detail).toBe("batch_forget_count");
    expect(refusal(request(Opcode.BATCH_FORGET, [u32(0xffffffff), u32(0)])).detail).toBe("batch_forget_count");
    expect(refusal(request(Opcode.BATCH_FORGET, [u32(1), u32(0), u64(1), u64(1), u64(2)])).detail).toBe("batch_forget_count");
  });

  it("a nodeid, fh or nlookup above 2^53 - 1", () => {
    const e = refusal(request(Opcode.GETATTR, [Buffer.alloc(16)], { nodeid: two53, unique: 5n }));
    expect(e.detail).toBe("request_nodeid_unsafe");
    expect(e.unique).toBe(5n);
    expect(refusal(request(Opcode.STATFS, [], { nodeid: 2n ** 64n - 1n })).detail).toBe("request_nodeid_unsafe");
    expect(refusal(request(Opcode.GETATTR, [u32(1), u32(0), u64(two53)])).detail).toBe("id_unsafe");
    expect(refusal(request(Opcode.FORGET, [u64(two53)])).detail).toBe("id_unsafe");
    expect(refusal(request(Opcode.BATCH_FORGET, [u32(1), u32(0), u64(two53), u64(1)])).detail).toBe("id_unsafe");
    expect(refusal(request(Opcode.RENAME, [u64(two53 + 7n), cstr("a"), cstr("b")])).detail).toBe("id_unsafe");
  });

  it("total_extlen larger than the body", () => {
    const buf = request(Opcode.STATFS, []);
    buf.writeUInt16LE(1, 36);
    expect(refusal(buf).detail).toBe("request_extlen_overflow");
  });

  it("a refused request with unique 0 names nothing to answer", () => {
    const e = refusal(request(Opcode.LOOKUP, [Buffer.from("x")], { unique: 0n }));
    expect(e.unique).toBeUndefined();
    expect(P.uniqueOf(request(Opcode.LOOKUP, [], { unique: 0n }), 40)).toBeNull();
    expect(P.uniqueOf(request(Opcode.LOOKUP, [], { unique: 6n }), 16)).toBe(6n);
    expect(P.uniqueOf(Buffer.alloc(15), 15)).toBeNull();
  });
});

// ---- replies -----------------------------------------------------------------------

/** fuse_out_header: len 0, error 4, unique 8. */
function outHeader(buf: Buffer): { len: number; error: number; unique: bigint } {
  return { len: buf.readUInt32LE(0), error: buf.readInt32LE(4), unique: buf.readBigUInt64LE(8) };
}

function expectReply(buf: Buffer, unique: bigint, payloadBytes: number): void {
  expect(buf.length).toBe(16 + payloadBytes);
  expect(outHeader(buf)).toEqual({ len: buf.length, error: 0, unique });
}

const attr: P.Attr = {
  ino: 2 ** 40 + 3,
  size: 123456789,
  blocks: 241128,
  atimeNs: -1n,
  mtimeNs: -1_500_000_000n,
  ctimeNs: 1_700_000_000_123_456_789n,
  mode: 0o100640,
  nlink: 2,
  uid: 1000,
  gid: 100,
  rdev: 0,
  blksize: 4096,
  flags: 0,
};

/** fuse_attr at `at`: ino 0, size 8, blocks 16, atime 24, mtime 32, ctime 40, nsecs 48/52/56, mode 60 ... flags 84. */
function readAttr(buf: Buffer, at: number): Record<string, number | bigint> {
  return {
    ino: Number(buf.readBigUInt64LE(at)),
    size: Number(buf.readBigUInt64LE(at + 8)),
    blocks: Number(buf.readBigUInt64LE(at + 16)),
    atime: buf.readBigInt64LE(at + 24),
    mtime: buf.readBigInt64LE(at + 32),
    ctime: buf.readBigInt64LE(at + 40),
    atimensec: buf.readUInt32LE(at + 48),
    mtimensec: buf.readUInt32LE(at + 52),
    ctimensec: buf.readUInt32LE(at + 56),
    mode: buf.readUInt32LE(at + 60),
    nlink: buf.readUInt32LE(at + 64),
    uid: buf.readUInt32LE(at + 68),
    gid: buf.readUInt32LE(at + 72),
    rdev: buf.readUInt32LE(at + 76),
    blksize: buf.readUInt32LE(at + 80),
    flags: buf.readUInt32LE(at + 84),
  };
}

const attrDecoded = {
  ino: 2 ** 40 + 3,
  size: 123456789,
  blocks: 241128,
  atime: -1n,
  mtime: -2n,
  ctime: 1_700_000_000n,
  atimensec: 999_999_999,
  mtimensec: 500_000_000,
  ctimensec: 123_456_789,
  mode: 0o100640,
  nlink: 2,
  uid: 1000,
  gid: 100,
  rdev: 0,
  blksize: 4096,
  flags: 0,
};

/** fuse_entry_out at `at`: nodeid 0, generation 8, entry_valid 16, attr_valid 24, nsecs 32/36, attr 40. */
function readEntry(buf: Buffer, at: number): Record<string, unknown> {
  return {
    nodeid: Number(buf.readBigUInt64LE(at)),
    generation: Number(buf.readBigUInt64LE(at + 8)),
    entryValid: [Number(buf.readBigUInt64LE(at + 16)), buf.readUInt32LE(at + 32)],
    attrValid: [Number(buf.readBigUInt64LE(at + 24)), buf.readUInt32LE(at + 36)],
    attr: readAttr(buf, at + 40),
  };
}

const entry: P.Entry = { nodeid: 42, generation: 3, entryValidMs: 1500, attrValidMs: 0.25, attr };

describe("replies", () => {
  it("replyError: the 16-byte header with -errno", () => {
    const buf = P.replyError(99n, 2);
    expect(buf.length).toBe(16);
    expect(outHeader(buf)).toEqual({ len: 16, error: -2, unique: 99n });
    expect(() => P.replyError(99n, 0)).toThrow(AssertionFailure);
    expect(() => P.replyError(99n, 512)).toThrow(AssertionFailure);
    expect(() => P.replyError(0n, 5)).toThrow(AssertionFailure);
  });

  it("replyOk: no payload, one buffer, or several copied after the header", () => {
    expectReply(P.replyOk(1n), 1n, 0);
    const one = P.replyOk(2n, Buffer.from("abc"));
    expectReply(one, 2n, 3);
    expect(one.subarray(16).toString()).toBe("abc");
    const many = P.replyOk(2n ** 64n - 1n, [Buffer.from("ab"), Buffer.alloc(0), Buffer.from("cde")]);
    expectReply(many, 2n ** 64n - 1n, 5);
    expect(many.subarray(16).toString()).toBe("abcde");
  });

  it("replyEntry: fuse_entry_out, timeouts from ms, negative times floored", () => {
    const buf = P.replyEntry(10n, entry);
    expectReply(buf, 10n, 128);
    expect(readEntry(buf, 16)).toEqual({
      nodeid: 42,
      generation: 3,
      entryValid: [1, 500_000_000],
      attrValid: [0, 250_000],
      attr: attrDecoded,
    });
  });

  it("a negative entry is nodeid 0 with an entry timeout", () => {
    const buf = P.replyNegativeEntry(11n, 60_000);
    expectReply(buf, 11n, 128);
    const e = readEntry(buf, 16);
    expect(e).toMatchObject({ nodeid: 0, entryValid: [60, 0], attrValid: [0, 0] });
    expect(buf.subarray(16 + 40).equals(Buffer.alloc(88))).toBe(true);
  });

  it("replyAttr: fuse_attr_out", () => {
    const buf = P.replyAttr(12n, { attrValidMs: 2001, attr });
    expectReply(buf, 12n, 104);
    expect([Number(buf.readBigUInt64LE(16)), buf.readUInt32LE(24), buf.readUInt32LE(28)]).toEqual([2, 1_000_000, 0]);
    expect(readAttr(buf, 32)).toEqual(attrDecoded);
  });

  it("replyOpen and replyCreate", () => {
    const open = P.replyOpen(13n, { fh: 2 ** 50, openFlags: P.fopen.keepCache | P.fopen.noflush });
    expectReply(open, 13n, 16);
    expect([Number(open.readBigUInt64LE(16)), open.readUInt32LE(24), open.readUInt32LE(28)]).toEqual([2 ** 50, 0b100010, 0]);
    const create = P.replyCreate(14n, entry, { fh: 7, openFlags: P.fopen.directIo });
    expectReply(create, 14n, 128 + 16);
    expect(readEntry(create, 16)).toMatchObject({ nodeid: 42, attr: attrDecoded });
    expect([Number(create.readBigUInt64LE(144)), create.readUInt32LE(152)]).toEqual([7, 1]);
    expect(() => P.replyCreate(14n, { ...entry, nodeid: 0 }, { fh: 7, openFlags: 0 })).toThrow(AssertionFailure);
  });

  it("replyWrite, replyGetxattrSize, replyLseek", () => {
    const write = P.replyWrite(15n, 65536);
    expectReply(write, 15n, 8);
    expect([write.readUInt32LE(16), write.readUInt32LE(20)]).toEqual([65536, 0]);
    const size = P.replyGetxattrSize(16n, 300);
    expectReply(size, 16n, 8);
    expect(size.readUInt32LE(16)).toBe(300);
    const lseek = P.replyLseek(17n, 2 ** 44);
    expectReply(lseek, 17n, 8);
    expect(Number(lseek.readBigUInt64LE(16))).toBe(2 ** 44);
  });

  it("replyStatfs: fuse_kstatfs", () => {
    const st = { blocks: 2 ** 33, bfree: 1000, bavail: 900, files: 5, ffree: 2 ** 32 + 1, bsize: 4096, namelen: 255, frsize: 4096 };
    const buf = P.replyStatfs(18n, st);
    expectReply(buf, 18n, 80);
    const u64s = [0, 8, 16, 24, 32].map((at) => Number(buf.readBigUInt64LE(16 + at)));
    expect(u64s).toEqual([2 ** 33, 1000, 900, 5, 2 ** 32 + 1]);
    expect([40, 44, 48].map((at) => buf.readUInt32LE(16 + at))).toEqual([4096, 255, 4096]);
    expect(buf.subarray(16 + 52).equals(Buffer.alloc(28))).toBe(true);
  });

  it("replyReadlink and replyData", () => {
    const link = P.replyReadlink(19n, Buffer.from("../target"));
    expectReply(link, 19n, 9);
    expect(link.subarray(16).toString()).toBe("../target");
    const data = Buffer.alloc(100000, 7);
    const parts = P.replyData(20n, data);
    expect(parts.length).toBe(2);
    expect(outHeader(parts[0]!)).toEqual({ len: 16 + 100000, error: 0, unique: 20n });
    expect(parts[0]!.length).toBe(16);
    expect(parts[1]).toBe(data);
  });

  it("replyInit: flags split into flags and flags2", () => {
    const flags = P.initFlag.initExt | P.initFlag.asyncRead | P.initFlag.maxPages | P.initFlag.hasExpireOnly;
    const buf = P.replyInit(21n, {
      major: 7,
      minor: 38,
      maxReadahead: 131072,
      flags,
      maxBackground: 64,
      congestionThreshold: 48,
      maxWrite: 1 << 20,
      timeGran: 1,
      maxPages: 256,
    });
    expectReply(buf, 21n, 64);
    const at = 16;
    expect([0, 4, 8, 12].map((o) => buf.readUInt32LE(at + o))).toEqual([7, 38, 131072, (1 << 30) | 1 | (1 << 22)]);
    expect([buf.readUInt16LE(at + 16), buf.readUInt16LE(at + 18)]).toEqual([64, 48]);
    expect([buf.readUInt32LE(at + 20), buf.readUInt32LE(at + 24)]).toEqual([1 << 20, 1]);
    expect([buf.readUInt16LE(at + 28), buf.readUInt16LE(at + 30)]).toEqual([256, 0]);
    expect(buf.readUInt32LE(at + 32)).toBe(1 << 3);
    expect(buf.subarray(at + 36).equals(Buffer.alloc(28))).toBe(true);
    const base = { major: 7, minor: 38, maxReadahead: 0, maxBackground: 0, congestionThreshold: 0, maxWrite: 4096, timeGran: 1, maxPages: 1 };
    expect(() => P.replyInit(21n, { ...base, flags: P.initFlag.securityCtx })).toThrow(AssertionFailure);
    expect(() => P.replyInit(21n, { ...base, flags: 0n, maxPages: 65536 })).toThrow(AssertionFailure);
  });

  it("requestSizeMax: max_write plus header room, never below the kernel's floors", () => {
    expect(P.requestSizeMax(131072)).toBe(131072 + 4096);
    expect(P.requestSizeMax(1 << 20)).toBe((1 << 20) + 4096);
    // The kernel refuses reads below FUSE_MIN_READ_BUFFER; a maximal SETXATTR must fit.
    expect(P.requestSizeMax(4096)).toBeGreaterThanOrEqual(8192);
    expect(P.requestSizeMax(4096)).toBeGreaterThanOrEqual(40 + 16 + 256 + 65536);
  });
});

// ---- directory listings ----------------------------------------------------------

interface ParsedDirent {
  ino: number;
  off: number;
  type: number;
  name: string;
  entry?: Record<string, unknown>;
}

/** Walks a READDIR(PLUS) payload by hand: records of (entry_out,) ino 0, off 8, namelen 16, type 20, name 24, padded to 8. */
function parseDirents(buf: Buffer, plus: boolean): ParsedDirent[] {
  const out: ParsedDirent[] = [];
  let at = 16;
  while (at < buf.length) {
    const entryAt = at;
    const d = plus ? at + 128 : at;
    const namelen = buf.readUInt32LE(d + 16);
    const record = Math.ceil((d - at + 24 + namelen) / 8) * 8;
    const name = buf.subarray(d + 24, d + 24 + namelen).toString();
    expect(buf.subarray(d + 24 + namelen, at + record).every((b) => b === 0)).toBe(true);
    const parsed: ParsedDirent = { ino: Number(buf.readBigUInt64LE(d)), off: Number(buf.readBigUInt64LE(d + 8)), type: buf.readUInt32LE(d + 20), name };
    if (plus) parsed.entry = readEntry(buf, entryAt);
    out.push(parsed);
    at += record;
  }
  expect(at).toBe(buf.length);
  return out;
}

describe("DirentPacker", () => {
  it("packs fuse_dirent records padded to 8 bytes, and refuses what does not fit", () => {
    // Records: 24 + 1 -> 32, 24 + 8 -> 32, 24 + 9 -> 40.
    const packer = new P.DirentPacker(16 + 32 + 32 + 39, false);
    expect(packer.add({ ino: 1, off: 1, type: P.direntTypeOf(0o040755), name: Buffer.from(".") })).toBe(true);
    expect(packer.add({ ino: 9, off: 2, type: P.direntTypeOf(0o100644), name: Buffer.from("eightchr") })).toBe(true);
    expect(packer.add({ ino: 10, off: 3, type: 10, name: Buffer.from("ninechars") })).toBe(false);
    expect(packer.add({ ino: 11, off: 3, type: 8, name: Buffer.from("a") })).toBe(true);
    expect(packer.count).toBe(3);
    const buf = packer.finish(30n);
    expect(buf.length).toBe(16 + 32 + 32 + 32);
    expect(buf.length).toBeLessThanOrEqual(packer.sizeMax);
    expect(outHeader(buf)).toEqual({ len: buf.length, error: 0, unique: 30n });
    expect(parseDirents(buf, false)).toEqual([
      { ino: 1, off: 1, type: 4, name: "." },
      { ino: 9, off: 2, type: 8, name: "eightchr" },
      { ino: 11, off: 3, type: 8, name: "a" },
    ]);
  });

  it("an empty listing is the bare header (end of directory)", () => {
    const buf = new P.DirentPacker(4096, false).finish(31n);
    expect(outHeader(buf)).toEqual({ len: 16, error: 0, unique: 31n });
  });

  it("forRequest allows exactly the request's size of entries", () => {
    const packer = P.DirentPacker.forRequest(64, false);
    expect(packer.add({ ino: 1, off: 1, type: 8, name: Buffer.from("a") })).toBe(true);
    expect(packer.add({ ino: 2, off: 2, type: 8, name: Buffer.from("b") })).toBe(true);
    expect(packer.add({ ino: 3, off: 3, type: 8, name: Buffer.from("c") })).toBe(false);
    expect(packer.finish(1n).length - 16).toBe(64);
  });

  it("packs fuse_direntplus records: entry_out then dirent", () => {
    const packer = new P.DirentPacker(4096, true);
    const plusEntry = { ...entry, ino: 42, off: 5, type: 8, name: Buffer.from("file") };
    expect(packer.add(plusEntry)).toBe(true);
    expect(packer.add({ ...plusEntry, nodeid: 0, ino: 1, off: 6, type: 4, name: Buffer.from("..") })).toBe(true);
    const buf = packer.finish(32n);
    expect(buf.length).toBe(16 + 160 + 160);
    const parsed = parseDirents(buf, true);
    expect(parsed.map(({ entry: _e, ...d }) => d)).toEqual([
      { ino: 42, off: 5, type: 8, name: "file" },
      { ino: 1, off: 6, type: 4, name: ".." },
    ]);
    expect(parsed[0]!.entry).toEqual({ nodeid: 42, generation: 3, entryValid: [1, 500_000_000], attrValid: [0, 250_000], attr: attrDecoded });
    expect(parsed[1]!.entry).toMatchObject({ nodeid: 0 });
  });

  it("never exceeds sizeMax whatever it is fed", () => {
    const prng = new Prng(7);
    for (let round = 0; round < 200; round++) {
      const plus = prng.chance(0.5);
      const packer = new P.DirentPacker(prng.between(16, 2000), plus);
      let added = 0;
      for (let i = 0; i < 40; i++) {
        const name = Buffer.alloc(prng.between(1, 255), 0x61 + (i % 26));
        const dirent = { ...entry, ino: i + 1, off: i + 1, type: 8, name };
        if (packer.add(dirent)) added++;
      }
      const buf = packer.finish(1n);
      expect(buf.length).toBeLessThanOrEqual(packer.sizeMax);
      expect(parseDirents(buf, plus).length).toBe(added);
    }
  });

  it("refuses names the kernel would fail the listing for", () => {
    const packer = new P.DirentPacker(4096, false);
    for (const name of ["", "a/b", "x".repeat(256)]) {
      expect(() => packer.add({ ino: 1, off: 1, type: 8, name: Buffer.from(name) })).toThrow(AssertionFailure);
    }
  });
});

// ---- notifications -----------------------------------------------------------------

describe("notifications", () => {
  it("inval_inode: unique 0, error = code, signed offset and length", () => {
    const buf = P.notifyInvalInode(42, -1, 0);
    expect(buf.length).toBe(16 + 24);
    expect(outHeader(buf)).toEqual({ len: 40, error: 2, unique: 0n });
    expect([Number(buf.readBigUInt64LE(16)), buf.readBigInt64LE(24), buf.readBigInt64LE(32)]).toEqual([42, -1n, 0n]);
    const range = P.notifyInvalInode(7, 4096, 8192);
    expect([range.readBigInt64LE(24), range.readBigInt64LE(32)]).toEqual([4096n, 8192n]);
  });

  it("inval_entry: parent, namelen, flags, name and NUL", () => {
    const buf = P.notifyInvalEntry(5, Buffer.from("snap"), P.invalEntryExpireOnly);
    expect(buf.length).toBe(16 + 16 + 4 + 1);
    expect(outHeader(buf)).toEqual({ len: buf.length, error: 3, unique: 0n });
    expect([Number(buf.readBigUInt64LE(16)), buf.readUInt32LE(24), buf.readUInt32LE(28)]).toEqual([5, 4, 1]);
    expect(buf.subarray(32).toString("latin1")).toBe("snap\0");
    expect(() => P.notifyInvalEntry(5, Buffer.from("x"), 2)).toThrow(AssertionFailure);
  });

  it("delete: parent, child, namelen, name and NUL", () => {
    const buf = P.notifyDelete(5, 99, Buffer.from("gone"));
    expect(buf.length).toBe(16 + 24 + 4 + 1);
    expect(outHeader(buf)).toEqual({ len: buf.length, error: 6, unique: 0n });
    expect([Number(buf.readBigUInt64LE(16)), Number(buf.readBigUInt64LE(24)), buf.readUInt32LE(32), buf.readUInt32LE(36)]).toEqual([5, 99, 4, 0]);
    expect(buf.subarray(40).toString("latin1")).toBe("gone\0");
  });
});

describe("constants", () => {
  it("names opcodes and knows which take no reply", () => {
    expect(P.opcodeName(Opcode.READDIRPLUS)).toBe("READDIRPLUS");
    expect(P.opcodeName(52)).toBe("STATX");
    expect(P.opcodeName(7)).toBe("UNKNOWN_7");
    expect(P.expectsReply(Opcode.FORGET)).toBe(false);
    expect(P.expectsReply(Opcode.BATCH_FORGET)).toBe(false);
    expect(P.expectsReply(Opcode.LOOKUP)).toBe(true);
  });

  it("match fuse.h", () => {
    expect([P.fuseKernelVersion, P.fuseKernelMinorVersion, P.fuseRootId]).toEqual([7, 38, 1]);
    expect([Opcode.LOOKUP, Opcode.CREATE, Opcode.INTERRUPT, Opcode.BATCH_FORGET, Opcode.FALLOCATE]).toEqual([1, 35, 36, 42, 43]);
    expect([Opcode.READDIRPLUS, Opcode.RENAME2, Opcode.LSEEK, Opcode.SYNCFS, Opcode.TMPFILE, Opcode.STATX]).toEqual([44, 45, 46, 50, 51, 52]);
    expect([P.initFlag.setxattrExt, P.initFlag.initExt, P.initFlag.securityCtx]).toEqual([1n << 29n, 1n << 30n, 1n << 32n]);
    expect([P.initFlag.hasInodeDax, P.initFlag.hasExpireOnly]).toEqual([1n << 33n, 1n << 35n]);
    expect([P.fattr.ctime, P.fattr.killSuidgid, P.fopen.parallelDirectWrites]).toEqual([1 << 10, 1 << 11, 1 << 6]);
    expect(P.notifyCode).toMatchObject({ poll: 1, invalInode: 2, invalEntry: 3, store: 4, retrieve: 5, delete: 6 });
    expect(P.fuseMinReadBufferBytes).toBe(8192);
  });
});

// ---- fuzz ----------------------------------------------------------------------------

/** One valid request of every decoded shape (and a few undecoded ones). */
function corpus(): Buffer[] {
  const rw = (op: number, data: Buffer): Buffer =>
    request(op, [u64(1), u64(4096), u32(op === Opcode.WRITE ? data.length : 4096), u32(0), u64(0), u32(0), u32(0), data]);
  return [
    request(Opcode.LOOKUP, [cstr("name")]),
    request(Opcode.UNLINK, [cstr("u")]),
    request(Opcode.FORGET, [u64(1)]),
    request(Opcode.BATCH_FORGET, [u32(2), u32(0), u64(3), u64(1), u64(4), u64(2)]),
    request(Opcode.GETATTR, [u32(1), u32(0), u64(3)]),
    request(Opcode.SETATTR, [u32(0xfff), u32(0), u64(3), u64(10), Buffer.alloc(64, 1)]),
    request(Opcode.READLINK, []),
    request(Opcode.SYMLINK, [cstr("l"), cstr("target")]),
    request(Opcode.MKNOD, [u32(0o010644), u32(0), u32(0o022), u32(0), cstr("p")]),
    request(Opcode.MKDIR, [u32(0o755), u32(0o022), cstr("d")]),
    request(Opcode.RENAME, [u64(2), cstr("a"), cstr("b")]),
    request(Opcode.RENAME2, [u64(2), u32(1), u32(0), cstr("a"), cstr("b")]),
    request(Opcode.LINK, [u64(9), cstr("h")]),
    request(Opcode.OPEN, [u32(2), u32(0)]),
    request(Opcode.CREATE, [u32(0o101), u32(0o100644), u32(0o022), u32(0), cstr("c")]),
    rw(Opcode.READ, Buffer.alloc(0)),
    rw(Opcode.READDIRPLUS, Buffer.alloc(0)),
    rw(Opcode.WRITE, Buffer.from("some data to write")),
    request(Opcode.RELEASE, [u64(1), u32(0), u32(1), u64(5)]),
    request(Opcode.FLUSH, [u64(1), u32(0), u32(0), u64(5)]),
    request(Opcode.FSYNC, [u64(1), u32(1), u32(0)]),
    request(Opcode.SETXATTR, [u32(3), u32(0), cstr("user.a"), Buffer.from("xyz")]),
    request(Opcode.SETXATTR, [u32(3), u32(0), u32(0), u32(0), cstr("user.a"), Buffer.from("xyz")]),
    request(Opcode.GETXATTR, [u32(0), u32(0), cstr("user.a")]),
    request(Opcode.LISTXATTR, [u32(0), u32(0)]),
    request(Opcode.REMOVEXATTR, [cstr("user.a")]),
    request(Opcode.ACCESS, [u32(4), u32(0)]),
    request(Opcode.INTERRUPT, [u64(8)]),
    request(Opcode.INIT, [u32(7), u32(45), u32(0), u32(0x7fffffff), u32(0xffffffff), Buffer.alloc(44)]),
    request(Opcode.INIT, [u32(7), u32(31), u32(0), u32(0x3ffff)]),
    request(Opcode.FALLOCATE, [u64(1), u64(0), u64(10), u32(0), u32(0)]),
    request(Opcode.LSEEK, [u64(1), u64(0), u32(3), u32(0)]),
    request(Opcode.COPY_FILE_RANGE, [u64(1), u64(0), u64(2), u64(3), u64(0), u64(10), u64(0)]),
    request(Opcode.GETLK, [Buffer.alloc(48)]),
    request(Opcode.LOOKUP, [cstr("e")], { extension: Buffer.alloc(8) }),
  ];
}

/** One random change to a request: a byte, a header field, a truncation, an extension, or a splice. */
function mutate(prng: Prng, source: Buffer, all: Buffer[]): { buf: Buffer; length: number } {
  let buf = Buffer.from(source);
  const kind = prng.below(8);
  if (kind === 0 && buf.length > 0) buf[prng.below(buf.length)] = prng.below(256);
  if (kind === 1) for (let i = prng.between(1, 8); i > 0 && buf.length > 0; i--) buf[prng.below(buf.length)] = prng.below(256);
  if (kind === 2) buf = buf.subarray(0, prng.below(buf.length + 1));
  if (kind === 3) buf = Buffer.concat([buf, prng.bytes(prng.between(1, 300))]);
  if (kind === 4 && buf.length >= 40) buf.writeUInt32LE(prng.chance(0.5) ? prng.u32() : buf.length + prng.between(-70, 70) >>> 0, 0);
  if (kind === 5 && buf.length >= 40) buf.writeUInt32LE(prng.pick(Object.values(Opcode).filter((v): v is number => typeof v === "number")), 4);
  if (kind === 6 && buf.length >= 40) buf.writeUInt16LE(prng.below(8), 36);
  if (kind === 7) buf = Buffer.concat([buf.subarray(0, 40), prng.pick(all).subarray(40)]);
  // Keep the header's len honest half the time, so the body checks get exercised too.
  if (buf.length >= 40 && prng.chance(0.5)) buf.writeUInt32LE(buf.length, 0);
  // The session reads into a larger buffer; length is what the read returned.
  const padded = Buffer.alloc(buf.length + prng.below(64), 0xa5);
  buf.copy(padded);
  return { buf: padded, length: buf.length };
}

/** What a successful decode promises, whatever the bytes. */
function checkDecoded(r: P.Request, length: number): void {
  expect(r.header.len).toBe(length);
  expect(Number.isSafeInteger(r.header.nodeid)).toBe(true);
  if (r.op === Opcode.WRITE) expect(r.data.length).toBe(r.size);
  if (r.op === Opcode.SETXATTR) expect(r.value.length).toBe(r.size);
  if (r.op === Opcode.LOOKUP || r.op === Opcode.MKDIR || r.op === Opcode.CREATE) {
    expect(r.name.includes(0)).toBe(false);
    expect(r.nameTooLong).toBe(r.name.length > 255);
  }
}

function decodesUnderSomeOptions(buf: Buffer): boolean {
  return [false, true].some((setxattrExt) => {
    try {
      decode(buf, { setxattrExt });
      return true;
    } catch {
      return false;
    }
  });
}

describe("fuzz", () => {
  it("5000 mutations of valid requests decode or throw ProtocolError, nothing else", () => {
    for (const seed of seeds([0x5eed])) {
      withSeed(seed, testFile, () => {
        const prng = new Prng(seed);
        const all = corpus();
        for (const buf of all) expect(decodesUnderSomeOptions(buf)).toBe(true);
        let decoded = 0;
        let refused = 0;
        for (let i = 0; i < 5000; i++) {
          const { buf, length } = mutate(prng, prng.pick(all), all);
          const options = { setxattrExt: prng.chance(0.5) };
          let r: P.Request;
          try {
            r = decodeRequest(buf, length, options);
          } catch (error) {
            if (!(error instanceof ProtocolError)) throw new Error(`mutation ${i} threw ${String(error)}`);
            refused++;
            continue;
          }
          checkDecoded(r, length);
          decoded++;
        }
        expect(decoded).toBeGreaterThan(500);
        expect(refused).toBeGreaterThan(500);
      });
    }
  });
});
