/**
 * Open handles: the file handles `open`, `create` and `opendir` return, and
 * how many of them name each inode.
 *
 * Invariants:
 * - `openCount(ino)` is the number of live handles on `ino`: an inode whose
 *   last name goes while it is open stays, as an orphan, until its last
 *   handle is released.
 * - Handle numbers are never reused within one open filesystem.
 */
import { GroveError } from "../kvstore/index.js";
import { openFilesMax } from "./constants.js";

export interface Handle {
  ino: number;
  /** open(2) flags. */
  flags: number;
  directory: boolean;
}

export class Handles {
  private readonly open = new Map<number, Handle>();
  private readonly counts = new Map<number, number>();
  private nextFh = 1;

  /** ENOSPC when no handle can be added (openFilesMax). */
  checkRoom(): void {
    if (this.open.size >= openFilesMax) throw new GroveError("ENOSPC", "ENOSPC_handles", "too many open files");
  }

  get(fh: number): Handle {
    const handle = this.open.get(fh);
    if (handle === undefined) throw new GroveError("EBADF", "EBADF_handle", `bad file handle ${fh}`);
    return handle;
  }

  add(handle: Handle): number {
    const fh = this.nextFh++;
    this.open.set(fh, handle);
    this.counts.set(handle.ino, this.openCount(handle.ino) + 1);
    return fh;
  }

  /** Removes handle `fh` (EBADF if there is none) and returns what it was. */
  remove(fh: number): Handle {
    const handle = this.get(fh);
    this.open.delete(fh);
    const count = this.openCount(handle.ino) - 1;
    if (count === 0) this.counts.delete(handle.ino);
    else this.counts.set(handle.ino, count);
    return handle;
  }

  openCount(ino: number): number {
    return this.counts.get(ino) ?? 0;
  }

  /** Every handle becomes invalid (the filesystem closed). */
  clear(): void {
    this.open.clear();
    this.counts.clear();
  }
}
