/**
 * grovefs scrub TARGET [--readonly] [--rate MIB] [--background] [--json]
 * grovefs scrub status TARGET [--json]
 * grovefs scrub cancel TARGET
 *
 * Reads every node copy and every written data block of the volume, checks
 * every checksum, and rewrites damaged node copies from their twin
 * (duplicate metadata). A data block has one copy: its damage is reported
 * by file, never "repaired".
 *
 * - An unmounted image is opened read-write under its lock and scrubbed at
 *   full speed; the rewrites are committed before it exits.
 * - A mounted volume is scrubbed by its mount daemon, in the background, at
 *   a bounded rate (`--rate`, MiB/s, default 64; 0: unbounded), between FUSE
 *   requests. `scrub` waits for the end and prints the summary unless
 *   `--background`; interrupting it leaves the scrub running (`scrub cancel`
 *   stops it). Progress is kept in a state file (STATE_DIR/<uuid>.json,
 *   STATE_DIR = /var/lib/grovefs/scrub as root, $XDG_STATE_HOME/grovefs/scrub
 *   otherwise, GROVEFS_STATE_DIR overrides), saved every few seconds: a
 *   volume unmounted (or a daemon killed) mid-scrub resumes where it was at
 *   its next read-write mount. `scrub status` shows it, live or last.
 *
 * `--readonly` (btrfs scrub -r) reads and checks the same, and rewrites
 * nothing: a damaged copy with a good twin is reported as correctable. It
 * opens an image read-only (a shared lock, beside fsck -n or a read-only
 * mount), and it is the only scrub a read-only mount runs.
 *
 * Exit codes follow fsck's: 0 clean, 1 damage found and all of it corrected,
 * 4 damage left uncorrected (correctable copies a read-only scrub left
 * included), 8 operational error. `status` and `cancel` exit
 * 0, or 8.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { GroveFs, type ScrubSummary, type VolumeScrub } from "../fs/index.js";
import { FileDevice, GroveError, blockSizeBytes, readSuperblock, type ScrubPosition } from "../kvstore/index.js";
import { ProgressBar, fsckExit } from "./fsck.js";
import { CliError, formatError } from "./errors.js";
import { formatSize } from "./size.js";
import { askDaemon, daemonTarget, resolveTarget, type Target } from "./target.js";
import type { ScrubOp } from "./control.js";

/** The daemon's default rate, MiB/s. */
export const scrubRateDefault = 64;
/** How often the daemon runs a slice of the scrub, and the longest a slice holds the volume. */
const tickMs = 50;
const sliceMsMax = 20;
/** How often the state file is written while a scrub runs. */
const saveIntervalMs = 2000;
/** Findings kept in the record (the count is exact). */
const findingsKept = 200;

export type ScrubState = "running" | "finished" | "cancelled" | "failed";

/** What `scrub status` shows, and what the state file holds. */
export interface ScrubRecord {
  uuid: string;
  image: string;
  state: ScrubState;
  /** ISO 8601 UTC. */
  started: string;
  ended?: string;
  /** MiB/s (0: unbounded). */
  rate: number;
  /** A read-only scrub: it rewrote nothing (absent in records of older versions: false). */
  readonly?: boolean;
  /** Bytes in use on the volume when it began: what the percentage is of (an estimate). */
  totalBytes: number;
  /** Where the next slice resumes (null: from the start). */
  position: ScrubPosition | null;
  /** How many times it was resumed after an unmount. */
  resumed: number;
  bytesRead: number;
  nodes: number;
  copies: number;
  dataBlocks: number;
  corrected: number;
  /** Damaged copies with a good twin that a read-only scrub left (absent in records of older versions: 0). */
  correctable?: number;
  uncorrected: number;
  restarts: number;
  findings: string[];
  damagedFiles: string[];
  error?: string;
}

export interface ScrubCommandOptions {
  readonly?: boolean;
  rate?: string;
  background?: boolean;
  json?: boolean;
  progress?: boolean;
}

// ---- the state file ---------------------------------------------------------------

export function scrubStateDir(): string {
  const override = process.env.GROVEFS_STATE_DIR;
  if (override !== undefined && override !== "") return override;
  if ((process.getuid?.() ?? 0) === 0) return "/var/lib/grovefs/scrub";
  const base = process.env.XDG_STATE_HOME ?? path.join(os.homedir(), ".local", "state");
  return path.join(base, "grovefs", "scrub");
}

function statePath(uuid: string): string {
  return path.join(scrubStateDir(), `${uuid}.json`);
}

