/** crc32c (Castagnoli), hardware-accelerated through @node-rs/crc32. */
import { crc32c as nativeCrc32c } from "@node-rs/crc32";

/** `state`: the crc of the bytes before these, to continue a checksum over a stream. */
export function crc32c(bytes: Uint8Array, state = 0): number {
  return nativeCrc32c(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength), state) >>> 0;
}
