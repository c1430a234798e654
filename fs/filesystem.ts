/**
 * GroveFs: POSIX files and directories on one subvolume's inode tree. It is
 * the facade that implements FileSystemOps, InodeOps and SubvolumeOps
 * (fs/api.ts) over the rooms that hold the state and do the work:
 * - the inode table (fs/inode_table.ts): records, inode numbers, orphans;
 * - the namespace (fs/namespace.ts): directory entries, path and slot
 *   resolution, and mkdir, rmdir, unlink, link, symlink, mknod, create and
 *   rename;
 * - the commit policy (fs/commit_policy.ts): admission and commits;
 * - file operations (fs/file_ops.ts): read, write, truncate, fallocate,
 *   lseek and atime, over file data (fs/file_data.ts, fs/ranges.ts);
 * - copy_file_range (fs/copy_range.ts);
 * - extended attributes (fs/xattrs.ts) and open handles (fs/handles.ts).
 * What stays here is the volume, its subvolumes and snapshot views,
 * attributes, file handles and their open modes, and the checks that come
 * before a room is called.
 *
 * One volume may be served by several GroveFs at once: `open` makes the
 * first, `attach` another for a second subvolume (a mount daemon serving
 * two mountpoints), and `snapshotView` read-only views of snapshots. They
 * share the store, one commit stream (a commit by any includes the
 * buffered data of all) and the views (fs/shared_volume.ts); the store
 * closes with the last of them that serves a subvolume.
 *
 * Every operation validates first and mutates second. Validation throws
 * freely (ENOENT, EEXIST, ...) and changes nothing. A mutation is admitted
 * against free space before it starts (CommitPolicy.mutation), so ENOSPC is
 * refused up front; a failure halfway through a mutation poisons the volume,
 * because the in-memory state could no longer be trusted.
 *
 * Invariants (checked by fs/check.ts):
 * - Every inode's nlink equals the directory entries naming it, plus for a
 *   directory its own "." and each subdirectory's "..".
 * - A directory's parent field names the one directory that holds it.
 * - An inode with nlink 0 exists only while open, and is listed as an orphan
 *   so that a crash cannot leak it: the next read-write open frees it.
 * - Inode records are written through: the record always holds the current
 *   root of the inode's own map. Only file data is buffered (FileData).
 */
import { constants as C } from "node:fs";
import {
  BlockDevice,
  GroveError,
  Store,
  type Tree,
  assert,
  blockSizeBytes,
  treeIdFirstDynamic,
} from "../kvstore/index.js";
import type { FreeSpace } from "../alloc/index.js";
import {
  SubvolumeRecord,
  type ReceivedIdentity,
  Volume,
  defaultSubvolumeId,
  defaultSubvolumeName,
  deletionStepNodes,
  formatVolume,
  openVolume,
} from "../snapshot/index.js";
import type {
  Caller,
  SubvolumeWatcher,
  DirEntry,
  DirEntryBytes,
  SetAttr,
  FileSystemOps,
  InodeOps,
  Stat,
  StatFs,
  SubvolumeInfo,
  SubvolumeOps,
  SubvolumeRef,
  TimeSpec,
} from "./api.js";
import {
  dirtyNodeBytesMax,
  lostFoundName,
  nameSizeMaxBytes,
  parentWalkMax,
  rootIno,
  treeIdDefaultSubvolume,
  commitIntervalMaxMs,
  commitIntervalMinMs,
  commitIntervalMs,
  type MetadataProfile,
  metadataProfileDefault,
} from "./constants.js";
import { Inode, inodeFlagHadXattrs } from "./format.js";
import { FileData } from "./file_data.js";
import { Handles, type Handle } from "./handles.js";
import { Xattrs, xattrChunksMax } from "./xattrs.js";
import { Compression } from "./format.js";
import type { StoredExtent } from "./compression.js";
import { fsEdges } from "./edges.js";
import type { ItemMap } from "./item_map.js";
import { InodeTable } from "./inode_table.js";
import { CommitPolicy } from "./commit_policy.js";
import { SharedVolume } from "./shared_volume.js";
import { Namespace, checkRenameFlags, type Slot } from "./namespace.js";
import { FileOps, withoutSetIdBits, type AccessTimes } from "./file_ops.js";
import { RangeCopy } from "./copy_range.js";
import { resizeVolume, type ResizeRequest, type ResizeResult } from "./resize.js";
import { VolumeScrub } from "./scrub.js";
import type { ScrubPosition } from "../kvstore/index.js";

export { splitPath } from "./namespace.js";

assert(treeIdDefaultSubvolume >= treeIdFirstDynamic, "the subvolume tree id is a dynamic one");

/** Time a pending subvolume deletion may take of each maintenance call (about one a second) while mounted. */
const deletionMsPerTick = 100;
/** With several subvolumes served, the deletion's slice runs at most this often, whichever one's maintenance asks. */
const deletionSlicePeriodNs = 900_000_000n;

const S_IFMT = C.S_IFMT;
const S_IFDIR = C.S_IFDIR;
const S_IFREG = C.S_IFREG;
const S_IFLNK = C.S_IFLNK;
const permissionBits = 0o7777;
const O_ACCMODE = 3;

/** Hidden subvolumes that a receive fills before it publishes them start with this. */
export const receivePartialPrefix = ".receiving.";

export interface SendIdentity {
  uuid: Buffer;
  id: number;
  generation: number;
}

/** A snapshot as a send reads it (GroveFs.sendSource). */
export interface SendSource {
  name: string;
  identity: SendIdentity;
  /** Where it was itself received from, if a receive made it. */
  received: SendIdentity | undefined;
  tree: Tree;
  names: Namespace;
  inodes: InodeTable;
  data: FileData;
  fs: GroveFs;
  nextIno: number;
}

function sameIdentity(a: SendIdentity, b: SendIdentity): boolean {
  return a.uuid.equals(b.uuid) && a.id === b.id && a.generation === b.generation;
}

export interface GroveFsOptions {
  readOnly?: boolean;
  /** Told of every damaged node copy read from its twin, and of its rewrite (duplicate metadata), from the open on. */
  onMetadataRepair?: (note: string) => void;
  /** The subvolume to serve (default: the one mkfs made). A snapshot is always served read-only. */
  subvolume?: string;
  cacheBytes?: number;
  /** Wall clock in ns since the epoch; tests pass their own. */
  clock?: () => bigint;
  /** Nodes one deletion step releases before it records its progress (tests make it small). */
  deletionStepNodes?: number;
  /** How new file data is compressed, overriding the volume's default (mount -o compress=). */
  compression?: CompressionName;
  /** The periodic commit's interval (mount -o commit=), whole milliseconds from 1 s to 1 h; default 5 s. */
  commitIntervalMs?: number;
  /** How reads move atime (mount -o noatime, strictatime, nodiratime); relatime by default. */
  accessTimes?: AccessTimes;
  /**
   * Rescue (mount -o rescue, grovefs restore): read-only, and what cannot be
   * read is skipped where the volume can do without it (an older superblock
   * generation, the allocator's trees, the subvolume table for the default
   * subvolume); unreadable files and directories answer EIO. `rescueNotes`
   * says what was skipped.
   */
  rescue?: boolean;
}

/** How new file data may be compressed: the names mkfs and mount take. */
export const compressionNames = ["lz4", "none"] as const;
export type CompressionName = (typeof compressionNames)[number];

