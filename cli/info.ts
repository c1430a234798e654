/**
 * grovefs info TARGET [--json]
 *
 * TARGET is an image or the mountpoint of a running grovefs mount. An
 * unmounted image is opened read-only under a shared lock; for a mounted one
 * (named by its mountpoint or by the image) the mount daemon is asked, and
 * answers with its live figures, uncommitted changes included. Either way it
 * prints the volume's
 * label, uuid, size, default compression, used and free space, generation,
 * tree count and inode count, the metadata profile (single or dup) and, with
 * dup, the damaged node copies read from their twin and rewritten (by this
 * open: for a mount, since it was mounted), and the last scrub (a mount
 * daemon's running one, or the state file's). Used space is shown twice: on disk (physical,
 * what df shows) and logical (as if compressed data were stored
 * uncompressed), with the compressed data extents counted once each. While
 * another grovefs process that is not a mount daemon holds the image (mkfs,
 * fsck -y, a snapshot command), only the committed superblock's fields are
 * shown, marked "in use".
 */
import { GroveFs } from "../fs/index.js";
import { FileDevice, GroveError, readSuperblock, blockSizeBytes, featureDupMetadata } from "../kvstore/index.js";
import { metadataText } from "./mkfs.js";
import { mountpointOfImage, servingPid } from "./mount.js";
import { readScrubRecord, scrubSummaryLine, type ScrubRecord } from "./scrub.js";
import { formatSize } from "./size.js";
import { askDaemon, resolveTarget, type Target } from "./target.js";

/** The superblock's compression byte, by name (0 none, 1 lz4: kvstore/superblock.ts). */
const compressionBySuperblockCode: readonly string[] = ["none", "lz4"];

export interface InfoOptions {
  json?: boolean;
}

interface Report {
  image: string;
  /** Another grovefs process holds the image and could not be asked: only the committed superblock is shown. */
  inUse: boolean;
  /** Where it is mounted, when the figures came from the mount daemon (live, uncommitted changes included). */
  mountpoint?: string;
  label: string;
  uuid: string;
  sizeBytes: number;
  generation: number;
  /** How new file data is compressed by default (mkfs --compress); a mount may override it. */
  compression: string;
  /** Tree nodes written once ("single") or twice ("dup"). */
  metadata: string;
  /** Damaged node copies read from their twin, and rewritten in place, since the volume was opened (a mount: mounted). */
  metadataRepairs?: { found: number; rewritten: number };
  /** Physical: blocks allocated on the device. */
  usedBytes?: number;
  /** As if compressed data were stored uncompressed: usedBytes plus what compression saved. */
  logicalUsedBytes?: number;
  /** Compressed data extents, each counted once: their size on disk and decompressed. */
  compressed?: { extents: number; diskBytes: number; logicalBytes: number };
  freeBytes?: number;
  trees?: number;
  /** Inodes of the default subvolume (of the mounted one, from a mount daemon). */
  inodes?: number;
  /** Live subvolumes (the default one, clones and snapshots), and how many of them are snapshots. */
  subvolumes?: number;
  snapshots?: number;
  /** Subvolumes deleted whose space is still being freed. */
  pendingDeletions?: number;
  /** Set by a mount daemon whose image file was deleted while mounted (its link count is 0). */
  imageDeleted?: string;
  /** The last scrub of the volume (running, from its daemon; else the state file's), null when none is recorded. */
  scrub?: ScrubRecord | null;
}

function fullReport(image: string, device: FileDevice): Report {
  const volume = GroveFs.open(device, { readOnly: true });
  try {
    return volumeReport(image, volume);
  } finally {
    volume.close();
  }
}

/** The full figures of an open volume: the CLI's own read-only open, or a mount daemon's live volume. */
export function volumeReport(image: string, volume: GroveFs): Report {
  const info = volume.info();
  const deleted = imageDeletedWarning(image, volume);
  const subvolumes = volume.listSubvolumes();
  return {
    image,
    inUse: false,
    label: info.label,
    uuid: info.uuid,
    sizeBytes: info.sizeBytes,
    generation: info.generation,
    compression: info.compression,
    metadata: info.metadata,
    metadataRepairs: { ...info.metadataRepairs },
    usedBytes: info.usedBytes,
    logicalUsedBytes: info.logicalUsedBytes,
    compressed: { ...info.compressed },
    freeBytes: info.freeBytes,
    trees: info.trees,
    inodes: info.inodes,
    subvolumes: subvolumes.length,
    snapshots: subvolumes.filter((s) => s.readOnly).length,
    pendingDeletions: volume.pendingDeletions(),
    ...(deleted === null ? {} : { imageDeleted: deleted }),
  };
}

/**
 * What to say when the open image file has no name left (deleted while
 * mounted): everything still works, but the data goes when the mount ends.
 */
export function imageDeletedWarning(image: string, volume: GroveFs): string | null {
  const device = volume.store.device;
  if (!(device instanceof FileDevice) || !device.isImageFile || device.linkCount() > 0) return null;
  return `the image file ${image} was deleted while mounted: the volume still works, but its data is lost when it is unmounted; copy the files out of the mount first`;
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
      compression: compressionBySuperblockCode[sb.compression] ?? `unknown (${sb.compression})`,
      metadata: (sb.features & featureDupMetadata) !== 0n ? "dup" : "single",
    };
  } finally {
    device.close();
  }
}

