/**
 * The fsync log through a real mount: a child process (python3) creates,
 * overwrites and renames files, fsyncing each (and the directories of each
 * rename), and reports every fsync that returned. The mount daemon is
 * killed with SIGKILL right after the Kth report (or a little later),
 * several times over on one image: each time the image as the kill left it
 * must pass the checker (which sees the log applied), and the remount
 * (which replays the log) must hold every fsynced byte, under its newest
 * name. fsck -n reports the log without writing; a remount commits it away.
 *
 * The kill lands well inside the 5 s commit interval, so the fsynced state
 * is on disk only as log records: the replay is what brings it back.
 */
import { afterEach, describe, expect, it } from "vitest";
import { E2eVolume, checksums, ok, processAlive, sleep, waitFor, e2eSkipReason } from "./e2e_helpers.js";
import { FileDevice, readSuperblock } from "../kvstore/index.js";
import { readLog } from "../kvstore/fsync_log.js";

const writer = String.raw`
import hashlib, os, random, sys
root, seed = sys.argv[1], int(sys.argv[2])
rng = random.Random(seed)
d = os.path.join(root, "d%d" % seed)
os.makedirs(d, exist_ok=True)
def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(fd)
    os.close(fd)
fsync_dir(d)
i = 0
while True:
    name = "f%05d" % i
    data = random.Random(seed * 1000003 + i).randbytes(rng.choice([1, 4096, 5000, 70000]))
    fd = os.open(os.path.join(d, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, data)
    (os.fdatasync if rng.random() < 0.3 else os.fsync)(fd)
    os.close(fd)
    print("synced", name, hashlib.sha256(data).hexdigest(), flush=True)
    r = rng.random()
    if r < 0.3 and i > 0:
        # Overwrite part of an earlier file in place, fsync it.
        victim = "f%05d" % rng.randrange(i)
        path = os.path.join(d, victim)
        if os.path.exists(path):
            print("overwriting", victim, flush=True)
            fd = os.open(path, os.O_RDWR)
            os.pwrite(fd, b"x" * 100, 10)
            os.fsync(fd)
            os.lseek(fd, 0, 0)
            body = b""
            while True:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                body += chunk
            os.close(fd)
            print("synced", victim, hashlib.sha256(body).hexdigest(), flush=True)
    elif r < 0.5:
        # Rename into a second directory and fsync both directories.
        other = d + "r"
        os.makedirs(other, exist_ok=True)
        print("renaming", name, flush=True)
        os.rename(os.path.join(d, name), os.path.join(other, name))
        fsync_dir(d)
        fsync_dir(other)
        print("renamed", name, flush=True)
    i += 1
`;

interface Synced {
  files: Map<string, string>;
  /** The file of an overwrite or rename whose fsyncs had not all returned at the kill: either state may be there. */
  inflight: string | null;
}

/** The writer's reports: the content of each name as of its last fsync, renames moving it. */
function parse(stdout: string, seed: number): Synced {
  const files = new Map<string, string>();
  let inflight: string | null = null;
  for (const line of stdout.split("\n")) {
    const intent = /^(overwriting|renaming) (\S+)$/.exec(line);
    if (intent) {
      inflight = intent[2]!;
      continue;
    }
    let m = /^synced (\S+) ([0-9a-f]{64})$/.exec(line);
    if (m) {
      const key = files.has(`d${seed}r/${m[1]}`) ? `d${seed}r/${m[1]}` : `d${seed}/${m[1]}`;
      files.set(key, m[2]!);
      if (m[1] === inflight) inflight = null;
      continue;
    }
    m = /^renamed (\S+)$/.exec(line);
    if (m) {
      const sum = files.get(`d${seed}/${m[1]}`)!;
      files.delete(`d${seed}/${m[1]}`);
      files.set(`d${seed}r/${m[1]}`, sum);
      inflight = null;
    }
  }
  return { files, inflight };
}

let volume: E2eVolume | null = null;

afterEach(async () => {
  await volume?.cleanup();
  volume = null;
});

const rounds = [
  { seed: 1, killAfter: 3, delayMs: 0 },
  { seed: 2, killAfter: 20, delayMs: 0 },
  { seed: 3, killAfter: 8, delayMs: 120 },
];

describe.skipIf(e2eSkipReason !== null)("e2e: kill -9 of the daemon right after fsync returns", () => {
  it(`${rounds.length} kills on one image: every fsynced byte survives, the checker passes`, async () => {
    volume = await E2eVolume.create("fsynclog");
    const v = volume;
    await v.mkfs("1G");
    const expected = new Map<string, string>();
    let replayedRecords = 0;
    for (const round of rounds) {
      await v.mount();
      const daemon = await v.daemonPid();
      const child = v.spawn("python3", ["-c", writer, v.mnt, String(round.seed)]);
      let stdout = "";
      let stderr = "";
      child.stdout!.on("data", (chunk: Buffer) => (stdout += chunk.toString("utf8")));
      child.stderr!.on("data", (chunk: Buffer) => (stderr += chunk.toString("utf8")));
      const exited = new Promise<void>((resolve) => child.on("exit", () => resolve()));
      const reached = await waitFor(() => (stdout.match(/^synced /gm)?.length ?? 0) >= round.killAfter || child.exitCode !== null, 60_000);
      expect(child.exitCode, `the writer died:\n${stderr}`).toBeNull();
      expect(reached).toBe(true);
      if (round.delayMs > 0) await sleep(round.delayMs);
      process.kill(daemon, "SIGKILL");
      expect(await waitFor(() => !processAlive(daemon), 10_000)).toBe(true);
      await ok("umount", ["-l", v.mnt]);
      await Promise.race([exited, sleep(20_000)]);
      if (child.exitCode === null) child.kill("SIGKILL");
      const synced = parse(stdout, round.seed);
      for (const [name, sum] of synced.files) expected.set(name, sum);
      if (synced.inflight !== null) {
        // Whichever state it is in now (seen after the remount), it stays so from then on.
        for (const dir of [`d${round.seed}`, `d${round.seed}r`]) expected.delete(`${dir}/${synced.inflight}`);
      }

      // The image as the kill left it: the checker sees the state with the log applied.
      const report = v.check();
      const device = FileDevice.open(v.image, { readOnly: true });
      const log = readLog(device, readSuperblock(device));
      device.close();
      replayedRecords += log.chain.length;
      if (log.chain.length > 0) expect(report.notes.join("\n")).toMatch(/fsync log: \d+ records? extend/);

      // The remount replays it: every fsynced file with its last fsynced content.
      await v.mount();
      const found = await checksums(v.mnt);
      const lost = [...expected].filter(([name, sum]) => found.get(`./${name}`) !== sum);
      expect(lost, `fsynced files lost or damaged (of ${expected.size})`).toEqual([]);
      await v.umount();
      v.check();
    }
    console.log(`${rounds.length} kills, ${expected.size} fsynced files checked, ${replayedRecords} log records replayed`);
    // Most fsyncs were logged, not committed: the kills left records to replay.
    expect(replayedRecords).toBeGreaterThan(0);
  });
});