function compressionOf(name: CompressionName): Compression {
  return name === "lz4" ? Compression.Lz4 : Compression.None;
}

function compressionName(compression: number): CompressionName {
  return compression === Compression.Lz4 ? "lz4" : "none";
}

export interface VolumeInfo {
  label: string;
  uuid: string;
  sizeBytes: number;
  usedBytes: number;
  freeBytes: number;
  generation: number;
  trees: number;
  inodes: number;
  orphans: number;
  /** The volume's default compression of new data (mkfs --compress). */
  compression: CompressionName;
  /** What this open compresses new data with (the default, or the mount's override). */
  compressionInUse: CompressionName;
  /** usedBytes as if compressed data were stored uncompressed. */
  logicalUsedBytes: number;
  /** Compressed data extents, each counted once however many files and snapshots share it. */
  compressed: { extents: number; diskBytes: number; logicalBytes: number };
  /** The metadata profile: every tree node written once ("single") or twice ("dup", mkfs --metadata). */
  metadata: MetadataProfile;
  /** Since this open: damaged node copies read from their twin, and those rewritten in place so far. */
  metadataRepairs: { found: number; rewritten: number };
}

const wallClock = (): bigint => BigInt(Math.round((performance.timeOrigin + performance.now()) * 1e6));

export class GroveFs implements FileSystemOps, InodeOps, SubvolumeOps {
  readonly store: Store;
  readonly space: FreeSpace;
  /** Nothing in this subvolume may change: a read-only open, or a snapshot. */
  readonly readOnly: boolean;
  /** The served subvolume's inode tree. */
  readonly subvolumeId: number;
  private readonly volume: Volume;
  private subvolume: SubvolumeRecord;
  /** What every filesystem on this volume shares: the commit stream, the snapshot views, which subvolumes are served. */
  private readonly shared: SharedVolume<GroveFs>;
  /** A read-only view of a snapshot (/.snapshots), made by `snapshotView`. */
  private readonly isView: boolean;
  private readonly inodes: InodeTable;
  private readonly data: FileData;
  private readonly clock: () => bigint;
  private readonly deletionStepNodes: number;
  private readonly handles = new Handles();
  private readonly xattrs: Xattrs;
  private readonly policy: CommitPolicy;
  private readonly names: Namespace;
  private readonly files: FileOps;
  private readonly copies: RangeCopy;

  /** Formats `device` with an empty root directory. */
  static format(
    device: BlockDevice,
    options: { label?: string; clock?: () => bigint; compression?: CompressionName; metadata?: MetadataProfile } = {},
  ): void {
    const now = (options.clock ?? wallClock)();
    const compression = compressionOf(options.compression ?? "none");
    const dupMetadata = (options.metadata ?? metadataProfileDefault) === "dup";
    const { store, defaultTree: inodes } = formatVolume(device, { label: options.label, edges: fsEdges, nowNs: now, compression, dupMetadata });
    assert(inodes.id === treeIdDefaultSubvolume, "mkfs makes the default subvolume");
    InodeTable.format(inodes, now, store.generation);
    store.commit();
    store.close();
  }

  static open(device: BlockDevice, options: GroveFsOptions = {}): GroveFs {
    checkCommitInterval(options.commitIntervalMs);
    const rescue = options.rescue ?? false;
    const volume = openVolume(device, {
      readOnly: options.readOnly || rescue,
      rescue,
      cacheBytes: options.cacheBytes,
      edges: fsEdges,
      ...(options.onMetadataRepair === undefined ? {} : { onRepair: options.onMetadataRepair }),
    });
    try {
      const record = rescue ? rescueRecord(volume, options.subvolume) : recordToServe(volume, options.subvolume);
      return new GroveFs(new SharedVolume(volume, options.clock ?? wallClock), record, { ...options, readOnly: options.readOnly || rescue }, false);
    } catch (error) {
      volume.store.close();
      throw error;
    }
  }

  /**
   * Serves subvolume `name` of a volume already open read-write, writable
   * even when it is a snapshot, for fsck's name repairs (fs/repair.ts), and
   * later ones beside it (`repairing`, on the first): closing the first
   * closes the volume.
   */
  static onVolume(volume: Volume, name: string): GroveFs {
    return new GroveFs(new SharedVolume(volume, wallClock), { ...recordToServe(volume, name), readOnly: false }, {}, false);
  }

  repairing(name: string): GroveFs {
    return new GroveFs(this.shared, { ...recordToServe(this.volume, name), readOnly: false }, { clock: this.clock }, false);
  }

  /**
   * Serves another subvolume of this volume beside this one (a second mount
   * in the same process): the same store, commit stream and views, with its
   * own inode table, file data, handles and commit policy. Options not given
   * are this filesystem's clock and deletion step. EBUSY for a subvolume
   * already served here, EROFS for a writable one on a volume opened read-only.
   */
  attach(options: GroveFsOptions): GroveFs {
    this.policy.checkOpen();
    if (this.isView) throw new GroveError("EINVAL", "EINVAL_view", "a snapshot view cannot serve another subvolume");
    checkCommitInterval(options.commitIntervalMs);
    const record = recordToServe(this.volume, options.subvolume);
    if (this.shared.serves(record.id)) {
      throw new GroveError("EBUSY", "EBUSY_subvolume_served", `subvolume ${JSON.stringify(record.name)} is already being served`);
    }
    if (this.store.readOnly && !(options.readOnly ?? false) && !record.readOnly) {
      throw new GroveError("EROFS", "EROFS_volume", "the volume is open read-only: serve this subvolume read-only too");
    }
    return new GroveFs(this.shared, record, { clock: this.clock, deletionStepNodes: this.deletionStepNodes, ...options }, false);
  }

  private constructor(shared: SharedVolume<GroveFs>, subvolume: SubvolumeRecord, options: GroveFsOptions, isView: boolean) {
    const volume = shared.volume;
    this.shared = shared;
    this.volume = volume;
    this.store = volume.store;
    this.space = volume.space;
    this.subvolume = subvolume;
    this.subvolumeId = subvolume.id;
    this.isView = isView;
    this.readOnly = (options.readOnly ?? false) || subvolume.readOnly || volume.store.readOnly;
    this.clock = options.clock ?? wallClock;
    this.deletionStepNodes = options.deletionStepNodes ?? deletionStepNodes;
    const store = this.store;
    const tree = store.openTree(subvolume.id);
    this.xattrs = new Xattrs(tree);
    const compression = options.compression !== undefined ? compressionOf(options.compression) : (store.compression as Compression);
    this.data = new FileData(store, this.space, () => this.policy.keptFreeBlocks(), compression);
    this.inodes = new InodeTable(store, tree, subvolume.id, this.clock);
    this.inodes.load(rootIno);
    const interval = options.commitIntervalMs ?? commitIntervalMs;
    this.policy = new CommitPolicy(store, this.space, this.inodes, this.data, this.clock, this.readOnly, shared.stream, interval);
    this.names = new Namespace(this.inodes, this.policy, this.data, this.handles, this.xattrs, this.clock);
    this.files = new FileOps(store, this.space, this.names, this.inodes, this.data, this.policy, this.clock, this.readOnly, options.accessTimes);
    this.copies = new RangeCopy(store, this.names, this.inodes, this.data, this.policy, this.clock, this.files);
    if (isView) return;
    try {
      if (!this.readOnly) this.freeOrphans();
    } catch (error) {
      this.policy.close();
      throw error;
    }
    shared.serve(subvolume.id);
  }

