/**
 * End to end through the kernel transport (fs/fuse/, the CLI's default as
 * root): what it adds over fuse-native, on real mounts driven by child
 * processes only (see e2e_helpers.ts). Hard links are one kernel inode; the
 * writeback cache keeps bytes, sizes and times right under pwrite, mmap,
 * truncate, O_DIRECT and cache drops (fsx); fallocate, copy_file_range and
 * SEEK_DATA/SEEK_HOLE match models and share or free space as they should;
 * what fsync acknowledged survives a SIGKILL of the daemon; a daemon that
 * serves in place (blocked in read(2) on its JS thread) still runs its
 * commit timer and control socket when idle; the kernel's lookup counts
 * (FORGET) can drop everything without breaking the mount.
 * Every test that mutates a volume ends with the full checker (finish()).
 *
 * The drivers are python3 scripts in test/fixtures/ (each says what it does
 * at its top). The model drivers run first on this tmp dir's own filesystem
 * (ext4 here), which has fallocate, copy_file_range and exact SEEK_DATA, as
 * a control: the bytes they end with on grovefs must be the same.
 *
 * fallocate, copy_file_range and lseek come from the engine (GroveFs.fallocate,
 * copyFileRange, lseek). Until it has them the bridge answers EOPNOTSUPP
 * (fallocate) and ENOSYS (the other two: the kernel then copies bytes itself
 * and treats every byte as data), and the tests that need them fail saying so.
 *
 * Replay a seed with GROVE_SEED=n; GROVE_FSX_OPS, GROVE_FALLOC_OPS and
 * GROVE_COPY_OPS size the randomised parts.
 */
import * as path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { E2eVolume, e2eSkipReason, mountsAt, ok, pidsHolding, processAlive, repoRoot, run, sh, shRun, sleep, waitFor } from "./e2e_helpers.js";
import { seeds, withSeedAsync } from "./helpers.js";

// This suite is about the kernel transport, whatever GROVE_TRANSPORT says (this file's module graph only).
E2eVolume.transport = "kernel";

const testFile = "test/e2e_kernel.test.ts";
const fixtures = path.join(repoRoot, "test", "fixtures");
const MiB = 1024 ** 2;
const fsxOps = Number(process.env.GROVE_FSX_OPS ?? 1200);
const fallocOps = Number(process.env.GROVE_FALLOC_OPS ?? 300);
const copyOps = Number(process.env.GROVE_COPY_OPS ?? 200);
/** A driver's exit status when an operation the filesystem must support answered EOPNOTSUPP or ENOSYS. */
const driverUnsupported = 3;

const notLanded = {
  fallocate:
    "The kernel transport answers FUSE_FALLOCATE with EOPNOTSUPP while the engine has no GroveFs.fallocate " +
    "(fs/fuse/kernel_bridge.ts); this test is written against the real implementation and must pass once it lands.",
  copy:
    "Without GroveFs.copyFileRange the bridge answers FUSE_COPY_FILE_RANGE with ENOSYS and the kernel copies the " +
    "bytes itself (splice): the contents are right but nothing is shared.",
  lseek:
    "Without GroveFs.lseek the bridge answers FUSE_LSEEK with ENOSYS and the kernel's generic fallback reports " +
    "every byte as data and no hole before the end of the file.",
};

let volume: E2eVolume | null = null;

afterEach(async () => {
  await volume?.cleanup();
  volume = null;
});

async function mounted(name: string, size = "2G"): Promise<E2eVolume> {
  volume = await E2eVolume.mounted(name, size);
  return volume;
}

/** A driver's stderr for an error message: the first problems and the closing hint. */
function excerpt(text: string): string {
  return text.length <= 8000 ? text : `${text.slice(0, 6000)}\n[...]\n${text.slice(-1500)}`;
}

/** Runs test/fixtures/SCRIPT ARGS; fails with its stderr unless it exits 0; returns its last stdout line as JSON. */
async function driver<T>(script: string, args: string[], what: string, unsupported = notLanded.fallocate): Promise<T> {
  const r = await run("python3", [path.join(fixtures, script), ...args], { timeoutMs: 300_000 });
  if (r.code === driverUnsupported) throw new Error(`${what}: ${r.stderr.trim()}\n${unsupported}`);
  if (r.code !== 0) {
    throw new Error(`${what}: python3 ${script} ${args.join(" ")} exited ${r.code}${r.signal ? ` (${r.signal})` : ""}\n${excerpt(r.stderr)}`);
  }
  return JSON.parse(r.stdout.trim().split("\n").at(-1) ?? "null") as T;
}

/**
 * The same driver on the tmp dir's own filesystem, outside the mount: what
 * Linux does, to compare with. Null (and a note) when that filesystem lacks
 * one of the operations.
 */
async function control<T>(script: string, args: string[]): Promise<T | null> {
  const r = await run("python3", [path.join(fixtures, script), ...args], { timeoutMs: 300_000 });
  if (r.code === driverUnsupported) {
    console.log(`control run of ${script} skipped: the host filesystem lacks an operation (${r.stderr.trim()})`);
    return null;
  }
  if (r.code !== 0 && r.stderr.includes("Traceback")) {
    // An operation the host filesystem refuses (O_DIRECT or ZERO_RANGE on tmpfs, say): the grovefs run still counts.
    console.log(`control run of ${script} skipped: ${r.stderr.trim().split("\n").at(-1)}`);
    return null;
  }
  if (r.code !== 0) throw new Error(`control run (host filesystem, not grovefs) of ${script} ${args.join(" ")} disagrees with its own model: the driver is wrong\n${excerpt(r.stderr)}`);
  return JSON.parse(r.stdout.trim().split("\n").at(-1)!) as T;
}

