/**
 * End to end through the kernel: lz4 compression as the CLI sets it up.
 * `mkfs --compress lz4` makes lz4 the volume's default; `mount -o
 * compress=none|lz4` overrides it for what that mount writes (the option must
 * reach the daemon child). Files are written by child processes; after
 * unmounting, `grovefs fsck -n` must be clean and `grovefs info --json` must
 * show where the bytes went: a compressible file takes a fraction of its size
 * on disk, an incompressible one its full size, and nothing is compressed
 * under compress=none.
 */
import { afterEach, describe, expect, it } from "vitest";
import { E2eVolume, checksums, e2eSkipReason, sh } from "./e2e_helpers.js";

const MiB = 2 ** 20;
const fileBytes = 8 * MiB;

let volume: E2eVolume | null = null;

afterEach(async () => {
  await volume?.cleanup();
  volume = null;
});

interface Info {
  inUse: boolean;
  compression: string;
  usedBytes: number;
  logicalUsedBytes: number;
  compressed: { extents: number; diskBytes: number; logicalBytes: number };
}

async function info(v: E2eVolume): Promise<Info> {
  const report = JSON.parse((await v.groveOk(["info", v.image, "--json"])).stdout) as Info;
  expect(report.inUse).toBe(false);
  return report;
}

/** `grovefs fsck -n` on the unmounted image: exit 0, clean. */
async function fsckClean(v: E2eVolume): Promise<void> {
  const r = await v.grove(["fsck", "-n", v.image]);
  expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
  expect(r.stdout).toMatch(/clean/);
}

/** 8 MiB of repeated text and 8 MiB of /dev/urandom, written under `dir` by child processes. */
async function writeFiles(v: E2eVolume, dir: string): Promise<void> {
  await sh(
    `mkdir -p "$1" && yes 'grovefs compresses file data with lz4, one unit at a time.' | head -c ${fileBytes} > "$1/text" ` +
      `&& dd if=/dev/urandom of="$1/random" bs=1M count=${fileBytes / MiB} status=none`,
    [v.in(dir)],
  );
}

describe.skipIf(e2eSkipReason !== null)("e2e: lz4 compression through a kernel mount", () => {
  it("an lz4 volume stores repeated text in a fraction of its size, random data at full size, and reads both back", async () => {
    const v = (volume = await E2eVolume.create("compress"));
    await v.mkfs("256M", ["--compress", "lz4"]);
    const empty = await info(v);
    expect(empty).toMatchObject({ compression: "lz4", compressed: { extents: 0 } });
    await v.mount();
    await writeFiles(v, "data");
    const written = await checksums(v.in("data"));
    expect(written.size).toBe(2);
    await v.umount();

    await fsckClean(v);
    const after = await info(v);
    expect(after.compression).toBe("lz4");
    const used = after.usedBytes - empty.usedBytes;
    const logical = after.logicalUsedBytes - empty.logicalUsedBytes;
    // Logical: both files whole. Physical: the random file whole, the text in well under a MiB.
    expect(logical).toBeGreaterThanOrEqual(2 * fileBytes);
    expect(used).toBeGreaterThanOrEqual(fileBytes);
    expect(used).toBeLessThan(fileBytes + 2 * MiB);
    expect(after.compressed.extents).toBeGreaterThan(0);
    expect(after.compressed.logicalBytes).toBeGreaterThanOrEqual(fileBytes);
    expect(after.compressed.diskBytes).toBeLessThan(MiB);
    expect(after.logicalUsedBytes - after.usedBytes).toBe(after.compressed.logicalBytes - after.compressed.diskBytes);

    // A fresh mount reads the same bytes (compress= is accepted and ignored with ro).
    await v.mount(["-o", "ro,compress=none"]);
    expect(await checksums(v.in("data"))).toEqual(written);
    await v.finish();
  });

  it("-o compress=none on an lz4 volume writes uncompressed; the volume default and -o compress=lz4 compress again", async () => {
    const v = (volume = await E2eVolume.create("compress-none"));
    await v.mkfs("256M", ["--compress", "lz4"]);
    await v.mount(["-o", "compress=none"]);
    await writeFiles(v, "plain");
    await v.umount();
    await fsckClean(v);
    const plain = await info(v);
    // The mount's override does not change the volume's default.
    expect(plain).toMatchObject({ compression: "lz4", compressed: { extents: 0, diskBytes: 0, logicalBytes: 0 } });
    expect(plain.logicalUsedBytes).toBe(plain.usedBytes);
    expect(plain.usedBytes).toBeGreaterThanOrEqual(2 * fileBytes);

    // Mounted with the volume's default (lz4), new text compresses.
    await v.mount();
    await writeFiles(v, "packed");
    await v.umount();
    const packed = await info(v);
    expect(packed.compressed.extents).toBeGreaterThan(0);
    expect(packed.usedBytes - plain.usedBytes).toBeLessThan(fileBytes + 2 * MiB);
    await fsckClean(v);
    // The text files are the same bytes, stored both ways.
    await v.mount(["-o", "ro"]);
    const [plainSums, packedSums] = [await checksums(v.in("plain")), await checksums(v.in("packed"))];
    expect(plainSums.get("./text")).toMatch(/^[0-9a-f]{64}$/);
    expect(packedSums.get("./text")).toBe(plainSums.get("./text"));
    await v.finish();
  });

  it("-o compress=lz4 compresses on a volume made without compression", async () => {
    const v = (volume = await E2eVolume.create("compress-lz4"));
    await v.mkfs("256M");
    expect((await info(v)).compression).toBe("none");
    await v.mount(["-o", "noatime,compress=lz4"]);
    await writeFiles(v, "data");
    const written = await checksums(v.in("data"));
    await v.umount();
    await fsckClean(v);
    const after = await info(v);
    expect(after.compression).toBe("none");
    expect(after.compressed.extents).toBeGreaterThan(0);
    expect(after.logicalUsedBytes - after.usedBytes).toBeGreaterThan(fileBytes - 2 * MiB);
    await v.mount();
    expect(await checksums(v.in("data"))).toEqual(written);
    await v.finish();
  });
});
