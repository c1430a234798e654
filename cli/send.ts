/**
 * grovefs send TARGET SNAPSHOT [--parent SNAPSHOT] [-f FILE] [--json]
 * grovefs receive TARGET [-f FILE] [--name NAME] [--json]
 * grovefs receive TARGET --status | --abort
 * grovefs diff TARGET SNAP_A SNAP_B [--json]
 *
 * The stream goes to stdout (never to a terminal) or FILE, and comes from
 * stdin or FILE (fs/send/ does the work). send runs on an unmounted image,
 * or on a mountpoint by asking its daemon (cli/send_daemon.ts), which
 * streams the snapshot over its control socket while it keeps serving the
 * mount. receive on a mountpoint sends the stream to its daemon, which
 * applies it between FUSE requests; an image a daemon holds is refused (a
 * second process must never open it read-write): receive on its mountpoint. A progress line (bytes, rate) is drawn on stderr only when
 * stderr is a terminal and --json is not given. The summary goes to
 * stdout, or to stderr when stdout carries the stream.
 *
 * I/O is synchronous: a volume's calls are synchronous, and a pipe that is
 * full (EAGAIN on a non-blocking descriptor) is waited for, a millisecond at
 * a time, rather than buffered without bound.
 */
import * as fs from "node:fs";
import { GroveFs, send } from "../fs/index.js";
import { FileDevice, GroveError } from "../kvstore/index.js";
import { CliError } from "./errors.js";
import { controlSocketPath, mountpointOfImage } from "./mount.js";
import { requestStream, requestUpload, sendRequest } from "./control.js";
import { resolveTarget, type Target } from "./target.js";

export interface SendCommandOptions {
  parent?: string;
  resume?: string;
  file?: string;
  json?: boolean;
}

export interface ReceiveCommandOptions {
  file?: string;
  name?: string;
  json?: boolean;
  status?: boolean;
  abort?: boolean;
}

const sleeper = new Int32Array(new SharedArrayBuffer(4));

function pause(): void {
  Atomics.wait(sleeper, 0, 0, 1);
}

function writeAll(fd: number, chunk: Buffer): void {
  let at = 0;
  while (at < chunk.length) {
    try {
      at += fs.writeSync(fd, chunk, at, chunk.length - at);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === "EAGAIN") pause();
      else if (code === "EPIPE") throw new CliError("the stream's reader went away (broken pipe)", "check the receiving command's own error");
      else throw error;
    }
  }
}

function readerOf(fd: number): send.ByteSource {
  return (length) => {
    const buffer = Buffer.allocUnsafe(Math.min(length, 4 * 1024 * 1024));
    for (;;) {
      try {
        const n = fs.readSync(fd, buffer, 0, buffer.length, null);
        return buffer.subarray(0, n);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === "EAGAIN") pause();
        else throw error;
      }
    }
  };
}

/** Opens an unmounted image under its lock; a mounted one is refused with what to do. */
function openImage(target: Target, readOnly: boolean): { device: FileDevice; volume: GroveFs } {
  if (target.kind === "mount") {
    throw new CliError(
      `${target.shown} is a mount point: diff works on unmounted images only`,
      "unmount it (grovefs umount) and give the image (send and receive work on a mount point)",
    );
  }
  let device: FileDevice;
  try {
    device = FileDevice.open(target.image, { readOnly, lock: true });
  } catch (error) {
    if (!(error instanceof GroveError) || error.detail !== "EBUSY_image_locked") throw error;
    const mountpoint = mountpointOfImage(target.image);
    throw new CliError(
      mountpoint === null ? `${target.shown} is in use by another grovefs process` : `${target.shown} is mounted at ${mountpoint}`,
      mountpoint === null
        ? "wait for it to end, or stop it"
        : `use the mount point instead: grovefs ${readOnly ? "send" : "receive"} ${mountpoint} ...`,
    );
  }
  try {
    return { device, volume: GroveFs.open(device, { readOnly }) };
  } catch (error) {
    device.close();
    throw error;
  }
}

