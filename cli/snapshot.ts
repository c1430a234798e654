/**
 * grovefs snapshot create|list|delete, grovefs clone, grovefs subvolume list|delete
 *
 * Each takes a TARGET: an unmounted image (file or block device), or the
 * mountpoint of a running grovefs mount. An image is opened here under its
 * lock (exclusive to change it, shared to list), the request runs, a deletion
 * is run to the end (finishDeletions) so its space is free when the command
 * returns, and the image is closed (committed). A mounted image is locked by
 * its daemon, so a request for it goes to the daemon's control socket
 * (cli/control.ts), which runs it on the served volume; there a deletion's
 * space comes back in the background. Both run the same `runRequest`, so they
 * validate and answer alike, and every failure is one line (cli/errors.ts).
 *
 * Which is which: cli/target.ts.
 */
import * as path from "node:path";
import { GroveFs } from "../fs/index.js";
import { FileDevice, GroveError } from "../kvstore/index.js";
import { printable, runRequest, type SubvolumeRequest, type SubvolumeRecord } from "./control.js";
import { CliError } from "./errors.js";
import { mountpointOfImage, readPidRecord } from "./mount.js";
import { askDaemon, resolveTarget, type Target } from "./target.js";

export interface ListOptions {
  json?: boolean;
}

export interface SnapshotCreateOptions {
  from?: string;
}

function openImage(target: Target & { kind: "image" }, readOnly: boolean, retry: string): FileDevice {
  try {
    return FileDevice.open(target.image, { readOnly, lock: true });
  } catch (error) {
    if (!(error instanceof GroveError) || error.detail !== "EBUSY_image_locked") throw error;
    const mountpoint = mountpointOfImage(target.image);
    if (mountpoint !== null) {
      throw new CliError(`${target.shown} is mounted at ${mountpoint}`, `give the mount point instead: ${retry.replace("TARGET", mountpoint)}`);
    }
    throw new CliError(
      `${target.shown} is in use by another grovefs process (mounted or open)`,
      `if it is mounted, give the mount point instead: ${retry.replace("TARGET", "MOUNTPOINT")}`,
    );
  }
}

/** Runs `request` on the unmounted image; a deletion is finished before the image is closed. */
function onImage(target: Target & { kind: "image" }, request: SubvolumeRequest, retry: string): unknown {
  const readOnly = request.op === "list";
  const device = openImage(target, readOnly, retry);
  try {
    const volume = GroveFs.open(device, { readOnly });
    let result: unknown;
    try {
      result = runRequest(volume, request);
      if (request.op === "delete") volume.finishDeletions();
    } catch (error) {
      try {
        volume.close();
      } catch {
        // The request's own error is the one to report.
      }
      throw error;
    }
    volume.close();
    return result;
  } finally {
    device.close();
  }
}

/**
 * Runs `request` on TARGET. `retry` is the command line to suggest for the
 * mount point when an image turns out to be mounted ("TARGET" is replaced).
 */
async function perform(target: Target, request: SubvolumeRequest, retry: string): Promise<unknown> {
  try {
    if (target.kind === "image") return onImage(target, request, retry);
    return await askDaemon(target, request);
  } catch (error) {
    if (request.op === "delete" && request.name !== defaultName && target.kind === "mount" && error instanceof GroveError && error.code === "EBUSY") {
      throw busy(target, printable(request.name), await mountpointsOf(target, request.name));
    }
    throw explain(error, target, request);
  }
}

/** Where the daemon serving `target` mounts subvolume `name` (none if it cannot say). */
async function mountpointsOf(target: Target & { kind: "mount" }, name: string): Promise<string[]> {
  try {
    const found = (await askDaemon(target, { op: "list" }) as SubvolumeRecord[]).find((r) => r.name === name);
    return found?.mountpoints ?? [];
  } catch {
    return [];
  }
}

// ---- errors in the CLI's terms ---------------------------------------------------------

/** A GroveError from the request, said with the name and the target, and what to do. */
function explain(error: unknown, target: Target, request: SubvolumeRequest): unknown {
  if (!(error instanceof GroveError)) return error;
  if (error.detail === "EBADF_closed" && target.kind === "mount") {
    return new CliError(`${target.shown} is being unmounted`, "run the command on the image once grovefs umount has returned");
  }
  if (request.op === "list") return error;
  const name = printable(request.name);
  const listing = `grovefs subvolume list ${target.shown} lists them`;
  if (request.op === "create") {
    const source = request.from === undefined ? "" : ` from '${printable(request.from)}'`;
    if (error.code === "EEXIST") return new CliError(`a subvolume named '${name}' already exists in ${target.shown}`, `choose another name; ${listing}`);
    if (error.code === "ENOENT") return new CliError(`cannot create '${name}'${source}: ${error.message}`, listing);
    if (error.detail === "EINVAL_subvolume_name" || error.code === "ENAMETOOLONG") {
      return new CliError(`cannot create '${name}'${source}: ${error.message}`, "choose another name");
    }
  } else {
    if (request.name === defaultName && (error.code === "EPERM" || error.code === "EBUSY" || error.detail === "EINVAL_not_snapshot")) {
      return defaultRefused(name);
    }
    if (error.detail === "EINVAL_not_snapshot") {
      return new CliError(`'${name}' is a writable clone, not a snapshot`, `delete it with: grovefs subvolume delete ${target.shown} ${name}`);
    }
    if (error.code === "ENOENT") return new CliError(`cannot delete '${name}': ${error.message}`, listing);
    if (error.code === "EBUSY") return busy(target, name, []);
    if (error.detail === "EINVAL_subvolume_name") return new CliError(`cannot delete '${name}': ${error.message}`, listing);
  }
  if (error.code === "EROFS" && target.kind === "mount") {
    return new CliError(`${target.shown} is mounted read-only: ${error.message}`, "unmount it and run the command on the image, or mount it read-write");
  }
  return error;
}

