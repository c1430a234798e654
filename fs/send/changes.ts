/**
 * What changed between two snapshots of one volume (or everything in one
 * snapshot, for a full send), by inode number: the plan a send streams and
 * `grovefs diff` prints.
 *
 * The inode trees are compared with kvstore's tree diff, so subtrees the
 * two snapshots still share are never read: an inode whose record and
 * xattrs are unchanged is skipped without being looked at. Within a changed
 * directory, entries are compared by name; within a changed file, extent
 * records are compared by key and value (fs/send/sender.ts).
 *
 * An inode exists when it has a record and a name (nlink > 0): an
 * unlinked file a snapshot caught while it was still open is not sent.
 */
import { constants as C } from "node:fs";
import { diffTreesSteps, treeDepthMax } from "../../kvstore/index.js";
import { rootIno } from "../constants.js";
import { decodeDirent, decodeInode, type Inode } from "../format.js";
import type { SendSource } from "../filesystem.js";

export interface NameChange {
  parent: number;
  name: Buffer;
  child: number;
}

export interface Changes {
  /** Inodes in `after` only, ascending. */
  created: number[];
  /** Inodes in `before` only, ascending. */
  deleted: number[];
  /** Inodes in both whose record or xattrs changed, ascending. */
  changed: number[];
  /** Names gone (or now naming another inode), to undo before `added`. */
  removed: NameChange[];
  added: NameChange[];
  /** Inode tree nodes the comparison read. */
  nodesRead: number;
}

function live(inode: Inode | undefined): inode is Inode {
  return inode !== undefined && inode.nlink > 0;
}

function inodeAt(source: SendSource, ino: number): Inode | undefined {
  const inode = source.inodes.tryLoad(ino);
  return live(inode) ? inode : undefined;
}

/** Directory `inode`'s entries, name → child ino. */
function entriesOf(source: SendSource, inode: Inode): Map<string, { name: Buffer; child: number }> {
  const entries = new Map<string, { name: Buffer; child: number }>();
  for (const item of source.inodes.mapOf(inode).range()) {
    entries.set(item.key.toString("latin1"), { name: item.key, child: decodeDirent(inode.ino, item.value).ino });
  }
  return entries;
}

function isDir(inode: Inode): boolean {
  return (inode.mode & C.S_IFMT) === C.S_IFDIR;
}

/** Changes from `before` (undefined: an empty volume, a full send) to `after`. */
export function findChanges(before: SendSource | undefined, after: SendSource): Changes {
  const steps = findChangesSteps(before, after);
  for (;;) {
    const next = steps.next();
    if (next.done === true) return next.value;
  }
}

/** Keys (a full send) or changed items (an incremental one) per step of `findChangesSteps`. */
const itemsPerStep = 256;

/**
 * `findChanges` a step at a time (a mount daemon's send runs it between
 * requests): it yields after each tree node the comparison reads, every
 * few hundred keys of a full send's listing, and every few changed inodes
 * it looks at, and returns the changes.
 */
export function* findChangesSteps(before: SendSource | undefined, after: SendSource): Generator<undefined, Changes> {
  const touched = new Set<number>();
  let nodesRead = 0;
  let items = 0;
  if (before === undefined) {
    for (const [key] of after.tree.range({ from: inodeKeyFirst })) {
      const ino = Number(key.readBigUInt64BE(0));
      if (ino >= rootIno) touched.add(ino);
      if (++items % itemsPerStep === 0) yield undefined;
    }
  } else {
    const diff = diffTreesSteps(before.tree, after.tree);
    for (;;) {
      const next = diff.next();
      if (next.done === true) {
        nodesRead = next.value.nodesRead;
        break;
      }
      if (next.value === null || ++items % itemsPerStep === 0) yield undefined;
      if (next.value === null) continue;
      const { key, before: old, after: now } = next.value;
      const ino = Number(key.readBigUInt64BE(0));
      if (ino < rootIno) continue; // the counters and the orphan list
      // A record (8-byte key) or an xattr chunk of the inode.
      if (key.length === 8 && old !== undefined && now !== undefined) {
        const a = decodeInode(ino, old);
        const b = decodeInode(ino, now);
        // An open, unlinked inode is not sent: nothing to do while it stays so.
        if (a.nlink === 0 && b.nlink === 0) continue;
      }
      touched.add(ino);
    }
  }
  const created: number[] = [];
  const deleted: number[] = [];
  const changed: number[] = [];
  const removed: NameChange[] = [];
  const added: NameChange[] = [];
  let looked = 0;
  for (const ino of [...touched].sort((a, b) => a - b)) {
    if (++looked % 16 === 0) yield undefined;
    const old = before === undefined ? undefined : inodeAt(before, ino);
    const now = inodeAt(after, ino);
    if (old === undefined && now === undefined) continue;
    if (old === undefined) {
      if (ino !== rootIno) created.push(ino);
      changed.push(ino);
    } else if (now === undefined) deleted.push(ino);
    else changed.push(ino);
    // Directory entries: compared by name where the directory is in both.
    const oldEntries = old !== undefined && isDir(old) ? entriesOf(before!, old) : new Map<string, { name: Buffer; child: number }>();
    const newEntries = now !== undefined && isDir(now) ? entriesOf(after, now) : new Map<string, { name: Buffer; child: number }>();
    for (const [key, entry] of oldEntries) {
      if (newEntries.get(key)?.child !== entry.child) removed.push({ parent: ino, name: entry.name, child: entry.child });
    }
    for (const [key, entry] of newEntries) {
      if (oldEntries.get(key)?.child !== entry.child) added.push({ parent: ino, name: entry.name, child: entry.child });
    }
  }
  return { created, deleted, changed, removed, added, nodesRead };
}

const inodeKeyFirst = Buffer.from([0, 0, 0, 0, 0, 0, 0, rootIno]);

/** How deep directory `ino` lies in `source` (root 0), by its parent pointers; bounded. */
export function depthOf(source: SendSource, ino: number): number {
  let depth = 0;
  let at = ino;
  // A directory tree deeper than this many levels cannot come from a valid volume's paths.
  const depthMax = 4096 * treeDepthMax;
  while (at !== rootIno && depth < depthMax) {
    const inode = source.inodes.tryLoad(at);
    if (inode === undefined) break;
    at = inode.parent;
    depth++;
  }
  return depth;
}
