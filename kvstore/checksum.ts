/** crc32c (Castagnoli), hardware-accelerated through @node-rs/crc32. */
import { crc32c as nativeCrc32c } from "@node-rs/crc32";

export function crc32c(bytes: Uint8Array): number {
  return nativeCrc32c(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)) >>> 0;
}
