/**
 * ext4 served by fuse2fs (libfuse 2): an image of the same size as the
 * others, `mkfs.ext4 -F -q -b 4096` (4 KiB blocks like grovefs, also for the
 * small --quick images, where mkfs.ext4 would pick 1 KiB), served by
 * `fuse2fs IMG MNT -f -o big_writes` (Debian's fuse2fs 1.47 already adds
 * kernel_cache,use_ino,attr_timeout=0,big_writes by itself). fuse2fs does
 * not write ext4's journal: it warns, then writes in place.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { ensureCommands } from "../host.js";
import { runOk } from "../proc.js";
import { ServerMount } from "../server.js";
import type { Target } from "../target.js";

const mkfsTimeoutMs = 300_000;

export const fuse2fs: Target = {
  name: "fuse2fs",
  describe: () => "ext4 image (mkfs.ext4 -b 4096) served by fuse2fs -o big_writes (libfuse 2)",
  prepare: async () => ensureCommands(["fuse2fs", "mkfs.ext4"], ["fuse2fs", "e2fsprogs"]),
  setup: async (env, dir) => {
    const img = path.join(dir, "ext4.img");
    const mnt = path.join(dir, "mnt");
    fs.closeSync(fs.openSync(img, "w"));
    fs.truncateSync(img, env.imageBytes);
    await runOk(["mkfs.ext4", "-F", "-q", "-b", "4096", img], { timeoutMs: mkfsTimeoutMs });
    const mount = new ServerMount("fuse2fs", mnt, true, ["fuse2fs", img, mnt, "-f", "-o", "big_writes"], path.join(dir, "server.log"), () =>
      fs.rmSync(img, { force: true }),
    );
    await mount.mount();
    return mount;
  },
};
