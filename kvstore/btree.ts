/**
 * The copy-on-write B+-tree: byte-string keys in memcmp order.
 *
 * Invariants:
 * - Every leaf is at level 0 and every path from the root has the same length,
 *   bounded by `treeDepthMax`.
 * - In an internal node, child i holds exactly the keys k with
 *   key[i] <= k < key[i+1]; key[0] is empty (minus infinity).
 * - A committed node is never modified. A mutation first makes its whole path
 *   writable (`NodeStore.shadow`), top-down; a node already shadowed in this
 *   transaction is modified in place, so a node is copied at most once per
 *   transaction.
 * - Only the root may be empty or underfull after a delete; a non-root node
 *   that falls below `nodeUnderflowBytes` is merged with, or refilled from, a
 *   sibling. A tree emptied by deletes is a single empty leaf. (One exception:
 *   a sibling that is an older bare-pointer node too full to widen is left
 *   alone, and the underflow with it, until that sibling is migrated.)
 * - Every internal node written has checked pointers (node.ts). An older
 *   image's bare-pointer nodes are widened before a mutation changes them:
 *   `migratePath` widens the path top-down, splitting a node whose widened
 *   items no longer fit, so a mutation only ever changes checked nodes.
 */
import { keySizeMaxBytes, treeDepthMax, valueSizeMaxBytes } from "./constants.js";
import { GroveError, assert } from "./errors.js";
import type { ReservePurpose } from "./interfaces.js";
import { Item, Node, childPointer, emptyKey, itemSize, nodePayloadBytes, nodeUnderflowBytes } from "./node.js";

/** What a tree needs from the store: nodes by LBA, new nodes, and copy-on-write. */
export interface NodeStore {
  /** The node at `lba`; read from the device, it must be of `generation` with `crc` when `generation` is not 0. */
  readNode(lba: number, level: number, owner: number, generation?: number, crc?: number, mirror?: number): Node;
  /** Child i of `parent`, checked against parent's pointer when it is read from the device. */
  readChild(parent: Node, i: number, owner: number): Node;
  newNode(level: number, owner: number): Node;
  /** The node itself if already writable in this transaction, else a writable copy. */
  shadow(node: Node, treeId: number): Node;
  freeNode(node: Node): void;
  /** Checks the volume is healthy and reserves blocks before a mutation touches anything. */
  beginMutation(blocks: number, purpose: ReservePurpose, freedRanges?: number): void;
  /** A mutation failed halfway: the in-memory state can no longer be trusted. */
  poison(cause: unknown): never;
}

export interface TreeMeta {
  rootLba: number;
  level: number;
  count: number;
  /** The root's generation and crc, when recorded (a root-tree entry); 0 or absent: unchecked. */
  rootGeneration?: number;
  rootCrc?: number;
  /** The root's second copy (duplicate metadata); 0 or absent: none. */
  rootMirror?: number;
}

interface PathStep {
  node: Node;
  /** The child followed (internal) or the item position (leaf). */
  index: number;
}

export class Tree {
  readonly id: number;
  rootLba: number;
  /**
   * What the root's record expects of it (0: unchecked). A root written in
   * this transaction is 0 until the commit seals it and fills this in (for
   * trees recorded in the root tree; a detached tree's record has no check).
   */
  rootGeneration: number;
  rootCrc: number;
  /** The root's second copy (0: none), kept current by every change of the root. */
  rootMirror: number;
  level: number;
  count: number;
  /** Root pointer or count changed since they were last recorded in the root tree. */
  metaDirty = false;
  /** Bumped by every mutation, so cursors know to re-seek. */
  modCount = 0;
  /** Set once the tree is dropped (or its creation aborted): the handle must not be used again. */
  dropped = false;
  private readonly store: NodeStore;

