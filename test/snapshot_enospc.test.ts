/**
 * Near-full volumes with snapshots: a seeded workload of writes, sparse
 * writes, links, truncates, xattrs, a growing directory, renames, snapshots,
 * clones, deletions and deletion steps runs on a small volume until it is
 * full and beyond. Every refusal must be a clean errno (ENOSPC and the usual
 * ENOENT/EEXIST/...), never a poisoned volume; the data a write accepted must
 * reach the disk at close; and the checker must be clean at the end.
 * (Found by review: unlink, write-out and deletion steps used to poison or
 * wedge here once snapshots shared the nodes they copy.)
 *
 * Replay a seed with GROVE_SEED=n.
 */
import { describe, expect, it } from "vitest";
import { GroveError, Prng, SimDevice } from "../kvstore/index.js";
import { GroveFs } from "../fs/index.js";
import { seeds, withSeed } from "./helpers.js";
import { O_CREAT, O_RDWR, expectFsClean, pattern, testClock } from "./fs_helpers.js";

const testFile = "test/snapshot_enospc.test.ts";
const caller = { uid: 0, gid: 0 };
const expected = new Set(["ENOSPC", "ENOENT", "EEXIST", "ENODATA", "EISDIR", "ENOTDIR", "ENOTEMPTY", "E2BIG", "EBUSY", "EMLINK", "EPERM"]);

describe("near-full volumes with snapshots", () => {
  for (const seed of seeds([1, 2, 3, 7])) {
    it(`seed ${seed}: refusals are clean and the volume checks clean`, () => {
      withSeed(seed, testFile, () => {
        const rng = new Prng(seed);
        const r = (n: number): number => rng.below(n);
        let device = new SimDevice(4096);
        GroveFs.format(device, { clock: testClock() });
        device = device.reopen();
        const fs = GroveFs.open(device, { clock: testClock() });
        fs.mkdir("/d", 0o755, caller);
        fs.mkdir("/big", 0o755, caller);
        let snaps = 0;
        let refusedForSpace = 0;
        const log: string[] = [];
        for (let op = 0; op < 3000; op++) {
          const k = r(100);
          const f = `/d/f${r(60)}`;
          let what = "";
          try {
            if (k < 35) {
              const length = [100, 5000, 20000, 100000][r(4)]!;
              what = `write ${f} ${length}`;
              const fh = fs.create(f, 0o644, O_CREAT | O_RDWR, caller);
              try {
                fs.write(fh, pattern(length, op), length, r(3) * 7000);
              } finally {
                fs.release(fh);
              }
            } else if (k < 45) {
              what = `sparse writes ${f}`;
              const fh = fs.create(f, 0o644, O_CREAT | O_RDWR, caller);
              try {
                for (let i = 0; i < 20; i++) fs.write(fh, pattern(10, i), 10, r(100) * 4096);
              } finally {
                fs.release(fh);
              }
            } else if (k < 55) {
              what = `unlink ${f}`;
              fs.unlink(f);
            } else if (k < 60) {
              what = `link ${f}`;
              fs.link(f, `/d/f${r(60)}`);
            } else if (k < 65) {
              what = `truncate ${f}`;
              fs.truncate(f, r(50000));
            } else if (k < 70) {
              what = `xattr ${f}`;
              fs.setxattr(f, "user.a", pattern(r(16000), op), 0);
            } else if (k < 74) {
              what = "grow /big";
              for (let i = 0; i < 50; i++) fs.release(fs.create(`/big/x${r(500)}_long_name_padding`, 0o644, O_CREAT | O_RDWR, caller));
            } else if (k < 78) {
              what = `rename ${f}`;
              fs.rename(f, `/big/${r(30)}`, r(2) * 2);
            } else if (k < 85) {
              what = "sync";
              fs.sync();
            } else if (k < 90) {
              what = "snapshot";
              fs.createSubvolume(`s${snaps++}`, { readOnly: r(2) === 0 });
            } else if (k < 96) {
              const names = fs.listSubvolumes().filter((s) => s.name !== "default").map((s) => s.name);
              if (names.length > 0) {
                what = "delete a subvolume";
                fs.deleteSubvolume(names[r(names.length)]!);
              }
            } else {
              what = "deletion steps";
              fs.runDeletions(1 + r(10));
            }
          } catch (error) {
            if (!(error instanceof GroveError) || !expected.has(error.code) || fs.store.isPoisoned) {
              console.error(`seed ${seed}, op ${op}: ${what} failed; last operations:\n${log.slice(-15).join("\n")}`);
              throw error;
            }
            if (error.code === "ENOSPC") refusedForSpace++;
          }
          log.push(what);
        }
        expect(refusedForSpace).toBeGreaterThan(0);
        fs.finishDeletions();
        fs.close();
        expectFsClean(device.reopen());
      });
    });
  }
});
