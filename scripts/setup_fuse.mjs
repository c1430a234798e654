#!/usr/bin/env node
// Makes fuse-native usable after a plain `npm install` (run as the root
// package's postinstall; safe to run again by hand at any time).
//
// Why: npm 11 does not run dependencies' install scripts, and fuse-native's
// linux-x64 prebuild needs libfuse.so.2 from the system (no rpath), which a
// machine without the libfuse2 package lacks. The binding also has bugs we fix
// in C rather than work around in JS. So this script:
//
// 1. Patches node_modules/fuse-native (fuse-native.c and index.js) with exact
//    text replacements. Each replacement checks that the text it expects is
//    there exactly once, else the script fails loudly. The pristine files are
//    kept as *.grovefs-orig, so re-running re-derives the same result.
//    - utimens: pass mtime where the original passed atime twice, and pass
//      each time as (seconds, nanoseconds) with tv_nsec untouched, so JS gets
//      full precision and can tell UTIME_NOW / UTIME_OMIT apart. index.js
//      hands handlers `utimens(path, {sec, nsec}, {sec, nsec}, cb)`.
//    - set flag_utime_omit_ok: without it libfuse 2.9 calls utimens only when
//      both times change (so `touch -a`/`touch -m` were silently dropped) and
//      turns UTIME_NOW into the kernel's current time.
//    - getattr/readdir stats: a time travels as int64 seconds + nanoseconds
//      (was uint64 milliseconds), and a stat time may be a bigint of
//      nanoseconds since the epoch besides a Date or a number of ms.
//    - mount: when fuse_new fails (e.g. an unknown option) after the kernel
//      mount succeeded, unmount it and do not leave a live uv_async handle
//      (which kept the process from ever exiting).
//    - caller credentials (level 2): each op notes libfuse's fuse_get_context()
//      uid/gid/pid on its FUSE thread (the context is thread-local there), and
//      the main-thread dispatcher copies them into `Fuse.binding.grovefs_caller`
//      (a Uint32Array [uid, gid, pid]) right before calling the JS handler.
//      Dispatch is sequential, so during a handler's synchronous part the array
//      holds that op's caller. fs/fuse_binding.ts wraps it as callerContext().
//    - exports a patch level (`Fuse.binding.grovefs_patch`) so a stale or
//      unpatched binary is detected (and rebuilt: the patched C source changes).
// 2. Rebuilds the binding with node-gyp against the libfuse 2.9 bundled in
//    fuse-shared-library-linux, linked with rpath $ORIGIN, and copies that
//    library next to it as build/Release/libfuse.so.2. node-gyp-build prefers
//    build/Release over prebuilds/, so require('fuse-native') loads it.
// 3. Verifies in a child process (LD_LIBRARY_PATH cleared) that the binding
//    loads, reports this patch level, and mapped the bundled libfuse.so.2.
//
// When the sources are already patched and the check passes, it does nothing
// (about 0.1 s). Any failure prints one line starting "setup_fuse:" and exits 1.
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import { createRequire } from "node:module";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

const PATCH_LEVEL = 2;
const MARK = "grovefs-patch";
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

class SetupError extends Error {}

// ---- the patches --------------------------------------------------------

