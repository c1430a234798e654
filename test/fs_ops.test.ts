/**
 * GroveFs operation by operation: every call of fs/api.ts, its results and
 * its error codes, on a simulated device (and an image file where the file
 * matters). Every test that mutates the volume ends with the full checker,
 * data checksums included.
 */
import { constants as C } from "node:fs";
import * as nodeFs from "node:fs";
import * as path from "node:path";
import { withDir } from "tmp-promise";
import { describe, expect, it } from "vitest";
import { CorruptionError, FileDevice, GroveError, SimDevice, blockSizeBytes } from "../kvstore/index.js";
import { formatVolume } from "../alloc/index.js";
import { decodeInode, encodeInode, inodeKey } from "../fs/format.js";
import {
  GroveFs,
  type AccessTimes,
  checkFilesystem,
  fileSizeMaxBytes,
  inoMax,
  linkCountMax,
  renameExchange,
  renameNoReplace,
  treeIdDefaultSubvolume,
  xattrCreate,
  xattrReplace,
  xattrValueSizeMaxBytes,
} from "../fs/index.js";
import {
  FsHarness,
  O_APPEND,
  O_CREAT,
  O_EXCL,
  O_RDONLY,
  O_RDWR,
  O_TRUNC,
  O_WRONLY,
  expectBytes,
  expectErrno,
  expectFsClean,
  pattern,
  readAt,
  readFile,
  root,
  usedBlocks,
  writeAt,
  writeFile,
} from "./fs_helpers.js";

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const user = { uid: 1000, gid: 1000 };

/** Runs `body` on a fresh volume, then closes it and runs the checker. */
function withFs(body: (fs: GroveFs, h: FsHarness) => void, blocks?: number): void {
  const h = new FsHarness(blocks);
  body(h.fs, h);
  h.closeAndCheck();
}

/** The detached tree ids the checker walked: an inode's map that spilled out of its record. */
function spilledInodes(device: SimDevice): number[] {
  const report = expectFsClean(device);
  const base = treeIdDefaultSubvolume * 2 ** 32;
  return report.space.forest.trees.filter((t) => t.id > base).map((t) => t.id - base);
}

describe("create, open, read, write", () => {
  it("create makes a regular file owned by the caller; open, read and write through handles", () => {
    withFs((fs) => {
      const fh = fs.create("/f", 0o640, O_CREAT | O_RDWR, user);
      const st = fs.fgetattr(fh);
      expect(st.mode).toBe(C.S_IFREG | 0o640);
      expect(st.uid).toBe(1000);
      expect(st.gid).toBe(1000);
      expect(st.nlink).toBe(1);
      expect(st.size).toBe(0);
      expect(st.blocks).toBe(0);
      expect(st.blksize).toBe(blockSizeBytes);
      expect(fs.getattr("/f")).toEqual(st);
      writeAt(fs, fh, Buffer.from("hello world"), 0);
      expect(readAt(fs, fh, 100).toString()).toBe("hello world");
      expect(readAt(fs, fh, 5, 6).toString()).toBe("world");
      expect(fs.read(fh, Buffer.alloc(10), 10, 11)).toBe(0);
      expect(fs.read(fh, Buffer.alloc(10), 10, 1000)).toBe(0);
      // length is bounded by the buffer too.
      expect(fs.read(fh, Buffer.alloc(3), 100, 0)).toBe(3);
      expect(fs.write(fh, Buffer.from("abc"), 0, 0)).toBe(0);
      expect(fs.getattr("/f").size).toBe(11);
      fs.flush(fh);
      fs.release(fh);
      expectErrno(() => fs.read(fh, Buffer.alloc(1), 1, 0), "EBADF");
      expectErrno(() => fs.release(fh), "EBADF");
      expectErrno(() => fs.fgetattr(fh), "EBADF");
      expectErrno(() => fs.flush(fh), "EBADF");
      expectErrno(() => fs.fsync(fh, false), "EBADF");
      expectErrno(() => fs.fgetattr(12345), "EBADF");
      expect(fs.readdir("/").map((e) => e.name)).toEqual([".", "..", "f"]);
    });
  });

  it("O_EXCL, O_TRUNC, O_APPEND and create of an existing file", () => {
    withFs((fs) => {
      writeFile(fs, "/f", Buffer.from("0123456789"));
      expectErrno(() => fs.create("/f", 0o644, O_CREAT | O_EXCL | O_RDWR, root), "EEXIST");
      // Without O_EXCL, create opens the existing file; the mode is not changed.
      const fh = fs.create("/f", 0o600, O_CREAT | O_RDWR, root);
      expect(fs.fgetattr(fh).mode & 0o777).toBe(0o644);
      expect(readAt(fs, fh, 100).toString()).toBe("0123456789");
      fs.release(fh);
      // O_APPEND: every write lands at the end, whatever the position.
      const app = fs.open("/f", O_WRONLY | O_APPEND);
      writeAt(fs, app, Buffer.from("ab"), 0);
      writeAt(fs, app, Buffer.from("cd"), 3);
      fs.release(app);
      expect(readFile(fs, "/f").toString()).toBe("0123456789abcd");
      // O_APPEND on a file that has extents.
      writeFile(fs, "/big", pattern(3 * blockSizeBytes + 5));
      fs.sync();
      const app2 = fs.open("/big", O_RDWR | O_APPEND);
      writeAt(fs, app2, Buffer.from("tail"), 0);
      fs.release(app2);
      expectBytes(readFile(fs, "/big"), Buffer.concat([pattern(3 * blockSizeBytes + 5), Buffer.from("tail")]));
      // O_TRUNC on open and on create of an existing file.
      const t = fs.open("/f", O_WRONLY | O_TRUNC);
      expect(fs.fgetattr(t).size).toBe(0);
      fs.release(t);
      expect(readFile(fs, "/f").length).toBe(0);
      const t2 = fs.create("/big", 0o644, O_CREAT | O_TRUNC | O_WRONLY, root);
      expect(fs.fgetattr(t2).size).toBe(0);
      expect(fs.fgetattr(t2).blocks).toBe(0);
      fs.release(t2);
      // O_TRUNC with O_RDONLY does not truncate.
      writeFile(fs, "/g", Buffer.from("keep"));
      fs.release(fs.open("/g", O_RDONLY | O_TRUNC));
      expect(readFile(fs, "/g").toString()).toBe("keep");
    });
  });

  it("EBADF on the wrong access mode; EISDIR, ELOOP, ENOENT, ENOTDIR on open", () => {
    withFs((fs) => {
      writeFile(fs, "/f", Buffer.from("data"));
      const ro = fs.open("/f", O_RDONLY);
      expectErrno(() => fs.write(ro, Buffer.from("x"), 1, 0), "EBADF", "EBADF_write");
      expectErrno(() => fs.ftruncate(ro, 0), "EBADF", "EBADF_truncate");
      expect(readAt(fs, ro, 4).toString()).toBe("data");
      fs.release(ro);
      const wo = fs.open("/f", O_WRONLY);
      expectErrno(() => fs.read(wo, Buffer.alloc(4), 4, 0), "EBADF", "EBADF_read");
      writeAt(fs, wo, Buffer.from("D"), 0);
      fs.release(wo);
      const rw = fs.open("/f", O_RDWR);
      expect(readAt(fs, rw, 4).toString()).toBe("Data");
      expectErrno(() => fs.read(rw, Buffer.alloc(4), 4, -1), "EINVAL");
      expectErrno(() => fs.write(rw, Buffer.alloc(4), 4, -1), "EINVAL");
      expectErrno(() => fs.write(rw, Buffer.alloc(4), 4, 0.5), "EINVAL");
      fs.release(rw);
      fs.mkdir("/d", 0o755, root);
      expectErrno(() => fs.open("/d", O_WRONLY), "EISDIR");
      expectErrno(() => fs.open("/d", O_RDWR), "EISDIR");
      const dfh = fs.open("/d", O_RDONLY);
      expectErrno(() => fs.read(dfh, Buffer.alloc(4), 4, 0), "EISDIR");
      fs.release(dfh);
      fs.symlink("/f", "/l", root);
      expectErrno(() => fs.open("/l", O_RDONLY), "ELOOP");
      expectErrno(() => fs.open("/missing", O_RDONLY), "ENOENT");
      expectErrno(() => fs.open("/f/x", O_RDONLY), "ENOTDIR");
      expectErrno(() => fs.create("/missing/x", 0o644, O_CREAT | O_RDWR, root), "ENOENT");
      expectErrno(() => fs.create("/f/x", 0o644, O_CREAT | O_RDWR, root), "ENOTDIR");
      expectErrno(() => fs.open("relative", O_RDONLY), "EINVAL");
    });
  });

  for (const size of [0, 1, 531, 532, 533, 4095, 4096, 4097, 8192, MiB + 1]) {
    it(`a ${size}-byte file reads back exactly, before and after sync and reopen`, () => {
      withFs((fs, h) => {
        const data = pattern(size, size);
        writeFile(fs, "/f", data);
        expect(fs.getattr("/f").size).toBe(size);
        expectBytes(readFile(fs, "/f"), data);
        fs.sync();
        expectBytes(readFile(fs, "/f"), data);
        const st = fs.getattr("/f");
        // Inline files take no data blocks; others exactly their blocks.
        if (size > 532) expect(st.blocks).toBe(Math.ceil(size / blockSizeBytes) * 8);
        else expect(st.blocks).toBe(0);
        const reopened = h.reopen();
        expect(reopened.getattr("/f").size).toBe(size);
        expectBytes(readFile(reopened, "/f"), data);
        // Reads at every block boundary and across them.
        const fh = reopened.open("/f", O_RDONLY);
        for (const at of [0, 1, 4095, 4096, 4097, size - 1, size]) {
          if (at < 0) continue;
          expectBytes(readAt(reopened, fh, 5000, at), data.subarray(at, at + 5000));
        }
        reopened.release(fh);
      });
    });
  }

  it("writes that span blocks, overlap buffered and written-out data, and grow from inline", () => {
    withFs((fs) => {
      const model = Buffer.alloc(40_000);
      const fh = fs.create("/f", 0o644, O_CREAT | O_RDWR, root);
      let size = 0;
      const put = (data: Buffer, at: number): void => {
        writeAt(fs, fh, data, at);
        data.copy(model, at);
        size = Math.max(size, at + data.length);
      };
      put(pattern(100, 1), 0);
      put(pattern(300, 2), 50);
      put(pattern(5000, 3), 200); // leaves inline
      fs.sync();
      put(pattern(10, 4), 4090); // straddles blocks 0 and 1, both in extents
      put(pattern(9000, 5), 12_000); // a gap (hole) then three blocks
      fs.sync();
      put(pattern(20_000, 6), 7000);
      expectBytes(readAt(fs, fh, 40_000), model.subarray(0, size));
      fs.sync();
      expectBytes(readAt(fs, fh, 40_000), model.subarray(0, size));
      fs.release(fh);
    });
  });

  it("overwriting the middle of an extent copies on write; the old extent is freed whole when no record references it", () => {
    withFs((fs) => {
      const data = pattern(64 * blockSizeBytes, 9);
      writeFile(fs, "/f", data);
      fs.sync();
      const used = usedBlocks(fs);
      const blocks = fs.getattr("/f").blocks;
      const fh = fs.open("/f", O_RDWR);
      const patch = pattern(100, 10);
      writeAt(fs, fh, patch, 30 * blockSizeBytes + 1000);
      patch.copy(data, 30 * blockSizeBytes + 1000);
      // A whole-block overwrite and one straddling two blocks.
      const patch2 = pattern(2 * blockSizeBytes, 11);
      writeAt(fs, fh, patch2, 40 * blockSizeBytes - 7);
      patch2.copy(data, 40 * blockSizeBytes - 7);
      fs.sync();
      expectBytes(readFile(fs, "/f"), data);
      expect(fs.getattr("/f").blocks).toBe(blocks);
      // The original 64-block extent is still referenced by the pieces left, so it stays whole:
      // the three new blocks are extra.
      expect(usedBlocks(fs)).toBeGreaterThanOrEqual(used + 3);
      expect(usedBlocks(fs)).toBeLessThanOrEqual(used + 3 + 4);
      // Overwrite every block: no record references the original extent any more, and it is freed.
      for (let i = 0; i < 64; i += 8) {
        const p = pattern(8 * blockSizeBytes, 100 + i);
        writeAt(fs, fh, p, i * blockSizeBytes);
        p.copy(data, i * blockSizeBytes);
        fs.sync();
      }
      expectBytes(readFile(fs, "/f"), data);
      expect(usedBlocks(fs)).toBeLessThanOrEqual(used + 4);
      fs.release(fh);
    });
  });
});

