/**
 * Send/receive benchmark (issue 14), each figure against a baseline from the
 * same run on this machine:
 *
 *   npm run bench:send -- [--files N] [--file-kb K] [--runs R] [--incremental-only] [--compress lz4] [--keep]
 *
 *   full         `grovefs send A snap | grovefs receive B` of a tree of N
 *                files of K KiB (compressible text), against `cp -a` of the
 *                same tree between the two volumes mounted (then `grovefs
 *                sync` of the copy): R runs each, interleaved ABBA, medians,
 *                MB/s of file data and the ratio.
 *   incremental  `grovefs send A s1 --parent s0` where s1 rewrote 1% of the
 *                files, against the same with 100% rewritten: the time
 *                ratio (goal about 0.01-0.05) and each stream's size
 *                against the bytes that changed (goal at most 1.1x plus
 *                metadata). The same two sends are also timed in this
 *                process through the library (open the image, send to a
 *                file, close: no CLI start), and the CLI's start alone
 *                (`grovefs --version`), which is the fixed cost the CLI
 *                ratio carries (node and the module graph); the CLI ratio
 *                is also printed net of it. The library's first pair is
 *                timed apart (cold JIT and page cache), the rest are warm.
 *                --incremental-only skips the full part (and the mounts).
 *   stored       with --compress lz4 (both volumes made so), each stream's
 *                size against the compressed data it carries as stored on
 *                the source (`grovefs info`'s compressed disk bytes of the
 *                tree it sends; its blocks are padded, the stream's bytes
 *                not), and how much of the stream is that compressed data.
 *
 * Needs root and /dev/fuse for the cp -a baseline (the mounts). Images live
 * in a fresh directory under the OS temp dir, removed at the end unless
 * --keep. Timings include starting the CLI processes (about 0.2 s each), as
 * a user running the commands would see; so do the baselines.
 */
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { FileDevice } from "../kvstore/index.js";
import { GroveFs, send as sendLib } from "../fs/index.js";

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const bin = path.join(repo, "bin", "grovefs.mjs");

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
}

const files = arg("files", 2000);
const fileKb = arg("file-kb", 64);
const runs = arg("runs", 4);
const keep = process.argv.includes("--keep");
const incrementalOnly = process.argv.includes("--incremental-only");
const compressIndex = process.argv.indexOf("--compress");
const compress = compressIndex >= 0 ? process.argv[compressIndex + 1]! : "none";
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "grovefs-bench-send-"));

function sh(script: string): string {
  return execFileSync("sh", ["-c", script], { encoding: "utf8", maxBuffer: 64 << 20 });
}

function grove(args: string): string {
  return sh(`"${process.execPath}" "${bin}" ${args}`);
}

