/**
 * grovefs install-helpers [--prefix DIR] and grovefs uninstall-helpers [--prefix DIR]
 *
 * The programs through which the system's own tools reach grovefs, each a
 * small sh script that execs this Node (process.execPath) on this copy's
 * bin/grovefs.mjs, both by absolute path, so nothing depends on PATH, npx or
 * the working directory:
 *
 *   PREFIX/bin/grovefs            the grovefs command
 *   PREFIX/sbin/mkfs.grovefs      for mkfs -t grovefs (mkfs(8) looks in PATH)
 *   PREFIX/sbin/fsck.grovefs      for fsck -t grovefs (fsck(8) looks in /sbin, then PATH)
 *   /sbin/mount.fuse.grovefs      for mount -t fuse.grovefs and fstab; always in
 *                                 /sbin, whatever the prefix: mount(8) looks
 *                                 only in /sbin, /sbin/fs.d and /sbin/fs
 *
 * Invariants:
 * - Every file written carries the marker line, and nothing without it is
 *   ever overwritten or removed. A helper that exists without the marker
 *   stops the install before anything is written; an existing grovefs
 *   command without it (npm install -g put one there) is kept.
 * - Installing again rewrites the same files (idempotent). Uninstalling
 *   removes exactly the files that carry the marker, and the directories the
 *   install created for them (named in the files' second marker line) once
 *   they are empty.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { CliError } from "./errors.js";
import { packageRoot } from "./package_root.js";

export interface HelperOptions {
  prefix?: string;
}

export const defaultPrefix = "/usr/local";
/** mount(8) runs `mount.<type>` from /sbin, /sbin/fs.d or /sbin/fs only (libmount's FS_SEARCH_PATH). */
export const mountHelperDir = "/sbin";
export const mountHelperName = "mount.fuse.grovefs";

const marker = "# grovefs-helper: written by grovefs install-helpers; grovefs uninstall-helpers removes it";
const createdDirsTag = "# grovefs-helper-created-dirs: ";

type HelperKind = "command" | "mkfs" | "fsck" | "mount";

interface Helper {
  kind: HelperKind;
  path: string;
}

function helpersUnder(prefix: string): Helper[] {
  return [
    { kind: "command", path: path.join(prefix, "bin", "grovefs") },
    { kind: "mkfs", path: path.join(prefix, "sbin", "mkfs.grovefs") },
    { kind: "fsck", path: path.join(prefix, "sbin", "fsck.grovefs") },
    { kind: "mount", path: path.join(mountHelperDir, mountHelperName) },
  ];
}