const cPatches = [
  {
    what: "patch-level constant",
    from: "static const uint32_t op_rmdir = 33;\n",
    to:
      "static const uint32_t op_rmdir = 33;\n\n" +
      `// ${MARK}: level of the grovefs patch compiled in (scripts/setup_fuse.mjs).\n` +
      `static const uint32_t grovefs_patch = ${PATCH_LEVEL};\n`,
  },
  {
    what: "thread-local timespec slots",
    from: "  size_t atime;\n  size_t mtime;\n",
    to: "  size_t atime;\n  size_t mtime;\n" + `  struct timespec times[2]; // ${MARK}: utimens arguments, untouched\n`,
  },
  {
    what: "stat time decoding",
    from:
      "static void uint32s_to_timespec (struct timespec* ts, uint32_t** ints) {\n" +
      "  uint64_t ms = uint32s_to_uint64(ints);\n" +
      "  ts->tv_sec = ms / 1000;\n" +
      "  ts->tv_nsec = (ms % 1000) * 1000000;\n" +
      "}\n\n" +
      "static uint64_t timespec_to_uint64 (const struct timespec* ts) {\n" +
      "  uint64_t ms = (ts->tv_sec * 1000) + (ts->tv_nsec / 1000000);\n" +
      "  return ms;\n" +
      "}\n",
    to:
      `// ${MARK}: a time is three uint32s: seconds as a two's complement int64\n` +
      "// (low, high), then nanoseconds. The original sent uint64 milliseconds.\n" +
      "static void uint32s_to_timespec (struct timespec* ts, uint32_t** ints) {\n" +
      "  uint64_t bits = uint32s_to_uint64(ints);\n" +
      "  uint32_t nsec = *((*ints)++);\n" +
      "  ts->tv_sec = (time_t) (int64_t) bits;\n" +
      "  ts->tv_nsec = nsec < 1000000000 ? nsec : 999999999;\n" +
      "}\n",
  },
  {
    what: "utimens (atime passed twice; ms precision; UTIME_NOW/OMIT mangled)",
    from:
      "FUSE_METHOD_VOID(utimens, 5, 0, (const char *path, const struct timespec tv[2]), {\n" +
      "  l->path = path;\n" +
      "  l->atime = timespec_to_uint64(&tv[0]);\n" +
      "  l->mtime = timespec_to_uint64(&tv[1]);\n" +
      "}, {\n" +
      "  napi_create_string_utf8(env, l->path, NAPI_AUTO_LENGTH, &(argv[2]));\n" +
      "  FUSE_UINT64_TO_INTS_ARGV(l->atime, 3)\n" +
      "  FUSE_UINT64_TO_INTS_ARGV(l->atime, 5)\n" +
      "})\n",
    to:
      `// ${MARK}: JS gets (path, atimeSec, atimeNsec, mtimeSec, mtimeNsec). tv_nsec is\n` +
      "// passed as is, so UTIME_NOW ((1<<30)-1) and UTIME_OMIT ((1<<30)-2) reach JS.\n" +
      "FUSE_METHOD_VOID(utimens, 5, 0, (const char *path, const struct timespec tv[2]), {\n" +
      "  l->path = path;\n" +
      "  l->times[0] = tv[0];\n" +
      "  l->times[1] = tv[1];\n" +
      "}, {\n" +
      "  napi_create_string_utf8(env, l->path, NAPI_AUTO_LENGTH, &(argv[2]));\n" +
      "  napi_create_int64(env, (int64_t) l->times[0].tv_sec, &(argv[3]));\n" +
      "  napi_create_uint32(env, (uint32_t) l->times[0].tv_nsec, &(argv[4]));\n" +
      "  napi_create_int64(env, (int64_t) l->times[1].tv_sec, &(argv[5]));\n" +
      "  napi_create_uint32(env, (uint32_t) l->times[1].tv_nsec, &(argv[6]));\n" +
      "})\n",
  },
  {
    what: "flag_utime_omit_ok",
    from: "  struct fuse_operations ops = { };\n",
    to:
      "  struct fuse_operations ops = { };\n" +
      `  // ${MARK}: without this flag libfuse 2.9 calls utimens only when both times\n` +
      "  // change (touch -a / touch -m are dropped) and never passes UTIME_NOW/OMIT.\n" +
      "  ops.flag_utime_omit_ok = 1;\n",
  },
  {
    what: "fuse_new failure",
    from: "  struct fuse *fuse = fuse_new(ch, &args, &ops, sizeof(struct fuse_operations), ft);\n",
    to:
      "  struct fuse *fuse = fuse_new(ch, &args, &ops, sizeof(struct fuse_operations), ft);\n\n" +
      `  // ${MARK}: fuse_new fails on an unknown option after the kernel mount\n` +
      "  // succeeded; undo that mount and do not start the async handle (a live\n" +
      "  // handle would keep the event loop, and so the process, alive forever).\n" +
      "  if (fuse == NULL) {\n" +
      "    fuse_unmount(mnt, ch);\n" +
      "    napi_throw_error(env, \"fuse failed\", \"fuse_new failed (an unknown mount option? libfuse said why on stderr)\");\n" +
      "    return NULL;\n" +
      "  }\n",
  },
  {
    what: "patch-level export",
    from: "  NAPI_EXPORT_SIZEOF(fuse_thread_t)\n",
    to: "  NAPI_EXPORT_SIZEOF(fuse_thread_t)\n" + `  NAPI_EXPORT_UINT32(grovefs_patch) // ${MARK}\n`,
  },
  // Caller credentials. fuse_get_context() is thread-local to the FUSE thread
  // running the op, while JS handlers run on the main thread (the op is handed
  // over through a uv_async). So the op entry notes uid/gid/pid in the op's
  // thread locals, and the main-thread dispatcher copies them into a Uint32Array
  // (binding.grovefs_caller) just before calling into JS. Dispatches on the
  // main thread are sequential, so the array always describes the op whose
  // handler is running synchronously. One array per Node environment, found by
  // mounts through napi instance data (so a second environment, e.g. a worker,
  // cannot redirect another's writes).
  {
    what: "per-mount caller array pointer",
    from: "  int mounted;\n",
    to: "  int mounted;\n" + `  uint32_t *caller; // ${MARK}: this environment's grovefs_caller array\n`,
  },
  {
    what: "per-op caller slots",
    from: "  int32_t res;\n",
    to: "  int32_t res;\n" + `  uint32_t caller[3]; // ${MARK}: uid, gid, pid from fuse_get_context()\n`,
  },
  {
    what: "caller capture helper",
    from: "static fuse_thread_locals_t* get_thread_locals();\n",
    to:
      "static fuse_thread_locals_t* get_thread_locals();\n\n" +
      `// ${MARK}: runs on the FUSE thread of the op, where libfuse's context (the\n` +
      "// request's uid, gid and pid) is valid; JS sees it via grovefs_caller.\n" +
      "static void grovefs_note_caller (fuse_thread_locals_t *l) {\n" +
      "  struct fuse_context *fc = fuse_get_context();\n" +
      "  l->caller[0] = (uint32_t) fc->uid;\n" +
      "  l->caller[1] = (uint32_t) fc->gid;\n" +
      "  l->caller[2] = (uint32_t) fc->pid;\n" +
      "}\n",
  },
  {
    what: "caller capture in ops",
    from: "  l->op_fn = fuse_native_dispatch_##name;\\\n",
    to: "  l->op_fn = fuse_native_dispatch_##name;\\\n" + `  grovefs_note_caller(l); /* ${MARK} */\\\n`,
  },
  {
    what: "caller capture in init",
    from: "  l->op_fn = fuse_native_dispatch_init;\n",
    to: "  l->op_fn = fuse_native_dispatch_init;\n" + `  grovefs_note_caller(l); // ${MARK}\n`,
  },
  {
    what: "caller publish before JS",
    from: "  fn(handle, l, ft);\n",
    to:
      `  // ${MARK}: main thread, just before the handler runs: publish its caller.\n` +
      "  if (ft->caller != NULL) memcpy(ft->caller, l->caller, sizeof(l->caller));\n" +
      "  fn(handle, l, ft);\n",
  },
  {
    what: "caller array lookup at mount",
    from: "  ft->env = env;\n",
    to:
      "  ft->env = env;\n" +
      `  // ${MARK}: this environment's grovefs_caller array (set up in NAPI_INIT).\n` +
      "  void *grovefs_caller_data = NULL;\n" +
      "  napi_get_instance_data(env, &grovefs_caller_data);\n" +
      "  ft->caller = (uint32_t *) grovefs_caller_data;\n",
  },
  {
    what: "caller array export",
    from: "  NAPI_EXPORT_FUNCTION(fuse_native_mount)\n",
    to:
      `  // ${MARK}: grovefs_caller, a Uint32Array [uid, gid, pid] of the op whose\n` +
      "  // handler is running; held by a reference so it outlives the exports.\n" +
      "  {\n" +
      "    void *data;\n" +
      "    napi_value ab, arr;\n" +
      "    napi_ref keep;\n" +
      "    NAPI_STATUS_THROWS_VOID(napi_create_arraybuffer(env, 3 * sizeof(uint32_t), &data, &ab))\n" +
      "    memset(data, 0, 3 * sizeof(uint32_t));\n" +
      "    NAPI_STATUS_THROWS_VOID(napi_create_typedarray(env, napi_uint32_array, 3, ab, 0, &arr))\n" +
      "    NAPI_STATUS_THROWS_VOID(napi_create_reference(env, ab, 1, &keep))\n" +
      "    NAPI_STATUS_THROWS_VOID(napi_set_instance_data(env, data, NULL, NULL))\n" +
      "    NAPI_STATUS_THROWS_VOID(napi_set_named_property(env, exports, \"grovefs_caller\", arr))\n" +
      "  }\n\n" +
      "  NAPI_EXPORT_FUNCTION(fuse_native_mount)\n",
  },
];

