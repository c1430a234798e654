/**
 * Several subvolumes of one image mounted at once: a second `grovefs mount
 * IMAGE MNT2 --subvol NAME` attaches to the daemon already serving the
 * image, which then serves each mountpoint with its own subvolume on one
 * volume and one commit stream. Real mounts through the kernel, the real
 * CLI, everything in the mounts touched from child processes only.
 *
 * A scrub running when the first mount goes on through the one left.
 *
 * Time budget: about 45 s on an idle machine.
 */
import * as fsp from "node:fs/promises";
import { afterEach, describe, expect, it } from "vitest";
import { expectOneLineError } from "./cli_helpers.js";
import { E2eVolume, checksums, e2eSkipReason, mountsAt, ok, pidsHolding, sh, shRun, waitFor } from "./e2e_helpers.js";

let volume: E2eVolume | null = null;

afterEach(async () => {
  await volume?.cleanup();
  volume = null;
});

const timeout = 120_000;

/** A fresh volume mounted at MNT, with more (empty) mountpoints beside it. */
async function mounted(name: string, extra: string[]): Promise<{ v: E2eVolume; mnts: string[] }> {
  const v = await E2eVolume.mounted(name, "1G");
  volume = v;
  const mnts: string[] = [];
  for (const dir of extra) {
    const mnt = v.out(dir);
    await fsp.mkdir(mnt);
    mnts.push(mnt);
  }
  return { v, mnts };
}

/** `grovefs mount IMAGE mnt ARGS`, then the mount is in the table and usable. */
async function mountAt(v: E2eVolume, mnt: string, args: string[] = []): Promise<void> {
  await v.groveOk(["mount", v.image, mnt, ...args]);
  expect((await mountsAt(mnt)).at(-1)?.fstype).toBe("fuse.grovefs");
  await ok("ls", ["-a", mnt], { timeoutMs: 30_000 });
}

async function umountAt(v: E2eVolume, mnt: string): Promise<void> {
  await v.groveOk(["umount", mnt]);
  expect(await mountsAt(mnt), `${mnt} is still mounted`).toEqual([]);
}

interface Listed {
  name: string;
  readOnly: boolean;
  mountpoints: string[];
}

async function listed(v: E2eVolume, target: string): Promise<Map<string, Listed>> {
  const records = JSON.parse((await v.groveOk(["subvolume", "list", target, "--json"])).stdout) as Listed[];
  return new Map(records.map((r) => [r.name, r]));
}

/** The one process holding the image: every mount is served by it. */
async function theDaemon(v: E2eVolume): Promise<number> {
  const pids = await pidsHolding(v.image);
  expect(pids, "one process holds the image").toHaveLength(1);
  return pids[0]!;
}

