/**
 * Resizing a volume as a user asks for it (`grovefs resize TARGET
 * SIZE|+SIZE|-SIZE|max`): to a size in bytes, by a difference in bytes, or
 * to what the device holds now. Sizes are rounded down to whole blocks
 * (4 KiB), and the result says so.
 *
 * What the device holds ("max"): for an image file its length (after
 * truncate(1) made it longer), for a block device its size read again (after
 * `losetup -c` of a loop device whose file grew, or a grown partition or LV).
 * The engine does the rest (Store.resize): it grows an image file before the
 * commit, refuses a shrink over blocks in use, and cuts an image file only
 * after the shrink is durable.
 */
import { GroveError, type Store, blockSizeBytes, deviceSizeMinBytes } from "../kvstore/index.js";

/** Bytes, as given: `to` a size, `by` a signed difference, or `max`, the device's size. */
export type ResizeRequest = { to: number } | { by: number } | { max: true };

export interface ResizeResult {
  oldBytes: number;
  newBytes: number;
  /** What the device (image file or block device) holds once the resize is done. */
  deviceBytes: number;
  /** The size asked for was not a whole number of blocks and was rounded down. */
  rounded: boolean;
}

/** Checks the shape of a request that came from outside (the control socket trusts nothing). */
export function parseResizeRequest(value: unknown): ResizeRequest {
  const bad = (): never => {
    throw new GroveError("EINVAL", "EINVAL_resize_request", "a resize takes {to: bytes}, {by: bytes} or {max: true}");
  };
  if (typeof value !== "object" || value === null) return bad();
  const request = value as Record<string, unknown>;
  const keys = Object.keys(request);
  if (keys.length !== 1) return bad();
  if (request.max === true) return { max: true };
  if (Number.isSafeInteger(request.to) && (request.to as number) >= 0) return { to: request.to as number };
  if (Number.isSafeInteger(request.by)) return { by: request.by as number };
  return bad();
}

/** The block count `request` asks for, from the volume's size and the device's. */
function targetBlocks(store: Store, request: ResizeRequest): { blocks: number; rounded: boolean } {
  if ("max" in request) return { blocks: store.device.refreshSize?.() ?? store.device.blockCount, rounded: false };
  const volumeBytes = store.deviceBlocks * blockSizeBytes;
  if ("by" in request && volumeBytes + request.by < 0) {
    throw new GroveError("EINVAL", "EINVAL_resize_size", `the volume is ${volumeBytes} bytes: it cannot shrink by ${-request.by} bytes`);
  }
  const bytes = "to" in request ? request.to : volumeBytes + request.by;
  if (bytes < deviceSizeMinBytes) {
    throw new GroveError("EINVAL", "EINVAL_resize_size", `cannot resize the volume to ${bytes} bytes: a volume is at least ${deviceSizeMinBytes} bytes`);
  }
  return { blocks: Math.floor(bytes / blockSizeBytes), rounded: bytes % blockSizeBytes !== 0 };
}

/**
 * Resizes the volume of `store`, whose running transaction the caller has
 * just committed; the resize is a commit of its own.
 */
export function resizeVolume(store: Store, request: ResizeRequest): ResizeResult {
  const oldBytes = store.deviceBlocks * blockSizeBytes;
  const { blocks, rounded } = targetBlocks(store, request);
  store.resize(blocks);
  return { oldBytes, newBytes: store.deviceBlocks * blockSizeBytes, deviceBytes: store.device.blockCount * blockSizeBytes, rounded };
}