describe("sparse files and truncate", () => {
  it("truncate up makes holes that read as zeros and take no blocks", () => {
    withFs((fs) => {
      writeFile(fs, "/f", Buffer.from("abc"));
      fs.sync();
      const used = usedBlocks(fs);
      fs.truncate("/f", 10 * MiB);
      fs.sync();
      const st = fs.getattr("/f");
      expect(st.size).toBe(10 * MiB);
      expect(st.blocks).toBeLessThanOrEqual(8);
      expect(usedBlocks(fs)).toBeLessThanOrEqual(used + 2);
      const whole = readFile(fs, "/f");
      expect(whole.subarray(0, 3).toString()).toBe("abc");
      expect(whole.subarray(3).every((b) => b === 0)).toBe(true);
      // An empty file truncated up: no data at all.
      writeFile(fs, "/e", Buffer.alloc(0));
      fs.truncate("/e", 5 * MiB + 3);
      fs.sync();
      expect(fs.getattr("/e").blocks).toBe(0);
      expect(readFile(fs, "/e").every((b) => b === 0)).toBe(true);
      // Small sparse growth stays inline and reads zeros.
      writeFile(fs, "/s", Buffer.alloc(0));
      fs.truncate("/s", 100);
      const fh = fs.open("/s", O_RDWR);
      writeAt(fs, fh, Buffer.from("zz"), 50);
      fs.release(fh);
      const s = readFile(fs, "/s");
      expect(s.length).toBe(100);
      expect(s.toString("latin1")).toBe("\0".repeat(50) + "zz" + "\0".repeat(48));
    });
  });

  it("a write at 1 GiB takes one block; the hole before it reads as zeros", () => {
    withFs((fs) => {
      const fh = fs.create("/f", 0o644, O_CREAT | O_RDWR, root);
      writeAt(fs, fh, Buffer.from("far away"), GiB);
      expect(fs.fgetattr(fh).size).toBe(GiB + 8);
      expect(fs.fgetattr(fh).blocks).toBe(8);
      fs.sync();
      expect(fs.fgetattr(fh).blocks).toBe(8);
      expect(readAt(fs, fh, 8, GiB).toString()).toBe("far away");
      const hole = readAt(fs, fh, MiB, GiB - MiB);
      expect(hole.length).toBe(MiB);
      expect(hole.every((b) => b === 0)).toBe(true);
      expect(readAt(fs, fh, 16, GiB - 8).toString("latin1")).toBe("\0".repeat(8) + "far away");
      // A write in the middle of the hole, then the start.
      writeAt(fs, fh, Buffer.from("mid"), GiB / 2);
      writeAt(fs, fh, Buffer.from("start"), 0);
      fs.sync();
      expect(fs.fgetattr(fh).blocks).toBe(24);
      expect(readAt(fs, fh, 3, GiB / 2).toString()).toBe("mid");
      expect(readAt(fs, fh, 5, 0).toString()).toBe("start");
      fs.release(fh);
    });
  });

  for (const written of [false, true]) {
    it(`truncate shrinks mid-block and growing again reveals zeros (${written ? "written out" : "buffered"})`, () => {
      withFs((fs) => {
        const data = pattern(5 * blockSizeBytes, 3);
        writeFile(fs, "/f", data);
        if (written) fs.sync();
        fs.truncate("/f", 2 * blockSizeBytes + 100);
        if (written) fs.sync();
        expect(fs.getattr("/f").size).toBe(2 * blockSizeBytes + 100);
        expectBytes(readFile(fs, "/f"), data.subarray(0, 2 * blockSizeBytes + 100));
        expect(fs.getattr("/f").blocks).toBe(3 * 8);
        fs.truncate("/f", 5 * blockSizeBytes);
        const grown = readFile(fs, "/f");
        expectBytes(grown.subarray(0, 2 * blockSizeBytes + 100), data.subarray(0, 2 * blockSizeBytes + 100));
        expect(grown.subarray(2 * blockSizeBytes + 100).every((b) => b === 0)).toBe(true);
        fs.sync();
        expectBytes(readFile(fs, "/f"), grown);
        // Grow by writing past the end rather than truncating: the tail of the old last block is zero too.
        fs.truncate("/f", 7);
        const fh = fs.open("/f", O_RDWR);
        writeAt(fs, fh, Buffer.from("X"), 3 * blockSizeBytes);
        fs.release(fh);
        const after = readFile(fs, "/f");
        expectBytes(after.subarray(0, 7), data.subarray(0, 7));
        expect(after.subarray(7, 3 * blockSizeBytes).every((b) => b === 0)).toBe(true);
        expect(after[3 * blockSizeBytes]).toBe("X".charCodeAt(0));
        // Truncate to a block boundary and to zero.
        fs.truncate("/f", blockSizeBytes);
        expect(readFile(fs, "/f").length).toBe(blockSizeBytes);
        fs.truncate("/f", 0);
        fs.sync();
        expect(fs.getattr("/f").blocks).toBe(0);
        expect(fs.getattr("/f").size).toBe(0);
      });
    });
  }

  it("truncating a big file frees its blocks", () => {
    withFs((fs) => {
      fs.sync();
      const before = usedBlocks(fs);
      writeFile(fs, "/f", pattern(4 * MiB, 5));
      fs.sync();
      expect(usedBlocks(fs)).toBeGreaterThanOrEqual(before + 1024);
      fs.truncate("/f", 0);
      fs.sync();
      expect(usedBlocks(fs)).toBeLessThanOrEqual(before + 2);
    });
  });

  it("ftruncate through a handle; truncate errors", () => {
    withFs((fs) => {
      const fh = fs.create("/f", 0o644, O_CREAT | O_RDWR, root);
      writeAt(fs, fh, pattern(10_000), 0);
      fs.ftruncate(fh, 4097);
      expect(fs.fgetattr(fh).size).toBe(4097);
      expectBytes(readAt(fs, fh, 10_000), pattern(4097));
      fs.ftruncate(fh, 0);
      expect(readAt(fs, fh, 10)).toEqual(Buffer.alloc(0));
      expectErrno(() => fs.ftruncate(fh, -1), "EINVAL");
      fs.release(fh);
      fs.mkdir("/d", 0o755, root);
      expectErrno(() => fs.truncate("/d", 0), "EISDIR");
      fs.symlink("/f", "/l", root);
      expectErrno(() => fs.truncate("/l", 0), "EINVAL");
      expectErrno(() => fs.truncate("/missing", 0), "ENOENT");
      expectErrno(() => fs.truncate("/f", 1.5), "EINVAL");
      const dfh = fs.opendir("/d");
      expectErrno(() => fs.ftruncate(dfh, 0), "EBADF");
      fs.releasedir(dfh);
    });
  });

  it("EFBIG: writes and truncates past fileSizeMaxBytes; the last byte below it works", () => {
    withFs((fs) => {
      const fh = fs.create("/f", 0o644, O_CREAT | O_RDWR, root);
      expectErrno(() => fs.write(fh, Buffer.from("ab"), 2, fileSizeMaxBytes - 1), "EFBIG");
      expectErrno(() => fs.write(fh, Buffer.from("a"), 1, fileSizeMaxBytes), "EFBIG");
      expectErrno(() => fs.truncate("/f", fileSizeMaxBytes + 1), "EFBIG");
      expectErrno(() => fs.ftruncate(fh, fileSizeMaxBytes + 1), "EFBIG");
      expect(fs.fgetattr(fh).size).toBe(0);
      writeAt(fs, fh, Buffer.from("z"), fileSizeMaxBytes - 1);
      expect(fs.fgetattr(fh).size).toBe(fileSizeMaxBytes);
      fs.sync();
      expect(readAt(fs, fh, 10, fileSizeMaxBytes - 1).toString()).toBe("z");
      expect(fs.fgetattr(fh).blocks).toBe(8);
      // O_APPEND at the limit.
      const app = fs.open("/f", O_WRONLY | O_APPEND);
      expectErrno(() => fs.write(app, Buffer.from("a"), 1, 0), "EFBIG");
      fs.release(app);
      fs.ftruncate(fh, fileSizeMaxBytes);
      fs.ftruncate(fh, 3);
      fs.release(fh);
      expectBytes(readFile(fs, "/f"), Buffer.alloc(3));
    });
  });
});

