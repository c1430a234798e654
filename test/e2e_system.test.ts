/**
 * grovefs as a system filesystem, through the system's own tools: install-helpers
 * into a scratch prefix (and /sbin/mount.fuse.grovefs, the one place mount(8)
 * looks), then mkfs -t grovefs, mount -t fuse.grovefs with generic options, an
 * fstab line through mount -a -T and mount -T, fsck -t grovefs, the refusals
 * (one line, exit 32), and uninstall-helpers leaving nothing behind. Real mounts
 * as root; every file access goes through a child process. afterAll uninstalls
 * the helpers whatever failed. The tests run in order and share one image:
 * the first mount formats it, the later ones mount what it wrote.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { expectOneLineError } from "./cli_helpers.js";
import { E2eVolume, e2eSkipReason, grove, mountsAt, ok, pidsHolding, repoRoot, run, sh, shRun, waitFor, type RunResult } from "./e2e_helpers.js";

const mountHelper = "/sbin/mount.fuse.grovefs";
const marker = "# grovefs-helper: written by grovefs install-helpers; grovefs uninstall-helpers removes it";
const mountFailed = 32;
const testTimeoutMs = 120_000;

/** A mount(8)-style failure: exit 32 and one line on stderr, ours ("grovefs: ... — ...") unless `mountSays`. */
function expectMountFailure(r: RunResult, pattern: RegExp, mountSays = false): void {
  if (!mountSays) return expectOneLineError({ code: r.code, stdout: r.stdout, stderr: r.stderr }, pattern, mountFailed);
  expect(r.code, r.stderr).toBe(mountFailed);
  const lines = r.stderr.split("\n").filter((line) => line !== "");
  expect(lines, r.stderr).toHaveLength(1);
  expect(lines[0]).toMatch(pattern);
}

