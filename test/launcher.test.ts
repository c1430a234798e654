/**
 * bin/grovefs.mjs runs dist/ (npm run build) only while it is current, else
 * the sources through tsx: the freshness rule on a scratch tree, and the two
 * ways of starting giving the same command.
 */
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { withDir } from "tmp-promise";
import { describe, expect, it } from "vitest";
import { buildStamp, builtIsCurrent, sourceDirs } from "../bin/sources.mjs";

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const bin = path.join(repo, "bin", "grovefs.mjs");

/** Sets a file's mtime to `seconds` after the epoch. */
function at(file: string, seconds: number): void {
  fs.utimesSync(file, seconds, seconds);
}

describe("the grovefs launcher", () => {
  it("uses the build only when its stamp is at least as new as every source file, config and folder", async () => {
    await withDir(
      async ({ path: root }) => {
        for (const dir of sourceDirs) {
          fs.mkdirSync(path.join(root, dir, "sub"), { recursive: true });
          fs.writeFileSync(path.join(root, dir, "sub", "a.ts"), "export {};\n");
        }
        for (const config of ["tsconfig.json", "tsconfig.build.json"]) fs.writeFileSync(path.join(root, config), "{}\n");
        const everything = (seconds: number): void => {
          for (const dir of sourceDirs) for (const p of [path.join(dir, "sub", "a.ts"), path.join(dir, "sub"), dir]) at(path.join(root, p), seconds);
          for (const config of ["tsconfig.json", "tsconfig.build.json"]) at(path.join(root, config), seconds);
        };
        everything(1000);
        expect(builtIsCurrent(root), "no build yet").toBe(false);
        fs.mkdirSync(path.join(root, "dist"));
        fs.writeFileSync(buildStamp(root), "x\n");
        at(buildStamp(root), 2000);
        expect(builtIsCurrent(root)).toBe(true);
        at(buildStamp(root), 1000);
        expect(builtIsCurrent(root), "same mtime, as npm pack leaves them").toBe(true);
        at(buildStamp(root), 2000);
        at(path.join(root, "fs", "sub", "a.ts"), 3000);
        expect(builtIsCurrent(root), "an edited source file, two folders down").toBe(false);
        everything(1000);
        at(path.join(root, "cli", "sub"), 3000);
        expect(builtIsCurrent(root), "a file deleted or added changes its folder").toBe(false);
        everything(1000);
        at(path.join(root, "tsconfig.build.json"), 3000);
        expect(builtIsCurrent(root), "a changed build config").toBe(false);
        everything(1000);
        fs.rmSync(path.join(root, "tsconfig.build.json"));
        expect(builtIsCurrent(root), "a tree that cannot be checked").toBe(false);
      },
      { unsafeCleanup: true },
    );
  });

  it("gives the same command from the build and through tsx", () => {
    const run = (env: Record<string, string>, args: string[]): string =>
      execFileSync(process.execPath, [bin, ...args], { env: { ...process.env, ...env }, encoding: "utf8" });
    const version = JSON.parse(fs.readFileSync(path.join(repo, "package.json"), "utf8")).version;
    expect(run({ GROVEFS_TSX: "1" }, ["--version"]).trim()).toBe(version);
    expect(run({}, ["--version"]).trim()).toBe(version);
    expect(run({}, ["mkfs", "--help"])).toBe(run({ GROVEFS_TSX: "1" }, ["mkfs", "--help"]));
    // CI installs with npm install, which builds: the e2e suites must then run the build, not fall back silently.
    if (process.env.CI === "true") expect(builtIsCurrent(repo), "npm install left dist/ current").toBe(true);
  });
});