  // ---- volume ---------------------------------------------------------------

  /** Opened with `rescue`: what could not be read and was skipped; null otherwise. */
  get rescueNotes(): readonly string[] | null {
    return this.store.rescueNotes;
  }

  /** Closed (unmounted): nothing more may be asked of it. */
  get isClosed(): boolean {
    return this.policy.isClosed;
  }

  /**
   * A scrub pass over the whole volume (fs/scrub.ts), resumed after `from`;
   * the caller steps it. Damaged node copies it finds are rewritten by the
   * next commit, unless `repair` is false (a read-only pass, which only
   * reports them; a read-only volume allows no other).
   */
  scrub(from: ScrubPosition | null = null, repair = true): VolumeScrub {
    this.policy.checkOpen();
    if (repair && this.readOnly) {
      throw new GroveError("EROFS", "EROFS_scrub", "the volume is read-only, so damaged copies could not be rewritten; scrub it with --readonly, or read-write");
    }
    return new VolumeScrub(this.store, this.volume.subvolumes, from, repair);
  }

  info(): VolumeInfo {
    this.policy.checkOpen();
    const usage = this.space.usage();
    const orphans = this.inodes.orphanCount();
    const inodes = this.inodes.recordCount();
    const compressed = this.store.compressedUsage;
    const saved = compressed.logicalBlocks - compressed.diskBlocks;
    // Every filesystem's buffered data on the volume: they share its free space.
    const buffered = this.shared.stream.bufferedBytes;
    return {
      label: this.store.label,
      uuid: this.store.uuid.toString("hex"),
      sizeBytes: usage.totalBlocks * blockSizeBytes,
      usedBytes: (usage.usedBlocks + buffered / blockSizeBytes) * blockSizeBytes,
      freeBytes: Math.max(0, usage.freeBlocks * blockSizeBytes - buffered),
      generation: this.store.committedGeneration,
      trees: this.store.treeIds().length,
      inodes,
      orphans,
      compression: compressionName(this.store.compression),
      compressionInUse: compressionName(this.data.compression),
      logicalUsedBytes: (usage.usedBlocks + buffered / blockSizeBytes + saved) * blockSizeBytes,
      compressed: {
        extents: compressed.extents,
        diskBytes: compressed.diskBlocks * blockSizeBytes,
        logicalBytes: compressed.logicalBlocks * blockSizeBytes,
      },
      metadata: this.store.dupMetadata ? "dup" : "single",
      metadataRepairs: { ...this.store.repairCounters },
    };
  }

  statfs(): StatFs {
    this.policy.checkOpen();
    const usage = this.space.usage();
    const free = Math.max(0, usage.freeBlocks - this.shared.stream.bufferedBytes / blockSizeBytes);
    const ffree = Math.max(0, Math.min(this.inodes.freeInos, free * 4));
    const compressed = this.store.compressedUsage;
    return {
      usedBlocks: usage.totalBlocks - free,
      logicalUsedBlocks: usage.totalBlocks - free + compressed.logicalBlocks - compressed.diskBlocks,
      bsize: blockSizeBytes,
      frsize: blockSizeBytes,
      blocks: usage.totalBlocks,
      bfree: free,
      bavail: free,
      files: ffree + this.inodes.itemCount,
      ffree,
      favail: ffree,
      fsid: this.store.uuid.readUInt32LE(0),
      flag: this.readOnly ? 1 : 0,
      namemax: nameSizeMaxBytes,
    };
  }

  /** Writes out buffered data and commits: everything is durable when this returns. */
  sync(): void {
    this.policy.checkOpen();
    if (this.store.readOnly || this.isView) return;
    this.policy.commit();
  }

  /**
   * Resizes the volume (fs/resize.ts): everything written before is
   * committed first, then the resize is one commit of its own. A shrink over
   * blocks in use is refused (ENOSPC) and changes nothing.
   */
  resize(request: ResizeRequest): ResizeResult {
    this.checkVolumeWritable();
    this.sync();
    return resizeVolume(this.store, request);
  }

  /** Called about once a second: commits when the interval has passed or memory bounds are near. */
  maintenance(): void {
    if (this.policy.isClosed || this.store.readOnly || this.store.isPoisoned || this.isView) return;
    if (this.deletionsRunning() && this.shared.takeDeletionSlice(this.clock(), deletionSlicePeriodNs)) {
      // A slice of each tick: FUSE requests wait while it runs (the volume stays usable).
      const until = performance.now() + deletionMsPerTick;
      try {
        while (performance.now() < until && this.runDeletions(this.deletionStepNodes)) {
          /* one step at a time */
        }
      } catch (error) {
        // Refused for space (nothing changed): the commit below makes what was freed usable; retried next tick.
        if (!(error instanceof GroveError) || error.code !== "ENOSPC" || this.store.isPoisoned) throw error;
        this.sync();
      }
    }
    if (this.policy.commitDue) this.sync();
  }

  /**
   * Commits and closes. The volume stays open while another filesystem
   * serves a subvolume of it (attach); the last one closes the views and the store.
   */
  close(): void {
    if (this.policy.isClosed) return;
    if (this.isView) {
      // A view shares its volume with the filesystems that made it.
      this.policy.close();
      this.handles.clear();
      return;
    }
    try {
      if (!this.store.readOnly && !this.store.isPoisoned) this.sync();
    } finally {
      this.policy.close();
      this.handles.clear();
      this.shared.release(this.subvolumeId);
    }
  }

  // ---- subvolumes ------------------------------------------------------------

  get subvolumeName(): string {
    return this.subvolume.name;
  }

  createSubvolume(name: string, options: { from?: string; readOnly: boolean }): SubvolumeInfo {
    this.checkVolumeWritable();
    const subvolumes = this.volume.subvolumes;
    const source = options.from ?? this.subvolume.name;
    // Refused before anything is written: a bad or taken name, a missing source.
    subvolumes.checkCreate(name, source);
    if (name.startsWith(receivePartialPrefix)) {
      throw new GroveError("EINVAL", "EINVAL_subvolume_name", `names starting with ${JSON.stringify(receivePartialPrefix)} are kept for receive`);
    }
    // Everything written before this call belongs in the snapshot; and a committed source is never modified in place.
    this.sync();
    const record = subvolumes.create(name, source, options.readOnly, this.clock());
    this.policy.commit();
    if (source === this.subvolume.name) this.subvolume = subvolumes.require(source);
    this.shared.changed(name);
    // Built here, not found in a listing: creation stays O(1) in the number of subvolumes.
    return {
      name: record.name,
      id: record.id,
      readOnly: record.readOnly,
      parentId: record.parent,
      parentName: source,
      generation: record.generation,
      createdNs: record.createdNs,
    };
  }

  deleteSubvolume(name: string): void {
    this.checkVolumeWritable();
    const record = this.volume.subvolumes.require(name);
    if (record.id === this.subvolumeId) {
      throw new GroveError("EBUSY", "EBUSY_subvolume_mounted", `subvolume ${JSON.stringify(name)} is the one being served; it cannot be deleted`);
    }
    if (this.shared.serves(record.id)) {
      throw new GroveError("EBUSY", "EBUSY_subvolume_mounted", `subvolume ${JSON.stringify(name)} is being served by another mount of this volume; it cannot be deleted`);
    }
    if (this.shared.isHeld(name)) {
      throw new GroveError("EBUSY", "EBUSY_subvolume_sending", `snapshot ${JSON.stringify(name)} is being sent; it can be deleted once the send ends`);
    }
    if (record.id === defaultSubvolumeId) {
      // As in btrfs: the subvolume a plain mount serves stays (roll back by cloning a snapshot and mounting it with --subvol).
      throw new GroveError("EPERM", "EPERM_default_subvolume", `"${defaultSubvolumeName}" is the default subvolume; it cannot be deleted`);
    }
    // Before its view closes: each mount forgets the snapshot's nodes, so none is read after its blocks start to go.
    this.shared.deleting(name);
    this.shared.dropView(name);
    this.volume.subvolumes.delete(name);
    this.sync();
    this.shared.changed(name);
  }