describe.skipIf(e2eSkipReason !== null)("e2e: system integration (install-helpers, mount(8), fstab, mkfs(8), fsck(8))", () => {
  let v: E2eVolume;
  /** The prefix install-helpers is given; it does not exist before, so the install creates it. */
  let prefix: string;
  /** PATH with the prefix's sbin first: mkfs(8) finds mkfs.TYPE through PATH, fsck(8) after /sbin. */
  let env: NodeJS.ProcessEnv;

  const system = (cmd: string, args: string[], cwd?: string) => run(cmd, args, { env, ...(cwd === undefined ? {} : { cwd }) });
  const systemOk = (cmd: string, args: string[]) => ok(cmd, args, { env });
  const fstypeAt = async (mountpoint: string) => (await mountsAt(mountpoint)).at(-1)?.fstype;
  /** After a plain umount(8): the daemon commits and exits by itself once the kernel mount is gone. */
  const daemonGone = async (image: string) => expect(await waitFor(async () => (await pidsHolding(image)).length === 0, 30_000)).toBe(true);

  beforeAll(async () => {
    if (fs.existsSync(mountHelper)) throw new Error(`${mountHelper} exists already: remove it (grovefs uninstall-helpers) before this suite`);
    v = await E2eVolume.create("system");
    prefix = v.out("prefix", "inst");
    env = { ...v.env, PATH: `${path.join(prefix, "sbin")}:${process.env.PATH ?? "/usr/sbin:/usr/bin"}` };
    const r = await grove(["install-helpers", "--prefix", prefix], { env });
    expect(r.code, r.stderr).toBe(0);
  }, testTimeoutMs);

  afterAll(async () => {
    await grove(["uninstall-helpers", "--prefix", prefix], { env }).catch(() => undefined);
    // Whatever failed, the system's /sbin keeps nothing of this suite.
    if (fs.existsSync(mountHelper) && fs.readFileSync(mountHelper, "utf8").split("\n")[1] === marker) fs.rmSync(mountHelper);
    await v?.cleanup();
  }, testTimeoutMs);

  it(
    "installs the command and the three helpers, by absolute paths, idempotently, and never over a program not its own",
    async () => {
      const files = [path.join(prefix, "bin", "grovefs"), path.join(prefix, "sbin", "mkfs.grovefs"), path.join(prefix, "sbin", "fsck.grovefs"), mountHelper];
      const grovefsBin = fs.realpathSync(path.join(repoRoot, "bin", "grovefs.mjs"));
      const texts = files.map((file) => fs.readFileSync(file, "utf8"));
      for (const [i, file] of files.entries()) {
        expect(fs.statSync(file).mode & 0o777, file).toBe(0o755);
        expect(texts[i]!.split("\n").slice(0, 2)).toEqual(["#!/bin/sh", marker]);
        expect(texts[i]).toContain(`node='${process.execPath}'`);
        expect(texts[i]).toContain(`grovefs='${grovefsBin}'`);
        expect(texts[i]).not.toMatch(/npx|cd /);
      }
      // The installed command works from anywhere, without PATH.
      const version = await run(files[0]!, ["--version"], { cwd: "/", env: { HOME: "/nonexistent" } });
      expect(version.code, version.stderr).toBe(0);
      expect(version.stdout.trim()).toBe(JSON.parse(fs.readFileSync(path.join(repoRoot, "package.json"), "utf8")).version);

      // Again: the same files.
      await systemOk(process.execPath, [grovefsBin, "install-helpers", "--prefix", prefix]);
      expect(files.map((file) => fs.readFileSync(file, "utf8"))).toEqual(texts);

      // Another prefix holding someone else's mkfs.grovefs: refused before anything is written.
      const other = v.out("other");
      fs.mkdirSync(path.join(other, "sbin"), { recursive: true });
      fs.writeFileSync(path.join(other, "sbin", "mkfs.grovefs"), "#!/bin/sh\necho not grovefs's\n", { mode: 0o755 });
      const refused = await grove(["install-helpers", "--prefix", other], { env });
      expectOneLineError(refused, /mkfs\.grovefs exists and was not written by grovefs install-helpers/, 1);
      expect(fs.existsSync(path.join(other, "bin"))).toBe(false);
      expect(fs.readFileSync(path.join(other, "sbin", "mkfs.grovefs"), "utf8")).toContain("not grovefs's");
      expect(fs.readFileSync(mountHelper, "utf8")).toBe(texts[3]);
    },
    testTimeoutMs,
  );

  it(
    "mkfs -t grovefs, then mount -t fuse.grovefs -o rw,noatime,nofail: files written and read, refusals in one line with exit 32, fsck -t grovefs",
    async () => {
      const formatted = await system("mkfs", ["-t", "grovefs", "--size", "256M", "--label", "sys", v.image]);
      expect(formatted.code, formatted.stderr).toBe(0);
      expect(formatted.stdout).toContain("sys");

      // Relative paths, as a user types them: mount(8) runs the helper in the same directory.
      const mounted = await system("mount", ["-t", "fuse.grovefs", path.basename(v.image), "mnt", "-o", "rw,noatime,nofail"], v.dir);
      expect(mounted.code, `${mounted.stderr}\n${await v.daemonLogs()}`).toBe(0);
      expect(await fstypeAt(v.mnt)).toBe("fuse.grovefs");
      const line = await sh(`grep " $1 " /proc/mounts`, [v.mnt]);
      expect(line.startsWith(`${v.image} ${v.mnt} fuse.grovefs rw,noatime,`), line).toBe(true);
      await sh(`seq 1 100000 > "$1/numbers" && mkdir "$1/d" && echo hello > "$1/d/greeting" && sync "$1/numbers"`, [v.mnt]);
      expect(await sh(`cat "$1/d/greeting" && sha256sum < "$1/numbers"`, [v.mnt])).toBe(await sh(`echo hello && seq 1 100000 | sha256sum`));

      // Refusals, through mount(8) and its helper: the real reason in one line, exit 32.
      expectMountFailure(await system("mount", ["-t", "fuse.grovefs", v.image, v.mnt]), /is already a mount point/);
      // fsck of a mounted image is fsck's operational error (8), through fsck(8) too.
      const busy = await system("fsck", ["-t", "grovefs", "-a", v.image]);
      expect(busy.code, busy.stdout + busy.stderr).toBe(8);

      expect((await system("umount", [v.mnt])).code).toBe(0);
      await daemonGone(v.image);
      expect(await mountsAt(v.mnt)).toEqual([]);

      expectMountFailure(await system("mount", ["-t", "fuse.grovefs", v.image, v.mnt, "-o", "rw,bogus"]), /unknown mount option 'bogus'/);
      expectMountFailure(await system("mount", ["-t", "fuse.grovefs", v.image, v.mnt, "-o", "sync"]), /mount option 'sync' is not supported: grovefs commits on fsync/);
      // mount(8) looks at the mount point itself before it runs the helper.
      expectMountFailure(await system("mount", ["-t", "fuse.grovefs", v.image, v.out("missing")]), /does not exist/, true);
      expectMountFailure(await system(mountHelper, [v.image, v.out("missing")]), /mount point .*missing does not exist/);
      expectMountFailure(await system(mountHelper, [v.image, v.mnt, "-t", "fuse.other"]), /cannot mount type fuse\.other/, true);
      expect(await mountsAt(v.mnt)).toEqual([]);

      for (const args of [[], ["-n"], ["-a"], ["-p"]]) {
        const checked = await system("fsck", ["-t", "grovefs", ...args, v.image]);
        expect(checked.code, checked.stdout + checked.stderr).toBe(0);
        expect(checked.stdout).toMatch(/clean/);
      }
      expect((await system("fsck", ["-t", "grovefs", "-Z", v.image])).code).toBe(16);
      v.check();
    },
    testTimeoutMs,
  );

  it(
    "an fstab line: mount -a -T skips noauto and what is mounted, mount -T MOUNTPOINT mounts one line, with ro and subvol=",
    async () => {
      const second = v.out("second.grove");
      const mntRo = v.out("mnt-ro");
      const mntClone = v.out("mnt-clone");
      for (const dir of [mntRo, mntClone]) fs.mkdirSync(dir, { recursive: true });
      await v.groveOk(["mkfs", second, "--size", "128M"]);
      await v.groveOk(["clone", second, "default", "c1"]);
      const fstab = v.out("fstab");
      fs.writeFileSync(
        fstab,
        [
          "# a scratch fstab",
          `${v.image} ${v.mnt} fuse.grovefs rw,noatime,nofail,_netdev,x-systemd.automount,x-systemd.device-timeout=10 0 0`,
          `${second} ${mntRo} fuse.grovefs defaults,ro,noauto 0 0`,
          `${second} ${mntClone} fuse.grovefs subvol=c1,nosuid,nodev,noauto 0 2`,
          "",
        ].join("\n"),
      );
      const all = await system("mount", ["-a", "-T", fstab]);
      expect(all.code, `${all.stderr}\n${await v.daemonLogs()}`).toBe(0);
      expect(await fstypeAt(v.mnt)).toBe("fuse.grovefs");
      expect(await mountsAt(mntRo)).toEqual([]);
      // noatime is the daemon's to honour (it keeps atime): a cold read leaves it (seen after a remount, past every cache).
      const atime = () => sh(`stat -c %x "$1/numbers"`, [v.mnt]);
      // An atime two days old, which relatime would move at any read (the setup's read may have moved it past mtime already).
      await sh(`touch -a -d "2 days ago" "$1/numbers"`, [v.mnt]);
      const written = await atime();
      await sh(`sleep 1.1 && cat "$1/numbers" > /dev/null`, [v.mnt]);
      expect(await sh(`cat "$1/d/greeting"`, [v.mnt])).toBe("hello\n");
      // Again: everything in it is mounted already, or noauto.
      expect((await system("mount", ["-a", "-T", fstab])).code).toBe(0);
      expect(await mountsAt(v.mnt)).toHaveLength(1);

      // One line by its mount point: the clone (subvol=), then the default subvolume read-only.
      const clone = await system("mount", ["-T", fstab, mntClone]);
      expect(clone.code, `${clone.stderr}\n${await v.daemonLogs()}`).toBe(0);
      expect(await sh(`grep " $1 " /proc/mounts`, [mntClone])).toMatch(/ fuse\.grovefs rw,nosuid,nodev,/);
      await sh(`echo "in the clone" > "$1/only-c1"`, [mntClone]);
      await v.groveOk(["umount", mntClone]);
      const ro = await system("mount", ["-T", fstab, mntRo]);
      expect(ro.code, ro.stderr).toBe(0);
      expect(await sh(`grep " $1 " /proc/mounts`, [mntRo])).toMatch(/ fuse\.grovefs ro,/);
      expect((await shRun(`test -e "$1/only-c1"`, [mntRo])).code).not.toBe(0);
      const write = await shRun(`echo x > "$1/f"`, [mntRo]);
      expect(write.code).not.toBe(0);
      expect(write.stderr).toMatch(/Read-only file system/);
      await v.groveOk(["umount", mntRo]);
      await v.umount();
      await v.mount();
      expect(await atime()).toBe(written);
      // Where relatime (the default) moves it: an atime a day old.
      await sh(`cat "$1/numbers" > /dev/null`, [v.mnt]);
      await v.umount();
      await v.mount();
      expect(await atime()).not.toBe(written);
      await v.umount();
      v.check();
      const checked = await system("fsck", ["-t", "grovefs", second]);
      expect(checked.code, checked.stdout + checked.stderr).toBe(0);
    },
    testTimeoutMs,
  );

  it(
    "mounts over a directory that holds files, on either transport, and reports no /dev/fuse access in one line",
    async () => {
      const full = v.out("full");
      fs.mkdirSync(full);
      fs.writeFileSync(path.join(full, "underneath"), "hidden while mounted\n");
      for (const transport of ["kernel", "fuse-native"]) {
        const r = await v.grove(["mount", v.image, full, "-o", `transport=${transport}`]);
        expect(r.code, `${transport}: ${r.stderr}\n${await v.daemonLogs()}`).toBe(0);
        expect((await shRun(`test -e "$1/underneath"`, [full])).code, transport).not.toBe(0);
        expect(await sh(`cat "$1/d/greeting"`, [full])).toBe("hello\n");
        await v.groveOk(["umount", full]);
        expect(fs.readFileSync(path.join(full, "underneath"), "utf8")).toBe("hidden while mounted\n");
      }

      // Without root: /dev/fuse is root's alone here, and that is the reason given, before any daemon starts.
      if ((fs.statSync("/dev/fuse").mode & 0o006) === 0o006) return;
      const open = v.out("open");
      fs.mkdirSync(path.join(open, "mnt"), { recursive: true });
      await v.groveOk(["mkfs", path.join(open, "image.grove"), "--size", "8M"]);
      for (const p of [v.dir, open]) fs.chmodSync(p, 0o755);
      fs.chmodSync(path.join(open, "image.grove"), 0o644);
      const asNobody = await run(
        "setpriv",
        ["--reuid=65534", "--regid=65534", "--clear-groups", process.execPath, path.join(repoRoot, "bin", "grovefs.mjs"), "mount", "image.grove", "mnt"],
        { cwd: open, env: { ...process.env, GROVEFS_RUN_DIR: path.join(open, "run"), HOME: open } },
      );
      expectOneLineError(asNobody, /cannot open \/dev\/fuse: permission denied — mount as root/, mountFailed);
      const helper = await run("setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", process.execPath, path.join(repoRoot, "bin", "grovefs.mjs"), "install-helpers"]);
      expectOneLineError(helper, /install-helpers needs root/, 1);
      v.check();
    },
    testTimeoutMs,
  );

  it(
    "uninstall-helpers removes exactly what install-helpers wrote, and the directories it made",
    async () => {
      const kept = path.join(prefix, "bin", "keep-me");
      fs.writeFileSync(kept, "not ours\n");
      const r = await grove(["uninstall-helpers", "--prefix", prefix], { env });
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toContain(`removed ${mountHelper}`);
      expect(fs.existsSync(mountHelper)).toBe(false);
      // bin/ stays for the file that is not ours; sbin/ goes.
      expect(fs.readdirSync(prefix).sort()).toEqual(["bin"]);
      expect(fs.readdirSync(path.join(prefix, "bin"))).toEqual(["keep-me"]);
      fs.rmSync(prefix, { recursive: true });
      // Installed into a prefix that does not exist and removed again: nothing at all is left, the directories went too.
      await systemOk(process.execPath, [path.join(repoRoot, "bin", "grovefs.mjs"), "install-helpers", "--prefix", prefix]);
      await systemOk(process.execPath, [path.join(repoRoot, "bin", "grovefs.mjs"), "uninstall-helpers", "--prefix", prefix]);
      expect(fs.existsSync(prefix)).toBe(false);
      expect(fs.existsSync(mountHelper)).toBe(false);
      expect(await system("mount", ["-t", "fuse.grovefs", v.image, v.mnt])).toMatchObject({ code: mountFailed });
      const again = await grove(["uninstall-helpers", "--prefix", prefix], { env });
      expect(again.code, again.stderr).toBe(0);
      expect(again.stdout).toContain("no grovefs helpers were installed");
    },
    testTimeoutMs,
  );
});
