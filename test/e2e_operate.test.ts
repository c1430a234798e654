/**
 * Operating a mount through the CLI: `grovefs sync` (durable before a kill
 * -9), `grovefs info` on a mountpoint or a mounted image (the daemon's live
 * figures), and the pid and socket files a killed daemon leaves behind
 * (cleaned by the next command). Real mounts, real CLI, children only.
 *
 * Time budget: about 30 s on an idle machine.
 */
import * as fsp from "node:fs/promises";
import { afterEach, describe, expect, it } from "vitest";
import { expectOneLineError } from "./cli_helpers.js";
import { E2eVolume, checksums, e2eSkipReason, mountsAt, pidsHolding, sh, waitFor } from "./e2e_helpers.js";

let volume: E2eVolume | null = null;

afterEach(async () => {
  await volume?.cleanup();
  volume = null;
});

async function mounted(name: string, size = "1G"): Promise<E2eVolume> {
  volume = await E2eVolume.mounted(name, size);
  return volume;
}

/** kill -9 of the daemon; the kernel mount stays, stale, until `grovefs umount` cleans it. */
async function killDaemon(v: E2eVolume): Promise<void> {
  process.kill(await v.daemonPid(), "SIGKILL");
  expect(await waitFor(async () => (await pidsHolding(v.image)).length === 0, 30_000), "the daemon is gone").toBe(true);
}

async function runDirNames(v: E2eVolume): Promise<string[]> {
  return (await fsp.readdir(v.out("run")).catch(() => [] as string[])).sort();
}

const timeout = 120_000;

describe.skipIf(e2eSkipReason !== null)("e2e: operating a mount", () => {
  it(
    "grovefs sync: everything written before it survives kill -9 of the daemon",
    async () => {
      const v = await mounted("sync");
      // Writes, renames and removals, none of them fsynced: only the sync makes them durable.
      await sh(
        `set -e
        cd "$1"
        mkdir -p a/b
        head -c 3000000 /dev/urandom > a/big
        for i in $(seq 1 200); do echo "file $i" > a/b/f$i; done
        echo first > moved && mv moved a/renamed
        rm a/b/f7
        ln a/b/f8 a/hardlink
        ln -s ../big a/b/link`,
        [v.mnt],
      );
      const before = await checksums(v.mnt);
      expect(before.size).toBeGreaterThan(200);
      await v.groveOk(["sync", v.mnt]);
      await killDaemon(v);
      await v.groveOk(["umount", v.mnt]);
      await v.mount();
      expect(await checksums(v.mnt)).toEqual(before);
      expect((await sh(`stat -c %h "$1"`, [v.in("a", "hardlink")])).trim()).toBe("2");
      expect((await sh(`readlink "$1"`, [v.in("a", "b", "link")])).trim()).toBe("../big");
      await v.finish();
    },
    timeout,
  );

  it(
    "grovefs sync takes any path in the mount or the mounted image, and refuses what is not a grovefs mount",
    async () => {
      const v = await mounted("syncargs");
      await sh(`mkdir -p "$1/d" && echo x > "$1/d/f"`, [v.mnt]);
      await v.groveOk(["sync", v.in("d", "f")]);
      await v.groveOk(["sync", v.in("d")]);
      await v.groveOk(["sync", v.image]);
      expectOneLineError(await v.grove(["sync", v.out("missing")]), /no such image or mount point/);
      expectOneLineError(await v.grove(["sync", v.dir]), /no grovefs is mounted there/);
      await v.umount();
      // An unmounted image has nothing uncommitted: accepted, and it stays clean.
      await v.groveOk(["sync", v.image]);
      const notGrove = v.out("zeros");
      await fsp.writeFile(notGrove, Buffer.alloc(1 << 20));
      const r = await v.grove(["sync", notGrove]);
      expect(r.code).not.toBe(0);
      expectOneLineError(r, /grovefs/);
      v.check();
    },
    timeout,
  );

  it(
    "grovefs info on the mountpoint or the mounted image reports the daemon's live figures",
    async () => {
      const v = await mounted("info");
      const empty = JSON.parse((await v.groveOk(["info", v.mnt, "--json"])).stdout);
      expect(empty.mountpoint).toBe(v.mnt);
      expect(empty.inUse).toBe(false);
      // 8 MiB of data, not yet committed (the periodic commit may or may not have run): the daemon counts it.
      await sh(`head -c 8388608 /dev/urandom > "$1/data" && mkdir "$1/d1" "$1/d2"`, [v.mnt]);
      const live = JSON.parse((await v.groveOk(["info", v.mnt, "--json"])).stdout);
      expect(live.usedBytes - empty.usedBytes).toBeGreaterThanOrEqual(8 * 1024 * 1024);
      expect(live.inodes).toBe(empty.inodes + 3);
      expect(live.freeBytes).toBeLessThan(empty.freeBytes);
      const byImage = JSON.parse((await v.groveOk(["info", v.image, "--json"])).stdout);
      expect(byImage.mountpoint).toBe(v.mnt);
      // A periodic commit may run between the two questions and move a few metadata blocks.
      expect(byImage.usedBytes - empty.usedBytes).toBeGreaterThanOrEqual(8 * 1024 * 1024);
      const text = (await v.groveOk(["info", v.mnt])).stdout;
      expect(text).toMatch(new RegExp(`mounted: +at ${v.mnt.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")} \\(live`));
      expect(text).toMatch(/inodes: +4\n/);
      await v.finish();
    },
    timeout,
  );

  it(
    "a killed daemon's pid record and control socket are removed by the next command, and a remount works",
    async () => {
      const v = await mounted("stale");
      const names = await runDirNames(v);
      expect(names.some((n) => n.endsWith(".pid"))).toBe(true);
      expect(names.some((n) => n.endsWith(".sock"))).toBe(true);
      await killDaemon(v);
      // The dead daemon could not remove its files.
      expect((await runDirNames(v)).filter((n) => n.endsWith(".pid") || n.endsWith(".sock"))).toHaveLength(2);
      // Any command tidies them; this one also says what the mount is now.
      expectOneLineError(await v.grove(["snapshot", "list", v.mnt]), /stale grovefs mount/);
      expect((await runDirNames(v)).filter((n) => n.endsWith(".pid") || n.endsWith(".sock"))).toEqual([]);
      expect(await mountsAt(v.mnt)).not.toEqual([]);
      await v.groveOk(["umount", v.mnt]);
      await v.mount();
      expect((await runDirNames(v)).filter((n) => n.endsWith(".pid") || n.endsWith(".sock"))).toHaveLength(2);
      await v.finish();
      expect((await runDirNames(v)).filter((n) => n.endsWith(".pid") || n.endsWith(".sock"))).toEqual([]);
    },
    timeout,
  );
});
