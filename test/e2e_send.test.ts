/**
 * End to end through the kernel: `grovefs send MNT SNAP | grovefs receive
 * IMG2` from a real mount while a child process keeps writing on it, full
 * then incremental. The daemon streams the snapshot over its control socket
 * and keeps serving the mount; the received snapshots are mounted and
 * compared with the source's /.snapshots (names, types, modes, owners,
 * sizes, mtimes, link counts, symlink targets, bytes). Receive on an image
 * a daemon holds is refused in one line. And `grovefs receive MNT` into a
 * mounted volume while another process writes on it: the daemon applies
 * the stream between FUSE requests, the snapshots show in its /.snapshots;
 * a cut stream's --status and --abort on the mount. Both images are checked
 * at the end.
 */
import { spawn } from "node:child_process";
import * as fsp from "node:fs/promises";
import { afterEach, describe, expect, it } from "vitest";
import { E2eVolume, checksums, cliCommand, e2eSkipReason, sh, treeListing, waitFor } from "./e2e_helpers.js";
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
    // Refused: receive into the image its daemon holds (a second process never opens it read-write).
    expectOneLineError(await a.grove(["receive", a.image, "-f", a.out("s2.stream")]), /is mounted at/);
    await b.mount(["-o", "ro"]);
    for (const name of ["s1", "s2"]) await expectSameTree(a.in(".snapshots", name), b.in(".snapshots", name));
    await b.finish();
    await a.finish();
  }, 240_000);

  it("grovefs send MNT_A snap | grovefs receive MNT_B into a mounted volume while files are written on MNT_B; --status and --abort on the mount", async () => {
    const a = await E2eVolume.mounted("recv-a", "256M");
    volumes.push(a);
    const b = await E2eVolume.mounted("recv-b", "256M");
    volumes.push(b);
    const g = groveShell();
    await sh(
      `cd "$1"; mkdir -p d/e; i=0; while [ $i -lt 30 ]; do head -c $((i * 4001 + 7)) /dev/urandom > d/f$i; i=$((i+1)); done
       yes 'compressible text for the lz4 path' | head -c 2000000 > d/text; cp --reflink=always d/text d/e/copy 2>/dev/null || cp d/text d/e/copy
       ln d/f3 d/e/hard; ln -s ../f1 d/e/link; chmod 640 d/f5; touch -d @1234567890.123456789 d/f7 d/e`,
      [a.mnt],
    );
    await a.groveOk(["snapshot", "create", a.mnt, "s1"]);
    // A second mountpoint of the receiving volume (a clone, served by the same daemon): the snapshots show there too.
    await b.groveOk(["clone", b.mnt, "default", "c1"]);
    const mnt2 = b.out("mnt2");
    await fsp.mkdir(mnt2);
    await b.groveOk(["mount", b.image, mnt2, "--subvol", "c1"]);
    expect(await sh(`ls -a "$1/.snapshots"`, [mnt2])).toBe(".\n..\n");
    // Another process writes on the receiving mount for the whole receive.
    const writer = b.spawn("sh", ["-c", 'cd "$1"; mkdir -p live; n=0; while :; do head -c 65536 /dev/urandom >> live/log; echo $n > live/n$((n % 50)); n=$((n+1)); sleep 0.01; done', "sh", b.mnt]);
    // Each volume's daemon has its own run directory: the sender's for send, the receiver's for receive.
    const full = await sh(`${g} send "$1" s1 | GROVEFS_RUN_DIR="$3" ${g} receive "$2"`, [a.mnt, b.mnt, b.out("run")], { env: a.env });
    expect(full).toMatch(/received 's1' \(full\)/);
    await sh(`cd "$1"; rm d/f2; echo changed >> d/f4; mv d/f8 d/e/moved; head -c 100000 /dev/urandom > d/new`, [a.mnt]);
    await a.groveOk(["snapshot", "create", a.mnt, "s2"]);
    await sh(`${g} send "$1" s2 --parent s1 -f "$2"`, [a.mnt, a.out("s2.stream")], { env: a.env });
    // Cut short (a file that ends early): kept hidden on the mount, with a token; --abort on the mount frees it.
    await sh(`head -c 100000 "$1" > "$2"`, [a.out("s2.stream"), a.out("cut.stream")]);
    expectOneLineError(await b.grove(["receive", b.mnt, "-f", a.out("cut.stream")]), /cut short/);
    const status = JSON.parse((await b.groveOk(["receive", b.mnt, "--status", "--json"])).stdout) as { interrupted: { name: string; token: string }[] };
    expect(status.interrupted.map((i) => i.name)).toEqual(["s2"]);
    expect(status.interrupted[0]!.token).toMatch(/^grovefs-resume-1\./);
    expect((await b.groveOk(["receive", b.mnt, "--abort"])).stdout).toMatch(/aborted the receive of 's2'/);
    expect((await b.groveOk(["receive", b.mnt, "--status"])).stdout).toMatch(/no interrupted receive/);
    // A receive whose client goes away midway: --abort is refused while the daemon runs it; once the client is gone,
    // what arrived is kept hidden, with a token.
    const stream = await fsp.readFile(a.out("s2.stream"));
    const [cmd, ...args] = cliCommand();
    const client = spawn(cmd!, [...args, "receive", b.mnt], { env: b.env, stdio: ["pipe", "ignore", "pipe"] });
    const exited = new Promise((resolve) => client.on("exit", (code, signal) => resolve(signal ?? code)));
    await new Promise((resolve) => client.stdin!.write(stream.subarray(0, 100_000), resolve));
    const running = async (): Promise<boolean> =>
      (JSON.parse((await b.groveOk(["receive", b.mnt, "--status", "--json"])).stdout) as { interrupted: unknown[] }).interrupted.length === 1;
    expect(await waitFor(running, 60_000)).toBe(true);
    expectOneLineError(await b.grove(["receive", b.mnt, "--abort"]), /a receive is running/);
    client.kill("SIGKILL");
    expect(await exited).toBe("SIGKILL");
    expect(await waitFor(async () => (await b.grove(["receive", b.mnt, "--abort"])).code === 0, 60_000)).toBe(true);
    expect((await b.groveOk(["receive", b.mnt, "--status"])).stdout).toMatch(/no interrupted receive/);
    const incremental = await sh(`${g} receive "$1" -f "$2" --json`, [b.mnt, a.out("s2.stream")], { env: b.env });
    expect(JSON.parse(incremental)).toMatchObject({ snapshot: "s2", parent: "s1" });
    // A taken name is refused in one line, before the whole stream is sent.
    expectOneLineError(await b.grove(["receive", b.mnt, "-f", a.out("s2.stream")]), /exists/);
    // The writer got through all of it (the mount kept answering) and is still writing.
    expect(writer.exitCode).toBeNull();
    writer.kill("SIGKILL");
    // The published snapshots show in the mount's /.snapshots, equal to the source's.
    for (const name of ["s1", "s2"]) await expectSameTree(a.in(".snapshots", name), b.in(".snapshots", name));
    expect(await sh(`ls "$1/.snapshots"`, [mnt2])).toBe("s1\ns2\n");
    await expectSameTree(a.in(".snapshots", "s2"), `${mnt2}/.snapshots/s2`);
    await b.groveOk(["umount", mnt2]);
    await b.finish();
    await a.finish();
  }, 240_000);
});