  constructor(store: NodeStore, id: number, meta: TreeMeta) {
    this.store = store;
    this.id = id;
    this.rootLba = meta.rootLba;
    this.rootGeneration = meta.rootGeneration ?? 0;
    this.rootCrc = meta.rootCrc ?? 0;
    this.rootMirror = meta.rootMirror ?? 0;
    this.level = meta.level;
    this.count = meta.count;
  }

  meta(): TreeMeta {
    return {
      rootLba: this.rootLba,
      level: this.level,
      count: this.count,
      rootGeneration: this.rootGeneration,
      rootCrc: this.rootCrc,
      rootMirror: this.rootMirror,
    };
  }

  /** The root is now the node at `lba` of `generation` with `crc` (generation 0: not sealed yet, or unchecked), with its second copy at `mirror`. */
  setRoot(lba: number, generation: number, crc: number, mirror: number): void {
    this.rootLba = lba;
    this.rootGeneration = generation;
    this.rootCrc = crc;
    this.rootMirror = mirror;
    this.metaDirty = true;
  }

  root(): Node {
    if (this.dropped) throw new GroveError("ENOENT", "ENOENT_tree_dropped", `tree ${this.id} was dropped`);
    return this.store.readNode(this.rootLba, this.level, this.id, this.rootGeneration, this.rootCrc, this.rootMirror);
  }

  child(node: Node, i: number): Node {
    return this.store.readChild(node, i, this.id);
  }

  /** The leaf that would hold `key`. */
  private findLeaf(key: Uint8Array): Node {
    let node = this.root();
    while (node.level > 0) node = this.child(node, node.childIndex(key));
    return node;
  }

  /** A copy of the value stored under `key`. */
  get(key: Uint8Array): Buffer | undefined {
    const leaf = this.findLeaf(key);
    const i = leaf.lowerBound(key);
    if (i >= leaf.count || leaf.compareAt(i, key) !== 0) return undefined;
    return leaf.copyValue(i);
  }

  has(key: Uint8Array): boolean {
    const leaf = this.findLeaf(key);
    const i = leaf.lowerBound(key);
    return i < leaf.count && leaf.compareAt(i, key) === 0;
  }

  /** Inserts or replaces. Returns true if the key is new. */
  put(key: Uint8Array, value: Uint8Array): boolean {
    checkItem(key, value);
    let path = this.readPath(key);
    this.store.beginMutation(this.worstCaseBlocks(path), "grow");
    try {
      path = this.migratePath(key, path);
      this.makePathWritable(path);
      const leaf = path[path.length - 1]!.node;
      const i = leaf.lowerBound(key);
      this.modCount++;
      if (i < leaf.count && leaf.compareAt(i, key) === 0) {
        if (!leaf.replaceValueAt(i, value)) {
          leaf.removeAt(i);
          this.insert(path, path.length - 1, i, key, value);
        }
        return false;
      }
      this.insert(path, path.length - 1, i, key, value);
      this.count++;
      this.metaDirty = true;
      return true;
    } catch (error) {
      this.store.poison(error);
    }
  }

  /** Removes `key`. Returns true if it was present. */
  delete(key: Uint8Array): boolean {
    let path = this.readPath(key);
    const found = path[path.length - 1]!.node;
    const i = found.lowerBound(key);
    if (i >= found.count || found.compareAt(i, key) !== 0) return false;
    this.store.beginMutation(this.worstCaseBlocks(path), "shrink");
    try {
      path = this.migratePath(key, path);
      this.makePathWritable(path);
      const leaf = path[path.length - 1]!.node;
      this.modCount++;
      leaf.removeAt(i);
      this.count--;
      this.metaDirty = true;
      this.rebalance(path);
      this.collapseRoot();
      return true;
    } catch (error) {
      this.store.poison(error);
    }
  }

