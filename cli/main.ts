/**
 * The grovefs command line: parses argv with commander and runs one command.
 *
 * Every failure ends as one line on stderr, `grovefs: <what went wrong> — <what
 * to do>`, and a non-zero exit status; never a stack trace (GROVEFS_DEBUG=1
 * adds one for unexpected errors). Usage errors exit 2, everything else 1;
 * fsck exits as e2fsck does (cli/fsck.ts), usage errors included (8); mount
 * exits as mount(8) and its helpers do: 32 for every failed mount (a bad -o
 * option, the image, the mount point, /dev/fuse, the daemon), 1 for a usage
 * error (a missing argument, an unknown flag).
 */
import { Command, CommanderError } from "commander";
import * as fs from "node:fs";
import * as path from "node:path";
import { debugDetail, formatError } from "./errors.js";
import { packageRoot } from "./package_root.js";
import { fsckCommand, fsckExit, type FsckOptions } from "./fsck.js";
import { infoCommand } from "./info.js";
import { mkfsCommand, type MkfsOptions } from "./mkfs.js";
import { installHelpersCommand, uninstallHelpersCommand, defaultPrefix, type HelperOptions } from "./helpers.js";
import { mountCommand, notifyParent, removeStaleRecords } from "./mount.js";
import {
  cloneCommand,
  snapshotCreateCommand,
  snapshotDeleteCommand,
  snapshotListCommand,
  subvolumeDeleteCommand,
  subvolumeListCommand,
} from "./snapshot.js";
import { resizeCommand } from "./resize.js";
import { restoreCommand, type RestoreOptions } from "./restore.js";
import { diffCommand, receiveCommand, sendCommand, type ReceiveCommandOptions, type SendCommandOptions } from "./send.js";
import { syncCommand } from "./sync.js";
import { scrubCommand, scrubRateDefault, type ScrubCommandOptions } from "./scrub.js";
import { umountCommand } from "./umount.js";

const usageExitCode = 2;
/** mount(8)'s exit statuses, which mount helpers return too. */
const mountExit = { usage: 1, failed: 32 } as const;
/** Set by a command whose exit status says more than success (fsck's e2fsck-style codes). */
let commandExitCode = 0;
/** The exit status of a failure of the command running (mount's is 32). */
let failureExitCode = 1;

/** A usage error of a command whose usage errors have their own exit status (fsck's 8, mount's 1). */
class OwnUsageError extends CommanderError {}

function usageExit(code: number) {
  return (error: CommanderError): never => {
    throw error.exitCode === 0 ? error : new OwnUsageError(code, error.code, error.message);
  };
}

function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

/** Commander's own errors (unknown option, missing argument) in our one-line form. */
function oneLineErrors(command: Command): Command {
  const names: string[] = [];
  for (let c: Command | null = command; c !== null; c = c.parent) names.unshift(c.name());
  const name = names[0] === "grovefs" ? names.join(" ") : ["grovefs", ...names].join(" ");
  return command.exitOverride().configureOutput({
    outputError: (message, write) => write(`grovefs: ${message.replace(/^error: /, "").trim()} — see ${name} --help\n`),
  });
}

function version(): string {
  try {
    return (JSON.parse(fs.readFileSync(path.join(packageRoot(), "package.json"), "utf8")) as { version: string }).version;
  } catch {
    return "unknown";
  }
}

