/**
 * Metadata rates from scripts/bench_fs_worker.ts, run as a child process:
 * create, stat (cold), unlink of --files empty files in one directory →
 * ops/s of the worker's own timed loop.
 */
import * as path from "node:path";
import { commandTimeoutMs, repoRoot, runOk, tsNode } from "../proc.js";
import type { Workload, WorkloadContext } from "../workload.js";

const workerScript = path.join(repoRoot, "scripts", "bench_fs_worker.ts");

async function phase(ctx: WorkloadContext, name: "create" | "stat" | "unlink"): Promise<number> {
  const r = await runOk([...tsNode, workerScript, name, path.join(ctx.mnt, "meta"), String(ctx.params.files)], { timeoutMs: commandTimeoutMs });
  const { ops, seconds } = JSON.parse(r.stdout.trim().split("\n").pop()!) as { ops: number; seconds: number };
  return ops / seconds;
}

const goals = [{ against: "c-ceiling", min: 0.5 }];
const createFiles = async (ctx: WorkloadContext) => void (await phase(ctx, "create"));

export const create: Workload = {
  name: "create",
  label: "create (empty files)",
  unit: "ops/s",
  group: "meta",
  cold: false,
  real: false,
  goals,
  run: (ctx) => phase(ctx, "create"),
};

export const stat: Workload = {
  name: "stat",
  label: "stat (cold)",
  unit: "ops/s",
  group: "meta",
  cold: true,
  real: false,
  goals,
  prepare: createFiles,
  run: (ctx) => phase(ctx, "stat"),
};

export const unlink: Workload = {
  name: "unlink",
  label: "unlink",
  unit: "ops/s",
  group: "meta",
  cold: false,
  real: false,
  goals,
  prepare: createFiles,
  run: (ctx) => phase(ctx, "unlink"),
};
