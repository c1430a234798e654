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
export type VolumeRequest = { op: "sync" } | { op: "info" } | AttachRequest | ResizeOp;

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
  let text = "";
  socket.setEncoding("utf8");
  socket.on("error", () => {});
  socket.on("data", (chunk: string) => {
    text += chunk;
    const newline = text.indexOf("\n");
    if (newline < 0 && text.length <= requestBytesMax) return;
    const line = newline < 0 || newline > requestBytesMax ? null : text.slice(0, newline);
    text = "";
    // The rest of what the client sends is read and dropped, so it never sees a reset.
    socket.removeAllListeners("data");
    socket.resume();
    const reply =
      line === null ? Promise.resolve(errorReply(invalid(`a request is at most ${requestBytesMax} bytes`), served.report)) : answer(line, served);
    void reply.then((answered) => socket.end(`${JSON.stringify(answered)}\n`));
  });
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