  watchSubvolumes(watcher: SubvolumeWatcher): () => void {
    this.policy.checkOpen();
    return this.shared.watch(watcher);
  }

  findSubvolume(name: string): SubvolumeRef | undefined {
    this.policy.checkOpen();
    const record = this.volume.subvolumes.get(name);
    if (record === undefined) return undefined;
    return { name: record.name, id: record.id, readOnly: record.readOnly, generation: record.generation, createdNs: record.createdNs };
  }

  listSubvolumes(): SubvolumeInfo[] {
    this.policy.checkOpen();
    // A receive's target stays hidden until it is published (partialReceives lists them).
    const records = this.volume.subvolumes.list().filter((r) => !r.name.startsWith(receivePartialPrefix));
    const names = new Map(records.map((r) => [r.id, r.name]));
    return records.map((r) => ({
      name: r.name,
      id: r.id,
      readOnly: r.readOnly,
      parentId: r.parent,
      parentName: names.get(r.parent) ?? null,
      generation: r.generation,
      createdNs: r.createdNs,
    }));
  }

  // ---- send and receive (fs/send/) ---------------------------------------------

  /**
   * What a send reads a snapshot through: its inode tree and the rooms of a
   * read-only view of it, with the identity a receiver checks.
   * ENOENT for a missing snapshot, EINVAL for a writable subvolume.
   */
  sendSource(name: string): SendSource {
    const view = this.snapshotView(name) as GroveFs;
    const record = view.subvolume;
    return {
      name: record.name,
      identity: { uuid: this.store.uuid, id: record.id, generation: record.generation },
      received: this.volume.subvolumes.receivedIdentity(record.id),
      tree: this.store.openTree(record.id),
      names: view.names,
      inodes: view.inodes,
      data: view.data,
      fs: view,
      nextIno: view.inodes.nextInoToHand,
    };
  }

  /**
   * Keeps snapshots `names` from being deleted (EBUSY) while a send reads
   * them between other requests (a mount daemon's send); the returned
   * function lets them go.
   */
  holdSubvolumes(names: string[]): () => void {
    this.policy.checkOpen();
    const releases = names.map((name) => this.shared.hold(name));
    return () => {
      for (const release of releases) release();
    };
  }

  /** The snapshot whose own or received identity is `identity`, if this volume has one. */
  findByIdentity(identity: ReceivedIdentity): string | undefined {
    this.policy.checkOpen();
    const subvolumes = this.volume.subvolumes;
    for (const record of subvolumes.list()) {
      if (!record.readOnly) continue;
      const own = { uuid: this.store.uuid, id: record.id, generation: record.generation };
      const received = subvolumes.receivedIdentity(record.id);
      if (sameIdentity(own, identity) || (received !== undefined && sameIdentity(received, identity))) return record.name;
    }
    return undefined;
  }

  /**
   * Creates the hidden, writable subvolume a receive fills (`name` starts
   * with receivePartialPrefix): a clone of snapshot `from`, or empty with a
   * root directory. Commits, and returns a filesystem serving it.
   */
  createReceiveTarget(name: string, from: string | undefined): GroveFs {
    this.checkVolumeWritable();
    assert(name.startsWith(receivePartialPrefix), "a receive target is hidden");
    const subvolumes = this.volume.subvolumes;
    this.sync();
    if (from === undefined) {
      const { tree } = subvolumes.createEmpty(name, this.clock());
      this.store.admitted(8, "grow", 0, () => InodeTable.format(tree, this.clock(), this.store.generation));
    } else {
      subvolumes.checkCreate(name, from);
      subvolumes.create(name, from, false, this.clock());
    }
    this.policy.commit();
    return this.attach({ subvolume: name });
  }

  /** Makes the (closed) receive target `partial` the read-only snapshot `name`, in one commit. */
  publishReceived(partial: string, name: string, identity: ReceivedIdentity): void {
    this.checkVolumeWritable();
    if (this.shared.serves(this.volume.subvolumes.require(partial).id)) {
      throw new GroveError("EBUSY", "EBUSY_subvolume_served", "the receive target is still open");
    }
    this.sync();
    this.volume.subvolumes.publish(partial, name, identity);
    this.policy.commit();
    this.shared.changed(name);
  }

  /** Hidden subvolumes that receives left behind (interrupted), by name. */
  partialReceives(): SubvolumeInfo[] {
    this.policy.checkOpen();
    return this.volume.subvolumes
      .list()
      .filter((r) => r.name.startsWith(receivePartialPrefix))
      .map((r) => ({ name: r.name, id: r.id, readOnly: r.readOnly, parentId: r.parent, parentName: null, generation: r.generation, createdNs: r.createdNs }));
  }

  /** Saves a running receive's progress on its hidden subvolume `partial` (committed with what it applied). */
  saveReceiveProgress(partial: string, identity: ReceivedIdentity): void {
    if (!partial.startsWith(receivePartialPrefix)) throw new GroveError("EINVAL", "EINVAL_not_partial", `${JSON.stringify(partial)} is not a partial receive`);
    this.volume.subvolumes.saveReceiving(this.volume.subvolumes.require(partial).id, identity);
  }

  /** What hidden subvolume `partial` is receiving, and how far it got (undefined before its first record). */
  receiveProgress(partial: string): ReceivedIdentity | undefined {
    this.policy.checkOpen();
    const record = this.volume.subvolumes.get(partial);
    return record === undefined ? undefined : this.volume.subvolumes.receivedIdentity(record.id);
  }

  /** Serves the hidden subvolume of an interrupted receive again, to resume it. */
  reopenReceiveTarget(partial: string): GroveFs {
    this.checkVolumeWritable();
    assert(partial.startsWith(receivePartialPrefix), "a receive target is hidden");
    return this.attach({ subvolume: partial });
  }

  /** Deletes an abandoned receive target (its space is freed as any deletion's). */
  abortReceive(partial: string): void {
    if (!partial.startsWith(receivePartialPrefix)) throw new GroveError("EINVAL", "EINVAL_not_partial", `${JSON.stringify(partial)} is not a partial receive`);
    this.deleteSubvolume(partial);
  }

  /**
   * The next inode this filesystem creates gets number `ino` (a receive
   * keeps the sender's inode numbers): EINVAL below the next free one, since
   * a number is never handed out twice.
   */
  reserveIno(ino: number): void {
    this.policy.checkWritable();
    this.inodes.raiseNextIno(ino);
  }

  /** The inode number the next creation takes. */
  get nextIno(): number {
    return this.inodes.nextInoToHand;
  }

  pendingDeletions(): number {
    this.policy.checkOpen();
    return this.volume.subvolumes.deleting().length;
  }

  finishDeletions(): void {
    this.checkVolumeWritable();
    while (this.runDeletions(Number.MAX_SAFE_INTEGER)) {
      /* each step commits */
    }
  }

