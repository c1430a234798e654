/**
 * The B+-tree node: exactly one block, in a slotted layout.
 *
 * The in-memory node *is* its on-disk bytes: keys are compared, and items
 * inserted, directly in the block buffer, so writing a node costs a header and
 * a checksum, not a serialisation. A node is validated on every read from the
 * device (`decodeNode`) and again before every write (`sealNode`).
 *
 * Layout (integers little-endian):
 *
 *   offset  size  field
 *   ------  ----  -----------------------------------------------------
 *        0     4  magic "GRVN"
 *        4     4  crc32c of bytes [8, 4096)
 *        8     8  this node's own LBA (catches misdirected writes)
 *       16     8  generation that wrote it
 *       24     8  owner tree id
 *       32     1  level (0 = leaf)
 *       33     1  flags: bit 0, checked child pointers (internal nodes only)
 *       34     2  item count
 *       36     2  heap start: items occupy [heap start, 4096)
 *       38     2  garbage: heap bytes held by removed items
 *       40   2*n  slot array: item offsets, in ascending key order
 *            ...  free space
 *   heap start    items, each: key length u16 | value length u16 | key | value
 *
 * In an internal node every value is a child pointer, and the first key is
 * empty: it stands for minus infinity, so child i holds the keys k with
 * key[i] <= k < key[i+1]. A node with flag bit 0 holds checked pointers, which
 * know what they point to (as ZFS block pointers do); a node without it is an
 * older node whose pointers are bare LBAs, read unchecked:
 *
 *   checked pointer (28 bytes)        bare pointer (8 bytes)
 *   offset  size  field               offset  size  field
 *        0     8  child LBA                0     8  child LBA
 *        8     8  child generation
 *       16     4  child crc32c (its header's crc field)
 *       20     8  second LBA of the child (0 = none; for duplicate metadata)
 *
 * A read from the device checks the child's generation and crc against its
 * pointer, so a lost, stale or misdirected write is an error, never old data
 * served as current. Generation 0 in a checked pointer means "not known yet"
 * (a pointer widened from a bare one): the commit fills it in. Copy-on-write
 * writes children before parents, so when a parent is sealed every child's
 * crc is known: the commit seals bottom-up.
 */
import { allocBlock, readU64LE, recycleBlock, writeU64LE } from "./bytes.js";
import { crc32c } from "./checksum.js";
import { blockSizeBytes, keySizeMaxBytes, treeDepthMax, treeIdFirstDynamic, valueSizeMaxBytes } from "./constants.js";
import { CorruptionError, assert } from "./errors.js";

export const nodeMagic = 0x4e565247; // "GRVN" read little-endian

const NODE_MAGIC = 0;
const NODE_CRC = NODE_MAGIC + 4;
const NODE_LBA = NODE_CRC + 4;
const NODE_GENERATION = NODE_LBA + 8;
const NODE_OWNER = NODE_GENERATION + 8;
const NODE_LEVEL = NODE_OWNER + 8;
const NODE_FLAGS = NODE_LEVEL + 1;
const NODE_COUNT = NODE_FLAGS + 1;
const NODE_HEAP_START = NODE_COUNT + 2;
const NODE_GARBAGE = NODE_HEAP_START + 2;
export const nodeHeaderBytes = NODE_GARBAGE + 2;

const ITEM_KEY_LEN = 0;
const ITEM_VALUE_LEN = ITEM_KEY_LEN + 2;
const itemHeaderBytes = ITEM_VALUE_LEN + 2;
const slotBytes = 2;
const bareChildPointerBytes = 8;

const PTR_LBA = 0;
const PTR_GENERATION = PTR_LBA + 8;
const PTR_CRC = PTR_GENERATION + 8;
const PTR_LBA2 = PTR_CRC + 4;
const checkedChildPointerBytes = PTR_LBA2 + 8;

/** Node flag bit 0: an internal node whose pointers are checked (`checkedChildPointerBytes` each). */
const nodeFlagCheckedPointers = 1;