describe("directories", () => {
  it("mkdir and rmdir keep link counts; their errors", () => {
    withFs((fs) => {
      expect(fs.getattr("/").nlink).toBe(2);
      const st = fs.mkdir("/a", 0o750, user);
      expect(st.mode).toBe(C.S_IFDIR | 0o750);
      expect(st.nlink).toBe(2);
      expect(st.uid).toBe(1000);
      expect(fs.getattr("/").nlink).toBe(3);
      fs.mkdir("/a/b", 0o755, root);
      fs.mkdir("/a/c", 0o755, root);
      expect(fs.getattr("/a").nlink).toBe(4);
      expect(fs.readdir("/a")).toEqual([
        { name: ".", ino: st.ino, type: C.S_IFDIR },
        { name: "..", ino: 1, type: C.S_IFDIR },
        { name: "b", ino: fs.inoOf("/a/b"), type: C.S_IFDIR },
        { name: "c", ino: fs.inoOf("/a/c"), type: C.S_IFDIR },
      ]);
      expect(fs.readdir("/a/b")[1]).toEqual({ name: "..", ino: st.ino, type: C.S_IFDIR });
      expect(fs.readdir("/")[1]!.ino).toBe(1);
      expectErrno(() => fs.mkdir("/a", 0o755, root), "EEXIST");
      expectErrno(() => fs.mkdir("/a/b/.", 0o755, root), "EEXIST");
      expectErrno(() => fs.mkdir("/", 0o755, root), "EEXIST");
      expectErrno(() => fs.mkdir("/x/y", 0o755, root), "ENOENT");
      writeFile(fs, "/a/f", Buffer.from("x"));
      expectErrno(() => fs.mkdir("/a/f/y", 0o755, root), "ENOTDIR");
      expectErrno(() => fs.rmdir("/a"), "ENOTEMPTY");
      expectErrno(() => fs.rmdir("/a/f"), "ENOTDIR");
      expectErrno(() => fs.rmdir("/a/missing"), "ENOENT");
      expectErrno(() => fs.rmdir("/"), "EBUSY");
      expectErrno(() => fs.rmdir("/a/b/."), "EINVAL");
      expectErrno(() => fs.rmdir("/a/b/.."), "ENOTEMPTY");
      expectErrno(() => fs.readdir("/a/f"), "ENOTDIR");
      expectErrno(() => fs.opendir("/a/f"), "ENOTDIR");
      expectErrno(() => fs.readdir("/nope"), "ENOENT");
      fs.rmdir("/a/b");
      expect(fs.getattr("/a").nlink).toBe(3);
      // Paths with "." and ".." and repeated slashes resolve.
      expect(fs.inoOf("/a/c/../c/./")).toBe(fs.inoOf("/a/c"));
      expect(fs.inoOf("//a///c")).toBe(fs.inoOf("/a/c"));
      expect(fs.inoOf("/..")).toBe(1);
      const dfh = fs.opendir("/a");
      fs.fsyncdir(dfh, false);
      fs.releasedir(dfh);
      expectErrno(() => fs.releasedir(dfh), "EBADF");
      expectErrno(() => fs.fsyncdir(dfh, false), "EBADF");
      fs.unlink("/a/f");
      fs.rmdir("/a/c");
      fs.rmdir("/a");
      expect(fs.getattr("/").nlink).toBe(2);
      expectErrno(() => fs.getattr("/a"), "ENOENT");
      expect(fs.readdir("/").map((e) => e.name)).toEqual([".", ".."]);
    });
  });

  it("mkdir honours the sticky bit and setgid inheritance", () => {
    withFs((fs) => {
      fs.mkdir("/s", 0o1777, root);
      expect(fs.getattr("/s").mode).toBe(C.S_IFDIR | 0o1777);
      fs.mkdir("/g", 0o2775, user);
      fs.chmod("/g", 0o2775);
      fs.mkdir("/g/child", 0o755, { uid: 5, gid: 6 });
      const child = fs.getattr("/g/child");
      expect(child.gid).toBe(1000);
      expect(child.mode & 0o2000).toBe(0o2000);
      const fh = fs.create("/g/file", 0o644, O_CREAT | O_RDWR, { uid: 5, gid: 6 });
      fs.release(fh);
      expect(fs.getattr("/g/file").gid).toBe(1000);
    });
  });

  it("thousands of entries spill from the inode record to a tree, and readdir lists them all", () => {
    const h = new FsHarness();
    let fs = h.fs;
    fs.mkdir("/d", 0o755, root);
    const dirIno = fs.inoOf("/d");
    const names: string[] = [];
    for (let i = 0; i < 3000; i++) {
      const name = `entry-${i.toString().padStart(5, "0")}-${"x".repeat(i % 40)}`;
      names.push(name);
      if (i % 3 === 0) fs.mkdir(`/d/${name}`, 0o755, root);
      else fs.release(fs.create(`/d/${name}`, 0o644, O_CREAT | O_WRONLY, root));
    }
    const listed = fs.readdir("/d");
    expect(listed.length).toBe(3002);
    expect(listed.slice(2).map((e) => e.name).sort()).toEqual([...names].sort());
    expect(fs.getattr("/d").nlink).toBe(2 + 1000);
    fs = h.reopen();
    expect(fs.readdir("/d").length).toBe(3002);
    for (const name of names.slice(0, 100)) expect(fs.getattr(`/d/${name}`).ino).toBeGreaterThan(1);
    fs.close();
    h.device = h.device.reopen();
    expect(spilledInodes(h.device)).toContain(dirIno);
    fs = h.fs = GroveFs.open(h.device, { clock: h.clock });
    // Delete every other entry, then all, then the directory itself.
    for (let i = 0; i < names.length; i += 2) {
      if (i % 3 === 0) fs.rmdir(`/d/${names[i]}`);
      else fs.unlink(`/d/${names[i]}`);
    }
    expect(fs.readdir("/d").length).toBe(1502);
    fs.sync();
    expectFsClean(h.device);
    for (let i = 1; i < names.length; i += 2) {
      if (i % 3 === 0) fs.rmdir(`/d/${names[i]}`);
      else fs.unlink(`/d/${names[i]}`);
    }
    expect(fs.readdir("/d").map((e) => e.name)).toEqual([".", ".."]);
    expect(fs.getattr("/d").nlink).toBe(2);
    fs.rmdir("/d");
    h.closeAndCheck();
    expect(spilledInodes(h.device)).toEqual([]);
  });
});

describe("unlink, rename, link", () => {
  it("unlink removes names; EISDIR, ENOENT, ENOTDIR", () => {
    withFs((fs) => {
      writeFile(fs, "/f", pattern(50_000));
      fs.mkdir("/d", 0o755, root);
      fs.sync();
      const used = usedBlocks(fs);
      expectErrno(() => fs.unlink("/d"), "EISDIR");
      expectErrno(() => fs.unlink("/missing"), "ENOENT");
      expectErrno(() => fs.unlink("/f/x"), "ENOTDIR");
      expectErrno(() => fs.unlink("/"), "EISDIR");
      fs.unlink("/f");
      expectErrno(() => fs.getattr("/f"), "ENOENT");
      fs.sync();
      expect(usedBlocks(fs)).toBeLessThanOrEqual(used - 12);
      expect(fs.info().inodes).toBe(2);
    });
  });

  it("rename: within and across directories, over files and empty directories, with parents' nlink", () => {
    withFs((fs) => {
      fs.mkdir("/a", 0o755, root);
      fs.mkdir("/b", 0o755, root);
      writeFile(fs, "/a/f", Buffer.from("f"));
      writeFile(fs, "/a/g", Buffer.from("g"));
      const fIno = fs.inoOf("/a/f");
      fs.rename("/a/f", "/a/f2");
      expect(fs.inoOf("/a/f2")).toBe(fIno);
      expectErrno(() => fs.getattr("/a/f"), "ENOENT");
      // Over an existing file: the old one goes away.
      const gIno = fs.inoOf("/a/g");
      fs.rename("/a/f2", "/a/g");
      expect(fs.inoOf("/a/g")).toBe(fIno);
      expect(fs.hasInode(gIno)).toBe(false);
      expect(readFile(fs, "/a/g").toString()).toBe("f");
      // A file across directories: no nlink change.
      fs.rename("/a/g", "/b/g");
      expect(fs.getattr("/a").nlink).toBe(2);
      expect(fs.getattr("/b").nlink).toBe(2);
      // A directory across directories: the parents' nlink move and ".." follows.
      fs.mkdir("/a/sub", 0o755, root);
      writeFile(fs, "/a/sub/inner", Buffer.from("in"));
      expect(fs.getattr("/a").nlink).toBe(3);
      fs.rename("/a/sub", "/b/sub");
      expect(fs.getattr("/a").nlink).toBe(2);
      expect(fs.getattr("/b").nlink).toBe(3);
      expect(fs.readdir("/b/sub")[1]!.ino).toBe(fs.inoOf("/b"));
      expect(fs.inoOf("/b/sub/..")).toBe(fs.inoOf("/b"));
      expect(readFile(fs, "/b/sub/inner").toString()).toBe("in");
      // Over an empty directory, in another parent.
      fs.mkdir("/a/empty", 0o755, root);
      const emptyIno = fs.inoOf("/a/empty");
      expect(fs.getattr("/a").nlink).toBe(3);
      fs.rename("/b/sub", "/a/empty");
      expect(fs.hasInode(emptyIno)).toBe(false);
      expect(fs.getattr("/a").nlink).toBe(3);
      expect(fs.getattr("/b").nlink).toBe(2);
      expect(readFile(fs, "/a/empty/inner").toString()).toBe("in");
      // Over an empty directory in the same parent.
      fs.mkdir("/a/e2", 0o755, root);
      fs.rename("/a/empty", "/a/e2");
      expect(fs.getattr("/a").nlink).toBe(3);
      // To the root and back.
      fs.rename("/a/e2", "/top");
      expect(fs.getattr("/").nlink).toBe(5);
      expect(fs.getattr("/a").nlink).toBe(2);
      expect(fs.readdir("/top").map((e) => e.name)).toEqual([".", "..", "inner"]);
    });
  });

  it("rename errors: ENOTEMPTY, ENOTDIR, EISDIR, EINVAL, ENOENT, EBUSY", () => {
    withFs((fs) => {
      fs.mkdir("/d", 0o755, root);
      fs.mkdir("/d/sub", 0o755, root);
      fs.mkdir("/full", 0o755, root);
      writeFile(fs, "/full/x", Buffer.from("x"));
      writeFile(fs, "/f", Buffer.from("f"));
      fs.mkdir("/empty", 0o755, root);
      expectErrno(() => fs.rename("/d", "/full"), "ENOTEMPTY");
      expectErrno(() => fs.rename("/d", "/f"), "ENOTDIR");
      expectErrno(() => fs.rename("/f", "/empty"), "EISDIR");
      expectErrno(() => fs.rename("/d", "/d/sub/deeper"), "EINVAL");
      expectErrno(() => fs.rename("/d", "/d/inside"), "EINVAL");
      expectErrno(() => fs.rename("/d/sub", "/d"), "ENOTEMPTY");
      expectErrno(() => fs.rename("/missing", "/x"), "ENOENT");
      expectErrno(() => fs.rename("/f", "/missing/x"), "ENOENT");
      expectErrno(() => fs.rename("/f", "/f/x"), "ENOTDIR");
      expectErrno(() => fs.rename("/", "/x"), "EBUSY");
      expectErrno(() => fs.rename("/f", "/"), "EBUSY");
      expectErrno(() => fs.rename("/d/.", "/x"), "EINVAL");
      expectErrno(() => fs.rename("/f", "/d/.."), "EINVAL");
      expectErrno(() => fs.rename("/f", "/g", 4), "EINVAL");
      expectErrno(() => fs.rename("/f", "/g", renameNoReplace | renameExchange), "EINVAL");
      // Nothing changed.
      expect(fs.readdir("/").map((e) => e.name).sort()).toEqual([".", "..", "d", "empty", "f", "full"]);
      expect(fs.getattr("/d").nlink).toBe(3);
      // A directory onto itself is a no-op.
      fs.rename("/d", "/d");
      fs.rename("/f", "/f");
      expect(fs.getattr("/d").nlink).toBe(3);
      expect(readFile(fs, "/f").toString()).toBe("f");
    });
  });

  it("rename onto another name of the same inode is a no-op and both names remain", () => {
    withFs((fs) => {
      writeFile(fs, "/a", Buffer.from("same"));
      fs.mkdir("/d", 0o755, root);
      fs.link("/a", "/d/b");
      fs.rename("/a", "/d/b");
      expect(fs.getattr("/a").nlink).toBe(2);
      expect(fs.inoOf("/a")).toBe(fs.inoOf("/d/b"));
      expect(readFile(fs, "/d/b").toString()).toBe("same");
      fs.rename("/a", "/d/b", renameExchange);
      expect(fs.getattr("/a").nlink).toBe(2);
      expect(fs.inoOf("/a")).toBe(fs.inoOf("/d/b"));
    });
  });

  it("RENAME_NOREPLACE and RENAME_EXCHANGE", () => {
    withFs((fs) => {
      writeFile(fs, "/a", Buffer.from("A"));
      writeFile(fs, "/b", Buffer.from("B"));
      expectErrno(() => fs.rename("/a", "/b", renameNoReplace), "EEXIST");
      expect(readFile(fs, "/b").toString()).toBe("B");
      fs.rename("/a", "/c", renameNoReplace);
      expect(readFile(fs, "/c").toString()).toBe("A");
      expectErrno(() => fs.rename("/c", "/missing", renameExchange), "ENOENT");
      fs.rename("/c", "/b", renameExchange);
      expect(readFile(fs, "/c").toString()).toBe("B");
      expect(readFile(fs, "/b").toString()).toBe("A");
      // Exchange a directory with a file across parents: the parents' nlink swap.
      fs.mkdir("/p", 0o755, root);
      fs.mkdir("/q", 0o755, root);
      fs.mkdir("/p/dir", 0o755, root);
      writeFile(fs, "/p/dir/x", Buffer.from("x"));
      writeFile(fs, "/q/file", Buffer.from("file"));
      expect(fs.getattr("/p").nlink).toBe(3);
      fs.rename("/p/dir", "/q/file", renameExchange);
      expect(fs.getattr("/p").nlink).toBe(2);
      expect(fs.getattr("/q").nlink).toBe(3);
      expect(readFile(fs, "/q/file/x").toString()).toBe("x");
      expect(readFile(fs, "/p/dir").toString()).toBe("file");
      expect(fs.inoOf("/q/file/..")).toBe(fs.inoOf("/q"));
      expect(fs.readdir("/q/file")[1]!.ino).toBe(fs.inoOf("/q"));
      // Exchange two directories across parents: nlink stays, both ".." move.
      fs.mkdir("/p/d2", 0o755, root);
      fs.rename("/p/d2", "/q/file", renameExchange);
      expect(fs.getattr("/p").nlink).toBe(3);
      expect(fs.getattr("/q").nlink).toBe(3);
      expect(fs.readdir("/p/d2").map((e) => e.name)).toEqual([".", "..", "x"]);
      expect(fs.inoOf("/p/d2/..")).toBe(fs.inoOf("/p"));
      expect(fs.inoOf("/q/file/..")).toBe(fs.inoOf("/q"));
      // Exchanging a directory with its own descendant is EINVAL.
      fs.mkdir("/p/d2/deep", 0o755, root);
      expectErrno(() => fs.rename("/p/d2", "/p/d2/deep", renameExchange), "EINVAL");
      expectErrno(() => fs.rename("/p/d2/deep", "/p/d2", renameExchange), "EINVAL");
      // A non-empty directory may be exchanged (it is not replaced).
      fs.mkdir("/r", 0o755, root);
      writeFile(fs, "/r/y", Buffer.from("y"));
      fs.rename("/r", "/p", renameExchange);
      expect(readFile(fs, "/p/y").toString()).toBe("y");
      expect(readFile(fs, "/r/d2/x").toString()).toBe("x");
    });
  });

  it("rename over a file that is open makes it an orphan until released", () => {
    withFs((fs) => {
      writeFile(fs, "/victim", pattern(20_000, 4));
      writeFile(fs, "/new", Buffer.from("new"));
      const fh = fs.open("/victim", O_RDONLY);
      const ino = fs.fgetattr(fh).ino;
      fs.rename("/new", "/victim");
      expect(fs.fgetattr(fh).nlink).toBe(0);
      expectBytes(readAt(fs, fh, 20_000), pattern(20_000, 4));
      expect(fs.info().orphans).toBe(1);
      fs.sync();
      expectFsClean(fs.store.device);
      fs.release(fh);
      expect(fs.hasInode(ino)).toBe(false);
      expect(fs.info().orphans).toBe(0);
    });
  });

  it("link counts names; EPERM on a directory, EEXIST, ENOENT", () => {
    withFs((fs) => {
      writeFile(fs, "/f", Buffer.from("linked"));
      fs.mkdir("/d", 0o755, root);
      const st = fs.link("/f", "/d/g");
      expect(st.nlink).toBe(2);
      expect(st.ino).toBe(fs.inoOf("/f"));
      fs.link("/d/g", "/h");
      expect(fs.getattr("/f").nlink).toBe(3);
      expectErrno(() => fs.link("/d", "/d2"), "EPERM");
      expectErrno(() => fs.link("/f", "/h"), "EEXIST");
      expectErrno(() => fs.link("/f", "/d"), "EEXIST");
      expectErrno(() => fs.link("/missing", "/x"), "ENOENT");
      expectErrno(() => fs.link("/f", "/missing/x"), "ENOENT");
      // Symlinks can be hard-linked (the link itself, not its target).
      fs.symlink("/f", "/sl", root);
      fs.link("/sl", "/sl2");
      expect(fs.readlink("/sl2")).toBe("/f");
      expect(fs.getattr("/sl").nlink).toBe(2);
      // Writing through one name shows through the others.
      const fh = fs.open("/h", O_WRONLY);
      writeAt(fs, fh, Buffer.from("L"), 0);
      fs.release(fh);
      expect(readFile(fs, "/d/g").toString()).toBe("Linked");
      fs.unlink("/f");
      expect(fs.getattr("/h").nlink).toBe(2);
      fs.unlink("/h");
      expect(fs.getattr("/d/g").nlink).toBe(1);
      expect(readFile(fs, "/d/g").toString()).toBe("Linked");
    });
  });
});

