/**
 * The difference between two B+-trees, found by walking both at once
 * (btrfs's btrfs_compare_trees): a subtree whose root is the same block in
 * both is the same subtree, since a committed block is never rewritten, so
 * it is skipped whole without being read. With snapshots sharing their
 * nodes through the refcounts, comparing a snapshot with its parent costs
 * in proportion to the nodes that changed between them, not to the trees.
 *
 * Each side is a frontier in key order: subtrees not yet opened and items
 * not yet compared. Both frontiers always stand at the same point of the key
 * space (everything before it has been compared), so two subtrees at their
 * heads with the same LBA cover the same keys and are dropped together;
 * otherwise the higher subtree is opened (both when they are at one level),
 * until two items meet and are compared by key, then by value.
 *
 * Both trees must stay unchanged during the walk (snapshots, or trees no
 * one writes meanwhile).
 */
import type { Tree } from "./btree.js";
import { compareBytes, type Node } from "./node.js";

/** A key in one tree and not the other, or in both with different values. */
export interface TreeChange {
  key: Buffer;
  /** The value in the first tree (undefined: the key is new in the second). */
  before: Buffer | undefined;
  /** The value in the second tree (undefined: the key was removed). */
  after: Buffer | undefined;
}

type Head = { kind: "node"; lba: number; level: number; open: () => Node } | { kind: "item"; key: Buffer; value: Buffer };

/** The unvisited part of one tree, next element last. */
class Frontier {
  private readonly stack: Head[] = [];
  /** Nodes read, for tests and benchmarks (a diff of near-identical trees reads few). */
  nodesRead = 0;

  constructor(private readonly tree: Tree) {
    if (tree.count === 0) return;
    this.stack.push({ kind: "node", lba: tree.rootLba, level: tree.level, open: () => tree.root() });
  }

  head(): Head | undefined {
    return this.stack[this.stack.length - 1];
  }

  drop(): void {
    this.stack.pop();
  }

  /** Replaces the subtree at the head with its children (or items), in order. */
  open(): void {
    const head = this.stack.pop();
    if (head === undefined || head.kind !== "node") throw new Error("tree diff: only a subtree can be opened");
    const node = head.open();
    this.nodesRead++;
    const tree = this.tree;
    for (let i = node.count - 1; i >= 0; i--) {
      if (node.isLeaf) {
        this.stack.push({ kind: "item", key: node.copyKey(i), value: node.copyValue(i) });
      } else {
        const at = i;
        this.stack.push({ kind: "node", lba: node.childAt(i), level: node.level - 1, open: () => tree.child(node, at) });
      }
    }
  }
}

export interface TreeDiffStats {
  nodesRead: number;
}

/**
 * Calls `visit` for every key whose value differs between `before` and
 * `after`, in key order. Returns how many nodes it read.
 */
export function diffTrees(before: Tree, after: Tree, visit: (change: TreeChange) => void): TreeDiffStats {
  const steps = diffTreesSteps(before, after);
  for (;;) {
    const next = steps.next();
    if (next.done === true) return next.value;
    if (next.value !== null) visit(next.value);
  }
}

/**
 * `diffTrees` a step at a time (a mount daemon's send runs it between
 * requests): yields each change, and null after each node it opens, so the
 * caller can stop after a few nodes read and go on later. Both trees must
 * stay unchanged until it is done.
 */
export function* diffTreesSteps(before: Tree, after: Tree): Generator<TreeChange | null, TreeDiffStats> {
  const a = new Frontier(before);
  const b = new Frontier(after);
  if (before.count > 0 && after.count > 0 && before.rootLba === after.rootLba) return { nodesRead: 0 };
  const read = (): number => a.nodesRead + b.nodesRead;
  let seen = 0;
  for (;;) {
    if (read() !== seen) {
      seen = read();
      yield null;
    }
    const x = a.head();
    const y = b.head();
    if (x === undefined && y === undefined) break;
    if (x === undefined) {
      if (y!.kind === "node") b.open();
      else {
        b.drop();
        yield { key: y!.key, before: undefined, after: y!.value };
      }
      continue;
    }
    if (y === undefined) {
      if (x.kind === "node") a.open();
      else {
        a.drop();
        yield { key: x.key, before: x.value, after: undefined };
      }
      continue;
    }
    if (x.kind === "node" && y.kind === "node") {
      if (x.lba === y.lba && x.level === y.level) {
        a.drop();
        b.drop();
      } else if (x.level > y.level) a.open();
      else if (y.level > x.level) b.open();
      else {
        a.open();
        b.open();
      }
      continue;
    }
    if (x.kind === "node") {
      a.open();
      continue;
    }
    if (y.kind === "node") {
      b.open();
      continue;
    }
    const order = compareBytes(x.key, y.key);
    if (order < 0) {
      a.drop();
      yield { key: x.key, before: x.value, after: undefined };
    } else if (order > 0) {
      b.drop();
      yield { key: y.key, before: undefined, after: y.value };
    } else {
      a.drop();
      b.drop();
      if (!x.value.equals(y.value)) yield { key: x.key, before: x.value, after: y.value };
    }
  }
  return { nodesRead: read() };
}