const jsPatches = [
  {
    what: "_op_utimens",
    from:
      "  _op_utimens (signal, path, atimeLow, atimeHigh, mtimeLow, mtimeHigh) {\n" +
      "    const atime = getDoubleArg(atimeLow, atimeHigh)\n" +
      "    const mtime = getDoubleArg(mtimeLow, mtimeHigh)\n" +
      "    this.ops.utimens(path, atime, mtime, err => {\n",
    to:
      `  // ${MARK}: each time arrives as (seconds, nanoseconds); nanoseconds may be\n` +
      "  // UTIME_NOW (0x3fffffff) or UTIME_OMIT (0x3ffffffe), as libfuse passes them.\n" +
      "  _op_utimens (signal, path, atimeSec, atimeNsec, mtimeSec, mtimeNsec) {\n" +
      "    const atime = { sec: atimeSec, nsec: atimeNsec }\n" +
      "    const mtime = { sec: mtimeSec, nsec: mtimeNsec }\n" +
      "    this.ops.utimens(path, atime, mtime, err => {\n",
  },
  {
    what: "_op_getxattr size query and ERANGE",
    from:
      "        if (!value) return signal(IS_OSX ? -93 : -61, valueBuf.buffer)\n" +
      "        value.copy(valueBuf)\n",
    to:
      "        if (!value) return signal(IS_OSX ? -93 : -61, valueBuf.buffer)\n" +
      `        // ${MARK}: a zero-sized buffer asks for the size; a short one is ERANGE (getxattr(2)).\n` +
      "        if (!valueBuf.length) return signal(value.length, valueBuf.buffer)\n" +
      "        if (value.length > valueBuf.length) return signal(-34, valueBuf.buffer)\n" +
      "        value.copy(valueBuf)\n",
  },
  {
    what: "_op_listxattr ERANGE",
    from:
      "        let ptr = 0\n" +
      "        for (const name of list) {\n",
    to:
      `        // ${MARK}: a buffer too short for the list is ERANGE (listxattr(2)).\n` +
      "        let needed = 0\n" +
      "        for (const name of list) needed += Buffer.byteLength(name) + 1\n" +
      "        if (needed > listBuf.length) return signal(-34, listBuf.buffer)\n" +
      "        let ptr = 0\n" +
      "        for (const name of list) {\n",
  },
  {
    what: "export of the native binding",
    from: "\nmodule.exports = Fuse\n",
    to: `\nFuse.binding = binding // ${MARK}\n\nmodule.exports = Fuse\n`,
  },
  {
    what: "getStatArray times",
    from:
      "  const ints = new Uint32Array(18)\n" +
      "\n" +
      "  ints[0] = (stat && stat.mode) || 0\n",
    to: `  const ints = new Uint32Array(21) // ${MARK}: 3 uint32s per time\n` + "\n" + "  ints[0] = (stat && stat.mode) || 0\n",
  },
  {
    what: "getStatArray time fields",
    from:
      "  setDoubleInt(ints, 12, toDateMS(stat && stat.atime))\n" +
      "  setDoubleInt(ints, 14, toDateMS(stat && stat.mtime))\n" +
      "  setDoubleInt(ints, 16, toDateMS(stat && stat.ctime))\n" +
      "\n" +
      "  return ints\n" +
      "}\n",
    to:
      "  setTimeInts(ints, 12, stat && stat.atime)\n" +
      "  setTimeInts(ints, 15, stat && stat.mtime)\n" +
      "  setTimeInts(ints, 18, stat && stat.ctime)\n" +
      "\n" +
      "  return ints\n" +
      "}\n" +
      "\n" +
      `// ${MARK}: writes a time as int64 seconds (low, high) and nanoseconds.\n` +
      "// t is a bigint (ns since the epoch, exact), a number (ms, fractions kept\n" +
      "// to what a double holds) or a Date; missing (undefined/null) means now.\n" +
      "function setTimeInts (arr, idx, t) {\n" +
      "  if (typeof t === 'bigint') {\n" +
      "    let sec = t / 1000000000n\n" +
      "    let ns = t % 1000000000n\n" +
      "    if (ns < 0n) { ns += 1000000000n; sec -= 1n }\n" +
      "    arr[idx] = Number(BigInt.asUintN(32, sec))\n" +
      "    arr[idx + 1] = Number(BigInt.asUintN(32, sec >> 32n))\n" +
      "    arr[idx + 2] = Number(ns)\n" +
      "    return\n" +
      "  }\n" +
      "  const ms = typeof t === 'number' ? t : (t ? t.getTime() : Date.now())\n" +
      "  const sec = Math.floor(ms / 1000)\n" +
      "  arr[idx] = sec // Uint32Array keeps sec mod 2^32: the low word\n" +
      "  arr[idx + 1] = Math.floor(sec / 4294967296)\n" +
      "  arr[idx + 2] = Math.min(999999999, Math.round((ms - sec * 1000) * 1000000))\n" +
      "}\n",
  },
];