describe("link count limit", () => {
  it("EMLINK once a file has linkCountMax names", () => {
    withFs((fs) => {
      writeFile(fs, "/f", Buffer.from("x"));
      const ino = fs.inoOf("/f");
      // Pretend the file already has linkCountMax - 1 names: edit its record through the inode tree.
      const tree = fs.store.openTree(treeIdDefaultSubvolume);
      const setNlink = (nlink: number): void => {
        const inode = decodeInode(ino, tree.get(inodeKey(ino))!);
        inode.nlink = nlink;
        tree.put(inodeKey(ino), encodeInode(inode));
      };
      setNlink(linkCountMax - 1);
      expect(fs.link("/f", "/g").nlink).toBe(linkCountMax);
      expectErrno(() => fs.link("/f", "/h"), "EMLINK");
      expectErrno(() => fs.link("/g", "/h"), "EMLINK");
      expectErrno(() => fs.getattr("/h"), "ENOENT");
      fs.unlink("/g");
      setNlink(1);
      fs.link("/f", "/h");
      expect(fs.getattr("/h").nlink).toBe(2);
    });
  });
});

describe("symlinks, special files, attributes", () => {
  it("symlink and readlink: short and 4095-byte targets; ENAMETOOLONG, EINVAL", () => {
    withFs((fs, h) => {
      const st = fs.symlink("target", "/l", user);
      expect(st.mode).toBe(C.S_IFLNK | 0o777);
      expect(st.size).toBe(6);
      expect(st.uid).toBe(1000);
      expect(fs.readlink("/l")).toBe("target");
      // PATH_MAX - 1 bytes, with multi-byte characters in it.
      const exact = ("/" + "é".repeat(99)).repeat(10) + "y".repeat(4095 - 10 * 199);
      expect(Buffer.byteLength(exact)).toBe(4095);
      fs.symlink(exact, "/long", root);
      expect(fs.readlink("/long")).toBe(exact);
      expect(fs.getattr("/long").size).toBe(4095);
      expectErrno(() => fs.symlink(exact + "z", "/toolong", root), "ENAMETOOLONG");
      expectErrno(() => fs.symlink("", "/empty", root), "ENOENT");
      expectErrno(() => fs.symlink("a\0b", "/nul", root), "EINVAL");
      expectErrno(() => fs.symlink("t", "/l", root), "EEXIST");
      writeFile(fs, "/f", Buffer.from("file"));
      expectErrno(() => fs.readlink("/f"), "EINVAL");
      expectErrno(() => fs.readlink("/"), "EINVAL");
      expectErrno(() => fs.readlink("/missing"), "ENOENT");
      // A symlink is not followed when resolving paths through it (no traversal).
      fs.mkdir("/d", 0o755, root);
      fs.symlink("/d", "/ld", root);
      expectErrno(() => fs.getattr("/ld/x"), "ENOTDIR");
      const fresh = h.reopen();
      expect(fresh.readlink("/long")).toBe(exact);
      expect(fresh.readlink("/l")).toBe("target");
      fresh.unlink("/long");
    });
  });

  it("mknod makes fifos, sockets, char and block devices; refuses directories and symlinks", () => {
    withFs((fs, h) => {
      const fifo = fs.mknod("/fifo", C.S_IFIFO | 0o644, 0, root);
      expect(fifo.mode).toBe(C.S_IFIFO | 0o644);
      expect(fifo.rdev).toBe(0);
      expect(fs.mknod("/sock", C.S_IFSOCK | 0o600, 0, root).mode).toBe(C.S_IFSOCK | 0o600);
      const chr = fs.mknod("/null", C.S_IFCHR | 0o666, (1 << 8) | 3, root);
      expect(chr.rdev).toBe((1 << 8) | 3);
      expect(fs.mknod("/blk", C.S_IFBLK | 0o660, (8 << 8) | 1, root).rdev).toBe((8 << 8) | 1);
      expect(fs.mknod("/plain", 0o644, 0, root).mode).toBe(C.S_IFREG | 0o644);
      expectErrno(() => fs.mknod("/dir", C.S_IFDIR | 0o755, 0, root), "EINVAL");
      expectErrno(() => fs.mknod("/lnk", C.S_IFLNK | 0o777, 0, root), "EINVAL");
      expectErrno(() => fs.mknod("/fifo", C.S_IFIFO | 0o644, 0, root), "EEXIST");
      const types = new Map(fs.readdir("/").map((e) => [e.name, e.type]));
      expect(types.get("fifo")).toBe(C.S_IFIFO);
      expect(types.get("sock")).toBe(C.S_IFSOCK);
      expect(types.get("null")).toBe(C.S_IFCHR);
      expect(types.get("blk")).toBe(C.S_IFBLK);
      expect(types.get("plain")).toBe(C.S_IFREG);
      const fresh = h.reopen();
      expect(fresh.getattr("/null").rdev).toBe((1 << 8) | 3);
      expect(fresh.getattr("/fifo").mode).toBe(C.S_IFIFO | 0o644);
      fresh.unlink("/sock");
    });
  });

  it("chmod and chown, with -1 leaving an id unchanged", () => {
    withFs((fs) => {
      writeFile(fs, "/f", Buffer.from("x"));
      const before = fs.getattr("/f");
      fs.chmod("/f", 0o4751);
      const after = fs.getattr("/f");
      expect(after.mode).toBe(C.S_IFREG | 0o4751);
      expect(after.ctimeNs).toBeGreaterThan(before.ctimeNs);
      fs.chmod("/f", C.S_IFDIR | 0o600); // type bits in the argument are ignored
      expect(fs.getattr("/f").mode).toBe(C.S_IFREG | 0o600);
      fs.chown("/f", 10, 20);
      expect(fs.getattr("/f")).toMatchObject({ uid: 10, gid: 20 });
      fs.chown("/f", -1, 30);
      expect(fs.getattr("/f")).toMatchObject({ uid: 10, gid: 30 });
      fs.chown("/f", 40, -1);
      expect(fs.getattr("/f")).toMatchObject({ uid: 40, gid: 30 });
      fs.chown("/f", 0xffffffff, 0xffffffff);
      expect(fs.getattr("/f")).toMatchObject({ uid: 40, gid: 30 });
      fs.chown("/f", 0xfffffffe, 0);
      expect(fs.getattr("/f")).toMatchObject({ uid: 0xfffffffe, gid: 0 });
      fs.mkdir("/d", 0o755, root);
      fs.chmod("/d", 0o700);
      expect(fs.getattr("/d").mode).toBe(C.S_IFDIR | 0o700);
      fs.chmod("/", 0o711);
      expect(fs.getattr("/").mode).toBe(C.S_IFDIR | 0o711);
      expectErrno(() => fs.chmod("/missing", 0o600), "ENOENT");
      expectErrno(() => fs.chown("/missing", 1, 1), "ENOENT");
    });
  });

  it("utimens with nanoseconds, now and omit", () => {
    withFs((fs, h) => {
      writeFile(fs, "/f", Buffer.from("x"));
      const a = 1_234_567_890_123_456_789n;
      const m = 987_654_321_987_654_321n;
      fs.utimens("/f", a, m);
      let st = fs.getattr("/f");
      expect(st.atimeNs).toBe(a);
      expect(st.mtimeNs).toBe(m);
      const ctime = st.ctimeNs;
      fs.utimens("/f", "omit", 5n);
      st = fs.getattr("/f");
      expect(st.atimeNs).toBe(a);
      expect(st.mtimeNs).toBe(5n);
      expect(st.ctimeNs).toBeGreaterThan(ctime);
      fs.utimens("/f", "now", "omit");
      st = fs.getattr("/f");
      expect(st.mtimeNs).toBe(5n);
      expect(st.atimeNs).toBe(st.ctimeNs);
      expect(st.atimeNs).toBeGreaterThan(ctime);
      const c2 = st.ctimeNs;
      fs.utimens("/f", "omit", "omit");
      expect(fs.getattr("/f").ctimeNs).toBe(c2);
      fs.utimens("/f", "now", "now");
      st = fs.getattr("/f");
      expect(st.atimeNs).toBe(st.mtimeNs);
      expect(st.mtimeNs).toBe(st.ctimeNs);
      // Times are signed 64-bit ns: both ends, and before 1970, round-trip.
      fs.utimens("/f", -(2n ** 63n), 2n ** 63n - 1n);
      expect(fs.getattr("/f").atimeNs).toBe(-(2n ** 63n));
      expect(fs.getattr("/f").mtimeNs).toBe(2n ** 63n - 1n);
      fs.utimens("/f", "omit", -315_619_200_000_000_000n);
      expect(fs.getattr("/f").mtimeNs).toBe(-315_619_200_000_000_000n);
      expectErrno(() => fs.utimens("/missing", 1n, 1n), "ENOENT");
      fs.utimens("/f", a, m);
      const fresh = h.reopen();
      st = fresh.getattr("/f");
      expect(st.atimeNs).toBe(a);
      expect(st.mtimeNs).toBe(m);
      // Writes move mtime and ctime; crtime never moves.
      const crtime = st.crtimeNs;
      const fh = fresh.open("/f", O_WRONLY);
      writeAt(fresh, fh, Buffer.from("y"), 0);
      fresh.release(fh);
      expect(fresh.getattr("/f").mtimeNs).toBeGreaterThan(m);
      expect(fresh.getattr("/f").crtimeNs).toBe(crtime);
    });
  });

  it("atime follows the mount's policy: noatime, strictatime and nodiratime (mount -o)", () => {
    const atimes = (options: AccessTimes) => {
      const h = new FsHarness(16384, { accessTimes: options });
      const fs = h.fs;
      fs.mkdir("/d", 0o755, root);
      writeFile(fs, "/d/f", Buffer.from("abc"));
      const before = [fs.getattr("/d/f").atimeNs, fs.getattr("/d").atimeNs];
      const after: bigint[][] = [];
      for (let read = 0; read < 2; read++) {
        readFile(fs, "/d/f");
        fs.readdir("/d");
        after.push([fs.getattr("/d/f").atimeNs, fs.getattr("/d").atimeNs]);
      }
      h.closeAndCheck();
      return { before, after };
    };
    // noatime: reads never move it.
    let t = atimes({ update: "noatime", directories: true });
    expect(t.after).toEqual([t.before, t.before]);
    // strictatime: every read does, even when atime is already newer than mtime.
    t = atimes({ update: "strictatime", directories: true });
    expect(t.after[0]![0]).toBeGreaterThan(t.before[0]!);
    expect(t.after[1]![0]).toBeGreaterThan(t.after[0]![0]!);
    expect(t.after[1]![1]).toBeGreaterThan(t.after[0]![1]!);
    // nodiratime: files as relatime (the first read only), directories never.
    t = atimes({ update: "relatime", directories: false });
    expect(t.after[0]![0]).toBeGreaterThan(t.before[0]!);
    expect(t.after[1]![0]).toBe(t.after[0]![0]);
    expect([t.after[0]![1], t.after[1]![1]]).toEqual([t.before[1], t.before[1]]);
  });

  it("timestamps: which calls move atime, mtime and ctime", () => {
    const h = new FsHarness();
    const fs = h.fs;
    const times = (path: string): [bigint, bigint, bigint] => {
      const st = fs.getattr(path);
      return [st.atimeNs, st.mtimeNs, st.ctimeNs];
    };
    fs.mkdir("/d", 0o755, root);
    fs.mkdir("/e", 0o755, root);
    let [, dm, dc] = times("/d");
    writeFile(fs, "/d/f", Buffer.from("abc"));
    const [fa, fm, fc] = times("/d/f");
    expect(times("/d")[1]).toBeGreaterThan(dm); // create moves the parent's mtime and ctime
    expect(times("/d")[2]).toBeGreaterThan(dc);
    expect(fs.getattr("/d/f").crtimeNs).toBeLessThanOrEqual(fa);
    // A read moves atime (relatime: atime was not newer than mtime), nothing else.
    readFile(fs, "/d/f");
    const [ra, rm, rc] = times("/d/f");
    expect(ra).toBeGreaterThan(fa);
    expect([rm, rc]).toEqual([fm, fc]);
    // A second read right away does not (atime is already newer than mtime and ctime).
    readFile(fs, "/d/f");
    expect(times("/d/f")[0]).toBe(ra);
    // chmod, chown, setxattr and link move ctime only.
    for (const change of [
      () => fs.chmod("/d/f", 0o600),
      () => fs.chown("/d/f", 5, 5),
      () => fs.setxattr("/d/f", "user.t", Buffer.from("t"), 0),
      () => fs.link("/d/f", "/e/g"),
    ]) {
      const [a0, m0, c0] = times("/d/f");
      change();
      const [a1, m1, c1] = times("/d/f");
      expect([a1, m1]).toEqual([a0, m0]);
      expect(c1).toBeGreaterThan(c0);
    }
    // rename moves both parents' mtime and ctime and the inode's ctime.
    [, dm, dc] = times("/d");
    const [, em, ec] = times("/e");
    const [, gm, gc] = times("/e/g");
    fs.rename("/e/g", "/d/g");
    expect(times("/d")[1]).toBeGreaterThan(dm);
    expect(times("/d")[2]).toBeGreaterThan(dc);
    expect(times("/e")[1]).toBeGreaterThan(em);
    expect(times("/e")[2]).toBeGreaterThan(ec);
    expect(times("/d/g")[1]).toBe(gm);
    expect(times("/d/g")[2]).toBeGreaterThan(gc);
    // unlink moves the parent's mtime and the remaining inode's ctime.
    [, dm] = times("/d");
    const [, , before] = times("/d/f");
    fs.unlink("/d/g");
    expect(times("/d")[1]).toBeGreaterThan(dm);
    expect(times("/d/f")[2]).toBeGreaterThan(before);
    // write and truncate move mtime and ctime.
    for (const change of [
      () => {
        const fh = fs.open("/d/f", O_WRONLY);
        writeAt(fs, fh, Buffer.from("z"), 1);
        fs.release(fh);
      },
      () => fs.truncate("/d/f", 1),
    ]) {
      const [, m0, c0] = times("/d/f");
      change();
      const [, m1, c1] = times("/d/f");
      expect(m1).toBeGreaterThan(m0);
      expect(c1).toBeGreaterThan(c0);
    }
    // rmdir moves the parent's times.
    [, dm] = times("/");
    fs.rmdir("/e");
    expect(times("/")[1]).toBeGreaterThan(dm);
    h.closeAndCheck();
  });

  it("access: F_OK, R_OK, W_OK, X_OK", () => {
    withFs((fs) => {
      writeFile(fs, "/f", Buffer.from("x"));
      fs.access("/f", C.F_OK);
      fs.access("/f", C.R_OK | C.W_OK);
      expectErrno(() => fs.access("/f", C.X_OK), "EACCES");
      fs.chmod("/f", 0o744);
      fs.access("/f", C.X_OK);
      fs.mkdir("/d", 0o644, root);
      fs.access("/d", C.X_OK);
      expectErrno(() => fs.access("/missing", C.F_OK), "ENOENT");
    });
  });

  it("statfs: blocks and bfree follow data written and synced", () => {
    withFs((fs) => {
      fs.sync();
      const s0 = fs.statfs();
      expect(s0.bsize).toBe(blockSizeBytes);
      expect(s0.frsize).toBe(blockSizeBytes);
      expect(s0.blocks).toBe(16384);
      expect(s0.bfree).toBeLessThan(s0.blocks);
      expect(s0.bavail).toBe(s0.bfree);
      expect(s0.namemax).toBe(255);
      expect(s0.flag).toBe(0);
      expect(s0.files).toBeGreaterThan(s0.ffree);
      writeFile(fs, "/f", pattern(MiB, 1));
      // Buffered data already counts against free space.
      expect(fs.statfs().bfree).toBeLessThanOrEqual(s0.bfree - 256);
      fs.sync();
      const s1 = fs.statfs();
      expect(s1.bfree).toBeLessThanOrEqual(s0.bfree - 256);
      expect(s1.bfree).toBeGreaterThanOrEqual(s0.bfree - 256 - 8);
      expect(s1.blocks).toBe(s0.blocks);
      expect(s1.ffree).toBeLessThan(s0.ffree);
      fs.unlink("/f");
      fs.sync();
      const s2 = fs.statfs();
      expect(s2.bfree).toBeGreaterThanOrEqual(s0.bfree - 2);
      const info = fs.info();
      expect(info.sizeBytes).toBe(16384 * blockSizeBytes);
      expect(info.freeBytes + info.usedBytes).toBe(info.sizeBytes);
      expect(info.orphans).toBe(0);
      expect(info.inodes).toBe(1);
    });
  });
});