  /**
   * Makes the path to `key` writable in this transaction without changing
   * anything: for a record whose edges are about to change (the tree held in
   * it, its extents), whose node must be copied, and pass its references on,
   * before what it points to is (Rodeh: parents before children).
   */
  touch(key: Uint8Array): void {
    let path = this.readPath(key);
    const before = path.map((step) => step.node);
    this.store.beginMutation(this.worstCaseBlocks(path), "shrink");
    try {
      path = this.migratePath(key, path);
      this.makePathWritable(path);
    } catch (error) {
      this.store.poison(error);
    }
    if (path.some((step, k) => step.node !== before[k])) this.modCount++;
  }

  cursor(): Cursor {
    return new Cursor(this);
  }

  /**
   * Read-only and copy-free: from the last key <= `key` (the first key when
   * none is), forward, until `visit` returns false. The key and value given
   * are views into the node, valid only during the call; the tree must not
   * change during the scan. The free-space trees' window reads use it.
   */
  scanFromLE(key: Uint8Array, visit: (key: Buffer, value: Buffer) => boolean): void {
    const path: PathStep[] = [];
    let node = this.root();
    while (node.level > 0) {
      assert(path.length < treeDepthMax, "descent is bounded by the depth limit");
      const index = node.childIndex(key);
      path.push({ node, index });
      node = this.child(node, index);
    }
    let i = node.lowerBound(key);
    if (i >= node.count || node.compareAt(i, key) !== 0) i--;
    if (i < 0) {
      // Separators may lie below a leaf's first key after deletes: the last key <= `key` can be in the leaf before.
      const before = this.neighbourLeaf(path, false);
      if (before === undefined) i = 0;
      else {
        node = before;
        i = node.count - 1;
      }
    }
    for (;;) {
      for (; i < node.count; i++) if (!visit(node.keyAt(i), node.valueAt(i))) return;
      const after = this.neighbourLeaf(path, true);
      if (after === undefined) return;
      node = after;
      i = 0;
    }
  }

  /** The leaf after (or before) the one below `path` (its internal steps), updating `path` to lead to it; undefined at the edge. */
  private neighbourLeaf(path: PathStep[], forward: boolean): Node | undefined {
    let k = path.length - 1;
    for (; k >= 0; k--) {
      const step = path[k]!;
      const index = step.index + (forward ? 1 : -1);
      if (index >= 0 && index < step.node.count) {
        step.index = index;
        break;
      }
    }
    if (k < 0) return undefined;
    path.length = k + 1;
    let node = this.child(path[k]!.node, path[k]!.index);
    while (node.level > 0) {
      const index = forward ? 0 : node.count - 1;
      path.push({ node, index });
      node = this.child(node, index);
    }
    return node;
  }

  /** Iterates [from, to) forward, or (to, from] backward when `reverse`; copies of keys and values. */
  *range(options: { from?: Uint8Array; to?: Uint8Array; reverse?: boolean } = {}): Generator<[Buffer, Buffer]> {
    const cursor = this.cursor();
    let ok: boolean;
    if (options.reverse) ok = options.from ? cursor.seekLE(options.from) : cursor.last();
    else ok = options.from ? cursor.seek(options.from) : cursor.first();
    while (ok) {
      const key = cursor.key();
      if (options.to) {
        const c = Buffer.compare(key, options.to);
        if (options.reverse ? c <= 0 : c >= 0) return;
      }
      yield [key, cursor.value()];
      ok = options.reverse ? cursor.prev() : cursor.next();
    }
  }

