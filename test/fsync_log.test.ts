/**
 * The fsync log (kvstore/fsync_log.ts) under simulated power loss.
 *
 * - Crash points: a seeded workload dominated by fsync (create + write +
 *   fsync, overwrites, renames within and across directories, unlinks, hard
 *   links, truncates, xattrs, snapshots and full syncs in between) runs on a
 *   SimDevice that loses power at its Nth block write or flush, for every N.
 *   Unflushed writes are kept, dropped or torn. After each crash the volume
 *   must show exactly the tree of the last fsync that returned (or of the one
 *   in flight, if its record and blocks all landed), pass the full checker,
 *   and hold no log after the replay's commit.
 * - The CrashMonkey/ACE pattern: every sequence of one to three operations
 *   on a small tree, then an fsync, then power loss: the tree fsync promised
 *   is there, and the checker passes.
 * - Replay itself crashed at every write and flush replays again; a
 *   read-only open shows the replayed state without writing.
 *
 * Seeds: GROVE_SEEDS=1,2,3; crash points per seed: GROVE_FSYNCLOG_POINTS.
 */
import * as fs from "node:fs";
import { constants as C } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import * as zlib from "node:zlib";
import { describe, expect, it } from "vitest";
import { FileDevice, GroveError, Prng, SimDevice, SimulatedCrash, crc32c, readDurableSuperblock, readSuperblock } from "../kvstore/index.js";
import { readLog } from "../kvstore/fsync_log.js";
import { featureFsyncLog } from "../kvstore/superblock.js";
import { GroveFs } from "../fs/index.js";
import { fsckExit, runFsck } from "../cli/fsck.js";
import { seeds, testMetadata, withSeed } from "./helpers.js";
import { O_CREAT, O_RDWR, O_WRONLY, durableImage, expectFsClean, pattern, readFile, root, testClock, writeFile } from "./fs_helpers.js";

const testFile = "test/fsync_log.test.ts";
const deviceBlocks = 4096;
const stepsPerRun = 70;
const crashPointsPerSeed = Number(process.env.GROVE_FSYNCLOG_POINTS ?? 300);

/** A small tree, committed, with the log's head already reserved (by a first fsync). */
function baseImage(): Map<number, Uint8Array> {
  const formatted = new SimDevice(deviceBlocks);
  GroveFs.format(formatted, { clock: testClock(), metadata: testMetadata });
  const device = formatted.reopen();
  const fs = GroveFs.open(device, { clock: testClock() });
  for (const dir of ["/A", "/B", "/B/empty"]) fs.mkdir(dir, 0o755, root);
  writeFile(fs, "/A/foo", pattern(8192, 1));
  writeFile(fs, "/A/bar", pattern(3000, 2));
  writeFile(fs, "/B/baz", pattern(100, 3));
  const fh = fs.open("/A/foo", O_RDWR);
  fs.fsync(fh, false);
  fs.release(fh);
  fs.close();
  return device.snapshotLive();
}

/** Every name with what a user could observe of it, and the snapshots, as sorted lines. */
function snapshotTree(fs: GroveFs): string[] {
  const lines: string[] = [];
  const walk = (dir: string): void => {
    for (const entry of fs.readdir(dir)) {
      if (entry.name === "." || entry.name === "..") continue;
      const path = `${dir === "/" ? "" : dir}/${entry.name}`;
      const st = fs.getattr(path);
      const type = st.mode & C.S_IFMT;
      const body = type === C.S_IFREG ? crc32c(readFile(fs, path)).toString(16) : "";
      const xattrs = fs
        .listxattr(path)
        .sort()
        .map((name) => `${name}=${crc32c(fs.getxattr(path, name)).toString(16)}`)
        .join(",");
      lines.push(`${path} ino=${st.ino} mode=${st.mode.toString(8)} nlink=${st.nlink} size=${st.size} mtime=${st.mtimeNs} [${xattrs}] ${body}`);
      if (type === C.S_IFDIR) walk(path);
    }
  };
  walk("/");
  for (const s of fs.listSubvolumes()) lines.push(`subvolume ${s.name} ${s.readOnly}`);
  return lines.sort();
}

