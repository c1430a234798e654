/**
 * The mount daemon's control socket, and the operations it serves: creating,
 * deleting and listing snapshots and clones of the mounted volume.
 *
 * Protocol: a client connects to the unix socket beside the daemon's pid
 * record, writes one JSON request line, and reads one JSON reply line:
 * `{"ok":true,"result":...}` or `{"ok":false,"code":"EEXIST","detail":...,"message":...}`.
 * Requests are `{"op":"create","name","from"?,"readOnly"}`,
 * `{"op":"delete","name","snapshotOnly"}`, `{"op":"list"}`, and two about
 * the whole volume: `{"op":"sync"}` (has the kernel write back its dirty
 * pages, then commits; answered once the commit is durable) and
 * `{"op":"info"}` (the live figures `grovefs info` prints). And
 * `{"op":"attach","mountpoint","subvol"?,"options"}`: a second `grovefs
 * mount` of the image asks the daemon to serve another mountpoint (with
 * `-o` lists as given to it), answered once that mount is usable. A daemon
 * lists, with each subvolume, the mountpoints where it serves it.
 * `{"op":"resize","size":{"to"|"by":bytes}|{"max":true}}` resizes the
 * served volume between two FUSE requests (cli/resize.ts).
 * `{"op":"send","snapshot","parent"?,"resume"?}` streams a snapshot (grovefs
 * send on a mount, cli/send.ts). Its reply is not one line: a refusal is the
 * usual error line; otherwise the line `{"ok":true,"result":"stream"}`, then
 * the stream in frames (a u32 little-endian length n > 0, then n bytes of
 * the stream), a frame of length 0, and one final reply line: the send's
 * summary, or the error that stopped it. The daemon writes a few records at
 * a time and lets FUSE requests in between (the live subvolume keeps being
 * served), and waits while the client is not reading.
 * `{"op":"receive","name"?}` is the other way round (grovefs receive on a
 * mount): after the request line the client writes the stream in the same
 * frames, then a frame of length 0, and reads one reply line: the receive's
 * summary, or the error that stopped it (which may come before the client
 * has written everything: it then stops). The daemon applies a few records
 * at a time between FUSE requests, and stops reading the socket while it
 * holds more than a few MiB it has not applied (backpressure). A client that
 * goes away midway leaves what arrived hidden, to resume, as a cut pipe does.
 * `{"op":"receiveState","abort"}` is receive --status (and --abort) on a mount.
 *
 * Why no locking: the daemon runs each request to the end inside one socket
 * callback on the JS thread, and every FUSE handler is synchronous on the same
 * thread, so a request sees the volume between two FUSE operations.
 * createSubvolume commits first, and before it `beforeCreate` has the kernel
 * write back its dirty pages (the writeback cache holds what write(2)
 * returned for), so a snapshot holds everything a write returned for before
 * the request arrived. A deletion only unlinks the name
 * here; the bridge's maintenance tick frees the blocks incrementally.
 *
 * The same `runRequest` serves the CLI on an unmounted image, so both targets
 * validate and answer alike. The socket is mode 0600 (root, or the user who
 * mounted) and is removed when the daemon exits; one left by a killed daemon
 * refuses connections, which the client reports as such.
 */
import * as fs from "node:fs";
import * as net from "node:net";
import { parseResizeRequest, type ResizeRequest, type ResizeResult, type SubvolumeInfo, type SubvolumeOps } from "../fs/index.js";
import { errnos, GroveError, type ErrnoCode } from "../kvstore/index.js";
import { CliError } from "./errors.js";

/** A subvolume as the CLI prints it and the socket carries it (no bigint in JSON). */
export interface SubvolumeRecord {
  name: string;
  id: number;
  readOnly: boolean;
  parentId: number;
  parentName: string | null;
  generation: number;
  /** Nanoseconds since the epoch, as a decimal string. */
  createdNs: string;
  /** The same time as ISO 8601 UTC, for people and scripts. */
  created: string;
  /** Where the mount daemon serves it (empty when not mounted, and on an image). */
  mountpoints: string[];
}