/** Bytes available for slots and items. */
export const nodePayloadBytes = blockSizeBytes - nodeHeaderBytes;
/** A non-root node using fewer payload bytes than this is merged or refilled. */
export const nodeUnderflowBytes = Math.floor(nodePayloadBytes / 4);
const itemCountMax = Math.floor(nodePayloadBytes / (slotBytes + itemHeaderBytes));

assert(4 * (slotBytes + itemHeaderBytes + keySizeMaxBytes + valueSizeMaxBytes) <= nodePayloadBytes, "four items fit");

const emptyKey = new Uint8Array(0);
/** A retired node's buffer: empty, so a stray read finds nothing rather than another node's bytes. */
const retiredBuffer = Buffer.alloc(0);

/** memcmp order over byte strings. Written in JS: short keys usually differ in their first byte. */
export function compareBytes(a: Uint8Array, b: Uint8Array): number {
  const n = a.length < b.length ? a.length : b.length;
  for (let i = 0; i < n; i++) {
    const d = a[i]! - b[i]!;
    if (d !== 0) return d;
  }
  return a.length - b.length;
}

/** One item as a pair of views, used when items move between nodes. */
export interface Item {
  key: Uint8Array;
  value: Uint8Array;
}

export class Node {
  buf: Buffer;
  lba: number;
  generation: number;
  owner: number;
  level: number;
  count: number;
  heapStart: number;
  garbage: number;
  /** An internal node with checked pointers; a leaf, or an older internal node with bare LBAs, has not. */
  checked: boolean;
  /** Set on access; the cache's clock hand clears it. */
  referenced = true;
  /** Set once the commit has sealed this node of its transaction (a parent's check may then read its crc). */
  sealed = false;
  /**
   * The LBA of this node's second copy (duplicate metadata; 0: none). It is
   * not in the node's bytes (both copies are byte-identical, with `lba` in
   * their header): it lives in whatever points at the node, and is set when
   * the node is allocated or read through such a pointer.
   */
  mirror = 0;

  constructor(buf: Buffer, lba: number, generation: number, owner: number, level: number, checked = level > 0) {
    this.buf = buf;
    this.lba = lba;
    this.generation = generation;
    this.owner = owner;
    this.level = level;
    this.checked = checked;
    this.count = 0;
    this.heapStart = blockSizeBytes;
    this.garbage = 0;
  }

  static empty(lba: number, generation: number, owner: number, level: number): Node {
    return new Node(Buffer.alloc(blockSizeBytes), lba, generation, owner, level);
  }

  /** The node's block was freed: its buffer goes back to the pool and the node must never be read again. */
  retire(): void {
    const buf = this.buf;
    this.buf = retiredBuffer;
    this.count = 0;
    recycleBlock(buf);
  }

  /** A writable copy of this node at a new LBA, for copy-on-write. */
  /** A writable copy at `lba`, owned by `owner` (the tree that copies it: with snapshots, not always the writer). */
  copyTo(lba: number, generation: number, owner = this.owner): Node {
    const buf = allocBlock();
    buf.set(this.buf);
    const node = new Node(buf, lba, generation, owner, this.level, this.checked);
    node.count = this.count;
    node.heapStart = this.heapStart;
    node.garbage = this.garbage;
    return node;
  }

  get isLeaf(): boolean {
    return this.level === 0;
  }

  private slot(i: number): number {
    const p = nodeHeaderBytes + i * slotBytes;
    return this.buf[p]! | (this.buf[p + 1]! << 8);
  }

  /** A view of key i; valid until this node is next modified. */
  keyAt(i: number): Buffer {
    const off = this.slot(i);
    const keyLen = this.buf[off]! | (this.buf[off + 1]! << 8);
    return this.buf.subarray(off + itemHeaderBytes, off + itemHeaderBytes + keyLen);
  }