const defaultName = "default";

/** The default subvolume is never deleted (as in btrfs): a plain mount always has it to serve. */
function defaultRefused(name: string): CliError {
  return new CliError(
    `cannot delete '${name}': it is the default subvolume, which grovefs mounts when no --subvol is given`,
    "delete snapshots and clones instead; to roll back, clone a snapshot and mount the clone with --subvol",
  );
}

/** A served subvolume cannot be deleted: on an image that is the default one (what a plain mount serves). */
function busy(target: Target, name: string, mountpoints: string[]): CliError {
  if (target.kind === "image") {
    return new CliError(`cannot delete '${name}': it is the default subvolume, which grovefs mounts when no --subvol is given`, "delete snapshots and clones instead");
  }
  const where = mountpoints.length === 0 ? target.shown : mountpoints.join(", ");
  const umount = mountpoints.length === 0 ? target.shown : mountpoints[0]!;
  return new CliError(
    `cannot delete '${name}': it is the subvolume mounted at ${where}`,
    `unmount it first (grovefs umount ${umount}), then delete it`,
  );
}

// ---- output ------------------------------------------------------------------------------


function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join("  ") + "\n";
  return line(header) + rows.map(line).join("");
}

function shownTime(record: SubvolumeRecord): string {
  return record.created === "" ? "-" : record.created.replace(/\.\d{3}Z$/, "Z");
}

function parentOf(record: SubvolumeRecord): string {
  if (record.parentId === 0) return "-";
  return record.parentName === null ? `(deleted, id ${record.parentId})` : printable(record.parentName);
}

function printList(records: SubvolumeRecord[], options: ListOptions, snapshotsOnly: boolean): void {
  if (options.json) {
    process.stdout.write(`${JSON.stringify(records, null, 2)}\n`);
    return;
  }
  if (snapshotsOnly) {
    if (records.length === 0) {
      process.stdout.write("no snapshots\n");
      return;
    }
    const rows = records.map((r) => [printable(r.name), String(r.id), parentOf(r), shownTime(r)]);
    process.stdout.write(table(["NAME", "ID", "SOURCE", "CREATED"], rows));
    return;
  }
  const mounted = (r: SubvolumeRecord) => (r.mountpoints.length === 0 ? "-" : r.mountpoints.map(printable).join(","));
  const rows = records.map((r) => [printable(r.name), String(r.id), r.readOnly ? "ro" : "rw", parentOf(r), shownTime(r), mounted(r)]);
  process.stdout.write(table(["NAME", "ID", "MODE", "PARENT", "CREATED", "MOUNTED"], rows));
}

function records(result: unknown): SubvolumeRecord[] {
  return (result as SubvolumeRecord[]).slice().sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

// ---- the commands ---------------------------------------------------------------------------

export async function snapshotCreateCommand(targetArg: string, name: string, options: SnapshotCreateOptions): Promise<void> {
  const target = resolveTarget(targetArg);
  const fromArg = options.from === undefined ? "" : ` --from ${printable(options.from)}`;
  const request: SubvolumeRequest = { op: "create", name, from: options.from, readOnly: true };
  const created = (await perform(target, request, `grovefs snapshot create TARGET ${printable(name)}${fromArg}`)) as SubvolumeRecord;
  const browse = target.kind === "mount" ? `; browse it in ${path.join(target.shown, ".snapshots", printable(name))}` : "";
  process.stdout.write(`snapshot '${printable(created.name)}' of '${parentOf(created)}' created (id ${created.id})${browse}\n`);
}

export async function cloneCommand(targetArg: string, source: string, name: string): Promise<void> {
  const target = resolveTarget(targetArg);
  const request: SubvolumeRequest = { op: "create", name, from: source, readOnly: false };
  const created = (await perform(target, request, `grovefs clone TARGET ${printable(source)} ${printable(name)}`)) as SubvolumeRecord;
  const image = target.kind === "image" ? target.shown : (readPidRecord(target.mountpoint)?.image ?? "IMAGE");
  process.stdout.write(
    `clone '${printable(created.name)}' of '${parentOf(created)}' created (id ${created.id}); ` +
      `mount it with: grovefs mount ${image} MOUNTPOINT --subvol ${printable(created.name)}\n`,
  );
}

async function deleteCommand(targetArg: string, name: string, snapshotOnly: boolean): Promise<void> {
  const target = resolveTarget(targetArg);
  const command = snapshotOnly ? "snapshot delete" : "subvolume delete";
  await perform(target, { op: "delete", name, snapshotOnly }, `grovefs ${command} TARGET ${printable(name)}`);
  const what = snapshotOnly ? "snapshot" : "subvolume";
  const space = target.kind === "image" ? "its space is free" : "its space is freed in the background";
  process.stdout.write(`${what} '${printable(name)}' deleted; ${space}\n`);
}

export function snapshotDeleteCommand(targetArg: string, name: string): Promise<void> {
  return deleteCommand(targetArg, name, true);
}

export function subvolumeDeleteCommand(targetArg: string, name: string): Promise<void> {
  return deleteCommand(targetArg, name, false);
}

export async function snapshotListCommand(targetArg: string, options: ListOptions): Promise<void> {
  const target = resolveTarget(targetArg);
  const all = records(await perform(target, { op: "list" }, "grovefs snapshot list TARGET"));
  printList(all.filter((r) => r.readOnly), options, true);
}

export async function subvolumeListCommand(targetArg: string, options: ListOptions): Promise<void> {
  const target = resolveTarget(targetArg);
  printList(records(await perform(target, { op: "list" }, "grovefs subvolume list TARGET")), options, false);
}
