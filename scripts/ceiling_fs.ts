/**
 * The performance ceiling for the FUSE benchmark: a trivial in-memory
 * filesystem on fuse-native, mounted through fs/fuse_binding.ts with the same
 * options as grovefs (big_writes, use_ino, default_permissions, ...). Nothing
 * our engine does can be faster than this.
 *
 *   npx tsx scripts/ceiling_fs.ts MOUNTPOINT
 *
 * Runs in the foreground, prints "ready" once mounted, unmounts on SIGINT or
 * SIGTERM. Flat map from path to node; times in bigint nanoseconds; a file
 * handle is the inode number. File data lives in 1 MiB chunks, each a Buffer
 * that grows on demand (so small files stay small and a big file never
 * recopies what it has: one growable Buffer per file measured 244 MB/s
 * writing a 1 GB file, against 1 GB/s once allocated). No hard links or
 * symlinks; xattrs are answered as none (see getxattr).
 */
import * as os from "node:os";
import {
  Errno,
  UTIME_NOW,
  UTIME_OMIT,
  createMount,
  mount,
  unmount,
  type FuseHandlers,
  type FuseStat,
  type FuseTimespec,
} from "../fs/fuse_binding.js";

const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;

interface Node {
  ino: number;
  mode: number;
  nlink: number;
  size: number;
  chunks: Buffer[]; // chunk i holds bytes [i*chunkBytes, ...); absent or short means zeros
  atime: bigint;
  mtime: bigint;
  ctime: bigint;
  children: Set<string> | null; // names, for directories
  opens: number;
}

const uid = process.getuid?.() ?? 0;
const gid = process.getgid?.() ?? 0;
const chunkBytes = 1 << 20;
const byPath = new Map<string, Node>();
const byIno = new Map<number, Node>(); // every node still reachable by path or handle
let nextIno = 1;

const now = (): bigint => BigInt(Date.now()) * 1_000_000n;

function newNode(mode: number): Node {
  const t = now();
  const node: Node = {
    ino: nextIno++,
    mode,
    nlink: (mode & S_IFMT) === S_IFDIR ? 2 : 1,
    size: 0,
    chunks: [],
    atime: t,
    mtime: t,
    ctime: t,
    children: (mode & S_IFMT) === S_IFDIR ? new Set() : null,
    opens: 0,
  };
  byIno.set(node.ino, node);
  return node;
}

byPath.set("/", newNode(S_IFDIR | 0o755));

function statOf(n: Node): FuseStat {
  return {
    mode: n.mode,
    uid,
    gid,
    size: n.children ? 4096 : n.size,
    nlink: n.nlink,
    ino: n.ino,
    blksize: 4096,
    blocks: Math.ceil(n.size / 512),
    atime: n.atime,
    mtime: n.mtime,
    ctime: n.ctime,
  };
}

function split(path: string): [string, string] {
  const i = path.lastIndexOf("/");
  return [i === 0 ? "/" : path.slice(0, i), path.slice(i + 1)];
}

/** The parent directory of a path to create or remove, or a negative errno. */
function parentOf(path: string): Node | number {
  const p = byPath.get(split(path)[0]);
  if (!p) return Errno.ENOENT;
  return p.children ? p : Errno.ENOTDIR;
}

// Invariant: every byte at or past n.size that a chunk holds is zero, so a
// file that grows (by write or truncate) reads zeros in the gap.

function writeData(n: Node, src: Buffer, len: number, pos: number): void {
  for (let done = 0; done < len; ) {
    const at = pos + done;
    const i = Math.floor(at / chunkBytes);
    const off = at - i * chunkBytes;
    const k = Math.min(len - done, chunkBytes - off);
    let c = n.chunks[i];
    if (!c || c.length < off + k) {
      const grown = Buffer.alloc(Math.min(chunkBytes, Math.max(off + k, 2 * (c?.length ?? 0), 4096)));
      if (c) c.copy(grown);
      c = n.chunks[i] = grown;
    }
    src.copy(c, off, done, done + k);
    done += k;
  }
  if (pos + len > n.size) n.size = pos + len;
}

