/** `git status --porcelain` in the clone, cold → seconds. The clone must be clean. */
import { gitEnv } from "../data_set.js";
import { timedOutput } from "../proc.js";
import { realWorkloadGoals, type Workload } from "../workload.js";
import { cloneOn, cloneRepo } from "./git_clone.js";

export const gitStatus: Workload = {
  name: "git-status",
  label: "git status (cold)",
  unit: "s",
  group: "git",
  cold: true,
  real: true,
  goals: realWorkloadGoals,
  prepare: cloneRepo,
  run: async (ctx) => {
    const { seconds, stdout } = await timedOutput(["git", "-C", cloneOn(ctx), "status", "--porcelain"], { env: gitEnv });
    if (stdout.trim() !== "") throw new Error(`git status in a fresh clone is not clean: ${stdout.trim().split("\n").slice(0, 3).join(" | ")}`);
    return seconds;
  },
};