  /** A view of value i; valid until this node is next modified. */
  valueAt(i: number): Buffer {
    const off = this.slot(i);
    const keyLen = this.buf[off]! | (this.buf[off + 1]! << 8);
    const valueLen = this.buf[off + 2]! | (this.buf[off + 3]! << 8);
    const start = off + itemHeaderBytes + keyLen;
    return this.buf.subarray(start, start + valueLen);
  }

  /** A copy of key i, in one allocation from Node.js's small-buffer pool. */
  copyKey(i: number): Buffer {
    const off = this.slot(i);
    const keyLen = this.buf[off]! | (this.buf[off + 1]! << 8);
    const out = Buffer.allocUnsafe(keyLen);
    this.buf.copy(out, 0, off + itemHeaderBytes, off + itemHeaderBytes + keyLen);
    return out;
  }

  /** A copy of value i, in one allocation from Node.js's small-buffer pool. */
  copyValue(i: number): Buffer {
    const off = this.slot(i);
    const keyLen = this.buf[off]! | (this.buf[off + 1]! << 8);
    const valueLen = this.buf[off + 2]! | (this.buf[off + 3]! << 8);
    const start = off + itemHeaderBytes + keyLen;
    const out = Buffer.allocUnsafe(valueLen);
    this.buf.copy(out, 0, start, start + valueLen);
    return out;
  }

  childAt(i: number): number {
    const off = this.slot(i);
    const keyLen = this.buf[off]! | (this.buf[off + 1]! << 8);
    const p = off + itemHeaderBytes + keyLen;
    return this.buf.readUInt32LE(p) + this.buf.readUInt32LE(p + 4) * 4294967296;
  }

  /** Where child pointer i starts. */
  private pointerAt(i: number): number {
    const off = this.slot(i);
    const keyLen = this.buf[off]! | (this.buf[off + 1]! << 8);
    return off + itemHeaderBytes + keyLen;
  }

  /** The generation child i's pointer expects (0: unknown, a bare pointer or one not filled in yet). */
  childGenerationAt(i: number): number {
    if (!this.checked) return 0;
    return readU64LE(this.buf, this.pointerAt(i) + PTR_GENERATION);
  }

  /** The crc child i's pointer expects (meaningful only with a known generation). */
  childCrcAt(i: number): number {
    if (!this.checked) return 0;
    return this.buf.readUInt32LE(this.pointerAt(i) + PTR_CRC);
  }

  /**
   * Points child i at `lba`, a node of `generation`. Its crc is filled in
   * when this node is sealed (`setChildCheckAt`), after the child's.
   */
  setChildAt(i: number, lba: number, generation: number): void {
    const p = this.pointerAt(i);
    writeU64LE(this.buf, p + PTR_LBA, lba);
    if (!this.checked) return;
    writeU64LE(this.buf, p + PTR_GENERATION, generation);
    this.buf.writeUInt32LE(0, p + PTR_CRC);
    writeU64LE(this.buf, p + PTR_LBA2, 0);
  }

  /** The second LBA child i's pointer records (0: none, or a bare pointer). */
  childMirrorAt(i: number): number {
    if (!this.checked) return 0;
    return readU64LE(this.buf, this.pointerAt(i) + PTR_LBA2);
  }

  /** Records what child i is: its generation and crc, known once it is sealed, and its second copy. */
  setChildCheckAt(i: number, generation: number, crc: number, mirror: number): void {
    assert(this.checked, "only a checked pointer records its child's crc");
    const p = this.pointerAt(i);
    writeU64LE(this.buf, p + PTR_GENERATION, generation);
    this.buf.writeUInt32LE(crc, p + PTR_CRC);
    writeU64LE(this.buf, p + PTR_LBA2, mirror);
  }

  /** The crc field of a sealed node's header (a node read from the device, or sealed by this commit). */
  get sealedCrc(): number {
    return this.buf.readUInt32LE(NODE_CRC);
  }

