/**
 * The inode table: one subvolume's inode records in its inode tree, keyed
 * by inode number, with the two kinds of record kept beside them
 * (fs/format.ts defines the keys): the counters record, which holds the next
 * free inode number, and the orphan list. This room loads, saves, allocates
 * and deletes records; admission of the mutations that change them is the
 * commit policy's, and what an inode owns (its map, data and xattrs) is
 * freed by the namespace before the record goes.
 *
 * Invariants:
 * - An inode number is handed out once: `nextIno` only grows, and the
 *   counters record holds it at every commit (`countersDirty` until then).
 * - An orphan key names an inode with nlink 0 that was still open when its
 *   last name went, so that a crash cannot leak it; the next read-write open
 *   frees it. A key on an inode that has names again is stale and dropped.
 * - Records are written through: a record always holds the current root of
 *   its inode's own map (`mapOf`), so the map is saved with the record.
 */
import { constants as C } from "node:fs";
import { GroveError, assert, featureWideInodes, type Store, type Tree } from "../kvstore/index.js";
import type { Caller } from "./api.js";
import { firstFreeIno, inoMax, inoWideFirst, rootIno } from "./constants.js";
import {
  Inode,
  PayloadKind,
  countersKey,
  decodeCounters,
  decodeInode,
  encodeCounters,
  encodeInode,
  inodeKey,
  orphanIno,
  orphanKey,
  orphanPrefix,
} from "./format.js";
import { ItemMap, mapOwner } from "./item_map.js";

const S_ISGID = 0o2000;

export class InodeTable {
  private nextIno: number;
  private dirtyCounters = false;

  /** The table of subvolume `subvolumeId`, whose inode tree is `tree`; EIO when the counters record is missing. */
  constructor(
    private readonly store: Store,
    private readonly tree: Tree,
    private readonly subvolumeId: number,
    private readonly clock: () => bigint,
  ) {
    const counters = tree.get(countersKey);
    if (counters === undefined) throw new GroveError("EIO", "EIO_counters", "the inode counter record is missing");
    this.nextIno = decodeCounters(counters);
  }

  /** The table mkfs writes into an empty inode tree: the root directory and the counters. */
  static format(tree: Tree, now: bigint, generation: number): void {
    const root = newInode(rootIno, C.S_IFDIR | 0o755, { uid: 0, gid: 0 }, now, generation);
    root.nlink = 2;
    root.parent = rootIno;
    tree.put(inodeKey(rootIno), encodeInode(root));
    tree.put(countersKey, encodeCounters(firstFreeIno));
  }

  /**
   * After fsck's salvage of a damaged inode tree: an empty root directory
   * when its record was lost (what it named goes to /lost+found), and the
   * inode counter above every inode left when it was lost or is too low.
   * Returns a line for each change.
   */
  static restoreBasics(tree: Tree, now: bigint, generation: number): string[] {
    const done: string[] = [];
    if (tree.get(inodeKey(rootIno)) === undefined) {
      const root = newInode(rootIno, C.S_IFDIR | 0o755, { uid: 0, gid: 0 }, now, generation);
      root.nlink = 2;
      root.parent = rootIno;
      tree.put(inodeKey(rootIno), encodeInode(root));
      done.push("the root directory's record was lost: made an empty one (its entries' inodes go to /lost+found)");
    }
    let highest = rootIno;
    // Keys start with their inode's number (records, then its xattr chunks): the last key names the highest inode.
    for (const [key] of tree.range({ reverse: true })) {
      if (key.length >= 8) highest = Math.max(highest, Number(key.readBigUInt64BE(0)));
      break;
    }
    const counter = tree.get(countersKey);
    let next: number | null = null;
    try {
      next = counter === undefined ? null : decodeCounters(counter);
    } catch {
      next = null;
    }
    const wanted = Math.max(firstFreeIno, highest + 1);
    if (next === null || next < wanted) {
      tree.put(countersKey, encodeCounters(wanted));
      done.push(`the inode counter was ${next === null ? "lost" : `${next}, not above every inode`}: set to ${wanted}`);
    }
    return done;
  }

  /** Inode `ino`, which something references: EIO when it is missing. */
  load(ino: number): Inode {
    const inode = this.tryLoad(ino);
    if (inode === undefined) throw new GroveError("EIO", "EIO_dangling", `inode ${ino} is referenced but missing`);
    return inode;
  }

  tryLoad(ino: number): Inode | undefined {
    const value = this.tree.get(inodeKey(ino));
    // Tree.get returns a copy: the record's payload can stay a view into it.
    return value === undefined ? undefined : decodeInode(ino, value, true);
  }

