/**
 * Extended attributes: stored in the subvolume's inode tree beside the inode
 * record, as chunks of at most xattrChunkBytes under (ino, name, chunk index)
 * keys (fs/format.ts), so that a value of up to 16 KiB needs no tree of its
 * own. This room reads and writes them; admission against free space and the
 * inode's ctime are the facade's (GroveFs), which wraps each change in a
 * mutation.
 *
 * Namespaces: user., trusted. and security. are stored; system.* (POSIX ACLs,
 * which grovefs does not implement) answers EOPNOTSUPP, which makes tools such
 * as cp -a fall back to chmod, where storing the ACL as a plain attribute
 * would silently lose the mode.
 */
import { constants as C } from "node:fs";
import { GroveError, type Tree } from "../kvstore/index.js";
import { xattrCreate, xattrReplace } from "./api.js";
import { xattrChunkBytes, xattrNameSizeMaxBytes, xattrValueSizeMaxBytes } from "./constants.js";
import { inodeFlagHadXattrs, inodeKey, xattrChunkKey, xattrNameOf, xattrPrefix, type Inode } from "./format.js";

const xattrNamespaces = ["user.", "trusted.", "security."];
/** Chunks one attribute may have: the bound of a removal's tree updates. */
export const xattrChunksMax = xattrValueSizeMaxBytes / xattrChunkBytes;

/** A checked change: the key prefix of the attribute and its value's chunk count. */
export interface XattrWrite {
  prefix: Buffer;
  chunks: number;
}

export class Xattrs {
  constructor(private readonly inodes: Tree) {}

  /** The value, or undefined when there is none of that name (the common miss builds no error). */
  find(inode: Inode, name: string): Buffer | undefined {
    const key = xattrName(name);
    // The kernel asks for security.capability before the first write to every file: usually none ever had one.
    if ((inode.flags & inodeFlagHadXattrs) === 0) return undefined;
    const prefix = xattrPrefix(inode.ino, key);
    const chunks: Buffer[] = [];
    for (const [, value] of this.inodes.range({ from: prefix, to: xattrChunkKey(prefix, 255) })) chunks.push(value);
    return chunks.length === 0 ? undefined : Buffer.concat(chunks);
  }

  names(inode: Inode): string[] {
    const names: string[] = [];
    const prefix = xattrPrefix(inode.ino);
    for (const [key] of this.inodes.range({ from: prefix, to: inodeKey(inode.ino + 1) })) {
      const name = xattrNameOf(key);
      if (name !== undefined && key[key.length - 1] === 0) names.push(name.toString("utf8"));
    }
    return names;
  }

  /** Validates setxattr(2) of `name` on `inode` (flags, sizes, namespace, existence); changes nothing. */
  checkSet(inode: Inode, name: string, value: Buffer, flags: number, path: string | undefined): XattrWrite {
    const key = xattrName(name);
    if ((flags & ~(xattrCreate | xattrReplace)) !== 0 || flags === (xattrCreate | xattrReplace)) {
      throw new GroveError("EINVAL", "EINVAL_xattr_flags", "invalid setxattr flags", { path });
    }
    if (value.length > xattrValueSizeMaxBytes) {
      throw new GroveError("E2BIG", "E2BIG_xattr", `attribute values are limited to ${xattrValueSizeMaxBytes} bytes`, { path });
    }
    checkUserXattr(inode, name, path);
    const prefix = xattrPrefix(inode.ino, key);
    const exists = this.inodes.get(xattrChunkKey(prefix, 0)) !== undefined;
    if (exists && (flags & xattrCreate) !== 0) throw new GroveError("EEXIST", "EEXIST_xattr", "attribute exists", { path });
    if (!exists && (flags & xattrReplace) !== 0) throw new GroveError("ENODATA", "ENODATA_xattr", "no such attribute", { path });
    return { prefix, chunks: Math.max(1, Math.ceil(value.length / xattrChunkBytes)) };
  }

  /** Replaces the attribute checked by `checkSet` with `value` (inside a mutation). */
  write(change: XattrWrite, value: Buffer): void {
    this.deleteUnder(change.prefix);
    for (let i = 0; i < change.chunks; i++) {
      this.inodes.put(xattrChunkKey(change.prefix, i), value.subarray(i * xattrChunkBytes, (i + 1) * xattrChunkBytes));
    }
  }

  /** The key prefix of an attribute that exists (ENODATA otherwise), for `deleteUnder`. */
  checkRemove(inode: Inode, name: string, path: string | undefined): Buffer {
    const prefix = xattrPrefix(inode.ino, xattrName(name));
    if (this.inodes.get(xattrChunkKey(prefix, 0)) === undefined) {
      throw new GroveError("ENODATA", "ENODATA_xattr", `no attribute ${name}`, { path });
    }
    return prefix;
  }

  /** Deletes every chunk under `prefix`: one attribute, or all of an inode's (`xattrPrefix(ino)`). */
  deleteUnder(prefix: Buffer): void {
    const end = Buffer.concat([prefix, Buffer.from([0xff])]);
    const keys: Buffer[] = [];
    for (const [key] of this.inodes.range({ from: prefix, to: end })) keys.push(key);
    for (const key of keys) this.inodes.delete(key);
  }
}

/** Whether a well-formed attribute name is outside the namespaces grovefs stores (setxattr answers EOPNOTSUPP). */
export function xattrNamespaceUnsupported(name: Buffer): boolean {
  if (name.length === 0 || name.length > xattrNameSizeMaxBytes || name.includes(0)) return false;
  const text = name.toString("latin1");
  return !xattrNamespaces.some((ns) => text.startsWith(ns) && text.length > ns.length);
}

function xattrName(name: string): Buffer {
  const bytes = Buffer.from(name, "utf8");
  if (bytes.length === 0 || bytes.length > xattrNameSizeMaxBytes) {
    throw new GroveError("ERANGE", "ERANGE_xattr_name", `attribute names are 1 to ${xattrNameSizeMaxBytes} bytes`);
  }
  if (bytes.includes(0)) throw new GroveError("EINVAL", "EINVAL_xattr_name", "attribute name contains NUL");
  if (!xattrNamespaces.some((ns) => name.startsWith(ns) && name.length > ns.length)) {
    throw new GroveError("EOPNOTSUPP", "EOPNOTSUPP_xattr_namespace", `unsupported attribute namespace: ${name}`);
  }
  return bytes;
}

/** user.* attributes exist only on regular files and directories (xattr(7)). */
function checkUserXattr(inode: Inode, name: string, path: string | undefined): void {
  const type = inode.mode & C.S_IFMT;
  if (name.startsWith("user.") && type !== C.S_IFREG && type !== C.S_IFDIR) {
    throw new GroveError("EPERM", "EPERM_xattr_user", "user attributes need a regular file or directory", { path });
  }
}
