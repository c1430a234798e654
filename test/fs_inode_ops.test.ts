/**
 * The inode-addressed core (InodeOps), as the kernel transport drives it:
 * names under a parent inode, attributes by inode, listings resumed after a
 * name, set-id bits cleared as HANDLE_KILLPRIV_V2 asks, and the path API
 * seeing the same files. Library level, on a simulated device; every test
 * ends with the full checker.
 */
import { constants as C } from "node:fs";
import { describe, expect, it } from "vitest";
import { rootIno } from "../fs/index.js";
import { FsHarness, expectErrno, readFile, root } from "./fs_helpers.js";

const b = (s: string) => Buffer.from(s, "utf8");
const user = { uid: 1000, gid: 1000 };

describe("InodeOps", () => {
  it("names under a parent inode: create, lookup, link, rename, unlink, rmdir; the path API sees the same tree", () => {
    const h = new FsHarness();
    const fs = h.fs;
    const dir = fs.mkdirAt(rootIno, b("d"), 0o755, root);
    expect(fs.lookup(rootIno, b("d")).ino).toBe(dir.ino);
    expect(fs.findEntry(rootIno, b("missing"))).toBeUndefined();
    expectErrno(() => fs.lookup(rootIno, b("missing")), "ENOENT");
    expect(fs.lookup(dir.ino, b("..")).ino).toBe(rootIno);
    expect(fs.lookup(dir.ino, b(".")).ino).toBe(dir.ino);

    const made = fs.createAt(dir.ino, b("f"), 0o644, C.O_CREAT | C.O_RDWR, user);
    expect(made.stat.uid).toBe(1000);
    fs.write(made.fh, b("hello"), 5, 0);
    fs.release(made.fh);
    expectErrno(() => fs.createAt(dir.ino, b("f"), 0o644, C.O_CREAT | C.O_EXCL | C.O_RDWR, user), "EEXIST");

    const linked = fs.linkAt(made.stat.ino, rootIno, b("g"));
    expect(linked.nlink).toBe(2);
    expect(fs.statIno(made.stat.ino).nlink).toBe(2);
    expect(readFile(fs, "/g").toString()).toBe("hello");

    fs.renameAt(rootIno, b("g"), dir.ino, b("h"));
    expect(fs.lookup(dir.ino, b("h")).ino).toBe(made.stat.ino);
    expect(fs.findEntry(rootIno, b("g"))).toBeUndefined();
    fs.unlinkAt(dir.ino, b("f"));
    expect(fs.statIno(made.stat.ino).nlink).toBe(1);
    expectErrno(() => fs.rmdirAt(rootIno, b("d")), "ENOTEMPTY");
    fs.unlinkAt(dir.ino, b("h"));
    expectErrno(() => fs.statIno(made.stat.ino), "ENOENT");
    fs.rmdirAt(rootIno, b("d"));
    expectErrno(() => fs.statIno(dir.ino), "ENOENT");
    expect(h.closeAndCheck().problems).toEqual([]);
  });

  it("refuses bad names and non-directories as parents, changing nothing", () => {
    const h = new FsHarness();
    const fs = h.fs;
    const file = fs.createAt(rootIno, b("f"), 0o644, C.O_CREAT | C.O_RDWR, root);
    fs.release(file.fh);
    expectErrno(() => fs.mkdirAt(rootIno, Buffer.alloc(256, 0x61), 0o755, root), "ENAMETOOLONG");
    expectErrno(() => fs.mkdirAt(rootIno, b("a/b"), 0o755, root), "EINVAL");
    expectErrno(() => fs.mkdirAt(rootIno, b(".."), 0o755, root), "EEXIST");
    expectErrno(() => fs.mkdirAt(file.stat.ino, b("x"), 0o755, root), "ENOTDIR");
    expectErrno(() => fs.mkdirAt(987654, b("x"), 0o755, root), "ENOENT");
    expectErrno(() => fs.linkAt(rootIno, rootIno, b("rootlink")), "EPERM");
    expect(fs.readdir("/").map((e) => e.name)).toEqual([".", "..", "f"]);
    expect(h.closeAndCheck().problems).toEqual([]);
  });

  it("an open file whose last name went cannot get a new one (ENOENT), and is freed at release", () => {
    const h = new FsHarness();
    const fs = h.fs;
    const made = fs.createAt(rootIno, b("f"), 0o644, C.O_CREAT | C.O_RDWR, root);
    fs.unlinkAt(rootIno, b("f"));
    expect(fs.statIno(made.stat.ino).nlink).toBe(0);
    expectErrno(() => fs.linkAt(made.stat.ino, rootIno, b("again")), "ENOENT");
    fs.release(made.fh);
    expectErrno(() => fs.statIno(made.stat.ino), "ENOENT");
    expect(h.closeAndCheck().problems).toEqual([]);
  });

  it("readdirIno lists in name order and resumes after a name, whatever changed in between", () => {
    const h = new FsHarness();
    const fs = h.fs;
    const dir = fs.mkdirAt(rootIno, b("d"), 0o755, root);
    const names = Array.from({ length: 300 }, (_, i) => `n${String(i).padStart(3, "0")}`);
    for (const name of names) fs.mkdirAt(dir.ino, b(name), 0o755, root);
    const seen: string[] = [];
    let after: Buffer | undefined;
    for (;;) {
      let taken = 0;
      fs.readdirIno(dir.ino, after, (e) => {
        if (taken === 7) return false;
        taken++;
        seen.push(e.name.toString());
        after = Buffer.from(e.name);
        expect(e.type).toBe(C.S_IFDIR);
        return true;
      });
      if (taken === 0) break;
      // A name before the cursor goes, and one after it comes: the listing goes on from the cursor.
      if (seen.length === 70) {
        fs.rmdirAt(dir.ino, b("n000"));
        fs.mkdirAt(dir.ino, b("zz"), 0o755, root);
      }
    }
    expect(seen).toEqual([...names, "zz"]);
    expectErrno(() => fs.readdirIno(987654, undefined, () => true), "ENOENT");
    expect(h.closeAndCheck().problems).toEqual([]);
  });

  it("setattr: size, mode, owner, times (now and exact), ctime from the kernel; chown and killSuidgid clear set-id bits", () => {
    const h = new FsHarness();
    const fs = h.fs;
    const made = fs.createAt(rootIno, b("f"), 0o6755, C.O_CREAT | C.O_RDWR, root);
    fs.write(made.fh, Buffer.alloc(10_000, 1), 10_000, 0);
    let st = fs.setattr(made.stat.ino, { size: 100 });
    expect(st.size).toBe(100);
    st = fs.setattr(made.stat.ino, { mode: 0o6755, atime: 5n, mtime: 7_000_000_001n, ctime: 9n });
    expect([st.mode & 0o7777, st.atimeNs, st.mtimeNs, st.ctimeNs]).toEqual([0o6755, 5n, 7_000_000_001n, 9n]);
    st = fs.setattr(made.stat.ino, { uid: 1000 });
    // chown: setuid goes, setgid goes too because group execute is set.
    expect([st.uid, st.mode & 0o7777]).toEqual([1000, 0o755]);
    fs.setattr(made.stat.ino, { mode: 0o6745 });
    st = fs.setattr(made.stat.ino, { size: 0, killSuidgid: true });
    // setgid without group execute is not a set-id program bit (mandatory locking): it stays.
    expect([st.size, st.mode & 0o7777]).toEqual([0, 0o2745]);
    fs.setattr(made.stat.ino, { mode: 0o4755 });
    fs.write(made.fh, b("x"), 1, 0, true);
    expect(fs.statIno(made.stat.ino).mode & 0o7777).toBe(0o755);
    const dir = fs.mkdirAt(rootIno, b("d"), 0o775, root);
    fs.setattr(dir.ino, { mode: 0o2775 });
    // A directory keeps its setgid bit across chown (new files inherit its group).
    expect(fs.setattr(dir.ino, { gid: 1000 }).mode & 0o7777).toBe(0o2775);
    expectErrno(() => fs.setattr(dir.ino, { size: 0 }), "EISDIR");
    fs.release(made.fh);
    expect(h.closeAndCheck().problems).toEqual([]);
  });

  it("symlinks, device nodes and xattrs by inode", () => {
    const h = new FsHarness();
    const fs = h.fs;
    const link = fs.symlinkAt(rootIno, b("l"), b("/target/\xff"), root);
    expect(fs.readlinkIno(link.ino).equals(b("/target/\xff"))).toBe(true);
    const node = fs.mknodAt(rootIno, b("fifo"), C.S_IFIFO | 0o600, 0, root);
    expect(node.mode & C.S_IFMT).toBe(C.S_IFIFO);
    const dir = fs.mkdirAt(rootIno, b("d"), 0o755, root);
    fs.setxattrIno(dir.ino, "user.a", b("1"), 0);
    expect(fs.findXattrIno(dir.ino, "user.a")?.toString()).toBe("1");
    expect(fs.findXattrIno(dir.ino, "user.b")).toBeUndefined();
    expect(fs.listxattrIno(dir.ino)).toEqual(["user.a"]);
    expectErrno(() => fs.setxattrIno(link.ino, "user.a", b("1"), 0), "EPERM");
    expectErrno(() => fs.findXattrIno(dir.ino, "system.posix_acl_access"), "EOPNOTSUPP");
    fs.removexattrIno(dir.ino, "user.a");
    expectErrno(() => fs.removexattrIno(dir.ino, "user.a"), "ENODATA");
    expect(h.closeAndCheck().problems).toEqual([]);
  });

  it("opendirIno and openIno give handles the path API's read, write and release take", () => {
    const h = new FsHarness();
    const fs = h.fs;
    const made = fs.createAt(rootIno, b("f"), 0o644, C.O_CREAT | C.O_RDWR, root);
    fs.release(made.fh);
    const fh = fs.openIno(made.stat.ino, C.O_RDWR);
    fs.write(fh, b("abc"), 3, 0);
    const out = Buffer.alloc(3);
    expect(fs.read(fh, out, 3, 0)).toBe(3);
    expect(out.toString()).toBe("abc");
    fs.fsync(fh, false);
    fs.release(fh);
    expectErrno(() => fs.openIno(rootIno, C.O_WRONLY), "EISDIR");
    const dh = fs.opendirIno(rootIno);
    fs.releasedir(dh);
    expectErrno(() => fs.opendirIno(made.stat.ino), "ENOTDIR");
    h.reopen();
    expect(readFile(h.fs, "/f").toString()).toBe("abc");
    expect(h.closeAndCheck().problems).toEqual([]);
  });
});
