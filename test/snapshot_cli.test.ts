/**
 * grovefs snapshot create|list|delete, clone and subvolume list|delete on
 * image targets, run as child processes (`node bin/grovefs.mjs`): output,
 * JSON, validation (EEXIST, bad names, missing sources, the served subvolume),
 * exit codes and one-line errors, space coming back after a delete, and an
 * image locked by another process. Plus the control socket's protocol, served
 * in this process on a simulated volume (no kernel mount): the mount suites
 * are in e2e_snapshot.test.ts.
 */
import { execFile, spawn, type ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import { dir as tmpDir, type DirectoryResult } from "tmp-promise";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { runRequest, sendRequest, startControlServer, type SubvolumeRecord } from "../cli/control.js";
import { checkFilesystem, GroveFs } from "../fs/index.js";
import { FileDevice, GroveError } from "../kvstore/index.js";
import { FsHarness, pattern, readFile, root, writeFile } from "./fs_helpers.js";
import { bin, expectOneLineError as expectOneLine, holdImage as holdImageIn, runGrovefs, type RunResult } from "./cli_helpers.js";

const MiB = 1 << 20;

let tmp: DirectoryResult;
let holder: ChildProcess | null = null;

beforeEach(async () => {
  tmp = await tmpDir({ unsafeCleanup: true });
});
afterEach(async () => {
  holder?.kill("SIGKILL");
  holder = null;
  await tmp.cleanup();
});

function grovefs(...args: string[]): Promise<RunResult> {
  return runGrovefs(args, { GROVEFS_RUN_DIR: path.join(tmp.path, "run") });
}

async function grovefsOk(...args: string[]): Promise<string> {
  const r = await grovefs(...args);
  expect(r.code, `grovefs ${args.join(" ")}: ${r.stderr}`).toBe(0);
  expect(r.stderr).toBe("");
  return r.stdout;
}

/** A failure as the CLI must report it: this exit status (1 unless given), one line on stderr, no stack trace. */
function expectOneLineError(r: RunResult, pattern: RegExp, code = 1): void {
  expectOneLine(r, pattern, code);
}

/** Opens the image as the CLI does (locked), runs `body`, commits and closes. */
function withVolume<T>(image: string, options: { readOnly?: boolean; subvolume?: string }, body: (fs: GroveFs) => T): T {
  const device = FileDevice.open(image, { readOnly: options.readOnly, lock: true });
  try {
    const volume = GroveFs.open(device, options);
    try {
      return body(volume);
    } finally {
      volume.close();
    }
  } finally {
    device.close();
  }
}

function expectImageClean(image: string): void {
  const device = FileDevice.open(image, { readOnly: true });
  try {
    const report = checkFilesystem(device, { verifyData: true });
    expect(report.problems.slice(0, 20)).toEqual([]);
  } finally {
    device.close();
  }
}

async function usedBytes(image: string): Promise<number> {
  return (JSON.parse(await grovefsOk("info", image, "--json")) as { usedBytes: number }).usedBytes;
}

async function listJson(image: string, what: "snapshot" | "subvolume"): Promise<SubvolumeRecord[]> {
  return JSON.parse(await grovefsOk(what, "list", image, "--json")) as SubvolumeRecord[];
}

/** A formatted 64 MiB image holding /f (`size` bytes of pattern 1) and /dir/g. */
async function image(size = 256 * 1024): Promise<string> {
  const file = path.join(tmp.path, "vol.img");
  await grovefsOk("mkfs", file, "--size", "64M");
  withVolume(file, {}, (volume) => {
    writeFile(volume, "/f", pattern(size, 1));
    volume.mkdir("/dir", 0o755, root);
    writeFile(volume, "/dir/g", Buffer.from("gee\n"));
  });
  return file;
}

describe("grovefs snapshot, clone and subvolume on an image", () => {
  it("are listed in --help, each with its own --help", async () => {
    const help = await grovefsOk("--help");
    for (const command of ["snapshot", "clone", "subvolume"]) expect(help).toContain(command);
    for (const command of [["snapshot", "create"], ["snapshot", "list"], ["snapshot", "delete"], ["clone"], ["subvolume", "list"], ["subvolume", "delete"]]) {
      const sub = await grovefs(...command, "--help");
      expect(sub.code, sub.stderr).toBe(0);
      expect(sub.stdout).toContain(`Usage: grovefs ${command.join(" ")}`);
    }
    expect(await grovefsOk("mount", "--help")).toContain("--subvol");
  });

  it("snapshot create, list and delete: the snapshot keeps the data as taken, and deleting it frees the space", async () => {
    const img = await image(8 * MiB);
    const created = await grovefsOk("snapshot", "create", img, "s1");
    expect(created).toMatch(/^snapshot 's1' of 'default' created \(id \d+\)\n$/);
    const afterSnapshot = await usedBytes(img);
    expect(JSON.parse(await grovefsOk("info", img, "--json"))).toMatchObject({ subvolumes: 2, snapshots: 1, pendingDeletions: 0 });
    withVolume(img, {}, (volume) => {
      writeFile(volume, "/f", pattern(8 * MiB, 2));
      volume.unlink("/dir/g");
    });
    // Both versions of /f are kept now.
    expect(await usedBytes(img)).toBeGreaterThanOrEqual(afterSnapshot + 8 * MiB);

    const table = (await grovefsOk("snapshot", "list", img)).trimEnd().split("\n");
    expect(table[0]).toMatch(/^NAME\s+ID\s+SOURCE\s+CREATED$/);
    expect(table).toHaveLength(2);
    expect(table[1]).toMatch(/^s1\s+\d+\s+default\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    const [record] = await listJson(img, "snapshot");
    expect(record).toMatchObject({ name: "s1", readOnly: true, parentName: "default" });
    expect(record!.createdNs).toMatch(/^\d+$/);
    expect(Date.parse(record!.created)).toBeGreaterThan(Date.parse("2020-01-01"));

    const subvolumes = await listJson(img, "subvolume");
    expect(subvolumes.map((s) => [s.name, s.readOnly])).toEqual([["default", false], ["s1", true]]);
    expect(subvolumes[1]!.parentId).toBe(subvolumes[0]!.id);
    const subTable = (await grovefsOk("subvolume", "list", img)).trimEnd().split("\n");
    expect(subTable[0]).toMatch(/^NAME\s+ID\s+MODE\s+PARENT\s+CREATED\s+MOUNTED$/);
    expect(subTable[1]).toMatch(/^default\s+\d+\s+rw\s+-\s+/);
    expect(subTable[2]).toMatch(/^s1\s+\d+\s+ro\s+default\s+/);

    // The snapshot holds the data as it was; opened on its own it is read-only.
    withVolume(img, { subvolume: "s1" }, (snap) => {
      expect(snap.readOnly).toBe(true);
      expect(snap.subvolumeName).toBe("s1");
      expect(readFile(snap, "/f").equals(pattern(8 * MiB, 1))).toBe(true);
      expect(readFile(snap, "/dir/g").toString()).toBe("gee\n");
    });
    withVolume(img, {}, (live) => {
      expect(readFile(live, "/f").equals(pattern(8 * MiB, 2))).toBe(true);
      expect(() => live.getattr("/dir/g")).toThrow(/./);
    });

    const before = await usedBytes(img);
    expect(await grovefsOk("snapshot", "delete", img, "s1")).toBe("snapshot 's1' deleted; its space is free\n");
    // The old /f is gone with it: the space is back before the command returned.
    expect(await usedBytes(img)).toBeLessThanOrEqual(before - 8 * MiB);
    expect(await grovefsOk("snapshot", "list", img)).toBe("no snapshots\n");
    expect(await listJson(img, "snapshot")).toEqual([]);
    withVolume(img, { readOnly: true }, (volume) => expect(volume.pendingDeletions()).toBe(0));
    expectImageClean(img);
  });

  it("prints long listings whole through a pipe (hundreds of snapshots, --json and tables)", async () => {
    const img = await image(8 * MiB);
    withVolume(img, {}, (volume) => {
      for (let i = 0; i < 400; i++) volume.createSubvolume(`snapshot-with-a-longish-name-${i}`, { readOnly: true });
    });
    // A reader that starts late: the pipe (64 KiB) fills, and grovefs must wait for it before it exits.
    const throughPipe = (args: string): Promise<string> =>
      new Promise((resolve, reject) => {
        execFile(
          "sh",
          ["-c", `'${process.execPath}' '${bin}' ${args} | (sleep 0.5; cat)`],
          { env: { ...process.env, GROVEFS_RUN_DIR: path.join(tmp.path, "run") }, maxBuffer: 16 * MiB, encoding: "utf8" },
          (error, stdout) => (error === null ? resolve(stdout) : reject(error)),
        );
      });
    const json = await throughPipe(`subvolume list --json '${img}'`);
    expect(json.length).toBeGreaterThan(65536);
    expect((JSON.parse(json) as unknown[]).length).toBe(401);
    const table = await throughPipe(`snapshot list '${img}'`);
    expect(table.trimEnd().split("\n")).toHaveLength(401);
  });

  it("snapshot create --from, clone of a subvolume and of a snapshot: clones are writable and independent", async () => {
    const img = await image();
    await grovefsOk("snapshot", "create", img, "s1");
    const cloned = await grovefsOk("clone", img, "default", "c1");
    expect(cloned).toMatch(/^clone 'c1' of 'default' created \(id \d+\); mount it with: grovefs mount .*vol\.img MOUNTPOINT --subvol c1\n$/);
    expect(await grovefsOk("clone", img, "s1", "c2")).toMatch(/^clone 'c2' of 's1' created/);
    expect(await grovefsOk("snapshot", "create", img, "s2", "--from", "c1")).toMatch(/^snapshot 's2' of 'c1' created/);

    withVolume(img, { subvolume: "c1" }, (clone) => {
      expect(clone.readOnly).toBe(false);
      writeFile(clone, "/only-in-c1", Buffer.from("c1\n"));
      writeFile(clone, "/f", Buffer.from("changed in c1\n"));
    });
    withVolume(img, { subvolume: "c2" }, (clone) => writeFile(clone, "/only-in-c2", Buffer.from("c2\n")));
    withVolume(img, {}, (live) => {
      expect(live.readdir("/").map((e) => e.name).filter((n) => !n.startsWith(".")).sort()).toEqual(["dir", "f"]);
      expect(readFile(live, "/f").equals(pattern(256 * 1024, 1))).toBe(true);
    });
    withVolume(img, { subvolume: "s2" }, (snap) => {
      // s2 was taken of c1 before c1 changed.
      expect(readFile(snap, "/f").equals(pattern(256 * 1024, 1))).toBe(true);
      expect(() => snap.getattr("/only-in-c1")).toThrow(/./);
    });

    const all = await listJson(img, "subvolume");
    const byName = new Map(all.map((s) => [s.name, s]));
    expect([...byName.keys()]).toEqual(["c1", "c2", "default", "s1", "s2"]);
    expect(byName.get("c1")).toMatchObject({ readOnly: false, parentName: "default" });
    expect(byName.get("c2")).toMatchObject({ readOnly: false, parentName: "s1" });
    expect(byName.get("s2")).toMatchObject({ readOnly: true, parentName: "c1" });
    expect(new Set(all.map((s) => s.id)).size).toBe(5);
    expect((await listJson(img, "snapshot")).map((s) => s.name)).toEqual(["s1", "s2"]);

    // A name with a control character is refused, in one line (the name printed escaped).
    expectOneLineError(await grovefs("snapshot", "create", img, "odd\nname"), /odd\\x0aname.*control character/);
    expect((await listJson(img, "snapshot")).map((s) => s.name)).toEqual(["s1", "s2"]);

    // A clone is deleted with subvolume delete (snapshot delete refuses it).
    expect(await grovefsOk("subvolume", "delete", img, "c2")).toBe("subvolume 'c2' deleted; its space is free\n");
    expect(await grovefsOk("subvolume", "delete", img, "s2")).toBe("subvolume 's2' deleted; its space is free\n");
    expect((await listJson(img, "subvolume")).map((s) => s.name)).toEqual(["c1", "default", "s1"]);
    expectImageClean(img);
  });

  it("refuses bad requests in one line, with exit status 1 (2 for usage), changing nothing", async () => {
    const img = await image();
    await grovefsOk("snapshot", "create", img, "s1");
    await grovefsOk("clone", img, "s1", "c1");
    const listing = await listJson(img, "subvolume");

    expectOneLineError(await grovefs("snapshot", "create", img, "s1"), /a subvolume named 's1' already exists/);
    expectOneLineError(await grovefs("snapshot", "create", img, "c1"), /a subvolume named 'c1' already exists/);
    expectOneLineError(await grovefs("snapshot", "create", img, "default"), /already exists/);
    expectOneLineError(await grovefs("clone", img, "default", "s1"), /a subvolume named 's1' already exists/);
    for (const bad of ["a/b", ".", "..", "x".repeat(300), ""]) {
      expectOneLineError(await grovefs("snapshot", "create", img, bad), /cannot create/);
      expectOneLineError(await grovefs("clone", img, "default", bad), /cannot create/);
    }
    expectOneLineError(await grovefs("snapshot", "create", img, "s9", "--from", "nope"), /cannot create 's9' from 'nope'.*— .*subvolume list/);
    expectOneLineError(await grovefs("clone", img, "nope", "c9"), /cannot create 'c9' from 'nope'/);
    expectOneLineError(await grovefs("snapshot", "delete", img, "nope"), /cannot delete 'nope'/);
    expectOneLineError(await grovefs("subvolume", "delete", img, "nope"), /cannot delete 'nope'/);
    expectOneLineError(await grovefs("snapshot", "delete", img, "c1"), /'c1' is a writable clone, not a snapshot — delete it with: grovefs subvolume delete/);
    expectOneLineError(await grovefs("snapshot", "delete", img, "default"), /cannot delete .default.: it is the default subvolume.*clone a snapshot/);
    expectOneLineError(await grovefs("subvolume", "delete", img, "default"), /cannot delete .default.: it is the default subvolume.*clone a snapshot/);
    // A file that is not an image is reported as such, not as a bad name.
    const notImage = path.join(tmp.path, "not-an-image.txt");
    fs.writeFileSync(notImage, "hello\n");
    expectOneLineError(await grovefs("snapshot", "create", notImage, "x"), /too small for a grovefs volume.*check the path/);
    expectOneLineError(await grovefs("subvolume", "delete", img, "default"), /cannot delete 'default': it is the default subvolume, which grovefs mounts when no --subvol is given — /);

    expectOneLineError(await grovefs("snapshot", "create", img), /missing required argument 'name'/, 2);
    expectOneLineError(await grovefs("clone", img, "default"), /missing required argument 'name'/, 2);
    expectOneLineError(await grovefs("snapshot", "list"), /missing required argument 'target'/, 2);
    expectOneLineError(await grovefs("snapshot", "frob", img), /unknown command 'frob'/, 2);
    expectOneLineError(await grovefs("subvolume", "list", img, "--bogus"), /unknown option '--bogus'/, 2);

    expectOneLineError(await grovefs("snapshot", "list", path.join(tmp.path, "missing.img")), /no such image or mount point/);
    expectOneLineError(await grovefs("snapshot", "create", tmp.path, "s2"), /is a directory, but no grovefs is mounted there/);
    expectOneLineError(await grovefs("snapshot", "list", "/proc"), /not a grovefs mount \(it is proc\)/);
    const notGrove = path.join(tmp.path, "zeros.img");
    fs.writeFileSync(notGrove, Buffer.alloc(2 * MiB));
    expectOneLineError(await grovefs("snapshot", "create", notGrove, "s2"), /not a grovefs volume/);

    // Nothing changed.
    expect(await listJson(img, "subvolume")).toEqual(listing);
    withVolume(img, { readOnly: true }, (live) => expect(readFile(live, "/f").equals(pattern(256 * 1024, 1))).toBe(true));
    expectImageClean(img);
  });

  it("an image held by another process is refused, pointing at the mount point", async () => {
    const img = await image();
    holder = await holdImage(img);
    expectOneLineError(await grovefs("snapshot", "create", img, "s1"), /is in use by another grovefs process.*— .*give the mount point instead: grovefs snapshot create MOUNTPOINT s1/);
    expectOneLineError(await grovefs("snapshot", "list", img), /in use.*grovefs snapshot list MOUNTPOINT/);
    expectOneLineError(await grovefs("clone", img, "default", "c1"), /in use.*grovefs clone MOUNTPOINT default c1/);
    expectOneLineError(await grovefs("snapshot", "delete", img, "s1"), /in use/);
    expectOneLineError(await grovefs("subvolume", "list", img), /in use/);
    const exited = new Promise((resolve) => holder!.once("exit", resolve));
    holder.kill("SIGKILL");
    await exited;
    holder = null;
    expect((await listJson(img, "subvolume")).map((s) => s.name)).toEqual(["default"]);
    expectImageClean(img);
  });
});

/** Another process that opens the image as grovefs does and holds its lock until killed. */
async function holdImage(image: string): Promise<ChildProcess> {
  const child = await holdImageIn(image, tmp.path);
  holder = child;
  return child;
}

// ---- the control socket, in this process ------------------------------------------

describe("the control socket", () => {
  const daemon = { shown: "/mnt/test", pid: 1 };

  it("serves create, list and delete on the volume, with errors as GroveErrors, on a 0600 socket", async () => {
    const h = new FsHarness(16384);
    writeFile(h.fs, "/f", Buffer.from("one\n"));
    const socketPath = path.join(tmp.path, "ctl.sock");
    const bugs: unknown[] = [];
    const server = await startControlServer(socketPath, h.fs, (error) => bugs.push(error));
    try {
      expect(fs.statSync(socketPath).mode & 0o777).toBe(0o600);
      expect(fs.statSync(socketPath).isSocket()).toBe(true);
      const created = (await sendRequest(socketPath, { op: "create", name: "s1", readOnly: true }, daemon)) as SubvolumeRecord;
      expect(created).toMatchObject({ name: "s1", readOnly: true, parentName: "default" });
      // The snapshot holds what was written before the request, uncommitted as it was.
      writeFile(h.fs, "/f", Buffer.from("two\n"));
      expect(readFile(h.fs.snapshotView("s1") as unknown as GroveFs, "/f").toString()).toBe("one\n");
      await sendRequest(socketPath, { op: "create", name: "c1", from: "s1", readOnly: false }, daemon);
      const list = (await sendRequest(socketPath, { op: "list" }, daemon)) as SubvolumeRecord[];
      expect(list.map((s) => [s.name, s.readOnly]).sort()).toEqual([["c1", false], ["default", false], ["s1", true]]);

      const failure = async (request: Parameters<typeof sendRequest>[1]) => {
        try {
          await sendRequest(socketPath, request, daemon);
        } catch (error) {
          return error;
        }
        throw new Error(`${JSON.stringify(request)} succeeded`);
      };
      expect(await failure({ op: "create", name: "s1", readOnly: true })).toMatchObject({ code: "EEXIST" });
      expect(await failure({ op: "create", name: "a/b", readOnly: true })).toMatchObject({ code: "EINVAL" });
      expect(await failure({ op: "create", name: "x", from: "nope", readOnly: true })).toMatchObject({ code: "ENOENT" });
      expect(await failure({ op: "delete", name: "default", snapshotOnly: false })).toMatchObject({ code: "EBUSY" });
      expect(await failure({ op: "delete", name: "c1", snapshotOnly: true })).toMatchObject({ code: "EINVAL", detail: "EINVAL_not_snapshot" });
      expect(await failure({ op: "delete", name: "nope", snapshotOnly: true })).toMatchObject({ code: "ENOENT" });
      expect(await failure({ op: "frob" } as never)).toMatchObject({ code: "EINVAL" });
      for (const error of [await failure({ op: "create", name: "s1", readOnly: true })]) expect(error).toBeInstanceOf(GroveError);

      // Raw lines: garbage and an oversized request get an error line, not a hang.
      expect(await rawRequest(socketPath, "not json\n")).toMatchObject({ ok: false, code: "EINVAL" });
      expect(await rawRequest(socketPath, `${"x".repeat(70 * 1024)}\n`)).toMatchObject({ ok: false, code: "EINVAL" });
      expect(await rawRequest(socketPath, `${JSON.stringify({ op: "create", name: 7 })}\n`)).toMatchObject({ ok: false, code: "EINVAL" });

      await sendRequest(socketPath, { op: "delete", name: "s1", snapshotOnly: true }, daemon);
      expect(((await sendRequest(socketPath, { op: "list" }, daemon)) as SubvolumeRecord[]).map((s) => s.name).sort()).toEqual(["c1", "default"]);
      expect(bugs).toEqual([]);
    } finally {
      server.close();
    }
    expect(fs.existsSync(socketPath)).toBe(false);
    h.fs.finishDeletions();
    h.closeAndCheck();
  });

  it("replaces a socket left by a killed daemon, and a client of a stale socket gets a clear error", async () => {
    const socketPath = path.join(tmp.path, "stale.sock");
    const child = spawn(
      process.execPath,
      ["-e", `require("net").createServer().listen(${JSON.stringify(socketPath)}, () => console.log("up"))`],
      { stdio: ["ignore", "pipe", "inherit"] },
    );
    holder = child;
    await new Promise<void>((resolve) => child.stdout!.on("data", () => resolve()));
    const exited = new Promise((resolve) => child.once("exit", resolve));
    child.kill("SIGKILL");
    await exited;
    holder = null;
    expect(fs.statSync(socketPath).isSocket()).toBe(true);

    let error: unknown;
    try {
      await sendRequest(socketPath, { op: "list" }, daemon);
    } catch (caught) {
      error = caught;
    }
    expect((error as Error).message).toMatch(/nothing answers on the control socket of \/mnt\/test .*stale socket/);
    let missing: unknown;
    try {
      await sendRequest(path.join(tmp.path, "none.sock"), { op: "list" }, daemon);
    } catch (caught) {
      missing = caught;
    }
    expect((missing as Error).message).toMatch(/has no control socket/);

    const h = new FsHarness(4096);
    const server = await startControlServer(socketPath, h.fs, () => {});
    try {
      const list = (await sendRequest(socketPath, { op: "list" }, daemon)) as SubvolumeRecord[];
      expect(list.map((s) => s.name)).toEqual(["default"]);
    } finally {
      server.close();
    }
    h.closeAndCheck();
  });

  it("runRequest is what the image path runs too: snapshot delete refuses a clone before deleting anything", () => {
    const h = new FsHarness(16384);
    h.fs.createSubvolume("c1", { readOnly: false });
    expect(() => runRequest(h.fs, { op: "delete", name: "c1", snapshotOnly: true })).toThrow(/writable subvolume, not a snapshot/);
    expect(h.fs.listSubvolumes().map((s) => s.name).sort()).toEqual(["c1", "default"]);
    runRequest(h.fs, { op: "delete", name: "c1", snapshotOnly: false });
    h.fs.finishDeletions();
    expect(h.fs.listSubvolumes().map((s) => s.name)).toEqual(["default"]);
    h.closeAndCheck();
  });
});

function rawRequest(socketPath: string, text: string): Promise<unknown> {
  return new Promise((resolve, reject) => {
    let reply = "";
    const socket = net.createConnection(socketPath, () => socket.write(text));
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => (reply += chunk));
    socket.on("error", reject);
    socket.on("end", () => {
      try {
        resolve(JSON.parse(reply.split("\n")[0]!));
      } catch (error) {
        reject(error);
      }
    });
  });
}