function expectSameTree(actual: string[], expected: string[], what: string): void {
  if (actual.length === expected.length && actual.every((line, i) => line === expected[i])) return;
  const a = new Set(actual);
  const e = new Set(expected);
  const missing = expected.filter((line) => !a.has(line));
  const extra = actual.filter((line) => !e.has(line));
  throw new Error(`${what}: tree differs\nmissing:\n${missing.slice(0, 5).join("\n")}\nunexpected:\n${extra.slice(0, 5).join("\n")}`);
}

interface SyncPoint {
  generation: number;
  tree: string[];
  /** Device operations (blocks written plus flushes) issued when it began and when it returned. */
  opsBefore: number;
  opsAfter: number;
}

/** One block written, or a flush (null), in the order the device saw them. */
type TraceOp = { lba: number; data: Uint8Array } | null;

/**
 * A SimDevice that records every block written and every flush, so that a
 * crash at operation N is rebuilt by replaying the first N-1 operations on
 * the base image (exactly what SimDevice.crashAtOperation = N leaves)
 * instead of running the workload again.
 */
class TracingDevice extends SimDevice {
  readonly trace: TraceOp[] = [];
  override write(lba: number, buf: Uint8Array): void {
    super.write(lba, buf);
    for (let k = 0; k < buf.length / 4096; k++) this.trace.push({ lba: lba + k, data: new Uint8Array(buf.subarray(k * 4096, (k + 1) * 4096)) });
  }
  override writev(lba: number, bufs: readonly Uint8Array[]): void {
    super.writev(lba, bufs);
    for (let k = 0; k < bufs.length; k++) this.trace.push({ lba: lba + k, data: new Uint8Array(bufs[k]!) });
  }
  override flush(): void {
    super.flush();
    this.trace.push(null);
  }
}

/** The device as power loss at operation `crashAt` leaves it: operations before it done, the rest never issued. */
function crashedDevice(base: Map<number, Uint8Array>, trace: TraceOp[], crashAt: number): SimDevice {
  const device = SimDevice.fromDurable(base, deviceBlocks);
  for (let i = 0; i < crashAt - 1; i++) {
    const op = trace[i]!;
    if (op === null) device.flush();
    else device.write(op.lba, op.data);
  }
  return device;
}

interface RunResult {
  trace: TraceOp[];
  /** Durable points, each with its generation and tree; the first is the base image. */
  synced: SyncPoint[];
  logged: number;
}

const names = ["/A/foo", "/A/bar", "/A/n1", "/B/baz", "/B/n2", "/B/empty/n3", "/n4"];