describe("extended attributes", () => {
  it("set, get, list, remove, and flags", () => {
    withFs((fs, h) => {
      writeFile(fs, "/f", Buffer.from("x"));
      expect(fs.listxattr("/f")).toEqual([]);
      fs.setxattr("/f", "user.a", Buffer.from("one"), 0);
      fs.setxattr("/f", "user.b", Buffer.alloc(0), 0);
      fs.setxattr("/f", "trusted.t", Buffer.from("tt"), 0);
      fs.setxattr("/f", "security.s", Buffer.from("ss"), 0);
      expect(fs.getxattr("/f", "user.a").toString()).toBe("one");
      expect(fs.listxattr("/f").sort()).toEqual(["security.s", "trusted.t", "user.a", "user.b"]);
      expectErrno(() => fs.setxattr("/f", "user.a", Buffer.from("two"), xattrCreate), "EEXIST");
      expectErrno(() => fs.setxattr("/f", "user.c", Buffer.from("two"), xattrReplace), "ENODATA");
      expectErrno(() => fs.setxattr("/f", "user.c", Buffer.from("two"), xattrCreate | xattrReplace), "EINVAL");
      fs.setxattr("/f", "user.a", Buffer.from("two"), xattrReplace);
      fs.setxattr("/f", "user.c", Buffer.from("three"), xattrCreate);
      expect(fs.getxattr("/f", "user.a").toString()).toBe("two");
      expect(fs.getxattr("/f", "user.c").toString()).toBe("three");
      expectErrno(() => fs.getxattr("/f", "user.missing"), "ENODATA");
      expectErrno(() => fs.removexattr("/f", "user.missing"), "ENODATA");
      // "user.b" (empty value) is not confused with a missing one, nor a prefix of another name.
      expect(fs.getxattr("/f", "user.b").length).toBe(0);
      fs.setxattr("/f", "user.bb", Buffer.from("bb"), 0);
      fs.removexattr("/f", "user.b");
      expectErrno(() => fs.getxattr("/f", "user.b"), "ENODATA");
      expect(fs.getxattr("/f", "user.bb").toString()).toBe("bb");
      expect(fs.listxattr("/f").sort()).toEqual(["security.s", "trusted.t", "user.a", "user.bb", "user.c"]);
      // On directories, and the root; user.* not on symlinks or special files.
      fs.mkdir("/d", 0o755, root);
      fs.setxattr("/d", "user.dir", Buffer.from("d"), 0);
      fs.setxattr("/", "user.root", Buffer.from("r"), 0);
      fs.symlink("/f", "/l", root);
      expectErrno(() => fs.setxattr("/l", "user.x", Buffer.from("x"), 0), "EPERM");
      fs.setxattr("/l", "trusted.x", Buffer.from("x"), 0);
      fs.mknod("/fifo", C.S_IFIFO | 0o644, 0, root);
      expectErrno(() => fs.setxattr("/fifo", "user.x", Buffer.from("x"), 0), "EPERM");
      expectErrno(() => fs.getxattr("/missing", "user.x"), "ENOENT");
      const fresh = h.reopen();
      expect(fresh.getxattr("/f", "user.a").toString()).toBe("two");
      expect(fresh.getxattr("/d", "user.dir").toString()).toBe("d");
      expect(fresh.getxattr("/", "user.root").toString()).toBe("r");
      expect(fresh.getxattr("/l", "trusted.x").toString()).toBe("x");
      // Removing the file removes its attributes. (fs/check.ts skips attribute chunks, so look at the keys.)
      const fIno = fresh.inoOf("/f");
      const dIno = fresh.inoOf("/d");
      fresh.unlink("/f");
      fresh.rmdir("/d");
      fresh.sync();
      const inodeTree = fresh.store.openTree(treeIdDefaultSubvolume);
      for (const [key] of inodeTree.range()) {
        if (key.length < 8) continue;
        const ino = Number(key.readBigUInt64BE(0));
        expect(ino === fIno || ino === dIno, `key ${key.toString("hex")} outlives its inode`).toBe(false);
      }
      writeFile(fresh, "/f", Buffer.from("new"));
      expect(fresh.listxattr("/f")).toEqual([]);
    });
  });

  it("names and values at and past their limits; bad namespaces", () => {
    withFs((fs, h) => {
      writeFile(fs, "/f", Buffer.from("x"));
      const big = pattern(xattrValueSizeMaxBytes, 77);
      fs.setxattr("/f", "user.big", big, 0);
      expectBytes(fs.getxattr("/f", "user.big"), big);
      expectErrno(() => fs.setxattr("/f", "user.too", Buffer.alloc(xattrValueSizeMaxBytes + 1), 0), "E2BIG");
      // Values around the 512-byte chunk size, then shrinking one in place.
      for (const size of [511, 512, 513, 1024, 1025, 5000]) {
        fs.setxattr("/f", "user.mid", pattern(size, size), 0);
        expectBytes(fs.getxattr("/f", "user.mid"), pattern(size, size));
      }
      fs.setxattr("/f", "user.big", Buffer.from("small now"), 0);
      expect(fs.getxattr("/f", "user.big").toString()).toBe("small now");
      fs.setxattr("/f", "user.big", big, 0);
      const longName = "user." + "n".repeat(235);
      expect(Buffer.byteLength(longName)).toBe(240);
      fs.setxattr("/f", longName, Buffer.from("long"), 0);
      expect(fs.getxattr("/f", longName).toString()).toBe("long");
      expectErrno(() => fs.setxattr("/f", longName + "n", Buffer.from("x"), 0), "ERANGE");
      expectErrno(() => fs.getxattr("/f", longName + "n"), "ERANGE");
      expectErrno(() => fs.setxattr("/f", "", Buffer.from("x"), 0), "ERANGE");
      expectErrno(() => fs.setxattr("/f", "bogus.x", Buffer.from("x"), 0), "EOPNOTSUPP");
      expectErrno(() => fs.setxattr("/f", "user.", Buffer.from("x"), 0), "EOPNOTSUPP");
      expectErrno(() => fs.setxattr("/f", "noprefix", Buffer.from("x"), 0), "EOPNOTSUPP");
      expectErrno(() => fs.getxattr("/f", "bogus.x"), "EOPNOTSUPP");
      expectErrno(() => fs.removexattr("/f", "bogus.x"), "EOPNOTSUPP");
      expectErrno(() => fs.setxattr("/f", "user.a\0b", Buffer.from("x"), 0), "EINVAL");
      expectErrno(() => fs.setxattr("/f", "user.x", Buffer.from("x"), 8), "EINVAL");
      // Many attributes on one inode, each more than a chunk.
      for (let i = 0; i < 40; i++) fs.setxattr("/f", `user.k${i}`, pattern(600 + i, i), 0);
      const fresh = h.reopen();
      expectBytes(fresh.getxattr("/f", "user.big"), big);
      expect(fresh.getxattr("/f", longName).toString()).toBe("long");
      for (let i = 0; i < 40; i++) expectBytes(fresh.getxattr("/f", `user.k${i}`), pattern(600 + i, i));
      expect(fresh.listxattr("/f").length).toBe(43);
      fresh.removexattr("/f", "user.big");
      expectErrno(() => fresh.getxattr("/f", "user.big"), "ENODATA");
      expect(fresh.listxattr("/f").length).toBe(42);
    });
  });
});