  /**
   * This older internal node's items with checked pointers of unknown
   * generation, which the commit fills in. They may not fit one node.
   */
  widenedItems(): Item[] {
    assert(!this.checked && this.level > 0, "only a bare-pointer internal node is widened");
    const items = this.items();
    for (const item of items) item.value = childPointer(readU64LE(Buffer.from(item.value), 0), 0);
    return items;
  }

  /** Compares key i with `key` without materialising a view. */
  compareAt(i: number, key: Uint8Array): number {
    const buf = this.buf;
    const off = this.slot(i);
    const keyLen = buf[off]! | (buf[off + 1]! << 8);
    const start = off + itemHeaderBytes;
    const n = keyLen < key.length ? keyLen : key.length;
    for (let j = 0; j < n; j++) {
      const d = buf[start + j]! - key[j]!;
      if (d !== 0) return d;
    }
    return keyLen - key.length;
  }

  /** The first index whose key is >= `key` (count if none). */
  lowerBound(key: Uint8Array): number {
    let lo = 0;
    let hi = this.count;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.compareAt(mid, key) < 0) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** In an internal node: the child whose range holds `key`. */
  childIndex(key: Uint8Array): number {
    let lo = 0;
    let hi = this.count;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.compareAt(mid, key) <= 0) lo = mid + 1;
      else hi = mid;
    }
    return lo === 0 ? 0 : lo - 1;
  }

  itemBytes(i: number): number {
    const off = this.slot(i);
    const keyLen = this.buf[off]! | (this.buf[off + 1]! << 8);
    const valueLen = this.buf[off + 2]! | (this.buf[off + 3]! << 8);
    return itemHeaderBytes + keyLen + valueLen;
  }

  /** Payload bytes in use: slots plus live items. */
  usedBytes(): number {
    return this.count * slotBytes + (blockSizeBytes - this.heapStart - this.garbage);
  }

  private freeBytes(): number {
    return this.heapStart - nodeHeaderBytes - this.count * slotBytes;
  }

  /** Inserts at slot i if the item fits (compacting if that helps); false if the node is full. */
  insertAt(i: number, key: Uint8Array, value: Uint8Array): boolean {
    const need = itemHeaderBytes + key.length + value.length;
    if (this.freeBytes() < need + slotBytes) {
      if (this.freeBytes() + this.garbage < need + slotBytes) return false;
      this.compact();
    }
    const buf = this.buf;
    const off = this.heapStart - need;
    buf[off] = key.length & 0xff;
    buf[off + 1] = key.length >>> 8;
    buf[off + 2] = value.length & 0xff;
    buf[off + 3] = value.length >>> 8;
    buf.set(key, off + itemHeaderBytes);
    buf.set(value, off + itemHeaderBytes + key.length);
    this.heapStart = off;
    const slotPos = nodeHeaderBytes + i * slotBytes;
    const slotEnd = nodeHeaderBytes + this.count * slotBytes;
    if (i < this.count) buf.copyWithin(slotPos + slotBytes, slotPos, slotEnd);
    buf[slotPos] = off & 0xff;
    buf[slotPos + 1] = off >>> 8;
    this.count++;
    return true;
  }

  removeAt(i: number): void {
    assert(i >= 0 && i < this.count, "remove within the node");
    this.garbage += this.itemBytes(i);
    const slotPos = nodeHeaderBytes + i * slotBytes;
    const slotEnd = nodeHeaderBytes + this.count * slotBytes;
    this.buf.copyWithin(slotPos, slotPos + slotBytes, slotEnd);
    this.count--;
    if (this.count === 0) {
      this.heapStart = blockSizeBytes;
      this.garbage = 0;
    }
  }

  /** Replaces value i in place when the length matches, else through remove and insert. */
  replaceValueAt(i: number, value: Uint8Array): boolean {
    const off = this.slot(i);
    const keyLen = this.buf[off]! | (this.buf[off + 1]! << 8);
    const valueLen = this.buf[off + 2]! | (this.buf[off + 3]! << 8);
    if (valueLen === value.length) {
      this.buf.set(value, off + itemHeaderBytes + keyLen);
      return true;
    }
    if (this.freeBytes() + this.garbage + itemHeaderBytes + keyLen + valueLen < itemHeaderBytes + keyLen + value.length) {
      return false;
    }
    const key = Buffer.from(this.keyAt(i));
    this.removeAt(i);
    assert(this.insertAt(i, key, value), "a replacement that was measured to fit does fit");
    return true;
  }

  /** Rewrites the heap with no garbage. */
  compact(): void {
    const items = this.items();
    this.setItems(items);
  }

  /** Views of every item (they alias this node's buffer). */
  items(): Item[] {
    const out: Item[] = new Array(this.count);
    for (let i = 0; i < this.count; i++) out[i] = { key: this.keyAt(i), value: this.valueAt(i) };
    return out;
  }

  /** Replaces the whole content; the items may alias the old buffer. */
  setItems(items: readonly Item[]): void {
    const buf = allocBlock();
    this.buf.copy(buf, 0, 0, nodeHeaderBytes);
    let heap = blockSizeBytes;
    for (let i = 0; i < items.length; i++) {
      const { key, value } = items[i]!;
      heap -= itemHeaderBytes + key.length + value.length;
      buf.writeUInt16LE(key.length, heap + ITEM_KEY_LEN);
      buf.writeUInt16LE(value.length, heap + ITEM_VALUE_LEN);
      buf.set(key, heap + itemHeaderBytes);
      buf.set(value, heap + itemHeaderBytes + key.length);
      buf.writeUInt16LE(heap, nodeHeaderBytes + i * slotBytes);
    }
    const slotEnd = nodeHeaderBytes + items.length * slotBytes;
    assert(slotEnd <= heap, "items given to a node fit it");
    buf.fill(0, slotEnd, heap);
    this.buf = buf;
    this.count = items.length;
    this.heapStart = heap;
    this.garbage = 0;
  }
}

