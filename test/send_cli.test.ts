/**
 * grovefs send, receive and diff as a user runs them, between two image
 * files: a pipe, a file, --json, the one-line refusals with their exit
 * status, and a receive killed midway (receive --status shows it, --abort
 * frees its space); lz4 data sent as stored (the stream about the compressed
 * size, grovefs info's compressed figures equal on both sides); fsck on a
 * volume with received identities but without feature bit 5. Both images
 * are checked with fsck at the end.
 */
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FileDevice, featureReceivedSnapshots, readSuperblock } from "../kvstore/index.js";
import { writeSuperblockCopies } from "../kvstore/superblock_copies.js";
import { GroveFs } from "../fs/index.js";
import { bin, expectOneLineError, run, runGrovefs } from "./cli_helpers.js";
import { O_CREAT, O_RDWR } from "./fs_helpers.js";

const caller = { uid: 0, gid: 0 };
let dir: string;
let a: string;
let b: string;

function populate(image: string, body: (fs: GroveFs) => void): void {
  const device = FileDevice.open(image, { lock: true });
  const volume = GroveFs.open(device);
  try {
    body(volume);
  } finally {
    volume.close();
    device.close();
  }
}

function put(fs: GroveFs, parent: number, name: string, data: Buffer): number {
  const { fh, stat } = fs.createAt(parent, Buffer.from(name), 0o100644, O_CREAT | O_RDWR, caller);
  fs.write(fh, data, data.length, 0);
  fs.release(fh);
  return stat.ino;
}

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "grovefs-send-"));
  a = path.join(dir, "a.img");
  b = path.join(dir, "b.img");
  for (const image of [a, b]) expect((await runGrovefs(["mkfs", image, "--size", "64M"])).code).toBe(0);
  populate(a, (fs) => {
    const d = fs.mkdirAt(1, Buffer.from("dir"), 0o755, caller).ino;
    for (let i = 0; i < 20; i++) put(fs, d, `f${i}`, Buffer.alloc(10_000 + i * 5000, i + 1));
    fs.symlinkAt(1, Buffer.from("link"), Buffer.from("dir/f1"), caller);
  });
  expect((await runGrovefs(["snapshot", "create", a, "one"])).code).toBe(0);
  populate(a, (fs) => {
    const d = fs.lookup(1, Buffer.from("dir")).ino;
    put(fs, d, "new", Buffer.alloc(50_000, 9));
    fs.unlinkAt(d, Buffer.from("f3"));
  });
  expect((await runGrovefs(["snapshot", "create", a, "two"])).code).toBe(0);
}, 120_000);

afterAll(() => {
  if (process.env.GROVE_KEEP === undefined) fs.rmSync(dir, { recursive: true, force: true });
});

