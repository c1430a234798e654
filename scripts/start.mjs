#!/usr/bin/env node
// npm start: formats ./grove.img (1 GiB, sparse) if it is absent, creates ./mnt,
// and serves the image there in the foreground until Ctrl-C (which commits and
// unmounts). Both paths are in .gitignore.
//
// Every way it can stop ends in one line saying why, never a stack trace: the
// grovefs CLI prints its own one-line errors, and this script says when the
// mount process died by a signal or left a stale mount behind (which the next
// npm start cleans up).
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const cli = path.join(root, "bin", "grovefs.mjs");
const image = path.join(root, "grove.img");
const mountpoint = path.join(root, "mnt");

function say(line) {
  process.stderr.write(`npm start: ${line}\n`);
}

/** Runs the CLI on our terminal: Ctrl-C reaches it directly, and we wait for its exit. */
function grovefs(...args) {
  const result = spawnSync(process.execPath, [cli, ...args], { stdio: "inherit" });
  if (result.error) {
    say(`cannot run grovefs: ${result.error.message}`);
    process.exit(1);
  }
  return result;
}

/** The exit of a step that must succeed: the CLI has said why it failed; a signal is said here. */
function mustSucceed(result, what) {
  if (result.status === 0) return;
  if (result.signal !== null) {
    say(`${what} was killed by ${result.signal}; the image keeps its last commit — run npm start again`);
    process.exit(1);
  }
  process.exit(result.status ?? 1);
}

/** A mountpoint left mounted by a killed daemon answers ENOTCONN to everything: unmount it first. */
function prepareMountpoint() {
  try {
    fs.mkdirSync(mountpoint, { recursive: true });
    fs.statSync(mountpoint);
    return;
  } catch (error) {
    if (error.code !== "ENOTCONN" && error.code !== "EEXIST") {
      say(`cannot use ${mountpoint}: ${error.message}`);
      process.exit(1);
    }
  }
  say(`${mountpoint} is a stale mount of a grovefs process that is gone; unmounting it`);
  mustSucceed(grovefs("umount", mountpoint), "grovefs umount");
}

process.on("SIGINT", () => {});
try {
  if (!fs.existsSync(image)) mustSucceed(grovefs("mkfs", image, "--size", "1G", "--label", "grove"), "grovefs mkfs");
  prepareMountpoint();
  const served = grovefs("mount", "--foreground", image, mountpoint);
  if (served.signal !== null) {
    say(`the mount process was killed by ${served.signal}; what it had not committed is lost, the image keeps its last commit — run npm start again`);
    process.exit(1);
  }
  if (served.status !== 0) say(`the mount process exited with status ${served.status} (its reason is above)`);
  process.exit(served.status ?? 1);
} catch (error) {
  say(`stopped: ${error instanceof Error ? error.message : String(error)}`);
  process.exit(1);
}