  save(inode: Inode): void {
    this.tree.put(inodeKey(inode.ino), encodeInode(inode));
  }

  /** The inode's own map (a directory's entries, a file's extents); save the record after changing it. */
  mapOf(inode: Inode): ItemMap {
    const key = inodeKey(inode.ino);
    return new ItemMap(this.store, inode, mapOwner(this.subvolumeId, inode.ino), () => this.tree.touch(key));
  }

  /** Whether an inode number is left to hand out. */
  get hasFreeIno(): boolean {
    return this.nextIno <= inoMax;
  }

  /** Inode numbers left to hand out. */
  get freeInos(): number {
    return inoMax - this.nextIno;
  }

  /** A new inode in directory `dir`, not yet saved (it inherits the group of a setgid directory). */
  create(dir: Inode, mode: number, caller: Caller): Inode {
    assert(this.hasFreeIno, "inode numbers are checked before a mutation");
    const inode = newInode(this.nextIno++, mode, caller, this.clock(), this.store.generation);
    this.dirtyCounters = true;
    this.noteWide();
    if ((dir.mode & S_ISGID) !== 0) inode.gid = dir.gid;
    return inode;
  }

  /** The number the next `create` hands out. */
  get nextInoToHand(): number {
    return this.nextIno;
  }

  /** Makes the next `create` hand out `ino` (a receive keeps the sender's numbers); numbers never go back. */
  raiseNextIno(ino: number): void {
    if (!Number.isSafeInteger(ino) || ino < this.nextIno || ino > inoMax) {
      throw new GroveError("EINVAL", "EINVAL_ino_reserve", `inode number ${ino} cannot be handed out (next free ${this.nextIno})`);
    }
    if (ino === this.nextIno) return;
    this.nextIno = ino;
    this.dirtyCounters = true;
    this.noteWide();
  }

  /** Numbers from 2^32 on may be handed out: their trees' owners are wide, which older code must not read. */
  private noteWide(): void {
    if (this.nextIno > inoWideFirst && !this.store.hasFeature(featureWideInodes)) this.store.enableFeature(featureWideInodes);
  }

  /** Inode numbers were handed out since the counters record was last saved. */
  get countersDirty(): boolean {
    return this.dirtyCounters;
  }

  saveCounters(): void {
    this.tree.put(countersKey, encodeCounters(this.nextIno));
    this.dirtyCounters = false;
  }

  /** Deletes inode `ino`'s record, and its orphan key when it was listed as one. */
  delete(ino: number, orphan: boolean): void {
    this.tree.delete(inodeKey(ino));
    if (orphan) this.removeOrphan(ino);
  }

  addOrphan(ino: number): void {
    this.tree.put(orphanKey(ino), Buffer.alloc(0));
  }

  removeOrphan(ino: number): void {
    this.tree.delete(orphanKey(ino));
  }

  /** The inodes the orphan list names. */
  orphans(): number[] {
    const orphans: number[] = [];
    for (const key of this.orphanKeys()) {
      const ino = orphanIno(key);
      if (ino !== undefined) orphans.push(ino);
    }
    return orphans;
  }

  /** Keys in the orphan list, well-formed or not. */
  orphanCount(): number {
    let count = 0;
    for (const _ of this.orphanKeys()) count++;
    return count;
  }

  /** Inode records, the root's included (a walk of the whole tree). */
  recordCount(): number {
    let count = 0;
    for (const [key] of this.tree.range({ from: inodeKey(1) })) if (key.length === 8) count++;
    return count;
  }

  /** Items in the inode tree: records, xattr chunks and the rest. */
  get itemCount(): number {
    return this.tree.count;
  }

  /** The inode tree's height above its leaves (a bound on what one update copies). */
  get level(): number {
    return this.tree.level;
  }

  private *orphanKeys(): Iterable<Buffer> {
    for (const [key] of this.tree.range({ from: orphanPrefix, to: inodeKey(1) })) yield key;
  }
}

function newInode(ino: number, mode: number, caller: Caller, now: bigint, generation: number): Inode {
  return {
    ino,
    mode,
    uid: caller.uid,
    gid: caller.gid,
    nlink: 1,
    size: 0,
    atimeNs: now,
    mtimeNs: now,
    ctimeNs: now,
    crtimeNs: now,
    flags: 0,
    rdev: 0,
    generation,
    blocks: 0,
    parent: 0,
    kind: PayloadKind.None,
    payload: Buffer.alloc(0),
    treeRoot: 0,
    treeLevel: 0,
    treeCount: 0,
  };
}
