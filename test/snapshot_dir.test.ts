/**
 * /.snapshots in a mount (fs/snapshot_dir.ts), through a real GroveFs with
 * real snapshots on a simulated device, without the kernel: hidden from
 * readdir("/") but enterable, snapshot contents as taken, handles that never
 * collide, distinct inode numbers, EROFS and EEXIST for every change, a
 * snapshot deleted while browsed, and the bridge's no-throw invariant.
 */
import { describe, expect, it } from "vitest";
import { fuseHandlers } from "../fs/fuse_bridge.js";
import { SnapshotDirFs, snapshotDirIno, viewIno } from "../fs/snapshot_dir.js";
import { FsHarness, O_CREAT, O_RDONLY, O_RDWR, O_TRUNC, O_WRONLY, expectBytes, expectErrno, pattern, root, writeFile } from "./fs_helpers.js";

const sIfDir = 0o040000;

/** A volume with /a, /dir/b, /link and a snapshot s1 of it, then /a changed; wrapped. */
function setUp(): { h: FsHarness; snap: SnapshotDirFs; before: Buffer; after: Buffer } {
  const h = new FsHarness(16384);
  const before = pattern(300_000, 1);
  const after = pattern(200_000, 2);
  writeFile(h.fs, "/a", before);
  h.fs.mkdir("/dir", 0o755, root);
  writeFile(h.fs, "/dir/b", Buffer.from("bee\n"));
  h.fs.symlink("dir/b", "/link", root);
  h.fs.createSubvolume("s1", { readOnly: true });
  writeFile(h.fs, "/a", after);
  h.fs.unlink("/dir/b");
  return { h, snap: new SnapshotDirFs(h.fs), before, after };
}

function names(entries: { name: string }[]): string[] {
  return entries.map((e) => e.name).filter((n) => n !== "." && n !== "..").sort();
}

/** The whole file through the wrapper's handles. */
function readAll(fs: SnapshotDirFs, path: string): Buffer {
  const fh = fs.open(path, O_RDONLY);
  try {
    const size = fs.fgetattr(fh).size;
    const out = Buffer.alloc(size);
    for (let at = 0; at < size; ) {
      const n = fs.read(fh, out.subarray(at), Math.min(65536, size - at), at);
      expect(n).toBeGreaterThan(0);
      at += n;
    }
    return out;
  } finally {
    fs.release(fh);
  }
}

function readAt(fs: SnapshotDirFs, fh: number, length: number, position: number): Buffer {
  const out = Buffer.alloc(length);
  return out.subarray(0, fs.read(fh, out, length, position));
}

/** The errno code `attempt` fails with, or "(none)" if it succeeds. */
function codeOf(attempt: () => unknown): string {
  try {
    attempt();
  } catch (error) {
    return (error as { code?: string }).code ?? String(error);
  }
  return "(none)";
}

function closeAndCheck(h: FsHarness, snap: SnapshotDirFs): void {
  snap.close();
  h.closeAndCheck();
}

