/**
 * `grovefs send` and `grovefs receive` on a mountpoint, the daemon's side:
 * the control socket's send request (cli/control.ts) streamed from the
 * served volume, and its receive request streamed into it.
 *
 * The send runs in slices of a few records (at most `sliceBytesMax` bytes
 * or `sliceRecordsMax` records each), and after each slice the event loop
 * runs, so FUSE requests keep being answered while a large snapshot goes
 * out; when the client is not reading, the next slice waits. The snapshot
 * (and the parent) are read-only and held (GroveFs.holdSubvolumes) until
 * the send ends, so the live writes between slices never touch what is
 * being read, and a deletion of either is refused meanwhile.
 *
 * A receive applies the frames that arrived a slice of records at a time
 * (`sliceRecordsMax`), the event loop running between slices, into its
 * hidden subvolume of the served volume (fs/send/receiver.ts ReceivePush);
 * the published snapshot shows in every mount's /.snapshots (the volume's
 * change notice). receive --abort on a mount is refused while a receive
 * runs in the daemon (it would delete what that one is filling).
 */
import { send, type GroveFs } from "../fs/index.js";
import { GroveError } from "../kvstore/index.js";
import type { ReceiveOp, ReceiveStateOp, SendOp, StreamSink, StreamSource } from "./control.js";

/** Bytes of stream one slice writes before the event loop runs again. */
const sliceBytesMax = 1024 * 1024;
/** Records one slice writes at most (records a resumed send skips count too). */
const sliceRecordsMax = 256;

export async function serveSend(volume: GroveFs, request: SendOp, begin: () => void, sink: StreamSink): Promise<send.SendSummary> {
  const names = request.parent === undefined ? [request.snapshot] : [request.snapshot, request.parent];
  const resume = request.resume === undefined ? undefined : send.decodeResumeToken(request.resume);
  const pending: Buffer[] = [];
  let pendingBytes = 0;
  // Refusals (a missing snapshot or parent, a token for another snapshot) come here, before the stream begins.
  const run = send.startSend(
    volume,
    request.snapshot,
    (chunk) => {
      pending.push(chunk);
      pendingBytes += chunk.length;
    },
    { parent: request.parent, resume },
  );
  const release = volume.holdSubvolumes(names);
  try {
    begin();
    for (;;) {
      let done = false;
      for (let n = 0; !done && n < sliceRecordsMax && pendingBytes < sliceBytesMax; n++) done = run.step(1);
      const chunk = Buffer.concat(pending);
      pending.length = 0;
      pendingBytes = 0;
      const wait = sink(chunk);
      if (wait !== undefined) await wait;
      if (done) return run.summary;
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
  } finally {
    release();
  }
}

/** Receives running in this daemon, per served volume. */
const receiving = new WeakMap<GroveFs, number>();

export async function serveReceive(volume: GroveFs, request: ReceiveOp, source: StreamSource): Promise<send.ReceiveSummary> {
  const push = new send.ReceivePush(volume, { name: request.name });
  receiving.set(volume, (receiving.get(volume) ?? 0) + 1);
  try {
    for (;;) {
      const frame = await source();
      if (frame === "end" || frame === "gone") return push.end();
      push.push(frame);
      for (;;) {
        const before = push.pending;
        if (push.step(sliceRecordsMax)) return push.end();
        if (push.pending === before) break; // the next record has not all arrived
        await new Promise<void>((resolve) => setImmediate(resolve));
      }
    }
  } finally {
    receiving.set(volume, receiving.get(volume)! - 1);
  }
}

/** receive --status / --abort on a mount: the interrupted receives and their tokens (aborted: deleted, freed by the maintenance tick). */
export function serveReceiveState(volume: GroveFs, request: ReceiveStateOp): { interrupted: { name: string; token: string | null }[]; aborted: string[] } {
  if (request.abort && (receiving.get(volume) ?? 0) > 0) {
    throw new GroveError("EBUSY", "EBUSY_receive_running", "a receive is running on this mount: let it end (or stop its grovefs receive) first");
  }
  const interrupted = volume.partialReceives().map((info) => ({ partial: info.name, token: send.resumeTokenOf(volume, info.name) ?? null }));
  if (request.abort) for (const { partial } of interrupted) volume.abortReceive(partial);
  const names = interrupted.map(({ partial, token }) => ({ name: partial.slice(send.partialNameFor("").length), token }));
  return { interrupted: names, aborted: request.abort ? names.map((n) => n.name) : [] };
}