describe.skipIf(e2eSkipReason !== null)("e2e: several subvolumes mounted at once", () => {
  it(
    "the default, a clone and a snapshot at once: writes, snapshots of each, the list's mountpoints, refused deletions, umount of one",
    async () => {
      const { v, mnts } = await mounted("multisub", ["mnt2", "mnt3"]);
      const [mnt2, mnt3] = mnts as [string, string];
      await sh(`cd "$1" && mkdir d && echo original > f && head -c 2000000 /dev/urandom > d/big`, [v.mnt]);
      await v.groveOk(["clone", v.mnt, "default", "c1"]);
      await v.groveOk(["snapshot", "create", v.mnt, "before"]);
      const daemon = await theDaemon(v);

      await mountAt(v, mnt2, ["--subvol", "c1"]);
      await mountAt(v, mnt3, ["--subvol", "before"]);
      expect(await theDaemon(v), "the second and third mounts are served by the first mount's daemon").toBe(daemon);
      for (const mnt of [v.mnt, mnt2, mnt3]) expect((await v.pidRecord(mnt))?.pid).toBe(daemon);
      expect((await mountsAt(mnt2)).at(-1)!.options.split(",")).toContain("rw");
      expect((await mountsAt(mnt3)).at(-1)!.options.split(",")).toContain("ro");

      // Writes to each land in its own subvolume only; the snapshot refuses them.
      await sh(`cd "$1" && echo default > f && echo only-default > g`, [v.mnt]);
      await sh(`cd "$1" && echo clone > f && head -c 3000000 /dev/urandom > h && rm d/big`, [mnt2]);
      expect(await sh(`cat "$1/f" "$2/f" "$3/f"`, [v.mnt, mnt2, mnt3])).toBe("default\nclone\noriginal\n");
      expect(await sh(`ls "$1"; ls "$2"; ls "$3/d"`, [v.mnt, mnt2, mnt3])).toBe("d\nf\ng\nd\nf\nh\nbig\n");
      const refused = await shRun(`echo x > "$1/new"`, [mnt3]);
      expect(refused.code).not.toBe(0);
      expect(refused.stderr).toMatch(/Read-only file system/);

      // The list says where each subvolume is mounted, through any of the mounts.
      const list = await listed(v, mnt2);
      expect(list.get("default")!.mountpoints).toEqual([v.mnt]);
      expect(list.get("c1")!.mountpoints).toEqual([mnt2]);
      expect(list.get("before")!.mountpoints).toEqual([mnt3]);
      const text = (await v.groveOk(["subvolume", "list", v.mnt])).stdout;
      expect(text.split("\n")[0]).toMatch(/MOUNTED$/);
      expect(text).toMatch(new RegExp(`^c1 .* ${mnt2}$`, "m"));

      // A snapshot of each mount is of its own subvolume, with what was written to it; every mount sees it.
      expect(await ok("ls", [`${v.mnt}/.snapshots`])).toBe("before\n");
      const fromClone = await v.groveOk(["snapshot", "create", mnt2, "of-clone"]);
      expect(fromClone.stdout).toMatch(/^snapshot 'of-clone' of 'c1' created/);
      const fromDefault = await v.groveOk(["snapshot", "create", v.mnt, "of-default"]);
      expect(fromDefault.stdout).toMatch(/^snapshot 'of-default' of 'default' created/);
      expect(await ok("ls", [`${v.mnt}/.snapshots`])).toBe("before\nof-clone\nof-default\n");
      expect(await sh(`cat "$1/.snapshots/of-clone/f" "$2/.snapshots/of-default/g"`, [v.mnt, mnt2])).toBe("clone\nonly-default\n");
      expect(await sh(`cmp "$1/h" "$2/.snapshots/of-clone/h" && echo same`, [mnt2, v.mnt])).toBe("same\n");

      // A subvolume mounted anywhere cannot be deleted, through any mount.
      expectOneLineError(await v.grove(["subvolume", "delete", v.mnt, "c1"]), new RegExp(`cannot delete 'c1': it is the subvolume mounted at ${mnt2}`));
      expectOneLineError(await v.grove(["snapshot", "delete", mnt2, "before"]), new RegExp(`cannot delete 'before': it is the subvolume mounted at ${mnt3}`));
      // A snapshot deleted through one mount is gone from the others at once.
      expect(await ok("ls", [`${v.mnt}/.snapshots/of-clone`])).toBe("d\nf\nh\n");
      await v.groveOk(["snapshot", "delete", mnt2, "of-clone"]);
      expect(await ok("ls", [`${v.mnt}/.snapshots`])).toBe("before\nof-default\n");
      expect((await shRun(`ls "$1/.snapshots/of-clone"`, [v.mnt])).code).not.toBe(0);

      // The first mount (the one that opened the image) goes; the others keep working, in the same daemon.
      const sums = await checksums(mnt2);
      await umountAt(v, v.mnt);
      expect(await theDaemon(v)).toBe(daemon);
      expect(await checksums(mnt2)).toEqual(sums);
      await sh(`cd "$1" && echo later > later && sync later`, [mnt2]);
      expect(await ok("cat", [`${mnt3}/f`])).toBe("original\n");
      expect((await listed(v, mnt3)).get("default")!.mountpoints).toEqual([]);
      // Mounted again, it attaches to the same daemon; then the clone can go once it is unmounted.
      await mountAt(v, v.mnt);
      expect(await theDaemon(v)).toBe(daemon);
      expect(await ok("cat", [v.in("g")])).toBe("only-default\n");
      const cloneSums = await checksums(mnt2);
      await umountAt(v, mnt2);
      expect(await theDaemon(v)).toBe(daemon);
      await v.groveOk(["clone", v.mnt, "c1", "c2"]);
      await v.groveOk(["subvolume", "delete", v.mnt, "c1"]);

      // The last umount ends the daemon.
      await umountAt(v, mnt3);
      await v.umount();
      expect(await waitFor(() => pidsHolding(v.image).then((p) => p.length === 0), 30_000)).toBe(true);
      v.check();
      await v.mount(["--subvol", "c2"]);
      expect(await checksums(v.mnt)).toEqual(cloneSums);
      await v.finish();
    },
    timeout,
  );

  it(
    "kill -9 of the daemon: every mount errors out, and a remount of both recovers what was synced, fsck clean",
    async () => {
      const { v, mnts } = await mounted("multikill", ["mnt2"]);
      const [mnt2] = mnts as [string];
      await v.groveOk(["clone", v.mnt, "default", "c1"]);
      await mountAt(v, mnt2, ["--subvol", "c1"]);
      await sh(`cd "$1" && mkdir a && for i in $(seq 1 50); do echo "default $i" > a/f$i; done`, [v.mnt]);
      await sh(`cd "$1" && head -c 4000000 /dev/urandom > big && echo clone > c`, [mnt2]);
      const [sums, sums2] = [await checksums(v.mnt), await checksums(mnt2)];
      // One commit stream: a sync of the first mount makes what was written to the second durable too.
      await v.groveOk(["sync", v.mnt]);
      process.kill(await theDaemon(v), "SIGKILL");
      expect(await waitFor(async () => (await pidsHolding(v.image)).length === 0, 30_000)).toBe(true);
      for (const mnt of [v.mnt, mnt2]) {
        // A listing needs an answer from the daemon (a stat of the root may come from the kernel's cache).
        const r = await shRun(`ls "$1"`, [mnt]);
        expect(r.code, `${mnt} after kill -9`).not.toBe(0);
        // ENOTCONN once the kernel has seen the connection go; ECONNABORTED for a request caught while it aborts it.
        expect(r.stderr).toMatch(/Transport endpoint is not connected|Software caused connection abort/);
      }
      // The stale mounts are cleaned up, the image is clean, and both come back.
      await v.groveOk(["umount", v.mnt]);
      await v.groveOk(["umount", mnt2]);
      v.check();
      await mountAt(v, v.mnt);
      await mountAt(v, mnt2, ["--subvol", "c1"]);
      expect(await checksums(v.mnt)).toEqual(sums);
      expect(await checksums(mnt2)).toEqual(sums2);
      await umountAt(v, mnt2);
      await v.finish();
    },
    timeout,
  );

  it(
    "a scrub going when the first mount is unmounted goes on through the other mount, and finishes there",
    async () => {
      const { v, mnts } = await mounted("multiscrub", ["mnt2"]);
      const [mnt2] = mnts as [string];
      await v.groveOk(["clone", v.mnt, "default", "c1"]);
      await mountAt(v, mnt2, ["--subvol", "c1"]);
      await sh(`mkdir -p "$1/d" && for i in $(seq 1 200); do head -c 6000 /dev/urandom > "$1/d/f$i"; done`, [v.mnt]);
      // About 50 blocks a second: the pass takes several seconds.
      await v.groveOk(["scrub", "--rate", "0.2", "--background", v.mnt]);
      await new Promise((resolve) => setTimeout(resolve, 1500));
      await umountAt(v, v.mnt);
      type Status = { state: string; resumed: number; bytesRead: number; uncorrected: number };
      const status = async (): Promise<Status> => JSON.parse((await v.groveOk(["scrub", "status", "--json", mnt2])).stdout) as Status;
      const after = await status();
      expect(after.state).toBe("running");
      let record = after;
      expect(await waitFor(async () => (record = await status()).state !== "running", 90_000), "the scrub finished through mnt2").toBe(true);
      expect(record.state).toBe("finished");
      expect(record.resumed, "a hand-over is not a resume").toBe(0);
      expect(record.uncorrected).toBe(0);
      expect(record.bytesRead).toBeGreaterThan(after.bytesRead);
      await umountAt(v, mnt2);
      v.check();
    },
    timeout,
  );

  it(
    "refuses a subvolume mounted twice, a missing one, --foreground, and a writable mount beside a read-only one",
    async () => {
      const { v, mnts } = await mounted("multirefuse", ["mnt2"]);
      const [mnt2] = mnts as [string];
      await v.groveOk(["clone", v.mnt, "default", "c1"]);
      expectOneLineError(await v.grove(["mount", v.image, mnt2]), new RegExp(`subvolume 'default' of .* is already mounted at ${v.mnt}`));
      expectOneLineError(await v.grove(["mount", v.image, mnt2, "--subvol", "nope"]), /cannot mount subvolume 'nope'/);
      expectOneLineError(await v.grove(["mount", "--foreground", v.image, mnt2, "--subvol", "c1"]), /already served at .* drop --foreground/);
      expect(await mountsAt(mnt2)).toEqual([]);
      await v.umount();
      await v.mount(["-o", "ro"]);
      expectOneLineError(await v.grove(["mount", v.image, mnt2, "--subvol", "c1"]), /mounted read-only at .* must be read-only too/);
      await mountAt(v, mnt2, ["--subvol", "c1", "-o", "ro"]);
      expect((await mountsAt(mnt2)).at(-1)!.options.split(",")).toContain("ro");
      await umountAt(v, mnt2);
      await v.finish();
    },
    timeout,
  );
});