describe("names", () => {
  it("255-byte names work; 256 bytes is ENAMETOOLONG; NUL is EINVAL", () => {
    withFs((fs, h) => {
      const name255 = "a".repeat(255);
      writeFile(fs, `/${name255}`, Buffer.from("x"));
      fs.mkdir(`/${"d".repeat(255)}`, 0o755, root);
      // 85 three-byte characters are 255 bytes; 128 two-byte ones are 256.
      const euro = "€".repeat(85);
      writeFile(fs, `/${"d".repeat(255)}/${euro}`, Buffer.from("euro"));
      expect(readFile(fs, `/${"d".repeat(255)}/${euro}`).toString()).toBe("euro");
      const tooLong = "é".repeat(128);
      expectErrno(() => writeFile(fs, `/${tooLong}`, Buffer.from("x")), "ENAMETOOLONG");
      expectErrno(() => fs.mkdir(`/${"a".repeat(256)}`, 0o755, root), "ENAMETOOLONG");
      expectErrno(() => fs.getattr(`/${"a".repeat(256)}`), "ENAMETOOLONG");
      expectErrno(() => fs.symlink("t", `/${"a".repeat(256)}`, root), "ENAMETOOLONG");
      expectErrno(() => fs.rename(`/${name255}`, `/${"a".repeat(256)}`), "ENAMETOOLONG");
      expectErrno(() => fs.link(`/${name255}`, `/${"a".repeat(256)}`), "ENAMETOOLONG");
      expectErrno(() => fs.mkdir("/a\0b", 0o755, root), "EINVAL");
      expectErrno(() => fs.create("/a\0b", 0o644, O_CREAT | O_RDWR, root), "EINVAL");
      expectErrno(() => fs.getattr("/a\0b"), "EINVAL");
      // Names that are odd but legal.
      for (const name of [" ", "..." , ".hidden", "with space", "ünïcödé", "\n", "a\\b", "*"]) {
        fs.mknod(`/${name}`, 0o644, 0, root);
      }
      const fresh = h.reopen();
      const names = fresh.readdir("/").map((e) => e.name);
      for (const name of [name255, " ", "...", ".hidden", "with space", "ünïcödé", "\n", "a\\b", "*"]) {
        expect(names).toContain(name);
      }
      expect(fresh.getattr(`/${name255}`).size).toBe(1);
    });
  });
});

describe("large files", () => {
  it("a 20 MiB file: its extents spill to a tree; it survives reopen and partial overwrite", () => {
    const h = new FsHarness(16384);
    let fs = h.fs;
    const size = 20 * MiB;
    const data = pattern(size, 20);
    writeFile(fs, "/big", data);
    const ino = fs.inoOf("/big");
    fs.sync();
    expect(fs.getattr("/big").blocks).toBe((size / blockSizeBytes) * 8);
    fs = h.reopen();
    expect(readFile(fs, "/big").equals(data)).toBe(true);
    // Overwrite a scattered set of ranges, some across extent boundaries (128 blocks).
    const fh = fs.open("/big", O_RDWR);
    for (const at of [0, 128 * blockSizeBytes - 3, 7 * MiB + 11, size - 100]) {
      const p = pattern(5000, at);
      const n = Math.min(p.length, size - at);
      writeAt(fs, fh, p.subarray(0, n), at);
      p.copy(data, at, 0, n);
    }
    fs.release(fh);
    fs.close();
    h.device = h.device.reopen();
    expect(spilledInodes(h.device)).toContain(ino);
    fs = h.fs = GroveFs.open(h.device, { clock: h.clock });
    expect(readFile(fs, "/big").equals(data)).toBe(true);
    fs.truncate("/big", 3 * MiB + 5);
    expect(readFile(fs, "/big").equals(data.subarray(0, 3 * MiB + 5))).toBe(true);
    h.closeAndCheck();
  });
});

