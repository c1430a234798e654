/**
 * A mount daemon killed with SIGKILL while a child process writes: every file
 * whose fsync returned before the kill must come back intact, and the image
 * must pass the full checker as it is (no recovery step) and after a remount.
 *
 * The writer (python3) loops: it writes a file under synced/, fsyncs it and
 * prints "synced NAME SHA256"; then writes, appends to, renames and deletes a
 * few files under unsynced/ without fsync. Once it has reported K synced
 * files (and a delay has passed, so the kill lands at varied moments: during
 * a write, between commits, after a timer commit), the daemon is killed, the
 * dead mount is lazily unmounted, and the writer dies on ENOTCONN. Killing
 * the process is weaker than a power cut (the page cache keeps what it
 * wrote), but it stops a commit at an arbitrary point, which is what this
 * checks. Power cuts are simulated in crash.test.ts.
 *
 * A synced file's directory entry is durable because grovefs commits the
 * whole volume on fsync (DESIGN.md: "Commit on fsync"), so the writer does
 * not fsync the directory.
 */
import { afterEach, describe, expect, it } from "vitest";
import { E2eVolume, checksums, mountsAt, ok, pidsHolding, processAlive, run, sh, sleep, waitFor, e2eSkipReason } from "./e2e_helpers.js";

const writer = String.raw`
import hashlib, os, random, sys
root, seed = sys.argv[1], int(sys.argv[2])
rng = random.Random(seed)
sizes = [0, 1, 511, 4095, 4096, 4097, 65536, 200001, 1 << 20, 3 * (1 << 20) + 5]
chunk = 128 * 1024

def content(key):
    return random.Random(key).randbytes(rng.choice(sizes))

def write(path, data, sync, flags=os.O_TRUNC):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | flags, 0o644)
    try:
        view = memoryview(data)
        while len(view) > 0:
            view = view[os.write(fd, view[:chunk]):]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)

os.makedirs(os.path.join(root, "synced"), exist_ok=True)
os.makedirs(os.path.join(root, "unsynced"), exist_ok=True)
i = 0
while True:
    data = content(seed * 1000003 + i)
    name = "synced/s%05d" % i
    write(os.path.join(root, name), data, True)
    print("synced", name, hashlib.sha256(data).hexdigest(), flush=True)
    for j in range(rng.randint(1, 4)):
        path = os.path.join(root, "unsynced/u%05d_%d" % (i, j))
        write(path, content(seed * 7919 + i * 31 + j), False)
        r = rng.random()
        if r < 0.2:
            write(path, content(seed + i + j), False, os.O_APPEND)
        elif r < 0.4:
            os.rename(path, path + ".renamed")
        elif r < 0.55:
            os.unlink(path)
    i += 1
`;

interface CrashCase {
  seed: number;
  /** Kill once this many files are reported synced... */
  killAfterSynced: number;
  /** ...and this much later. */
  delayMs: number;
}

const cases: CrashCase[] = [
  { seed: 1, killAfterSynced: 1, delayMs: 0 },
  { seed: 2, killAfterSynced: 6, delayMs: 350 },
  // Past the commit timer, so some unsynced work was committed by it before the kill.
  { seed: 3, killAfterSynced: 15, delayMs: 2500 },
];

let volume: E2eVolume | null = null;

afterEach(async () => {
  await volume?.cleanup();
  volume = null;
});

/** Parses the writer's "synced NAME SHA" lines. */
function syncedFiles(stdout: string): Map<string, string> {
  const synced = new Map<string, string>();
  for (const line of stdout.split("\n")) {
    const match = /^synced (\S+) ([0-9a-f]{64})$/.exec(line);
    if (match) synced.set(`./${match[1]!.replace(/^synced\//, "")}`, match[2]!);
  }
  return synced;
}

describe.skipIf(e2eSkipReason !== null)("e2e: kill -9 of the mount daemon during writes", () => {
  for (const c of cases) {
    it(`seed ${c.seed}: killed after ${c.killAfterSynced} synced files + ${c.delayMs} ms; synced files survive, the checker passes`, async () => {
      volume = await E2eVolume.create(`crash${c.seed}`);
      const v = volume;
      await v.mkfs("2G");
      await v.mount();
      const daemon = await v.daemonPid();

      const child = v.spawn("python3", ["-c", writer, v.mnt, String(c.seed)]);
      let stdout = "";
      let stderr = "";
      child.stdout!.on("data", (chunk: Buffer) => (stdout += chunk.toString("utf8")));
      child.stderr!.on("data", (chunk: Buffer) => (stderr += chunk.toString("utf8")));
      const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));

      const reached = await waitFor(() => syncedFiles(stdout).size >= c.killAfterSynced || child.exitCode !== null, 120_000);
      expect(child.exitCode, `the writer died before the kill:\n${stderr}`).toBeNull();
      expect(reached, `only ${syncedFiles(stdout).size} files synced in time:\n${stderr}`).toBe(true);
      await sleep(c.delayMs);
      expect(child.exitCode, `the writer died before the kill:\n${stderr}`).toBeNull();

      process.kill(daemon, "SIGKILL");
      expect(await waitFor(() => !processAlive(daemon), 10_000), "the daemon survived SIGKILL").toBe(true);
      await ok("umount", ["-l", v.mnt]);
      expect(await mountsAt(v.mnt)).toEqual([]);
      // The writer gets ENOTCONN (or EIO) on its next call and dies of the exception.
      const writerExit = await Promise.race([exited, sleep(20_000).then(() => "hung" as const)]);
      if (writerExit === "hung") child.kill("SIGKILL");
      expect(writerExit, "the writer hung after the daemon died").not.toBe("hung");
      expect(writerExit).not.toBe(0);

      const synced = syncedFiles(stdout);
      expect(synced.size).toBeGreaterThanOrEqual(c.killAfterSynced);
      expect(await pidsHolding(v.image), "something still holds the image after the kill").toEqual([]);

      // The image as the kill left it: consistent, no recovery needed.
      v.check();

      // Remount: every file reported synced is there with its content; everything else reads without error.
      await v.mount();
      const found = await checksums(v.in("synced"));
      const missingOrWrong = [...synced].filter(([name, sum]) => found.get(name) !== sum);
      expect(missingOrWrong, `synced files lost or damaged (of ${synced.size})`).toEqual([]);
      await sh(`find "$1" -type f -exec cat {} + > /dev/null && ls -laR "$1" > /dev/null`, [v.mnt], { timeoutMs: 120_000 });
      const unsynced = await checksums(v.in("unsynced"));
      console.log(
        `seed ${c.seed}: ${synced.size} files reported synced; after the kill ${found.size} in synced/, ${unsynced.size} in unsynced/`,
      );
      // The recovered volume takes new writes and deletes.
      await sh(`echo after > "$1/after" && rm -rf "$1/unsynced" && cat "$1/after"`, [v.mnt]);
      await v.umount();
      v.check();

      // A second mount sees the same synced files (nothing was rolled back by the recovery mount).
      await v.mount(["-o", "ro"]);
      const again = await checksums(v.in("synced"));
      expect([...synced].filter(([name, sum]) => again.get(name) !== sum)).toEqual([]);
      expect((await run("cat", [v.in("after")])).stdout).toBe("after\n");
      await v.umount();
    });
  }
});
