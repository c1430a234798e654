#!/usr/bin/env node
// npm start: formats ./grove.img (1 GiB, sparse) if it is absent, creates ./mnt,
// and serves the image there in the foreground until Ctrl-C (which commits and
// unmounts). Both paths are in .gitignore.
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const cli = path.join(root, "bin", "grovefs.mjs");
const image = path.join(root, "grove.img");
const mountpoint = path.join(root, "mnt");

function grovefs(...args) {
  // The child shares our terminal: Ctrl-C reaches it directly, and we wait for its clean exit.
  const result = spawnSync(process.execPath, [cli, ...args], { stdio: "inherit" });
  if (result.status !== 0) process.exit(result.status ?? 1);
}

process.on("SIGINT", () => {});
if (!fs.existsSync(image)) grovefs("mkfs", image, "--size", "1G", "--label", "grove");
fs.mkdirSync(mountpoint, { recursive: true });
grovefs("mount", "--foreground", image, mountpoint);