  snapshotView(name: string): FileSystemOps & InodeOps {
    this.policy.checkOpen();
    if (this.isView) throw new GroveError("EINVAL", "EINVAL_view", "a snapshot view has no views");
    const views = this.shared.views;
    const record = this.volume.subvolumes.get(name);
    const cached = views.get(name);
    if (cached !== undefined && record?.id === cached.subvolumeId) return cached;
    if (cached !== undefined) this.shared.dropView(name);
    if (record === undefined) throw new GroveError("ENOENT", "ENOENT_subvolume", `no snapshot named ${JSON.stringify(name)}`);
    if (!record.readOnly) throw new GroveError("EINVAL", "EINVAL_not_snapshot", `${JSON.stringify(name)} is a writable clone, not a snapshot`);
    const view = new GroveFs(this.shared, record, { readOnly: true, clock: this.clock }, true);
    views.set(name, view);
    return view;
  }

  private deletionsRunning(): boolean {
    return this.volume.subvolumes.deleting(1).length > 0;
  }

  /**
   * Releases about `nodes` nodes of pending deletions, a step at a time,
   * committing when done, when dirty nodes pile up, or after every step for
   * an unbounded run. Returns whether deletions remain.
   */
  runDeletions(nodes: number): boolean {
    this.checkVolumeWritable();
    let spent = 0;
    let more = this.deletionsRunning();
    while (more && spent < nodes) {
      // Blocks an earlier step freed are usable only once committed: on a full volume, commit first.
      this.policy.makeRoom(64);
      more = this.volume.subvolumes.deletionStep(this.deletionStepNodes);
      spent += this.deletionStepNodes;
      // Freed blocks come back only with a commit, and dirty nodes are bounded: commit often.
      if (!more || this.store.dirtyBytes > dirtyNodeBytesMax / 4 || nodes === Number.MAX_SAFE_INTEGER) this.sync();
    }
    return more;
  }

  private checkVolumeWritable(): void {
    this.policy.checkOpen();
    if (this.isView || this.store.readOnly) {
      throw new GroveError("EROFS", "EROFS_volume", "the volume is open read-only");
    }
  }

  // ---- attributes -----------------------------------------------------------

  getattr(path: string): Stat {
    return this.stat(this.names.resolve(path));
  }

  fgetattr(fh: number): Stat {
    return this.stat(this.inodes.load(this.handle(fh).ino));
  }

  /** The attributes of inode `ino`; ENOENT once it is gone (a stale kernel inode). */
  statIno(ino: number): Stat {
    return this.stat(this.names.inodeAt(ino));
  }

  access(path: string, mode: number): void {
    const inode = this.names.resolve(path);
    if ((mode & C.W_OK) !== 0 && this.readOnly) {
      throw new GroveError("EROFS", "EROFS_access", "the filesystem is mounted read-only", { path });
    }
    if ((mode & C.X_OK) !== 0 && (inode.mode & 0o111) === 0 && (inode.mode & S_IFMT) !== S_IFDIR) {
      throw new GroveError("EACCES", "EACCES_exec", "no execute permission", { path });
    }
  }

  chmod(path: string, mode: number): void {
    this.policy.withRoom(16, () => this.applySetattr(this.names.resolve(path), { mode }));
  }

  chown(path: string, uid: number, gid: number): void {
    this.policy.withRoom(16, () => this.applySetattr(this.names.resolve(path), { uid: ownerId(uid), gid: ownerId(gid), killSuidgid: true }));
  }

  utimens(path: string, atime: TimeSpec, mtime: TimeSpec): void {
    this.policy.withRoom(16, () => this.applySetattr(this.names.resolve(path), { atime, mtime }));
  }

  /**
   * Changes what `attr` names (size first, as truncate(2)), in that order;
   * returns the new attributes. A retry after a refusal applies the whole
   * change again, which gives the same result.
   */
  setattr(ino: number, attr: SetAttr): Stat {
    return this.policy.withRoom(16, () => {
      const inode = this.names.inodeAt(ino);
      this.applySetattr(inode, attr);
      return this.stat(inode);
    });
  }

  private applySetattr(inode: Inode, attr: SetAttr): void {
    for (const time of [attr.atime, attr.mtime, attr.ctime, attr.crtime]) if (typeof time === "bigint") checkTime(time);
    if (attr.size !== undefined) {
      const type = inode.mode & S_IFMT;
      if (type === S_IFDIR) throw new GroveError("EISDIR", "EISDIR_truncate", "is a directory");
      if (type !== S_IFREG) throw new GroveError("EINVAL", "EINVAL_truncate", "not a regular file");
      this.files.setSize(inode, attr.size);
    }
    const owner = attr.uid !== undefined || attr.gid !== undefined;
    const times = (attr.atime ?? "omit") !== "omit" || (attr.mtime ?? "omit") !== "omit";
    const kill = ((attr.killSuidgid ?? false) || owner) && (inode.mode & S_IFMT) !== S_IFDIR;
    if (attr.mode === undefined && !owner && !times && attr.ctime === undefined && attr.crtime === undefined && !kill) return;
    this.policy.mutation(1, () => {
      const now = this.clock();
      if (attr.mode !== undefined) inode.mode = (inode.mode & S_IFMT) | (attr.mode & permissionBits);
      if (attr.uid !== undefined) inode.uid = attr.uid;
      if (attr.gid !== undefined) inode.gid = attr.gid;
      // chown(2) and, with the kernel's HANDLE_KILLPRIV_V2, truncate by an unprivileged caller: the server clears set-id bits.
      if (kill && attr.mode === undefined) inode.mode = withoutSetIdBits(inode.mode);
      if (attr.atime !== undefined && attr.atime !== "omit") inode.atimeNs = attr.atime === "now" ? now : attr.atime;
      if (attr.mtime !== undefined && attr.mtime !== "omit") inode.mtimeNs = attr.mtime === "now" ? now : attr.mtime;
      inode.ctimeNs = attr.ctime ?? now;
      if (attr.crtime !== undefined) inode.crtimeNs = attr.crtime;
      this.inodes.save(inode);
    });
  }

  // ---- directories ----------------------------------------------------------

  readdir(path: string): DirEntry[] {
    const dir = this.names.resolveDir(path);
    const out: DirEntry[] = [
      { name: ".", ino: dir.ino, type: S_IFDIR },
      { name: "..", ino: dir.parent, type: S_IFDIR },
    ];
    for (const entry of this.names.entries(dir)) out.push({ name: entry.name.toString("utf8"), ino: entry.ino, type: entry.type });
    this.files.touchAtime(dir);
    return out;
  }

  /**
   * Calls `take` with each entry of directory `ino` after the name `after`
   * (from the start when undefined), in name order, until it returns false.
   * "." and ".." are not entries. The names are views: copy what is kept.
   */
  readdirIno(ino: number, after: Buffer | undefined, take: (entry: DirEntryBytes) => boolean): void {
    const dir = this.names.dirAt(ino);
    for (const entry of this.names.entries(dir, after)) if (!take(entry)) break;
    this.files.touchAtime(dir);
  }

  mkdir(path: string, mode: number, caller: Caller): Stat {
    return this.policy.withRoom(16, () => this.stat(this.names.mkdir(this.names.parentFor(path, "create"), mode, caller)));
  }