// ---- helpers ------------------------------------------------------------

function applyPatches(file, source, patches) {
  let out = source;
  for (const p of patches) {
    const first = out.indexOf(p.from);
    if (first < 0 || out.indexOf(p.from, first + 1) >= 0) {
      throw new SetupError(
        `${file} does not contain the expected text for "${p.what}" exactly once; ` +
          "this patch is written for fuse-native 2.2.6 (reinstall it: rm -rf node_modules/fuse-native && npm install)",
      );
    }
    out = out.slice(0, first) + p.to + out.slice(first + p.from.length);
  }
  return out;
}

/** Patches `file` in place from its pristine text; returns true if it changed. */
function patchFile(file, patches) {
  const orig = `${file}.grovefs-orig`;
  const current = fs.readFileSync(file, "utf8");
  let pristine;
  if (current.includes(MARK)) {
    if (!fs.existsSync(orig)) {
      throw new SetupError(`${file} is patched but ${path.basename(orig)} is missing; reinstall fuse-native (rm -rf node_modules/fuse-native && npm install)`);
    }
    pristine = fs.readFileSync(orig, "utf8");
  } else {
    pristine = current; // a fresh (re)install: this is the original
  }
  const patched = applyPatches(file, pristine, patches);
  if (patched === current) return false;
  if (pristine === current) fs.writeFileSync(orig, pristine);
  fs.writeFileSync(file, patched);
  return true;
}

