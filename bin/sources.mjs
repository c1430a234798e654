// Where the compiled modules live, and whether they are current: shared by
// bin/grovefs.mjs (which runs dist/ only when it is) and scripts/build.mjs.
import * as fs from "node:fs";
import * as path from "node:path";

/** The runtime source folders: what tsconfig.build.json compiles. */
export const sourceDirs = ["kvstore", "alloc", "snapshot", "fs", "cli"];

export function distDir(root) {
  return path.join(root, "dist");
}

/** Written at the end of a successful build. */
export function buildStamp(root) {
  return path.join(distDir(root), ".built");
}

/** The newest mtime (ms) of a .ts file under `dir`, or of the folder itself (a deleted file changes it). */
function newestSource(dir) {
  let newest = fs.statSync(dir).mtimeMs;
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, entry.name);
    if (entry.isDirectory()) newest = Math.max(newest, newestSource(p));
    else if (entry.name.endsWith(".ts")) newest = Math.max(newest, fs.statSync(p).mtimeMs);
  }
  return newest;
}

/** Whether dist/ was built after the last change to any source file (and the build config). */
export function builtIsCurrent(root) {
  let built;
  try {
    built = fs.statSync(buildStamp(root)).mtimeMs;
  } catch {
    return false;
  }
  try {
    let newest = Math.max(fs.statSync(path.join(root, "tsconfig.json")).mtimeMs, fs.statSync(path.join(root, "tsconfig.build.json")).mtimeMs);
    for (const dir of sourceDirs) newest = Math.max(newest, newestSource(path.join(root, dir)));
    // >=: npm pack gives every file of a package the same mtime.
    return built >= newest;
  } catch {
    // A source folder or config missing: this is not a tree the build can be checked against.
    return false;
  }
}