  mkdirAt(parent: number, name: Buffer, mode: number, caller: Caller): Stat {
    return this.policy.withRoom(16, () => this.stat(this.names.mkdir(this.names.parentAt(parent, name, "create"), mode, caller)));
  }

  rmdir(path: string): void {
    this.policy.withRoom(16, () => this.names.rmdir(this.names.parentFor(path, "remove-dir")));
  }

  rmdirAt(parent: number, name: Buffer): void {
    this.policy.withRoom(16, () => this.names.rmdir(this.names.parentAt(parent, name, "remove-dir")));
  }

  opendir(path: string): number {
    const dir = this.names.resolveDir(path);
    return this.newHandle({ ino: dir.ino, flags: 0, directory: true });
  }

  opendirIno(ino: number): number {
    this.checkOpenSlots();
    return this.newHandle({ ino: this.names.dirAt(ino).ino, flags: 0, directory: true });
  }

  releasedir(fh: number): void {
    this.closeHandle(fh);
  }

  fsyncdir(fh: number, _dataOnly: boolean): void {
    this.handle(fh);
    this.fsyncAll();
  }

  // ---- names ----------------------------------------------------------------

  unlink(path: string): void {
    // On a full volume a delete still copies a path (more with snapshots): commit first, or after a refusal, when only pending frees would fit it.
    this.policy.withRoom(16, () => this.names.unlink(this.names.parentFor(path, "remove")));
  }

  unlinkAt(parent: number, name: Buffer): void {
    this.policy.withRoom(16, () => this.names.unlink(this.names.parentAt(parent, name, "remove")));
  }

  link(existing: string, newPath: string): Stat {
    return this.policy.withRoom(16, () => {
      const inode = this.names.resolve(existing);
      this.names.checkLinkable(inode, existing);
      this.names.link(inode, this.names.parentFor(newPath, "create"));
      return this.stat(inode);
    });
  }

  /** A new name `name` in directory `parent` for inode `ino`. */
  linkAt(ino: number, parent: number, name: Buffer): Stat {
    return this.policy.withRoom(16, () => {
      const inode = this.names.inodeAt(ino);
      this.names.checkLinkable(inode, undefined);
      this.names.link(inode, this.names.parentAt(parent, name, "create"));
      return this.stat(inode);
    });
  }

  symlink(target: string, path: string, caller: Caller): Stat {
    return this.policy.withRoom(16, () => this.stat(this.names.symlink(Buffer.from(target, "utf8"), () => this.names.parentFor(path, "create"), caller, path)));
  }

  symlinkAt(parent: number, name: Buffer, target: Buffer, caller: Caller): Stat {
    return this.policy.withRoom(16, () => this.stat(this.names.symlink(target, () => this.names.parentAt(parent, name, "create"), caller, undefined)));
  }

  readlink(path: string): string {
    return this.targetOf(this.names.resolve(path), path).toString("utf8");
  }

  readlinkIno(ino: number): Buffer {
    return this.targetOf(this.names.inodeAt(ino), undefined);
  }

  private targetOf(inode: Inode, path: string | undefined): Buffer {
    if ((inode.mode & S_IFMT) !== S_IFLNK) throw new GroveError("EINVAL", "EINVAL_readlink", "not a symlink", { path });
    const out = Buffer.alloc(inode.size);
    const n = this.data.read(inode, this.mapOf(inode), out, inode.size, 0);
    return out.subarray(0, n);
  }

  mknod(path: string, mode: number, rdev: number, caller: Caller): Stat {
    return this.policy.withRoom(16, () => this.stat(this.names.mknod(() => this.names.parentFor(path, "create"), mode, rdev, caller, path)));
  }

  mknodAt(parent: number, name: Buffer, mode: number, rdev: number, caller: Caller): Stat {
    return this.policy.withRoom(16, () => this.stat(this.names.mknod(() => this.names.parentAt(parent, name, "create"), mode, rdev, caller, undefined)));
  }

  rename(from: string, to: string, flags = 0): void {
    checkRenameFlags(flags);
    // Everything is loaded inside: a commit before it, or between tries, writes out buffered inodes.
    this.policy.withRoom(16, () => this.names.rename(this.names.parentFor(from, "rename-source"), this.names.parentFor(to, "rename-target"), flags));
  }

  renameAt(parent: number, name: Buffer, newParent: number, newName: Buffer, flags = 0): void {
    checkRenameFlags(flags);
    this.policy.withRoom(16, () => {
      const src = this.names.parentAt(parent, name, "rename-source");
      this.names.rename(src, this.names.parentAt(newParent, newName, "rename-target"), flags);
    });
  }

  // ---- files ----------------------------------------------------------------

  create(path: string, mode: number, flags: number, caller: Caller): number {
    return this.policy.withRoom(16, () => this.createIn(this.names.parentFor(path, "open-create"), mode, flags, caller).fh);
  }

  /** open(2) with O_CREAT of `name` in directory `parent`: a new file, or the existing one without O_EXCL. */
  createAt(parent: number, name: Buffer, mode: number, flags: number, caller: Caller): { fh: number; stat: Stat } {
    return this.policy.withRoom(16, () => this.createIn(this.names.parentAt(parent, name, "open-create"), mode, flags, caller));
  }

  private createIn(slot: Slot, mode: number, flags: number, caller: Caller): { fh: number; stat: Stat } {
    const { inode, created } = this.names.create(slot, mode, flags, caller);
    const fh = created ? this.newHandle({ ino: inode.ino, flags, directory: false }) : this.openInode(inode, flags & ~C.O_CREAT, slot.path);
    return { fh, stat: this.stat(inode) };
  }

  open(path: string, flags: number): number {
    return this.openInode(this.names.resolve(path), flags, path);
  }

  openIno(ino: number, flags: number): number {
    return this.openInode(this.names.inodeAt(ino), flags, undefined);
  }

  private openInode(inode: Inode, flags: number, path: string | undefined): number {
    const type = inode.mode & S_IFMT;
    const writable = (flags & O_ACCMODE) !== C.O_RDONLY;
    if (type === S_IFDIR && writable) throw new GroveError("EISDIR", "EISDIR_open", "is a directory", { path });
    if (type === S_IFLNK) throw new GroveError("ELOOP", "ELOOP_open", "is a symlink", { path });
    if (writable && this.readOnly) throw new GroveError("EROFS", "EROFS_open", "read-only filesystem", { path });
    this.checkOpenSlots();
    if ((flags & C.O_TRUNC) !== 0 && writable && type === S_IFREG && inode.size > 0) this.files.setSize(inode, 0);
    return this.newHandle({ ino: inode.ino, flags, directory: type === S_IFDIR });
  }

  read(fh: number, buffer: Buffer, length: number, position: number): number {
    const handle = this.handle(fh);
    if ((handle.flags & O_ACCMODE) === C.O_WRONLY) throw new GroveError("EBADF", "EBADF_read", "not open for reading");
    return this.files.read(handle.ino, buffer, length, position);
  }

  /** `killSuidgid`: the kernel asks the server to clear set-id bits (HANDLE_KILLPRIV_V2, an unprivileged writer). */
  write(fh: number, buffer: Buffer, length: number, position: number, killSuidgid = false): number {
    return this.files.write(this.handle(fh), buffer, length, position, killSuidgid);
  }

