/**
 * bench:fs's command line: the sweep (the default) or, with --compress, the
 * compression benchmark. Sizes take "1G", "64M", "512k", "1GiB" or a plain
 * byte count, in whole MiB.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { parseArgs } from "node:util";
import { GiB, MiB, repoRoot } from "./proc.js";
import { defaultTargets, targets } from "./targets/index.js";
import type { Params } from "./workload.js";
import { workloads } from "./workloads/index.js";

export interface SweepConfig {
  params: Params;
  imageBytes: number;
  runs: number;
  targets: string[];
  workloads: string[];
  /** The tree cp -a copies (symlinks followed), at most treeCapBytes of it. */
  treeSource: string;
  treeCapBytes: number;
  /** The repository git clone clones (a bare copy of it). */
  gitSource: string;
  quick: boolean;
}

export interface CompressConfig {
  dataBytes: number;
  imageBytes: number;
  treeSource: string;
  treeCapBytes: number;
  /** Runs of each measurement per target (at least 3). */
  runs: number;
}

export type Config = { verbose: boolean } & ({ mode: "sweep"; sweep: SweepConfig } | { mode: "compress"; compress: CompressConfig });

export const usage = `usage: npm run bench:fs -- [--quick] [--runs N] [--targets a,b,...] [--workloads x,y,...]
                          [--size 512M] [--rand-size 128M] [--files 10000] [--tree DIR] [--tree-size 300M]
                          [--git-repo DIR] [--image-size 4×max(size,rand-size,tree-size)] [--runtime 30] [--verbose]
       npm run bench:fs -- --compress [--size 1G] [--tree-size 300M] [--tree DIR] [--runs 3] [--image-size ...]
                          [--quick] [--verbose]
targets:   ${targets.map((t) => t.name).join(", ")} (default: ${defaultTargets.join(",")})
workloads: ${workloads.map((w) => w.name).join(", ")} (default: all)
--quick:   --size 64M --rand-size 16M --files 1000 --tree-size 30M --runtime 15 --runs 1 unless given
           (--compress: --size 64M --tree-size 64M)
--tree:    default the repo's node_modules; --git-repo: default this repository
--compress: grovefs with mkfs --compress lz4 against --compress none: a source tree (cp -r, space, read)
            and a --size file of random bytes, medians of --runs runs alternating the two`;

/** "1G", "64M", "512k", "1GiB", or a plain byte count, in whole MiB. */
export function parseBytes(name: string, text: string): number {
  const m = /^(\d+)\s*([kmgt]?)(i?b)?$/i.exec(text.trim());
  if (!m) throw new Error(`--${name}: cannot read "${text}" as a size (e.g. 1G, 64M, 1048576)`);
  const unit = { "": 1, k: 1024, m: MiB, g: GiB, t: 1024 * GiB }[m[2].toLowerCase() as "" | "k" | "m" | "g" | "t"];
  const bytes = Number(m[1]) * unit;
  if (!Number.isSafeInteger(bytes) || bytes < MiB || bytes % MiB !== 0) {
    throw new Error(`--${name}: must be a whole number of MiB, at least 1 MiB, got "${text}"`);
  }
  return bytes;
}

function positiveInteger(name: string, text: string, min = 1): number {
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < min) throw new Error(`--${name} must be an integer of at least ${min}, got "${text}"`);
  return n;
}

/** A comma-separated list of names, each one of `known`, without repeats. */
function nameList(flag: string, text: string, known: readonly string[]): string[] {
  const names = [...new Set(text.split(",").map((s) => s.trim()).filter(Boolean))];
  if (names.length === 0) throw new Error(`--${flag}: none given`);
  for (const n of names) {
    if (!known.includes(n)) throw new Error(`--${flag}: unknown "${n}" (known: ${known.join(", ")})`);
  }
  return names;
}