export function readScrubRecord(uuid: string): ScrubRecord | null {
  try {
    const record = JSON.parse(fs.readFileSync(statePath(uuid), "utf8")) as ScrubRecord;
    return record.uuid === uuid ? record : null;
  } catch {
    return null;
  }
}

/** Written whole to a temporary file, then renamed: a crash leaves the old record or the new one. */
function writeScrubRecord(record: ScrubRecord): void {
  const file = statePath(record.uuid);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const temporary = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(temporary, `${JSON.stringify(record, null, 2)}\n`);
  fs.renameSync(temporary, file);
}

function exitCodeOf(record: { corrected: number; correctable?: number; uncorrected: number }): number {
  if (record.uncorrected > 0 || (record.correctable ?? 0) > 0) return fsckExit.uncorrected;
  return record.corrected > 0 ? fsckExit.corrected : fsckExit.clean;
}

function keep(list: string[], more: string[]): string[] {
  return [...list, ...more].slice(0, findingsKept);
}

// ---- the daemon's side ---------------------------------------------------------------

export type ScrubRequest = ScrubOp;

/**
 * The scrub of a mount daemon's volume: at most one at a time, run in
 * slices from a timer, at `rate` MiB/s. Never throws into the daemon: a
 * failure ends the scrub as "failed", with its message.
 */
export class DaemonScrub {
  private record: ScrubRecord | null;
  private scrub: VolumeScrub | null = null;
  /** Counters of the passes before a resume (the record holds the sum). */
  private base: ScrubRecord | null = null;
  private timer: NodeJS.Timeout | null = null;
  private tokens = 0;
  private lastTickMs = 0;
  private lastSaveMs = 0;
  private correctedSynced = 0;

  constructor(
    private readonly volume: GroveFs,
    private readonly image: string,
  ) {
    this.record = readScrubRecord(this.uuid);
  }

  private get uuid(): string {
    return this.volume.store.uuid.toString("hex");
  }

  /** At mount: a scrub that was running when the volume was last unmounted goes on from its position. */
  resumeInterrupted(counted = true): void {
    const record = this.record;
    if (record === null || record.state !== "running" || (this.volume.readOnly && record.readonly !== true)) return;
    this.begin({ ...record, resumed: record.resumed + (counted ? 1 : 0) }, record.position);
  }

  /** Whether it reads through `volume` (one mount's view of the daemon's volume). */
  scrubsThrough(volume: GroveFs): boolean {
    return this.volume === volume;
  }

  /**
   * The mount it read through is gone while others of the daemon stay: the
   * scrub goes on through `volume` (another mount's view of the same store),
   * from its saved position, not counted as a resume.
   */
  handOver(volume: GroveFs): DaemonScrub {
    this.stop();
    const next = new DaemonScrub(volume, this.image);
    next.resumeInterrupted(false);
    return next;
  }

  handle(request: ScrubRequest): ScrubRecord | null {
    if (request.action === "status") return this.snapshot();
    if (request.action === "cancel") {
      if (this.scrub === null || this.record === null) throw new GroveError("EINVAL", "EINVAL_scrub_none", "no scrub is running on this volume");
      this.finish("cancelled");
      return this.snapshot();
    }
    if (this.scrub !== null) throw new GroveError("EBUSY", "EBUSY_scrub_running", "a scrub is running already (grovefs scrub status shows it; grovefs scrub cancel stops it)");
    const readonly = request.readonly === true;
    if (this.volume.readOnly && !readonly) {
      throw new GroveError(
        "EROFS",
        "EROFS_scrub",
        "the volume is mounted read-only, so damaged copies could not be rewritten; grovefs scrub --readonly reports them, or mount it read-write",
      );
    }
    const rate = request.rate ?? scrubRateDefault;
    if (!Number.isFinite(rate) || rate < 0) throw new GroveError("EINVAL", "EINVAL_scrub_rate", `--rate ${rate}: give MiB/s, 0 or more`);
    // The pass reads the committed state: everything written before the request is in it.
    if (!this.volume.readOnly) this.volume.sync();
    const info = this.volume.info();
    this.begin(
      {
        uuid: this.uuid,
        image: this.image,
        state: "running",
        started: new Date().toISOString(),
        rate,
        readonly,
        totalBytes: info.usedBytes,
        position: null,
        resumed: 0,
        bytesRead: 0,
        nodes: 0,
        copies: 0,
        dataBlocks: 0,
        corrected: 0,
        correctable: 0,
        uncorrected: 0,
        restarts: 0,
        findings: [],
        damagedFiles: [],
      },
      null,
    );
    return this.snapshot();
  }

