/** `rm -rf` of the tree, cold → seconds. The tree must be gone afterwards (checked untimed). */
import { runOk, sh, timed } from "../proc.js";
import { realWorkloadGoals, type Workload } from "../workload.js";
import { copyTree, treeNeeds, treeOn } from "./cp_a.js";

export const rmRf: Workload = {
  name: "rm-rf",
  label: "rm -rf tree (cold)",
  unit: "s",
  group: "tree",
  cold: true,
  real: true,
  goals: realWorkloadGoals,
  needs: treeNeeds,
  prepare: copyTree,
  run: async (ctx) => {
    const seconds = await timed(["rm", "-rf", treeOn(ctx)]);
    await runOk(sh('test ! -e "$1"', treeOn(ctx)));
    return seconds;
  },
};
