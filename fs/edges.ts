/**
 * Which of the filesystem's records hold block pointers: the edges of the
 * forest that sharing, freeing and the checkers follow like child pointers
 * (DESIGN.md). Given to the volume at open (kvstore's EdgeReader).
 *
 * - In a subvolume's inode tree (ids 256 … 2^32): an inode record holding a
 *   spilled map holds that tree's root; the inline items of any inode but a
 *   directory (a file, a long symlink) are extents, each holding its physical extent.
 * - In a per-inode tree (owner `mapOwner(subvolume, ino)`, at or above 2^32): an extent record holds
 *   its physical extent; a directory entry (9 bytes) holds nothing.
 */
import { constants as C } from "node:fs";
import { CorruptionError, type ItemEdges } from "../kvstore/index.js";
import { inoMax } from "./constants.js";
import { PayloadKind, decodeExtent, decodeInode, decodeItems, direntValueBytes, inodeTreeMeta } from "./format.js";
import { isObjectTree, ownerObject } from "../snapshot/index.js";
import { mapOwner } from "./item_map.js";

export function fsEdges(treeId: number, key: Buffer, value: Buffer, edges: ItemEdges): void {
  if (isObjectTree(treeId)) {
    if (value.length === direntValueBytes) return;
    const ino = ownerObject(treeId);
    const extent = decodeExtent(ino, key, value);
    edges.blocks(extent.extentLba, extent.extentBlocks, `inode ${ino} extent at file block ${extent.fileBlock}`, extent.unitBlocks);
    return;
  }
  if (treeId < 256 || key.length !== 8) return;
  const ino = Number(key.readBigUInt64BE(0));
  if (ino === 0) return;
  if (ino > inoMax) throw new CorruptionError("EIO_inode", `inode record ${ino} is numbered past the largest inode number ${inoMax}`);
  const inode = decodeInode(ino, value);
  if (inode.kind === PayloadKind.Tree) {
    edges.tree(mapOwner(treeId, ino), inodeTreeMeta(inode));
  } else if (inode.kind === PayloadKind.Items && (inode.mode & C.S_IFMT) !== C.S_IFDIR) {
    for (const item of decodeItems(ino, inode.payload)) {
      const extent = decodeExtent(ino, item.key, item.value);
      edges.blocks(extent.extentLba, extent.extentBlocks, `inode ${ino} extent at file block ${extent.fileBlock}`, extent.unitBlocks);
    }
  }
}