  /** At unmount: the position is saved, so the next mount resumes. */
  stop(): void {
    if (this.scrub === null) return;
    this.update();
    this.halt();
    this.save(true);
  }

  private begin(record: ScrubRecord, from: ScrubPosition | null): void {
    this.base = record;
    this.record = record;
    this.scrub = this.volume.scrub(from, record.readonly !== true);
    this.correctedSynced = 0;
    this.tokens = 0;
    this.lastTickMs = performance.now();
    this.save(true);
    this.timer = setInterval(() => this.tick(), tickMs);
    this.timer.unref();
  }

  private tick(): void {
    const scrub = this.scrub;
    if (scrub === null) return;
    // Unmounted under it: kept as running, so the next mount resumes it.
    if (this.volume.isClosed) {
      this.stop();
      return;
    }
    try {
      const now = performance.now();
      const rate = this.record!.rate;
      const perMs = (rate * 1024 * 1024) / blockSizeBytes / 1000;
      if (rate > 0) this.tokens = Math.min(this.tokens + (now - this.lastTickMs) * perMs, perMs * 1000);
      this.lastTickMs = now;
      let done = false;
      while (!done && performance.now() - now < sliceMsMax && (rate === 0 || this.tokens >= 1)) {
        const before = scrub.pass.counters.copies + scrub.pass.counters.dataBlocks;
        done = scrub.step(rate === 0 ? 256 : Math.max(1, Math.min(256, Math.floor(this.tokens))));
        this.tokens -= scrub.pass.counters.copies + scrub.pass.counters.dataBlocks - before;
      }
      // Damaged copies are rewritten by a commit: made now, not left for the next write.
      if (scrub.pass.counters.corrected > this.correctedSynced) {
        this.volume.sync();
        this.correctedSynced = scrub.pass.counters.corrected;
      }
      if (done) {
        if (scrub.pass.repair) this.volume.sync();
        this.finish("finished");
      } else if (performance.now() - this.lastSaveMs >= saveIntervalMs) {
        this.update();
        this.save(false);
      }
    } catch (error) {
      this.update();
      this.record = { ...this.record!, error: formatError(error) };
      this.finish("failed");
    }
  }

  /** The record with the pass's counters added to those before it. */
  private update(): void {
    const scrub = this.scrub;
    if (scrub === null || this.base === null || this.record === null) return;
    const summary: ScrubSummary = scrub.summary();
    const base = this.base;
    this.record = {
      ...this.record,
      position: scrub.pass.position,
      bytesRead: base.bytesRead + summary.bytesRead,
      nodes: base.nodes + summary.nodes,
      copies: base.copies + summary.copies,
      dataBlocks: base.dataBlocks + summary.dataBlocks,
      corrected: base.corrected + summary.corrected,
      correctable: (base.correctable ?? 0) + summary.correctable,
      uncorrected: base.uncorrected + summary.uncorrected,
      restarts: base.restarts + summary.restarts,
      findings: keep(base.findings, summary.findings),
      damagedFiles: this.record.state === "running" ? base.damagedFiles : keep(base.damagedFiles, summary.damagedFiles),
    };
  }

  private finish(state: ScrubState): void {
    if (this.scrub !== null) {
      const summary = this.scrub.summary();
      this.update();
      this.record = { ...this.record!, damagedFiles: keep(this.base!.damagedFiles, summary.damagedFiles) };
    }
    this.halt();
    this.record = { ...this.record!, state, ended: new Date().toISOString(), position: state === "finished" ? null : this.record!.position };
    this.save(true);
  }

  private halt(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    this.scrub = null;
  }

  private snapshot(): ScrubRecord | null {
    if (this.scrub !== null) this.update();
    return this.record === null ? null : { ...this.record };
  }

  private save(always: boolean): void {
    if (this.record === null) return;
    if (!always && performance.now() - this.lastSaveMs < saveIntervalMs) return;
    this.lastSaveMs = performance.now();
    try {
      writeScrubRecord(this.record);
    } catch (error) {
      process.stderr.write(`grovefs: warning: cannot save the scrub's progress in ${scrubStateDir()}: ${(error as Error).message}\n`);
    }
  }
}

// ---- the command ---------------------------------------------------------------

function parseRate(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const rate = Number(text);
  if (text.trim() === "" || !Number.isFinite(rate) || rate < 0) throw new CliError(`--rate ${text} is not a rate`, "give MiB/s as a number, 0 for unbounded");
  return rate;
}

