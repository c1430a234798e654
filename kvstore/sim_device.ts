/**
 * A simulated block device for crash and corruption tests.
 *
 * It keeps a durable image (what survives power loss) and the writes issued
 * since the last flush. Reads see the live state. A crash can be armed at the
 * Nth block written or flush: that call throws `SimulatedCrash` and the device goes
 * dead. `recover` then builds the image a real disk could hold after the crash:
 * each unflushed write independently kept, dropped, or torn at a sector
 * boundary. Bits can be flipped on read to test corruption handling, and
 * writes can be lost or misdirected (`writeFault`): acknowledged, and made
 * durable by the next flush, but never landing where they were sent, as a
 * device with a lying cache or a firmware bug would do.
 *
 * Blocks are stored sparsely, so a large simulated device costs only what is
 * written to it.
 */
import { blockSizeBytes } from "./constants.js";
import { BlockDevice, checkTransfer } from "./device.js";
import { IoError } from "./errors.js";
import { Prng } from "./prng.js";

const sectorSizeBytes = 512;

/** A private copy. (Buffer#slice returns a view, so `.slice()` is not safe on a Buffer.) */
function copyBytes(data: Uint8Array): Uint8Array {
  return new Uint8Array(data);
}

export class SimulatedCrash extends IoError {
  constructor(op: number) {
    super("EIO_simulated_crash", `simulated power loss at device operation ${op}`);
    this.name = "SimulatedCrash";
  }
}

export interface RecoverOptions {
  /** Probability that an unflushed write survives whole; the rest are dropped or torn. */
  keepProbability?: number;
  tearProbability?: number;
}

/** What happens to one block written to `lba`: it lands there, is lost, or lands at another LBA. */
export type WriteFate = "keep" | "lose" | { redirectTo: number };

export class SimDevice implements BlockDevice {
  /** Decides the fate of each block written; the write is acknowledged whatever it says. */
  writeFault: ((lba: number) => WriteFate) | null = null;
  private blocks: number;
  private durable = new Map<number, Uint8Array>();
  private unflushed: Array<{ lba: number; data: Uint8Array }> = [];
  private live = new Map<number, Uint8Array>();
  private flips = new Map<number, Array<{ offset: number; mask: number }>>();
  /** Blocks written plus flushes issued so far: the points where power can fail. */
  operations = 0;
  writes = 0;
  flushes = 0;
  crashAtOperation = Number.POSITIVE_INFINITY;
  /** The operation with this number fails with EIO and does nothing; the device stays up. */
  failAtOperation = Number.POSITIVE_INFINITY;
  private dead = false;
  private closed = false;

  constructor(blockCount: number) {
    this.blocks = blockCount;
  }

  get blockCount(): number {
    return this.blocks;
  }

  /** A device holding a copy of another's durable image (what a reboot sees). */
  static fromDurable(blocks: Map<number, Uint8Array>, blockCount: number): SimDevice {
    const device = new SimDevice(blockCount);
    for (const [lba, data] of blocks) {
      device.durable.set(lba, copyBytes(data));
      device.live.set(lba, copyBytes(data));
    }
    return device;
  }

  get crashed(): boolean {
    return this.dead;
  }

  read(lba: number, buf: Uint8Array): void {
    checkTransfer(this, lba, buf);
    this.checkAlive();
    const blocks = buf.length / blockSizeBytes;
    for (let i = 0; i < blocks; i++) {
      const target = buf.subarray(i * blockSizeBytes, (i + 1) * blockSizeBytes);
      const data = this.live.get(lba + i);
      if (data) target.set(data);
      else target.fill(0);
      for (const flip of this.flips.get(lba + i) ?? []) target[flip.offset]! ^= flip.mask;
    }
  }

