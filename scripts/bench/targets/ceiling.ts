/**
 * The fuse-native ceiling: scripts/ceiling_fs.ts, a trivial in-memory
 * filesystem on fuse-native with grovefs's mount options, the most any
 * fuse-native filesystem can do here. It keeps everything in its server's
 * memory, so it is never remounted (only the kernel caches are dropped for
 * its cold runs), and it has no chown, symlinks or hard links (so no cp -a).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { repoRoot, tsNode } from "../proc.js";
import { ServerMount } from "../server.js";
import type { Target } from "../target.js";

const ceilingScript = path.join(repoRoot, "scripts", "ceiling_fs.ts");

export const ceiling: Target = {
  name: "ceiling",
  describe: () => "scripts/ceiling_fs.ts: in-memory, fuse-native (libfuse 2), not remounted; no chown, symlinks or hard links",
  lacks: ["chown", "symlinks", "hard links"],
  prepare: async () => (fs.existsSync(ceilingScript) ? null : `${path.relative(repoRoot, ceilingScript)} does not exist`),
  setup: async (_env, dir) => {
    const mnt = path.join(dir, "mnt");
    const mount = new ServerMount("ceiling", mnt, false, [...tsNode, ceilingScript, mnt], path.join(dir, "server.log"), () => undefined);
    await mount.mount();
    return mount;
  },
};
