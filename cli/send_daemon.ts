/**
 * `grovefs send` on a mountpoint, the daemon's side: the control socket's
 * send request (cli/control.ts) streamed from the served volume.
 *
 * The send runs in slices of a few records (at most `sliceBytesMax` bytes
 * or `sliceRecordsMax` records each), and after each slice the event loop
 * runs, so FUSE requests keep being answered while a large snapshot goes
 * out; when the client is not reading, the next slice waits. The snapshot
 * (and the parent) are read-only and held (GroveFs.holdSubvolumes) until
 * the send ends, so the live writes between slices never touch what is
 * being read, and a deletion of either is refused meanwhile.
 */
import { send, type GroveFs } from "../fs/index.js";
import type { SendOp, StreamSink } from "./control.js";

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