  /**
   * Every item that can still be read, in key order, skipping each subtree
   * whose node fails its checks (fsck's salvage of a damaged tree). Each
   * subtree skipped is added to `lost` as the key range it covered (null:
   * unbounded). Keys outside their node's bounds, or not above the last one
   * given, are skipped too: what is given is a valid, ordered item list.
   */
  *salvageItems(lost: Array<{ from: Buffer | null; to: Buffer | null }>): Generator<[Buffer, Buffer]> {
    let last: Buffer | null = null;
    const within = (key: Buffer, from: Buffer | null, to: Buffer | null): boolean =>
      (from === null || Buffer.compare(key, from) >= 0) && (to === null || Buffer.compare(key, to) < 0) && (last === null || Buffer.compare(key, last) > 0);
    const visit = function* (tree: Tree, read: () => Node, from: Buffer | null, to: Buffer | null): Generator<[Buffer, Buffer]> {
      let node: Node;
      try {
        node = read();
      } catch (error) {
        if (!(error instanceof GroveError) || error.code !== "EIO") throw error;
        lost.push({ from, to });
        return;
      }
      if (node.level === 0) {
        for (let i = 0; i < node.count; i++) {
          const key = node.copyKey(i);
          if (!within(key, from, to)) continue;
          last = key;
          yield [key, node.copyValue(i)];
        }
        return;
      }
      for (let i = 0; i < node.count; i++) {
        const lo = i === 0 ? from : node.copyKey(i);
        const hi = i + 1 < node.count ? node.copyKey(i + 1) : to;
        yield* visit(tree, () => tree.child(node, i), lo, hi);
      }
    };
    yield* visit(this, () => this.root(), null, null);
  }

  /**
   * A put shadows one node a level and may split each, plus a new root; a
   * delete may shadow a sibling a level. Widening an older path may split
   * each of its nodes once more, with the same again for the splits above.
   */
  private worstCaseBlocks(path: PathStep[]): number {
    const blocks = 3 * (this.level + 1) + 1;
    return path.some((step) => step.node.level > 0 && !step.node.checked) ? 2 * blocks : blocks;
  }

  /**
   * Widens every bare-pointer node on the path to `key`, top-down, and
   * returns the path as it then is. A node whose widened items do not fit
   * is split, which changes the path above it, so the walk starts again from
   * the root; each round widens one node for good, so it ends.
   */
  private migratePath(key: Uint8Array, path: PathStep[]): PathStep[] {
    for (let round = 0; ; round++) {
      assert(round <= 2 * treeDepthMax, "migrating a path ends");
      const k = path.findIndex((step) => step.node.level > 0 && !step.node.checked);
      if (k < 0) return path;
      for (let j = 0; j < k; j++) this.makeWritable(path, j);
      if (this.widen(path, k)) path = this.readPath(key);
    }
  }

  /** Widens path[k].node (k's ancestors are writable). Returns whether it split. */
  private widen(path: PathStep[], k: number): boolean {
    this.makeWritable(path, k);
    const node = path[k]!.node;
    const items = node.widenedItems();
    node.checked = true;
    const total = items.reduce((sum, item) => sum + itemSize(item), 0);
    if (total <= nodePayloadBytes) {
      node.setItems(items);
      return false;
    }
    this.split(path, k, items);
    return true;
  }

  /** The nodes from the root down to the leaf for `key`, as they are now. */
  private readPath(key: Uint8Array): PathStep[] {
    const path: PathStep[] = [];
    let node = this.root();
    for (;;) {
      assert(path.length < treeDepthMax, "descent is bounded by the depth limit");
      if (node.level === 0) {
        path.push({ node, index: 0 });
        return path;
      }
      const index = node.childIndex(key);
      path.push({ node, index });
      node = this.child(node, index);
    }
  }

  /** Shadows every node on the path, top-down, so each parent can take its child's new LBA. */
  private makePathWritable(path: PathStep[]): void {
    for (let k = 0; k < path.length; k++) this.makeWritable(path, k);
  }

  private makeWritable(path: PathStep[], k: number): void {
    const step = path[k]!;
    const copy = this.store.shadow(step.node, this.id);
    if (copy === step.node) return;
    step.node = copy;
    if (k === 0) {
      this.setRoot(copy.lba, 0, 0, copy.mirror);
    } else {
      const parent = path[k - 1]!;
      parent.node.setChildAt(parent.index, copy.lba, copy.generation);
    }
  }

