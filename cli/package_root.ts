/**
 * This copy's package folder: the nearest folder above this module that holds
 * grovefs's package.json. The CLI runs from cli/ (through tsx) or from
 * dist/cli/ (the build), so paths are found from here, never by counting `..`.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

let found: string | undefined;

export function packageRoot(): string {
  if (found !== undefined) return found;
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const manifest = path.join(dir, "package.json");
    try {
      if ((JSON.parse(fs.readFileSync(manifest, "utf8")) as { name?: string }).name === "grovefs") return (found = dir);
    } catch {
      // No package.json here, or not ours: look higher.
    }
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error(`no grovefs package.json above ${fileURLToPath(import.meta.url)}`);
    dir = parent;
  }
}
