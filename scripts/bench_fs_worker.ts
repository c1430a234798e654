/**
 * Metadata worker for scripts/bench_fs.ts: one timed phase over N empty files
 * in one directory, run in its own process.
 *
 *   node --import tsx scripts/bench_fs_worker.ts <create|stat|unlink> DIR N
 *
 * It exists as a separate process because a FUSE mount must never be driven
 * by the process serving it (synchronous calls on one's own mount deadlock),
 * and bench_fs.ts keeps all I/O on a mount in children.
 *
 * Phases (files are named f000000, f000001, ... in DIR):
 *   create  mkdir -p DIR (untimed), then open(O_CREAT|O_EXCL|O_WRONLY) + close
 *           for each file
 *   stat    lstat each file; each must exist and be a regular file
 *   unlink  unlink each file; DIR must be empty afterwards (checked untimed)
 *
 * Only the loop is timed (process.hrtime.bigint). No fsync or sync is issued:
 * the figure is the cost of the calls as the FUSE server answers them.
 * On success the last stdout line is JSON: {"phase":P,"ops":N,"seconds":S}.
 */
import * as fs from "node:fs";
import * as path from "node:path";

const phases = ["create", "stat", "unlink"] as const;
type Phase = (typeof phases)[number];

function main(): void {
  const [phaseArg, dir, countArg] = process.argv.slice(2);
  if (!phases.includes(phaseArg as Phase) || !dir || !countArg) {
    throw new Error("usage: bench_fs_worker.ts <create|stat|unlink> DIR N");
  }
  const phase = phaseArg as Phase;
  const n = Number(countArg);
  if (!Number.isSafeInteger(n) || n < 1) throw new Error(`N must be a positive integer, got "${countArg}"`);

  const width = Math.max(6, String(n - 1).length);
  const names = Array.from({ length: n }, (_, i) => path.join(dir, `f${String(i).padStart(width, "0")}`));
  if (phase === "create") fs.mkdirSync(dir, { recursive: true });

  const start = process.hrtime.bigint();
  switch (phase) {
    case "create":
      for (const name of names) fs.closeSync(fs.openSync(name, "wx", 0o644));
      break;
    case "stat":
      for (const name of names) {
        if (!fs.lstatSync(name).isFile()) throw new Error(`${name} is not a regular file`);
      }
      break;
    case "unlink":
      for (const name of names) fs.unlinkSync(name);
      break;
  }
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;

  if (phase === "unlink") {
    const left = fs.readdirSync(dir).length;
    if (left !== 0) throw new Error(`${left} entries left in ${dir} after unlinking ${n} files`);
  }
  process.stdout.write(`${JSON.stringify({ phase, ops: n, seconds })}\n`);
}

try {
  main();
} catch (err) {
  process.stderr.write(`bench_fs_worker: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
}