function timed(body: () => void): number {
  const start = performance.now();
  body();
  return (performance.now() - start) / 1000;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/** File i's contents in generation g: compressible text, different per file and generation. */
function contents(i: number, g: number): Buffer {
  const line = `file ${i} generation ${g} ` + "lorem ipsum dolor sit amet ".repeat(3) + "\n";
  return Buffer.from(line.repeat(Math.ceil((fileKb * 1024) / line.length)).slice(0, fileKb * 1024));
}

/** Writes files [0, files) of generation g where `which(i)`, through the library on the unmounted image. */
function writeTree(image: string, g: number, which: (i: number) => boolean): number {
  const device = FileDevice.open(image, { lock: true });
  const volume = GroveFs.open(device);
  let bytes = 0;
  try {
    for (let i = 0; i < files; i++) {
      if (!which(i)) continue;
      const dirName = `/d${Math.floor(i / 500)}`;
      try {
        volume.mkdir(dirName, 0o755, { uid: 0, gid: 0 });
      } catch {
        // Made for an earlier file.
      }
      const data = contents(i, g);
      const fh = volume.create(`${dirName}/f${i}`, 0o644, fs.constants.O_CREAT | fs.constants.O_RDWR | fs.constants.O_TRUNC, { uid: 0, gid: 0 });
      volume.write(fh, data, data.length, 0);
      volume.release(fh);
      bytes += data.length;
    }
  } finally {
    volume.close();
    device.close();
  }
  return bytes;
}

function main(): void {
  const a = path.join(dir, "a.img");
  const b = path.join(dir, "b.img");
  const treeMb = (files * fileKb) / 1024;
  const sizeMb = Math.max(512, Math.ceil(treeMb * (4 * runs + 8)));
  grove(`mkfs "${a}" --size ${sizeMb}M --compress ${compress}`);
  grove(`mkfs "${b}" --size ${sizeMb}M --compress ${compress}`);
  const dataBytes = writeTree(a, 0, () => true);
  grove(`snapshot create "${a}" s0`);
  console.log(`tree: ${files} files of ${fileKb} KiB (${(dataBytes / 1e6).toFixed(1)} MB), ${runs} runs each, ABBA, compression ${compress}`);
  if (compress !== "none") stored(a, b);

  if (!incrementalOnly) full(a, b, dataBytes);
  incrementalPart(a);
}

/** An incremental send through the library, into `out`: open, send, fsync, close. */
function sendInProcess(image: string, snap: string, parent: string, out: string): void {
  const device = FileDevice.open(image, { readOnly: true, lock: true });
  const volume = GroveFs.open(device, { readOnly: true });
  const fd = fs.openSync(out, "w");
  try {
    sendLib.sendSnapshot(volume, snap, (chunk) => fs.writeSync(fd, chunk), { parent });
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
    volume.close();
    device.close();
  }
}

function full(a: string, b: string, dataBytes: number): void {
  // ---- full: send | receive against cp -a between the two mounted volumes ----
  const mA = path.join(dir, "mA");
  const mB = path.join(dir, "mB");
  fs.mkdirSync(mA);
  fs.mkdirSync(mB);
  const sendTimes: number[] = [];
  const cpTimes: number[] = [];
  const sendRun = (i: number): void => {
    sendTimes.push(timed(() => sh(`"${process.execPath}" "${bin}" send "${a}" s0 | "${process.execPath}" "${bin}" receive "${b}" --name r${i} > /dev/null`)));
  };
  const cpRun = (i: number): void => {
    grove(`mount "${a}" "${mA}" -o ro`);
    grove(`mount "${b}" "${mB}"`);
    try {
      cpTimes.push(timed(() => sh(`cp -a "${mA}/." "${mB}/copy${i}" && "${process.execPath}" "${bin}" sync "${mB}"`)));
    } finally {
      grove(`umount "${mA}"`);
      grove(`umount "${mB}"`);
    }
  };
  for (let r = 0; r < runs; r++) {
    // ABBA: A B B A A B B A ...
    if (r % 2 === 0) {
      sendRun(r);
      cpRun(r);
    } else {
      cpRun(r);
      sendRun(r);
    }
  }
  const send = median(sendTimes);
  const cp = median(cpTimes);
  console.log(`full     send|receive ${send.toFixed(2)} s (${(dataBytes / 1e6 / send).toFixed(1)} MB/s)   cp -a + sync ${cp.toFixed(2)} s (${(dataBytes / 1e6 / cp).toFixed(1)} MB/s)   ratio ${(send / cp).toFixed(2)} (time, send/cp)`);
  fullFigures = { ...fullFigures, fullSendS: send, cpS: cp, fullRatio: send / cp };
}

let fullFigures: Record<string, number> = {};

/** The volume's compressed data on disk (grovefs info --json). */
function compressedDiskBytes(image: string): number {
  return (JSON.parse(grove(`info "${image}" --json`)) as { compressed: { diskBytes: number } }).compressed.diskBytes;
}

/** With --compress: the full stream of s0 against the compressed bytes s0's tree holds on disk (the only data on the volume now). */
function stored(a: string, b: string): void {
  const diskBytes = compressedDiskBytes(a);
  const out = path.join(dir, "stored.stream");
  let summary = "";
  const seconds = timed(() => (summary = grove(`send "${a}" s0 -f "${out}" --json`)));
  const streamBytes = fs.statSync(out).size;
  // Compressed bytes as they are stored, without the padding to whole blocks (0 before lz4 extents were sent as stored).
  const storedBytes = (JSON.parse(summary) as { storedDiskBytes?: number }).storedDiskBytes ?? 0;
  grove(`receive "${b}" -f "${out}" --name stored`);
  fs.rmSync(out);
  const received = compressedDiskBytes(b);
  console.log(
    `stored   full stream ${streamBytes} bytes for ${diskBytes} compressed bytes on disk (${(streamBytes / diskBytes).toFixed(3)}x; ${storedBytes} of them compressed data, unpadded)   receiver holds ${received} compressed bytes (${(received / diskBytes).toFixed(3)}x)   send ${seconds.toFixed(2)} s`,
  );
  fullFigures = { ...fullFigures, storedStreamPerDisk: streamBytes / diskBytes, storedReceivedPerDisk: received / diskBytes };
}

function incrementalPart(a: string): void {

  // ---- incremental: 1% against 100% changed ----
  const onePct = Math.max(1, Math.round(files / 100));
  const changedSmall = writeTree(a, 1, (i) => i < onePct);
  grove(`snapshot create "${a}" s1`);
  const changedAll = writeTree(a, 2, () => true);
  grove(`snapshot create "${a}" s2`);
  const smallTimes: number[] = [];
  const allTimes: number[] = [];
  let smallBytes = 0;
  let allBytes = 0;
  const incremental = (snap: string, into: number[]): number => {
    const out = path.join(dir, `${snap}.stream`);
    into.push(timed(() => grove(`send "${a}" ${snap} --parent ${snap === "s1" ? "s0" : "s1"} -f "${out}"`)));
    const size = fs.statSync(out).size;
    fs.rmSync(out);
    return size;
  };
  for (let r = 0; r < runs; r++) {
    if (r % 2 === 0) {
      smallBytes = incremental("s1", smallTimes);
      allBytes = incremental("s2", allTimes);
    } else {
      allBytes = incremental("s2", allTimes);
      smallBytes = incremental("s1", smallTimes);
    }
  }
  const small = median(smallTimes);
  const all = median(allTimes);
  // The same sends in this process (no CLI start), and the CLI's start alone, ABBA.
  const libSmall: number[] = [];
  const libAll: number[] = [];
  const starts: number[] = [];
  const out = path.join(dir, "lib.stream");
  const libRun = (snap: "s1" | "s2"): void => {
    (snap === "s1" ? libSmall : libAll).push(timed(() => sendInProcess(a, snap, snap === "s1" ? "s0" : "s1", out)));
  };
  // The first pair only warms the JIT and the page cache (a process that sends more than once, a daemon, sees
  // the steady state); it is timed apart, as "cold".
  libRun("s1");
  libRun("s2");
  const cold1 = libSmall.pop()!;
  const cold100 = libAll.pop()!;
  for (let r = 0; r < runs; r++) {
    const order: ("s1" | "s2")[] = r % 2 === 0 ? ["s1", "s2"] : ["s2", "s1"];
    for (const snap of order) libRun(snap);
    starts.push(timed(() => grove("--version")));
  }
  fs.rmSync(out, { force: true });
  const lib1 = median(libSmall);
  const lib100 = median(libAll);
  const start = median(starts);
  const net = (small - start) / Math.max(all - start, 1e-9);
  console.log(`incr     1% (${onePct} files) ${small.toFixed(2)} s   100% ${all.toFixed(2)} s   time ratio ${(small / all).toFixed(3)} (CLI; goal 0.01-0.05)`);
  console.log(`incr     CLI net of its start (grovefs --version: ${start.toFixed(2)} s): 1% ${(small - start).toFixed(3)} s   100% ${(all - start).toFixed(3)} s   time ratio ${net.toFixed(3)}`);
  console.log(`incr     library, warm: 1% ${(lib1 * 1000).toFixed(1)} ms   100% ${(lib100 * 1000).toFixed(0)} ms   time ratio ${(lib1 / lib100).toFixed(3)}   (first, cold: ${(cold1 * 1000).toFixed(0)} ms, ${(cold100 * 1000).toFixed(0)} ms)`);
  console.log(`size     1%: ${smallBytes} bytes for ${changedSmall} changed (${(smallBytes / changedSmall).toFixed(3)}x)   100%: ${allBytes} bytes for ${changedAll} changed (${(allBytes / changedAll).toFixed(3)}x)   goal <= 1.1x plus metadata`);
  console.log(
    JSON.stringify({
      files,
      fileKb,
      runs,
      ...fullFigures,
      incrementalRatio: small / all,
      incrementalCliNetRatio: net,
      incrementalLibraryRatio: lib1 / lib100,
      incrementalLibraryColdRatio: cold1 / cold100,
      cliStartS: start,
      streamPerChanged1: smallBytes / changedSmall,
      streamPerChanged100: allBytes / changedAll,
    }),
  );
}

try {
  main();
} finally {
  if (!keep) fs.rmSync(dir, { recursive: true, force: true });
  else console.log(`kept ${dir}`);
}
