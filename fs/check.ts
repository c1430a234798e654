/**
 * The filesystem checker: runs the space checker (which runs the tree
 * checker) and, in the same walk, checks every inode, directory entry and
 * extent. It follows the forest's edges held in records (the roots of
 * directory and extent trees, and data extents), so that free space is
 * checked against everything the filesystem references.
 *
 * Checks: link counts equal the entries naming each inode (plus "." and
 * subdirectories' ".." for a directory); a directory is named exactly once,
 * by its parent; entry types match inode modes; no entry dangles; an inode
 * with no links is an orphan; extents lie inside the file, do not overlap,
 * and add up to the inode's block count; inode numbers lie below the counter.
 * With `verifyData`, every data block is read and its crc32c checked.
 */
import { constants as C } from "node:fs";
import { BlockDevice, ItemEdges, blockSizeBytes, crc32c } from "../kvstore/index.js";
import { SpaceReport, checkSpace } from "../alloc/index.js";
import { rootIno, treeIdDefaultSubvolume } from "./constants.js";
import {
  Extent,
  Inode,
  PayloadKind,
  countersKey,
  decodeCounters,
  decodeDirent,
  decodeExtent,
  decodeInode,
  decodeItems,
  extentCrc,
  orphanIno,
} from "./format.js";
import { mapOwner } from "./item_map.js";

export interface FsReport {
  problems: string[];
  space: SpaceReport;
  inodes: number;
  directories: number;
  dataBlocks: number;
}

interface Seen {
  inode: Inode;
  /** Entries naming this inode. */
  names: number;
  subdirs: number;
  parents: number[];
  extentBlocks: number;
  extentEnd: number;
}

export function checkFilesystem(device: BlockDevice, options: { verifyData?: boolean } = {}): FsReport {
  const walk = new FsWalk(device, options.verifyData ?? false);
  const space = checkSpace(device, (treeId, key, value, edges) => walk.visit(treeId, key, value, edges));
  const problems = [...space.problems, ...walk.problems];
  if (space.forest.trees.length > 0) walk.finish(problems);
  return { problems, space, inodes: walk.seen.size, directories: walk.directories, dataBlocks: walk.dataBlocks };
}

class FsWalk {
  readonly problems: string[] = [];
  readonly seen = new Map<number, Seen>();
  /** Detached tree owner → inode. */
  private readonly owners = new Map<number, number>();
  private readonly orphans = new Set<number>();
  private readonly entries: Array<{ dir: number; name: string; ino: number; type: number }> = [];
  private nextIno = 0;
  directories = 0;
  dataBlocks = 0;

  constructor(
    private readonly device: BlockDevice,
    private readonly verifyData: boolean,
  ) {}

  visit(treeId: number, key: Buffer, value: Buffer, edges: ItemEdges): void {
    try {
      if (treeId === treeIdDefaultSubvolume) this.visitInodeTree(key, value, edges);
      else if (this.owners.has(treeId)) this.visitMapItem(this.owners.get(treeId)!, key, value, edges);
    } catch (error) {
      this.problems.push((error as Error).message);
    }
  }

  private visitInodeTree(key: Buffer, value: Buffer, edges: ItemEdges): void {
    if (key.equals(countersKey)) {
      this.nextIno = decodeCounters(value);
      return;
    }
    const orphan = orphanIno(key);
    if (orphan !== undefined) {
      this.orphans.add(orphan);
      return;
    }
    const ino = Number(key.readBigUInt64BE(0));
    if (key.length !== 8) {
      // An extended attribute chunk: it sorts after its inode's record, which must exist.
      const owner = this.seen.get(ino);
      if (owner === undefined) this.problems.push(`extended attribute of inode ${ino}, which does not exist`);
      else if ((owner.inode.flags & 1) === 0) this.problems.push(`inode ${ino} has extended attributes but not the flag that says so`);
      return;
    }
    const inode = decodeInode(ino, value);
    this.seen.set(ino, { inode, names: 0, subdirs: 0, parents: [], extentBlocks: 0, extentEnd: 0 });
    if ((inode.mode & C.S_IFMT) === C.S_IFDIR) this.directories++;
    if (inode.kind === PayloadKind.Tree) {
      const owner = mapOwner(treeIdDefaultSubvolume, ino);
      this.owners.set(owner, ino);
      edges.tree(owner, { rootLba: inode.treeRoot, level: inode.treeLevel, count: inode.treeCount });
    } else if (inode.kind === PayloadKind.Items) {
      for (const item of decodeItems(ino, inode.payload)) this.visitMapItem(ino, item.key, item.value, edges);
    }
  }