/** A word for sh, single-quoted. */
function shellQuote(text: string): string {
  return `'${text.replace(/'/g, `'\\''`)}'`;
}

/** What each helper does after the common head: mount(8)'s and fsck(8)'s conventions mapped to grovefs's. */
const bodies: Record<HelperKind, string> = {
  command: `exec "$node" "$grovefs" "$@"\n`,
  // mkfs(8) runs: mkfs.grovefs [OPTIONS] DEVICE; grovefs mkfs takes the same (--size, --label, --compress, --force).
  mkfs: `exec "$node" "$grovefs" mkfs "$@"\n`,
  // fsck(8) runs: fsck.grovefs [-a|-p|-n|-y|-f|-r|-v|-V|-C FD ...] DEVICE. Exit 16 on a usage error, as fsck(8) says.
  fsck: [
    `mode=`,
    `while getopts :apnyfrvVC:l flag; do`,
    `  case $flag in`,
    `    a|p|y) mode=-y ;;  # automatic repair: grovefs repairs only what is safe`,
    `    n) mode=-n ;;`,
    `    f|r|v|V|C|l) ;;    # grovefs always checks everything; its progress bar goes to a terminal`,
    `    *) echo "fsck.grovefs: usage: fsck.grovefs [-a|-p|-n|-y] IMAGE" >&2; exit 16 ;;`,
    `  esac`,
    `done`,
    `shift $((OPTIND - 1))`,
    `if [ $# -ne 1 ]; then echo "fsck.grovefs: usage: fsck.grovefs [-a|-p|-n|-y] IMAGE" >&2; exit 16; fi`,
    `exec "$node" "$grovefs" fsck \${mode:+"$mode"} "$1"`,
    ``,
  ].join("\n"),
  // mount(8) runs: mount.fuse.grovefs SOURCE MOUNTPOINT [-s] [-f] [-n] [-v] [-o OPTIONS] [-t fuse.grovefs] [-N NS].
  mount: [
    `usage() { echo "mount.fuse.grovefs: usage: mount.fuse.grovefs IMAGE MOUNTPOINT [-o OPTIONS]" >&2; exit 1; }`,
    `[ $# -ge 2 ] || usage`,
    `source=$1 mountpoint=$2`,
    `shift 2`,
    `options= fake=`,
    `while getopts :sfnvwro:t:N: flag; do`,
    `  case $flag in`,
    `    o) options=\${options:+$options,}$OPTARG ;;`,
    `    r) options=\${options:+$options,}ro ;;`,
    `    w) options=\${options:+$options,}rw ;;`,
    `    t) case $OPTARG in fuse.grovefs|grovefs) ;; *) echo "mount.fuse.grovefs: cannot mount type $OPTARG" >&2; exit 32 ;; esac ;;`,
    `    f) fake=1 ;;       # mount -f: do everything but the mount`,
    `    N) echo "mount.fuse.grovefs: mount -N (another mount namespace) is not supported" >&2; exit 32 ;;`,
    `    s|n|v) ;;          # sloppy, no mtab, verbose: grovefs still refuses unknown options, and keeps no mtab`,
    `    *) usage ;;`,
    `  esac`,
    `done`,
    `shift $((OPTIND - 1))`,
    `[ $# -eq 0 ] || usage`,
    `[ -z "$fake" ] || exit 0`,
    `exec "$node" "$grovefs" mount "$source" "$mountpoint" \${options:+-o "$options"}`,
    ``,
  ].join("\n"),
};

function script(kind: HelperKind, createdDirs: readonly string[], node: string, grovefs: string): string {
  const head = [
    "#!/bin/sh",
    marker,
    ...(createdDirs.length > 0 ? [`${createdDirsTag}${JSON.stringify(createdDirs)}`] : []),
    `node=${shellQuote(node)}`,
    `grovefs=${shellQuote(grovefs)}`,
    // For the tools grovefs runs itself (mount, umount, sync), should the caller have cleared PATH; grovefs is found by path above.
    `PATH=\${PATH:-/usr/sbin:/usr/bin:/sbin:/bin}`,
    `export PATH`,
    "",
  ];
  return head.join("\n") + bodies[kind];
}

/** This copy's bin/grovefs.mjs, by its real path. */
function groveBin(): string {
  return fs.realpathSync(path.join(packageRoot(), "bin", "grovefs.mjs"));
}

type Found = { state: "absent" } | { state: "ours"; createdDirs: string[] } | { state: "foreign" };

function inspect(file: string): Found {
  let text: string;
  try {
    const stat = fs.lstatSync(file);
    if (!stat.isFile()) return { state: "foreign" };
    text = fs.readFileSync(file, "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return { state: "absent" };
    throw error;
  }
  const lines = text.split("\n", 4);
  if (lines[1] !== marker) return { state: "foreign" };
  const tagged = lines.find((line) => line.startsWith(createdDirsTag));
  let createdDirs: string[] = [];
  try {
    if (tagged !== undefined) createdDirs = (JSON.parse(tagged.slice(createdDirsTag.length)) as unknown[]).filter((d): d is string => typeof d === "string");
  } catch {
    // A damaged list: nothing is known to be ours to remove.
  }
  return { state: "ours", createdDirs };
}

function requireRoot(command: string): void {
  if (process.getuid?.() !== 0) {
    throw new CliError(`${command} needs root: it writes ${path.join(mountHelperDir, mountHelperName)}`, `run it as root (sudo grovefs ${command})`);
  }
}

function checkedPrefix(prefix: string): string {
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(prefix)) throw new CliError("--prefix holds a control character", "give a plain directory path");
  return path.resolve(prefix);
}