  truncate(path: string, size: number): void {
    this.policy.withRoom(16, () => {
      const inode = this.names.resolve(path);
      if ((inode.mode & S_IFMT) === S_IFDIR) throw new GroveError("EISDIR", "EISDIR_truncate", "is a directory", { path });
      if ((inode.mode & S_IFMT) !== S_IFREG) throw new GroveError("EINVAL", "EINVAL_truncate", "not a regular file", { path });
      this.files.setSize(inode, size);
    });
  }

  ftruncate(fh: number, size: number): void {
    const handle = this.handle(fh);
    if ((handle.flags & O_ACCMODE) === C.O_RDONLY) throw new GroveError("EBADF", "EBADF_truncate", "not open for writing");
    this.policy.withRoom(16, () => {
      const inode = this.inodes.load(handle.ino);
      if ((inode.mode & S_IFMT) !== S_IFREG) throw new GroveError("EINVAL", "EINVAL_truncate", "not a regular file");
      this.files.setSize(inode, size);
    });
  }

  flush(fh: number): void {
    this.handle(fh);
  }

  fsync(fh: number, _dataOnly: boolean): void {
    this.handle(fh);
    this.fsyncAll();
  }

  /**
   * fsync, fdatasync and fsyncdir: the whole state becomes durable (so a
   * new file's name, both directories of a rename and every other file go
   * with it), through one fsync-log record and one flush when the log can
   * take it (kvstore/fsync_log.ts), else a commit.
   */
  fsyncAll(): void {
    this.policy.checkOpen();
    if (this.store.readOnly || this.isView) return;
    this.policy.sync();
  }

  release(fh: number): void {
    const handle = this.closeHandle(fh);
    if (handle.directory || this.handles.openCount(handle.ino) > 0) return;
    const inode = this.inodes.tryLoad(handle.ino);
    if (inode !== undefined && inode.nlink === 0 && !this.readOnly) {
      // The last close of an unlinked file is a delete: it must not be refused on a full volume.
      this.policy.withRoom(16, () => this.names.freeOrphan(handle.ino));
    } else if (inode !== undefined && !this.readOnly) {
      this.data.precompressTail(inode);
    }
  }

  // ---- ranges: fallocate, lseek, copy_file_range -----------------------------

  /** fallocate(2) on regular file `ino`: the modes fs/ranges.ts names, done whole or refused up front (fs/file_ops.ts). */
  fallocate(ino: number, mode: number, offset: number, length: number): void {
    this.files.fallocate(ino, mode, offset, length);
  }

  /** lseek(2) with SEEK_DATA or SEEK_HOLE on regular file `ino` (fs/file_ops.ts). */
  lseek(ino: number, offset: number, whence: "data" | "hole"): number {
    return this.files.lseek(ino, offset, whence);
  }

  /**
   * copy_file_range(2) from inode `src.ino` of `src.fs` (this filesystem
   * when undefined, or a snapshot view of the same volume) at `srcOffset`
   * into regular file `dstIno` of this one at `dstOffset`, sharing whole
   * blocks where it can (fs/copy_range.ts). Returns the bytes copied.
   * EXDEV for a file of another volume.
   */
  copyFileRange(src: { fs?: GroveFs; ino: number }, srcOffset: number, dstIno: number, dstOffset: number, length: number, shareTail = false): number {
    this.policy.checkOpen();
    const from = src.fs ?? this;
    if (!(from instanceof GroveFs) || from.store !== this.store) {
      throw new GroveError("EXDEV", "EXDEV_copy_file_range", "the source file is on another volume");
    }
    const source = { names: from.names, inodes: from.inodes, data: from.data };
    return this.copies.copy(source, src.ino, srcOffset, dstIno, dstOffset, length, shareTail);
  }

  /**
   * Stores `stored`, an lz4 extent as another volume held it on disk
   * (FileData.readStored, sent by a send), at byte `offset` of regular file
   * `ino` as it was stored: no recompression (fs/copy_range.ts). A damaged
   * one is refused (EINVAL_stored_extent) before anything changes.
   */
  insertStoredExtent(ino: number, offset: number, stored: StoredExtent): void {
    this.policy.checkOpen();
    this.copies.insertStored(ino, offset, stored);
  }

  /**
   * Records another slice (`stored.offset`, `stored.blocks`) of an lz4
   * extent that file `srcIno` holds at byte `srcOffset` (stored there by
   * `insertStoredExtent`) at byte `offset` of file `ino`: the extent stays
   * one, shared. Refused (EINVAL_stored_extent) unless the extent found has
   * `stored`'s unit size and crcs.
   */
  shareStoredExtent(ino: number, offset: number, stored: StoredExtent, srcIno: number, srcOffset: number): void {
    this.policy.checkOpen();
    this.copies.shareStored(ino, offset, stored, srcIno, srcOffset);
  }

  // ---- extended attributes ----------------------------------------------------

  getxattr(path: string, name: string): Buffer {
    const value = this.findXattr(path, name);
    if (value === undefined) throw new GroveError("ENODATA", "ENODATA_xattr", `no attribute ${name}`, { path });
    return value;
  }

  /** An attribute of inode `ino`, or undefined when it has none of that name (the common miss builds no error). */
  findXattrIno(ino: number, name: string): Buffer | undefined {
    return this.xattrOf(this.names.inodeAt(ino), name);
  }

  setxattrIno(ino: number, name: string, value: Buffer, flags: number): void {
    this.policy.withRoom(16, () => this.setxattrOn(this.names.inodeAt(ino), name, value, flags, undefined));
  }

  listxattrIno(ino: number): string[] {
    return this.xattrNames(this.names.inodeAt(ino));
  }

  removexattrIno(ino: number, name: string): void {
    this.removexattrOn(this.names.inodeAt(ino), name, undefined);
  }

  /**
   * getxattr without an error for a missing attribute: the kernel asks for
   * security.capability before every write, so the miss is the hot case.
   */
  findXattr(path: string, name: string): Buffer | undefined {
    return this.xattrOf(this.names.resolve(path), name);
  }

  private xattrOf(inode: Inode, name: string): Buffer | undefined {
    return this.xattrs.find(inode, name);
  }

  setxattr(path: string, name: string, value: Buffer, flags: number): void {
    this.policy.withRoom(16, () => this.setxattrOn(this.names.resolve(path), name, value, flags, path));
  }

  private setxattrOn(inode: Inode, name: string, value: Buffer, flags: number, path: string | undefined): void {
    const change = this.xattrs.checkSet(inode, name, value, flags, path);
    this.policy.mutation(change.chunks * 2 + 1, () => {
      this.xattrs.write(change, value);
      inode.flags |= inodeFlagHadXattrs;
      inode.ctimeNs = this.clock();
      this.inodes.save(inode);
    });
  }

  listxattr(path: string): string[] {
    return this.xattrNames(this.names.resolve(path));
  }

  private xattrNames(inode: Inode): string[] {
    return this.xattrs.names(inode);
  }

  removexattr(path: string, name: string): void {
    this.removexattrOn(this.names.resolve(path), name, path);
  }

  private removexattrOn(inode: Inode, name: string, path: string | undefined): void {
    this.policy.checkWritable();
    const prefix = this.xattrs.checkRemove(inode, name, path);
    this.policy.mutation(
      xattrChunksMax + 1,
      () => {
        this.xattrs.deleteUnder(prefix);
        inode.ctimeNs = this.clock();
        this.inodes.save(inode);
      },
      "shrink",
    );
  }

  // ---- for the checker and tests ------------------------------------------------

  /** Inode number of a path, without following a final symlink. */
  inoOf(path: string): number {
    return this.names.resolve(path).ino;
  }

