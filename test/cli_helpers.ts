/**
 * Shared machinery for the suites that run the CLI as a child process
 * (`node bin/grovefs.mjs ...`): running it, the one-line error form every
 * refusal must take, and another process holding an image's lock.
 */
import { execFile, spawn, type ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { expect } from "vitest";

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
export const bin = path.join(repoRoot, "bin", "grovefs.mjs");
const commandTimeoutMs = 120_000;

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a command to its end (killed after two minutes); never rejects. */
export function run(cmd: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<RunResult> {
  return new Promise((resolve) => {
    execFile(
      cmd,
      args,
      { env: { ...process.env, ...env }, timeout: commandTimeoutMs, killSignal: "SIGKILL", encoding: "utf8", maxBuffer: 64 << 20 },
      (error, stdout, stderr) => {
        const code = error === null ? 0 : typeof error.code === "number" ? error.code : -1;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

/** The grovefs CLI with `args`, in an environment with `env` added (e.g. its own GROVEFS_RUN_DIR). */
export function runGrovefs(args: string[], env: NodeJS.ProcessEnv = {}): Promise<RunResult> {
  return run(process.execPath, [bin, ...args], env);
}

/**
 * A refusal as the CLI must report it: one line on stderr in the form
 * "grovefs: what — hint", no stack trace, and exit status `code` (any
 * non-zero one when not given).
 */
export function expectOneLineError(r: RunResult, pattern: RegExp, code?: number): void {
  if (code === undefined) expect(r.code, r.stderr).not.toBe(0);
  else expect(r.code, r.stderr).toBe(code);
  const lines = r.stderr.split("\n").filter((line) => line !== "");
  expect(lines, r.stderr).toHaveLength(1);
  expect(lines[0]).toMatch(/^grovefs: .+ — .+$/);
  expect(lines[0]).toMatch(pattern);
  expect(r.stderr).not.toMatch(/^\s+at /m);
  expect(r.stderr).not.toMatch(/internal error/);
}

/**
 * Another process that opens `image` as grovefs does (with its lock,
 * shared when `readOnly`) and holds it until killed. `scratch` is a
 * directory for its script.
 */
export function holdImage(image: string, scratch: string, readOnly = false): Promise<ChildProcess> {
  const script = path.join(scratch, "hold.ts");
  const device = path.join(repoRoot, "kvstore", "device.ts");
  fs.writeFileSync(
    script,
    `import { FileDevice } from ${JSON.stringify(device)};\n` +
      `FileDevice.open(${JSON.stringify(image)}, { lock: true, readOnly: ${readOnly} });\n` +
      `process.stdout.write("locked\\n");\n` +
      `setInterval(() => {}, 1000);\n`,
  );
  const child = spawn(process.execPath, ["--import", "tsx", script], { cwd: repoRoot, stdio: ["ignore", "pipe", "inherit"] });
  return new Promise((resolve, reject) => {
    child.stdout!.on("data", (chunk: Buffer) => {
      if (chunk.toString().includes("locked")) resolve(child);
    });
    child.on("exit", (code) => reject(new Error(`holder exited with ${code}`)));
  });
}