describe("orphans", () => {
  it("an unlinked open file stays readable and writable; release frees it", () => {
    withFs((fs) => {
      fs.sync();
      const baseline = usedBlocks(fs);
      writeFile(fs, "/f", pattern(MiB, 8));
      fs.sync();
      const fh = fs.open("/f", O_RDWR);
      const fh2 = fs.open("/f", O_RDONLY);
      const ino = fs.fgetattr(fh).ino;
      fs.unlink("/f");
      expectErrno(() => fs.getattr("/f"), "ENOENT");
      expect(fs.fgetattr(fh).nlink).toBe(0);
      expect(fs.info().orphans).toBe(1);
      expect(readAt(fs, fh, MiB).equals(pattern(MiB, 8))).toBe(true);
      writeAt(fs, fh, Buffer.from("still here"), 100);
      writeAt(fs, fh, pattern(MiB, 9), MiB);
      fs.ftruncate(fh, MiB + 1000);
      expect(fs.fgetattr(fh).size).toBe(MiB + 1000);
      fs.sync();
      expectFsClean(fs.store.device);
      expect(readAt(fs, fh2, 10, 100).toString()).toBe("still here");
      // A new file may take the name meanwhile.
      writeFile(fs, "/f", Buffer.from("new"));
      fs.release(fh);
      expect(fs.hasInode(ino)).toBe(true); // still open through fh2
      expect(readAt(fs, fh2, 10, 100).toString()).toBe("still here");
      fs.release(fh2);
      expect(fs.hasInode(ino)).toBe(false);
      expect(fs.info().orphans).toBe(0);
      fs.unlink("/f");
      fs.sync();
      expect(usedBlocks(fs)).toBeLessThanOrEqual(baseline + 2);
    });
  });

  it("an orphan still open at a clean close is freed on the next open", () => {
    const h = new FsHarness();
    let fs = h.fs;
    fs.sync();
    const baseline = usedBlocks(fs);
    writeFile(fs, "/f", pattern(300_000, 2));
    const fh = fs.open("/f", O_RDWR);
    fs.unlink("/f");
    writeAt(fs, fh, pattern(10_000, 3), 400_000);
    fs.close(); // the handle is never released
    h.device = h.device.reopen();
    expect(checkFilesystem(h.device).problems).toEqual([]);
    fs = h.fs = GroveFs.open(h.device, { clock: h.clock });
    expect(fs.info().orphans).toBe(0);
    expect(usedBlocks(fs)).toBeLessThanOrEqual(baseline + 2);
    h.closeAndCheck();
  });

  it("an orphan left by a crash is freed on the next read-write open", () => {
    const h = new FsHarness();
    let fs = h.fs;
    fs.sync();
    const baseline = usedBlocks(fs);
    writeFile(fs, "/keep", Buffer.from("kept"));
    writeFile(fs, "/f", pattern(2 * MiB, 3));
    fs.sync();
    const fh = fs.open("/f", O_RDWR);
    fs.unlink("/f");
    writeAt(fs, fh, pattern(MiB, 4), 2 * MiB);
    fs.sync();
    expect(fs.info().orphans).toBe(1);
    // Power fails with the handle open: GroveFs.close never runs.
    const durable = h.device;
    const ro = GroveFs.open(SimDevice.fromDurable(durable.snapshotLive(), durable.blockCount), { readOnly: true });
    expect(ro.info().orphans).toBe(1); // a read-only open leaves it alone
    ro.close();
    fs = h.crashAndReopen();
    expect(fs.info().orphans).toBe(0);
    expect(readFile(fs, "/keep").toString()).toBe("kept");
    expectErrno(() => fs.getattr("/f"), "ENOENT");
    expect(usedBlocks(fs)).toBeLessThanOrEqual(baseline + 2);
    expect(fs.info().inodes).toBe(2);
    expectFsClean(h.device);
    h.closeAndCheck();
  });

  it("the same on an image file whose GroveFs is never closed", async () => {
    await withDir(
      async ({ path: dir }) => {
        const image = path.join(dir, "orphan.img");
        GroveFs.format(FileDevice.createImage(image, 64 * MiB));
        const device = FileDevice.open(image);
        const fs = GroveFs.open(device);
        const baseline = usedBlocks(fs);
        writeFile(fs, "/f", pattern(MiB, 1));
        fs.sync();
        const fh = fs.open("/f", O_RDONLY);
        fs.unlink("/f");
        fs.sync();
        expect(fh).toBeGreaterThan(0);
        // Crash: the descriptor goes away with the process, nothing commits.
        device.close();
        const again = GroveFs.open(FileDevice.open(image));
        expect(again.info().orphans).toBe(0);
        expect(usedBlocks(again)).toBeLessThanOrEqual(baseline + 2);
        again.close();
        const check = FileDevice.open(image);
        expectFsClean(check);
        check.close();
      },
      { unsafeCleanup: true },
    );
  });
});

describe("persistence, read-only, closed", () => {
  it("everything survives close and reopen", () => {
    const h = new FsHarness();
    let fs = h.fs;
    fs.mkdir("/d", 0o750, user);
    fs.mkdir("/d/e", 0o700, root);
    writeFile(fs, "/d/e/file", pattern(30_000, 2), user);
    writeFile(fs, "/small", Buffer.from("tiny"));
    fs.link("/small", "/d/hard");
    fs.symlink("../small", "/d/sym", root);
    fs.mknod("/d/fifo", C.S_IFIFO | 0o600, 0, root);
    fs.mknod("/d/chr", C.S_IFCHR | 0o600, 0x0501, root);
    fs.setxattr("/d", "user.k", Buffer.from("v"), 0);
    fs.utimens("/small", 111n, 222n);
    fs.chown("/small", 7, 8);
    fs.chmod("/small", 0o604);
    const snapshot = (g: GroveFs): unknown => {
      const out: Record<string, unknown> = {};
      const walk = (dir: string): void => {
        for (const e of g.readdir(dir)) {
          if (e.name === "." || e.name === "..") continue;
          const p = `${dir === "/" ? "" : dir}/${e.name}`;
          const st = g.getattr(p);
          const { atimeNs: _a, ...rest } = st;
          out[p] = {
            ...rest,
            type: e.type,
            data: (st.mode & C.S_IFMT) === C.S_IFREG ? readFile(g, p).toString("hex") : undefined,
            link: (st.mode & C.S_IFMT) === C.S_IFLNK ? g.readlink(p) : undefined,
            xattrs: g.listxattr(p).map((n) => [n, g.getxattr(p, n).toString()]),
          };
          if ((st.mode & C.S_IFMT) === C.S_IFDIR) walk(p);
        }
      };
      walk("/");
      return out;
    };
    const before = snapshot(fs);
    fs = h.reopen();
    expect(snapshot(fs)).toEqual(before);
    // New inode numbers do not collide with old ones after reopen.
    const fh = fs.create("/after", 0o644, O_CREAT | O_RDWR, root);
    const inos = new Set(Object.values(before as Record<string, { ino: number }>).map((s) => s.ino));
    expect(inos.has(fs.fgetattr(fh).ino)).toBe(false);
    fs.release(fh);
    h.closeAndCheck();
  });

  it("a read-only open refuses every mutation with EROFS and reads everything", () => {
    const h = new FsHarness();
    let fs = h.fs;
    fs.mkdir("/d", 0o755, root);
    fs.mkdir("/d/empty", 0o755, root);
    writeFile(fs, "/f", pattern(10_000, 1));
    fs.symlink("/f", "/l", root);
    fs.setxattr("/f", "user.x", Buffer.from("x"), 0);
    fs.close();
    h.device = h.device.reopen();
    fs = GroveFs.open(h.device, { readOnly: true, clock: h.clock });
    expect(fs.readOnly).toBe(true);
    expect(fs.statfs().flag & 1).toBe(1);
    const rofs = (body: () => unknown): void => void expectErrno(body, "EROFS");
    rofs(() => fs.mkdir("/new", 0o755, root));
    rofs(() => fs.rmdir("/d/empty"));
    rofs(() => fs.unlink("/f"));
    rofs(() => fs.rename("/f", "/g"));
    rofs(() => fs.rename("/f", "/l", renameExchange));
    rofs(() => fs.link("/f", "/g"));
    rofs(() => fs.symlink("t", "/s", root));
    rofs(() => fs.mknod("/n", C.S_IFIFO | 0o644, 0, root));
    rofs(() => fs.create("/new", 0o644, O_CREAT | O_RDWR, root));
    rofs(() => fs.open("/f", O_WRONLY));
    rofs(() => fs.open("/f", O_RDWR));
    rofs(() => fs.truncate("/f", 0));
    rofs(() => fs.chmod("/f", 0o600));
    rofs(() => fs.chown("/f", 1, 1));
    rofs(() => fs.utimens("/f", 1n, 1n));
    rofs(() => fs.setxattr("/f", "user.y", Buffer.from("y"), 0));
    rofs(() => fs.removexattr("/f", "user.x"));
    rofs(() => fs.access("/f", C.W_OK));
    const fh = fs.open("/f", O_RDONLY);
    expectErrno(() => fs.ftruncate(fh, 0), "EBADF");
    expectBytes(readAt(fs, fh, 10_000), pattern(10_000, 1));
    fs.release(fh);
    expect(fs.readdir("/d").map((e) => e.name)).toEqual([".", "..", "empty"]);
    expect(fs.readlink("/l")).toBe("/f");
    expect(fs.getxattr("/f", "user.x").toString()).toBe("x");
    fs.access("/f", C.R_OK);
    fs.sync();
    const generation = fs.info().generation;
    fs.close();
    // Nothing was written.
    h.device = h.device.reopen();
    const again = GroveFs.open(h.device, { clock: h.clock });
    expect(again.info().generation).toBe(generation);
    h.fs = again;
    h.closeAndCheck();
  });

  it("maintenance commits once the commit interval has passed", () => {
    let now = 1_000_000_000_000_000_000n;
    const clock = (): bigint => now;
    const h = new FsHarness(4096, { clock });
    const fs = h.fs;
    writeFile(fs, "/f", pattern(10_000, 1));
    const generation = fs.info().generation;
    fs.maintenance();
    expect(fs.info().generation).toBe(generation);
    now += 6_000_000_000n;
    fs.maintenance();
    expect(fs.info().generation).toBe(generation + 1);
    // Durable: a crash now keeps it.
    const after = h.crashAndReopen({ clock });
    expectBytes(readFile(after, "/f"), pattern(10_000, 1));
    h.closeAndCheck();
  });

  it("commitIntervalMs (mount -o commit=) sets the periodic commit's interval; out of range is EINVAL", () => {
    let now = 1_000_000_000_000_000_000n;
    const clock = (): bigint => now;
    const h = new FsHarness(4096, { clock, commitIntervalMs: 20_000 });
    const fs = h.fs;
    writeFile(fs, "/f", pattern(10_000, 2));
    const generation = fs.info().generation;
    now += 6_000_000_000n;
    fs.maintenance();
    expect(fs.info().generation, "the default 5 s no longer applies").toBe(generation);
    now += 15_000_000_000n;
    fs.maintenance();
    expect(fs.info().generation).toBe(generation + 1);
    h.closeAndCheck();
    // Refused before anything is opened: the device stays usable.
    for (const bad of [0, 999, 3_600_001, 1500.5, Number.NaN]) {
      expectErrno(() => GroveFs.open(h.device, { commitIntervalMs: bad }), "EINVAL", "EINVAL_commit_interval");
    }
    GroveFs.open(h.device, { commitIntervalMs: 1000 }).close();
  });

  it("a volume without a filesystem is refused with EINVAL", () => {
    const device = new SimDevice(1024);
    formatVolume(device).store.close();
    expectErrno(() => GroveFs.open(device.reopen()), "EINVAL", "EINVAL_no_filesystem");
  });

  it("every call on a closed GroveFs is EBADF", () => {
    const h = new FsHarness();
    const fs = h.fs;
    writeFile(fs, "/f", Buffer.from("x"));
    const fh = fs.open("/f", O_RDONLY);
    fs.close();
    fs.close(); // twice is fine
    expectErrno(() => fs.getattr("/f"), "EBADF");
    expectErrno(() => fs.read(fh, Buffer.alloc(1), 1, 0), "EBADF");
    expectErrno(() => fs.mkdir("/d", 0o755, root), "EBADF");
    expectErrno(() => fs.statfs(), "EBADF");
    expectErrno(() => fs.sync(), "EBADF");
    h.device = h.device.reopen();
    expectFsClean(h.device);
  });
});

