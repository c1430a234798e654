/**
 * Every limit of the filesystem layer, named once, with its unit last.
 */
import { valueSizeMaxBytes } from "../kvstore/index.js";

/** The default subvolume's inode tree. */
export const treeIdDefaultSubvolume = 256;
/** FUSE's root directory is inode 1. */
export const rootIno = 1;
export const firstFreeIno = 2;
/**
 * The largest inode number (the counter stops at it: ENOSPC_inodes). 2^48 - 1:
 * numbers are never reused, so this is 2^48 creations (89 years at 100k a
 * second); the per-inode tree owner ids (snapshot/format.ts) encode numbers
 * up to 2^52 - 1, and the kernel transport's node ids (fuse/nodes.ts) give
 * the served subvolume 2^48 of its 2^53 ids and the snapshots' views the rest.
 * fuse-native passes st_ino as 32 bits: it shows larger numbers folded
 * (fuse_bridge.ts `foldIno`).
 */
export const inoMax = 2 ** 48 - 1;
/** Inode numbers from here on have wide per-inode tree owners: the volume carries feature bit 7 (featureWideInodes). */
export const inoWideFirst = 2 ** 32;

/** NAME_MAX. */
export const nameSizeMaxBytes = 255;
/** Directory levels a walk up the parents (rename's subtree check) climbs before it takes them to form a loop. */
export const parentWalkMax = 1_000_000;
/** PATH_MAX, for symlink targets. */
export const symlinkTargetSizeMaxBytes = 4095;
/** 16 TiB: file offsets stay exact as JS numbers and block indices stay below 2^32. */
export const fileSizeMaxBytes = 2 ** 44;
/** Above this a hard link is refused with EMLINK. */
export const linkCountMax = 65000;

/** The fixed part of an inode record; the rest holds inline data or items. */
export const inodeRecordFixedBytes = 108;
/** Inline payload of an inode record: small files, symlink targets, small directories and extent lists. */
export const inodeInlineBytesMax = valueSizeMaxBytes - inodeRecordFixedBytes;

/** One data extent covers at most this many blocks (its record holds one crc32c a block). */
export const extentBlocksMax = 128;
/** Compressed data is stored in units of at most this many blocks (128 KiB), each its own extent. */
export const compressionUnitBlocksMax = 32;
/** Decompressed units kept for reads (sequential readers and small reads of one unit). */
export const decompressedCacheUnits = 32;

/** Extended attributes: name (with namespace) and value bounds. */
export const xattrNameSizeMaxBytes = 240;
export const xattrValueSizeMaxBytes = 16 * 1024;
export const xattrChunkBytes = 512;

/** Commit at least this often while anything is dirty. */
export const commitIntervalMs = 5000;
/** The range mount -o commit= accepts: ext4 and btrfs take any positive number of seconds; beyond an hour is a typo. */
export const commitIntervalMinMs = 1000;
export const commitIntervalMaxMs = 3_600_000;
/** Buffered file data is written out (delayed allocation) past this bound. */
export const dirtyDataBytesMax = 64 * 1024 * 1024;
/** The transaction is committed once its dirty tree nodes pass this bound. */
export const dirtyNodeBytesMax = 64 * 1024 * 1024;
/** Open file handles at once. */
export const openFilesMax = 65536;
/**
 * fsck's logical pass walks each tree in key order, one path at a time, and
 * diffs snapshots against each other: it needs few nodes cached, and the
 * mount's 64 MiB would be a quarter of fsck's memory goal (issue 16).
 */
export const checkNodeCacheBytes = 8 * 1024 * 1024;

/** Where fsck -y links the inodes that no entry names (e2fsck's name), in the root of each writable subvolume. */
export const lostFoundName = "lost+found";

/** How many copies of each tree node a volume keeps: "dup" writes two, an eighth of the volume apart (kvstore featureDupMetadata). */
export type MetadataProfile = "single" | "dup";
export const metadataProfiles: readonly MetadataProfile[] = ["single", "dup"];
/** What mkfs makes unless told otherwise. */
export const metadataProfileDefault: MetadataProfile = "dup";
