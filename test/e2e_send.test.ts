/**
 * End to end through the kernel: `grovefs send MNT SNAP | grovefs receive
 * IMG2` from a real mount while a child process keeps writing on it, full
 * then incremental. The daemon streams the snapshot over its control socket
 * and keeps serving the mount; the received snapshots are mounted and
 * compared with the source's /.snapshots (names, types, modes, owners,
 * sizes, mtimes, link counts, symlink targets, bytes). Receive on a
 * mountpoint, and on an image a daemon holds, is refused in one line. Both
 * images are checked at the end.
 */
import * as fsp from "node:fs/promises";
import { afterEach, describe, expect, it } from "vitest";
import { E2eVolume, checksums, cliCommand, e2eSkipReason, sh, treeListing } from "./e2e_helpers.js";
import { expectOneLineError } from "./cli_helpers.js";

const volumes: E2eVolume[] = [];

afterEach(async () => {
  for (const volume of volumes.splice(0)) await volume.cleanup();
});

/** A shell line that runs the CLI (for pipes). */
function groveShell(): string {
  return cliCommand()
    .map((part) => `'${part.replace(/'/g, "'\\''")}'`)
    .join(" ");
}

/** The received snapshot equals the source's: the listing and every file's bytes. */
async function expectSameTree(source: string, received: string): Promise<void> {
  expect(await treeListing(received)).toEqual(await treeListing(source));
  expect(Object.fromEntries(await checksums(received))).toEqual(Object.fromEntries(await checksums(source)));
}

describe.skipIf(e2eSkipReason !== null)("send from a mount", () => {
  it("grovefs send MNT snap | grovefs receive IMG2 while files are written on MNT, full then incremental", async () => {
    const a = await E2eVolume.mounted("send-a", "512M");
    volumes.push(a);
    const b = await E2eVolume.create("send-b");
    volumes.push(b);
    await b.mkfs("512M");
    const g = groveShell();
    await sh(
      `cd "$1"; mkdir -p d/e live; i=0; while [ $i -lt 40 ]; do head -c $((i * 3001 + 17)) /dev/urandom > d/f$i; i=$((i+1)); done
       head -c 3000000 /dev/urandom > d/big; cp d/big d/e/copy; ln d/f3 d/e/hard; ln -s ../f1 d/e/link; mkfifo d/fifo
       chmod 640 d/f5; chown 1000:100 d/f6; touch -d @1234567890.123456789 d/f7 d/e`,
      [a.mnt],
    );
    await a.groveOk(["snapshot", "create", a.mnt, "s1"]);
    // A writer on the live subvolume for the whole test: appends and rewrites, until killed.
    const writer = a.spawn("sh", ["-c", 'cd "$1"; n=0; while :; do head -c 65536 /dev/urandom >> live/log; echo $n > live/n$((n % 50)); n=$((n+1)); sleep 0.01; done', "sh", a.mnt]);
    const full = await sh(`${g} send "$1" s1 | ${g} receive "$2"`, [a.mnt, b.image], { env: a.env });
    expect(full).toMatch(/received 's1' \(full\)/);
    await sh(`cd "$1"; rm d/f2; echo changed >> d/f4; mv d/f8 d/e/moved; head -c 100000 /dev/urandom > d/new; truncate -s 1000 d/f39`, [a.mnt]);
    await a.groveOk(["snapshot", "create", a.mnt, "s2"]);
    const json = await sh(`${g} send "$1" s2 --parent s1 --json -f "$3" && ${g} receive "$2" -f "$3"`, [a.mnt, b.image, a.out("s2.stream")], {
      env: a.env,
    });
    expect(json).toMatch(/received 's2' \(incremental on 's1'\)/);
    const summary = JSON.parse(json.split("\n")[0]!) as { parent: string; bytes: number };
    expect(summary.parent).toBe("s1");
    expect(summary.bytes).toBe((await fsp.stat(a.out("s2.stream"))).size);
    // The writer got through all of it (the mount kept answering) and is still writing.
    expect(writer.exitCode).toBeNull();
    writer.kill("SIGKILL");
    // Refusals: receive into a mount point, or into the image its daemon holds.
    expectOneLineError(await a.grove(["receive", a.mnt, "-f", a.out("s2.stream")]), /is a mount point/);
    expectOneLineError(await a.grove(["receive", a.image, "-f", a.out("s2.stream")]), /is mounted at/);
    await b.mount(["-o", "ro"]);
    for (const name of ["s1", "s2"]) await expectSameTree(a.in(".snapshots", name), b.in(".snapshots", name));
    await b.finish();
    await a.finish();
  }, 240_000);
});