export type ControlRequest =
  | { op: "create"; name: string; from?: string; readOnly: boolean }
  | { op: "delete"; name: string; snapshotOnly: boolean }
  | { op: "list" }
  | VolumeRequest;

/** Requests about subvolumes: a mount daemon and the CLI on an unmounted image answer them alike (runRequest). */
export type SubvolumeRequest = Exclude<ControlRequest, VolumeRequest>;

/** Requests about the whole served volume rather than its subvolumes: only a mount daemon answers them. */
export type VolumeRequest = { op: "sync" } | { op: "info" } | AttachRequest | ResizeOp | SendOp | ReceiveOp | ReceiveStateOp | ScrubOp;

/** Start a background scrub at `rate` MiB/s (`readonly`: report only), show the running or last one, or cancel it (cli/scrub.ts). */
export type ScrubOp = { op: "scrub"; action: "start" | "status" | "cancel"; rate?: number; readonly?: boolean };

/** Receive a stream (the client writes it in frames after the request) as snapshot `name` (default: the sent one's). */
export type ReceiveOp = { op: "receive"; name?: string };

/** The interrupted receives and their tokens; `abort` deletes them. */
export type ReceiveStateOp = { op: "receiveState"; abort: boolean };

/** A receive's stream as it arrives: the next frame's bytes, "end" after the last frame, "gone" if the client went away first. */
export type StreamSource = () => Promise<Buffer | "end" | "gone">;

/** Stream snapshot `snapshot` (incremental from `parent`; only what a resume token lacks). */
export type SendOp = { op: "send"; snapshot: string; parent?: string; resume?: string };

/** Where a send's stream goes: a returned promise means wait (the client is not reading) before writing more. */
export type StreamSink = (chunk: Buffer) => Promise<void> | undefined;

/** Serve `mountpoint` too, with subvolume `subvol` (the default one when absent) and mount options `options`. */
export type AttachRequest = { op: "attach"; mountpoint: string; subvol?: string; options: string[] };

/** Resize the served volume (grovefs resize on a mount). */
export type ResizeOp = { op: "resize"; size: ResizeRequest };

/** What a mount daemon offers for VolumeRequests. */
export interface VolumeControl {
  /** Has the kernel write back its dirty pages, then commits: resolves once everything is durable. */
  sync(): Promise<void>;
  /** The volume's live figures, as `grovefs info` prints them. */
  info(): unknown;
  /** Serves another mountpoint of the volume; resolves once it is usable. */
  attach?(request: AttachRequest): Promise<void>;
  /** Where the daemon serves each subvolume: name → mountpoints. */
  mountpoints?(): Map<string, string[]>;
  /** Resizes the served volume: resolves once the resize is durable. */
  resize?(size: ResizeRequest): Promise<ResizeResult>;
  /**
   * Sends a snapshot: `begin` is called once the send is accepted (after it
   * has checked the snapshots), before the first chunk. Resolves with the summary.
   */
  send?(request: SendOp, begin: () => void, sink: StreamSink): Promise<unknown>;
  /** Receives a stream read from `source`. Resolves with the summary. */
  receive?(request: ReceiveOp, source: StreamSource): Promise<unknown>;
  /** receive --status / --abort. */
  receiveState?(request: ReceiveStateOp): unknown;
  /** grovefs scrub on a mount: start, status, cancel. */
  scrub?(request: ScrubOp): unknown;
}

export type ControlReply =
  | { ok: true; result: unknown }
  | { ok: false; code: string; detail: string; message: string };

const requestBytesMax = 64 * 1024;
const replyBytesMax = 64 * 1024 * 1024;
const replyTimeoutMs = 120_000;

