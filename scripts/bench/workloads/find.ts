/**
 * `find tree | wc -l`, cold: every directory read → seconds. The count must
 * be the staged tree's files and directories (the copy is complete).
 */
import { sh, timedOutput } from "../proc.js";
import { realWorkloadGoals, type Workload } from "../workload.js";
import { copyTree, stagedTree, treeNeeds, treeOn } from "./cp_a.js";

export const find: Workload = {
  name: "find",
  label: "find tree | wc -l (cold)",
  unit: "s",
  group: "tree",
  cold: true,
  real: true,
  goals: realWorkloadGoals,
  needs: treeNeeds,
  prepare: copyTree,
  run: async (ctx) => {
    const { seconds, stdout } = await timedOutput(sh('find "$1" | wc -l', treeOn(ctx)));
    const tree = stagedTree(ctx);
    const want = tree.files + tree.dirs;
    if (Number(stdout.trim()) !== want) throw new Error(`find listed ${stdout.trim()} entries, the staged tree has ${want}`);
    return seconds;
  },
};