/** The directories mkdir -p would create for `dir`, outermost first. */
function missingDirs(dir: string): string[] {
  const missing: string[] = [];
  for (let d = dir; !fs.existsSync(d); d = path.dirname(d)) missing.unshift(d);
  return missing;
}

function writeAtomically(file: string, text: string): void {
  const temporary = `${file}.grovefs-tmp`;
  fs.writeFileSync(temporary, text, { mode: 0o755 });
  fs.chmodSync(temporary, 0o755);
  fs.renameSync(temporary, file);
}

export function installHelpersCommand(options: HelperOptions): void {
  requireRoot("install-helpers");
  const prefix = checkedPrefix(options.prefix ?? defaultPrefix);
  const helpers = helpersUnder(prefix).map((helper) => ({ ...helper, found: inspect(helper.path) }));
  // Refuse before anything is written: never overwrite a program that is not ours.
  for (const helper of helpers) {
    if (helper.found.state === "foreign" && helper.kind !== "command") {
      throw new CliError(`${helper.path} exists and was not written by grovefs install-helpers`, "remove it first, or keep it and leave the helpers uninstalled");
    }
  }
  const node = process.execPath;
  const grovefs = groveBin();
  for (const helper of helpers) {
    if (helper.found.state === "foreign") {
      process.stdout.write(`kept ${helper.path}: a grovefs command that install-helpers did not write (npm install -g, perhaps)\n`);
      continue;
    }
    const dir = path.dirname(helper.path);
    const created = missingDirs(dir);
    fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
    const createdDirs = [...new Set([...(helper.found.state === "ours" ? helper.found.createdDirs : []), ...created])];
    writeAtomically(helper.path, script(helper.kind, createdDirs, node, grovefs));
    process.stdout.write(`installed ${helper.path}\n`);
  }
  const sbin = fs.realpathSync(path.join(prefix, "sbin"));
  const searched = (process.env.PATH ?? "").split(":").filter((entry) => entry !== "" && fs.existsSync(entry));
  if (!searched.some((entry) => fs.realpathSync(entry) === sbin)) {
    process.stdout.write(`note: ${sbin} is not on PATH: mkfs -t grovefs and fsck -t grovefs find their helpers only through it\n`);
  }
  process.stdout.write(`the helpers run ${node} ${grovefs}: run install-helpers again if either moves\n`);
}

export function uninstallHelpersCommand(options: HelperOptions): void {
  requireRoot("uninstall-helpers");
  const prefix = checkedPrefix(options.prefix ?? defaultPrefix);
  const dirs = new Set<string>();
  let removed = 0;
  for (const helper of helpersUnder(prefix)) {
    const found = inspect(helper.path);
    if (found.state === "absent") continue;
    if (found.state === "foreign") {
      process.stdout.write(`kept ${helper.path}: not written by grovefs install-helpers\n`);
      continue;
    }
    fs.rmSync(helper.path);
    removed++;
    process.stdout.write(`removed ${helper.path}\n`);
    for (const dir of found.createdDirs) dirs.add(dir);
  }
  // Innermost first; a directory that holds anything else stays.
  for (const dir of [...dirs].sort((a, b) => b.length - a.length)) {
    try {
      fs.rmdirSync(dir);
      process.stdout.write(`removed ${dir}/\n`);
    } catch {
      // Not empty, or already gone: it is not ours to clear.
    }
  }
  if (removed === 0) process.stdout.write(`no grovefs helpers were installed (prefix ${prefix})\n`);
}