export function buildProgram(): Command {
  const program = oneLineErrors(new Command("grovefs"))
    .description("A copy-on-write filesystem with O(1) snapshots and clones, mounted through FUSE")
    .version(version(), "-V, --version")
    .showSuggestionAfterError(false);

  oneLineErrors(program.command("mkfs"))
    .description("format an image file (created sparse if missing) or a block device")
    .argument("<image>", "image file or block device")
    .option("-s, --size <size>", "size in bytes or with K, M, G, T (powers of 1024); creates or resizes an image file")
    .option("-L, --label <name>", "volume label (up to 64 bytes)")
    .option("--compress <algorithm>", "compress new file data by default: lz4 or none (the default); mount -o compress= overrides it")
    .option("--metadata <profile>", "tree nodes: dup (the default: two copies, an eighth of the volume apart; damaged copies heal from their twin) or single (one copy: more small files fit, and a shrink can go further)")
    .option("-F, --force", "overwrite an existing filesystem or data")
    .action((image: string, options: MkfsOptions) => mkfsCommand(image, options));

  oneLineErrors(program.command("mount"))
    .description("mount an image; runs in the background unless --foreground; exit 32 when the mount fails, as mount(8)")
    .argument("<image>", "image file or block device")
    .argument("<mountpoint>", "an existing directory (files in it are hidden while mounted)")
    .option("-f, --foreground", "serve in this process until Ctrl-C, SIGTERM or umount")
    .option("-o, --options <list>", "comma-separated: ro, rw, noatime, relatime, strictatime, nodiratime, nosuid, nodev, noexec (and their opposites), subvol=NAME, compress=lz4|none, commit=SECONDS (periodic commit interval, default 5), transport=kernel|fuse-native (kernel, the default as root, speaks the FUSE protocol itself; fuse-native goes through libfuse 2.9); fstab's defaults, nofail, _netdev, x-* and the like are ignored", collect)
    .option("--subvol <name>", "mount this subvolume instead of the default (a snapshot is mounted read-only)")
    .exitOverride(usageExit(mountExit.usage))
    .action((image: string, mountpoint: string, options: { foreground?: boolean; options?: string[]; subvol?: string }) => {
      failureExitCode = mountExit.failed;
      return mountCommand(image, mountpoint, options);
    });

  oneLineErrors(program.command("umount"))
    .alias("unmount")
    .description("commit and unmount; returns once the image is closed")
    .argument("<mountpoint>", "where the volume is mounted")
    .action((mountpoint: string) => umountCommand(mountpoint));

  oneLineErrors(program.command("info"))
    .description("show label, uuid, size, compression, used (on disk and logical) and free space, generation, trees and inodes (live figures for a mounted volume)")
    .argument("<target>", "an image file or block device, or the mount point of a running grovefs mount")
    .option("--json", "print JSON")
    .action((target: string, options: { json?: boolean }) => infoCommand(target, options));

  oneLineErrors(program.command("scrub"))
    .description(
      "read every node copy and data block and verify its checksum, rewriting damaged node copies from their twin; " +
        "on a mount it runs in the daemon, in the background (scrub status, scrub cancel); exit 0 clean, 1 corrected, 4 uncorrected, 8 error",
    )
    .usage("[options] TARGET | status TARGET | cancel TARGET")
    .argument("<target>", "an image file or block device, or the mount point of a running grovefs mount (or: status, cancel)")
    .argument("[target2]", "after status or cancel: the TARGET")
    .option("-r, --readonly", "check only: report damaged copies and rewrite nothing (an image opens read-only; a read-only mount allows no other scrub)")
    .option("--rate <mib>", `on a mount: read at most this many MiB/s (default ${scrubRateDefault}; 0: unbounded)`)
    .option("--background", "on a mount: start it and return; grovefs scrub status TARGET shows its progress")
    .option("--json", "print the summary as JSON")
    .option("--progress", "show a progress bar on stderr (the default when stderr is a terminal, without --json)")
    .exitOverride(usageExit(fsckExit.operational))
    .action(async (first: string, second: string | undefined, options: ScrubCommandOptions) => {
      const action = second !== undefined && (first === "status" || first === "cancel") ? first : "start";
      if (second !== undefined && action === "start") {
        process.stderr.write(`grovefs: scrub takes one TARGET (or status TARGET, cancel TARGET), not '${first} ${second}' — see grovefs scrub --help\n`);
        commandExitCode = fsckExit.operational;
        return;
      }
      commandExitCode = await scrubCommand(action, second ?? first, options);
    });

  oneLineErrors(program.command("sync"))
    .description("commit a mounted volume: returns once everything written to it before is durable (sync(1) does not reach grovefs)")
    .argument("<target>", "a mount point or any path in a grovefs mount, or a mounted image")
    .action((target: string) => syncCommand(target));

  oneLineErrors(program.command("resize"))
    .description("grow or shrink a volume: an image file (extended or cut to match), a block device that grew, or a mounted volume online; a shrink needs every block past the new end free")
    .argument("<target>", "an image file or block device, or the mount point of a running grovefs mount")
    .argument("<size>", "SIZE (bytes, or K, M, G, T), +SIZE to grow by it, -SIZE to shrink by it, or max (the device's size); rounded down to 4 KiB")
    // -SIZE is not an option: commander passes an unknown dash argument through as SIZE (and SIZE checks it).
    .allowUnknownOption()
    .action((target: string, size: string) => resizeCommand(target, size));

  oneLineErrors(program.command("fsck"))
    .description("check an image, and with -y repair what can be repaired safely; exit 0 clean, 1 repaired, 4 problems left, 8 error")
    .argument("<image>", "image file or block device (not mounted)")
    .option("-n, --readonly", "only report, change nothing (the default)")
    .option("-y, --repair", "repair as a new committed generation, then check again")
    .option("--json", "print one JSON object")
    .option("--progress", "show a progress bar on stderr (the default when stderr is a terminal, without --json)")
    // A usage error is fsck's operational error, 8, as e2fsck's.
    .exitOverride(usageExit(fsckExit.operational))
    .action((image: string, options: FsckOptions) => {
      commandExitCode = fsckCommand(image, options);
    });

  oneLineErrors(program.command("restore"))
    .description("copy every readable file out of an image, damaged or not, into DIR; exit 0 all restored, 4 something unreadable")
    .argument("<image>", "image file or block device (not mounted read-write)")
    .argument("<dir>", "where to put the files (created if missing)")
    .option("--subvol <name>", "restore this subvolume or snapshot (default: the default subvolume)")
    .option("--path <path>", "restore only this file or directory of the subvolume")
    .option("--dry-run", "walk and report, write nothing")
    .option("--overwrite", "replace entries that already exist in DIR (default: leave them)")
    .option("-v, --verbose", "print each path restored")
    .option("--json", "print a JSON summary")
    .action((image: string, dir: string, options: RestoreOptions) => {
      commandExitCode = restoreCommand(image, dir, options);
    });

  addSubvolumeCommands(program);
  addSendCommands(program);
  addHelperCommands(program);
  return program;
}

