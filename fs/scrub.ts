/**
 * Scrub of a filesystem volume: kvstore's ScrubPass reads and heals every
 * node copy; this layer verifies every written data block against the crc32c
 * its extent record holds, names the files whose data is damaged (a data block
 * has one copy: nothing rewrites it), and skips the trees of subvolumes being
 * deleted, whose released blocks may hold anything.
 *
 * A data block is verified once per pass however many records name it (a
 * snapshot's, a clone's, a reflink's). Unwritten (preallocated) extents hold
 * nothing to check.
 */
import { constants as C } from "node:fs";
import { GroveError, ScrubPass, blockSizeBytes, crc32c, type BlockDevice, type ScrubCounters, type ScrubPosition, type Store } from "../kvstore/index.js";
import { isObjectTree, ownerObject, type Subvolumes } from "../snapshot/index.js";
import { Compression, PayloadKind, decodeExtent, decodeInode, decodeItems, direntValueBytes, extentCrc, type Extent } from "./format.js";
import { decompressUnit } from "./compression.js";
import { pathsOf } from "./salvage.js";

/** Subvolume trees have ids from here up; the trees below are the volume's own. */
const firstSubvolumeTree = 256;

/**
 * Which blocks of an extent record's slice fail their checksum (indices into
 * its blocks on disk), and what else is wrong: a read error, or a compressed
 * unit that passes its checksums but does not decompress.
 */
export function damagedDataBlocks(device: BlockDevice, ino: number, extent: Extent): { bad: number[]; problem: string | null } {
  const data = Buffer.allocUnsafe(extent.diskBlocks * blockSizeBytes);
  try {
    device.read(extent.lba, data);
  } catch (error) {
    return { bad: [], problem: `inode ${ino}: reading data blocks ${extent.lba}+${extent.diskBlocks} failed: ${(error as Error).message}` };
  }
  const bad: number[] = [];
  for (let i = 0; i < extent.diskBlocks; i++) {
    if (crc32c(data.subarray(i * blockSizeBytes, (i + 1) * blockSizeBytes)) !== extentCrc(extent, i)) bad.push(i);
  }
  if (bad.length > 0 || extent.compression === Compression.None) return { bad, problem: null };
  try {
    decompressUnit(ino, extent, data);
  } catch (error) {
    if (!(error instanceof GroveError)) throw error;
    return { bad, problem: error.message };
  }
  return { bad, problem: null };
}

/** Damaged data of one file found by a pass. */
interface DataDamage {
  subvolume: number;
  ino: number;
  /** Byte ranges of the file that cannot be read back. */
  ranges: Array<{ from: number; to: number }>;
  lbas: number[];
  /** Not a checksum failure: a read error, a unit that does not decompress. */
  other: string[];
}

export interface ScrubSummary extends ScrubCounters {
  /** Damaged node copies found and rewritten, uncorrectable damage, one line each. */
  findings: string[];
  /** Files whose data is damaged, one line each, with the path where one was found. */
  damagedFiles: string[];
}

/**
 * One scrub pass over `store` (whose subvolume table is `subvolumes`),
 * stepped by the caller: a mount daemon between requests, or `run` at once.
 */
export class VolumeScrub {
  readonly pass: ScrubPass;
  private readonly damage = new Map<string, DataDamage>();

  constructor(
    private readonly store: Store,
    private readonly subvolumes: Subvolumes,
    from: ScrubPosition | null = null,
    /** False: a read-only pass (kvstore's ScrubPass.repair). */
    repair = true,
  ) {
    let deleting: { state: unknown; ids: Set<number> } | null = null;
    this.pass = new ScrubPass(
      store,
      {
        walkTree: (id) => {
          if (id < firstSubvolumeTree) return true;
          // A subvolume being deleted, or whose deletion has finished since the durable state.
          if (deleting === null || deleting.state !== store.durableSuperblock) {
            deleting = { state: store.durableSuperblock, ids: new Set(subvolumes.deleting().map((r) => r.id)) };
          }
          return store.hasTree(id) && !deleting.ids.has(id);
        },
        item: (treeId, key, value, top, pass) => this.item(treeId, key, value, top, pass),
      },
      from,
      repair,
    );
  }

  /** Reads about `blocks` blocks; returns whether the pass is done. */
  step(blocks?: number): boolean {
    return this.pass.step(blocks);
  }

  run(): void {
    this.pass.run();
  }

  summary(): ScrubSummary {
    return { ...this.pass.counters, findings: [...this.pass.findings], damagedFiles: this.damagedFiles() };
  }