  private visitMapItem(ino: number, key: Buffer, value: Buffer, edges: ItemEdges): void {
    const seen = this.seen.get(ino)!;
    if ((seen.inode.mode & C.S_IFMT) === C.S_IFDIR) {
      const entry = decodeDirent(ino, value);
      this.entries.push({ dir: ino, name: key.toString("utf8"), ino: entry.ino, type: entry.type });
      return;
    }
    const extent = decodeExtent(ino, key, value);
    edges.blocks(extent.lba, extent.diskBlocks, `inode ${ino} extent at file block ${extent.fileBlock}`);
    if (extent.fileBlock < seen.extentEnd) this.problems.push(`inode ${ino}: extent at file block ${extent.fileBlock} overlaps the one before`);
    seen.extentEnd = extent.fileBlock + extent.blocks;
    seen.extentBlocks += extent.diskBlocks;
    this.dataBlocks += extent.diskBlocks;
    if (this.verifyData) this.verifyExtent(ino, extent);
  }

  private verifyExtent(ino: number, extent: Extent): void {
    const data = Buffer.allocUnsafe(extent.diskBlocks * blockSizeBytes);
    try {
      this.device.read(extent.lba, data);
    } catch (error) {
      this.problems.push(`inode ${ino}: reading data blocks ${extent.lba}+${extent.diskBlocks} failed: ${(error as Error).message}`);
      return;
    }
    for (let i = 0; i < extent.diskBlocks; i++) {
      if (crc32c(data.subarray(i * blockSizeBytes, (i + 1) * blockSizeBytes)) !== extentCrc(extent, i)) {
        this.problems.push(`inode ${ino}: data block ${extent.lba + i} fails its checksum`);
      }
    }
  }

  finish(problems: string[]): void {
    for (const entry of this.entries) {
      const target = this.seen.get(entry.ino);
      const where = `directory ${entry.dir}, entry "${entry.name}"`;
      if (target === undefined) {
        problems.push(`${where}: names inode ${entry.ino}, which does not exist`);
        continue;
      }
      target.names++;
      if (entry.type !== target.inode.mode >>> 12) problems.push(`${where}: type ${entry.type} does not match the inode's mode`);
      if ((target.inode.mode & C.S_IFMT) === C.S_IFDIR) {
        target.parents.push(entry.dir);
        const parent = this.seen.get(entry.dir);
        if (parent !== undefined) parent.subdirs++;
      }
    }
    const root = this.seen.get(rootIno);
    if (root === undefined) problems.push("the root directory is missing");
    for (const [ino, seen] of this.seen) this.checkInode(ino, seen, problems);
    for (const ino of this.orphans) {
      const seen = this.seen.get(ino);
      if (seen === undefined) problems.push(`orphan ${ino} names no inode`);
      else if (seen.inode.nlink !== 0) problems.push(`orphan ${ino} still has ${seen.inode.nlink} links`);
    }
  }

  private checkInode(ino: number, seen: Seen, problems: string[]): void {
    const inode = seen.inode;
    const where = `inode ${ino}`;
    if (ino >= this.nextIno && ino !== rootIno) problems.push(`${where}: number is not below the counter ${this.nextIno}`);
    if ((inode.mode & C.S_IFMT) === C.S_IFDIR) {
      const expected = 2 + seen.subdirs;
      if (inode.nlink !== expected) problems.push(`${where}: nlink ${inode.nlink}, but ${expected} links exist`);
      if (ino === rootIno) {
        if (seen.parents.length !== 0 || inode.parent !== rootIno) problems.push(`${where}: the root has a parent`);
      } else if (seen.parents.length !== 1) {
        problems.push(`${where}: directory is named by ${seen.parents.length} entries`);
      } else if (seen.parents[0] !== inode.parent) {
        problems.push(`${where}: parent field ${inode.parent} but it lives in ${seen.parents[0]}`);
      }
      return;
    }
    if (inode.nlink !== seen.names) problems.push(`${where}: nlink ${inode.nlink}, but ${seen.names} entries name it`);
    if (seen.names === 0 && !this.orphans.has(ino)) problems.push(`${where}: has no name and is not an orphan`);
    if (inode.blocks !== seen.extentBlocks) {
      problems.push(`${where}: records ${inode.blocks} data blocks, but its extents hold ${seen.extentBlocks}`);
    }
    if (seen.extentEnd > Math.ceil(inode.size / blockSizeBytes)) {
      problems.push(`${where}: an extent lies past the end of the file (size ${inode.size})`);
    }
  }
}
