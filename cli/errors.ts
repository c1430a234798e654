/**
 * What the CLI tells a user when something fails: exactly one line,
 * `grovefs: <what went wrong> — <what to do>`, and never a stack trace
 * (GROVEFS_DEBUG=1 adds the stack of an unexpected error, for bug reports).
 */
import { GroveError, TruncatedImageError } from "../kvstore/index.js";

/** A failure the CLI itself detected, with the advice to print after it. */
export class CliError extends Error {
  readonly hint: string;

  constructor(message: string, hint: string) {
    super(message);
    this.name = "CliError";
    this.hint = hint;
  }
}

/** A failure already formatted elsewhere (the mount daemon's own one-line report). */
export class ReportedError extends Error {
  constructor(line: string) {
    super(line);
    this.name = "ReportedError";
  }
}

/** Advice for GroveErrors the CLI commonly meets, by detail code, then by errno code. */
const hintsByDetail: Record<string, string> = {
  EBUSY_image_locked: "unmount it first (grovefs umount MOUNTPOINT), or wait for the other grovefs command to finish",
  ENOENT_device: "check the path, or create an image with: grovefs mkfs IMAGE --size 1G",
  EIO_no_superblock:
    "check the path; if it is a grovefs image, copy it before anything else (every superblock copy is damaged: at its start, and for a volume over 64 MiB at 64 MiB)",
  EINVAL_device_too_small: "a grovefs volume needs at least 1 MiB: check the path, or give mkfs a larger --size",
  EINVAL_label_too_long: "use a shorter --label (at most 64 bytes)",
  EIO_image_lock: "install util-linux (it provides flock)",
  EIO_fuse_mount: "fix what it says and retry",
  EIO_host_full: "free space on the filesystem that holds the image",
  ENOSPC_resize_in_use: "delete what lies past the new end (files, snapshots), or shrink less",
  ENOSPC_resize_full: "shrink less: a volume needs free room to work in",
  EINVAL_resize_past_device: "grow the device first (losetup -c LOOPDEV for a loop device whose file grew), or give max",
  EINVAL_resize_size: "give a size of at least 1M (and a -SIZE smaller than the volume)",
  EIO_image_resize: "check the filesystem that holds the image (space, permissions, its largest file size)",
  EFBIG_image_too_large: "give a smaller --size, put the image on a filesystem that allows larger files (xfs, btrfs), or use a block device",
};

const hintsByCode: Partial<Record<string, string>> = {
  EACCES: "check the permissions, or run as root",
  EPERM: "check the permissions, or run as root",
  EIO: "the image may be damaged: copy it before doing anything else; grovefs fsck -n IMAGE says what, grovefs mount -o rescue and grovefs restore IMAGE DIR read what is left",
  ENOSPC: "free some space",
  EROFS: "mount it read-write",
};

function nodeErrorHint(code: string | undefined): string | undefined {
  if (code === "EACCES" || code === "EPERM") return "check the permissions, or run as root";
  if (code === "ENOENT") return "check the path";
  if (code === "ENOSPC") return "free space on the host filesystem";
  return undefined;
}

/** The one line to print for `error` (without the trailing newline). */
export function formatError(error: unknown): string {
  if (error instanceof ReportedError) return error.message;
  if (error instanceof CliError) return `grovefs: ${error.message} — ${error.hint}`;
  if (error instanceof TruncatedImageError) {
    const image = error.path ?? "IMAGE";
    const copies = error.dupMetadata ? `, then grovefs fsck -y ${image} rewrites the second metadata copies that were past the cut` : "";
    return `grovefs: ${oneLine(error.message)} — if the file was cut, truncate -s ${error.volumeBytes} ${image} restores its size${copies}`;
  }
  if (error instanceof GroveError) {
    const hint = hintsByDetail[error.detail] ?? hintsByCode[error.code] ?? "see grovefs --help";
    return `grovefs: ${oneLine(error.message)} — ${hint}`;
  }
  const nodeError = error as NodeJS.ErrnoException;
  if (error instanceof Error && typeof nodeError.code === "string" && typeof nodeError.syscall === "string") {
    const hint = nodeErrorHint(nodeError.code) ?? "see grovefs --help";
    return `grovefs: ${oneLine(error.message)} — ${hint}`;
  }
  const what = error instanceof Error ? error.message : String(error);
  return `grovefs: internal error: ${oneLine(what)} — this is a bug; rerun with GROVEFS_DEBUG=1 and report the stack it prints`;
}

function oneLine(text: string): string {
  return text.replace(/\s*\n\s*/g, "; ").trim();
}

/** The stack of an unexpected error, for GROVEFS_DEBUG=1. */
export function debugDetail(error: unknown): string | undefined {
  if (process.env.GROVEFS_DEBUG !== "1") return undefined;
  return error instanceof Error ? error.stack : String(error);
}