  /** Inserts into path[k].node at `index`, splitting upward as needed. */
  private insert(path: PathStep[], k: number, index: number, key: Uint8Array, value: Uint8Array): void {
    const node = path[k]!.node;
    if (node.insertAt(index, key, value)) return;
    const items = node.items();
    items.splice(index, 0, { key, value });
    this.split(path, k, items);
  }

  /** Gives `items` (more than path[k].node holds) to it and a new right sibling, and links the sibling in above. */
  private split(path: PathStep[], k: number, items: Item[]): void {
    const node = path[k]!.node;
    assert(node.level === 0 || node.checked, "only a checked node is split");
    const right = this.store.newNode(node.level, this.id);
    const separator = distribute(items, node, right);
    if (k === 0) {
      assert(this.level + 1 < treeDepthMax, "tree depth stays within the bound");
      const root = this.store.newNode(node.level + 1, this.id);
      root.setItems([
        { key: emptyKey, value: childPointer(node.lba, node.generation) },
        { key: separator, value: childPointer(right.lba, right.generation) },
      ]);
      this.setRoot(root.lba, 0, 0, root.mirror);
      this.level = root.level;
      return;
    }
    this.insert(path, k - 1, path[k - 1]!.index + 1, separator, childPointer(right.lba, right.generation));
  }

  /** Fixes underflow from the leaf upward after a delete. */
  private rebalance(path: PathStep[]): void {
    for (let k = path.length - 1; k > 0; k--) {
      const node = path[k]!.node;
      if (node.usedBytes() >= nodeUnderflowBytes) return;
      if (!this.fixUnderflow(path, k)) return;
    }
  }

  /**
   * Merges path[k].node with a sibling, or refills it from one. Returns
   * whether the parent may now underflow (false once the parent split, which
   * leaves no underflow behind).
   */
  private fixUnderflow(path: PathStep[], k: number): boolean {
    const parentStep = path[k - 1]!;
    const parent = parentStep.node;
    if (parent.count < 2) return true;
    const nodeIndex = parentStep.index;
    const leftIndex = nodeIndex + 1 < parent.count ? nodeIndex : nodeIndex - 1;
    const rightIndex = leftIndex + 1;
    if (!this.widenable(parent, leftIndex) || !this.widenable(parent, rightIndex)) return false;
    const left = this.writableChild(parent, leftIndex);
    const right = this.writableChild(parent, rightIndex);
    const separator = Buffer.from(parent.keyAt(rightIndex));
    const items = left.items();
    const rightItems = right.items();
    if (left.level > 0) rightItems[0] = { key: separator, value: rightItems[0]!.value };
    items.push(...rightItems);
    const total = items.reduce((sum, item) => sum + itemSize(item), 0);
    if (total <= nodePayloadBytes) {
      left.setItems(items);
      parent.removeAt(rightIndex);
      this.store.freeNode(right);
      parentStep.index = leftIndex;
      return true;
    }
    const newSeparator = distribute(items, left, right);
    parent.removeAt(rightIndex);
    const before = parent.count;
    this.insert(path, k - 1, rightIndex, newSeparator, childPointer(right.lba, right.generation));
    return path[k - 1]!.node === parent && parent.count === before + 1;
  }

  /** Whether child i is checked, or an older node whose widened items fit one node. */
  private widenable(parent: Node, i: number): boolean {
    const child = this.child(parent, i);
    if (child.level === 0 || child.checked) return true;
    return child.widenedItems().reduce((sum, item) => sum + itemSize(item), 0) <= nodePayloadBytes;
  }

  /** A writable copy of child i, widened if it is an older node (`widenable` said it fits). */
  private writableChild(parent: Node, i: number): Node {
    const child = this.child(parent, i);
    const copy = this.store.shadow(child, this.id);
    if (copy !== child) parent.setChildAt(i, copy.lba, copy.generation);
    if (copy.level > 0 && !copy.checked) {
      const items = copy.widenedItems();
      copy.checked = true;
      copy.setItems(items);
    }
    return copy;
  }