export async function scrubCommand(action: "start" | "status" | "cancel", targetArg: string, options: ScrubCommandOptions): Promise<number> {
  try {
    const rate = parseRate(options.rate);
    const target = resolveTarget(targetArg);
    const daemon = daemonTarget(target);
    if (daemon === null) {
      if (action !== "start") return imageStatus(action, target as Target & { kind: "image" }, options);
      return scrubImage(target as Target & { kind: "image" }, options);
    }
    const ask = (request: ScrubRequest): Promise<ScrubRecord | null> => askDaemon(daemon, request) as Promise<ScrubRecord | null>;
    if (action !== "start") {
      const record = await ask({ op: "scrub", action });
      print(record, targetArg, options, action);
      return 0;
    }
    let record = await ask({ op: "scrub", action: "start", rate, readonly: options.readonly === true });
    if (options.background === true) {
      if (options.json === true) process.stdout.write(`${JSON.stringify(record, null, 2)}\n`);
      else process.stdout.write(`grovefs: scrub of ${targetArg} started in the background at ${rateText(record!.rate)}; grovefs scrub status ${targetArg} shows its progress\n`);
      return 0;
    }
    const bar = new ProgressBar(showProgress(options) ? process.stderr : null, "scrub");
    bar.start("reading", record!.totalBytes);
    while (record !== null && record.state === "running") {
      await new Promise((resolve) => setTimeout(resolve, 250));
      const before = record.bytesRead;
      record = await ask({ op: "scrub", action: "status" });
      if (record !== null) bar.advance(record.bytesRead - before);
    }
    bar.clear();
    print(record, targetArg, options, "start");
    if (record === null || record.state === "failed" || record.state === "cancelled") return fsckExit.operational;
    return exitCodeOf(record);
  } catch (error) {
    process.stderr.write(`${formatError(error)}\n`);
    return fsckExit.operational;
  }
}

function showProgress(options: ScrubCommandOptions): boolean {
  return options.progress === true || (options.json !== true && process.stderr.isTTY === true);
}

function imageStatus(action: "status" | "cancel", target: Target & { kind: "image" }, options: ScrubCommandOptions): number {
  if (action === "cancel") throw new CliError(`${target.shown} is not mounted, so no scrub runs on it`, "a scrub of an unmounted image runs in the foreground: interrupt it");
  const device = FileDevice.open(target.image, { readOnly: true });
  let uuid: string;
  try {
    uuid = readSuperblock(device).uuid.toString("hex");
  } finally {
    device.close();
  }
  print(readScrubRecord(uuid), target.shown, options, "status");
  return 0;
}

function scrubImage(target: Target & { kind: "image" }, options: ScrubCommandOptions): number {
  const readOnly = options.readonly === true;
  let device: FileDevice;
  try {
    device = FileDevice.open(target.image, { lock: true, readOnly });
  } catch (error) {
    if (error instanceof GroveError && error.detail === "EBUSY_image_locked") {
      throw new CliError(
        `${target.shown} is in use by another grovefs process`,
        readOnly ? "wait for it to finish; a mounted image is scrubbed through its mount point" : "wait for it to finish; a mounted image is scrubbed through its mount point; --readonly runs beside fsck -n or a read-only mount",
      );
    }
    throw error;
  }
  const started = new Date();
  let record: ScrubRecord;
  try {
    const volume = GroveFs.open(device, { readOnly });
    try {
      const scrub = volume.scrub(null, !readOnly);
      const bar = new ProgressBar(showProgress(options) ? process.stderr : null, "scrub");
      bar.start("reading", volume.info().usedBytes);
      let read = 0;
      while (!scrub.step(4096)) {
        bar.advance(scrub.pass.counters.bytesRead - read);
        read = scrub.pass.counters.bytesRead;
      }
      bar.clear();
      const summary = scrub.summary();
      if (!readOnly) volume.sync();
      // Copies the open's own reads found damaged (and queued) count as corrected too.
      const corrected = readOnly ? 0 : Math.max(summary.corrected, volume.store.repairCounters.rewritten);
      record = {
        uuid: volume.store.uuid.toString("hex"),
        image: target.image,
        state: "finished",
        started: started.toISOString(),
        ended: new Date().toISOString(),
        rate: 0,
        readonly: readOnly,
        totalBytes: 0,
        position: null,
        resumed: 0,
        ...summary,
        corrected,
      };
    } finally {
      volume.close();
    }
  } finally {
    device.close();
  }
  try {
    writeScrubRecord(record);
  } catch {
    // The record is for `scrub status`: an image scrub that cannot save it has still done its work.
  }
  print(record, target.shown, options, "start");
  return exitCodeOf(record);
}

function rateText(rate: number): string {
  return rate === 0 ? "an unbounded rate" : `${rate} MiB/s`;
}

