/**
 * grovefs mkfs IMAGE [--size N] [--label NAME] [--compress lz4|none] [--metadata single|dup] [--force]
 *
 * --metadata dup writes every tree node twice, the copies an eighth of the
 * volume apart, so that a damaged copy is read from (and healed by) its twin.
 * Formats an image file (created sparse when missing) or a block device.
 * --compress sets how new file data is compressed by default (none unless
 * given); a mount overrides it with -o compress=.
 * Careful by default, like mkfs.ext4: without --force it refuses anything that
 * holds data — an existing grovefs volume, another filesystem's signature (named
 * when known), any non-zero byte in the first 64 KiB, or a regular file with
 * more allocated space than its zero head explains. An image in use by another
 * grovefs process is refused even with --force (the lock is taken first).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { GroveFs, metadataProfileDefault, metadataProfiles, type MetadataProfile } from "../fs/index.js";
import { lockImageFd } from "../kvstore/index.js";
import { blockSizeBytes, FileDevice, readSuperblock, type BlockDevice } from "../kvstore/index.js";
import { parseCompression } from "./compression.js";
import { CliError } from "./errors.js";
import { formatSize, parseSize } from "./size.js";

export interface MkfsOptions {
  size?: string;
  label?: string;
  compress?: string;
  metadata?: string;
  force?: boolean;
}

/** Bytes read to look for signatures: 64 KiB plus the block holding btrfs's superblock. */
const probeBytes = 64 * 1024 + blockSizeBytes;
const zeroHeadBytes = 64 * 1024;

interface Signature {
  offset: number;
  magic: Buffer;
  name: string;
}

const signatures: Signature[] = [
  { offset: 0, magic: Buffer.from("GROVEFS\x01", "latin1"), name: "a grovefs volume" },
  { offset: blockSizeBytes, magic: Buffer.from("GROVEFS\x01", "latin1"), name: "a grovefs volume" },
  { offset: 0, magic: Buffer.from("XFSB"), name: "an XFS filesystem" },
  { offset: 65600, magic: Buffer.from("_BHRfS_M"), name: "a btrfs filesystem" },
  { offset: 0, magic: Buffer.from([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]), name: "a LUKS encrypted volume" },
  { offset: 0, magic: Buffer.from("hsqs"), name: "a squashfs filesystem" },
  { offset: 4086, magic: Buffer.from("SWAPSPACE2"), name: "swap space" },
  { offset: 32769, magic: Buffer.from("CD001"), name: "an ISO 9660 filesystem" },
  { offset: 3, magic: Buffer.from("NTFS    "), name: "an NTFS filesystem" },
  { offset: 82, magic: Buffer.from("FAT32   "), name: "a FAT32 filesystem" },
  { offset: 54, magic: Buffer.from("FAT1"), name: "a FAT filesystem" },
  { offset: 512, magic: Buffer.from("EFI PART"), name: "a GPT partition table" },
  { offset: 536, magic: Buffer.from("LVM2 001"), name: "an LVM physical volume" },
];

/** ext2/3/4: magic 0xEF53 at 1024+56; the feature flags tell the versions apart. */
function extVersion(head: Buffer): string | null {
  const sb = 1024;
  if (head.length < sb + 0x68 || head.readUInt16LE(sb + 0x38) !== 0xef53) return null;
  const compat = head.readUInt32LE(sb + 0x5c);
  const incompat = head.readUInt32LE(sb + 0x60);
  const extents = 0x40;
  const hasJournal = 0x4;
  if (incompat & extents) return "an ext4 filesystem";
  return compat & hasJournal ? "an ext3 filesystem" : "an ext2 filesystem";
}

/** What `head` (the start of the target) holds, or null when it looks unused. */
export function identifyContents(head: Buffer): string | null {
  for (const sig of signatures) {
    const at = head.subarray(sig.offset, sig.offset + sig.magic.length);
    if (at.equals(sig.magic)) return sig.name;
  }
  const ext = extVersion(head);
  if (ext !== null) return ext;
  if (head.length >= 512 && head[510] === 0x55 && head[511] === 0xaa) return "a partition table or boot sector";
  const zeroHead = head.subarray(0, zeroHeadBytes);
  if (zeroHead.some((byte) => byte !== 0)) return "data";
  return null;
}

function readHead(fd: number): Buffer {
  const head = Buffer.alloc(probeBytes);
  let done = 0;
  while (done < head.length) {
    const n = fs.readSync(fd, head, done, head.length - done, done);
    if (n === 0) break;
    done += n;
  }
  return head.subarray(0, done);
}

/** The label, for the refusal message, when the grovefs volume is readable. */
function describeGrove(image: string): string {
  try {
    const device = FileDevice.open(image, { readOnly: true });
    try {
      const sb = readSuperblock(device);
      return `a grovefs volume${sb.label ? ` labelled "${sb.label}"` : ""} (uuid ${sb.uuid.toString("hex")})`;
    } finally {
      device.close();
    }
  } catch {
    return "a grovefs volume (damaged)";
  }
}

