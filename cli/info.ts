/**
 * grovefs info IMAGE [--json]
 *
 * Opens the image read-only under a shared lock and prints the volume's
 * label, uuid, size, used and free space, generation, tree count and inode
 * count. While another grovefs process holds the image (mounted read-write,
 * or being formatted), the full numbers would need its uncommitted state, so
 * only the committed superblock's fields are shown, marked "in use"; df on the
 * mountpoint gives the live space figures.
 */
import { GroveFs } from "../fs/index.js";
import { FileDevice, GroveError, readSuperblock, blockSizeBytes } from "../kvstore/index.js";
import { formatSize } from "./size.js";

export interface InfoOptions {
  json?: boolean;
}

interface Report {
  image: string;
  inUse: boolean;
  label: string;
  uuid: string;
  sizeBytes: number;
  generation: number;
  usedBytes?: number;
  freeBytes?: number;
  trees?: number;
  /** Inodes of the default subvolume. */
  inodes?: number;
  /** Live subvolumes (the default one, clones and snapshots), and how many of them are snapshots. */
  subvolumes?: number;
  snapshots?: number;
  /** Subvolumes deleted whose space is still being freed. */
  pendingDeletions?: number;
}

function fullReport(image: string, device: FileDevice): Report {
  const volume = GroveFs.open(device, { readOnly: true });
  try {
    const info = volume.info();
    const subvolumes = volume.listSubvolumes();
    return {
      image,
      inUse: false,
      label: info.label,
      uuid: info.uuid,
      sizeBytes: info.sizeBytes,
      generation: info.generation,
      usedBytes: info.usedBytes,
      freeBytes: info.freeBytes,
      trees: info.trees,
      inodes: info.inodes,
      subvolumes: subvolumes.length,
      snapshots: subvolumes.filter((s) => s.readOnly).length,
      pendingDeletions: volume.pendingDeletions(),
    };
  } finally {
    volume.close();
  }
}

/** From the last committed superblock only: safe to read while another process writes the image. */
function superblockReport(image: string): Report {
  const device = FileDevice.open(image, { readOnly: true });
  try {
    const sb = readSuperblock(device);
    return {
      image,
      inUse: true,
      label: sb.label,
      uuid: sb.uuid.toString("hex"),
      sizeBytes: sb.deviceBlocks * blockSizeBytes,
      generation: sb.generation,
    };
  } finally {
    device.close();
  }
}

function readReport(image: string): Report {
  let device: FileDevice;
  try {
    device = FileDevice.open(image, { readOnly: true, lock: true });
  } catch (error) {
    if (error instanceof GroveError && error.detail === "EBUSY_image_locked") return superblockReport(image);
    throw error;
  }
  try {
    return fullReport(image, device);
  } finally {
    device.close();
  }
}

function text(report: Report): string {
  const rows: [string, string][] = [
    ["image", report.image + (report.inUse ? " (in use by another grovefs process: committed state only)" : "")],
    ["label", report.label === "" ? "(none)" : report.label],
    ["uuid", report.uuid],
    ["size", `${formatSize(report.sizeBytes)} (${report.sizeBytes} bytes)`],
  ];
  if (report.usedBytes !== undefined && report.freeBytes !== undefined) {
    const percent = report.sizeBytes > 0 ? ((100 * report.usedBytes) / report.sizeBytes).toFixed(1) : "0";
    rows.push(["used", `${formatSize(report.usedBytes)} (${report.usedBytes} bytes, ${percent}%)`]);
    rows.push(["free", `${formatSize(report.freeBytes)} (${report.freeBytes} bytes)`]);
  } else {
    rows.push(["used", "unknown while in use (df on the mount point shows it)"]);
  }
  rows.push(["generation", String(report.generation)]);
  if (report.trees !== undefined) rows.push(["trees", String(report.trees)]);
  if (report.inodes !== undefined) rows.push(["inodes", String(report.inodes)]);
  if (report.subvolumes !== undefined) {
    const deleting = report.pendingDeletions ? `, ${report.pendingDeletions} being deleted` : "";
    rows.push(["subvolumes", `${report.subvolumes} (${report.snapshots} snapshot${report.snapshots === 1 ? "" : "s"}${deleting})`]);
  }
  return rows.map(([key, value]) => `${`${key}:`.padEnd(12)}${value}\n`).join("");
}

export function infoCommand(image: string, options: InfoOptions): void {
  const report = readReport(image);
  process.stdout.write(options.json ? `${JSON.stringify(report, null, 2)}\n` : text(report));
}
