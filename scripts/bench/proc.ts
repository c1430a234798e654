/**
 * Child processes for bench:fs. Every byte of I/O on a mount is done by a
 * child (fio, cp, tar, git, the metadata worker), never by the bench's own
 * process: a synchronous call on a FUSE mount from the process serving it
 * deadlocks, and keeping all of it in children also keeps the timings free
 * of the bench's own event loop.
 *
 * Short-lived children are tracked so that an interrupted run can kill them
 * before it unmounts anything.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import * as path from "node:path";

export const repoRoot = path.resolve(path.dirname(new URL(import.meta.url).pathname), "..", "..");
/** Runs a TypeScript file in one process (no npx or tsx wrapper in between, so SIGTERM reaches it). */
export const tsNode = [process.execPath, "--import", "tsx"];
export const isRoot = process.getuid?.() === 0;

export const MiB = 1024 ** 2;
export const GiB = 1024 ** 3;
/** The longest any one benchmark command may take before it is killed. */
export const commandTimeoutMs = 3_600_000;

let verboseOutput = false;
export function setVerbose(on: boolean): void {
  verboseOutput = on;
}
export const verbose = (): boolean => verboseOutput;

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  timeoutMs?: number;
  cwd?: string;
  env?: NodeJS.ProcessEnv;
}

/** Short-lived children (fio, workers, mountpoint, ...), killed first when the run is interrupted. */
export const runningCommands = new Set<ChildProcess>();

/** Runs a command to completion, capturing its output. */
export function run(argv: string[], opts: RunOptions = {}): Promise<RunResult> {
  if (verboseOutput) console.log(`  $ ${argv.join(" ")}`);
  return new Promise((resolve, reject) => {
    const child = spawn(argv[0], argv.slice(1), { cwd: opts.cwd ?? repoRoot, env: opts.env ?? process.env, stdio: ["ignore", "pipe", "pipe"] });
    runningCommands.add(child);
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const timer = opts.timeoutMs ? setTimeout(() => child.kill("SIGKILL"), opts.timeoutMs) : undefined;
    child.on("error", (err) => {
      clearTimeout(timer);
      runningCommands.delete(child);
      reject(err);
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      runningCommands.delete(child);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** Runs a command that must succeed; on failure the error carries its stderr. */
export async function runOk(argv: string[], opts: RunOptions = {}): Promise<RunResult> {
  const r = await run(argv, opts);
  if (r.code !== 0) {
    const why = r.signal ? `killed by ${r.signal}` : `exit ${r.code}`;
    const shown = argv[0] === "sh" && argv[1] === "-c" ? `sh -c '${argv[2]}'` : `${path.basename(argv[0])} ${argv.slice(1, 3).join(" ")} ...`;
    throw new Error(`${shown} failed (${why}): ${tail(r.stderr || r.stdout)}`);
  }
  return r;
}

/** Wall-clock seconds of one command that must succeed, from spawn to exit, and what it printed. */
export async function timedOutput(argv: string[], opts: RunOptions = {}): Promise<{ seconds: number; stdout: string }> {
  const started = performance.now();
  const r = await runOk(argv, { timeoutMs: commandTimeoutMs, ...opts });
  return { seconds: (performance.now() - started) / 1000, stdout: r.stdout };
}

export async function timed(argv: string[], opts: RunOptions = {}): Promise<number> {
  return (await timedOutput(argv, opts)).seconds;
}

/** A shell pipeline with its arguments passed as $1, $2, ... (never spliced into the script). */
export function sh(script: string, ...args: string[]): string[] {
  return ["sh", "-c", script, "sh", ...args];
}

/** The last lines of a command's output, without a Node stack trace's frames (the error line is what tells). */
export function tail(text: string, lines = 6): string {
  const kept = text
    .trim()
    .split("\n")
    .filter((line) => !/^\s+at /.test(line) && !/^Node\.js v\d/.test(line) && line.trim() !== "");
  return kept.slice(-lines).join(" | ");
}

export function commandExists(name: string): boolean {
  return spawnSync("sh", ["-c", 'command -v "$1"', "sh", name], { stdio: "ignore" }).status === 0;
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
