#!/usr/bin/env node
// Fails when a layer imports a layer above it. Order, top to bottom:
// cli -> fs -> snapshot -> alloc -> kvstore. test/ and scripts/ may import anything.
import * as fs from "node:fs";
import * as path from "node:path";

const layers = ["kvstore", "alloc", "snapshot", "fs", "cli"];
const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), "..");
const importPattern = /(?:import|export)\s[^'"]*?from\s*["']([^"']+)["']|import\(\s*["']([^"']+)["']\s*\)|^\s*import\s*["']([^"']+)["']/gm;

function* sourceFiles(dir) {
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) yield* sourceFiles(full);
    else if (/\.(ts|mts|js|mjs)$/.test(entry.name)) yield full;
  }
}

const violations = [];
let checked = 0;
for (const [rank, layer] of layers.entries()) {
  const dir = path.join(root, layer);
  if (!fs.existsSync(dir)) continue;
  for (const file of sourceFiles(dir)) {
    checked++;
    const text = fs.readFileSync(file, "utf8");
    for (const match of text.matchAll(importPattern)) {
      const spec = match[1] ?? match[2] ?? match[3];
      if (!spec.startsWith(".")) continue;
      const target = path.relative(root, path.resolve(path.dirname(file), spec)).split(path.sep)[0];
      const targetRank = layers.indexOf(target);
      if (targetRank > rank) violations.push(`${path.relative(root, file)} imports ${spec} (${layer} must not import ${target})`);
    }
  }
}
if (violations.length > 0) {
  console.error(`layering violations (imports must point down: ${[...layers].reverse().join(" -> ")}):`);
  for (const v of violations) console.error(`  ${v}`);
  process.exit(1);
}
console.log(`layers ok: ${checked} files, imports point down (${[...layers].reverse().join(" -> ")})`);