/** `python3 -c CODE ARGS` with the fixtures' grove_io importable; returns stdout. */
function py(code: string, args: string[]): Promise<string> {
  return ok("python3", ["-c", `import sys; sys.path.insert(0, ${JSON.stringify(fixtures)})\n${code}`, ...args]);
}

async function sha256(file: string): Promise<string> {
  return (await ok("sha256sum", [file])).split(" ")[0]!;
}

async function statNumber(format: string, file: string): Promise<number> {
  return Number((await ok("stat", ["-c", format, file])).trim());
}

/** Commits the volume: fsync of the mount's root directory (grovefs commits everything on fsync), twice, so that what the first commit freed is free. */
async function commit(v: E2eVolume): Promise<void> {
  await py("import os\nfor _ in range(2):\n    fd = os.open(sys.argv[1], os.O_RDONLY)\n    os.fsync(fd)\n    os.close(fd)", [v.mnt]);
}

/** Used bytes of the mount as df sees them, after a commit; also checks that statfs is self-consistent. */
async function usedBytes(v: E2eVolume): Promise<number> {
  await commit(v);
  const [bsize, blocks, free, avail] = (await ok("stat", ["-f", "-c", "%S %b %f %a", v.mnt])).trim().split(" ").map(Number) as [number, number, number, number];
  expect(free, "statfs: free blocks within the volume").toBeLessThanOrEqual(blocks);
  expect(avail, "statfs: available within free").toBeLessThanOrEqual(free);
  return (blocks - free) * bsize;
}

async function dropCaches(level: 1 | 2 | 3): Promise<void> {
  await sh(`echo ${level} > /proc/sys/vm/drop_caches`);
}

async function remount(v: E2eVolume): Promise<void> {
  await v.umount();
  await v.mount();
}

interface FileSum {
  sha256: string;
  size: number;
}

/** The files under the mount have these contents and sizes. */
async function expectFiles(v: E2eVolume, files: Record<string, FileSum>, when: string): Promise<void> {
  for (const [name, want] of Object.entries(files)) {
    const file = v.in(name);
    expect(await statNumber("%s", file), `${name} size ${when}`).toBe(want.size);
    expect(await sha256(file), `${name} contents ${when}`).toBe(want.sha256);
  }
}