function readData(n: Node, dst: Buffer, len: number, pos: number): number {
  const count = Math.max(0, Math.min(len, n.size - pos));
  for (let done = 0; done < count; ) {
    const at = pos + done;
    const i = Math.floor(at / chunkBytes);
    const off = at - i * chunkBytes;
    const k = Math.min(count - done, chunkBytes - off);
    const c = n.chunks[i];
    const have = c ? Math.max(0, Math.min(k, c.length - off)) : 0;
    if (have > 0) c!.copy(dst, done, off, off + have);
    if (have < k) dst.fill(0, done + have, done + k);
    done += k;
  }
  return count;
}

function resize(n: Node, size: number): void {
  if (size < n.size) {
    const keep = Math.ceil(size / chunkBytes);
    n.chunks.length = Math.min(n.chunks.length, keep);
    const tail = n.chunks[keep - 1];
    if (tail) tail.fill(0, Math.min(tail.length, size - (keep - 1) * chunkBytes));
  }
  n.size = size;
}

function drop(n: Node): void {
  if (n.nlink === 0 && n.opens === 0) byIno.delete(n.ino);
}

function setTime(t: FuseTimespec, current: bigint, at: bigint): bigint {
  if (t.nsec === UTIME_OMIT) return current;
  if (t.nsec === UTIME_NOW) return at;
  return BigInt(t.sec) * 1_000_000_000n + BigInt(t.nsec);
}

function addEntry(path: string, mode: number): Node | number {
  const parent = parentOf(path);
  if (typeof parent === "number") return parent;
  if (byPath.has(path)) return Errno.EEXIST;
  const node = newNode(mode);
  byPath.set(path, node);
  parent.children!.add(split(path)[1]);
  if (node.children) parent.nlink++;
  parent.mtime = parent.ctime = node.ctime;
  return node;
}

function removeEntry(path: string, node: Node): void {
  const parent = byPath.get(split(path)[0])!;
  parent.children!.delete(split(path)[1]);
  if (node.children) parent.nlink--;
  parent.mtime = parent.ctime = now();
  byPath.delete(path);
}