function closeImage(image: { device: FileDevice; volume: GroveFs }): void {
  try {
    image.volume.close();
  } finally {
    image.device.close();
  }
}

/** A progress line on a terminal: bytes so far and the rate, redrawn at most ten times a second. */
function progressLine(enabled: boolean, verb: string): { update: (bytes: number) => void; done: () => void } {
  if (!enabled) return { update: () => {}, done: () => {} };
  const started = performance.now();
  let last = 0;
  let drawn = false;
  const draw = (bytes: number): void => {
    const seconds = (performance.now() - started) / 1000;
    const rate = seconds > 0 ? bytes / seconds / 1e6 : 0;
    process.stderr.write(`\r${verb} ${(bytes / 1e6).toFixed(1)} MB, ${rate.toFixed(1)} MB/s   `);
    drawn = true;
  };
  return {
    update: (bytes) => {
      const now = performance.now();
      if (now - last < 100) return;
      last = now;
      draw(bytes);
    },
    done: () => {
      if (drawn) process.stderr.write("\n");
    },
  };
}

function explain(error: unknown, target: Target): unknown {
  if (!(error instanceof GroveError)) return error;
  if (error.detail === "EINVAL_stream_truncated") {
    return new CliError(
      `the stream was cut short: ${error.message}`,
      `what arrived is kept hidden; grovefs receive ${target.shown} --status prints the token for grovefs send --resume, --abort frees it`,
    );
  }
  if (error.detail === "EINVAL_stream_resume" || error.detail === "EINVAL_stream_token") {
    return new CliError(error.message, `grovefs receive TARGET --status prints the token to resume with`);
  }
  if (error.detail.startsWith("EINVAL_stream_")) {
    return new CliError(`the stream was refused, nothing was received: ${error.message}`, "send it again; nothing on the target changed");
  }
  if (error.detail === "ENOENT_receive_parent") return new CliError(error.message, `grovefs snapshot list ${target.shown} lists what is there`);
  if (error.detail === "EEXIST_subvolume") return new CliError(error.message, "give another name with --name, or delete that snapshot first");
  if (error.detail === "EEXIST_receive_partial") {
    return new CliError(error.message, `abandon it with: grovefs receive ${target.shown} --abort`);
  }
  if (error.code === "ENOENT" || error.detail === "EINVAL_not_snapshot") {
    return new CliError(error.message, `send a read-only snapshot; grovefs snapshot list ${target.shown} lists them`);
  }
  return error;
}

export async function sendCommand(targetArg: string, snapshot: string, options: SendCommandOptions): Promise<void> {
  const target = resolveTarget(targetArg);
  if (options.file === undefined && process.stdout.isTTY === true) {
    throw new CliError("the stream would go to a terminal", "redirect it (grovefs send ... > FILE, or | grovefs receive ...) or give -f FILE");
  }
  if (target.kind === "mount") return printSent(await sendFromMount(target, snapshot, options), options);
  const image = openImage(target, true);
  let fd = 1;
  let summary: send.SendSummary;
  const progress = progressLine(options.json !== true && process.stderr.isTTY === true, "sent");
  let opened = false;
  try {
    // Refused before FILE is touched: a missing snapshot or parent must not truncate what FILE held.
    image.volume.sendSource(snapshot);
    if (options.parent !== undefined) image.volume.sendSource(options.parent);
    if (options.file !== undefined) {
      fd = fs.openSync(options.file, "w");
      opened = true;
    }
    const resume = options.resume === undefined ? undefined : send.decodeResumeToken(options.resume);
    summary = send.sendSnapshot(image.volume, snapshot, (chunk) => writeAll(fd, chunk), { parent: options.parent, progress: progress.update, resume });
    if (options.file !== undefined) fs.fsyncSync(fd);
  } catch (error) {
    // A stream cut short is of no use to anyone: leave no FILE that looks like one.
    if (opened) fs.rmSync(options.file!, { force: true });
    throw explain(error, target);
  } finally {
    progress.done();
    if (fd !== 1) fs.closeSync(fd);
    closeImage(image);
  }
  printSent(summary, options);
}