export function itemSize(item: Item): number {
  return slotBytes + itemHeaderBytes + item.key.length + item.value.length;
}

/** A checked pointer to the node at `lba` of `generation` (0: unknown); its crc is filled in at seal. */
export function childPointer(lba: number, generation: number): Buffer {
  const value = Buffer.alloc(checkedChildPointerBytes);
  writeU64LE(value, PTR_LBA, lba);
  writeU64LE(value, PTR_GENERATION, generation);
  return value;
}

export { emptyKey };

/** memcmp order of two byte ranges of one buffer, without views. */
function compareInBuffer(buf: Buffer, a: number, aLen: number, b: number, bLen: number): number {
  const n = aLen < bLen ? aLen : bLen;
  for (let j = 0; j < n; j++) {
    const d = buf[a + j]! - buf[b + j]!;
    if (d !== 0) return d;
  }
  return aLen - bLen;
}

/**
 * Whether a node written by tree `actual` may be read as part of tree
 * `expected`. Fixed trees (ids below treeIdFirstDynamic) own their nodes
 * alone. Dynamic trees share nodes through snapshots and clones, so a node
 * keeps the id of the tree that wrote it and any tree of the same family may
 * read it: ids below 2^32 are one family (subvolume trees), and an id
 * `tree × 2^32 + object` (a per-object tree, such as a file's extents)
 * matches every id with the same object.
 */
export function ownerMatches(expected: number, actual: number): boolean {
  if (expected === actual) return true;
  if (expected < treeIdFirstDynamic || actual < treeIdFirstDynamic) return false;
  const objectTrees = expected >= 2 ** 32;
  if (objectTrees !== actual >= 2 ** 32) return false;
  return !objectTrees || expected % 2 ** 32 === actual % 2 ** 32;
}

/** What a reader expects of a node: where it was found and what points at it. */
export interface NodeExpectation {
  lba: number;
  level: number;
  owner: number;
  deviceBlocks: number;
  /** The generation its pointer records (0 or absent: a bare pointer, unchecked). */
  generation?: number;
  /** The crc its pointer records, checked with a known generation. */
  crc?: number;
}