const handlers: FuseHandlers = {
  // Like grovefs it answers getxattr (with no attributes): a filesystem without
  // it gets ENOSYS once and the kernel stops asking, but one with xattrs is asked
  // for security.capability before every write. The ceiling pays that round trip too.
  getxattr(path, _name, _position, cb) {
    if (!byPath.has(path)) return cb(Errno.ENOENT);
    cb(0, undefined);
  },
  listxattr(path, cb) {
    if (!byPath.has(path)) return cb(Errno.ENOENT);
    cb(0, []);
  },
  getattr(path, cb) {
    const n = byPath.get(path);
    if (!n) return cb(Errno.ENOENT);
    cb(0, statOf(n));
  },
  readdir(path, cb) {
    const n = byPath.get(path);
    if (!n) return cb(Errno.ENOENT);
    if (!n.children) return cb(Errno.ENOTDIR);
    cb(0, [...n.children]);
  },
  statfs(_path, cb) {
    const blocks = Math.min(0xffffffff, Math.floor(os.totalmem() / 4096));
    const free = Math.min(blocks, Math.floor(os.freemem() / 4096));
    cb(0, { bsize: 4096, frsize: 4096, blocks, bfree: free, bavail: free, files: 1 << 30, ffree: (1 << 30) - byIno.size, favail: (1 << 30) - byIno.size, fsid: 0, flag: 0, namemax: 255 });
  },
  create(path, mode, cb) {
    const n = addEntry(path, S_IFREG | (mode & 0o7777));
    if (typeof n === "number") return cb(n);
    n.opens++;
    cb(0, n.ino);
  },
  open(path, _flags, cb) {
    const n = byPath.get(path);
    if (!n) return cb(Errno.ENOENT);
    n.opens++;
    cb(0, n.ino);
  },
  release(_path, fd, cb) {
    const n = byIno.get(fd);
    if (n) {
      n.opens--;
      drop(n);
    }
    cb(0);
  },
  read(_path, fd, buf, len, pos, cb) {
    const n = byIno.get(fd);
    if (!n) return cb(Errno.EBADF);
    cb(readData(n, buf, len, pos));
  },
  write(_path, fd, buf, len, pos, cb) {
    const n = byIno.get(fd);
    if (!n) return cb(Errno.EBADF);
    writeData(n, buf, len, pos);
    n.mtime = n.ctime = now();
    cb(len);
  },
  truncate(path, size, cb) {
    const n = byPath.get(path);
    if (!n) return cb(Errno.ENOENT);
    if (n.children) return cb(Errno.EISDIR);
    resize(n, size);
    n.mtime = n.ctime = now();
    cb(0);
  },
  ftruncate(_path, fd, size, cb) {
    const n = byIno.get(fd);
    if (!n) return cb(Errno.EBADF);
    resize(n, size);
    n.mtime = n.ctime = now();
    cb(0);
  },
  unlink(path, cb) {
    const n = byPath.get(path);
    if (!n) return cb(Errno.ENOENT);
    if (n.children) return cb(Errno.EISDIR);
    removeEntry(path, n);
    n.nlink--;
    n.ctime = now();
    drop(n);
    cb(0);
  },
  mkdir(path, mode, cb) {
    const n = addEntry(path, S_IFDIR | (mode & 0o7777));
    cb(typeof n === "number" ? n : 0);
  },
  rmdir(path, cb) {
    const n = byPath.get(path);
    if (!n) return cb(Errno.ENOENT);
    if (!n.children) return cb(Errno.ENOTDIR);
    if (n.children.size > 0) return cb(Errno.ENOTEMPTY);
    removeEntry(path, n);
    n.nlink = 0;
    drop(n);
    cb(0);
  },
  rename(src, dest, cb) {
    const n = byPath.get(src);
    if (!n) return cb(Errno.ENOENT);
    if (src === dest) return cb(0);
    if (n.children && dest.startsWith(`${src}/`)) return cb(Errno.EINVAL);
    const parent = parentOf(dest);
    if (typeof parent === "number") return cb(parent);
    const old = byPath.get(dest);
    if (old) {
      if (old.children && !n.children) return cb(Errno.EISDIR);
      if (!old.children && n.children) return cb(Errno.ENOTDIR);
      if (old.children && old.children.size > 0) return cb(Errno.ENOTEMPTY);
      removeEntry(dest, old);
      old.nlink = old.children ? 0 : old.nlink - 1;
      drop(old);
    }
    removeEntry(src, n);
    byPath.set(dest, n);
    parent.children!.add(split(dest)[1]);
    if (n.children) {
      parent.nlink++;
      for (const [p, child] of [...byPath]) {
        if (p.startsWith(`${src}/`)) {
          byPath.delete(p);
          byPath.set(dest + p.slice(src.length), child);
        }
      }
    }
    n.ctime = now();
    cb(0);
  },
  chmod(path, mode, cb) {
    const n = byPath.get(path);
    if (!n) return cb(Errno.ENOENT);
    n.mode = (n.mode & S_IFMT) | (mode & 0o7777);
    n.ctime = now();
    cb(0);
  },
  utimens(path, atime, mtime, cb) {
    const n = byPath.get(path);
    if (!n) return cb(Errno.ENOENT);
    const t = now();
    n.atime = setTime(atime, n.atime, t);
    n.mtime = setTime(mtime, n.mtime, t);
    n.ctime = t;
    cb(0);
  },
  flush(_path, _fd, cb) {
    cb(0);
  },
  fsync(_path, _datasync, _fd, cb) {
    cb(0);
  },
};

async function main(): Promise<void> {
  const mountpoint = process.argv[2];
  if (!mountpoint || process.argv.length > 3) {
    console.error("usage: npx tsx scripts/ceiling_fs.ts MOUNTPOINT");
    process.exit(2);
  }
  const m = createMount(mountpoint, handlers, { fsname: "ceiling_fs", subtype: "ceilingfs" });
  const mounted = mount(m);
  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    mounted
      .then(() => unmount(m))
      .then(
        () => process.exit(0),
        (err: Error) => {
          console.error(`ceiling_fs: ${err.message}`);
          process.exit(1);
        },
      );
  };
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
  await mounted;
  console.log("ready");
}

main().catch((err: Error) => {
  console.error(`ceiling_fs: ${err.message}`);
  process.exit(1);
});
