/**
 * An inode's own ordered map: a directory's names or a file's extents.
 *
 * A small map lives inline in the inode record (DESIGN.md: a 4 KiB node for
 * a ten-entry directory is waste). When its encoding outgrows the record it
 * spills, once, into a B+-tree whose root the record then holds; a spilled
 * map stays a tree. The caller writes the inode record back after changing
 * the map: the record is always the one place the map's root is found.
 */
import type { Store, Tree } from "../kvstore/index.js";
import { objectTreeOwner } from "../snapshot/index.js";
import { inodeInlineBytesMax } from "./constants.js";
import { Inode, Item, PayloadKind, decodeItems, encodeItems, encodedItemsBytes, inodeTreeMeta, setInodeTree } from "./format.js";

/**
 * Detached trees are owned by (subvolume tree, inode): the owner id in their
 * nodes, one-to-one for every inode number up to inoMax (snapshot/format.ts
 * `objectTreeOwner`; inode numbers from 2^32 on have the wide form, feature bit 7).
 */
export function mapOwner(subvolumeTreeId: number, ino: number): number {
  return objectTreeOwner(subvolumeTreeId, ino);
}

export class ItemMap {
  private treeHandle: Tree | null = null;
  /** The record's node was made writable: it stays so until the commit, which no operation spans. */
  private pinned = false;

  constructor(
    private readonly store: Store,
    private readonly inode: Inode,
    private readonly owner: number,
    /**
     * Makes the node holding the inode's record writable before the map
     * changes: the record holds the map's root and extents, so its node must
     * pass its references on first if it is shared (parents before children).
     */
    private readonly pinRecord: () => void,
  ) {}

  /** Makes the inode record's node writable, once per map (an ItemMap lives for one operation). */
  pin(): void {
    if (this.pinned) return;
    this.pinRecord();
    this.pinned = true;
  }

  get isTree(): boolean {
    return this.inode.kind === PayloadKind.Tree;
  }

  get count(): number {
    if (this.isTree) return this.inode.treeCount;
    return this.inode.kind === PayloadKind.Items ? this.inline().length : 0;
  }

  get(key: Buffer): Buffer | undefined {
    if (this.isTree) return this.tree().get(key);
    const items = this.inline();
    const i = lowerBound(items, key);
    return i < items.length && items[i]!.key.equals(key) ? items[i]!.value : undefined;
  }

  put(key: Buffer, value: Buffer): void {
    this.pin();
    if (this.isTree) {
      this.tree().put(key, value);
      this.syncMeta();
      return;
    }
    const items = this.inline();
    const i = lowerBound(items, key);
    if (i < items.length && items[i]!.key.equals(key)) items[i] = { key, value };
    else items.splice(i, 0, { key, value });
    if (encodedItemsBytes(items) <= inodeInlineBytesMax) {
      this.setInline(items);
      return;
    }
    const tree = this.store.createDetachedTree(this.owner);
    for (const item of items) tree.put(item.key, item.value);
    this.treeHandle = tree;
    this.syncMeta();
  }

  delete(key: Buffer): boolean {
    this.pin();
    if (this.isTree) {
      const deleted = this.tree().delete(key);
      this.syncMeta();
      return deleted;
    }
    const items = this.inline();
    const i = lowerBound(items, key);
    if (i >= items.length || !items[i]!.key.equals(key)) return false;
    items.splice(i, 1);
    this.setInline(items);
    return true;
  }

  /** Items with keys in [from, to), ascending. */
  *range(from?: Buffer, to?: Buffer): Generator<Item> {
    if (this.isTree) {
      for (const [key, value] of this.tree().range({ from, to })) yield { key, value };
      return;
    }
    const items = this.inline();
    for (let i = from === undefined ? 0 : lowerBound(items, from); i < items.length; i++) {
      if (to !== undefined && Buffer.compare(items[i]!.key, to) >= 0) return;
      yield items[i]!;
    }
  }

  /** The item with the greatest key ≤ `key`. */
  floor(key: Buffer): Item | undefined {
    if (this.isTree) {
      const cursor = this.tree().cursor();
      return cursor.seekLE(key) ? { key: cursor.key(), value: cursor.value() } : undefined;
    }
    const items = this.inline();
    let i = lowerBound(items, key);
    if (i < items.length && items[i]!.key.equals(key)) return items[i];
    i--;
    return i >= 0 ? items[i] : undefined;
  }

  /** Block ranges that `clear` will free, extents held by the tree's records included (read-only). */
  treeRanges(): number {
    return this.isTree ? this.store.detachedTreeRanges(this.tree()) : 0;
  }

  /** Releases the tree, if any (and the extents its records hold), and empties the map. */
  clear(): void {
    this.pin();
    if (this.isTree) this.store.freeDetachedTree(this.tree());
    this.treeHandle = null;
    this.inode.kind = PayloadKind.None;
    this.inode.payload = Buffer.alloc(0);
    this.inode.treeRoot = 0;
    this.inode.treeLevel = 0;
    this.inode.treeCount = 0;
  }

  private inline(): Item[] {
    return this.inode.kind === PayloadKind.Items ? decodeItems(this.inode.ino, this.inode.payload) : [];
  }

  private setInline(items: Item[]): void {
    this.inode.kind = items.length === 0 ? PayloadKind.None : PayloadKind.Items;
    this.inode.payload = encodeItems(items);
  }

  private tree(): Tree {
    if (this.treeHandle === null) {
      this.treeHandle = this.store.openDetachedTree(this.owner, inodeTreeMeta(this.inode));
    }
    return this.treeHandle;
  }

  private syncMeta(): void {
    const tree = this.treeHandle!;
    setInodeTree(this.inode, tree.meta());
  }
}

function lowerBound(items: readonly Item[], key: Buffer): number {
  let lo = 0;
  let hi = items.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (Buffer.compare(items[mid]!.key, key) < 0) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