/** The workload, run once; every device operation must fall inside a durable point. */
function runWorkload(seed: number, base: Map<number, Uint8Array>): RunResult {
  const device = new TracingDevice(deviceBlocks);
  for (const [lba, data] of base) device.write(lba, data);
  device.flush();
  device.trace.length = 0;
  const ops = (): number => device.trace.length;
  // The clock moves per step, not per call, and reads do not move atime: the tree walks change nothing.
  let now = 2_000_000_000_000_000_000n;
  const fs = GroveFs.open(device, { clock: () => now, cacheBytes: 512 * 1024, accessTimes: { update: "noatime", directories: false } });
  const prng = new Prng(seed);
  const synced: SyncPoint[] = [{ generation: readDurableSuperblock(device).generation, tree: snapshotTree(fs), opsBefore: 0, opsAfter: 0 }];
  let logged = 0;
  let snapshots = 0;
  const attempt = (body: () => void): void => {
    const before = ops();
    try {
      body();
    } catch (error) {
      if (!(error instanceof GroveError)) throw error;
    }
    expect(ops(), "the device is written only at durable points").toBe(before);
  };
  /** A durable point: the model moves on once it returns. */
  const durable = (body: () => void, extra: string[] = []): void => {
    const tree = [...snapshotTree(fs), ...extra].sort();
    const records = fs.store.logRecords;
    const opsBefore = ops();
    body();
    if (fs.store.logRecords > records) logged++;
    synced.push({ generation: fs.store.committedGeneration, tree, opsBefore, opsAfter: ops() });
  };
  for (let step = 0; step < stepsPerRun; step++) {
    now += 1_000_000n;
    const roll = prng.below(100);
    const path = prng.pick(names);
    if (roll < 30) {
      const at = prng.chance(0.4) ? 0 : prng.below(20_000);
      const data = pattern(prng.pick([1, 700, 4096, 9000]), seed + step, at);
      attempt(() => {
        const fh = fs.create(path, 0o644, O_CREAT | O_WRONLY, root);
        fs.write(fh, data, data.length, at);
        fs.release(fh);
      });
    } else if (roll < 40) {
      attempt(() => fs.rename(path, prng.pick(names)));
    } else if (roll < 48) {
      attempt(() => fs.unlink(path));
    } else if (roll < 54) {
      attempt(() => fs.link(path, prng.pick(names)));
    } else if (roll < 62) {
      attempt(() => fs.truncate(path, prng.pick([0, 10, 4096, 12_000])));
    } else if (roll < 68) {
      attempt(() => fs.setxattr(path, prng.pick(["user.a", "user.b"]), pattern(prng.pick([5, 900]), step), 0));
    } else if (roll < 71) {
      attempt(() => (prng.chance(0.5) ? fs.mkdir("/B/empty/d", 0o755, root) : fs.rmdir("/B/empty/d")));
    } else if (roll < 73) {
      // A snapshot after logged fsyncs holds their state: commit what is pending, then snapshot alone.
      durable(() => fs.sync());
      durable(() => fs.createSubvolume(`snap${snapshots}`, { readOnly: true }), [`subvolume snap${snapshots} true`]);
      snapshots++;
      continue;
    } else if (roll < 75) {
      durable(() => fs.sync());
      continue;
    }
    if (prng.chance(0.6)) {
      // fsync, fdatasync or fsyncdir after most operations.
      const kind = prng.below(3);
      let fh: number;
      let dir = kind === 2;
      if (dir) fh = fs.opendir(prng.pick(["/", "/A", "/B"]));
      else {
        try {
          fh = fs.open(path, O_RDWR);
        } catch {
          fh = fs.opendir("/");
          dir = true;
        }
      }
      durable(() => (dir ? fs.fsyncdir(fh, false) : fs.fsync(fh, kind === 1)));
      if (dir) fs.releasedir(fh);
      else fs.release(fh);
    }
  }
  return { trace: device.trace, synced, logged };
}

/** Reopens the crashed device: the right tree, a clean checker, no log after the replay; then takes a write. */
function verifyRecovery(seed: number, crashAt: number, base: Map<number, Uint8Array>, run: RunResult): "old" | "new" {
  const recovered = crashedDevice(base, run.trace, crashAt).recover(new Prng(seed * 1_000_003 + crashAt));
  const generation = readDurableSuperblock(recovered).generation;
  // Durable points that returned before the crash, and the one it hit.
  const passed = run.synced.filter((p) => p.opsAfter < crashAt).length;
  const last = run.synced[passed - 1]!;
  const inflight = run.synced[passed]!;
  expect(inflight.opsBefore < crashAt && crashAt <= inflight.opsAfter, `crash at ${crashAt} hits a durable point`).toBe(true);
  let survived: "old" | "new" = "old";
  let expected = last.tree;
  if (generation !== last.generation) {
    expect(generation, `crash at ${crashAt}: durable generation`).toBe(inflight.generation);
    survived = "new";
    expected = inflight.tree;
  }
  // The checker sees the state with the log applied, before any replay (what fsck -n sees).
  expectFsClean(recovered);
  const fs = GroveFs.open(recovered, { clock: testClock(3_000_000_000_000_000_000n) });
  expect(fs.store.logRecords).toBe(0);
  expect(readLog(recovered, readSuperblock(recovered)).validRecords, `crash at ${crashAt}: log left after replay`).toBe(0);
  expectSameTree(snapshotTree(fs), expected, `crash at ${crashAt} (${survived} state)`);
  // Every tenth point also takes a logged fsync after the replay, and is checked again.
  if (crashAt % 10 === 0) {
    const fh = fs.create("/after", 0o644, O_CREAT | O_RDWR, root);
    fs.write(fh, pattern(5000, crashAt), 5000, 0);
    fs.fsync(fh, false);
    fs.release(fh);
    fs.close();
    expectFsClean(recovered.reopen());
  } else {
    fs.close();
  }
  return survived;
}

let crashPointsTested = 0;

