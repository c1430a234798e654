/** `du -s` of the tree, cold: a stat of every entry → seconds. */
import { timed } from "../proc.js";
import { realWorkloadGoals, type Workload } from "../workload.js";
import { copyTree, treeNeeds, treeOn } from "./cp_a.js";

export const du: Workload = {
  name: "du",
  label: "du -s tree (cold)",
  unit: "s",
  group: "tree",
  cold: true,
  real: true,
  goals: realWorkloadGoals,
  needs: treeNeeds,
  prepare: copyTree,
  run: (ctx) => timed(["du", "-s", treeOn(ctx)]),
};
