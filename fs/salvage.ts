/**
 * fsck -y's salvage of damaged trees: the step before the repair when a
 * node cannot be read or fails its checks (single metadata, or every copy
 * bad). fsck does not give up on the volume: each tree that reaches a
 * damaged node is rebuilt from the items it can still read, as a new
 * committed generation, and what the damaged subtrees held is named.
 *
 * - A subvolume's inode tree (a snapshot's too) gets a new root holding its
 *   readable records: the inodes of a lost subtree are gone, so the entries
 *   naming them are removed by the repair that follows.
 * - A directory's entry map or a file's extent map (a detached tree in its
 *   inode's record) is rebuilt the same way: the lost names' inodes go to
 *   /lost+found, and a file's lost extents read as holes (zeros).
 *
 * The old nodes are not released (a damaged node cannot be read to find
 * what it references): the check that follows finds them unreachable, and
 * the repair rebuilds free space and reference counts from its walk. The
 * The allocator's trees are rebuilt from what the walk did not reach (their
 * items reference nothing, so the walk's reachability is whole without
 * them), the refcount tree from the walk's counts, and the subvolume table
 * from its readable records (a subvolume tree left without one is recorded
 * as `recovered-ID`, read-only). The root tree is not salvaged: a volume
 * with it damaged is reported as before (`mount -o rescue` and
 * `grovefs restore` read it).
 */
import { constants as C } from "node:fs";
import { type BlockDevice, GroveError, type Store, type Tree, firstAllocatableLba, treeIdFirstDynamic, treeIdRoot } from "../kvstore/index.js";
import { type Extent, treeIdFreeByLba, treeIdFreeByLength } from "../alloc/index.js";
import { openVolume, treeIdRefcounts, treeIdSubvolumes } from "../snapshot/index.js";
import type { FsReport } from "./check.js";
import { fsEdges } from "./edges.js";
import { PayloadKind, decodeDirent, decodeInode, decodeItems, encodeInode, inodeTreeMeta, setInodeTree } from "./format.js";
import { rootIno } from "./constants.js";
import { mapOwner } from "./item_map.js";
import { InodeTable } from "./inode_table.js";

type KeyRange = { from: Buffer | null; to: Buffer | null };

export interface SalvageResult {
  /** One line per tree rebuilt: whose it was and what its damaged subtrees covered. */
  fixed: string[];
  /** Why damage was left alone (a tree this step does not rebuild, or a failure that changed nothing). */
  remaining: string[];
}

/**
 * Rebuilds every subvolume inode tree and per-inode map that `report` found
 * damaged; null when it found none. Closes the device. Check again, then
 * repair from that check: the salvage leaves unreachable nodes and wrong
 * counts behind by design.
 */
