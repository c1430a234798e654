/**
 * Shared machinery for the filesystem suites: a formatted volume on a
 * simulated device, errno assertions, byte patterns, and the checker that
 * every mutating test runs at the end (STYLE.md point 10).
 */
import { expect } from "vitest";
import { constants as C } from "node:fs";
import { BlockDevice, GroveError, Prng, SimDevice, blockSizeBytes } from "../kvstore/index.js";
import { Caller, FileSystemOps, GroveFs, GroveFsOptions, checkFilesystem, FsReport } from "../fs/index.js";

export const root: Caller = { uid: 0, gid: 0 };
export const { O_RDONLY, O_WRONLY, O_RDWR, O_CREAT, O_EXCL, O_TRUNC, O_APPEND } = C;

/** A deterministic clock: every call moves one microsecond on. */
export function testClock(startNs = 1_700_000_000_000_000_000n): () => bigint {
  let now = startNs;
  return () => (now += 1000n);
}

/** A GroveFs on a SimDevice, with the device kept so that the volume can be reopened or crashed. */
export class FsHarness {
  device: SimDevice;
  fs: GroveFs;
  readonly clock: () => bigint;
  /** Options every open of this volume uses (a reopen may add to them). */
  readonly options: GroveFsOptions;

  constructor(blocks = 16384, options: GroveFsOptions = {}) {
    this.clock = options.clock ?? testClock();
    this.options = { ...options, clock: this.clock };
    this.device = new SimDevice(blocks);
    GroveFs.format(this.device, { clock: this.clock });
    this.device = this.device.reopen();
    this.fs = GroveFs.open(this.device, this.options);
  }

  /** Clean close, then open the same disk again. */
  reopen(options: GroveFsOptions = {}): GroveFs {
    this.fs.close();
    this.device = this.device.reopen();
    this.fs = GroveFs.open(this.device, { ...this.options, ...options });
    return this.fs;
  }

  /** Power loss now: whatever was not flushed is lost (dropped), then reboot. */
  crashAndReopen(options: GroveFsOptions = {}): GroveFs {
    this.device = SimDevice.fromDurable(durableImage(this.device), this.device.blockCount);
    this.fs = GroveFs.open(this.device, { ...this.options, ...options });
    return this.fs;
  }

  /** Closes cleanly and runs the full checker (with data checksums) over the result. */
  closeAndCheck(): FsReport {
    this.fs.close();
    this.device = this.device.reopen();
    return expectFsClean(this.device);
  }
}

/**
 * The durable image of a SimDevice: what a crash with every unflushed write
 * dropped leaves. (recover() with keep and tear probability 0.)
 */
export function durableImage(device: SimDevice): Map<number, Uint8Array> {
  return device.recover(new Prng(0), { keepProbability: 0, tearProbability: 0 }).snapshotLive();
}

/** The filesystem checker, with data checksums, finds nothing. */
export function expectFsClean(device: BlockDevice): FsReport {
  const report = checkFilesystem(device, { verifyData: true });
  if (report.problems.length > 0) {
    throw new Error(`checkFilesystem found problems:\n${report.problems.slice(0, 20).join("\n")}`);
  }
  return report;
}

/** `body` throws a GroveError with this errno code (and, if given, this detail). */
export function expectErrno(body: () => unknown, code: string, detail?: string): GroveError {
  let thrown: unknown;
  try {
    body();
  } catch (error) {
    thrown = error;
  }
  if (thrown === undefined) throw new Error(`expected ${code}, but the call succeeded`);
  if (!(thrown instanceof GroveError)) throw thrown;
  expect(thrown.code, `${thrown.detail}: ${thrown.message}`).toBe(code);
  if (detail !== undefined) expect(thrown.detail).toBe(detail);
  return thrown;
}

/** A recognisable byte pattern: byte i of the file is a function of i and the seed. */
export function pattern(length: number, seed = 1, offset = 0): Buffer {
  const out = Buffer.allocUnsafe(length);
  for (let i = 0; i < length; i++) {
    const x = offset + i;
    out[i] = (Math.imul(x ^ (x >>> 11), 2654435761) + seed * 131 + (x >>> 12) * 7) & 0xff;
  }
  return out;
}

/** Writes the whole buffer at `position`, checking the count. */
export function writeAt(fs: GroveFs, fh: number, data: Buffer, position: number): void {
  expect(fs.write(fh, data, data.length, position)).toBe(data.length);
}

/** Reads `length` bytes at `position` (fewer at end of file). */
export function readAt(fs: GroveFs, fh: number, length: number, position = 0): Buffer {
  const out = Buffer.alloc(length);
  const n = fs.read(fh, out, length, position);
  return out.subarray(0, n);
}

/** The whole file at `path`, read through a fresh read-only handle in chunks. */
export function readFile(fs: FileSystemOps, path: string): Buffer {
  const fh = fs.open(path, O_RDONLY);
  try {
    const size = fs.fgetattr(fh).size;
    const out = Buffer.alloc(size);
    const chunk = 1024 * 1024;
    for (let at = 0; at < size; at += chunk) {
      const n = fs.read(fh, out.subarray(at), Math.min(chunk, size - at), at);
      expect(n).toBe(Math.min(chunk, size - at));
    }
    return out;
  } finally {
    fs.release(fh);
  }
}

/** Creates (or truncates) `path` and writes `data` to it. */
export function writeFile(fs: GroveFs, path: string, data: Buffer, caller: Caller = root): void {
  const fh = fs.create(path, 0o644, O_CREAT | O_WRONLY | O_TRUNC, caller);
  try {
    const chunk = 1024 * 1024;
    for (let at = 0; at < data.length; at += chunk) writeAt(fs, fh, data.subarray(at, at + chunk), at);
  } finally {
    fs.release(fh);
  }
}

export function usedBlocks(fs: GroveFs): number {
  return fs.space.usage().usedBlocks;
}

export const blockBytes = blockSizeBytes;

/** Byte equality without vitest's element-by-element deep compare (slow on megabytes); names the first difference. */
export function expectBytes(actual: Buffer, expected: Buffer, what = "bytes"): void {
  if (actual.equals(expected)) return;
  let i = 0;
  while (i < actual.length && i < expected.length && actual[i] === expected[i]) i++;
  throw new Error(
    `${what}: ${actual.length} bytes, expected ${expected.length}; first difference at offset ${i} ` +
      `(got ${actual[i]}, expected ${expected[i]})`,
  );
}