  /** Each block of a multi-block write is its own operation: power can fail halfway through a write. */
  write(lba: number, buf: Uint8Array): void {
    checkTransfer(this, lba, buf);
    this.writes++;
    const blocks = buf.length / blockSizeBytes;
    for (let i = 0; i < blocks; i++) {
      this.tick();
      const data = copyBytes(buf.subarray(i * blockSizeBytes, (i + 1) * blockSizeBytes));
      const fate = this.writeFault?.(lba + i) ?? "keep";
      if (fate === "lose") continue;
      const target = fate === "keep" ? lba + i : fate.redirectTo;
      this.live.set(target, data);
      this.unflushed.push({ lba: target, data });
    }
  }

  writev(lba: number, bufs: readonly Uint8Array[]): void {
    let at = lba;
    for (const buf of bufs) {
      this.write(at, buf);
      at += buf.length / blockSizeBytes;
    }
  }

  flush(): void {
    this.tick();
    this.flushes++;
    for (const { lba, data } of this.unflushed) this.durable.set(lba, data);
    this.unflushed = [];
  }

  close(): void {
    this.closed = true;
  }

  refreshSize(): number {
    return this.blocks;
  }

  /**
   * Resizes the simulated image file, as ftruncate(2) would. The new size is
   * durable at once (a real fdatasync at the next commit makes it so before
   * anything depends on it); blocks cut off are gone from every state.
   */
  setSize(blocks: number): void {
    this.checkAlive();
    for (const map of [this.live, this.durable]) for (const lba of [...map.keys()]) if (lba >= blocks) map.delete(lba);
    this.unflushed = this.unflushed.filter((w) => w.lba < blocks);
    this.blocks = blocks;
  }

  /** The same disk after a clean shutdown: every write, flushed or not, made it. */
  reopen(): SimDevice {
    if (this.dead) throw new IoError("EIO_simulated_dead", "a crashed device is recovered, not reopened");
    return SimDevice.fromDurable(this.live, this.blockCount);
  }

  /** Flips bits of a block whenever it is read, until cleared. */
  flipOnRead(lba: number, offset: number, mask: number): void {
    const list = this.flips.get(lba) ?? [];
    list.push({ offset, mask });
    this.flips.set(lba, list);
  }

  clearFlips(): void {
    this.flips.clear();
  }

  /** The image after a crash now: durable blocks plus a random fate for each unflushed write. */
  recover(prng: Prng, options: RecoverOptions = {}): SimDevice {
    const keep = options.keepProbability ?? 0.4;
    const tear = options.tearProbability ?? 0.3;
    const image = new Map<number, Uint8Array>();
    for (const [lba, data] of this.durable) image.set(lba, copyBytes(data));
    for (const { lba, data } of this.unflushed) {
      const roll = prng.u32() / 4294967296;
      if (roll < keep) {
        image.set(lba, copyBytes(data));
      } else if (roll < keep + tear) {
        const sectors = prng.between(1, blockSizeBytes / sectorSizeBytes - 1);
        const torn = copyBytes(image.get(lba) ?? new Uint8Array(blockSizeBytes));
        torn.set(data.subarray(0, sectors * sectorSizeBytes));
        image.set(lba, torn);
      }
    }
    return SimDevice.fromDurable(image, this.blockCount);
  }

  /** A byte-exact copy of the live state, for tests that damage an image. */
  snapshotLive(): Map<number, Uint8Array> {
    const copy = new Map<number, Uint8Array>();
    for (const [lba, data] of this.live) copy.set(lba, copyBytes(data));
    return copy;
  }

  private tick(): void {
    this.checkAlive();
    this.operations++;
    if (this.operations === this.failAtOperation) {
      throw new IoError("EIO_simulated_failure", `simulated I/O error at device operation ${this.operations}`);
    }
    if (this.operations >= this.crashAtOperation) {
      this.dead = true;
      throw new SimulatedCrash(this.operations);
    }
  }

  private checkAlive(): void {
    if (this.dead) throw new IoError("EIO_simulated_dead", "simulated device is powered off");
    if (this.closed) throw new IoError("EIO_device_closed", "simulated device is closed");
  }
}