describe("fsync log: power loss at every write and flush of an fsync workload", () => {
  const base = baseImage();
  for (const seed of seeds([1, 2, 3, 4])) {
    it(`seed ${seed}`, () => {
      withSeed(seed, testFile, () => {
        const full = runWorkload(seed, base);
        const ops = full.trace.length;
        expect(full.logged, "most fsyncs are logged").toBeGreaterThan(full.synced.length / 3);
        const points = Math.min(ops, crashPointsPerSeed);
        const survived = { old: 0, new: 0 };
        for (let i = 0; i < points; i++) {
          const crashAt = 1 + Math.floor((i * ops) / points);
          survived[verifyRecovery(seed, crashAt, base, full)]++;
          crashPointsTested++;
        }
        console.log(
          `seed ${seed}: ${ops} device operations, ${full.synced.length - 1} durable points (${full.logged} logged fsyncs); ` +
            `${points} crash points, ${survived.new} kept the one in flight`,
        );
        expect(survived.new).toBeGreaterThan(0);
      });
    });
  }
  it("reports the crash points tested", () => {
    console.log(`fsync log crash points tested: ${crashPointsTested}`);
  });
});

/** One operation of the ACE-style sequences, on the base image's small tree. */
interface AceOp {
  name: string;
  run: (fs: GroveFs) => void;
}

function withFile(fs: GroveFs, path: string, body: (fh: number) => void): void {
  const fh = fs.open(path, O_RDWR);
  try {
    body(fh);
  } finally {
    fs.release(fh);
  }
}

const aceOps: AceOp[] = [
  { name: "creat A/new", run: (fs) => fs.release(fs.create("/A/new", 0o644, O_CREAT | O_WRONLY, root)) },
  {
    name: "creat+write B/new",
    run: (fs) => {
      const fh = fs.create("/B/new", 0o644, O_CREAT | O_WRONLY, root);
      fs.write(fh, pattern(4096, 7), 4096, 0);
      fs.release(fh);
    },
  },
  { name: "write A/foo", run: (fs) => withFile(fs, "/A/foo", (fh) => fs.write(fh, pattern(4096, 8), 4096, 0)) },
  { name: "append A/bar", run: (fs) => withFile(fs, "/A/bar", (fh) => fs.write(fh, pattern(5000, 9), 5000, 3000)) },
  { name: "link A/foo B/link", run: (fs) => fs.link("/A/foo", "/B/link") },
  { name: "unlink A/bar", run: (fs) => fs.unlink("/A/bar") },
  { name: "rename A/foo B/foo", run: (fs) => fs.rename("/A/foo", "/B/foo") },
  { name: "rename A/bar A/bar2", run: (fs) => fs.rename("/A/bar", "/A/bar2") },
  { name: "rename B/baz A/foo", run: (fs) => fs.rename("/B/baz", "/A/foo") },
  { name: "truncate A/foo 100", run: (fs) => fs.truncate("/A/foo", 100) },
  { name: "truncate B/baz 20000", run: (fs) => fs.truncate("/B/baz", 20_000) },
  { name: "mkdir A/sub", run: (fs) => fs.mkdir("/A/sub", 0o755, root) },
  { name: "rmdir B/empty", run: (fs) => fs.rmdir("/B/empty") },
  { name: "setxattr B/baz", run: (fs) => fs.setxattr("/B/baz", "user.x", pattern(50, 3), 0) },
  { name: "fsync A/foo", run: (fs) => withFile(fs, "/A/foo", (fh) => fs.fsync(fh, false)) },
  { name: "fdatasync A/bar", run: (fs) => withFile(fs, "/A/bar", (fh) => fs.fsync(fh, true)) },
  {
    name: "fsyncdir B",
    run: (fs) => {
      const fh = fs.opendir("/B");
      fs.fsyncdir(fh, false);
      fs.releasedir(fh);
    },
  },
];

/** Every sequence of 1 to `longest` operations, as index lists. */
function aceSequences(longest: number): number[][] {
  const all: number[][] = [];
  let layer: number[][] = [[]];
  for (let length = 1; length <= longest; length++) {
    layer = layer.flatMap((seq) => aceOps.map((_, i) => [...seq, i]));
    all.push(...layer);
  }
  return all;
}

/**
 * Runs a sequence on the base image, then an fsync (of the last file it
 * named, or the root directory), then loses power: every unflushed write is
 * dropped. The volume must show the tree fsync promised (here the whole
 * state: the log records it all) and pass the checker.
 */