async function daemonReport(target: Target & { kind: "mount" }): Promise<Report> {
  const report = (await askDaemon(target, { op: "info" })) as Report;
  // A daemon that cannot say (one started by an older grovefs) leaves the line out; the rest still shows.
  const scrub = await (askDaemon(target, { op: "scrub", action: "status" }) as Promise<ScrubRecord | null>).then(
    (record) => ({ scrub: record }),
    () => ({}),
  );
  return { ...report, mountpoint: target.mountpoint, ...scrub };
}

async function readReport(target: Target): Promise<Report> {
  if (target.kind === "mount") return daemonReport(target);
  const image = target.image;
  let device: FileDevice;
  try {
    device = FileDevice.open(image, { readOnly: true, lock: true });
  } catch (error) {
    if (!(error instanceof GroveError) || error.detail !== "EBUSY_image_locked") throw error;
    const mountpoint = mountpointOfImage(image);
    const pid = mountpoint === null ? null : servingPid(mountpoint);
    if (mountpoint !== null && pid !== null) return daemonReport({ kind: "mount", mountpoint, shown: mountpoint, pid });
    return superblockReport(image);
  }
  let report: Report;
  try {
    report = fullReport(image, device);
  } finally {
    device.close();
  }
  return { ...report, scrub: readScrubRecord(report.uuid) };
}

/** "2.58x": how many times larger `logical` is than `disk`. */
function ratio(logical: number, disk: number): string {
  return disk > 0 ? `${(logical / disk).toFixed(2)}x` : "—";
}

function usageRows(report: Report): [string, string][] {
  const { usedBytes, logicalUsedBytes, freeBytes, compressed, sizeBytes } = report;
  if (usedBytes === undefined || freeBytes === undefined) return [["used", "unknown while in use (df on the mount point shows it)"]];
  const percent = sizeBytes > 0 ? ((100 * usedBytes) / sizeBytes).toFixed(1) : "0";
  let used = `${formatSize(usedBytes)} on disk (${usedBytes} bytes, ${percent}%)`;
  if (logicalUsedBytes !== undefined) used += `, ${formatSize(logicalUsedBytes)} logical (ratio ${ratio(logicalUsedBytes, usedBytes)})`;
  const rows: [string, string][] = [["used", used], ["free", `${formatSize(freeBytes)} (${freeBytes} bytes)`]];
  if (compressed !== undefined) {
    const { extents, diskBytes, logicalBytes } = compressed;
    rows.push([
      "compressed",
      extents === 0
        ? "0 data extents"
        : `${extents} data extent${extents === 1 ? "" : "s"}, ${formatSize(diskBytes)} on disk, ${formatSize(logicalBytes)} decompressed (ratio ${ratio(logicalBytes, diskBytes)})`,
    ]);
  }
  return rows;
}

function repairRows(report: Report): [string, string][] {
  const repairs = report.metadataRepairs;
  if (repairs === undefined || report.metadata !== "dup") return [];
  const since = report.mountpoint === undefined ? "by this read" : "since mounted";
  return [["repairs", `${repairs.found} damaged node cop${repairs.found === 1 ? "y" : "ies"} read from the twin, ${repairs.rewritten} rewritten (${since})`]];
}

function text(report: Report): string {
  const rows: [string, string][] = [
    ["image", report.image + (report.inUse ? " (in use by another grovefs process: committed state only)" : "")],
    ...(report.mountpoint === undefined ? [] : ([["mounted", `at ${report.mountpoint} (live figures from its daemon)`]] as [string, string][])),
    ["label", report.label === "" ? "(none)" : report.label],
    ["uuid", report.uuid],
    ["size", `${formatSize(report.sizeBytes)} (${report.sizeBytes} bytes)`],
    ["compression", `${report.compression} (the default for new writes)`],
    ["metadata", metadataText(report.metadata)],
    ...repairRows(report),
    ...(report.scrub === undefined ? [] : ([["scrub", scrubSummaryLine(report.scrub)]] as [string, string][])),
    ...usageRows(report),
  ];
  if (report.imageDeleted !== undefined) rows.unshift(["warning", report.imageDeleted]);
  rows.push(["generation", String(report.generation)]);
  if (report.trees !== undefined) rows.push(["trees", String(report.trees)]);
  if (report.inodes !== undefined) rows.push(["inodes", String(report.inodes)]);
  if (report.subvolumes !== undefined) {
    const deleting = report.pendingDeletions ? `, ${report.pendingDeletions} being deleted` : "";
    rows.push(["subvolumes", `${report.subvolumes} (${report.snapshots} snapshot${report.snapshots === 1 ? "" : "s"}${deleting})`]);
  }
  const width = Math.max(...rows.map(([key]) => key.length)) + 2;
  return rows.map(([key, value]) => `${`${key}:`.padEnd(width)}${value}\n`).join("");
}

export async function infoCommand(targetArg: string, options: InfoOptions): Promise<void> {
  const report = await readReport(resolveTarget(targetArg));
  process.stdout.write(options.json ? `${JSON.stringify(report, null, 2)}\n` : text(report));
}