  /**
   * fsck -y's name repairs (fs/repair.ts), on a writable subvolume: removes
   * the entries that name no inode, then links each inode in `lost` (which
   * no entry names but which is not an orphan) into `/lost+found` as
   * `#INO`, as e2fsck does; the directory is made (0700, root's) when it is
   * missing. Returns one line per change.
   */
  repairNames(dangling: ReadonlyArray<{ dir: number; name: Buffer }>, lost: readonly number[]): string[] {
    const done: string[] = [];
    return this.policy.withRoom(16 * (dangling.length + lost.length + 1), () => {
      for (const { dir, name } of dangling) {
        const inode = this.inodes.tryLoad(dir);
        if (inode !== undefined && this.names.dropDanglingEntry(inode, name)) {
          const where = this.dirPath(dir);
          done.push(`directory ${dir}${where === null ? "" : ` (${JSON.stringify(where)})`}: removed the entry ${JSON.stringify(name.toString("utf8"))}, which named no inode`);
        }
      }
      if (lost.length === 0) return done;
      const into = this.lostFound();
      for (const ino of lost) {
        const inode = this.inodes.tryLoad(ino);
        if (inode === undefined) continue;
        let name = Buffer.from(`#${ino}`);
        for (let n = 1; this.findEntry(into.ino, name) !== undefined; n++) name = Buffer.from(`#${ino}.${n}`);
        this.names.reconnect(inode, into, name);
        done.push(`inode ${ino}: had no name, linked as /${lostFoundName}/${name.toString()}`);
      }
      return done;
    });
  }

  /** The path of directory `ino` through the parent fields, or null where a step cannot be found (fsck's messages). */
  private dirPath(ino: number): string | null {
    const parts: string[] = [];
    for (let cur = ino, depth = 0; cur !== rootIno; depth++) {
      const inode = this.inodes.tryLoad(cur);
      const parent = inode === undefined || depth > parentWalkMax ? undefined : this.inodes.tryLoad(inode.parent);
      if (parent === undefined) return null;
      let name: string | undefined;
      for (const entry of this.names.entries(parent)) {
        if (entry.ino !== cur) continue;
        name = entry.name.toString("utf8");
        break;
      }
      if (name === undefined) return null;
      parts.unshift(name);
      cur = parent.ino;
    }
    return `/${parts.join("/")}`;
  }

  /** `/lost+found`, made if missing; a non-directory of that name is left alone and `lost+found.N` is used. */
  private lostFound(): Inode {
    const root = this.inodes.load(rootIno);
    for (let n = 0; ; n++) {
      const name = Buffer.from(n === 0 ? lostFoundName : `${lostFoundName}.${n}`);
      const entry = this.findEntry(rootIno, name);
      if (entry === undefined) return this.names.mkdir({ dir: root, name }, 0o700, { uid: 0, gid: 0 });
      if ((entry.mode & C.S_IFMT) === C.S_IFDIR) return this.inodes.load(entry.ino);
    }
  }

  /** Whether inode `ino` still exists (an unlinked, open file does). */
  hasInode(ino: number): boolean {
    return this.inodes.tryLoad(ino) !== undefined;
  }

  // ---- names by inode -----------------------------------------------------------

  /** The inode `name` names in directory `parent` (ENOENT if none; "." and ".." too). */
  lookup(parent: number, name: Buffer): Stat {
    const found = this.findEntry(parent, name);
    if (found === undefined) throw new GroveError("ENOENT", "ENOENT_lookup", "no such file or directory");
    return found;
  }

  /** lookup without an error for a missing name: the kernel's negative lookups are a hot path. */
  findEntry(parent: number, name: Buffer): Stat | undefined {
    const inode = this.names.find(parent, name);
    return inode === undefined ? undefined : this.stat(inode);
  }

  // ---- internals ----------------------------------------------------------------

  mapOf(inode: Inode): ItemMap {
    return this.inodes.mapOf(inode);
  }

  private freeOrphans(): void {
    const orphans = this.inodes.orphans();
    if (orphans.length === 0) return;
    for (const ino of orphans) this.names.freeOrphan(ino);
    this.sync();
  }

  private stat(inode: Inode): Stat {
    return {
      ino: inode.ino,
      mode: inode.mode,
      nlink: inode.nlink,
      uid: inode.uid,
      gid: inode.gid,
      rdev: inode.rdev,
      size: inode.size,
      blocks: (inode.blocks + this.data.bufferedBlocksOf(inode.ino)) * (blockSizeBytes / 512),
      blksize: blockSizeBytes,
      atimeNs: inode.atimeNs,
      mtimeNs: inode.mtimeNs,
      ctimeNs: inode.ctimeNs,
      crtimeNs: inode.crtimeNs,
    };
  }

  private checkOpenSlots(): void {
    this.handles.checkRoom();
  }

  private handle(fh: number): Handle {
    this.policy.checkOpen();
    return this.handles.get(fh);
  }

  private newHandle(handle: Handle): number {
    return this.handles.add(handle);
  }

  private closeHandle(fh: number): Handle {
    this.policy.checkOpen();
    return this.handles.remove(fh);
  }
}

function checkCommitInterval(interval: number | undefined): void {
  if (interval !== undefined && (!Number.isSafeInteger(interval) || interval < commitIntervalMinMs || interval > commitIntervalMaxMs)) {
    throw new GroveError("EINVAL", "EINVAL_commit_interval", `the commit interval must be ${commitIntervalMinMs / 1000}–${commitIntervalMaxMs / 1000} s in whole ms`);
  }
}

/** The live subvolume to serve: `name`, or the default one; ENOENT if there is none. */
function recordToServe(volume: Volume, name: string | undefined): SubvolumeRecord {
  const record = volume.subvolumes.get(name ?? defaultSubvolumeName);
  if (record !== undefined) return record;
  throw new GroveError(
    "ENOENT",
    "ENOENT_subvolume",
    name === undefined ? `the default subvolume "${defaultSubvolumeName}" was deleted: name one to serve` : `no subvolume named ${JSON.stringify(name)}`,
  );
}

/**
 * The subvolume a rescue open serves: as `recordToServe`, but an unreadable
 * subvolume table still serves the default subvolume, whose tree id is fixed.
 */
function rescueRecord(volume: Volume, name: string | undefined): SubvolumeRecord {
  try {
    return recordToServe(volume, name);
  } catch (error) {
    if (!(error instanceof GroveError) || error.code !== "EIO" || (name !== undefined && name !== defaultSubvolumeName)) throw error;
    volume.store.rescueNotes?.push(`the subvolume table is unreadable (${error.message}); serving the default subvolume by its fixed id`);
    const record: SubvolumeRecord = {
      id: defaultSubvolumeId,
      parent: 0,
      generation: volume.store.committedGeneration,
      createdNs: 0n,
      lastSnapshotGeneration: 0,
      readOnly: true,
      name: defaultSubvolumeName,
      progress: Buffer.alloc(0),
    };
    return record;
  }
}

/** chown(2)'s "unchanged" is -1 (0xffffffff as an unsigned id). */
function ownerId(id: number): number | undefined {
  return id === -1 || id === 0xffffffff ? undefined : id;
}

function checkTime(ns: bigint): bigint {
  if (ns < -(2n ** 63n) || ns >= 2n ** 63n) throw new GroveError("EINVAL", "EINVAL_time", "time out of range");
  return ns;
}

