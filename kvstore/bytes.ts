/**
 * Byte helpers shared by every format module: 64-bit integers as two 32-bit
 * halves (BigInt conversions cost ~100 ns each on hot paths), and block
 * buffers carved from shared slabs (one ArrayBuffer per 4 KiB node made the
 * garbage collector a fifth of the commit path).
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

const slabBlocks = 64;
let slab: ArrayBuffer | null = null;
let slabNext = slabBlocks;
/** Buffers of nodes whose blocks were freed, ready for the next copy-on-write. */
const recycled: Buffer[] = [];
const recycledMax = 8192;

/** An uninitialised block buffer. A slab stays alive while any of its blocks does. */
export function allocBlock(): Buffer {
  const reused = recycled.pop();
  if (reused !== undefined) return reused;
  if (slabNext === slabBlocks) {
    slab = new ArrayBuffer(slabBlocks * blockSizeBytes);
    slabNext = 0;
  }
  return Buffer.from(slab!, blockSizeBytes * slabNext++, blockSizeBytes);
}

/**
 * Hands a block buffer back for reuse. Only for a buffer nothing will read
 * again: the node that owned it is gone from the cache and from every live path.
 */
export function recycleBlock(buf: Buffer): void {
  if (buf.length === blockSizeBytes && recycled.length < recycledMax) recycled.push(buf);
}
