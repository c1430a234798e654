/**
 * Commit-rate benchmark: what the superblock twin's extra flush costs.
 *
 *   npx tsx scripts/bench_commit.ts [--commits N] [--rounds R] [--puts P] [--dir DIR]
 *
 * One 128 MiB image file (so it has the 64 MiB backup) on a real filesystem
 * (DIR, default the system temp dir), opened twice in turn:
 *   twin    the default: slot, fdatasync, twin and backup, fdatasync
 *   single  the baseline: slot, twin and backup, one fdatasync (twinFlush: false)
 * Each run does N small commits (P puts of 100 bytes each, then Store.commit,
 * whose node flush is the same in both). Runs are interleaved ABBA for R
 * rounds, so that drift in the machine's load hits both alike. Prints
 * commits/s of each run, then the summary line:
 *   commit: twin=X/s single=Y/s ratio=X/Y
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { parseArgs } from "node:util";
import { formatVolume, openVolume } from "../alloc/index.js";
import { FileDevice, Prng } from "../kvstore/index.js";

const imageBytes = 128 * 1024 * 1024;
const treeId = 256;

function parse(): { commits: number; rounds: number; puts: number; dir: string } {
  const { values } = parseArgs({
    options: {
      commits: { type: "string", default: "300" },
      rounds: { type: "string", default: "3" },
      puts: { type: "string", default: "4" },
      dir: { type: "string", default: os.tmpdir() },
    },
  });
  return { commits: Number(values.commits), rounds: Number(values.rounds), puts: Number(values.puts), dir: values.dir! };
}

function run(image: string, twinFlush: boolean, commits: number, puts: number, prng: Prng): number {
  const device = FileDevice.open(image);
  const { store } = openVolume(device, { twinFlush });
  const tree = store.openTree(treeId);
  const start = process.hrtime.bigint();
  for (let c = 0; c < commits; c++) {
    for (let i = 0; i < puts; i++) tree.put(prng.bytes(16), prng.bytes(100));
    store.commit();
  }
  const ns = Number(process.hrtime.bigint() - start);
  store.close();
  return commits / (ns / 1e9);
}

function main(): void {
  const config = parse();
  const dir = fs.mkdtempSync(path.join(config.dir, "grovefs-bench-commit-"));
  const image = path.join(dir, "image.grove");
  try {
    const device = FileDevice.createImage(image, imageBytes);
    const { store } = formatVolume(device);
    store.createTree(treeId);
    store.commit();
    store.close();
    const prng = new Prng(1);
    const rates = { twin: [] as number[], single: [] as number[] };
    for (let round = 0; round < config.rounds; round++) {
      for (const variant of ["twin", "single", "single", "twin"] as const) {
        const rate = run(image, variant === "twin", config.commits, config.puts, prng);
        rates[variant].push(rate);
        console.log(`round ${round + 1} ${variant.padEnd(6)} ${rate.toFixed(1)} commits/s`);
      }
    }
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    const twin = mean(rates.twin);
    const single = mean(rates.single);
    console.log(`commit: twin=${twin.toFixed(1)}/s single=${single.toFixed(1)}/s ratio=${(twin / single).toFixed(3)}`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main();
