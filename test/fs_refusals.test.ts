/**
 * Regressions from a review of the fs layer: each refusal must be clean
 * (an errno, nothing changed, the volume still usable), never a poisoned
 * volume that loses acknowledged writes.
 */
import { constants as C } from "node:fs";
import { describe, expect, it } from "vitest";
import { GroveError, SimDevice } from "../kvstore/index.js";
import { GroveFs, checkFilesystem } from "../fs/index.js";

const root = { uid: 0, gid: 0 };
const MiB = 1 << 20;

function freshFs(blocks: number, metadata?: "single" | "dup"): { fs: GroveFs; dev: SimDevice } {
  const formatted = new SimDevice(blocks);
  GroveFs.format(formatted, { metadata });
  const dev = formatted.reopen();
  return { fs: GroveFs.open(dev), dev };
}

function errorOf(run: () => unknown): GroveError | undefined {
  try {
    run();
  } catch (error) {
    if (error instanceof GroveError) return error;
    throw error;
  }
  return undefined;
}

function expectClean(fs: GroveFs, dev: SimDevice): void {
  fs.close();
  expect(checkFilesystem(dev.reopen(), { verifyData: true }).problems).toEqual([]);
}

describe("refusals that must not lose acknowledged data", () => {
  it("metadata growth cannot take the space that buffered writes were promised", () => {
    const { fs, dev } = freshFs(16384);
    const fh = fs.create("/big", 0o644, C.O_CREAT | C.O_WRONLY, root);
    for (let i = 0; i < 50; i++) fs.write(fh, Buffer.alloc(MiB, 7), MiB, i * MiB);
    const value = Buffer.alloc(16 * 1024, 1);
    let refusal: GroveError | undefined;
    for (let n = 0; refusal === undefined && n < 100_000; n++) {
      refusal = errorOf(() => {
        fs.release(fs.create(`/f${n}`, 0o644, C.O_CREAT | C.O_WRONLY, root));
        fs.setxattr(`/f${n}`, "user.x", value, 0);
      });
    }
    expect(refusal?.code).toBe("ENOSPC");
    fs.fsync(fh, false);
    fs.release(fh);
    expect(fs.store.isPoisoned).toBe(false);
    expect(fs.getattr("/big").size).toBe(50 * MiB);
    expectClean(fs, dev);
  });

  it("rewriting a file in place many times over commits to reuse what it freed", () => {
    const { fs, dev } = freshFs(65536);
    const fh = fs.create("/db", 0o644, C.O_CREAT | C.O_RDWR, root);
    const chunk = Buffer.alloc(MiB, 5);
    for (let pass = 0; pass < 6; pass++) for (let i = 0; i < 80; i++) fs.write(fh, chunk, MiB, i * MiB);
    fs.release(fh);
    expect(fs.getattr("/db").size).toBe(80 * MiB);
    expectClean(fs, dev);
  });

  it("a corrupt extent tree makes unlink EIO without poisoning the volume", () => {
    // Single metadata: a corrupt node with no second copy (dup would heal it).
    let { fs, dev } = freshFs(16384, "single");
    let fh = fs.create("/bad", 0o644, C.O_CREAT | C.O_WRONLY, root);
    fs.write(fh, Buffer.alloc(256 * 4096, 3), 256 * 4096, 0);
    fs.release(fh);
    fs.close();
    dev = dev.reopen();
    fs = GroveFs.open(dev);
    const treeRoot = (fs as unknown as { inodes: { load(ino: number): { treeRoot: number } } }).inodes.load(fs.inoOf("/bad")).treeRoot;
    dev.flipOnRead(treeRoot, 200, 0x10);
    fh = fs.create("/good", 0o644, C.O_CREAT | C.O_WRONLY, root);
    fs.write(fh, Buffer.from("important"), 9, 0);
    fs.release(fh);
    expect(errorOf(() => fs.unlink("/bad"))?.code).toBe("EIO");
    expect(fs.store.isPoisoned).toBe(false);
    fs.sync();
    fs.close();
    dev.clearFlips();
    dev = dev.reopen();
    fs = GroveFs.open(dev);
    expect(fs.getattr("/good").size).toBe(9);
    fs.close();
  });

  it("a corrupt block past a read only fails when that block itself is read", () => {
    let { fs, dev } = freshFs(16384);
    const data = Buffer.alloc(128 * 4096);
    for (let i = 0; i < data.length; i++) data[i] = (i * 7) & 255;
    const fh = fs.create("/f", 0o644, C.O_CREAT | C.O_WRONLY, root);
    fs.write(fh, data, data.length, 0);
    fs.release(fh);
    fs.close();
    dev = dev.reopen();
    fs = GroveFs.open(dev);
    const inode = (fs as unknown as { inodes: { load(ino: number): unknown } }).inodes.load(fs.inoOf("/f"));
    const data0 = fs as unknown as { data: { extents(i: unknown, m: unknown): Iterable<{ lba: number }> } };
    const [extent] = [...data0.data.extents(inode, fs.mapOf(inode as never))];
    dev.flipOnRead(extent!.lba + 120, 100, 1);
    const r = fs.open("/f", C.O_RDONLY);
    const out = Buffer.alloc(64 * 1024);
    expect(fs.read(r, out, out.length, 0)).toBe(out.length);
    expect(out.equals(data.subarray(0, out.length))).toBe(true);
    expect(fs.read(r, out, out.length, out.length)).toBe(out.length);
    expect(errorOf(() => fs.read(r, out, 4096, 120 * 4096))?.detail).toBe("EIO_data_checksum");
    fs.release(r);
    fs.close();
  });
});