/** A name as printed: control characters (which names may hold) escaped, so one name stays on one line. */
export function printable(name: string): string {
  return name.replace(/[\u0000-\u001f\u007f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`);
}

export function subvolumeRecord(info: SubvolumeInfo, mountpoints: string[] = []): SubvolumeRecord {
  const ms = Number(info.createdNs / 1_000_000n);
  const created = Number.isFinite(ms) && Math.abs(ms) <= 8.64e15 ? new Date(ms).toISOString() : "";
  return {
    name: info.name,
    id: info.id,
    readOnly: info.readOnly,
    parentId: info.parentId,
    parentName: info.parentName,
    generation: info.generation,
    createdNs: info.createdNs.toString(),
    created,
    mountpoints,
  };
}

// ---- the operations ------------------------------------------------------------

function invalid(message: string): GroveError {
  return new GroveError("EINVAL", "EINVAL_control_request", message);
}

/** Checks the shape of a request from the socket (the client is trusted for nothing). */
export function parseRequest(value: unknown): ControlRequest {
  if (typeof value !== "object" || value === null) throw invalid("a request is a JSON object");
  const request = value as Record<string, unknown>;
  const name = request.name;
  switch (request.op) {
    case "list":
    case "sync":
    case "info":
      return { op: request.op };
    case "create": {
      if (typeof name !== "string") throw invalid("create needs a name");
      if (request.from !== undefined && typeof request.from !== "string") throw invalid("from must be a name");
      if (typeof request.readOnly !== "boolean") throw invalid("create needs readOnly");
      return { op: "create", name, from: request.from, readOnly: request.readOnly };
    }
    case "delete":
      if (typeof name !== "string") throw invalid("delete needs a name");
      return { op: "delete", name, snapshotOnly: request.snapshotOnly === true };
    case "attach": {
      const options = request.options;
      if (typeof request.mountpoint !== "string") throw invalid("attach needs a mountpoint");
      if (request.subvol !== undefined && typeof request.subvol !== "string") throw invalid("subvol must be a name");
      if (!Array.isArray(options) || !options.every((o) => typeof o === "string")) throw invalid("options must be a list of strings");
      return { op: "attach", mountpoint: request.mountpoint, subvol: request.subvol, options };
    }
    case "resize":
      return { op: "resize", size: parseResizeRequest(request.size) };
    case "send": {
      if (typeof request.snapshot !== "string") throw invalid("send needs a snapshot name");
      for (const field of ["parent", "resume"] as const) {
        if (request[field] !== undefined && typeof request[field] !== "string") throw invalid(`${field} must be a string`);
      }
      return { op: "send", snapshot: request.snapshot, parent: request.parent as string | undefined, resume: request.resume as string | undefined };
    }
    case "receive":
      if (name !== undefined && typeof name !== "string") throw invalid("name must be a string");
      return { op: "receive", name };
    case "receiveState":
      return { op: "receiveState", abort: request.abort === true };
    case "scrub": {
      const action = request.action;
      if (action !== "start" && action !== "status" && action !== "cancel") throw invalid("scrub: action is start, status or cancel");
      if (request.rate !== undefined && typeof request.rate !== "number") throw invalid("scrub: rate is a number");
      if (request.readonly !== undefined && typeof request.readonly !== "boolean") throw invalid("scrub: readonly is a boolean");
      return { op: "scrub", action, rate: request.rate as number | undefined, readonly: request.readonly === true };
    }
    default:
      throw invalid(`unknown request ${JSON.stringify(request.op)}`);
  }
}

/**
 * Runs one request on an open filesystem (the daemon's, or the CLI's own on
 * an image). `snapshot delete` refuses a writable subvolume, so a typo there
 * cannot destroy a clone; `subvolume delete` deletes either.
 */
export function runRequest(ops: SubvolumeOps, request: SubvolumeRequest, mountpoints = new Map<string, string[]>()): unknown {
  switch (request.op) {
    case "list":
      return ops.listSubvolumes().map((s) => subvolumeRecord(s, mountpoints.get(s.name) ?? []));
    case "create":
      return subvolumeRecord(ops.createSubvolume(request.name, { from: request.from, readOnly: request.readOnly }));
    case "delete": {
      if (request.snapshotOnly) {
        const found = ops.listSubvolumes().find((s) => s.name === request.name);
        if (found !== undefined && !found.readOnly) {
          throw new GroveError("EINVAL", "EINVAL_not_snapshot", `${request.name} is a writable subvolume, not a snapshot`);
        }
      }
      ops.deleteSubvolume(request.name);
      return null;
    }
  }
}

// ---- the daemon's side -----------------------------------------------------------

export interface ControlServer {
  readonly path: string;
  /** Stops listening and removes the socket. Idempotent. */
  close(): void;
}

function errorReply(error: unknown, report: (error: unknown) => void): ControlReply {
  if (error instanceof GroveError) return { ok: false, code: error.code, detail: error.detail, message: error.message };
  report(error);
  const what = error instanceof Error ? error.message : String(error);
  return { ok: false, code: "EIO", detail: "EIO_control_bug", message: `internal error in the mount daemon: ${what}` };
}

function parseLine(line: string): ControlRequest {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    throw invalid("a request is one line of JSON");
  }
  return parseRequest(value);
}

/**
 * One request line in, one reply line out. A subvolume request runs
 * synchronously on `ops`; a snapshot or clone first has the kernel write
 * back its dirty pages (`beforeCreate`), and a sync is mostly that wait.
 */
async function answer(line: string, served: Served): Promise<ControlReply> {
  try {
    const request = parseLine(line);
    if (request.op === "send" || request.op === "receive") throw invalid(`${request.op} streams: it is answered by serveConnection`);
    if (request.op === "receiveState") {
      if (served.volume?.receiveState === undefined) throw invalid("receive --status needs a mount daemon that serves it");
      return { ok: true, result: served.volume.receiveState(request) };
    }
    if (request.op === "scrub") {
      if (served.volume?.scrub === undefined) throw invalid("scrub needs a mount daemon that serves it");
      return { ok: true, result: await served.volume.scrub(request) };
    }
    if (request.op === "resize") {
      if (served.volume?.resize === undefined) throw invalid("resize needs a mount daemon that serves it");
      return { ok: true, result: await served.volume.resize(request.size) };
    }
    if (request.op === "sync" || request.op === "info" || request.op === "attach") {
      if (served.volume === undefined) throw invalid(`${request.op} needs a mount daemon`);
      if (request.op === "info") return { ok: true, result: served.volume.info() };
      if (request.op === "attach") {
        if (served.volume.attach === undefined) throw invalid("this mount daemon serves one mountpoint only");
        await served.volume.attach(request);
        return { ok: true, result: null };
      }
      await served.volume.sync();
      return { ok: true, result: null };
    }
    if (request.op === "create") await served.beforeCreate();
    return { ok: true, result: runRequest(served.ops, request, served.volume?.mountpoints?.()) };
  } catch (error) {
    return errorReply(error, served.report);
  }
}

interface Served {
  ops: SubvolumeOps;
  report: (error: unknown) => void;
  beforeCreate: () => Promise<void>;
  volume: VolumeControl | undefined;
}

function serveConnection(socket: net.Socket, served: Served): void {
  let held: Buffer = Buffer.alloc(0);
  socket.on("error", () => {});
  const onData = (chunk: Buffer): void => {
    held = held.length === 0 ? chunk : Buffer.concat([held, chunk]);
    const newline = held.indexOf(0x0a);
    if (newline < 0 && held.length <= requestBytesMax) return;
    const line = newline < 0 || newline > requestBytesMax ? null : held.subarray(0, newline).toString("utf8");
    const rest = newline < 0 ? Buffer.alloc(0) : held.subarray(newline + 1);
    held = Buffer.alloc(0);
    socket.off("data", onData);
    const streaming = line === null ? null : streamingRequestOf(line);
    if (streaming?.op === "receive") {
      void streamReceive(socket, streaming, rest, served).then((answered) => {
        dropRest(socket);
        socket.end(`${JSON.stringify(answered)}\n`);
      });
      return;
    }
    // The rest of what the client sends is read and dropped, so it never sees a reset.
    dropRest(socket);
    if (streaming?.op === "send") {
      void streamSend(socket, streaming, served).then((answered) => socket.end(`${JSON.stringify(answered)}\n`));
      return;
    }
    const reply =
      line === null ? Promise.resolve(errorReply(invalid(`a request is at most ${requestBytesMax} bytes`), served.report)) : answer(line, served);
    void reply.then((answered) => socket.end(`${JSON.stringify(answered)}\n`));
  };
  socket.on("data", onData);
}

function dropRest(socket: net.Socket): void {
  socket.removeAllListeners("data");
  socket.on("data", () => {});
  socket.resume();
}

function streamingRequestOf(line: string): SendOp | ReceiveOp | null {
  try {
    const request = parseLine(line);
    return request.op === "send" || request.op === "receive" ? request : null;
  } catch {
    return null;
  }
}

/** Unapplied stream bytes a receive holds before the daemon stops reading its socket. */
const receiveQueueBytesMax = 8 * 1024 * 1024;

/** A receive's stream from the client's frames (see the protocol above); resolves with the reply line. */
async function streamReceive(socket: net.Socket, request: ReceiveOp, first: Buffer, served: Served): Promise<ControlReply> {
  let held: Buffer = first;
  const frames: Buffer[] = [];
  let queued = 0;
  let ended = false;
  let gone = false;
  let wake: (() => void) | null = null;
  const woken = (): void => {
    const w = wake;
    wake = null;
    w?.();
  };
  const parse = (): void => {
    while (!ended && held.length >= 4) {
      const n = held.readUInt32LE(0);
      if (n === 0) {
        ended = true;
        held = held.subarray(4);
        break;
      }
      if (held.length < 4 + n) break;
      frames.push(held.subarray(4, 4 + n));
      queued += n;
      held = held.subarray(4 + n);
    }
    if (queued > receiveQueueBytesMax) socket.pause();
    woken();
  };
  socket.on("data", (chunk: Buffer) => {
    held = held.length === 0 ? chunk : Buffer.concat([held, chunk]);
    parse();
  });
  socket.on("close", () => {
    gone = true;
    woken();
  });
  parse();
  const source: StreamSource = async () => {
    for (;;) {
      const frame = frames.shift();
      if (frame !== undefined) {
        queued -= frame.length;
        if (queued <= receiveQueueBytesMax / 2 && !socket.destroyed) socket.resume();
        return frame;
      }
      if (ended) return "end";
      if (gone) return "gone";
      await new Promise<void>((resolve) => (wake = resolve));
    }
  };
  try {
    if (served.volume?.receive === undefined) throw invalid("receive needs a mount daemon that serves it");
    return { ok: true, result: await served.volume.receive(request, source) };
  } catch (error) {
    return errorReply(error, served.report);
  }
}

/**
 * Writes one frame of a streamed op: u32 LE length, then the bytes (length
 * 0 ends the stream). Returns a promise that resolves once the socket
 * drains (or closes) when it is backed up, undefined when it need not wait.
 */
function writeFrame(socket: net.Socket, chunk: Buffer): Promise<void> | undefined {
  const header = Buffer.alloc(4);
  header.writeUInt32LE(chunk.length, 0);
  socket.write(header);
  if (chunk.length === 0 || socket.write(chunk)) return undefined;
  return new Promise<void>((resolve) => {
    const go = (): void => {
      socket.off("drain", go);
      socket.off("close", go);
      resolve();
    };
    socket.on("drain", go);
    socket.on("close", go);
  });
}

/** A send's streamed reply (see the protocol above); resolves with the final reply line. */
async function streamSend(socket: net.Socket, request: SendOp, served: Served): Promise<ControlReply> {
  let begun = false;
  const sink: StreamSink = (chunk) => {
    if (socket.destroyed) throw new GroveError("EIO", "EIO_send_client_gone", "the client reading the stream went away");
    return chunk.length === 0 ? undefined : writeFrame(socket, chunk);
  };
  const begin = (): void => {
    begun = true;
    socket.write(`${JSON.stringify({ ok: true, result: "stream" })}\n`);
  };
  let reply: ControlReply;
  try {
    if (served.volume?.send === undefined) throw invalid("send needs a mount daemon that serves it");
    reply = { ok: true, result: await served.volume.send(request, begin, sink) };
  } catch (error) {
    reply = errorReply(error, served.report);
  }
  if (begun) void writeFrame(socket, Buffer.alloc(0));
  return reply;
}

/**
 * Listens on `socketPath` (mode 0600; a leftover socket there is replaced) and
 * serves requests on `ops` until `close`. The server does not keep the process
 * alive by itself. `report` gets errors that are bugs (not GroveErrors).
 */
export async function startControlServer(
  socketPath: string,
  ops: SubvolumeOps,
  report: (error: unknown) => void,
  beforeCreate: () => Promise<void> = () => Promise.resolve(),
  /** Keeps the mount's event loop running until the promise settles (MountHandle.hold): for each connection. */
  hold: (work: Promise<void>) => Promise<void> = (work) => work,
  /** sync and info; without it those requests are refused. */
  volume?: VolumeControl,
): Promise<ControlServer> {
  const served: Served = { ops, report, beforeCreate, volume };
  removeStaleSocket(socketPath);
  const server = net.createServer((socket) => {
    // Until the connection closes: its reads, its answer and the closing handshake all need the event loop.
    void hold(new Promise<void>((resolve) => socket.once("close", () => resolve())));
    serveConnection(socket, served);
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    // The socket file is created inside listen(): a umask makes it 0600 from the start.
    const umask = process.umask(0o177);
    try {
      server.listen(socketPath, () => {
        server.off("error", reject);
        resolve();
      });
    } finally {
      process.umask(umask);
    }
  });
  fs.chmodSync(socketPath, 0o600);
  server.on("error", report);
  server.unref();
  let closed = false;
  return {
    path: socketPath,
    close: () => {
      if (closed) return;
      closed = true;
      server.close();
      fs.rmSync(socketPath, { force: true });
    },
  };
}

/** A socket file left by a daemon that was killed; anything else at that path is not ours to remove. */
function removeStaleSocket(socketPath: string): void {
  let stat: fs.Stats;
  try {
    stat = fs.lstatSync(socketPath);
  } catch {
    return;
  }
  if (!stat.isSocket()) {
    throw new CliError(`${socketPath} exists and is not a socket`, "remove it; grovefs keeps its control sockets there");
  }
  fs.rmSync(socketPath, { force: true });
}

// ---- the client's side -------------------------------------------------------------

/** How to name the daemon in errors: "the grovefs process serving /mnt (pid 123)". */
export interface DaemonName {
  shown: string;
  pid: number;
  /** Where it is mounted: statfs(2) there wakes a daemon that waits for requests in place (fs/fuse/session.ts). */
  mountpoint?: string;
}

function connectError(error: NodeJS.ErrnoException, socketPath: string, daemon: DaemonName): CliError {
  const who = `the grovefs process serving ${daemon.shown} (pid ${daemon.pid})`;
  if (error.code === "ENOENT") {
    return new CliError(`${who} has no control socket ${socketPath}`, `it may be an older grovefs: unmount (grovefs umount ${daemon.shown}) and mount again`);
  }
  if (error.code === "ECONNREFUSED") {
    return new CliError(
      `nothing answers on the control socket of ${daemon.shown} (${socketPath}): a stale socket, ${who} is gone or hung`,
      `check it with ps -p ${daemon.pid}; grovefs umount ${daemon.shown} cleans up a dead mount`,
    );
  }
  if (error.code === "EACCES" || error.code === "EPERM") {
    return new CliError(`permission denied on the control socket of ${daemon.shown}`, "run as the user who mounted it (root for a shared mount)");
  }
  return new CliError(`cannot reach ${who}: ${error.message}`, `see its log in the run directory, or unmount and mount again`);
}

function replyError(reply: ControlReply & { ok: false }): GroveError {
  const code = (Object.hasOwn(errnos, reply.code) ? reply.code : "EIO") as ErrnoCode;
  return new GroveError(code, String(reply.detail), String(reply.message));
}

/** Sends one request to the daemon listening on `socketPath`; resolves with its result or rejects with its error. */
export function sendRequest(socketPath: string, request: ControlRequest, daemon: DaemonName): Promise<unknown> {
  return new Promise((resolve, reject) => {
    let text = "";
    let settled = false;
    const socket = net.createConnection(socketPath);
    const settle = (error: Error | null, result?: unknown) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      if (error) reject(error);
      else resolve(result);
    };
    const timer = setTimeout(
      () => settle(new CliError(`no answer from the grovefs process serving ${daemon.shown} within ${replyTimeoutMs / 1000} s`, `check it with ps -p ${daemon.pid}`)),
      replyTimeoutMs,
    );
    socket.setEncoding("utf8");
    socket.on("connect", () => {
      socket.write(`${JSON.stringify(request)}\n`);
      if (daemon.mountpoint !== undefined) fs.statfs(daemon.mountpoint, () => {});
    });
    socket.on("error", (error: NodeJS.ErrnoException) => settle(text === "" ? connectError(error, socketPath, daemon) : error));
    socket.on("data", (chunk: string) => {
      text += chunk;
      if (text.length > replyBytesMax) settle(new CliError(`the reply of the grovefs process serving ${daemon.shown} is too long`, "this is a bug; report it"));
    });
    socket.on("end", () => {
      const line = text.split("\n")[0] ?? "";
      let reply: ControlReply;
      try {
        reply = JSON.parse(line) as ControlReply;
      } catch {
        settle(new CliError(`the grovefs process serving ${daemon.shown} closed the connection without an answer`, `see its log; it may have exited`));
        return;
      }
      if (reply.ok) settle(null, reply.result);
      else settle(replyError(reply));
    });
  });
}

/**
 * Sends a streaming request (send) to the daemon on `socketPath`: each
 * chunk of the stream goes to `onChunk` as it arrives (which may block: the
 * daemon then waits); resolves with the final reply's result, or rejects
 * with its error (a refusal before the stream, or what stopped it midway).
 */
export function requestStream(socketPath: string, request: SendOp, daemon: DaemonName, onChunk: (chunk: Buffer) => void): Promise<unknown> {
  return new Promise((resolve, reject) => {
    let settled = false;
    let state: "first" | "frames" | "last" = "first";
    let held: Buffer = Buffer.alloc(0);
    // Arrived pieces are joined to `held` only once they complete what `advance` needs (a frame is up to a MiB).
    const waiting: Buffer[] = [];
    let waitingBytes = 0;
    let need = 1;
    const socket = net.createConnection(socketPath);
    const settle = (error: Error | null, result?: unknown): void => {
      if (settled) return;
      settled = true;
      socket.destroy();
      if (error) reject(error);
      else resolve(result);
    };
    const gone = (): CliError =>
      new CliError(`the grovefs process serving ${daemon.shown} closed the connection before the stream ended`, "see its log; it may have exited");
    const line = (text: string): ControlReply | null => {
      try {
        return JSON.parse(text) as ControlReply;
      } catch {
        return null;
      }
    };
    /** Consumes what `held` holds; false when more bytes are needed. */
    const advance = (): boolean => {
      if (state === "first") {
        const newline = held.indexOf(0x0a);
        if (newline < 0) {
          if (held.length > requestBytesMax) settle(new CliError(`the reply of the grovefs process serving ${daemon.shown} is malformed`, "this is a bug; report it"));
          return false;
        }
        const reply = line(held.subarray(0, newline).toString("utf8"));
        held = held.subarray(newline + 1);
        if (reply === null) settle(gone());
        else if (!reply.ok) settle(replyError(reply));
        else if (reply.result !== "stream") settle(null, reply.result);
        else state = "frames";
        return !settled;
      }
      if (state === "frames") {
        need = 4;
        if (held.length < 4) return false;
        const n = held.readUInt32LE(0);
        if (n === 0) {
          held = held.subarray(4);
          state = "last";
          return true;
        }
        need = 4 + n;
        if (held.length < 4 + n) return false;
        onChunk(held.subarray(4, 4 + n));
        held = held.subarray(4 + n);
        need = 1;
        return true;
      }
      return false;
    };
    socket.on("connect", () => {
      socket.write(`${JSON.stringify(request)}\n`);
      if (daemon.mountpoint !== undefined) fs.statfs(daemon.mountpoint, () => {});
    });
    socket.on("error", (error: NodeJS.ErrnoException) => settle(state === "first" && held.length === 0 ? connectError(error, socketPath, daemon) : error));
    socket.on("data", (chunk: Buffer) => {
      waiting.push(chunk);
      waitingBytes += chunk.length;
      if (state === "frames" && held.length + waitingBytes < need) return;
      held = Buffer.concat([held, ...waiting]);
      waiting.length = 0;
      waitingBytes = 0;
      try {
        while (!settled && advance()) {
          // Each turn consumes a line or a frame.
        }
      } catch (error) {
        settle(error as Error);
      }
    });
    socket.on("end", () => {
      held = Buffer.concat([held, ...waiting]);
      waiting.length = 0;
      try {
        while (!settled && advance()) {
          // What arrived last and was not yet needed.
        }
      } catch (error) {
        settle(error as Error);
      }
      if (settled) return;
      if (state !== "last") {
        settle(gone());
        return;
      }
      const reply = line(held.toString("utf8").split("\n")[0] ?? "");
      if (reply === null) settle(gone());
      else if (reply.ok) settle(null, reply.result);
      else settle(replyError(reply));
    });
  });
}

/**
 * Sends a receive request to the daemon on `socketPath` with the stream
 * read from `input` in frames (see the protocol above), waiting while the
 * daemon is not reading; resolves with the reply's result, or rejects with
 * its error (which may come before `input` is all sent: the rest is then
 * not read). `onBytes` gets the bytes sent so far.
 */
export function requestUpload(
  socketPath: string,
  request: ReceiveOp,
  daemon: DaemonName,
  input: AsyncIterable<Buffer>,
  onBytes: (bytes: number) => void = () => {},
): Promise<unknown> {
  return new Promise((resolve, reject) => {
    let settled = false;
    let text = "";
    let connected = false;
    const socket = net.createConnection(socketPath);
    const settle = (error: Error | null, result?: unknown): void => {
      if (settled) return;
      settled = true;
      socket.destroy();
      if (error) reject(error);
      else resolve(result);
    };
    const reply = (): boolean => {
      const newline = text.indexOf("\n");
      if (newline < 0) return false;
      let answered: ControlReply;
      try {
        answered = JSON.parse(text.slice(0, newline)) as ControlReply;
      } catch {
        settle(new CliError(`the reply of the grovefs process serving ${daemon.shown} is malformed`, "this is a bug; report it"));
        return true;
      }
      if (answered.ok) settle(null, answered.result);
      else settle(replyError(answered));
      return true;
    };
    const upload = async (): Promise<void> => {
      let bytes = 0;
      for await (const chunk of input) {
        if (settled || socket.destroyed) return;
        // Frames of at most 1 MiB, as the daemon's own.
        for (let at = 0; at < chunk.length && !settled; at += 1024 * 1024) {
          const piece = chunk.subarray(at, Math.min(chunk.length, at + 1024 * 1024));
          await writeFrame(socket, piece);
          bytes += piece.length;
          onBytes(bytes);
        }
      }
      if (!settled && !socket.destroyed) socket.write(Buffer.alloc(4));
    };
    socket.setEncoding("utf8");
    socket.on("connect", () => {
      connected = true;
      socket.write(`${JSON.stringify(request)}\n`);
      if (daemon.mountpoint !== undefined) fs.statfs(daemon.mountpoint, () => {});
      upload().catch((error: unknown) => settle(error instanceof Error ? error : new Error(String(error))));
    });
    socket.on("error", (error: NodeJS.ErrnoException) => {
      // A refusal the daemon wrote before it closed wins over the write that then failed.
      if (reply()) return;
      settle(connected ? error : connectError(error, socketPath, daemon));
    });
    socket.on("data", (chunk: string) => {
      text += chunk;
      if (text.length > replyBytesMax) settle(new CliError(`the reply of the grovefs process serving ${daemon.shown} is too long`, "this is a bug; report it"));
      reply();
    });
    socket.on("end", () => {
      if (!reply()) settle(new CliError(`the grovefs process serving ${daemon.shown} closed the connection without an answer`, "see its log; it may have exited"));
    });
  });
}
