/** Medians, and the ABBA order of the sweep. */

export function median(values: readonly number[]): number | undefined {
  if (values.length === 0) return undefined;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/**
 * The order the targets run in for one job of one run: rotated by the job
 * (so each job starts with another target) and by each pair of runs, and
 * reversed on odd runs (A B C, C B A, B C A, A C B, ...), so that no target
 * is always first or last, on a warmer or colder machine, next to the same
 * neighbour.
 */
export function abbaOrder<T>(items: readonly T[], runIndex: number, jobIndex: number): T[] {
  const n = items.length;
  if (n === 0) return [];
  const shift = (jobIndex + Math.floor(runIndex / 2)) % n;
  const rotated = [...items.slice(shift), ...items.slice(0, shift)];
  return runIndex % 2 === 1 ? rotated.reverse() : rotated;
}
