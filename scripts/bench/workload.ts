/**
 * A workload is one timed measurement on a mounted target. Adding one is one
 * file under workloads/ exporting a `Workload`, plus its line in
 * workloads/index.ts (whose order is the order of the jobs).
 *
 * Workloads of one `group` share a job: one fresh filesystem per target on
 * which they run in the order listed, each starting from what the ones
 * before it left (cp -a makes the tree that tar, du and find read and rm -rf
 * deletes). The first selected workload of a job runs its `prepare` first,
 * untimed, so that it also works when the ones before it are not selected
 * (`--workloads tar` copies the tree untimed, then times tar).
 *
 * Before every timed run the image's filesystem is synced and, as root, the
 * kernel caches are dropped; a `cold` workload also has its target remounted
 * first (persistent targets only), so that the target's own caches start
 * cold too and what is read back is what reached the image.
 */
import type { DataSets } from "./data_set.js";

/** How a figure reads: rates are better higher, seconds better lower. */
export type Unit = "MB/s" | "IOPS" | "ops/s" | "s";

export interface Params {
  /** Sequential fio file, bytes. */
  seqBytes: number;
  /** Random fio file, bytes. */
  randBytes: number;
  /** Files for the metadata worker. */
  files: number;
  /** fio's --runtime cap for one random job, seconds. */
  fioRuntimeCapSeconds: number;
}

export interface WorkloadContext {
  mnt: string;
  /** Scratch directory outside every mount (fio's JSON output, ...). */
  scratch: string;
  params: Params;
  data: DataSets;
}

/** A ratio grovefs must reach: grovefs against `against` (>1: grovefs is better), at least `min`. */
export interface Goal {
  against: string;
  min: number;
}

export interface Workload {
  /** As given to --workloads. */
  name: string;
  label: string;
  unit: Unit;
  group: string;
  cold: boolean;
  /** Real workloads (commands people run) are judged against fuse2fs and the C ceiling alike. */
  real: boolean;
  goals: Goal[];
  /** What the target must be able to do (see Target.lacks). */
  needs?: readonly string[];
  prepare?(ctx: WorkloadContext): Promise<void>;
  /** Timed: the figure, in `unit`. */
  run(ctx: WorkloadContext): Promise<number>;
}

export const higherIsBetter = (unit: Unit): boolean => unit !== "s";

/** The goals of every real workload: ≥2× faster than fuse2fs, within 2× of the C ceiling. */
export const realWorkloadGoals: Goal[] = [
  { against: "fuse2fs", min: 2 },
  { against: "c-ceiling", min: 0.5 },
];