  /** An internal root with a single child hands the root over to that child. */
  private collapseRoot(): void {
    for (;;) {
      const root = this.root();
      if (root.level === 0 || root.count !== 1) return;
      const child = root.childAt(0);
      const generation = root.childGenerationAt(0);
      const crc = root.childCrcAt(0);
      // The child itself knows its second copy (a pointer to a child of this transaction does not yet).
      const mirror = this.child(root, 0).mirror;
      this.store.freeNode(root);
      // A child written in this transaction is not sealed yet: the commit fills its check in.
      this.setRoot(child, generation === root.generation ? 0 : generation, crc, mirror);
      this.level = root.level - 1;
    }
  }
}

/**
 * Splits `items` (in key order) between `left` and `right` at the byte
 * midpoint and returns the separator: the first key of `right`. In an internal
 * node that key moves up and right's first key becomes empty.
 */
function distribute(items: Item[], left: Node, right: Node): Buffer {
  assert(items.length >= 2, "a split needs two items");
  const total = items.reduce((sum, item) => sum + itemSize(item), 0);
  let split = 0;
  let leftBytes = 0;
  while (split < items.length - 1 && leftBytes + itemSize(items[split]!) <= total / 2) {
    leftBytes += itemSize(items[split]!);
    split++;
  }
  if (split === 0) split = 1;
  const separator = Buffer.from(items[split]!.key);
  const rightItems = items.slice(split);
  if (left.level > 0) rightItems[0] = { key: emptyKey, value: rightItems[0]!.value };
  // Copy right's views first: left.setItems replaces the buffer they may alias.
  right.setItems(rightItems);
  left.setItems(items.slice(0, split));
  return separator;
}

function checkItem(key: Uint8Array, value: Uint8Array): void {
  if (key.length > keySizeMaxBytes) {
    throw new GroveError("EINVAL", "EINVAL_key_too_large", `key of ${key.length} bytes exceeds ${keySizeMaxBytes}`);
  }
  if (value.length > valueSizeMaxBytes) {
    throw new GroveError(
      "EINVAL",
      "EINVAL_value_too_large",
      `value of ${value.length} bytes exceeds ${valueSizeMaxBytes}`,
    );
  }
}

/**
 * A position in a tree. It survives mutations of the tree: when the tree has
 * changed since the cursor last moved, the cursor re-seeks from its key.
 */
export class Cursor {
  private readonly tree: Tree;
  private path: PathStep[] = [];
  private modCount = -1;
  private currentKey: Buffer | null = null;

  constructor(tree: Tree) {
    this.tree = tree;
  }

  /** Positioned on a key that still exists. */
  get valid(): boolean {
    return this.revalidate() && !this.phantom;
  }

  /** The current key (the cursor's own copy: it never changes under the caller). */
  key(): Buffer {
    if (this.currentKey === null) throw new GroveError("ENOENT", "ENOENT_cursor_unpositioned", "the cursor is not on a key");
    return this.currentKey;
  }

  /** A copy of the current value. */
  value(): Buffer {
    if (!this.revalidate() || this.phantom) {
      throw new GroveError("ENOENT", "ENOENT_cursor_key", "the cursor's key was deleted; move it first");
    }
    const step = this.path[this.path.length - 1]!;
    return step.node.copyValue(step.index);
  }

  first(): boolean {
    return this.edge(false);
  }

  last(): boolean {
    return this.edge(true);
  }

  /** The first key >= `key`. */
  seek(key: Uint8Array): boolean {
    this.descend(key);
    const leaf = this.path[this.path.length - 1]!;
    leaf.index = leaf.node.lowerBound(key);
    if (leaf.index < leaf.node.count) return this.settle();
    return this.step(true);
  }