function checkAceSequence(base: Map<number, Uint8Array>, seq: number[]): void {
  const device = SimDevice.fromDurable(base, deviceBlocks);
  const now = 2_000_000_000_000_000_000n;
  const fs = GroveFs.open(device, { clock: () => now, accessTimes: { update: "noatime", directories: false } });
  for (const i of seq) {
    try {
      aceOps[i]!.run(fs);
    } catch (error) {
      if (!(error instanceof GroveError)) throw error;
    }
  }
  let fh: number;
  try {
    fh = fs.open("/A/foo", O_RDWR);
    fs.fsync(fh, false);
    fs.release(fh);
  } catch (error) {
    if (!(error instanceof GroveError)) throw error;
    fh = fs.opendir("/");
    fs.fsyncdir(fh, false);
    fs.releasedir(fh);
  }
  const promised = snapshotTree(fs);
  const crashed = device.recover(new Prng(1), { keepProbability: 0, tearProbability: 0 });
  expectFsClean(crashed);
  const after = GroveFs.open(crashed, { clock: () => now });
  expectSameTree(snapshotTree(after), promised, `after ${seq.map((i) => aceOps[i]!.name).join(", ")}`);
  after.close();
}

describe("fsync log: CrashMonkey/ACE sequences of one to three operations, power loss after the final fsync", () => {
  const base = baseImage();
  const sequences = aceSequences(3);
  // All sequences of one and two operations; of three, every one with GROVE_ACE=all, else a seeded sample.
  const sampled = Number(process.env.GROVE_ACE_SAMPLE ?? 1500);
  it(`${sequences.length} sequences of ${aceOps.length} operations`, () => {
    const short = sequences.filter((s) => s.length < 3);
    let long = sequences.filter((s) => s.length === 3);
    if (process.env.GROVE_ACE !== "all") {
      const prng = new Prng(Number(process.env.GROVE_SEED ?? 13));
      long = Array.from({ length: Math.min(sampled, long.length) }, () => long[prng.below(long.length)]!);
    }
    for (const seq of [...short, ...long]) checkAceSequence(base, seq);
    crashPointsTested += short.length + long.length;
    console.log(`ACE: ${short.length + long.length} of ${sequences.length} sequences checked; crash points in this file: ${crashPointsTested}`);
  });
});