function addHelperCommands(program: Command): void {
  const prefixHelp = `where the grovefs command (PREFIX/bin) and mkfs.grovefs and fsck.grovefs (PREFIX/sbin) go; mount.fuse.grovefs always goes in /sbin`;
  oneLineErrors(program.command("install-helpers"))
    .description("as root: install the grovefs command, mkfs.grovefs, fsck.grovefs and /sbin/mount.fuse.grovefs, for mount -t fuse.grovefs, fstab, mkfs -t and fsck -t")
    .option("--prefix <dir>", prefixHelp, defaultPrefix)
    .action((options: HelperOptions) => installHelpersCommand(options));
  oneLineErrors(program.command("uninstall-helpers"))
    .description("as root: remove what install-helpers wrote (only files it marked as its own)")
    .option("--prefix <dir>", "the prefix given to install-helpers", defaultPrefix)
    .action((options: HelperOptions) => uninstallHelpersCommand(options));
}

const targetHelp = "an unmounted image, or the mount point of a running grovefs mount";

function addSubvolumeCommands(program: Command): void {
  const snapshot = oneLineErrors(program.command("snapshot")).description("create, list and delete read-only snapshots");
  oneLineErrors(snapshot.command("create"))
    .description("take a read-only snapshot of the mounted subvolume (or of the default one, or of --from)")
    .argument("<target>", targetHelp)
    .argument("<name>", "the snapshot's name")
    .option("--from <subvol>", "the subvolume or snapshot to take it of")
    .action((target: string, name: string, options: { from?: string }) => snapshotCreateCommand(target, name, options));
  oneLineErrors(snapshot.command("list"))
    .description("list the snapshots: name, id, source, creation time")
    .argument("<target>", targetHelp)
    .option("--json", "print JSON")
    .action((target: string, options: { json?: boolean }) => snapshotListCommand(target, options));
  oneLineErrors(snapshot.command("delete"))
    .description("delete a snapshot; its space is freed (in the background on a mount)")
    .argument("<target>", targetHelp)
    .argument("<name>", "the snapshot to delete")
    .action((target: string, name: string) => snapshotDeleteCommand(target, name));

  oneLineErrors(program.command("clone"))
    .description("make a writable clone of a subvolume or snapshot (mount it with mount --subvol)")
    .argument("<target>", targetHelp)
    .argument("<source>", "the subvolume or snapshot to clone")
    .argument("<name>", "the clone's name")
    .action((target: string, source: string, name: string) => cloneCommand(target, source, name));

  const subvolume = oneLineErrors(program.command("subvolume")).description("list and delete subvolumes (snapshots and clones)");
  oneLineErrors(subvolume.command("list"))
    .description("list every subvolume: name, id, ro/rw, parent, creation time")
    .argument("<target>", targetHelp)
    .option("--json", "print JSON")
    .action((target: string, options: { json?: boolean }) => subvolumeListCommand(target, options));
  oneLineErrors(subvolume.command("delete"))
    .description("delete a snapshot or a writable clone; its space is freed (in the background on a mount)")
    .argument("<target>", targetHelp)
    .argument("<name>", "the subvolume to delete")
    .action((target: string, name: string) => subvolumeDeleteCommand(target, name));
}

