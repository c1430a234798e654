/**
 * cp -a of the staged tree into the mount, then `sync -f` (syncfs: all of a
 * kernel filesystem, and the dirty pages of a FUSE mount) and `sync` of the
 * copy (an fsync of its directory: FUSE_SYNCFS never reaches a server
 * mounted on an image file, an fsync does, and grovefs commits everything on
 * it) → seconds. The source is on tmpfs, so reading it costs the same for
 * every target.
 */
import * as path from "node:path";
import type { TreeSet } from "../data_set.js";
import { runOk, sh, timed } from "../proc.js";
import { realWorkloadGoals, type Workload, type WorkloadContext } from "../workload.js";

export const treeOn = (ctx: WorkloadContext): string => path.join(ctx.mnt, "tree");

export function stagedTree(ctx: WorkloadContext): TreeSet {
  if (ctx.data.tree === null) throw new Error("no tree was staged");
  return ctx.data.tree;
}

/** cp -a sets each file's owner: every workload that starts from the copy needs chown. */
export const treeNeeds = ["chown"];

const copyScript = 'cp -a "$1" "$2" && sync -f "$2" && sync "$2"';

/** The untimed copy that tar, du, find and rm -rf start from when cp-a is not selected. */
export async function copyTree(ctx: WorkloadContext): Promise<void> {
  await runOk(sh(copyScript, stagedTree(ctx).dir, treeOn(ctx)));
}

export const cpA: Workload = {
  name: "cp-a",
  label: "cp -a tree + sync",
  unit: "s",
  group: "tree",
  cold: false,
  real: true,
  goals: realWorkloadGoals,
  needs: treeNeeds,
  run: (ctx) => timed(sh(copyScript, stagedTree(ctx).dir, treeOn(ctx))),
};
