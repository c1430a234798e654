/**
 * Byte helpers shared by every format module: 64-bit integers as two 32-bit
 * halves (BigInt conversions cost ~100 ns each on hot paths), and block
 * buffers, recycled when their node's block is freed.
 */
import { blockSizeBytes } from "./constants.js";

const two32 = 4294967296;

export function writeU64LE(buf: Uint8Array, offset: number, value: number): void {
  const lo = value >>> 0;
  const hi = Math.floor(value / two32) >>> 0;
  buf[offset] = lo & 0xff;
  buf[offset + 1] = (lo >>> 8) & 0xff;
  buf[offset + 2] = (lo >>> 16) & 0xff;
  buf[offset + 3] = lo >>> 24;
  buf[offset + 4] = hi & 0xff;
  buf[offset + 5] = (hi >>> 8) & 0xff;
  buf[offset + 6] = (hi >>> 16) & 0xff;
  buf[offset + 7] = hi >>> 24;
}

export function readU64LE(buf: Buffer, offset: number): number {
  return buf.readUInt32LE(offset) + buf.readUInt32LE(offset + 4) * two32;
}

/** Big-endian, so that byte order (memcmp) is numeric order in composite keys. */
export function writeU64BE(buf: Buffer, offset: number, value: number): void {
  buf.writeUInt32BE(Math.floor(value / two32) >>> 0, offset);
  buf.writeUInt32BE(value >>> 0, offset + 4);
}

export function readU64BE(buf: Buffer, offset: number): number {
  return buf.readUInt32BE(offset) * two32 + buf.readUInt32BE(offset + 4);
}

/** Buffers of nodes whose blocks were freed, ready for the next copy-on-write. */
const recycled: Buffer[] = [];
const recycledMax = 8192;

/**
 * An uninitialised block buffer, with an ArrayBuffer of its own. Carving
 * blocks from shared slabs was tried and saved some garbage-collector time,
 * but a slab lives while any one of its blocks does, and the node cache keeps
 * a scattered few of every slab: creating 150k files held 152 MiB of slabs
 * for 42 MiB of cached nodes (46 MiB with a buffer each), and the mount's
 * memory grew with the volume instead of staying near the cache bound.
 * `bench:kvstore` showed no difference beyond its noise (ABBA, 3 runs each).
 */
export function allocBlock(): Buffer {
  return recycled.pop() ?? Buffer.allocUnsafeSlow(blockSizeBytes);
}

/**
 * Hands a block buffer back for reuse. Only for a buffer nothing will read
 * again: the node that owned it is gone from the cache and from every live path.
 */
export function recycleBlock(buf: Buffer): void {
  if (buf.length === blockSizeBytes && recycled.length < recycledMax) recycled.push(buf);
}