  /** The last key <= `key`. */
  seekLE(key: Uint8Array): boolean {
    this.descend(key);
    const leaf = this.path[this.path.length - 1]!;
    const i = leaf.node.lowerBound(key);
    if (i < leaf.node.count && leaf.node.compareAt(i, key) === 0) {
      leaf.index = i;
      return this.settle();
    }
    leaf.index = i;
    return this.step(false);
  }

  next(): boolean {
    if (!this.revalidate()) return false;
    return this.step(true);
  }

  prev(): boolean {
    if (!this.revalidate()) return false;
    return this.step(false);
  }

  /** Re-seeks to the current key if the tree changed. False if the cursor is unpositioned. */
  private revalidate(): boolean {
    if (this.currentKey === null) return false;
    if (this.modCount === this.tree.modCount) return true;
    const key = this.currentKey;
    this.descend(key);
    const leaf = this.path[this.path.length - 1]!;
    leaf.index = leaf.node.lowerBound(key);
    // The key may have been deleted; stand just before its successor so that next() lands on it.
    if (leaf.index >= leaf.node.count || leaf.node.compareAt(leaf.index, key) !== 0) {
      this.phantom = true;
    }
    return true;
  }

  /** Set when the cursor's key was deleted under it: it sits between two keys. */
  private phantom = false;

  private descend(key: Uint8Array): void {
    this.path = [];
    this.phantom = false;
    this.modCount = this.tree.modCount;
    let node = this.tree.root();
    while (node.level > 0) {
      assert(this.path.length < treeDepthMax, "descent is bounded by the depth limit");
      const index = node.childIndex(key);
      this.path.push({ node, index });
      node = this.tree.child(node, index);
    }
    this.path.push({ node, index: 0 });
  }

  private edge(fromEnd: boolean): boolean {
    this.path = [];
    this.phantom = false;
    this.modCount = this.tree.modCount;
    let node = this.tree.root();
    for (;;) {
      assert(this.path.length < treeDepthMax, "descent is bounded by the depth limit");
      const index = fromEnd ? node.count - 1 : 0;
      this.path.push({ node, index });
      if (node.level === 0) break;
      node = this.tree.child(node, index);
    }
    const leaf = this.path[this.path.length - 1]!;
    if (leaf.node.count > 0) return this.settle();
    this.currentKey = null;
    return false;
  }

  /** Moves one item forward or backward across leaves. */
  private step(forward: boolean): boolean {
    const leaf = this.path[this.path.length - 1]!;
    if (this.phantom) {
      this.phantom = false;
      // lowerBound left the index at the successor; forward means "take it".
      if (forward && leaf.index < leaf.node.count) return this.settle();
      if (forward) return this.climb(true);
    }
    const index = leaf.index + (forward ? 1 : -1);
    if (index >= 0 && index < leaf.node.count) {
      leaf.index = index;
      return this.settle();
    }
    return this.climb(forward);
  }

  /** Leaves the current leaf for its neighbour through the nearest ancestor with one. */
  private climb(forward: boolean): boolean {
    let k = this.path.length - 2;
    while (k >= 0) {
      const step = this.path[k]!;
      const index = step.index + (forward ? 1 : -1);
      if (index >= 0 && index < step.node.count) {
        step.index = index;
        break;
      }
      k--;
    }
    if (k < 0) {
      this.currentKey = null;
      return false;
    }
    for (let j = k; j < this.path.length - 1; j++) {
      const step = this.path[j]!;
      const child = this.tree.child(step.node, step.index);
      this.path[j + 1] = { node: child, index: forward ? 0 : child.count - 1 };
    }
    const leaf = this.path[this.path.length - 1]!;
    if (leaf.node.count === 0) return this.climb(forward);
    return this.settle();
  }

  private settle(): boolean {
    const leaf = this.path[this.path.length - 1]!;
    this.currentKey = leaf.node.copyKey(leaf.index);
    return true;
  }
}