export function salvageDamagedTrees(device: BlockDevice, report: FsReport): SalvageResult | null {
  const forest = report.space.forest;
  const damaged = forest.damagedRoots;
  if (damaged.size === 0) {
    return null;
  }
  const ids = forest.damagedTrees;
  if (ids.has(treeIdRoot)) {
    device.close();
    return { fixed: [], remaining: ["the root tree holds damaged nodes: not salvaged (mount -o rescue and grovefs restore read the volume)"] };
  }
  const freeDamaged = ids.has(treeIdFreeByLba) || ids.has(treeIdFreeByLength);
  let volume;
  try {
    // Damaged free-space trees cannot be loaded: the allocator starts from what the walk did not reach instead.
    volume = openVolume(device, { edges: fsEdges, freeSpace: freeDamaged ? unreached(forest) : undefined });
  } catch (error) {
    if (!(error instanceof GroveError)) throw error;
    device.close();
    return { fixed: [], remaining: [`the damaged trees cannot be salvaged: the volume does not open (${error.message})`] };
  }
  const { store } = volume;
  const fixed: string[] = [];
  const remaining: string[] = [];
  try {
    if (freeDamaged) {
      volume.space.rebuild(unreached(forest), { forget: true });
      fixed.push("the free-space trees hold damaged nodes: rebuilt from what the walk did not reach");
    }
    if (ids.has(treeIdRefcounts)) {
      // Before any tree changes: copy-on-write asks the counts whether a node is shared.
      volume.refcounts.rebuild(forest.references, forest.extents);
      fixed.push("the refcount tree holds damaged nodes: rebuilt from the walk's counts");
    }
    if (ids.has(treeIdSubvolumes)) fixed.push(...volume.subvolumes.salvage(BigInt(Date.now()) * 1_000_000n));
    const names = new Map(volume.subvolumes.list().map((r) => [r.id, r.name]));
    const label = (id: number): string => (names.has(id) ? `subvolume ${JSON.stringify(names.get(id))}` : `tree ${id}`);
    // A tree being deleted has released the keys below its progress key (their blocks may be reused): it is not read whole.
    const deleting = new Set(volume.subvolumes.deleting().map((r) => r.id));
    for (const id of store.treeIds()) {
      if (id < treeIdFirstDynamic) continue;
      const meta = store.openTree(id).meta();
      if (!damaged.has(meta.rootLba)) continue;
      if (deleting.has(id)) {
        remaining.push(`tree ${id}, a subvolume being deleted, holds damaged nodes: not salvaged`);
        continue;
      }
      const lost: KeyRange[] = [];
      const tree = store.rebuildTree(id, store.openTree(id).salvageItems(lost));
      fixed.push(`${label(id)}: rebuilt its inode tree from the ${tree.meta().count} records it could read; lost ${lost.map(inodeRange).join(", ")}`);
      for (const line of InodeTable.restoreBasics(tree, BigInt(Date.now()) * 1_000_000n, store.generation)) fixed.push(`${label(id)}: ${line}`);
    }
    for (const id of store.treeIds()) {
      if (id < treeIdFirstDynamic || !names.has(id)) continue;
      for (const line of salvageMaps(store, store.openTree(id), damaged)) fixed.push(`${label(id)}: ${line}`);
    }
    store.commit({ force: true });
  } catch (error) {
    store.close();
    if (!(error instanceof GroveError)) throw error;
    return { fixed: [], remaining: [`the salvage failed and changed nothing: ${error.message}`] };
  }
  store.close();
  return { fixed, remaining };
}

/** The blocks the walk did not reach, as extents: free once the damaged trees are gone. */
function unreached(forest: FsReport["space"]["forest"]): Extent[] {
  const free: Extent[] = [];
  forest.reachable.forEachRun(firstAllocatableLba, forest.deviceBlocks, (from, to, set) => {
    if (!set) free.push({ start: from, length: to - from });
  });
  return free;
}

