/**
 * grovefs resize TARGET SIZE|+SIZE|-SIZE|max
 *
 * Grows or shrinks a volume, as `btrfs filesystem resize` does. SIZE takes
 * the CLI's sizes (cli/size.ts: bytes, or K, M, G, T in powers of 1024);
 * +SIZE grows by that much and -SIZE shrinks by it; `max` is what the
 * device holds: an image file's length (after truncate(1) made it longer),
 * or a block device's size (after `losetup -c` of a loop device whose file
 * grew, or a grown partition or LV). Sizes are rounded down to whole 4 KiB
 * blocks.
 *
 * An image file grows with the volume (sparse) and is cut after a shrink; a
 * block device cannot grow past its size. A shrink is refused unless every
 * block past the new end is free: grovefs does not move data.
 *
 * TARGET is an unmounted image or block device, opened here under its
 * lock; or a mountpoint, or an image a daemon serves, whose daemon resizes
 * its open volume between two FUSE requests (cli/control.ts), so df shows the
 * new size at once.
 */
import { GroveFs, type ResizeRequest, type ResizeResult } from "../fs/index.js";
import { FileDevice, GroveError } from "../kvstore/index.js";
import { CliError } from "./errors.js";
import { formatSize, parseSize } from "./size.js";
import { askDaemon, daemonTarget, resolveTarget, type Target } from "./target.js";

const sizeHint = "give SIZE (e.g. 8G), +SIZE to grow by it, -SIZE to shrink by it, or max";

/** SIZE|+SIZE|-SIZE|max as a request. */
export function parseResizeSize(text: string): ResizeRequest {
  const trimmed = text.trim();
  if (trimmed.toLowerCase() === "max") return { max: true };
  const sign = trimmed.startsWith("+") ? 1 : trimmed.startsWith("-") ? -1 : 0;
  let bytes: number;
  try {
    bytes = parseSize(sign === 0 ? trimmed : trimmed.slice(1));
  } catch {
    throw new CliError(`invalid size '${text}'`, sizeHint);
  }
  if (sign === 0) return { to: bytes };
  return { by: sign * bytes };
}

function onImage(target: Target & { kind: "image" }, request: ResizeRequest): ResizeResult {
  let device: FileDevice;
  try {
    device = FileDevice.open(target.image, { lock: true });
  } catch (error) {
    if (error instanceof GroveError && error.detail === "EBUSY_image_locked") {
      throw new CliError(`${target.shown} is in use by another grovefs process`, "wait for it to finish; a mounted image is resized through its mount point");
    }
    throw error;
  }
  try {
    const volume = GroveFs.open(device);
    try {
      return volume.resize(request);
    } finally {
      volume.close();
    }
  } finally {
    device.close();
  }
}

function describe(shown: string, result: ResizeResult): string {
  const rounded = result.rounded ? " (rounded down to a multiple of 4 KiB)" : "";
  if (result.newBytes === result.oldBytes) return `${shown} is already ${formatSize(result.newBytes)} (${result.newBytes} bytes)${rounded}; nothing changed\n`;
  const verb = result.newBytes > result.oldBytes ? "grew" : "shrank";
  return `${shown} ${verb} from ${formatSize(result.oldBytes)} to ${formatSize(result.newBytes)} (${result.newBytes} bytes)${rounded}\n`;
}

export async function resizeCommand(targetArg: string, sizeArg: string): Promise<void> {
  const request = parseResizeSize(sizeArg);
  const target = resolveTarget(targetArg);
  const mount = daemonTarget(target);
  const result = mount !== null ? ((await askDaemon(mount, { op: "resize", size: request })) as ResizeResult) : onImage(target as Target & { kind: "image" }, request);
  process.stdout.write(describe(targetArg, result));
}
