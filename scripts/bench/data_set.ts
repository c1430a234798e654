/**
 * The data the real workloads copy, staged once per run outside every mount
 * (on tmpfs for the sweep), so that reading the source costs the same for
 * every target and is not what is measured.
 *
 * The tree: a copy of a real source tree (by default the repo's
 * node_modules) with symlinks followed (each directory once), capped at a
 * number of bytes of file data: files in sorted path order, one that would
 * pass the cap is left out. Following symlinks keeps the tree to plain files
 * and directories, which every target (the in-memory ceiling has no
 * symlinks) can hold.
 *
 * The git repository: a bare clone (--no-hardlinks) of a local repository,
 * by default this one.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { runOk } from "./proc.js";

export interface TreeSet {
  /** The staged tree: copy it with `cp -a DIR MNT/tree`. */
  dir: string;
  source: string;
  bytes: number;
  files: number;
  dirs: number;
  /** Files left out because they would have passed the cap. */
  skipped: number;
  /** The compressor's own figure for the tree's files (summed), when staging was asked for it. */
  lz4Bytes: number;
}

export interface GitSet {
  /** A bare repository: clone it with `git clone --no-hardlinks DIR MNT/clone`. */
  dir: string;
  source: string;
  /** Files in its HEAD, what a clone checks out. */
  files: number;
}

export interface DataSets {
  tree: TreeSet | null;
  git: GitSet | null;
}

/** Copies `source` to `dest`, following symlinks, up to `capBytes` of file data; `measure` sees each file's bytes. */
export function stageTree(source: string, dest: string, capBytes: number, measure?: (data: Buffer) => number): TreeSet {
  const set: TreeSet = { dir: dest, source, bytes: 0, files: 0, dirs: 0, skipped: 0, lz4Bytes: 0 };
  const seen = new Set<string>();
  const walk = (from: string, to: string) => {
    seen.add(fs.realpathSync(from));
    fs.mkdirSync(to);
    set.dirs++;
    for (const name of fs.readdirSync(from).sort()) {
      const src = path.join(from, name);
      const stat = fs.statSync(src, { throwIfNoEntry: false });
      if (stat === undefined) continue; // a dangling symlink
      if (stat.isDirectory()) {
        if (!seen.has(fs.realpathSync(src))) walk(src, path.join(to, name));
      } else if (stat.isFile()) {
        if (set.bytes + stat.size > capBytes) {
          set.skipped++;
          continue;
        }
        const data = fs.readFileSync(src);
        fs.writeFileSync(path.join(to, name), data, { mode: stat.mode & 0o7777 });
        set.bytes += data.length;
        set.files++;
        if (measure) set.lz4Bytes += measure(data);
      }
    }
  };
  walk(source, dest);
  return set;
}

/** git without the user's or the system's configuration, so every run clones the same way. */
export const gitEnv: NodeJS.ProcessEnv = { ...process.env, GIT_CONFIG_NOSYSTEM: "1", GIT_CONFIG_GLOBAL: "/dev/null", GIT_TERMINAL_PROMPT: "0" };

const gitTimeoutMs = 600_000;

export async function stageGitRepo(source: string, dest: string): Promise<GitSet> {
  await runOk(["git", "clone", "--bare", "--no-hardlinks", "-q", source, dest], { env: gitEnv, timeoutMs: gitTimeoutMs });
  const listed = await runOk(["git", "-C", dest, "ls-tree", "-r", "--name-only", "HEAD"], { env: gitEnv, timeoutMs: gitTimeoutMs });
  return { dir: dest, source, files: listed.stdout.split("\n").filter(Boolean).length };
}