function addSendCommands(program: Command): void {
  oneLineErrors(program.command("send"))
    .description("write a read-only snapshot as a stream (full, or incremental from --parent) to stdout or -f FILE")
    .argument("<target>", "an unmounted image")
    .argument("<snapshot>", "the snapshot to send")
    .option("--parent <snapshot>", "send only what changed since this snapshot (the receiver must hold it)")
    .option("-f, --file <file>", "write the stream to FILE instead of stdout")
    .option("--resume <token>", "send only what an interrupted receive lacks (grovefs receive TARGET --status prints the token)")
    .option("--json", "print a JSON summary")
    .action((target: string, snapshot: string, options: SendCommandOptions) => sendCommand(target, snapshot, options));
  oneLineErrors(program.command("receive"))
    .description("read a stream from stdin or -f FILE and make it a read-only snapshot; --status and --abort handle an interrupted one")
    .argument("<target>", "an unmounted image")
    .option("-f, --file <file>", "read the stream from FILE instead of stdin")
    .option("--name <name>", "the snapshot's name here (default: the sent snapshot's)")
    .option("--status", "list receives that were cut off")
    .option("--abort", "delete what receives that were cut off left, freeing its space")
    .option("--json", "print a JSON summary")
    .action((target: string, options: ReceiveCommandOptions) => receiveCommand(target, options));
  oneLineErrors(program.command("diff"))
    .description("list what changed between two snapshots (by inode: names removed and added, inodes changed)")
    .argument("<target>", "an unmounted image")
    .argument("<before>", "the older snapshot")
    .argument("<after>", "the newer snapshot")
    .option("--json", "print JSON")
    .action((target: string, before: string, after: string, options: { json?: boolean }) => diffCommand(target, before, after, options));
}

export async function main(argv: readonly string[]): Promise<number> {
  try {
    commandExitCode = 0;
    removeStaleRecords();
    failureExitCode = 1;
    await buildProgram().parseAsync([...argv]);
    return commandExitCode;
  } catch (error) {
    if (error instanceof CommanderError) {
      // Commander has printed help, the version, or its one-line error.
      if (error.exitCode === 0) return 0;
      return error instanceof OwnUsageError ? error.exitCode : usageExitCode;
    }
    const line = formatError(error);
    process.stderr.write(`${line}\n`);
    const stack = debugDetail(error);
    if (stack !== undefined) process.stderr.write(`${stack}\n`);
    notifyParent(`error ${line}`);
    return failureExitCode;
  }
}

// A reader that stops early (`grovefs subvolume list IMG | head -1`) closes the pipe: stop quietly, as
// commands killed by SIGPIPE do, instead of dying on an unhandled EPIPE with a stack trace.
for (const stream of [process.stdout, process.stderr]) {
  stream.on("error", (error: NodeJS.ErrnoException) => {
    if (error.code === "EPIPE") process.exit(exitOnBrokenPipe);
    throw error;
  });
}
const exitOnBrokenPipe = 141;
const exitCode = await main(process.argv);
// Output to a pipe is written asynchronously: let it drain before exiting, or the tail is lost.
await Promise.all([process.stdout, process.stderr].map((stream) => new Promise<void>((resolve) => stream.write("", () => resolve()))));
process.exit(exitCode);