/** Refuses (without --force) a target that holds data; the probe's shared lock refuses a target in use. */
function checkTarget(image: string, stat: fs.Stats, force: boolean): void {
  const fd = fs.openSync(image, "r");
  try {
    lockImageFd(fd, image, "shared");
    if (force) return;
    const head = readHead(fd);
    let found = identifyContents(head);
    if (found === "a grovefs volume") found = describeGrove(image);
    if (found === null && stat.isFile() && stat.blocks * 512 > zeroHeadBytes) {
      found = `data (${formatSize(stat.blocks * 512)} allocated)`;
    }
    if (found !== null) {
      throw new CliError(`${image} contains ${found}`, "use --force to overwrite it (everything on it is lost)");
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** A block device's first `blocks` blocks, for a volume smaller than the device. */
function limitDevice(device: BlockDevice, blocks: number): BlockDevice {
  return {
    blockCount: blocks,
    read: (lba, buf) => device.read(lba, buf),
    write: (lba, buf) => device.write(lba, buf),
    writev: (lba, bufs) => device.writev(lba, bufs),
    flush: () => device.flush(),
    close: () => device.close(),
  };
}

function statOrNull(image: string): fs.Stats | null {
  try {
    return fs.statSync(image);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw error;
  }
}

/** Opens (creating or resizing as asked) the device to format, locked. */
function targetDevice(image: string, sizeBytes: number | undefined, force: boolean): BlockDevice {
  const stat = statOrNull(image);
  if (stat === null) {
    const dir = path.dirname(path.resolve(image));
    if (!statOrNull(dir)?.isDirectory()) {
      throw new CliError(`directory ${dir} does not exist`, "create it first, or give another path");
    }
    if (sizeBytes === undefined) {
      throw new CliError(`${image} does not exist`, "give --size to create it, e.g. grovefs mkfs IMAGE --size 4G");
    }
    return FileDevice.createImage(image, sizeBytes, { lock: true });
  }
  if (stat.isDirectory()) throw new CliError(`${image} is a directory`, "give an image file or a block device");
  if (!stat.isFile() && !stat.isBlockDevice()) {
    throw new CliError(`${image} is not a regular file or block device`, "give an image file or a block device");
  }
  checkTarget(image, stat, force);
  if (stat.isFile()) {
    const target = sizeBytes ?? stat.size;
    if (target === 0) throw new CliError(`${image} is empty`, "give --size, e.g. --size 4G");
    return FileDevice.createImage(image, target, { lock: true });
  }
  const device = FileDevice.open(image, { lock: true });
  if (sizeBytes === undefined) return device;
  const deviceBytes = device.blockCount * blockSizeBytes;
  if (sizeBytes > deviceBytes) {
    device.close();
    throw new CliError(
      `--size ${formatSize(sizeBytes)} exceeds the device ${image} (${formatSize(deviceBytes)})`,
      "leave out --size to use the whole device",
    );
  }
  return limitDevice(device, Math.floor(sizeBytes / blockSizeBytes));
}

function parseMetadata(name: string): MetadataProfile {
  const profile = metadataProfiles.find((p) => p === name);
  if (profile === undefined) {
    throw new CliError(`unknown metadata profile "${name}"`, `--metadata takes ${metadataProfiles.join(" or ")}`);
  }
  return profile;
}

/** How `info` and mkfs name a metadata profile. */
export function metadataText(profile: string): string {
  return profile === "dup" ? "dup (two copies of every tree node)" : `${profile} (one copy of every tree node)`;
}

export function mkfsCommand(image: string, options: MkfsOptions): void {
  const sizeBytes = options.size === undefined ? undefined : parseSize(options.size);
  const compression = parseCompression(options.compress ?? "none", "--compress", (name) => `--compress ${name}`);
  const metadata = parseMetadata(options.metadata ?? metadataProfileDefault);
  const device = targetDevice(image, sizeBytes, options.force ?? false);
  try {
    GroveFs.format(device, { label: options.label, compression, metadata });
  } finally {
    device.close();
  }
  const check = FileDevice.open(image, { readOnly: true, lock: true });
  const volume = GroveFs.open(check, { readOnly: true });
  try {
    const info = volume.info();
    const rows: [string, string][] = [
      ["label", info.label === "" ? "(none)" : info.label],
      ["size", `${formatSize(info.sizeBytes)} (${info.sizeBytes} bytes)`],
      ["uuid", info.uuid],
      ["compression", `${info.compression}${info.compression === "none" ? "" : " (new file data by default)"}`],
      ["metadata", metadataText(info.metadata)],
    ];
    process.stdout.write(`formatted ${image} as grovefs\n${rows.map(([key, value]) => `  ${`${key}:`.padEnd(13)}${value}\n`).join("")}`);
  } finally {
    volume.close();
    check.close();
  }
}