/**
 * Checks a node's bytes against what its pointer expects. A block that is a
 * valid node of another generation is a lost or stale write (the device kept
 * older bytes at this LBA); one of the right generation with another crc is a
 * misdirected or stale write. A block that is not a valid node at all, where
 * a checked pointer expected one, may also be a lost write, and says so.
 */
function pointerMismatch(buf: Buffer, expect: NodeExpectation, selfValid: boolean): string | null {
  const want = expect.generation ?? 0;
  if (want === 0) return null;
  if (!selfValid) return `; its parent expects a node of generation ${want} here: a lost write, or damage`;
  // A node that claims another LBA landed here by a misdirected write: the structure check says so.
  if (readU64LE(buf, NODE_LBA) !== expect.lba) return null;
  const generation = readU64LE(buf, NODE_GENERATION);
  if (generation !== want) {
    return `node at LBA ${expect.lba} is generation ${generation}, its parent expects ${want}: a lost or stale write`;
  }
  const crc = buf.readUInt32LE(NODE_CRC);
  if (crc !== (expect.crc ?? 0) >>> 0) {
    return `node at LBA ${expect.lba} has crc ${hex32(crc)}, its parent expects ${hex32(expect.crc ?? 0)}: a misdirected or stale write`;
  }
  return null;
}

function hex32(n: number): string {
  return `0x${(n >>> 0).toString(16).padStart(8, "0")}`;
}

/**
 * Checks the structure of a node's bytes. Returns a reason for the first
 * problem found, or null. Shared by the read path and the checker.
 */
export function validateNodeBytes(buf: Buffer, expect: NodeExpectation): string | null {
  let own: string | null = null;
  if (buf.readUInt32LE(NODE_MAGIC) !== nodeMagic) own = "bad node magic";
  else if (buf.readUInt32LE(NODE_CRC) !== crc32c(buf.subarray(NODE_LBA))) own = "node checksum mismatch";
  const mismatch = pointerMismatch(buf, expect, own === null);
  if (own !== null) return mismatch === null ? own : own + mismatch;
  if (mismatch !== null) return mismatch;
  return validateNodeStructure(buf, expect);
}

/** Everything `validateNodeBytes` checks but magic and checksum. */
function validateNodeStructure(buf: Buffer, expect: NodeExpectation): string | null {
  const lba = readU64LE(buf, NODE_LBA);
  if (lba !== expect.lba) return `node claims LBA ${lba} (misdirected write?)`;
  const owner = readU64LE(buf, NODE_OWNER);
  if (!ownerMatches(expect.owner, owner)) return `node belongs to tree ${owner}, not ${expect.owner}`;
  const level = buf[NODE_LEVEL]!;
  if (level !== expect.level) return `node level ${level}, expected ${expect.level}`;
  if (level >= treeDepthMax) return `node level ${level} exceeds the depth bound`;
  const flags = buf[NODE_FLAGS]!;
  if ((flags & ~nodeFlagCheckedPointers) !== 0) return "unknown node flags";
  if (level === 0 && flags !== 0) return "a leaf has the checked-pointers flag";
  const pointerBytes = (flags & nodeFlagCheckedPointers) !== 0 ? checkedChildPointerBytes : bareChildPointerBytes;
  const count = buf.readUInt16LE(NODE_COUNT);
  const heapStart = buf.readUInt16LE(NODE_HEAP_START);
  const garbage = buf.readUInt16LE(NODE_GARBAGE);
  if (count > itemCountMax) return `item count ${count} is impossible`;
  if (heapStart < nodeHeaderBytes + count * slotBytes || heapStart > blockSizeBytes) return "heap start out of bounds";
  let live = 0;
  let previousStart = -1;
  let previousLen = 0;
  for (let i = 0; i < count; i++) {
    const off = buf.readUInt16LE(nodeHeaderBytes + i * slotBytes);
    if (off < heapStart || off + itemHeaderBytes > blockSizeBytes) return `slot ${i} points outside the heap`;
    const keyLen = buf.readUInt16LE(off + ITEM_KEY_LEN);
    const valueLen = buf.readUInt16LE(off + ITEM_VALUE_LEN);
    const end = off + itemHeaderBytes + keyLen + valueLen;
    if (end > blockSizeBytes) return `item ${i} runs past the node`;
    if (keyLen > keySizeMaxBytes || valueLen > valueSizeMaxBytes) return `item ${i} exceeds the size bounds`;
    live += end - off;
    const keyStart = off + itemHeaderBytes;
    if (level > 0) {
      if (valueLen !== pointerBytes) return `internal item ${i} is not a child pointer`;
      const child = readU64LE(buf, off + itemHeaderBytes + keyLen);
      if (child < 2 || child >= expect.deviceBlocks) return `child pointer ${child} is outside the volume`;
      if (pointerBytes === checkedChildPointerBytes) {
        const mirror = readU64LE(buf, off + itemHeaderBytes + keyLen + PTR_LBA2);
        if (mirror !== 0 && (mirror < 2 || mirror >= expect.deviceBlocks || mirror === child)) return `child pointer ${child}'s second LBA ${mirror} is impossible`;
      }
      if (i === 0 && keyLen !== 0) return "first key of an internal node is not empty";
    }
    if (previousStart >= 0 && compareInBuffer(buf, previousStart, previousLen, keyStart, keyLen) >= 0) {
      return `keys out of order at item ${i}`;
    }
    previousStart = keyStart;
    previousLen = keyLen;
  }
  if (live + garbage !== blockSizeBytes - heapStart) return "heap accounting does not add up";
  return null;
}