describe("grovefs send | grovefs receive", () => {
  it("refuses an incremental stream before its parent, with one line", async () => {
    const stream = path.join(dir, "inc.stream");
    expect((await runGrovefs(["send", a, "two", "--parent", "one", "-f", stream])).code).toBe(0);
    const r = await runGrovefs(["receive", b, "-f", stream]);
    expectOneLineError(r, /parent snapshot is not on this volume/, 1);
  }, 120_000);

  it("sends full through a pipe, then incremental through a file, with --json summaries", async () => {
    const piped = await run("sh", ["-c", `"${process.execPath}" "${bin}" send "${a}" one | "${process.execPath}" "${bin}" receive "${b}" --json`]);
    expect(piped.code, piped.stderr).toBe(0);
    expect(JSON.parse(piped.stdout)).toMatchObject({ snapshot: "one", parent: null });
    const stream = path.join(dir, "inc.stream");
    const sent = await runGrovefs(["send", a, "two", "--parent", "one", "-f", stream, "--json"]);
    expect(sent.code, sent.stderr).toBe(0);
    const summary = JSON.parse(sent.stdout);
    expect(summary).toMatchObject({ snapshot: "two", parent: "one", inodes: { created: 1, deleted: 1 } });
    // Only the change travels: the new file's 50 kB and metadata, not the 1.2 MB of the rest.
    expect(summary.bytes).toBeLessThan(80_000);
    const got = await runGrovefs(["receive", b, "-f", stream, "--name", "two-copy"]);
    expect(got.code, got.stderr).toBe(0);
    expect(got.stdout).toMatch(/received 'two-copy' \(incremental on 'one'\)/);
    const list = await runGrovefs(["snapshot", "list", b, "--json"]);
    expect(JSON.parse(list.stdout).map((s: { name: string }) => s.name).sort()).toEqual(["one", "two-copy"]);
    const diff = await runGrovefs(["diff", b, "one", "two-copy"]);
    expect(diff.code, diff.stderr).toBe(0);
    expect(diff.stdout).toMatch(/^- \d+\/f3 /m);
    expect(diff.stdout).toMatch(/^\+ \d+\/new /m);
  }, 120_000);

  it("keeps a cut stream hidden and resumes it with the token; refuses a taken name", async () => {
    const stream = path.join(dir, "full.stream");
    expect((await runGrovefs(["send", a, "two", "-f", stream])).code).toBe(0);
    const cut = path.join(dir, "cut.stream");
    fs.writeFileSync(cut, fs.readFileSync(stream).subarray(0, 100_000));
    const r = await runGrovefs(["receive", b, "-f", cut, "--name", "cut"]);
    expectOneLineError(r, /cut short.*--status/, 1);
    expectOneLineError(await runGrovefs(["receive", b, "-f", stream, "--name", "one"]), /exists/, 1);
    // What arrived is kept, hidden, with a token that resumes it.
    const status = JSON.parse((await runGrovefs(["receive", b, "--status", "--json"])).stdout);
    expect(status.interrupted.map((i: { name: string }) => i.name)).toEqual(["cut"]);
    const token = status.interrupted[0].token as string;
    expect(token).toMatch(/^grovefs-resume-1\./);
    expect(JSON.parse((await runGrovefs(["snapshot", "list", b, "--json"])).stdout).map((s: { name: string }) => s.name)).not.toContain("cut");
    expectOneLineError(await runGrovefs(["send", a, "one", "--resume", token, "-f", path.join(dir, "wrong.stream")]), /another snapshot/, 1);
    const resumed = await run("sh", ["-c", `"${process.execPath}" "${bin}" send "${a}" two --resume ${token} | "${process.execPath}" "${bin}" receive "${b}" --name cut`]);
    expect(resumed.code, resumed.stderr).toBe(0);
    expect(JSON.parse((await runGrovefs(["snapshot", "list", b, "--json"])).stdout).map((s: { name: string }) => s.name)).toContain("cut");
    expect((await runGrovefs(["receive", b, "--status"])).stdout).toMatch(/no interrupted receive/);
    expectOneLineError(await runGrovefs(["send", a, "nonesuch", "-f", stream]), /nonesuch/, 1);
    // The refused send left FILE as it was.
    expect(fs.statSync(stream).size).toBeGreaterThan(100_000);
  }, 120_000);

  it("a receive killed midway leaves a hidden partial that --status shows and --abort frees", async () => {
    const stream = fs.readFileSync(path.join(dir, "full.stream"));
    const before = JSON.parse((await runGrovefs(["info", b, "--json"])).stdout).usedBytes as number;
    const child = spawn(process.execPath, [bin, "receive", b, "--name", "killed"], { stdio: ["pipe", "ignore", "pipe"] });
    let stderr = "";
    child.stderr!.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    const exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve(signal ?? code)));
    // Half the stream, far more than a pipe holds: once it is all written, the receive has read past the
    // header, so it has made (and committed) its hidden subvolume and applied part of the stream.
    await new Promise((resolve) => child.stdin.write(stream.subarray(0, Math.floor(stream.length / 2)), resolve));
    await new Promise((resolve) => setTimeout(resolve, 300));
    child.kill("SIGKILL");
    const exit = await exited;
    const status = await runGrovefs(["receive", b, "--status", "--json"]);
    expect(exit, stderr).toBe("SIGKILL");
    expect(JSON.parse(status.stdout).interrupted.map((i: { name: string }) => i.name), stderr).toEqual(["killed"]);
    const list = await runGrovefs(["snapshot", "list", b, "--json"]);
    expect(JSON.parse(list.stdout).map((s: { name: string }) => s.name)).not.toContain("killed");
    expectOneLineError(await runGrovefs(["receive", b, "-f", path.join(dir, "full.stream"), "--name", "killed"]), /interrupted receive.*--abort/, 1);
    const aborted = await runGrovefs(["receive", b, "--abort"]);
    expect(aborted.stdout).toMatch(/aborted the receive of 'killed'/);
    const after = JSON.parse((await runGrovefs(["info", b, "--json"])).stdout).usedBytes as number;
    expect(after).toBeLessThanOrEqual(before);
    for (const image of [a, b]) {
      const check = await runGrovefs(["fsck", image]);
      expect(check.code, check.stdout + check.stderr).toBe(0);
    }
  }, 120_000);
});