/** send on a mountpoint: the daemon streams the snapshot over its control socket (cli/send_daemon.ts). */
async function sendFromMount(target: Target & { kind: "mount" }, snapshot: string, options: SendCommandOptions): Promise<send.SendSummary> {
  if (options.resume !== undefined) send.decodeResumeToken(options.resume);
  const progress = progressLine(options.json !== true && process.stderr.isTTY === true, "sent");
  let fd = 1;
  let opened = false;
  let bytes = 0;
  const daemon = { shown: target.shown, pid: target.pid, mountpoint: target.mountpoint };
  const request = { op: "send" as const, snapshot, parent: options.parent, resume: options.resume };
  try {
    const summary = await requestStream(controlSocketPath(target.mountpoint), request, daemon, (chunk) => {
      // FILE is opened with the first chunk: a refused send leaves what it held untouched.
      if (options.file !== undefined && !opened) {
        fd = fs.openSync(options.file, "w");
        opened = true;
      }
      writeAll(fd, chunk);
      bytes += chunk.length;
      progress.update(bytes);
    });
    if (opened) fs.fsyncSync(fd);
    return summary as send.SendSummary;
  } catch (error) {
    if (opened) fs.rmSync(options.file!, { force: true });
    throw explain(error, target);
  } finally {
    progress.done();
    if (opened) fs.closeSync(fd);
  }
}

function printSent(summary: send.SendSummary, options: SendCommandOptions): void {
  const out = options.file === undefined ? process.stderr : process.stdout;
  if (options.json === true) out.write(`${JSON.stringify(summary)}\n`);
  else if (options.file !== undefined) {
    const kind = summary.parent === null ? "full" : `incremental from '${summary.parent}'`;
    out.write(`sent '${summary.snapshot}' (${kind}): ${summary.bytes} bytes, ${summary.records} records, ${summary.dataBytes} bytes of data, ${summary.storedBytes} compressed as stored (${summary.storedDiskBytes} bytes), ${summary.sharedBytes} shared\n`);
  }
}

export async function receiveCommand(targetArg: string, options: ReceiveCommandOptions): Promise<void> {
  const target = resolveTarget(targetArg);
  if (options.status === true || options.abort === true) return receiveState(target, options);
  if (target.kind === "mount") return printReceived(await receiveIntoMount(target, options), options);
  const image = openImage(target, false);
  let fd = 0;
  let summary: send.ReceiveSummary;
  const progress = progressLine(options.json !== true && process.stderr.isTTY === true, "received");
  try {
    if (options.file !== undefined) fd = fs.openSync(options.file, "r");
    else if (process.stdin.isTTY === true) throw new CliError("the stream would come from a terminal", "pipe it in (grovefs send ... | grovefs receive ...) or give -f FILE");
    summary = send.receiveStream(image.volume, readerOf(fd), { name: options.name, progress: progress.update });
  } catch (error) {
    throw explain(error, target);
  } finally {
    progress.done();
    if (fd !== 0) fs.closeSync(fd);
    closeImage(image);
  }
  printReceived(summary, options);
}

function printReceived(summary: send.ReceiveSummary, options: ReceiveCommandOptions): void {
  if (options.json === true) process.stdout.write(`${JSON.stringify(summary)}\n`);
  else {
    const kind = summary.parent === null ? "full" : `incremental on '${summary.parent}'`;
    process.stdout.write(`received '${summary.snapshot}' (${kind}): ${summary.bytes} bytes, ${summary.records} records\n`);
  }
}

