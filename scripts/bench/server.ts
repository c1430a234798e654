/**
 * FUSE servers as child processes of the bench, each in its own process
 * group, so that a Ctrl-C reaches the bench first, which then stops them in
 * order (SIGTERM, wait, SIGKILL to the group after a timeout) and unmounts
 * whatever they left. `ServerMount` is the `Mounted` of every target that is
 * an image (or a directory) plus a server command: fuse2fs, grovefs, both
 * ceilings.
 */
import { spawn, type ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import { aborting, registerCleanup } from "./cleanup.js";
import { forceUnmount, isMounted, ourMountPoints } from "./mounts.js";
import { repoRoot, run, sleep, tail, verbose } from "./proc.js";
import type { Mounted } from "./target.js";

const mountTimeoutMs = 60_000;
const stopTimeoutMs = 60_000;
const mountPollMs = 100;
const mountpointCheckTimeoutMs = 10_000;

/** A running FUSE server and its mount point. */
export interface Server {
  target: string;
  mnt: string;
  child: ChildProcess;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  done: boolean;
  logPath: string;
  stopping?: Promise<void>;
}

const liveServers = new Set<Server>();

registerCleanup({
  async: async () => {
    await Promise.all([...liveServers].map((s) => stopServer(s)));
  },
  sync: () => {
    for (const s of liveServers) killGroup(s, "SIGKILL");
  },
});

export function startServer(target: string, argv: string[], mnt: string, logPath: string): Server {
  if (aborting()) throw new Error("interrupted");
  if (verbose()) console.log(`  $ ${argv.join(" ")} &`);
  const log = fs.openSync(logPath, "a");
  const child = spawn(argv[0], argv.slice(1), { cwd: repoRoot, stdio: ["ignore", log, log], detached: true });
  fs.closeSync(log);
  ourMountPoints.add(mnt);
  const server: Server = {
    target,
    mnt,
    child,
    logPath,
    done: false,
    exited: new Promise((resolve) => {
      child.on("error", (err) => {
        fs.appendFileSync(logPath, `spawn failed: ${err.message}\n`);
        resolve({ code: null, signal: null });
      });
      child.on("exit", (code, signal) => resolve({ code, signal }));
    }),
  };
  void server.exited.then(() => {
    server.done = true;
    liveServers.delete(server);
  });
  liveServers.add(server);
  return server;
}

export function logTail(logPath: string): string {
  try {
    return tail(fs.readFileSync(logPath, "utf8")) || "(no output)";
  } catch {
    return "(no log)";
  }
}

/** Waits until `mountpoint -q MNT` succeeds, i.e. the kernel mount exists and the server answers. */
export async function waitMounted(server: Server): Promise<void> {
  const deadline = Date.now() + mountTimeoutMs;
  for (;;) {
    if (server.done) {
      const { code, signal } = await server.exited;
      throw new Error(`${server.target} server exited (${signal ?? `code ${code}`}) before mounting: ${logTail(server.logPath)}`);
    }
    if (isMounted(server.mnt)) {
      const r = await run(["mountpoint", "-q", server.mnt], { timeoutMs: mountpointCheckTimeoutMs });
      if (r.code === 0) return;
    }
    if (Date.now() > deadline) throw new Error(`${server.target} did not mount within ${mountTimeoutMs / 1000} s: ${logTail(server.logPath)}`);
    await sleep(mountPollMs);
  }
}

/**
 * SIGTERM, wait for exit (SIGKILL to its group after a timeout), then unmount
 * whatever it left behind. Idempotent: a second call waits for the first, so
 * a server never gets a second SIGTERM (libfuse restores the default handler
 * after the first, and a second one would kill it mid-flush).
 */
export function stopServer(server: Server): Promise<void> {
  server.stopping ??= stopServerOnce(server);
  return server.stopping;
}

async function stopServerOnce(server: Server): Promise<void> {
  let warning = "";
  if (!server.done) {
    server.child.kill("SIGTERM");
    const timeout = sleep(stopTimeoutMs).then(() => "timeout" as const);
    if ((await Promise.race([server.exited, timeout])) === "timeout") {
      warning = `did not exit within ${stopTimeoutMs / 1000} s of SIGTERM, killed`;
      killGroup(server, "SIGKILL");
      await server.exited;
    } else {
      const { code, signal } = await server.exited;
      if (code !== 0 || signal) warning = `exited with ${signal ?? `code ${code}`} after SIGTERM`;
    }
  }
  if (isMounted(server.mnt)) {
    warning += `${warning ? "; " : ""}left ${server.mnt} mounted, unmounted with umount`;
    await forceUnmount(server.mnt);
  }
  if (warning) console.log(`  warning: ${server.target} ${warning}: ${logTail(server.logPath)}`);
}

function killGroup(server: Server, signal: NodeJS.Signals): void {
  try {
    if (server.child.pid) process.kill(-server.child.pid, signal);
  } catch {
    // already gone
  }
}

/** A filesystem served by a FUSE server process; `serverArgv` is run again for each mount. */
export class ServerMount implements Mounted {
  private server: Server | undefined;

  constructor(
    readonly target: string,
    readonly mountpoint: string,
    readonly persistent: boolean,
    private readonly serverArgv: string[],
    private readonly logPath: string,
    /** Deletes the image or backing directory once unmounted. */
    private readonly discard: () => void,
  ) {}

  async mount(): Promise<void> {
    fs.mkdirSync(this.mountpoint, { recursive: true });
    this.server = startServer(this.target, this.serverArgv, this.mountpoint, this.logPath);
    await waitMounted(this.server);
  }

  async unmount(): Promise<void> {
    if (this.server) await stopServer(this.server);
    this.server = undefined;
  }

  async remount(): Promise<void> {
    if (!this.persistent) throw new Error(`${this.target} cannot be remounted: it keeps its contents only in its server's memory`);
    await this.unmount();
    await this.mount();
  }

  async teardown(): Promise<void> {
    await this.unmount();
    ourMountPoints.delete(this.mountpoint);
    this.discard();
  }
}