/** Rebuilds each map of `tree`'s inodes whose root is damaged; returns a line for each. */
function salvageMaps(store: Store, tree: Tree, damaged: ReadonlySet<number>): string[] {
  const found: Array<{ key: Buffer; value: Buffer }> = [];
  for (const [key, value] of tree.range()) {
    if (key.length !== 8) continue;
    const ino = Number(key.readBigUInt64BE(0));
    if (ino === 0) continue;
    const inode = decodeInode(ino, value);
    if (inode.kind === PayloadKind.Tree && damaged.has(inode.treeRoot)) found.push({ key, value });
  }
  const rebuilt: Array<{ ino: number; isDir: boolean; items: number; lost: KeyRange[] }> = [];
  for (const { key, value } of found) {
    const ino = Number(key.readBigUInt64BE(0));
    const inode = decodeInode(ino, value);
    const owner = mapOwner(tree.id, ino);
    const old = store.openDetachedTree(owner, inodeTreeMeta(inode));
    const lost: KeyRange[] = [];
    const items = [...old.salvageItems(lost)];
    const isDir = (inode.mode & C.S_IFMT) === C.S_IFDIR;
    if (items.length === 0) {
      inode.kind = PayloadKind.None;
      inode.payload = Buffer.alloc(0);
      inode.treeRoot = 0;
      inode.treeLevel = 0;
      inode.treeCount = 0;
    } else {
      const map = store.createDetachedTree(owner);
      for (const [k, v] of items) map.put(k, v);
      setInodeTree(inode, map.meta());
    }
    tree.put(key, encodeInode(inode));
    rebuilt.push({ ino, isDir, items: items.length, lost });
  }
  const paths = rebuilt.length === 0 ? new Map<number, string>() : pathsOf(store, tree, new Set(rebuilt.map((r) => r.ino)));
  return rebuilt.map(({ ino, isDir, items, lost }) => {
    const path = paths.get(ino);
    const what = `${isDir ? "directory" : "inode"} ${ino}${path === undefined ? "" : ` (${JSON.stringify(path)})`}`;
    return isDir
      ? `${what}: rebuilt its entries from the ${items} it could read; the inodes of the lost ones go to /lost+found`
      : `${what}: rebuilt its extent map from the ${items} extents it could read; ${lost.map(byteRange).join(", ")} now read as zeros`;
  });
}

/**
 * The path of each inode in `wanted` (one of its names), from one pass over
 * the subvolume's directories; an inode whose chain cannot be followed to
 * the root is left out. For messages only: what cannot be read is skipped.
 */
export function pathsOf(store: Store, tree: Tree, wanted: ReadonlySet<number>): Map<number, string> {
  const nameOf = new Map<number, { dir: number; name: string }>();
  for (const [key, value] of tree.range()) {
    if (key.length !== 8) continue;
    const dir = Number(key.readBigUInt64BE(0));
    if (dir === 0) continue;
    try {
      const inode = decodeInode(dir, value);
      if ((inode.mode & C.S_IFMT) !== C.S_IFDIR) continue;
      const entries =
        inode.kind === PayloadKind.Items
          ? decodeItems(dir, inode.payload).map((i): [Buffer, Buffer] => [i.key, i.value])
          : inode.kind === PayloadKind.Tree
            ? store.openDetachedTree(mapOwner(tree.id, dir), inodeTreeMeta(inode)).range()
            : [];
      for (const [name, entry] of entries) {
        const d = decodeDirent(dir, entry);
        if ((wanted.has(d.ino) || d.type === C.S_IFDIR >>> 12) && !nameOf.has(d.ino)) nameOf.set(d.ino, { dir, name: name.toString("utf8") });
      }
    } catch (error) {
      if (!(error instanceof GroveError)) throw error;
    }
  }
  const out = new Map<number, string>();
  for (const ino of wanted) {
    const parts: string[] = [];
    let cur = ino;
    for (let depth = 0; cur !== rootIno && depth <= nameOf.size; depth++) {
      const step = nameOf.get(cur);
      if (step === undefined) break;
      parts.unshift(step.name);
      cur = step.dir;
    }
    if (cur === rootIno) out.set(ino, `/${parts.join("/")}`);
  }
  return out;
}

function keyNumber(key: Buffer | null): number | null {
  return key === null || key.length < 8 ? null : Number(key.readBigUInt64BE(0));
}

/** A lost key range of an inode tree, as inode numbers. */
function inodeRange({ from, to }: KeyRange): string {
  const lo = keyNumber(from) ?? 0;
  const hi = keyNumber(to);
  return hi === null ? `the inodes from ${lo} up` : `the inodes from ${lo} to ${hi}`;
}

/** A lost key range of an extent map (keys are file block numbers), as file bytes. */
function byteRange({ from, to }: KeyRange): string {
  const lo = (keyNumber(from) ?? 0) * 4096;
  const hi = keyNumber(to);
  return hi === null ? `the bytes from ${lo} on` : `bytes ${lo}-${hi * 4096 - 1}`;
}
