/**
 * Read-ahead for the walks that read every node straight from the device
 * (scrub, the tree checker): before a walk visits an internal node's
 * children, it asks for their blocks (both copies), and they are read in
 * LBA order, each run of adjacent blocks in one request (after a sequential
 * write most siblings are adjacent). The walk then takes each block from
 * here, or reads it itself when it was not read ahead (a lone block, a run
 * that failed to read: the walk's own read names the block that fails).
 *
 * The bytes are those of the device when read: a walk whose blocks may be
 * reused under it (scrub, at a new durable state) clears it.
 */
import { blockSizeBytes } from "./constants.js";
import type { BlockDevice } from "./device.js";

/** The longest run of adjacent blocks read in one request. */
const runBlocksMax = 64;

export class ReadAhead {
  private readonly blocks = new Map<number, Buffer>();

  constructor(
    private readonly device: BlockDevice,
    private readonly deviceBlocks: number,
  ) {}

  /** Reads `wanted` (LBAs, any order; those outside the volume or held already are ignored); returns the LBAs now held. */
  fill(wanted: number[]): number[] {
    const lbas = wanted.filter((at) => Number.isSafeInteger(at) && at >= 2 && at < this.deviceBlocks && !this.blocks.has(at));
    lbas.sort((a, b) => a - b);
    const held: number[] = [];
    for (let i = 0; i < lbas.length; ) {
      let j = i + 1;
      while (j < lbas.length && j - i < runBlocksMax && lbas[j] === lbas[j - 1]! + 1) j++;
      // A lone block gains nothing from being read early.
      if (j - i > 1) {
        const run = Buffer.allocUnsafeSlow((j - i) * blockSizeBytes);
        try {
          this.device.read(lbas[i]!, run);
          for (let k = i; k < j; k++) {
            this.blocks.set(lbas[k]!, run.subarray((k - i) * blockSizeBytes, (k - i + 1) * blockSizeBytes));
            held.push(lbas[k]!);
          }
        } catch {
          // the walk reads these one by one, and reports the one that fails
        }
      }
      i = j;
    }
    return held;
  }

  /** The block's bytes if it was read ahead (each is taken once), else undefined. */
  take(lba: number): Buffer | undefined {
    const buf = this.blocks.get(lba);
    if (buf !== undefined) this.blocks.delete(lba);
    return buf;
  }

  /** Drops what the walk did not take of `lbas` (children it skipped). */
  drop(lbas: readonly number[]): void {
    for (const lba of lbas) this.blocks.delete(lba);
  }

  clear(): void {
    this.blocks.clear();
  }
}