  private item(treeId: number, key: Buffer, value: Buffer, top: number, pass: ScrubPass): void {
    if (top < firstSubvolumeTree) return;
    if (isObjectTree(treeId)) {
      if (value.length === direntValueBytes) return;
      const ino = ownerObject(treeId);
      this.verify(top, ino, decodeExtent(ino, key, value), pass);
      return;
    }
    if (treeId !== top || key.length !== 8) return;
    const ino = Number(key.readBigUInt64BE(0));
    if (ino === 0) return;
    const inode = decodeInode(ino, value);
    if (inode.kind !== PayloadKind.Items || (inode.mode & C.S_IFMT) === C.S_IFDIR) return;
    for (const item of decodeItems(ino, inode.payload)) this.verify(top, ino, decodeExtent(ino, item.key, item.value), pass);
  }

  private verify(subvolume: number, ino: number, extent: Extent, pass: ScrubPass): void {
    if (extent.preallocatedIn !== undefined || extent.diskBlocks === 0) return;
    if (!pass.claimData(extent.lba, extent.diskBlocks)) return;
    pass.readData(extent.diskBlocks);
    const compressed = extent.compression !== Compression.None;
    const { bad, problem } = damagedDataBlocks(this.store.device, ino, extent);
    if (problem !== null) {
      this.damageOf(subvolume, ino).other.push(problem);
      pass.reportData(`subvolume ${subvolume}: ${problem}`);
      return;
    }
    if (bad.length === 0) return;
    const damage = this.damageOf(subvolume, ino);
    // A damaged compressed unit loses the whole record; an uncompressed block loses its own 4 KiB.
    const lost = compressed ? [...Array(extent.blocks).keys()] : bad;
    for (const i of bad) damage.lbas.push(extent.lba + i);
    for (const i of lost) damage.ranges.push({ from: (extent.fileBlock + i) * blockSizeBytes, to: (extent.fileBlock + i + 1) * blockSizeBytes });
    pass.reportData(`inode ${ino} of subvolume ${subvolume}: data block${bad.length === 1 ? "" : "s"} ${bad.map((i) => extent.lba + i).join(", ")} fail${bad.length === 1 ? "s" : ""} its checksum`);
  }

  private damageOf(subvolume: number, ino: number): DataDamage {
    const id = `${subvolume}:${ino}`;
    let damage = this.damage.get(id);
    if (damage === undefined) this.damage.set(id, (damage = { subvolume, ino, ranges: [], lbas: [], other: [] }));
    return damage;
  }

  /** One line per damaged file, with its path in the subvolume as it is now (where one can be found). */
  private damagedFiles(): string[] {
    if (this.damage.size === 0) return [];
    const names = new Map<number, string>();
    for (const record of [...this.subvolumes.list(), ...this.subvolumes.deleting()]) names.set(record.id, record.name);
    const bySubvolume = new Map<number, DataDamage[]>();
    for (const d of this.damage.values()) bySubvolume.set(d.subvolume, [...(bySubvolume.get(d.subvolume) ?? []), d]);
    const lines: string[] = [];
    for (const [subvolume, list] of [...bySubvolume].sort((a, b) => a[0] - b[0])) {
      let paths = new Map<number, string>();
      try {
        if (this.store.hasTree(subvolume)) paths = pathsOf(this.store, this.store.openTree(subvolume), new Set(list.map((d) => d.ino)));
      } catch (error) {
        if (!(error instanceof GroveError)) throw error;
      }
      const name = names.get(subvolume);
      const where = name === undefined ? `subvolume ${subvolume}` : `subvolume ${JSON.stringify(name)}`;
      for (const d of list.sort((a, b) => a.ino - b.ino)) {
        const path = paths.get(d.ino);
        const file = path === undefined ? `inode ${d.ino} (no path found) in ${where}` : `${JSON.stringify(path)} (inode ${d.ino}) in ${where}`;
        const ranges = mergeRanges(d.ranges);
        const bytes = ranges.reduce((n, r) => n + r.to - r.from, 0);
        const parts: string[] = [];
        if (ranges.length > 0) {
          const shown = ranges.slice(0, 8).map((r) => `${r.from}-${r.to - 1}`);
          if (ranges.length > 8) shown.push(`${ranges.length - 8} more`);
          parts.push(`damaged bytes ${shown.join(", ")} (${bytes} bytes; data block${d.lbas.length === 1 ? "" : "s"} ${d.lbas.slice(0, 8).join(", ")}${d.lbas.length > 8 ? ", …" : ""})`);
        }
        parts.push(...d.other);
        lines.push(`${file}: ${parts.join("; ")}`);
      }
    }
    return lines;
  }
}

function mergeRanges(list: Array<{ from: number; to: number }>): Array<{ from: number; to: number }> {
  const sorted = [...list].sort((a, b) => a.from - b.from);
  const out: Array<{ from: number; to: number }> = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last !== undefined && r.from <= last.to) last.to = Math.max(last.to, r.to);
    else out.push({ ...r });
  }
  return out;
}
