/**
 * A target is one filesystem the benchmark measures. Adding one is one file
 * under targets/ implementing `Target`, plus its line in targets/index.ts.
 *
 * Each job of the sweep gets a fresh, empty filesystem from `setup`, runs its
 * workloads on `mountpoint`, and ends with `teardown`, which must leave
 * nothing mounted and nothing attached (cleanup.ts covers an interrupted
 * run: register mount points in mounts.ts and anything else as a hook).
 */

export interface TargetEnv {
  /** Scratch directory on the disk the images live on (under /tmp). */
  workDir: string;
  /** Scratch directory on tmpfs (/dev/shm), for what should live in memory. */
  shmDir: string;
  /** Size of each image or filesystem, in bytes. */
  imageBytes: number;
}

export interface Mounted {
  mountpoint: string;
  /**
   * Whether `remount` brings the same contents back (an image, a backing
   * directory). The in-memory ceiling loses everything with its server, so
   * it is never remounted: only the kernel caches are dropped for it.
   */
  persistent: boolean;
  /** Unmounts and mounts again, so that the target's own caches start cold. */
  remount(): Promise<void>;
  /** Unmounts and deletes the filesystem. */
  teardown(): Promise<void>;
}

export interface Target {
  /** As given to --targets. */
  name: string;
  /** One line for the header: how it is made and served (may change once prepare has run). */
  describe(): string;
  /**
   * Runs once per sweep before any job: installs or builds what the target
   * needs and checks that it can work here. Returns null when it can, else
   * why not: the target is then skipped, with that message.
   */
  prepare(env: TargetEnv): Promise<string | null>;
  /** What it cannot do (e.g. "chown"): workloads that need one of these are not run on it, and show n/a. */
  lacks?: readonly string[];
  /** A fresh, empty filesystem, mounted under `dir` (a new directory of the job's own). */
  setup(env: TargetEnv, dir: string): Promise<Mounted>;
}

/** Thrown by `setup` when the target turns out not to work here at all: the sweep skips it from then on, without counting an error. */
export class TargetUnavailable extends Error {}