describe("fsync log: replay", () => {
  /** A volume left with a log of `records` records after its last commit (power lost after the last fsync). */
  function loggedImage(records: number): { image: Map<number, Uint8Array>; tree: string[] } {
    const device = SimDevice.fromDurable(baseImage(), deviceBlocks);
    const now = 2_000_000_000_000_000_000n;
    const fs = GroveFs.open(device, { clock: () => now, accessTimes: { update: "noatime", directories: false } });
    for (let i = 0; i < records; i++) {
      const fh = fs.create(`/A/r${i}`, 0o644, O_CREAT | O_RDWR, root);
      fs.write(fh, pattern(6000, i), 6000, 0);
      if (i % 3 === 1) fs.rename(`/A/r${i - 1}`, `/B/r${i - 1}`);
      fs.fsync(fh, i % 2 === 0);
      fs.release(fh);
    }
    expect(fs.store.logRecords).toBe(records);
    return { image: durableImage(device), tree: snapshotTree(fs) };
  }

  it("a read-only open shows the logged state and writes nothing; the checker sees the same", () => {
    const { image, tree } = loggedImage(5);
    const device = SimDevice.fromDurable(image, deviceBlocks);
    const report = expectFsClean(device);
    expect(report.space.forest.log?.chain.length).toBe(5);
    const before = device.operations;
    const fs = GroveFs.open(device, { readOnly: true });
    expectSameTree(snapshotTree(fs), tree, "read-only open");
    fs.close();
    expect(device.operations).toBe(before);
    const again = device.reopen();
    expect(readLog(again, readSuperblock(again)).chain.length).toBe(5);
  });

  it("power loss at every write and flush of the replay replays again", () => {
    const { image, tree } = loggedImage(4);
    const clean = SimDevice.fromDurable(image, deviceBlocks);
    GroveFs.open(clean).close();
    const replayOps = clean.operations;
    expect(replayOps).toBeGreaterThan(2);
    for (let crashAt = 1; crashAt <= replayOps; crashAt++) {
      const device = SimDevice.fromDurable(image, deviceBlocks);
      device.crashAtOperation = crashAt;
      expect(() => GroveFs.open(device)).toThrow(SimulatedCrash);
      const recovered = device.recover(new Prng(crashAt));
      expectFsClean(recovered);
      const fs = GroveFs.open(recovered);
      expectSameTree(snapshotTree(fs), tree, `replay crashed at ${crashAt}`);
      expect(readLog(recovered, readSuperblock(recovered)).validRecords).toBe(0);
      fs.close();
      expectFsClean(recovered.reopen());
    }
  });

  it("fsck -n reports the log without writing; fsck -y replays it", () => {
    const { image } = loggedImage(3);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "grove-fsynclog-"));
    try {
      const file = path.join(dir, "img");
      const fd = fs.openSync(file, "w");
      fs.ftruncateSync(fd, deviceBlocks * 4096);
      for (const [lba, data] of image) fs.writeSync(fd, data, 0, data.length, lba * 4096);
      fs.closeSync(fd);
      const check = runFsck(file, { readonly: true }, null).result;
      expect(check.exitCode).toBe(fsckExit.clean);
      expect(check.notes.join("\n")).toMatch(/fsync log: 3 records extend committed generation/);
      const device = FileDevice.open(file, { readOnly: true });
      expect(readLog(device, readSuperblock(device)).chain.length).toBe(3);
      device.close();
      const fix = runFsck(file, { repair: true }, null).result;
      expect(fix.exitCode).toBe(fsckExit.clean);
      expect(fix.notes.join("\n")).toMatch(/fsync log: replayed 3 records/);
      const after = FileDevice.open(file, { readOnly: true });
      expect(readLog(after, readSuperblock(after)).validRecords).toBe(0);
      after.close();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it("a torn last record ends the log: the state of the record before it", () => {
    const { image } = loggedImage(3);
    const device = SimDevice.fromDurable(image, deviceBlocks);
    const sb = readSuperblock(device);
    const log = readLog(device, sb);
    expect(log.chain.length).toBe(3);
    const before = SimDevice.fromDurable(loggedImage(2).image, deviceBlocks);
    const expected = snapshotTree(GroveFs.open(before, { readOnly: true }));
    // Tear the third record: its second half did not land (old bytes there).
    const torn = Buffer.alloc(4096);
    device.read(log.chain[2]!, torn);
    torn.fill(0xa5, 2048);
    device.write(log.chain[2]!, torn);
    device.flush();
    const replay = readLog(device, sb);
    expect(replay.chain.length).toBe(2);
    expect(replay.end).toMatch(/checksum/);
    expectFsClean(device);
    const fs = GroveFs.open(device);
    expectSameTree(snapshotTree(fs), expected, "after a torn record");
    fs.close();
    expectFsClean(device.reopen());
  });
});

describe("fsync log on an image made before it", () => {
  it("the first fsync commits and reserves the head, later ones are logged and replayed", () => {
    const bytes = zlib.gunzipSync(fs.readFileSync(path.join(path.dirname(fileURLToPath(import.meta.url)), "fixtures", "legacy_image.img.gz")));
    const device = new SimDevice(bytes.length / 4096);
    for (let lba = 0; lba < device.blockCount; lba++) {
      const block = bytes.subarray(lba * 4096, (lba + 1) * 4096);
      if (block.some((b) => b !== 0)) device.write(lba, block);
    }
    device.flush();
    expect(readSuperblock(device).features & featureFsyncLog).toBe(0n);
    const g = GroveFs.open(device);
    const records: number[] = [];
    for (let i = 0; i < 3; i++) {
      const fh = g.create(`/d0/new${i}`, 0o644, O_CREAT | O_RDWR, root);
      g.write(fh, pattern(7000, i), 7000, 0);
      g.fsync(fh, false);
      g.release(fh);
      records.push(g.store.logRecords);
    }
    expect(records).toEqual([0, 1, 2]);
    expect(readSuperblock(device).features & featureFsyncLog).toBe(featureFsyncLog);
    const crashed = SimDevice.fromDurable(durableImage(device), device.blockCount);
    expectFsClean(crashed);
    const after = GroveFs.open(crashed);
    for (let i = 0; i < 3; i++) expect(readFile(after, `/d0/new${i}`).equals(pattern(7000, i))).toBe(true);
    expect(readFile(after, "/d0/file-0000").equals(pattern(50, 0))).toBe(true);
    after.close();
  });
});
