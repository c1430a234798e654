/**
 * grovefs, formatted and mounted with its own CLI (the one place to adjust
 * if the CLI changes): `grovefs mkfs IMG --size BYTES`, then
 * `grovefs mount IMG MNT -f`, served in the foreground by a child of the
 * bench and stopped with SIGTERM (it commits and unmounts).
 *
 * Three targets, one per FUSE transport:
 *   grovefs              whatever `grovefs mount` does by default;
 *   grovefs-fuse-native  `-o transport=fuse-native` (libfuse 2.9 through
 *                        fuse-native);
 *   grovefs-kernel       `-o transport=kernel` (the kernel protocol spoken
 *                        directly), not in the default sweep: once it is the
 *                        default, `grovefs` measures it.
 * The option is passed only when it is not the default, and the CLI is asked
 * first (`mount --help`) whether it takes `transport=` at all: before the
 * kernel transport lands it does not, fuse-native is then the only transport
 * (so grovefs-fuse-native measures the same thing as grovefs, a check of the
 * noise), and grovefs-kernel is skipped.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { isRoot, repoRoot, run, runOk, tsNode } from "../proc.js";
import { ServerMount } from "../server.js";
import { TargetUnavailable, type Mounted, type Target, type TargetEnv } from "../target.js";

export const grovefsCli = path.join(repoRoot, "cli", "main.ts");
const mkfsTimeoutMs = 300_000;
const helpTimeoutMs = 60_000;

type Transport = "kernel" | "fuse-native";

interface TransportSupport {
  /** Whether `grovefs mount` takes `-o transport=`. */
  accepted: boolean;
  /** What a mount without the option uses. */
  defaultTransport: Transport;
}

let support: Promise<TransportSupport> | undefined;

/** Asks `grovefs mount --help` once whether it lists a transport option. */
export function transportSupport(): Promise<TransportSupport> {
  support ??= (async () => {
    const r = await run([...tsNode, grovefsCli, "mount", "--help"], { timeoutMs: helpTimeoutMs });
    const accepted = /\btransport\b/.test(r.stdout + r.stderr);
    // The kernel transport is the default as root once it exists; fuse-native is the only one before.
    return { accepted, defaultTransport: accepted && isRoot ? "kernel" : "fuse-native" };
  })();
  return support;
}

export async function grovefsMkfs(img: string, imageBytes: number, compress?: "lz4" | "none", metadata?: "single" | "dup"): Promise<void> {
  if (!fs.existsSync(grovefsCli)) throw new Error(`${path.relative(repoRoot, grovefsCli)} does not exist`);
  const argv = [
    ...tsNode,
    grovefsCli,
    "mkfs",
    img,
    "--size",
    String(imageBytes),
    ...(compress ? ["--compress", compress] : []),
    ...(metadata ? ["--metadata", metadata] : []),
  ];
  await runOk(argv, { timeoutMs: mkfsTimeoutMs });
}

/** `grovefs info --json` of an unmounted image. */
export async function grovefsInfo(img: string): Promise<string> {
  return (await runOk([...tsNode, grovefsCli, "info", img, "--json"], { timeoutMs: mkfsTimeoutMs })).stdout;
}

/** An image at dir/grovefs.img, served at dir/mnt with `mountOptions` (e.g. ["transport=kernel"]). Not mounted yet. */
export function grovefsMount(name: string, dir: string, mountOptions: string[]): ServerMount & { img: string } {
  const img = path.join(dir, "grovefs.img");
  const mnt = path.join(dir, "mnt");
  const options = mountOptions.length > 0 ? ["-o", mountOptions.join(",")] : [];
  const mount = new ServerMount(name, mnt, true, [...tsNode, grovefsCli, "mount", img, mnt, "-f", ...options], path.join(dir, "server.log"), () =>
    fs.rmSync(img, { force: true }),
  );
  return Object.assign(mount, { img });
}

/** `metadata`: mkfs --metadata (unset: mkfs's default), so that single and dup are compared in one sweep. */
function grovefsTarget(name: string, transport: Transport | null, metadata?: "single" | "dup"): Target {
  let options: string[] = [];
  let note = "";
  return {
    name,
    describe: () => `grovefs mkfs${metadata ? ` --metadata ${metadata}` : ""} + mount -f${options.length > 0 ? ` -o ${options.join(",")}` : ""}${note}`,
    prepare: async () => {
      const s = await transportSupport();
      if (transport === null) {
        note = ` (default transport: ${s.defaultTransport}${s.accepted ? "" : "; the CLI has no -o transport= yet"})`;
        return null;
      }
      if (!s.accepted) {
        if (transport === "kernel") return "the CLI does not take -o transport= yet (mount --help lists none): the kernel transport has not landed";
        note = " (the CLI has no -o transport= yet: fuse-native is its only transport, so this is grovefs again, a check of the noise)";
        return null;
      }
      options = transport === s.defaultTransport ? [] : [`transport=${transport}`];
      note = options.length > 0 ? "" : ` (${transport} is the default)`;
      return null;
    },
    setup: async (env: TargetEnv, dir: string): Promise<Mounted> => {
      const mount = grovefsMount(name, dir, options);
      await grovefsMkfs(mount.img, env.imageBytes, undefined, metadata);
      try {
        await mount.mount();
      } catch (err) {
        await mount.teardown();
        const text = err instanceof Error ? err.message : String(err);
        if (options.length > 0 && /unknown mount option/i.test(text) && /transport/.test(text)) {
          throw new TargetUnavailable(`grovefs refused -o ${options.join(",")}: ${text}`);
        }
        throw err;
      }
      return mount;
    },
  };
}

export const grovefs = grovefsTarget("grovefs", null);
export const grovefsFuseNative = grovefsTarget("grovefs-fuse-native", "fuse-native");
export const grovefsKernel = grovefsTarget("grovefs-kernel", "kernel");
/** Not in the default sweep: `--targets grovefs-single,grovefs-dup` measures what duplicate metadata costs. */
export const grovefsSingle = grovefsTarget("grovefs-single", null, "single");
export const grovefsDup = grovefsTarget("grovefs-dup", null, "dup");