/** Loads fuse-native in a fresh process; returns an error string or null. */
function checkLoads(fuseDir, bundledLib) {
  const probe = `
    const Fuse = require(${JSON.stringify(fuseDir)});
    const maps = require("fs").readFileSync("/proc/self/maps", "utf8").split("\\n");
    const find = (s) => (maps.find((l) => l.includes(s)) || "").replace(/^.*? (?=\\/)/, "");
    const caller = Fuse.binding && Fuse.binding.grovefs_caller;
    console.log(JSON.stringify({ level: Fuse.binding && Fuse.binding.grovefs_patch, caller: caller instanceof Uint32Array && caller.length === 3, lib: find("libfuse"), node: find("fuse.node") }));
  `;
  const env = { ...process.env };
  delete env.LD_LIBRARY_PATH;
  delete env.LD_PRELOAD;
  const r = spawnSync(process.execPath, ["-e", probe], { env, encoding: "utf8" });
  if (r.status !== 0) {
    const line = (r.stderr || "").split("\n").find((l) => /Error|error:/.test(l)) || `exit ${r.status}`;
    return `loading fuse-native failed: ${line.trim()}`;
  }
  const got = JSON.parse(r.stdout.trim().split("\n").pop());
  if (got.level !== PATCH_LEVEL) return `fuse-native binary reports patch level ${got.level}, expected ${PATCH_LEVEL}`;
  if (!got.caller) return "fuse-native binary has no grovefs_caller array";
  const wantNode = fs.realpathSync(path.join(fuseDir, "build/Release/fuse.node"));
  if (got.node !== wantNode) return `fuse-native loaded ${got.node || "no fuse.node"}, expected ${wantNode}`;
  if (got.lib !== fs.realpathSync(bundledLib)) return `fuse-native resolved libfuse to ${got.lib || "nothing"}, expected ${bundledLib}`;
  return null;
}