describe("data checksums", () => {
  /** Finds the LBA holding exactly `block` in a SimDevice image. */
  function findBlock(image: Map<number, Uint8Array>, block: Buffer): number[] {
    const hits: number[] = [];
    for (const [lba, data] of image) if (Buffer.from(data).equals(block)) hits.push(lba);
    return hits;
  }

  it("a corrupt data block reads as EIO, never wrong bytes; the checker reports it; an overwrite heals it", () => {
    const h = new FsHarness();
    const data = pattern(5 * blockSizeBytes, 55);
    writeFile(h.fs, "/f", data);
    h.fs.close();
    const image = h.device.reopen().snapshotLive();
    const hits = findBlock(image, data.subarray(2 * blockSizeBytes, 3 * blockSizeBytes));
    expect(hits.length).toBe(1);
    const lba = hits[0]!;
    image.get(lba)![1234]! ^= 0x10;
    h.device = SimDevice.fromDurable(image, h.device.blockCount);
    const report = checkFilesystem(h.device, { verifyData: true });
    expect(report.problems.length).toBe(1);
    expect(report.problems[0]).toMatch(new RegExp(`data block ${lba} fails its checksum`));
    expect(checkFilesystem(h.device).problems).toEqual([]);
    const fs = (h.fs = GroveFs.open(h.device, { clock: h.clock }));
    const fh = fs.open("/f", O_RDWR);
    for (const [length, at] of [
      [blockSizeBytes, 2 * blockSizeBytes],
      [1, 2 * blockSizeBytes + 1234],
      [10, 3 * blockSizeBytes - 5],
      [5 * blockSizeBytes, 0],
    ] as const) {
      const out = Buffer.alloc(length);
      let thrown: unknown;
      try {
        fs.read(fh, out, length, at);
      } catch (error) {
        thrown = error;
      }
      expect(thrown).toBeInstanceOf(CorruptionError);
      expect((thrown as GroveError).code).toBe("EIO");
      expect((thrown as GroveError).errno).toBe(5);
    }
    // Blocks around it still read.
    expectBytes(readAt(fs, fh, 2 * blockSizeBytes), data.subarray(0, 2 * blockSizeBytes));
    expectBytes(readAt(fs, fh, 2 * blockSizeBytes, 3 * blockSizeBytes), data.subarray(3 * blockSizeBytes));
    // A whole-block overwrite replaces it without reading it.
    const fresh = pattern(blockSizeBytes, 56);
    writeAt(fs, fh, fresh, 2 * blockSizeBytes);
    fresh.copy(data, 2 * blockSizeBytes);
    fs.release(fh);
    fs.sync();
    expectBytes(readFile(fs, "/f"), data);
    h.closeAndCheck();
  });

  it("the same through an image file", async () => {
    await withDir(
      async ({ path: dir }) => {
        const image = path.join(dir, "data.img");
        GroveFs.format(FileDevice.createImage(image, 16 * MiB));
        let fs = GroveFs.open(FileDevice.open(image));
        const data = pattern(3 * blockSizeBytes, 99);
        writeFile(fs, "/f", data);
        fs.close();
        const bytes = nodeFs.readFileSync(image);
        const offset = bytes.indexOf(data.subarray(blockSizeBytes, 2 * blockSizeBytes));
        expect(offset).toBeGreaterThan(0);
        expect(offset % blockSizeBytes).toBe(0);
        const fd = nodeFs.openSync(image, "r+");
        nodeFs.writeSync(fd, Buffer.from([bytes[offset + 7]! ^ 0xff]), 0, 1, offset + 7);
        nodeFs.closeSync(fd);
        const checkDevice = FileDevice.open(image);
        const report = checkFilesystem(checkDevice, { verifyData: true });
        checkDevice.close();
        expect(report.problems).toEqual([
          expect.stringContaining(`data block ${offset / blockSizeBytes} fails its checksum`),
        ]);
        fs = GroveFs.open(FileDevice.open(image));
        const fh = fs.open("/f", O_RDONLY);
        expectErrno(() => fs.read(fh, Buffer.alloc(100), 100, blockSizeBytes), "EIO");
        expectBytes(readAt(fs, fh, 100, 0), data.subarray(0, 100));
        fs.release(fh);
        fs.close();
      },
      { unsafeCleanup: true },
    );
  });
});

describe("st_blocks while overwrites are buffered", () => {
  it("an overwrite of a written-out block does not count that block twice", () => {
    withFs((fs) => {
      writeFile(fs, "/f", pattern(8 * blockSizeBytes, 1));
      fs.sync();
      expect(fs.getattr("/f").blocks).toBe(64);
      const fh = fs.open("/f", O_RDWR);
      for (let b = 0; b < 8; b++) writeAt(fs, fh, Buffer.from([b]), b * blockSizeBytes + 5);
      // After write-out the file still owns 8 blocks; st_blocks should say so already.
      expect(fs.fgetattr(fh).blocks).toBe(64);
      fs.truncate("/f", 100);
      expect(fs.fgetattr(fh).blocks).toBe(8);
      fs.release(fh);
      fs.sync();
      expect(fs.getattr("/f").blocks).toBe(8);
    });
  });
});

/**
 * Refusals that must change nothing: each call below fails validation or
 * admission, and the volume must stay usable afterwards (no poisoning), with
 * everything written before the refusal still there after sync.
 */
describe("refusals leave the volume usable", () => {
  /** A 5-block file whose block 2 is corrupt on disk, opened read-write. */
  function corruptFile(): { h: FsHarness; data: Buffer } {
    const h = new FsHarness();
    const data = pattern(5 * blockSizeBytes, 57);
    writeFile(h.fs, "/f", data);
    writeFile(h.fs, "/other", Buffer.from("other"));
    h.fs.close();
    const image = h.device.reopen().snapshotLive();
    const target = data.subarray(2 * blockSizeBytes, 3 * blockSizeBytes);
    const lba = [...image].find(([, block]) => Buffer.from(block).equals(target))![0];
    image.get(lba)![99]! ^= 0x01;
    h.device = SimDevice.fromDurable(image, h.device.blockCount);
    h.fs = GroveFs.open(h.device, { clock: h.clock });
    return { h, data };
  }

  it("a partial write into a corrupt data block is EIO and does not poison the volume", () => {
    const { h, data } = corruptFile();
    const fs = h.fs;
    writeFile(fs, "/unsynced", Buffer.from("buffered before the error"));
    const fh = fs.open("/f", O_RDWR);
    expectErrno(() => fs.write(fh, Buffer.from("x"), 1, 2 * blockSizeBytes + 10), "EIO");
    // A write spanning a good block and the bad one must not half-apply either.
    expectErrno(() => fs.write(fh, Buffer.alloc(200, 1), 200, 2 * blockSizeBytes - 100), "EIO");
    expectBytes(readAt(fs, fh, 2 * blockSizeBytes), data.subarray(0, 2 * blockSizeBytes));
    fs.release(fh);
    fs.sync();
    expect(readFile(fs, "/unsynced").toString()).toBe("buffered before the error");
    expect(readFile(fs, "/other").toString()).toBe("other");
    h.fs.close();
  });

  it("truncating into a corrupt data block is EIO and does not poison the volume", () => {
    const { h } = corruptFile();
    const fs = h.fs;
    expectErrno(() => fs.truncate("/f", 2 * blockSizeBytes + 100), "EIO");
    expect(fs.getattr("/f").size).toBe(5 * blockSizeBytes);
    writeFile(fs, "/after", Buffer.from("after"));
    fs.sync();
    expect(readFile(fs, "/after").toString()).toBe("after");
    h.fs.close();
  });

  it("a whole-block overwrite of a corrupt block reads back before sync (reads skip shadowed disk blocks)", () => {
    const { h, data } = corruptFile();
    const fs = h.fs;
    const fh = fs.open("/f", O_RDWR);
    const fresh = pattern(blockSizeBytes, 58);
    writeAt(fs, fh, fresh, 2 * blockSizeBytes);
    fresh.copy(data, 2 * blockSizeBytes);
    expectBytes(readAt(fs, fh, blockSizeBytes, 2 * blockSizeBytes), fresh);
    expectBytes(readAt(fs, fh, 5 * blockSizeBytes), data);
    fs.release(fh);
    h.closeAndCheck();
  });

  it("utimens with a time out of range is EINVAL and does not poison the volume", () => {
    withFs((fs) => {
      writeFile(fs, "/f", Buffer.from("x"));
      const before = fs.getattr("/f");
      expectErrno(() => fs.utimens("/f", -(2n ** 63n) - 1n, "omit"), "EINVAL");
      expectErrno(() => fs.utimens("/f", "omit", 2n ** 63n), "EINVAL");
      expectErrno(() => fs.utimens("/f", 5n, 2n ** 64n), "EINVAL");
      expect(fs.getattr("/f")).toEqual(before);
      fs.utimens("/f", 1n, 2n);
      expect(fs.getattr("/f").mtimeNs).toBe(2n);
    });
  });

  it("running out of inode numbers is ENOSPC and does not poison the volume", () => {
    withFs((fs) => {
      // Reach the end of the inode space (inoMax, 2^48 - 1) without creating that many files.
      fs.reserveIno(inoMax);
      fs.mkdir("/last", 0o755, root);
      expect(fs.inoOf("/last")).toBe(inoMax);
      expectErrno(() => fs.mkdir("/more", 0o755, root), "ENOSPC");
      expectErrno(() => fs.create("/more", 0o644, O_CREAT | O_RDWR, root), "ENOSPC");
      expectErrno(() => fs.symlink("t", "/more", root), "ENOSPC");
      expectErrno(() => fs.mknod("/more", C.S_IFIFO | 0o644, 0, root), "ENOSPC");
      expect(fs.getattr("/last").nlink).toBe(2);
      fs.rmdir("/last");
    });
  });

  it("filling the volume with file data ends in ENOSPC from write; sync then keeps everything written", () => {
    const h = new FsHarness(1024);
    const fs = h.fs;
    fs.mkdir("/d", 0o755, root);
    fs.sync();
    const written = new Map<string, number>();
    // Fill until write refuses, sync, and again: each refusal must leave a volume that commits.
    let file = 0;
    for (let round = 0; round < 6; round++) {
      let refused: GroveError | undefined;
      while (refused === undefined && file < 1000) {
        const name = `/d/f${file}`;
        // A full volume may refuse the create itself, as well as a write.
        let fh: number;
        try {
          fh = fs.create(name, 0o644, O_CREAT | O_WRONLY, root);
        } catch (error) {
          if (!(error instanceof GroveError)) throw error;
          refused = error;
          break;
        }
        written.set(name, 0);
        try {
          for (let k = 0; k < 16; k++) {
            writeAt(fs, fh, pattern(blockSizeBytes, file, k * blockSizeBytes), k * blockSizeBytes);
            written.set(name, (k + 1) * blockSizeBytes);
          }
          file++;
        } catch (error) {
          if (!(error instanceof GroveError)) throw error;
          refused = error;
        } finally {
          fs.release(fh);
        }
      }
      expect(refused?.code, `round ${round}`).toBe("ENOSPC");
      fs.sync();
    }
    for (const [name, size] of written) expectBytes(readFile(fs, name), pattern(size, Number(name.slice(4))));
    // A full volume still deletes, reads and lists.
    expect(fs.readdir("/d").length).toBe(written.size + 2);
    for (const name of [...written.keys()].slice(0, 10)) fs.unlink(name);
    fs.sync();
    h.closeAndCheck();
  });
});
