/**
 * `git clone --no-hardlinks` of the staged bare repository (local, no
 * network) into the mount → seconds. git runs without the user's or the
 * system's configuration.
 */
import * as path from "node:path";
import { gitEnv, type GitSet } from "../data_set.js";
import { runOk, timed } from "../proc.js";
import { realWorkloadGoals, type Workload, type WorkloadContext } from "../workload.js";

export const cloneOn = (ctx: WorkloadContext): string => path.join(ctx.mnt, "clone");

function stagedRepo(ctx: WorkloadContext): GitSet {
  if (ctx.data.git === null) throw new Error("no git repository was staged");
  return ctx.data.git;
}

const cloneArgv = (ctx: WorkloadContext) => ["git", "clone", "-q", "--no-hardlinks", stagedRepo(ctx).dir, cloneOn(ctx)];

/** The untimed clone that git-status starts from when git-clone is not selected. */
export async function cloneRepo(ctx: WorkloadContext): Promise<void> {
  await runOk(cloneArgv(ctx), { env: gitEnv });
}

export const gitClone: Workload = {
  name: "git-clone",
  label: "git clone (local)",
  unit: "s",
  group: "git",
  cold: false,
  real: true,
  goals: realWorkloadGoals,
  run: (ctx) => timed(cloneArgv(ctx), { env: gitEnv }),
};
