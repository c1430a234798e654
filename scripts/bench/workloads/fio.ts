/**
 * fio workloads. All jobs: ioengine=psync, direct=0, one job,
 * fallocate=none (no preallocation, which fuse-native filesystems may not
 * implement).
 *
 *   seq-write   write the --size file in 1 MiB blocks, fsync at the end
 *               (inside fio's runtime) → MB/s (10^6 bytes/s)
 *   seq-read    read it back in 1 MiB blocks, cold → MB/s
 *   rand-read   random 4 KiB reads of the --rand-size file, cold → IOPS
 *   rand-write  random 4 KiB writes to it, fsync at the end (timed) → IOPS
 *
 * Each random job is one pass over the file under fio's random map, so every
 * 4 KiB block is touched exactly once, and fio's default invalidate=1 drops
 * the file's cached pages first: no read can hit the page cache. fio's
 * default fadvise_hint sets POSIX_FADV_RANDOM, which turns readahead off, so
 * each read is one 4 KiB read of the filesystem. Capped at --runtime (IOPS of
 * what ran).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { runOk } from "../proc.js";
import type { Workload, WorkloadContext } from "../workload.js";

export const fioCommon = ["--ioengine=psync", "--direct=0", "--numjobs=1", "--fallocate=none"];
/** Beyond the runtime cap: how long writing or reading a whole file may take. */
const fioSlackMs = 600_000;

export interface FioJob {
  error: number;
  read: { io_bytes: number; bw_bytes: number; iops: number };
  write: { io_bytes: number; bw_bytes: number; iops: number };
}

export async function fio(scratch: string, name: string, args: string[], runtimeCapSeconds = 0): Promise<FioJob> {
  const out = path.join(scratch, `fio-${name}.json`);
  await runOk(["fio", `--name=${name}`, ...fioCommon, ...args, "--output-format=json", `--output=${out}`], {
    timeoutMs: runtimeCapSeconds * 1000 + fioSlackMs,
  });
  const job = (JSON.parse(fs.readFileSync(out, "utf8")) as { jobs: FioJob[] }).jobs[0];
  fs.rmSync(out);
  if (job.error !== 0) throw new Error(`fio ${name}: error ${job.error}`);
  return job;
}

export function expectBytes(what: string, got: number, want: number): void {
  if (got !== want) throw new Error(`${what}: fio moved ${got} bytes, expected ${want}`);
}

const seqFile = (ctx: WorkloadContext) => path.join(ctx.mnt, "seq");
const randFile = (ctx: WorkloadContext) => path.join(ctx.mnt, "rand");

async function writeSeq(ctx: WorkloadContext): Promise<number> {
  const size = ctx.params.seqBytes;
  const w = await fio(ctx.scratch, "seqwrite", [`--filename=${seqFile(ctx)}`, "--rw=write", "--bs=1M", `--size=${size}`, "--end_fsync=1"]);
  expectBytes("seq write", w.write.io_bytes, size);
  return w.write.bw_bytes / 1e6;
}

async function writeRandFile(ctx: WorkloadContext): Promise<void> {
  const size = ctx.params.randBytes;
  const w = await fio(ctx.scratch, "randprep", [`--filename=${randFile(ctx)}`, "--rw=write", "--bs=1M", `--size=${size}`, "--end_fsync=1"]);
  expectBytes("rand prep", w.write.io_bytes, size);
}

const oneRandomPass = (ctx: WorkloadContext) => ["--bs=4k", "--allow_file_create=0", "--randrepeat=1", `--runtime=${ctx.params.fioRuntimeCapSeconds}`];

export const seqWrite: Workload = {
  name: "seq-write",
  label: "fio seq write 1M + fsync",
  unit: "MB/s",
  group: "seq",
  cold: false,
  real: false,
  goals: [{ against: "c-ceiling", min: 0.7 }],
  run: writeSeq,
};

export const seqRead: Workload = {
  name: "seq-read",
  label: "fio seq read 1M (cold)",
  unit: "MB/s",
  group: "seq",
  cold: true,
  real: false,
  goals: [{ against: "c-ceiling", min: 0.7 }],
  prepare: async (ctx) => void (await writeSeq(ctx)),
  run: async (ctx) => {
    const r = await fio(ctx.scratch, "seqread", [`--filename=${seqFile(ctx)}`, "--rw=read", "--bs=1M", "--allow_file_create=0"]);
    expectBytes("seq read", r.read.io_bytes, ctx.params.seqBytes);
    return r.read.bw_bytes / 1e6;
  },
};

export const randRead: Workload = {
  name: "rand-read",
  label: "fio rand read 4k (cold)",
  unit: "IOPS",
  group: "rand",
  cold: true,
  real: false,
  goals: [{ against: "c-ceiling", min: 0.5 }],
  prepare: writeRandFile,
  run: async (ctx) => {
    const cap = ctx.params.fioRuntimeCapSeconds;
    const r = await fio(ctx.scratch, "randread", [`--filename=${randFile(ctx)}`, "--rw=randread", ...oneRandomPass(ctx)], cap);
    return r.read.iops;
  },
};

export const randWrite: Workload = {
  name: "rand-write",
  label: "fio rand write 4k + fsync",
  unit: "IOPS",
  group: "rand",
  cold: false,
  real: false,
  goals: [{ against: "btrfs", min: 1 }],
  prepare: writeRandFile,
  run: async (ctx) => {
    const cap = ctx.params.fioRuntimeCapSeconds;
    const w = await fio(ctx.scratch, "randwrite", [`--filename=${randFile(ctx)}`, "--rw=randwrite", ...oneRandomPass(ctx), "--end_fsync=1"], cap);
    return w.write.iops;
  },
};