/** Builds a node from bytes read at `expect.lba`; any inconsistency is a CorruptionError. */
export function decodeNode(buf: Buffer, expect: NodeExpectation): Node {
  const reason = validateNodeBytes(buf, expect);
  if (reason !== null) {
    throw new CorruptionError("EIO_node_corrupt", `corrupt node at block ${expect.lba} (tree ${expect.owner}): ${reason}`);
  }
  const checked = (buf[NODE_FLAGS]! & nodeFlagCheckedPointers) !== 0;
  const node = new Node(buf, expect.lba, readU64LE(buf, NODE_GENERATION), readU64LE(buf, NODE_OWNER), expect.level, checked);
  node.count = buf.readUInt16LE(NODE_COUNT);
  node.heapStart = buf.readUInt16LE(NODE_HEAP_START);
  node.garbage = buf.readUInt16LE(NODE_GARBAGE);
  return node;
}

/** Writes the header and checksum into the node's buffer, then validates it: invalid bytes never reach the device. */
export function sealNode(node: Node, deviceBlocks: number): Buffer {
  const buf = node.buf;
  buf.writeUInt32LE(nodeMagic, NODE_MAGIC);
  writeU64LE(buf, NODE_LBA, node.lba);
  writeU64LE(buf, NODE_GENERATION, node.generation);
  writeU64LE(buf, NODE_OWNER, node.owner);
  buf[NODE_LEVEL] = node.level;
  assert(!node.checked || node.level > 0, "only an internal node has checked pointers");
  buf[NODE_FLAGS] = node.checked ? nodeFlagCheckedPointers : 0;
  buf.writeUInt16LE(node.count, NODE_COUNT);
  buf.writeUInt16LE(node.heapStart, NODE_HEAP_START);
  buf.writeUInt16LE(node.garbage, NODE_GARBAGE);
  const reason = validateNodeStructure(buf, { lba: node.lba, level: node.level, owner: node.owner, deviceBlocks });
  assert(reason === null, `node ${node.lba} is valid before it is written: ${reason}`);
  buf.writeUInt32LE(crc32c(buf.subarray(NODE_LBA)), NODE_CRC);
  return buf;
}

/** The generation recorded in a node's header, for the checker. */
export function nodeGeneration(buf: Buffer): number {
  return readU64LE(buf, NODE_GENERATION);
}
