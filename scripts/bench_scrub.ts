/**
 * Scrub and fsck throughput against the disk (issue 12):
 *
 *   npm run bench:scrub -- [--files N] [--runs R] [--metadata single|dup] [--seed S] [--keep]
 *
 * Builds the snapshot benchmark's tree (scripts/bench_snapshot_tree.ts: N
 * files of 0–16 KiB, default 20000) in an image file under the OS temp dir,
 * through the library, then times R rounds (default 3) of, interleaved ABBA
 * (the order flips each round), each after a dropped page cache when root:
 *   dd     `dd if=REF of=/dev/null bs=1M` (cold), REF a plain file as large as
 *          the image's used bytes, written beside it (an image is sparse,
 *          and holes read without the disk): the sequential read the disk gives;
 *   scrub  an in-process scrub (GroveFs.open, VolumeScrub.run): every node
 *          copy and written data block read and checked;
 *   fsck   `checkFilesystem(device, {verifyData: true})` in-process.
 * Each is reported in MB/s of bytes it read (dd: the image's used bytes),
 * and as a ratio to dd's rate, medians over the rounds. Its last line is
 * `scrub vs dd: scrub=R fsck=R`.
 *
 * A benchmark, not a test: no figure fails the run.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { parseArgs } from "node:util";
import { GroveFs, checkFilesystem } from "../fs/index.js";
import { FileDevice, blockSizeBytes } from "../kvstore/index.js";
import { makeTree, populateGrove } from "./bench_snapshot_tree.js";
import { canDropCaches, dropCaches, median, timeChild, timed } from "./bench_snapshot_tools.js";

const { values } = parseArgs({
  options: {
    files: { type: "string" },
    runs: { type: "string" },
    metadata: { type: "string" },
    seed: { type: "string" },
    keep: { type: "boolean" },
  },
});
const files = Number(values.files ?? 20000);
const runs = Number(values.runs ?? 3);
const metadata = values.metadata === "single" ? "single" : "dup";
const seed = Number(values.seed ?? 1);
const log = (line: string): void => void process.stdout.write(`${line}\n`);

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "grovefs-bench-scrub-"));
const image = path.join(dir, "image.grove");
const drop = canDropCaches();
try {
  const imageBytes = Math.max(512 * 1024 * 1024, files * 40 * 1024);
  fs.writeFileSync(image, "");
  fs.truncateSync(image, imageBytes);
  let device = FileDevice.open(image, { lock: true });
  GroveFs.format(device, { metadata });
  device.close();
  device = FileDevice.open(image, { lock: true });
  const volume = GroveFs.open(device);
  const built = timed(() => populateGrove(volume, makeTree(files, seed)));
  const usedBytes = volume.info().usedBytes;
  volume.close();
  device.close();
  log(`tree: ${files} files, ${metadata} metadata, ${(usedBytes / 1e6).toFixed(1)} MB in use, built in ${(built.ms / 1000).toFixed(1)} s; page cache ${drop ? "dropped before each run" : "NOT dropped (not root)"}`);

  const ddCount = Math.ceil(usedBytes / (1024 * 1024)) + 1;
  const ref = path.join(dir, "ref.bin");
  const chunk = Buffer.alloc(1024 * 1024);
  const fd = fs.openSync(ref, "w");
  for (let i = 0; i < ddCount; i++) {
    for (let j = 0; j < chunk.length; j += 4) chunk.writeUInt32LE((i * 2654435761 + j * 40503) >>> 0, j);
    fs.writeSync(fd, chunk);
  }
  fs.fsyncSync(fd);
  fs.closeSync(fd);
  const rates: Record<"dd" | "scrub" | "fsck", number[]> = { dd: [], scrub: [], fsck: [] };
  const measure = {
    dd: (): number => {
      dropCaches(drop);
      const t = timeChild("dd", [`if=${ref}`, "of=/dev/null", "bs=1M", `count=${ddCount}`]);
      return (ddCount * 1024 * 1024) / 1e6 / (t.ms / 1000);
    },
    scrub: (): number => {
      dropCaches(drop);
      const d = FileDevice.open(image, { lock: true });
      try {
        const t = timed(() => {
          const g = GroveFs.open(d);
          const scrub = g.scrub();
          scrub.run();
          g.close();
          return scrub.summary();
        });
        if (t.result.corrected + t.result.uncorrected > 0) throw new Error(`scrub found damage: ${t.result.findings.slice(0, 3).join("; ")}`);
        return t.result.bytesRead / 1e6 / (t.ms / 1000);
      } finally {
        d.close();
      }
    },
    fsck: (): number => {
      dropCaches(drop);
      const d = FileDevice.open(image, { readOnly: true });
      try {
        const t = timed(() => checkFilesystem(d, { verifyData: true }));
        if (t.result.problems.length > 0) throw new Error(`fsck found problems: ${t.result.problems.slice(0, 3).join("; ")}`);
        // What it read: every reachable block (node copies and data), once.
        const bytes = t.result.space.forest.reachableBlocks * blockSizeBytes;
        return bytes / 1e6 / (t.ms / 1000);
      } finally {
        d.close();
      }
    },
  };
  const order: Array<"dd" | "scrub" | "fsck"> = ["dd", "scrub", "fsck"];
  for (let r = 0; r < runs; r++) {
    const round = r % 2 === 0 ? order : [...order].reverse();
    for (const name of round) rates[name].push(measure[name]());
    log(`round ${r + 1}: ${order.map((n) => `${n} ${rates[n].at(-1)!.toFixed(1)} MB/s`).join(", ")}`);
  }
  const dd = median(rates.dd);
  log("");
  log("| target | MB/s (median) | vs dd |");
  log("|---|---|---|");
  for (const name of order) log(`| ${name} | ${median(rates[name]).toFixed(1)} | ${(median(rates[name]) / dd).toFixed(2)} |`);
  log("");
  log(`scrub vs dd: scrub=${(median(rates.scrub) / dd).toFixed(2)} fsck=${(median(rates.fsck) / dd).toFixed(2)}`);
} finally {
  if (values.keep === true) log(`kept ${dir}`);
  else fs.rmSync(dir, { recursive: true, force: true });
}
