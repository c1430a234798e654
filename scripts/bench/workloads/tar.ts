/**
 * Reads the whole tree back, cold: `tar cf - tree | cat > /dev/null` (cat
 * because tar skips reading the files when its archive is /dev/null itself)
 * → seconds.
 */
import { sh, timed } from "../proc.js";
import { realWorkloadGoals, type Workload } from "../workload.js";
import { copyTree, treeNeeds } from "./cp_a.js";

export const tar: Workload = {
  name: "tar",
  label: "tar cf - tree | cat (cold)",
  unit: "s",
  group: "tree",
  cold: true,
  real: true,
  goals: realWorkloadGoals,
  needs: treeNeeds,
  prepare: copyTree,
  run: (ctx) => timed(sh('tar cf - -C "$1" tree | cat > /dev/null', ctx.mnt)),
};