function print(record: ScrubRecord | null, shown: string, options: ScrubCommandOptions, action: "start" | "status" | "cancel"): void {
  if (options.json === true) {
    process.stdout.write(`${JSON.stringify(record, null, 2)}\n`);
    return;
  }
  if (record === null) {
    process.stdout.write(`${shown}: no scrub has run\n`);
    return;
  }
  process.stdout.write(formatScrubText(record, shown, action));
}

export function formatScrubText(r: ScrubRecord, shown: string, action: "start" | "status" | "cancel" = "status"): string {
  const lines: string[] = [];
  const endMs = r.ended === undefined ? Date.now() : Date.parse(r.ended);
  const seconds = Math.max(0.001, (endMs - Date.parse(r.started)) / 1000);
  const read = `${formatSize(r.bytesRead)} read (${r.nodes} nodes, ${r.copies} copies; ${r.dataBlocks} data blocks)`;
  const kind = r.readonly === true ? "read-only scrub" : "scrub";
  if (r.state === "running") {
    const percent = r.totalBytes > 0 ? ` ${Math.min(99, Math.floor((100 * r.bytesRead) / r.totalBytes))}%,` : "";
    lines.push(`${shown}: ${kind} running since ${r.started},${percent} ${read}, at ${rateText(r.rate)}${r.resumed > 0 ? `, resumed ${r.resumed} time${r.resumed === 1 ? "" : "s"}` : ""}`);
  } else {
    lines.push(`${shown}: ${kind} ${r.state} at ${r.ended ?? "?"}: ${read} in ${seconds.toFixed(1)} s (${formatSize(r.bytesRead / seconds)}/s)`);
  }
  if (r.error !== undefined) lines.push(`error: ${r.error}`);
  if (action !== "status" || r.state !== "running") {
    for (const finding of r.findings) lines.push(`${findingKind(finding)}: ${finding}`);
    for (const file of r.damagedFiles) lines.push(`damaged file: ${file}`);
  }
  const correctable = r.correctable ?? 0;
  const copies = (n: number): string => `${n} damaged node cop${n === 1 ? "y" : "ies"}`;
  const parts: string[] = [];
  if (r.corrected > 0 || (r.uncorrected === 0 && correctable === 0)) parts.push(`${copies(r.corrected)} corrected`);
  if (correctable > 0) parts.push(`${copies(correctable)} with a good twin left as they are (read-only)`);
  if (r.uncorrected > 0) parts.push(`${r.uncorrected} problem${r.uncorrected === 1 ? "" : "s"} left uncorrected`);
  if (r.corrected === 0 && r.uncorrected === 0 && correctable === 0) lines.push(`${shown}: no damage found`);
  else lines.push(`${shown}: ${parts.join("; ")}`);
  if (correctable > 0) lines.push(`grovefs scrub ${shown} (without --readonly, on the image or a read-write mount) rewrites them from their twins`);
  if (r.uncorrected > 0) {
    lines.push(
      r.damagedFiles.length > 0
        ? "a damaged data block has one copy: restore the damaged files from a backup or a snapshot, or delete them"
        : `a node with no good copy: unmount, then grovefs fsck -n IMAGE says what is lost and fsck -y salvages the rest`,
    );
  }
  return `${lines.join("\n")}\n`;
}

function findingKind(finding: string): string {
  if (/rewritten from its copy/.test(finding)) return "corrected";
  if (/not rewritten \(read-only\)/.test(finding)) return "correctable";
  return "uncorrected";
}

/** The last scrub in one line, for grovefs info: what it found and when (null: none recorded for this volume). */
export function scrubSummaryLine(r: ScrubRecord | null): string {
  if (r === null) return "none recorded (grovefs scrub TARGET runs one)";
  const kind = r.readonly === true ? "read-only, " : "";
  if (r.state === "running") {
    const percent = r.totalBytes > 0 ? `${Math.min(99, Math.floor((100 * r.bytesRead) / r.totalBytes))}%, ` : "";
    return `running (${kind}${percent}${formatSize(r.bytesRead)} read) since ${r.started}`;
  }
  const found: string[] = [];
  if (r.corrected > 0) found.push(`${r.corrected} corrected`);
  if ((r.correctable ?? 0) > 0) found.push(`${r.correctable} correctable`);
  if (r.uncorrected > 0) found.push(`${r.uncorrected} uncorrected`);
  const result = found.length === 0 ? "no damage found" : found.join(", ");
  return `${r.state} at ${r.ended ?? "?"} (${kind}${formatSize(r.bytesRead)} read): ${result}${r.error === undefined ? "" : `; ${r.error}`}`;
}