/** receive on a mountpoint: the stream goes to the daemon over its control socket, which applies it between FUSE requests (cli/send_daemon.ts). */
async function receiveIntoMount(target: Target & { kind: "mount" }, options: ReceiveCommandOptions): Promise<send.ReceiveSummary> {
  if (options.file === undefined && process.stdin.isTTY === true) {
    throw new CliError("the stream would come from a terminal", "pipe it in (grovefs send ... | grovefs receive ...) or give -f FILE");
  }
  const input = options.file === undefined ? process.stdin : fs.createReadStream(options.file, { highWaterMark: 1024 * 1024 });
  const progress = progressLine(options.json !== true && process.stderr.isTTY === true, "received");
  const daemon = { shown: target.shown, pid: target.pid, mountpoint: target.mountpoint };
  try {
    const summary = await requestUpload(controlSocketPath(target.mountpoint), { op: "receive", name: options.name }, daemon, input as AsyncIterable<Buffer>, progress.update);
    return summary as send.ReceiveSummary;
  } catch (error) {
    throw explain(error, target);
  } finally {
    progress.done();
    if (input !== process.stdin) (input as fs.ReadStream).destroy();
    else process.stdin.destroy();
  }
}

/** --status lists receives that were cut off (their hidden subvolumes); --abort deletes them and frees their space. */
async function receiveState(target: Target, options: ReceiveCommandOptions): Promise<void> {
  if (target.kind === "mount") {
    const daemon = { shown: target.shown, pid: target.pid, mountpoint: target.mountpoint };
    const state = (await sendRequest(controlSocketPath(target.mountpoint), { op: "receiveState", abort: options.abort === true }, daemon)) as {
      interrupted: { name: string; token: string | null }[];
    };
    return printReceiveState(
      state.interrupted.map((i) => i.name),
      state.interrupted.map((i) => i.token),
      options,
    );
  }
  const image = openImage(target, options.abort !== true);
  const partial: string[] = [];
  const tokens: (string | null)[] = [];
  try {
    for (const info of image.volume.partialReceives()) {
      partial.push(info.name);
      tokens.push(send.resumeTokenOf(image.volume, info.name) ?? null);
    }
    if (options.abort === true) {
      for (const name of partial) image.volume.abortReceive(name);
      image.volume.finishDeletions();
    }
  } finally {
    closeImage(image);
  }
  printReceiveState(
    partial.map((name) => name.slice(".receiving.".length)),
    tokens,
    options,
  );
}

function printReceiveState(names: string[], tokens: (string | null)[], options: ReceiveCommandOptions): void {
  if (options.json === true) {
    const interrupted = names.map((name, i) => ({ name, token: tokens[i] }));
    process.stdout.write(`${JSON.stringify({ interrupted, aborted: options.abort === true ? names : [] })}\n`);
    return;
  }
  if (names.length === 0) process.stdout.write("no interrupted receive\n");
  names.forEach((name, i) => {
    if (options.abort === true) process.stdout.write(`aborted the receive of '${name}'; its space is free\n`);
    else {
      const how = tokens[i] === null ? "send it again" : `resume with grovefs send ... --resume ${tokens[i]}`;
      process.stdout.write(`interrupted receive of '${name}': ${how} (or --abort frees it)\n`);
    }
  });
}

export function diffCommand(targetArg: string, before: string, after: string, options: { json?: boolean }): void {
  const target = resolveTarget(targetArg);
  const image = openImage(target, true);
  let changes: send.Changes;
  try {
    changes = send.findChanges(image.volume.sendSource(before), image.volume.sendSource(after));
  } catch (error) {
    throw explain(error, target);
  } finally {
    closeImage(image);
  }
  const name = (c: send.NameChange): string => `${c.parent}/${c.name.toString("utf8")}`;
  if (options.json === true) {
    process.stdout.write(
      `${JSON.stringify({
        created: changes.created,
        deleted: changes.deleted,
        changed: changes.changed.filter((ino) => !changes.created.includes(ino)),
        removed: changes.removed.map((c) => ({ parent: c.parent, name: c.name.toString("utf8"), ino: c.child })),
        added: changes.added.map((c) => ({ parent: c.parent, name: c.name.toString("utf8"), ino: c.child })),
      })}\n`,
    );
    return;
  }
  const created = new Set(changes.created);
  for (const c of changes.removed) process.stdout.write(`- ${name(c)} (inode ${c.child})\n`);
  for (const c of changes.added) process.stdout.write(`+ ${name(c)} (inode ${c.child})\n`);
  for (const ino of changes.changed) if (!created.has(ino)) process.stdout.write(`M inode ${ino}\n`);
}
