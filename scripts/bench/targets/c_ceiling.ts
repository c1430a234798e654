/**
 * The C ceiling: scripts/bench/c_ceiling/passthrough_ll.c, a low-level
 * libfuse 3 passthrough of a tmpfs directory with the writeback cache and
 * 1 MiB requests: what a FUSE server costs when the server itself costs
 * almost nothing. Built once with `cc $(pkg-config --cflags --libs fuse3)`
 * against Debian's libfuse3-dev (installed if missing) and cached under
 * /tmp by the source's hash. Remounting restarts the server over the same
 * backing directory, so it is persistent like an image.
 */
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { ensureInstalled } from "../host.js";
import { commandExists, repoRoot, run, runOk, sh } from "../proc.js";
import { ServerMount } from "../server.js";
import type { Target, TargetEnv } from "../target.js";

const source = path.join(repoRoot, "scripts", "bench", "c_ceiling", "passthrough_ll.c");
const buildCacheDir = "/tmp/grovefs-bench-c-ceiling";
const buildTimeoutMs = 300_000;
const packages = ["gcc", "libc6-dev", "pkg-config", "libfuse3-dev", "fuse3"];

let binary = "";

async function hasFuse3Dev(): Promise<boolean> {
  return commandExists("pkg-config") && (await run(["pkg-config", "--exists", "fuse3"])).code === 0;
}

/** Builds the server unless a binary of this exact source and these flags is cached; returns its path. */
async function build(): Promise<string> {
  const flags = (await runOk(["pkg-config", "--cflags", "--libs", "fuse3"])).stdout.trim();
  const key = createHash("sha256").update(fs.readFileSync(source)).update(flags).digest("hex").slice(0, 16);
  const bin = path.join(buildCacheDir, key, "c_ceiling");
  if (fs.existsSync(bin)) return bin;
  fs.mkdirSync(path.dirname(bin), { recursive: true });
  const partial = `${bin}.${process.pid}.tmp`;
  await runOk(sh('cc -O2 -Wall -o "$1" "$2" $(pkg-config --cflags --libs fuse3)', partial, source), { timeoutMs: buildTimeoutMs });
  fs.renameSync(partial, bin);
  console.log(`  c-ceiling: built ${bin}`);
  return bin;
}

export const cCeiling: Target = {
  name: "c-ceiling",
  describe: () => `libfuse 3 low-level passthrough of tmpfs, writeback cache, max_write 1 MiB${binary ? ` (${binary})` : ""}`,
  prepare: async () => {
    const missing = ensureInstalled(() => [...(commandExists("cc") ? [] : ["cc"]), ...(commandExists("pkg-config") ? [] : ["pkg-config"])], packages);
    if (missing !== null) return missing;
    if (!(await hasFuse3Dev())) {
      const why = ensureInstalled(() => ["libfuse3-dev"], packages);
      if (why !== null || !(await hasFuse3Dev())) return why ?? "pkg-config finds no fuse3 after installing libfuse3-dev";
    }
    try {
      binary = await build();
    } catch (err) {
      return `building ${path.relative(repoRoot, source)} failed: ${err instanceof Error ? err.message : String(err)}`;
    }
    return null;
  },
  setup: async (env: TargetEnv, dir: string) => {
    const backing = path.join(env.shmDir, `${path.basename(dir)}-backing`);
    fs.mkdirSync(backing);
    const mnt = path.join(dir, "mnt");
    const mount = new ServerMount("c-ceiling", mnt, true, [binary, backing, mnt], path.join(dir, "server.log"), () =>
      fs.rmSync(backing, { recursive: true, force: true }),
    );
    await mount.mount();
    return mount;
  },
};