describe("grovefs send of lz4 data", () => {
  it("sends lz4 extents as stored: the stream is about the compressed size, and grovefs info's compressed figures are equal on both sides", async () => {
    const c = path.join(dir, "c.img");
    const d = path.join(dir, "d.img");
    expect((await runGrovefs(["mkfs", c, "--size", "64M", "--compress", "lz4"])).code).toBe(0);
    expect((await runGrovefs(["mkfs", d, "--size", "64M"])).code).toBe(0);
    let logical = 0;
    populate(c, (fs) => {
      for (let i = 0; i < 12; i++) {
        const line = `line ${i} of compressible text, repeated; `.repeat(40);
        const data = Buffer.from(line.repeat(Math.ceil((40_000 + i * 9000) / line.length)).slice(0, 40_000 + i * 9000));
        logical += data.length;
        const ino = put(fs, 1, `f${i}`, data);
        if (i === 3) {
          // A reflink of it, and a partial overwrite inside a compressed unit (its extent then holds two slices).
          const copy = put(fs, 1, "copy", Buffer.alloc(0));
          fs.copyFileRange({ ino }, 0, copy, 0, data.length);
          const fh = fs.openIno(ino, O_RDWR);
          fs.write(fh, Buffer.alloc(5000, 7), 5000, 20_000);
          fs.release(fh);
        }
      }
    });
    expect((await runGrovefs(["snapshot", "create", c, "s"])).code).toBe(0);
    const stream = path.join(dir, "lz4.stream");
    const sent = await runGrovefs(["send", c, "s", "-f", stream, "--json"]);
    expect(sent.code, sent.stderr).toBe(0);
    const summary = JSON.parse(sent.stdout);
    const infoOf = async (image: string): Promise<{ compressed: { extents: number; diskBytes: number; logicalBytes: number } }> =>
      JSON.parse((await runGrovefs(["info", image, "--json"])).stdout);
    const source = await infoOf(c);
    expect(source.compressed.extents).toBeGreaterThan(10);
    expect(summary.storedBytes).toBeGreaterThan(logical / 2);
    // The compressed bytes as stored (unpadded), plus a few hundred bytes of records per file: far below the logical size.
    expect(summary.storedDiskBytes).toBeLessThanOrEqual(source.compressed.diskBytes);
    expect(fs.statSync(stream).size).toBeLessThan(source.compressed.diskBytes + 12 * 1024);
    expect(fs.statSync(stream).size).toBeLessThan(logical / 4);
    const got = await runGrovefs(["receive", d, "-f", stream]);
    expect(got.code, got.stderr).toBe(0);
    expect((await infoOf(d)).compressed).toEqual(source.compressed);
    for (const image of [c, d]) {
      const check = await runGrovefs(["fsck", image]);
      expect(check.code, check.stdout + check.stderr).toBe(0);
    }
  }, 120_000);

  it("fsck finds received-snapshot identities without feature bit 5 (32): -n reports it, -y sets it", async () => {
    // d.img holds a received snapshot (the test above); a copy has the bit cleared in every superblock copy.
    const e = path.join(dir, "e.img");
    fs.copyFileSync(path.join(dir, "d.img"), e);
    const device = FileDevice.open(e, { lock: true });
    try {
      const sb = readSuperblock(device);
      expect(sb.features & featureReceivedSnapshots).toBe(featureReceivedSnapshots);
      writeSuperblockCopies(device, { ...sb, features: sb.features & ~featureReceivedSnapshots });
    } finally {
      device.close();
    }
    const found = await runGrovefs(["fsck", e, "-n"]);
    expect(found.code, found.stdout + found.stderr).toBe(4);
    expect(found.stdout).toMatch(/received-snapshot identities exist but the feature that says so is not set/);
    const fixed = await runGrovefs(["fsck", e, "-y"]);
    expect(fixed.code, fixed.stdout + fixed.stderr).toBe(1);
    expect(fixed.stdout).toMatch(/set the feature bit of received-snapshot identities/);
    const clean = await runGrovefs(["fsck", e]);
    expect(clean.code, clean.stdout + clean.stderr).toBe(0);
    const reopened = FileDevice.open(e, { readOnly: true });
    try {
      expect(readSuperblock(reopened).features & featureReceivedSnapshots).toBe(featureReceivedSnapshots);
    } finally {
      reopened.close();
    }
  }, 120_000);
});