describe.skipIf(e2eSkipReason !== null)("e2e: the kernel transport", () => {
  // ---- inode identity ------------------------------------------------------------

  it("hard links are one kernel inode: a change through one name shows at once through the other; rename and unlink keep nlink exact", async () => {
    const v = await mounted("klinks");
    const [f, g, h] = [v.in("a", "f"), v.in("b", "g"), v.in("a", "h")];
    await sh(`mkdir "$1/a" "$1/b" && printf 'data\\n' > "$2" && ln "$2" "$3"`, [v.mnt, f, g]);
    const format = "%s|%h|%a|%u:%g|%i|%.9Y|%.9Z";
    /** Runs `change` ($1 = f, $2 = g, $3 = h), then stats both names in the same shell at once, and again from other processes. */
    const both = async (change: string) => {
      const lines = (await sh(`${change}\nstat -c '${format}' "$1" "$2"`, [f, g, h])).trim().split("\n");
      expect(lines[1], `after \`${change}\`: the two names disagree`).toBe(lines[0]);
      expect((await ok("stat", ["-c", format, g])).trim(), `after \`${change}\`: another process`).toBe(lines[0]);
      expect((await ok("stat", ["-c", format, f])).trim(), `after \`${change}\`: another process`).toBe(lines[0]);
      const [size, nlink, mode, owner, ino, mtime, ctime] = lines[0]!.split("|");
      return { size: Number(size), nlink: Number(nlink), mode, owner, ino: Number(ino), mtime: mtime!, ctime: ctime! };
    };
    const ns = (t: string) => BigInt(t.replace(".", ""));

    const first = await both(":");
    expect(first).toMatchObject({ size: 5, nlink: 2, mode: "644" });
    const appended = await both(`printf more >> "$1"`);
    expect(appended).toMatchObject({ size: 9, nlink: 2, ino: first.ino });
    expect(await ok("cat", [g])).toBe("data\nmore");
    const truncated = await both(`sleep 0.02; truncate -s 3 "$2"`);
    expect(truncated.size).toBe(3);
    expect(ns(truncated.mtime)).toBeGreaterThan(ns(appended.mtime));
    expect(ns(truncated.ctime)).toBeGreaterThan(ns(appended.ctime));
    const chmodded = await both(`sleep 0.02; chmod 640 "$1"`);
    expect(chmodded.mode).toBe("640");
    expect(chmodded.mtime, "chmod leaves mtime alone").toBe(truncated.mtime);
    expect(ns(chmodded.ctime)).toBeGreaterThan(ns(truncated.ctime));
    expect((await both(`chown 1234:5678 "$2"`)).owner).toBe("1234:5678");
    expect((await both(`touch -m -d '2001-02-03 04:05:06.123456789 UTC' "$2"`)).mtime).toBe("981173106.123456789");
    const written = await both(`printf XY | dd of="$2" bs=1 seek=1 conv=notrunc status=none`);
    expect(written).toMatchObject({ size: 3, nlink: 2, mode: "640", owner: "1234:5678", ino: first.ino });
    expect(await ok("cat", [f])).toBe("dXY");

    // The kernel forgets the inode: what the daemon answers is what the kernel showed.
    await sh(`sync "$1"`, [f]);
    const beforeDrop = (await ok("stat", ["-c", format, f])).trim();
    await dropCaches(2);
    expect((await ok("stat", ["-c", format, g])).trim(), "the attributes after the kernel dropped its inode").toBe(beforeDrop);

    // A third name; a rename of one name over another of the same inode does nothing (rename(2); mv refuses it, so python).
    expect((await both(`ln "$1" "$3"`)).nlink).toBe(3);
    await py("import os\nos.rename(sys.argv[1], sys.argv[2])", [g, h]);
    expect(await statNumber("%i", g), "rename(2) between two links of one inode leaves both").toBe(first.ino);
    expect((await both(":")).nlink).toBe(3);
    expect(await statNumber("%i", h)).toBe(first.ino);
    // Another file renamed over the third name: the survivors lose exactly one link.
    await sh(`printf other > "$1/x" && mv "$1/x" "$2"`, [v.mnt, h]);
    expect((await both(":")).nlink).toBe(2);
    expect((await ok("stat", ["-c", "%h|%s", h])).trim()).toBe("1|5");
    expect(await statNumber("%i", h)).not.toBe(first.ino);
    // Renaming a link keeps the inode; unlinking one name leaves the other with one link.
    await sh(`mv "$1" "$2.moved"`, [g, g]);
    expect(await statNumber("%i", `${g}.moved`)).toBe(first.ino);
    expect(await statNumber("%h", f)).toBe(2);
    await sh(`rm "$1.moved"`, [g]);
    expect((await ok("stat", ["-c", "%h|%i|%s", f])).trim()).toBe(`1|${first.ino}|3`);
    expect(await ok("cat", [f])).toBe("dXY");
    // Listings (readdirplus) give the same inode numbers as stat.
    expect((await sh(`ls -i "$1/a"`, [v.mnt])).trim().split(/\s+/)).toEqual([String(first.ino), "f", String(await statNumber("%i", h)), "h"]);
    await v.finish();
  });

  it("an inode unlinked while the kernel still holds it takes the kernel's time flush: syncfs after rm of a just-written file succeeds", async () => {
    // With the writeback cache the kernel keeps mtime and ctime and writes them back with SETATTR, even after
    // the last name is gone (until FORGET); syncfs(2) reports a failure of that SETATTR.
    const v = await mounted("kunlinked");
    for (let i = 0; i < 3; i++) {
      const r = await shRun(`head -c 100000 /dev/urandom > "$1/f" && rm "$1/f" && sync -f "$1"`, [v.mnt]);
      expect(r.stderr, "sync -f (syncfs) after writing and removing a file").toBe("");
      expect(r.code).toBe(0);
    }
    // The same with the file still open while it is removed.
    const r = await shRun(`exec 3> "$1/g"; head -c 5000 /dev/urandom >&3; rm "$1/g"; exec 3>&-; sync -f "$1"`, [v.mnt]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    await v.finish();
  });

  // ---- fallocate ---------------------------------------------------------------------

  it("fallocate: seeded pwrite, preallocation (mode 0, KEEP_SIZE), PUNCH_HOLE and ZERO_RANGE at any offsets match a model and survive a remount", async () => {
    const v = await mounted("kfalloc");
    const results: Record<string, FileSum> = {};
    for (const seed of seeds([1, 2])) {
      await withSeedAsync(seed, testFile, async () => {
        const args = [String(seed), String(fallocOps)];
        const host = await control<FileSum>("falloc_model.py", [...args, v.out(`control${seed}`)]);
        const got = await driver<FileSum>("falloc_model.py", [...args, v.in(`model${seed}`)], `seed ${seed}`);
        if (host !== null) expect({ sha256: got.sha256, size: got.size }, "the same operations on the host filesystem end with the same bytes").toEqual({ sha256: host.sha256, size: host.size });
        results[`model${seed}`] = { sha256: got.sha256, size: got.size };
      });
    }
    await remount(v);
    await expectFiles(v, results, "after a remount");
    await v.finish();
  });

  it("fallocate: st_blocks, du and df follow preallocation and punched holes; unsupported modes are EOPNOTSUPP; everything survives a remount", async () => {
    const v = await mounted("kfallocspace");
    const f = v.in("pre");
    const blocksBytes = async () => (await statNumber("%b", f)) * 512;
    await sh(`head -c 1048576 /dev/urandom > "$1" && printf seed > "$2" && sync "$2"`, [v.out("patch"), f]);

    // Modes Linux has but grovefs does not offer, and combinations no filesystem takes: EOPNOTSUPP, nothing changes.
    const refused = await py(
      [
        "import errno, os",
        "from grove_io import fallocate",
        "fd = os.open(sys.argv[1], os.O_RDWR)",
        "for mode in (0x08, 0x20, 0x40, 0x80, 0x02, 0x04, 0x12, 0x13):",
        "    try:",
        "        fallocate(fd, mode, 0, 65536)",
        "        print('0x%x ok' % mode)",
        "    except OSError as e:",
        "        print('0x%x %s' % (mode, errno.errorcode[e.errno]))",
      ].join("\n"),
      [f],
    );
    expect(refused.trim().split("\n")).toEqual(["0x8", "0x20", "0x40", "0x80", "0x2", "0x4", "0x12", "0x13"].map((m) => `${m} ENOTSUP`));
    expect(await ok("cat", [f])).toBe("seed");

    const baseline = await usedBytes(v);
    const r = await shRun(`fallocate -l 16M "$1"`, [f]);
    if (/not supported|unsupported/.test(r.stderr)) throw new Error(`fallocate -l 16M: ${r.stderr.trim()}\n${notLanded.fallocate}`);
    expect(r.code, r.stderr).toBe(0);
    expect(await statNumber("%s", f)).toBe(16 * MiB);
    expect(await blocksBytes(), "st_blocks after fallocate -l 16M").toBeGreaterThanOrEqual(16 * MiB);
    expect(await blocksBytes()).toBeLessThan(17 * MiB);
    expect(Number((await ok("du", ["-k", f])).split("\t")[0])).toBeGreaterThanOrEqual(16 * 1024);
    const preallocated = await usedBytes(v);
    expect(preallocated - baseline, "df: used space after preallocating 16 MiB").toBeGreaterThanOrEqual(16 * MiB - 64 * 1024);
    expect(preallocated - baseline).toBeLessThan(18 * MiB);

    // The same steps run on the host filesystem give the expected bytes.
    const steps = [
      `printf seed | dd of="$1" conv=notrunc status=none`,
      `fallocate -n -o 16M -l 8M "$1"`,
      `dd if="$2" of="$1" bs=1M seek=1 conv=notrunc,fsync status=none`,
      `fallocate -p -o 4M -l 8M "$1"`,
      `fallocate -z -o 1500000 -l 1000000 "$1"`,
      `fallocate -p -o 17000001 -l 100 "$1"`,
      `fallocate -z -o 20M -l 1M "$1"`,
      `fallocate -n -o 30M -l 1M "$1"`,
    ];
    const expected = v.out("expected");
    await sh(`fallocate -l 16M "$1"`, [expected]);
    for (const step of steps) await sh(step, [expected, v.out("patch")]);

    await sh(steps[0]!, [f]);
    await sh(steps[1]!, [f, v.out("patch")]);
    expect(await statNumber("%s", f), "KEEP_SIZE keeps the size").toBe(16 * MiB);
    expect(await blocksBytes(), "st_blocks after fallocate -n 8M more").toBeGreaterThanOrEqual(24 * MiB);
    await sh(steps[2]!, [f, v.out("patch")]);
    await dropCaches(2);
    const written = await blocksBytes();
    expect(written, "writing into preallocated blocks").toBeGreaterThanOrEqual(24 * MiB);
    expect(written).toBeLessThan(26 * MiB);
    const beforePunch = await usedBytes(v);
    await sh(steps[3]!, [f]);
    expect(await statNumber("%s", f), "PUNCH_HOLE keeps the size").toBe(16 * MiB);
    expect(await blocksBytes(), "st_blocks after punching 8 MiB").toBeLessThanOrEqual(written - 8 * MiB + 64 * 1024);
    expect(beforePunch - (await usedBytes(v)), "df: space freed by punching 8 MiB").toBeGreaterThanOrEqual(7 * MiB);
    await ok("cmp", ["-n", String(8 * MiB), "-i", `${4 * MiB}:0`, f, "/dev/zero"]);
    for (const step of steps.slice(4)) await sh(step, [f]);
    expect(await statNumber("%s", f), "ZERO_RANGE past the end grows the file; KEEP_SIZE past it does not").toBe(21 * MiB);
    expect(await blocksBytes(), "the KEEP_SIZE preallocation past the end counts").toBeGreaterThanOrEqual(17 * MiB);
    const sum = await sha256(expected);
    expect(await sha256(f), "contents against the same steps on the host filesystem").toBe(sum);
    await dropCaches(1);
    expect(await sha256(f), "contents read back from the daemon").toBe(sum);

    const blocks = await blocksBytes();
    await remount(v);
    expect(await sha256(f), "contents after a remount").toBe(sum);
    expect(await statNumber("%s", f)).toBe(21 * MiB);
    expect(await blocksBytes(), "st_blocks after a remount").toBe(blocks);
    await sh(`rm "$1"`, [f]);
    expect(Math.abs((await usedBytes(v)) - baseline), "df: everything freed by rm").toBeLessThan(MiB);
    await v.finish();
  });

  // ---- copy_file_range -----------------------------------------------------------------

  it("copy_file_range: 64 MiB of random data copied by cp and by copy_file_range(2) shares its extents; writes to either side stay on their side", async () => {
    const v = await mounted("kcopy");
    const [orig, patch] = [v.out("orig"), v.out("patch")];
    const [src, cp1, py1] = [v.in("src"), v.in("cp1"), v.in("py1")];
    await sh(`head -c 64M /dev/urandom > "$1" && head -c 1M /dev/urandom > "$2" && cp "$1" "$3" && sync "$3"`, [orig, patch, src]);
    const origSum = await sha256(orig);
    const before = await usedBytes(v);

    // GNU cp uses copy_file_range(2) (with a huge length) when cloning is refused.
    const trace = v.out("cp.strace");
    await ok("strace", ["-f", "-o", trace, "-e", "trace=copy_file_range", "cp", src, cp1]);
    const calls = (await ok("cat", [trace])).split("\n").filter((line) => line.includes("copy_file_range("));
    expect(calls.length, "cp called copy_file_range").toBeGreaterThan(0);
    expect(calls[0], "cp's first copy_file_range copied bytes").toMatch(/= [1-9]\d*$/);
    expect(calls.filter((line) => /= -1 /.test(line)), "copy_file_range calls that failed").toEqual([]);
    // Python, in pieces whose edges are not block-aligned.
    await py(
      [
        "import os",
        "src, dst = os.open(sys.argv[1], os.O_RDONLY), os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)",
        "at, size = 0, os.fstat(src).st_size",
        "while at < size:",
        "    n = os.copy_file_range(src, dst, min(8 * 1048576 + 12345, size - at), at, at)",
        "    assert n > 0, at",
        "    at += n",
        "os.fsync(dst)",
      ].join("\n"),
      [src, py1],
    );
    const grown = (await usedBytes(v)) - before;
    expect(grown, `used space grew by ${(grown / MiB).toFixed(1)} MiB for two copies of 64 MiB. ${notLanded.copy}`).toBeLessThan(8 * MiB);
    for (const file of [src, cp1, py1]) expect(await sha256(file), `${file} after the copies`).toBe(origSum);

    // Writes on either side afterwards: the other keeps its bytes (the shared extents are copied on write).
    await sh(`dd if="$1" of="$2" bs=1M seek=10 conv=notrunc status=none`, [patch, cp1]);
    await sh(`cp "$1" "$2" && cp "$1" "$3"`, [orig, v.out("expect_cp1"), v.out("expect_src")]);
    await sh(`dd if="$1" of="$2" bs=1M seek=10 conv=notrunc status=none`, [patch, v.out("expect_cp1")]);
    const pwrite = `import os\nfd = os.open(sys.argv[2], os.O_WRONLY)\nos.pwrite(fd, open(sys.argv[1], 'rb').read(5000), 33 * 1048576 + 123)\nos.close(fd)`;
    await py(pwrite, [patch, src]);
    await py(pwrite, [patch, v.out("expect_src")]);
    await dropCaches(1);
    expect(await sha256(py1), "the copy made by copy_file_range after writes to the others").toBe(origSum);
    expect(await sha256(cp1)).toBe(await sha256(v.out("expect_cp1")));
    expect(await sha256(src)).toBe(await sha256(v.out("expect_src")));
    await v.finish();
    const info = JSON.parse((await v.groveOk(["info", "--json", v.image])).stdout) as { usedBytes: number };
    expect(info.usedBytes, "grovefs info: three 64 MiB files that share their data").toBeLessThan(64 * MiB + 24 * MiB);
  });

  it("copy_file_range: seeded copies within a file and across files, unaligned, past EOF, overlapping (EINVAL), then writes, match a model and survive a remount", async () => {
    const v = await mounted("kcopymodel");
    const results: Record<string, FileSum> = {};
    for (const seed of seeds([1, 2])) {
      await withSeedAsync(seed, testFile, async () => {
        const args = [String(seed), String(copyOps)];
        await sh(`mkdir "$1" "$2"`, [v.out(`control${seed}`), v.in(`copy${seed}`)]);
        const host = await control<{ files: Record<string, FileSum> }>("copy_model.py", [...args, v.out(`control${seed}`)]);
        const got = await driver<{ files: Record<string, FileSum> }>("copy_model.py", [...args, v.in(`copy${seed}`)], `seed ${seed}`, notLanded.copy);
        if (host !== null) expect(got.files, "the same copies on the host filesystem end with the same bytes").toEqual(host.files);
        for (const [name, sum] of Object.entries(got.files)) results[`copy${seed}/${name}`] = sum;
      });
    }
    await remount(v);
    await expectFiles(v, results, "after a remount");
    await v.finish();
  });

  it("copy_file_range: from a snapshot (/.snapshots/s1) into the live subvolume shares the data across subvolumes", async () => {
    const v = await mounted("kcopysnap");
    const [orig, patch] = [v.out("orig"), v.out("patch")];
    await sh(`head -c 8M /dev/urandom > "$1" && head -c 100000 /dev/urandom > "$2" && cp "$1" "$3/f" && printf small > "$3/small" && sync "$3/f"`, [orig, patch, v.mnt]);
    await v.groveOk(["snapshot", "create", v.mnt, "s1"]);
    const snap = v.in(".snapshots", "s1");
    const before = await usedBytes(v);
    const copier = [
      "import os",
      "def copy(src, dst, src_at, dst_at, n):",
      "    s, d = os.open(src, os.O_RDONLY), os.open(dst, os.O_WRONLY | os.O_CREAT, 0o644)",
      "    done = 0",
      "    while done < n:",
      "        got = os.copy_file_range(s, d, n - done, src_at + done, dst_at + done)",
      "        if got == 0: break",
      "        done += got",
      "    os.fsync(d)",
      "    return done",
      "snap, mnt = sys.argv[1], sys.argv[2]",
      "which = sys.argv[3]",
      "if which == 'aligned':",
      "    assert copy(snap + '/f', mnt + '/g', 0, 0, 8 << 20) == 8 << 20",
      "    assert copy(snap + '/small', mnt + '/small2', 0, 0, 1000) == 5",
      "else:",
      "    # Offsets 57 and 777 bytes into a block: nothing to share, every byte copied.",
      "    assert copy(snap + '/f', mnt + '/h', 12345, 777, 3 << 20) == 3 << 20",
    ].join("\n");
    await py(copier, [snap, v.mnt, "aligned"]);
    const grown = (await usedBytes(v)) - before;
    expect(grown, `used space grew by ${(grown / MiB).toFixed(2)} MiB for an 8 MiB copy out of a snapshot. ${notLanded.copy}`).toBeLessThan(MiB);
    await py(copier, [snap, v.mnt, "unaligned"]);
    const origSum = await sha256(orig);
    expect(await sha256(v.in("g"))).toBe(origSum);
    await sh(`{ head -c 777 /dev/zero; tail -c +12346 "$1" | head -c 3145728; } > "$2"`, [orig, v.out("expect_h")]);
    expect(await sha256(v.in("h")), "an unaligned slice of the snapshot's file").toBe(await sha256(v.out("expect_h")));
    expect(await ok("cat", [v.in("small2")])).toBe("small");

    // The live file rewritten, the copy patched: the snapshot keeps its bytes.
    await sh(`head -c 8M /dev/urandom > "$1/f" && dd if="$2" of="$1/g" bs=4096 seek=100 conv=notrunc status=none`, [v.mnt, patch]);
    await sh(`cp "$1" "$2" && dd if="$3" of="$2" bs=4096 seek=100 conv=notrunc status=none`, [orig, v.out("expect_g"), patch]);
    await dropCaches(1);
    expect(await sha256(path.join(snap, "f")), "the snapshot after writes to the live file and the copy").toBe(origSum);
    expect(await sha256(v.in("g"))).toBe(await sha256(v.out("expect_g")));
    await v.finish();
  });

  it("copy_file_range on an lz4 volume: copies of compressed extents, whole and sliced, match a model and share space", async () => {
    volume = await E2eVolume.create("kcopylz4");
    const v = volume;
    await v.mkfs("2G", ["--compress", "lz4"]);
    await v.mount();
    const seed = seeds([5])[0]!;
    await withSeedAsync(seed, testFile, async () => {
      const args = [String(seed), String(copyOps)];
      const flags = ["--content", "text", "--files", "5"];
      await sh(`mkdir "$1" "$2"`, [v.out("control"), v.in("model")]);
      const host = await control<{ files: Record<string, FileSum> }>("copy_model.py", [...args, v.out("control"), ...flags]);
      const got = await driver<{ files: Record<string, FileSum> }>("copy_model.py", [...args, v.in("model"), ...flags], `seed ${seed}`, notLanded.copy);
      if (host !== null) expect(got.files).toEqual(host.files);
    });
    // A 32 MiB compressible file copied whole: the copy takes no space of its own.
    await sh(`seq 1 10000000 | head -c 32M > "$1/text" && sync "$1/text"`, [v.mnt]);
    const before = await usedBytes(v);
    await sh(`cp "$1/text" "$1/text2" && sync "$1/text2"`, [v.mnt]);
    const grown = (await usedBytes(v)) - before;
    expect(grown, `used space grew by ${(grown / MiB).toFixed(2)} MiB for a copy of 32 MiB of lz4 data. ${notLanded.copy}`).toBeLessThan(MiB);
    const sum = await sha256(v.in("text"));
    expect(sum).toBe((await sh(`seq 1 10000000 | head -c 32M | sha256sum`)).split(" ")[0]);
    expect(await sha256(v.in("text2"))).toBe(sum);
    await sh(`printf changed | dd of="$1/text2" bs=1 seek=5000000 conv=notrunc status=none`, [v.mnt]);
    await dropCaches(1);
    expect(await sha256(v.in("text"))).toBe(sum);
    await v.finish();
    const info = JSON.parse((await v.groveOk(["info", "--json", v.image])).stdout) as { compressed: { extents: number } };
    expect(info.compressed.extents, "the data is stored compressed").toBeGreaterThan(0);
  });

  // ---- SEEK_DATA / SEEK_HOLE -------------------------------------------------------

  it("SEEK_DATA and SEEK_HOLE find holes at the start, middle and end at block granularity, ENXIO at and past EOF, after fsync and after a remount", async () => {
    const v = await mounted("kseek");
    const seed = seeds([1])[0]!;
    await withSeedAsync(seed, testFile, async () => {
      await sh(`mkdir "$1" "$2"`, [v.out("control"), v.in("seek")]);
      const host = await control<Record<string, FileSum>>("seek_model.py", ["build", String(seed), v.out("control")]);
      const built = await driver<Record<string, FileSum>>("seek_model.py", ["build", String(seed), v.in("seek")], "SEEK_DATA/SEEK_HOLE", notLanded.lseek);
      if (host !== null) expect(built).toEqual(host);
      await remount(v);
      await driver("seek_model.py", ["check", String(seed), v.in("seek")], "SEEK_DATA/SEEK_HOLE after a remount", notLanded.lseek);
    });
    await v.finish();
  });

  it("SEEK_DATA and SEEK_HOLE right after writing, through the writer's open descriptor (the writes still in the writeback cache), never hide data", async () => {
    // cp (coreutils 9) copies a sparse-looking file by SEEK_DATA/SEEK_HOLE: data they hide is copied as zeros.
    const v = await mounted("kseekdirty");
    // cp from another process while the writer still holds the file open (its close would write the pages back).
    const writer = v.spawn("python3", [
      "-c",
      "import os, sys, time\nfd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)\nos.ftruncate(fd, 1 << 20)\nos.fsync(fd)\n" +
        "os.pwrite(fd, b'x' * 4096, 512 * 1024)\nprint('written', flush=True)\ntime.sleep(60)",
      v.in("held"),
    ]);
    let said = "";
    writer.stdout!.on("data", (chunk: Buffer) => (said += chunk.toString("utf8")));
    expect(await waitFor(() => said.includes("written"), 30_000), "the writer wrote").toBe(true);
    await sh(`cp "$1" "$2"`, [v.in("held"), v.out("copied")]);
    expect((await sh(`tr -cd x < "$1" | wc -c`, [v.out("copied")])).trim(), "x bytes in cp's copy of a file whose writer still has it open").toBe("4096");
    writer.kill("SIGKILL");
    await new Promise((resolve) => (writer.exitCode !== null || writer.signalCode !== null ? resolve(null) : writer.on("exit", resolve)));
    const seed = seeds([1])[0]!;
    // The model's files, probed through the writer's own descriptor.
    await withSeedAsync(seed, testFile, async () => {
      await sh(`mkdir "$1" "$2"`, [v.out("control"), v.in("seek")]);
      const host = await control<Record<string, FileSum>>("seek_model.py", ["dirty", String(seed), v.out("control")]);
      const got = await driver<Record<string, FileSum>>("seek_model.py", ["dirty", String(seed), v.in("seek")], "SEEK_DATA/SEEK_HOLE before writeback", notLanded.lseek);
      if (host !== null) expect(got).toEqual(host);
    });
    await v.finish();
  });

  // ---- the writeback cache --------------------------------------------------------------

  it("fsx: pwrite, O_APPEND, mmap, ftruncate, O_DIRECT, fsync, reopen and cache drops through the writeback cache match a model, and after a remount", async () => {
    const v = await mounted("kfsx");
    const results: Record<string, FileSum> = {};
    for (const seed of seeds([1, 2])) {
      await withSeedAsync(seed, testFile, async () => {
        const args = [String(seed), String(fsxOps)];
        const host = await control<FileSum>("fsx.py", [...args, v.out(`control${seed}`)]);
        const got = await driver<FileSum>("fsx.py", [...args, v.in(`fsx${seed}`)], `fsx seed ${seed}`);
        if (host !== null) expect({ sha256: got.sha256, size: got.size }).toEqual({ sha256: host.sha256, size: host.size });
        results[`fsx${seed}`] = { sha256: got.sha256, size: got.size };
      });
    }
    await remount(v);
    await expectFiles(v, results, "after a remount");
    await v.finish();
  });

  it("fsx with range operations: fallocate, copy_file_range and SEEK_DATA/SEEK_HOLE mixed into the writeback-cache workload", async () => {
    const v = await mounted("kfsxranges");
    const seed = seeds([3])[0]!;
    await withSeedAsync(seed, testFile, async () => {
      const args = [String(seed), String(fsxOps)];
      const host = await control<FileSum>("fsx.py", [...args, v.out("control"), "--ranges"]);
      const got = await driver<FileSum>("fsx.py", [...args, v.in("fsx"), "--ranges"], `fsx --ranges seed ${seed}`);
      if (host !== null) expect({ sha256: got.sha256, size: got.size }).toEqual({ sha256: host.sha256, size: host.size });
      await remount(v);
      await expectFiles(v, { fsx: { sha256: got.sha256, size: got.size } }, "after a remount");
    });
    await v.finish();
  });

  // ---- durability ---------------------------------------------------------------------

  const killCases = [
    { seed: 1, killAfterSynced: 12, delayMs: 0 },
    { seed: 2, killAfterSynced: 30, delayMs: 700 },
  ];
  for (const c of killCases) {
    it(`kill -9 of the daemon after ${c.killAfterSynced} acknowledged syncs (+${c.delayMs} ms): every byte fsync, fdatasync or msync acknowledged is there (seed ${c.seed})`, async () => {
      volume = await E2eVolume.create(`kkill${c.seed}`);
      const v = volume;
      await v.mkfs("2G");
      await v.mount();
      const daemon = await v.daemonPid();
      const seed = seeds([c.seed])[0]!;
      await withSeedAsync(seed, testFile, async () => {
        const child = v.spawn("python3", [path.join(fixtures, "sync_writer.py"), String(seed), v.mnt]);
        let stdout = "";
        let stderr = "";
        child.stdout!.on("data", (chunk: Buffer) => (stdout += chunk.toString("utf8")));
        child.stderr!.on("data", (chunk: Buffer) => (stderr += chunk.toString("utf8")));
        const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
        const syncs = () => stdout.split("\n").filter((line) => line.startsWith("synced ")).length;
        const initial = 6;
        const reached = await waitFor(() => syncs() >= initial + c.killAfterSynced || child.exitCode !== null, 120_000);
        expect(child.exitCode, `the writer died before the kill:\n${stderr}`).toBeNull();
        expect(reached, `only ${syncs()} syncs in time:\n${stderr}`).toBe(true);
        await sleep(c.delayMs);

        process.kill(daemon, "SIGKILL");
        expect(await waitFor(() => !processAlive(daemon), 10_000), "the daemon survived SIGKILL").toBe(true);
        await ok("umount", ["-l", v.mnt]);
        expect(await mountsAt(v.mnt)).toEqual([]);
        const writerExit = await Promise.race([exited, sleep(20_000).then(() => "hung" as const)]);
        if (writerExit === "hung") child.kill("SIGKILL");
        expect(writerExit, "the writer hung after the daemon died").not.toBe("hung");
        expect(await pidsHolding(v.image)).toEqual([]);

        // The last acknowledged prefix of each file.
        const acknowledged = new Map<string, { length: number; sha256: string }>();
        for (const line of stdout.split("\n")) {
          const match = /^synced (\S+) (\d+) ([0-9a-f]{64})/.exec(line);
          if (match) acknowledged.set(match[1]!, { length: Number(match[2]), sha256: match[3]! });
        }
        v.check();
        await v.mount();
        const lost: string[] = [];
        for (const [name, want] of acknowledged) {
          const file = v.in(name);
          const size = await statNumber("%s", file);
          const sum = (await sh(`head -c "$2" "$1" | sha256sum`, [file, String(want.length)])).split(" ")[0];
          if (size < want.length || sum !== want.sha256) lost.push(`${name}: acknowledged ${want.length} bytes, found ${size}, prefix ${sum === want.sha256 ? "intact" : "differs"}`);
        }
        expect(lost, `acknowledged bytes lost (${syncs()} syncs reported)`).toEqual([]);
        console.log(`kill seed ${seed}: ${syncs()} syncs acknowledged, ${[...acknowledged.values()].reduce((n, a) => n + a.length, 0)} bytes checked`);
      });
      await sh(`rm "$1"/w*`, [v.mnt]);
      await v.finish();
    });
  }

  // ---- serving in place ----------------------------------------------------------------------

  it("an idle daemon that serves in place still runs its timer and its control socket: a snapshot after 3 s idle, data written without fsync is committed within 7 s idle and survives kill -9", async () => {
    // The session blocks in read(2) on its JS thread; only the waker's statfs poke (or the CLI's) lets the
    // event loop run the periodic commit and the control socket when no request comes.
    const v = await mounted("kidle");
    const daemon = await v.daemonPid();
    await sh(`printf 'before the snapshot' > "$1"`, [v.in("b")]);
    await sleep(3000);
    await v.groveOk(["snapshot", "create", v.mnt, "s1"]);
    await sh(`printf 'after the snapshot' > "$1"`, [v.in("c")]);
    await sleep(7000);
    process.kill(daemon, "SIGKILL");
    expect(await waitFor(() => !processAlive(daemon), 10_000), "the daemon survived SIGKILL").toBe(true);
    await ok("umount", ["-l", v.mnt]);
    v.check();
    await v.mount();
    expect(await sh(`cat "$1"`, [v.in("b")])).toBe("before the snapshot");
    expect(await sh(`cat "$1"`, [v.in(".snapshots", "s1", "b")])).toBe("before the snapshot");
    expect(await sh(`cat "$1"`, [v.in("c")]), "written 7 s before the kill, never fsynced: the timer's commit").toBe("after the snapshot");
    await v.groveOk(["snapshot", "delete", v.mnt, "s1"]);
    await v.finish();
  });

  // ---- lookup counts -----------------------------------------------------------------------

  it("lookup counts: 2000 files stat-ed, then the kernel forgets them (drop_caches 2): the mount keeps working, inode numbers stay (live and in a snapshot), rm leaves a clean volume", async () => {
    const v = await mounted("klookups");
    await sh(`mkdir "$1"`, [v.in("many")]);
    const got = await driver<{ files: number; held: number }>("lookups.py", [v.in("many"), "2000"], "lookups");
    expect(got).toMatchObject({ files: 2000, held: 20 });
    await dropCaches(2);
    expect((await sh(`ls -f "$1" | grep -c '^f'`, [v.in("many")])).trim()).toBe("2000");
    expect((await sh(`find "$1" -type f -size -100c | wc -l`, [v.in("many")])).trim()).toBe("2000");
    // The same files in a snapshot's view: node ids of their own, as stable across the kernel forgetting them.
    await v.groveOk(["snapshot", "create", v.mnt, "s1"]);
    const listing = async (dir: string) => (await sh(`cd "$1" && find . -type f -printf '%i %s %p\\n' | sort -k3`, [dir])).trim().split("\n");
    const live = await listing(v.in("many"));
    const viewed = await listing(v.in(".snapshots", "s1", "many"));
    expect(viewed.length).toBe(2000);
    expect(viewed.map((line) => line.split(" ").slice(1).join(" ")), "the snapshot lists the same names and sizes").toEqual(live.map((line) => line.split(" ").slice(1).join(" ")));
    const liveInos = new Set(live.map((line) => line.split(" ")[0]));
    expect(viewed.filter((line) => liveInos.has(line.split(" ")[0])), "snapshot inode numbers that are also live ones").toEqual([]);
    await sh(`rm -r "$1"`, [v.in("many")]);
    await dropCaches(2);
    expect((await sh(`ls -A "$1"`, [v.mnt])).trim()).toBe("");
    expect(await listing(v.in(".snapshots", "s1", "many")), "the snapshot's view after rm and drop_caches 2").toEqual(viewed);
    await v.finish();
  });
});