describe("/.snapshots", () => {
  it("is hidden from readdir('/') but can be entered, and lists the read-only snapshots only", () => {
    const { h, snap } = setUp();
    h.fs.createSubvolume("c1", { readOnly: false });
    h.fs.createSubvolume("s2", { from: "s1", readOnly: true });
    expect(names(snap.readdir("/"))).toEqual(["a", "dir", "link"]);
    expect(names(snap.readdir("/.snapshots"))).toEqual(["s1", "s2"]);
    const dots = snap.readdir("/.snapshots").filter((e) => e.name.startsWith("."));
    expect(dots).toEqual([
      { name: ".", ino: snapshotDirIno, type: sIfDir },
      { name: "..", ino: snap.getattr("/").ino, type: sIfDir },
    ]);
    const inSnapshot = snap.readdir("/.snapshots/s1");
    expect(inSnapshot.find((e) => e.name === ".")!.ino).toBe(snap.getattr("/.snapshots/s1").ino);
    expect(inSnapshot.find((e) => e.name === "..")!.ino).toBe(snapshotDirIno);
    expect(snap.readdir("/.snapshots/s1/dir").find((e) => e.name === "..")!.ino).toBe(snap.getattr("/.snapshots/s1").ino);
    const dir = snap.getattr("/.snapshots");
    expect(dir).toMatchObject({ ino: snapshotDirIno, mode: sIfDir | 0o555, uid: 0, gid: 0, nlink: 4 });
    const fh = snap.opendir("/.snapshots");
    expect(snap.fgetattr(fh).ino).toBe(snapshotDirIno);
    snap.releasedir(fh);
    expectErrno(() => snap.getattr("/.snapshots/c1"), "ENOENT");
    expectErrno(() => snap.getattr("/.snapshots/nope"), "ENOENT");
    expectErrno(() => snap.readdir("/.snapshots/nope/x"), "ENOENT");
    expect(snap.statfs()).toEqual(h.fs.statfs());
    closeAndCheck(h, snap);
  });

  it("serves each snapshot as it was taken, with inode numbers of its own", () => {
    const { h, snap, before, after } = setUp();
    expectBytes(readAll(snap, "/.snapshots/s1/a"), before, "snapshot /a");
    expectBytes(readAll(snap, "/a"), after, "live /a");
    expect(readAll(snap, "/.snapshots/s1/dir/b").toString()).toBe("bee\n");
    expectErrno(() => snap.getattr("/dir/b"), "ENOENT");
    expect(snap.readlink("/.snapshots/s1/link")).toBe("dir/b");
    expect(names(snap.readdir("/.snapshots/s1"))).toEqual(["a", "dir", "link"]);
    expect(names(snap.readdir("/.snapshots/s1/dir"))).toEqual(["b"]);

    const id = h.fs.listSubvolumes().find((s) => s.name === "s1")!.id;
    const rootSnap = snap.getattr("/.snapshots/s1");
    expect(rootSnap.mode & 0o170000).toBe(sIfDir);
    expect(rootSnap.ino).toBe(viewIno(id, 1));
    expect(rootSnap.ino).not.toBe(snap.getattr("/").ino);
    const liveInos = new Set(snap.readdir("/").map((e) => e.ino));
    for (const entry of snap.readdir("/.snapshots/s1")) {
      if (entry.name === "." || entry.name === "..") continue;
      expect(liveInos.has(entry.ino), entry.name).toBe(false);
      expect(entry.ino).toBe(snap.getattr(`/.snapshots/s1/${entry.name}`).ino);
    }
    expect(snap.readdir("/.snapshots").find((e) => e.name === "s1")!.ino).toBe(rootSnap.ino);
    // Two snapshots of the same tree show different numbers for the same inode.
    h.fs.createSubvolume("s2", { from: "s1", readOnly: true });
    expect(snap.getattr("/.snapshots/s2/a").ino).not.toBe(snap.getattr("/.snapshots/s1/a").ino);
    expect(snap.listxattr("/.snapshots/s1/a")).toEqual([]);
    expect(snap.findXattr("/.snapshots/s1/a", "user.x")).toBeUndefined();
    expect(snap.findXattr("/.snapshots", "user.x")).toBeUndefined();
    expectErrno(() => snap.getxattr("/.snapshots", "user.x"), "ENODATA");
    closeAndCheck(h, snap);
  });

  it("keeps the handles of the live volume and of snapshots apart", () => {
    const { h, snap, before, after } = setUp();
    const handles: number[] = [];
    for (let i = 0; i < 3; i++) {
      handles.push(snap.open("/a", O_RDONLY), snap.open("/.snapshots/s1/a", O_RDONLY));
    }
    expect(new Set(handles).size).toBe(handles.length);
    for (let i = 0; i < handles.length; i++) {
      const expected = i % 2 === 0 ? after : before;
      expectBytes(readAt(snap, handles[i]!, 4096, 8192), expected.subarray(8192, 8192 + 4096), `handle ${i}`);
      expect(snap.fgetattr(handles[i]!).size).toBe(expected.length);
    }
    expect(snap.fgetattr(handles[0]!).ino).toBe(snap.getattr("/a").ino);
    expect(snap.fgetattr(handles[1]!).ino).toBe(snap.getattr("/.snapshots/s1/a").ino);
    // A write through a live handle works; through a snapshot handle it is EROFS.
    const rw = snap.open("/a", O_RDWR);
    expect(snap.write(rw, Buffer.from("xy"), 2, 0)).toBe(2);
    snap.release(rw);
    expectErrno(() => snap.write(handles[1]!, Buffer.from("xy"), 2, 0), "EROFS");
    expectErrno(() => snap.ftruncate(handles[1]!, 0), "EROFS");
    snap.flush(handles[1]!);
    snap.fsync(handles[1]!, false);
    for (const fh of handles) snap.release(fh);
    for (const fh of handles) expectErrno(() => snap.read(fh, Buffer.alloc(1), 1, 0), "EBADF");
    expectErrno(() => snap.release(handles[0]!), "EBADF");
    const created = snap.create("/new", 0o644, O_CREAT | O_RDWR, root);
    expect(snap.write(created, Buffer.from("new"), 3, 0)).toBe(3);
    snap.release(created);
    expect(readAll(snap, "/new").toString()).toBe("new");
    closeAndCheck(h, snap);
  });

  it("refuses every change under /.snapshots with EROFS, and a new entry named .snapshots with EEXIST", () => {
    const { h, snap, before } = setUp();
    const s = "/.snapshots/s1";
    const refusals: [string, () => unknown][] = [
      ["write open", () => snap.open(`${s}/a`, O_WRONLY)],
      ["rdwr open", () => snap.open(`${s}/a`, O_RDWR)],
      ["truncating open", () => snap.open(`${s}/a`, O_RDONLY | O_TRUNC)],
      ["create", () => snap.create(`${s}/new`, 0o644, O_CREAT | O_WRONLY, root)],
      ["create in .snapshots", () => snap.create("/.snapshots/new", 0o644, O_CREAT | O_WRONLY, root)],
      ["mkdir", () => snap.mkdir(`${s}/d`, 0o755, root)],
      ["mkdir in .snapshots", () => snap.mkdir("/.snapshots/s9", 0o755, root)],
      ["mknod", () => snap.mknod(`${s}/n`, 0o100644, 0, root)],
      ["symlink", () => snap.symlink("x", `${s}/l`, root)],
      ["unlink", () => snap.unlink(`${s}/a`)],
      ["unlink a snapshot", () => snap.unlink(s)],
      ["rmdir", () => snap.rmdir(`${s}/dir`)],
      ["rmdir a snapshot", () => snap.rmdir(s)],
      ["rmdir .snapshots", () => snap.rmdir("/.snapshots")],
      ["rename within", () => snap.rename(`${s}/a`, `${s}/z`)],
      ["rename out", () => snap.rename(`${s}/a`, "/z")],
      ["rename in", () => snap.rename("/a", `${s}/z`)],
      ["rename .snapshots", () => snap.rename("/.snapshots", "/snaps")],
      ["link out", () => snap.link(`${s}/a`, "/z")],
      ["link in", () => snap.link("/a", `${s}/z`)],
      ["truncate", () => snap.truncate(`${s}/a`, 0)],
      ["chmod", () => snap.chmod(`${s}/a`, 0o600)],
      ["chmod .snapshots", () => snap.chmod("/.snapshots", 0o777)],
      ["chown", () => snap.chown(`${s}/a`, 1, 1)],
      ["utimens", () => snap.utimens(`${s}/a`, "now", "now")],
      ["utimens .snapshots", () => snap.utimens("/.snapshots", "now", "now")],
      ["setxattr", () => snap.setxattr(`${s}/a`, "user.x", Buffer.from("1"), 0)],
      ["removexattr", () => snap.removexattr(`${s}/a`, "user.x")],
      ["access W_OK", () => snap.access(`${s}/a`, 2)],
      ["access W_OK on .snapshots", () => snap.access("/.snapshots", 2)],
    ];
    for (const [what, attempt] of refusals) expect(codeOf(attempt), what).toBe("EROFS");
    const taken: [string, () => unknown][] = [
      ["mkdir", () => snap.mkdir("/.snapshots", 0o755, root)],
      ["create", () => snap.create("/.snapshots", 0o644, O_CREAT | O_WRONLY, root)],
      ["mknod", () => snap.mknod("/.snapshots", 0o100644, 0, root)],
      ["symlink", () => snap.symlink("a", "/.snapshots", root)],
      ["link", () => snap.link("/a", "/.snapshots")],
      ["rename", () => snap.rename("/a", "/.snapshots")],
    ];
    for (const [what, attempt] of taken) expect(codeOf(attempt), what).toBe("EEXIST");
    expectErrno(() => snap.open("/.snapshots", O_RDONLY), "EISDIR");
    expectErrno(() => snap.readlink("/.snapshots"), "EINVAL");
    snap.access("/.snapshots", 5);
    snap.access(`${s}/a`, 4);
    // Nothing changed: the snapshot and the live tree are as they were.
    expectBytes(readAll(snap, `${s}/a`), before, "snapshot /a");
    expect(names(snap.readdir("/"))).toEqual(["a", "dir", "link"]);
    expect(names(snap.readdir(s))).toEqual(["a", "dir", "link"]);
    closeAndCheck(h, snap);
  });

  it("shadows and hides a real root entry named .snapshots", () => {
    const h = new FsHarness(16384);
    h.fs.mkdir("/.snapshots", 0o700, root);
    h.fs.mkdir("/other", 0o755, root);
    const snap = new SnapshotDirFs(h.fs);
    expect(names(snap.readdir("/"))).toEqual(["other"]);
    expect(snap.getattr("/.snapshots").ino).toBe(snapshotDirIno);
    expect(names(snap.readdir("/.snapshots"))).toEqual([]);
    closeAndCheck(h, snap);
  });

  it("forgets a snapshot deleted while browsed: its handles and paths answer ENOENT, nothing throws", () => {
    const { h, snap } = setUp();
    const file = snap.open("/.snapshots/s1/a", O_RDONLY);
    const dir = snap.opendir("/.snapshots/s1/dir");
    const live = snap.open("/a", O_RDONLY);
    snap.deleteSubvolume("s1");
    expectErrno(() => snap.read(file, Buffer.alloc(16), 16, 0), "ENOENT");
    expectErrno(() => snap.fgetattr(file), "ENOENT");
    expectErrno(() => snap.getattr("/.snapshots/s1"), "ENOENT");
    expectErrno(() => snap.getattr("/.snapshots/s1/a"), "ENOENT");
    expectErrno(() => snap.open("/.snapshots/s1/a", O_RDONLY), "ENOENT");
    expect(names(snap.readdir("/.snapshots"))).toEqual([]);
    expect(snap.getattr("/.snapshots").nlink).toBe(2);
    // The live volume is untouched, and the dead handles close cleanly (close(2) flushes, then releases).
    expect(snap.read(live, Buffer.alloc(4), 4, 0)).toBe(4);
    snap.flush(file);
    snap.release(file);
    snap.releasedir(dir);
    snap.release(live);
    expectErrno(() => snap.release(file), "EBADF");
    h.fs.finishDeletions();
    expect(h.fs.pendingDeletions()).toBe(0);
    // A new snapshot under the same name is a new view.
    h.fs.createSubvolume("s1", { readOnly: true });
    expect(readAll(snap, "/.snapshots/s1/a").length).toBe(200_000);
    closeAndCheck(h, snap);
  });

  it("through the bridge's handlers, every operation on and under /.snapshots answers once and never throws", () => {
    const { h, snap } = setUp();
    const handlers = fuseHandlers(snap);
    const paths = ["/", "/.snapshots", "/.snapshots/s1", "/.snapshots/s1/a", "/.snapshots/s1/dir", "/.snapshots/nope", "/.snapshots/nope/x", "/.snapshots/"];
    let calls = 0;
    let answers = 0;
    const cb = (..._args: unknown[]) => void answers++;
    let logged = "";
    const call = (fn: () => void) => {
      calls++;
      const stderr = process.stderr.write;
      process.stderr.write = ((text: string) => ((logged += text), true)) as typeof process.stderr.write;
      try {
        fn();
      } finally {
        process.stderr.write = stderr;
      }
    };
    for (const p of paths) {
      call(() => handlers.getattr!(p, cb));
      call(() => handlers.readdir!(p, cb));
      call(() => handlers.access!(p, 2, cb));
      call(() => handlers.mkdir!(p, 0o755, cb));
      call(() => handlers.rmdir!(p, cb));
      call(() => handlers.unlink!(p, cb));
      call(() => handlers.create!(p, 0o644, cb));
      call(() => handlers.open!(p, O_RDONLY, cb));
      call(() => handlers.open!(p, O_RDWR, cb));
      call(() => handlers.opendir!(p, 0, cb));
      call(() => handlers.truncate!(p, 0, cb));
      call(() => handlers.chmod!(p, 0o644, cb));
      call(() => handlers.chown!(p, 0, 0, cb));
      call(() => handlers.utimens!(p, { sec: 0, nsec: 0 }, { sec: 0, nsec: 0 }, cb));
      call(() => handlers.readlink!(p, cb));
      call(() => handlers.rename!(p, `${p}-x`, cb));
      call(() => handlers.rename!("/a", p, cb));
      call(() => handlers.link!(p, "/lnk", cb));
      call(() => handlers.symlink!("t", p, cb));
      call(() => handlers.mknod!(p, 0o100644, 0, cb));
      call(() => handlers.getxattr!(p, "user.a", 0, cb));
      call(() => handlers.setxattr!(p, "user.a", Buffer.from("1"), 0, 0, cb));
      call(() => handlers.listxattr!(p, cb));
      call(() => handlers.removexattr!(p, "user.a", cb));
      call(() => handlers.statfs!(p, cb));
    }
    for (const fh of [0, 1, 2, 999_999, 2 ** 32 - 1]) {
      call(() => handlers.read!("/x", fh, Buffer.alloc(8), 8, 0, cb));
      call(() => handlers.write!("/x", fh, Buffer.alloc(8), 8, 0, cb));
      call(() => handlers.release!("/x", fh, cb));
      call(() => handlers.releasedir!("/x", fh, cb));
      call(() => handlers.fsync!("/x", 0, fh, cb));
      call(() => handlers.flush!("/x", fh, cb));
    }
    expect(answers).toBe(calls);
    expect(logged, "the bridge logged a non-GroveError").toBe("");
    closeAndCheck(h, snap);
  });
});
