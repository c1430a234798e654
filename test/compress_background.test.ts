/**
 * Background compression: a write that fills a 128 KiB unit starts
 * compressing it on libuv's thread pool, and write-out uses the result only
 * if the unit's bytes have not changed since. These tests let the event
 * loop run between writes (as the FUSE server does between requests), so
 * the background path is taken, and change units while their compression
 * is in flight or done.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { describe, expect, it } from "vitest";
import { GroveFs } from "../fs/index.js";
import { FsHarness, expectBytes, readFile, root, writeAt } from "./fs_helpers.js";

const unitBytes = 128 * 1024;

/** Compressible bytes that differ from unit to unit (so a stale unit would show). */
function text(length: number, salt: number): Buffer {
  const out = Buffer.alloc(length);
  for (let at = 0; at < length; at += 64) out.write(`line ${salt} ${Math.floor(at / 64)} of compressible text, padded......\n`.slice(0, 64), at);
  return out;
}

function backgroundUnits(fs: GroveFs): number {
  return (fs as unknown as { data: { unitsCompressedInBackground: number } }).data.unitsCompressedInBackground;
}

describe("background compression", () => {
  it("uses results computed while the event loop ran, and the bytes read back", async () => {
    const h = new FsHarness(16384, { compression: "lz4" });
    const fs = h.fs;
    const model = text(8 * unitBytes + 5000, 1);
    const fh = fs.create("/f", 0o644, 0o102, root);
    for (let at = 0; at < model.length; at += unitBytes) {
      writeAt(fs, fh, model.subarray(at, at + unitBytes), at);
      await sleep(5);
    }
    await sleep(100);
    fs.sync();
    expect(backgroundUnits(fs)).toBe(8);
    expect(fs.info().compressed.extents).toBe(9);
    expectBytes(readFile(fs, "/f"), model);
    fs.release(fh);
    h.closeAndCheck();
  });

  it("drops a result when its unit changes while it is compressed, or after", async () => {
    const h = new FsHarness(16384, { compression: "lz4" });
    const fs = h.fs;
    const model = text(4 * unitBytes, 2);
    const fh = fs.create("/f", 0o644, 0o102, root);
    writeAt(fs, fh, model, 0);
    // Unit 0 changes at once (its compression is in flight); unit 2 once its result is in.
    model.write("CHANGED-IN-FLIGHT", 100);
    writeAt(fs, fh, model.subarray(100, 117), 100);
    await sleep(100);
    model.write("CHANGED-AFTER", 2 * unitBytes + 4090);
    writeAt(fs, fh, model.subarray(2 * unitBytes + 4090, 2 * unitBytes + 4103), 2 * unitBytes + 4090);
    // Unit 3 is cut short, then grown back: zeros where it was cut.
    fs.truncate("/f", 3 * unitBytes + 10);
    fs.truncate("/f", 4 * unitBytes);
    model.fill(0, 3 * unitBytes + 10);
    fs.sync();
    // Only unit 1 still had a result that matched its bytes.
    expect(backgroundUnits(fs)).toBe(1);
    expectBytes(readFile(fs, "/f"), model);
    fs.release(fh);
    const again = h.reopen();
    expectBytes(readFile(again, "/f"), model);
    h.closeAndCheck();
  });

  it("never starts background work with compression off, nor for random data", async () => {
    const h = new FsHarness(16384, { compression: "none" });
    const fs = h.fs;
    const model = text(2 * unitBytes, 3);
    const fh = fs.create("/f", 0o644, 0o102, root);
    writeAt(fs, fh, model, 0);
    await sleep(50);
    fs.sync();
    expect(backgroundUnits(fs)).toBe(0);
    expect(fs.info().compressed.extents).toBe(0);
    fs.release(fh);
    h.closeAndCheck();
  });

  it("lets later rewrites of a full unit leave it to write-out", async () => {
    const h = new FsHarness(16384, { compression: "lz4" });
    const fs = h.fs;
    const model = text(unitBytes, 4);
    const fh = fs.create("/f", 0o644, 0o102, root);
    writeAt(fs, fh, model, 0);
    await sleep(50);
    for (let i = 0; i < 20; i++) {
      model.write(`rewrite ${i}`, i * 4096 + 7);
      writeAt(fs, fh, model.subarray(i * 4096 + 7, i * 4096 + 7 + 10), i * 4096 + 7);
    }
    await sleep(50);
    fs.sync();
    expect(backgroundUnits(fs)).toBe(0);
    expect(fs.info().compressed.extents).toBe(1);
    expectBytes(readFile(fs, "/f"), model);
    fs.release(fh);
    h.closeAndCheck();
  });

  it("compresses a closed file's last, partial unit in the background, and drops it when the file changes again", async () => {
    const h = new FsHarness(16384, { compression: "lz4" });
    const fs = h.fs;
    const small = text(10 * 4096 + 100, 5);
    const grown = text(3 * unitBytes + 20 * 4096, 6);
    const cut = text(unitBytes + 9 * 4096, 7);
    for (const [path, data] of [["/small", small], ["/grown", grown], ["/cut", cut]] as const) {
      const fh = fs.create(path, 0o644, 0o102, root);
      writeAt(fs, fh, data, 0);
      fs.release(fh);
    }
    await sleep(100);
    // /grown gets more bytes in its last unit, /cut loses some: their tail results are stale.
    const more = text(5000, 8);
    const fh = fs.open("/grown", 2);
    writeAt(fs, fh, more, grown.length);
    fs.release(fh);
    fs.truncate("/cut", unitBytes + 4 * 4096 + 7);
    fs.sync();
    // /small's tail, /grown's three full units and /cut's full unit came from the background (/grown's new tail had no time to).
    expect(backgroundUnits(fs)).toBe(5);
    expectBytes(readFile(fs, "/small"), small);
    expectBytes(readFile(fs, "/grown"), Buffer.concat([grown, more]));
    expectBytes(readFile(fs, "/cut"), cut.subarray(0, unitBytes + 4 * 4096 + 7));
    h.closeAndCheck();
  });
});
