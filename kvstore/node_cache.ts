/**
 * The node cache: every node in memory, by LBA.
 *
 * Clean nodes are bounded in bytes and evicted by a clock (second chance)
 * approximation of LRU, which costs one boolean store per hit. Dirty nodes are
 * the running transaction's writes: they are never evicted and leave the dirty
 * set only at commit (they become clean) or abort (they are dropped).
 */
import { blockSizeBytes } from "./constants.js";
import type { Node } from "./node.js";

export class NodeCache {
  private readonly nodes = new Map<number, Node>();
  private readonly dirty = new Set<Node>();
  private readonly cleanNodesMax: number;
  private cleanCount = 0;

  constructor(cleanBytesMax: number) {
    this.cleanNodesMax = Math.max(16, Math.floor(cleanBytesMax / blockSizeBytes));
  }

  get(lba: number): Node | undefined {
    const node = this.nodes.get(lba);
    if (node !== undefined) node.referenced = true;
    return node;
  }

  get dirtyCount(): number {
    return this.dirty.size;
  }

  get cleanBytes(): number {
    return this.cleanCount * blockSizeBytes;
  }

  addClean(node: Node): void {
    this.replace(node);
    this.nodes.set(node.lba, node);
    this.cleanCount++;
    if (this.cleanCount > this.cleanNodesMax) this.evict();
  }

  addDirty(node: Node): void {
    this.replace(node);
    this.nodes.set(node.lba, node);
    this.dirty.add(node);
  }

  /** Forgets a node (its block was freed). */
  remove(node: Node): void {
    if (this.nodes.get(node.lba) !== node) return;
    this.nodes.delete(node.lba);
    if (!this.dirty.delete(node)) this.cleanCount--;
  }

  dirtyNodes(): Node[] {
    return [...this.dirty];
  }

  /** After a commit: every dirty node is now a clean copy of what is on disk. */
  markAllClean(): void {
    this.cleanCount += this.dirty.size;
    this.dirty.clear();
    if (this.cleanCount > this.cleanNodesMax) this.evict();
  }

  /** After an abort: the transaction's nodes never existed. */
  dropDirty(): void {
    for (const node of this.dirty) {
      if (this.nodes.get(node.lba) === node) this.nodes.delete(node.lba);
    }
    this.dirty.clear();
  }

  private replace(node: Node): void {
    const old = this.nodes.get(node.lba);
    if (old !== undefined && old !== node) this.remove(old);
  }

  /** Evicts clean nodes down to 7/8 of the bound, giving referenced nodes a second chance. */
  private evict(): void {
    const target = Math.floor((this.cleanNodesMax * 7) / 8);
    let budget = 2 * this.nodes.size;
    for (const [lba, node] of this.nodes) {
      if (this.cleanCount <= target || budget-- <= 0) break;
      if (this.dirty.has(node)) continue;
      this.nodes.delete(lba);
      if (node.referenced) {
        node.referenced = false;
        this.nodes.set(lba, node);
      } else {
        this.cleanCount--;
      }
    }
  }
}
