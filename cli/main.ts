/**
 * The grovefs command line: parses argv with commander and runs one command.
 *
 * Every failure ends as one line on stderr, `grovefs: <what went wrong> — <what
 * to do>`, and a non-zero exit status; never a stack trace (GROVEFS_DEBUG=1
 * adds one for unexpected errors). Usage errors exit 2, everything else 1.
 */
import { Command, CommanderError } from "commander";
import { createRequire } from "node:module";
import { debugDetail, formatError } from "./errors.js";
import { infoCommand } from "./info.js";
import { mkfsCommand } from "./mkfs.js";
import { mountCommand, notifyParent } from "./mount.js";
import { umountCommand } from "./umount.js";

const usageExitCode = 2;

function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

/** Commander's own errors (unknown option, missing argument) in our one-line form. */
function oneLineErrors(command: Command): Command {
  const name = command.name() === "grovefs" ? "grovefs" : `grovefs ${command.name()}`;
  return command.exitOverride().configureOutput({
    outputError: (message, write) => write(`grovefs: ${message.replace(/^error: /, "").trim()} — see ${name} --help\n`),
  });
}

function version(): string {
  try {
    return (createRequire(import.meta.url)("../package.json") as { version: string }).version;
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
    .option("-F, --force", "overwrite an existing filesystem or data")
    .action((image: string, options: { size?: string; label?: string; force?: boolean }) => mkfsCommand(image, options));

  oneLineErrors(program.command("mount"))
    .description("mount an image; runs in the background unless --foreground")
    .argument("<image>", "image file or block device")
    .argument("<mountpoint>", "an existing, empty directory")
    .option("-f, --foreground", "serve in this process until Ctrl-C, SIGTERM or umount")
    .option("-o, --options <list>", "comma-separated: ro, rw, noatime, nodiratime, nosuid, nodev, noexec", collect)
    .action((image: string, mountpoint: string, options: { foreground?: boolean; options?: string[] }) =>
      mountCommand(image, mountpoint, options),
    );

  oneLineErrors(program.command("umount"))
    .alias("unmount")
    .description("commit and unmount; returns once the image is closed")
    .argument("<mountpoint>", "where the volume is mounted")
    .action((mountpoint: string) => umountCommand(mountpoint));

  oneLineErrors(program.command("info"))
    .description("show label, uuid, size, used and free space, generation, trees and inodes")
    .argument("<image>", "image file or block device")
    .option("--json", "print JSON")
    .action((image: string, options: { json?: boolean }) => infoCommand(image, options));

  return program;
}

export async function main(argv: readonly string[]): Promise<number> {
  try {
    await buildProgram().parseAsync([...argv]);
    return 0;
  } catch (error) {
    if (error instanceof CommanderError) {
      // Commander has printed help, the version, or its one-line error.
      return error.exitCode === 0 ? 0 : usageExitCode;
    }
    const line = formatError(error);
    process.stderr.write(`${line}\n`);
    const stack = debugDetail(error);
    if (stack !== undefined) process.stderr.write(`${stack}\n`);
    notifyParent(`error ${line}`);
    return 1;
  }
}

process.exit(await main(process.argv));