function findNodeGyp() {
  const candidates = [
    process.env.npm_config_node_gyp, // set by npm for lifecycle scripts
    process.env.npm_execpath && path.join(path.dirname(process.env.npm_execpath), "../node_modules/node-gyp/bin/node-gyp.js"),
    path.join(path.dirname(process.execPath), "../lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js"),
    path.join(root, "node_modules/node-gyp/bin/node-gyp.js"),
  ];
  const found = candidates.find((c) => c && fs.existsSync(c));
  if (!found) throw new SetupError("cannot find node-gyp (looked for npm's bundled copy); install npm alongside node");
  return found;
}

function build(fuseDir, libForLink, bundledLib) {
  const args = [findNodeGyp(), "rebuild"];
  // node-gyp gets npm's config (e.g. nodedir) from npm_config_* only when npm
  // runs us; run by hand, point it at the headers installed with this node.
  const headers = path.resolve(path.dirname(process.execPath), "../include/node");
  if (!process.env.npm_config_nodedir && fs.existsSync(path.join(headers, "node_api.h"))) {
    args.push(`--nodedir=${path.dirname(path.dirname(headers))}`);
  }
  // $$ survives make; the single quotes keep the shell from expanding $ORIGIN.
  const ldflags = [process.env.LDFLAGS, "-Wl,-rpath,'$$ORIGIN'"].filter(Boolean).join(" ");
  const log = path.join(fuseDir, "grovefs-build.log");
  const fd = fs.openSync(log, "w");
  const r = spawnSync(process.execPath, args, { cwd: fuseDir, stdio: ["ignore", fd, fd], env: { ...process.env, LDFLAGS: ldflags } });
  fs.closeSync(fd);
  if (r.status !== 0) {
    throw new SetupError(
      `building fuse-native with node-gyp failed (${r.error ? r.error.message : `exit ${r.status}`}); ` +
        `needs python3, make, g++ and the Node headers; log: ${log}`,
    );
  }
  fs.copyFileSync(libForLink, bundledLib);
}

// ---- main ---------------------------------------------------------------

function main() {
  if (process.platform !== "linux") {
    console.log(`setup_fuse: skipped (the FUSE bridge is Linux-only; this is ${process.platform})`);
    return;
  }
  const req = createRequire(path.join(root, "package.json"));
  let fusePkg;
  try {
    fusePkg = req.resolve("fuse-native/package.json");
  } catch {
    throw new SetupError("fuse-native is not installed (run npm install)");
  }
  const fuseDir = path.dirname(fusePkg);
  const version = JSON.parse(fs.readFileSync(fusePkg, "utf8")).version;
  if (version !== "2.2.6") throw new SetupError(`fuse-native ${version} found; the patch is for 2.2.6`);
  if (process.arch !== "x64") throw new SetupError(`fuse-native's bundled libfuse is x86-64 only; this is ${process.arch}`);

  const shared = createRequire(fusePkg)("fuse-shared-library");
  const libForLink = shared.lib; // the bundled libfuse 2.9 (soname libfuse.so.2)
  if (!fs.existsSync(libForLink)) throw new SetupError(`bundled libfuse not found at ${libForLink}`);
  const bundledLib = path.join(fuseDir, "build/Release/libfuse.so.2");

  const changedC = patchFile(path.join(fuseDir, "fuse-native.c"), cPatches);
  const changedJs = patchFile(path.join(fuseDir, "index.js"), jsPatches);

  // A binary older than the C source (say, an interrupted earlier run) is stale.
  const built = path.join(fuseDir, "build/Release/fuse.node");
  const fresh = fs.existsSync(built) && fs.statSync(built).mtimeMs >= fs.statSync(path.join(fuseDir, "fuse-native.c")).mtimeMs;
  if (!changedC && fresh && fs.existsSync(bundledLib) && checkLoads(fuseDir, bundledLib) === null) {
    console.log(`setup_fuse: fuse-native ok (patch level ${PATCH_LEVEL}, bundled libfuse.so.2)${changedJs ? ", index.js patched" : ""}`);
    return;
  }
  const started = Date.now();
  build(fuseDir, libForLink, bundledLib);
  const problem = checkLoads(fuseDir, bundledLib);
  if (problem) throw new SetupError(`after rebuilding: ${problem}`);
  console.log(`setup_fuse: fuse-native patched and rebuilt against its bundled libfuse.so.2 in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}

try {
  main();
} catch (err) {
  const msg = err instanceof SetupError ? err.message : `unexpected error: ${(err && err.message) || err}`;
  console.error(`setup_fuse: ${msg}`);
  process.exit(1);
}