function directory(flag: string, dir: string): string {
  const resolved = path.resolve(dir);
  if (!fs.statSync(resolved, { throwIfNoEntry: false })?.isDirectory()) throw new Error(`--${flag}: ${resolved} is not a directory`);
  return resolved;
}

const options = {
  size: { type: "string" },
  "image-size": { type: "string" },
  "rand-size": { type: "string" },
  files: { type: "string" },
  targets: { type: "string" },
  workloads: { type: "string" },
  compress: { type: "boolean", default: false },
  tree: { type: "string" },
  "tree-size": { type: "string" },
  "git-repo": { type: "string" },
  runs: { type: "string" },
  runtime: { type: "string" },
  quick: { type: "boolean", default: false },
  verbose: { type: "boolean", default: false },
  help: { type: "boolean", default: false },
} as const;

type Values = ReturnType<typeof parseArgs<{ options: typeof options; strict: true }>>["values"];

export function parseConfig(argv: string[]): Config | "help" {
  const { values } = parseArgs({ args: argv, options, strict: true });
  if (values.help) return "help";
  const verbose = values.verbose!;
  if (values.compress) return { verbose, mode: "compress", compress: parseCompressConfig(values) };
  return { verbose, mode: "sweep", sweep: parseSweepConfig(values) };
}

function parseSweepConfig(values: Values): SweepConfig {
  const quick = values.quick!;
  const seqBytes = parseBytes("size", values.size ?? (quick ? "64M" : "512M"));
  const randBytes = parseBytes("rand-size", values["rand-size"] ?? (quick ? "16M" : "128M"));
  const treeCapBytes = parseBytes("tree-size", values["tree-size"] ?? (quick ? "30M" : "300M"));
  const largest = Math.max(seqBytes, randBytes, treeCapBytes);
  const imageBytes = values["image-size"] ? parseBytes("image-size", values["image-size"]) : 4 * largest;
  if (imageBytes < 2 * largest) throw new Error("--image-size must be at least twice --size, --rand-size and --tree-size");
  return {
    params: {
      seqBytes,
      randBytes,
      files: positiveInteger("files", values.files ?? (quick ? "1000" : "10000")),
      fioRuntimeCapSeconds: positiveInteger("runtime", values.runtime ?? (quick ? "15" : "30")),
    },
    imageBytes,
    runs: positiveInteger("runs", values.runs ?? (quick ? "1" : "3")),
    targets: nameList("targets", values.targets ?? defaultTargets.join(","), targets.map((t) => t.name)),
    workloads: nameList("workloads", values.workloads ?? workloads.map((w) => w.name).join(","), workloads.map((w) => w.name)),
    treeSource: directory("tree", values.tree ?? path.join(repoRoot, "node_modules")),
    treeCapBytes,
    gitSource: directory("git-repo", values["git-repo"] ?? repoRoot),
    quick,
  };
}

function parseCompressConfig(values: Values): CompressConfig {
  for (const flag of ["targets", "workloads", "files", "rand-size", "git-repo", "runtime"] as const) {
    if (values[flag] !== undefined) throw new Error(`--${flag} does not apply with --compress (it compares grovefs lz4 with grovefs none)`);
  }
  const quick = values.quick!;
  const dataBytes = parseBytes("size", values.size ?? (quick ? "64M" : "1G"));
  const treeCapBytes = parseBytes("tree-size", values["tree-size"] ?? (quick ? "64M" : "300M"));
  const runs = positiveInteger("runs", values.runs ?? "3", 3);
  const imageBytes = values["image-size"] ? parseBytes("image-size", values["image-size"]) : 4 * Math.max(dataBytes, treeCapBytes);
  if (imageBytes < 2 * Math.max(dataBytes, treeCapBytes)) throw new Error("--image-size must be at least twice --size and --tree-size");
  const treeSource = directory("tree", values.tree ?? path.join(repoRoot, "node_modules"));
  return { dataBytes, imageBytes, treeSource, treeCapBytes, runs };
}
