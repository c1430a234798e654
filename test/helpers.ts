/**
 * Shared test machinery: a model of a forest of trees (Maps), replayable
 * seeds, and the checkers every mutating test runs at the end.
 */
import { expect } from "vitest";
import { BlockDevice, Store, Tree, blockSizeBytes, type ForestReport } from "../kvstore/index.js";
import { FreeSpace, checkSpace } from "../alloc/index.js";

/**
 * GROVE_METADATA=dup runs the randomised suites on volumes with duplicate
 * metadata (mkfs --metadata dup); unset, they use the default.
 */
export const testMetadata: "single" | "dup" | undefined =
  process.env.GROVE_METADATA === "dup" ? "dup" : process.env.GROVE_METADATA === "single" ? "single" : undefined;

/** Seeds for a randomised suite: GROVE_SEED replays one, otherwise the defaults. */
export function seeds(defaults: number[]): number[] {
  const replay = process.env.GROVE_SEED;
  return replay ? [Number(replay)] : defaults;
}

/** Runs `body`; if it throws, the error names the seed and the command that replays it. */
export function withSeed<T>(seed: number, testFile: string, body: () => T): T {
  try {
    return body();
  } catch (error) {
    const message = `seed ${seed} failed; replay with: GROVE_SEED=${seed} npx vitest run ${testFile}`;
    console.error(message);
    if (error instanceof Error) error.message = `${message}\n${error.message}`;
    throw error;
  }
}

/** `withSeed` for a body that awaits (say, to let background work land between operations). */
export async function withSeedAsync<T>(seed: number, testFile: string, body: () => Promise<T>): Promise<T> {
  try {
    return await body();
  } catch (error) {
    return withSeed(seed, testFile, () => {
      throw error;
    });
  }
}

export type TreeModel = Map<string, Buffer>;
export type ForestModel = Map<number, TreeModel>;

export function cloneForest(model: ForestModel): ForestModel {
  const copy: ForestModel = new Map();
  for (const [id, tree] of model) copy.set(id, new Map(tree));
  return copy;
}

/** The tree holds exactly the model, in order, read forward and backward. */
export function expectTreeEquals(tree: Tree, model: TreeModel): void {
  const keys = [...model.keys()].sort();
  const forward: string[] = [];
  for (const [key, value] of tree.range()) {
    const hex = key.toString("hex");
    forward.push(hex);
    const expected = model.get(hex);
    if (expected === undefined || !expected.equals(value)) {
      throw new Error(`tree ${tree.id}: key ${hex} holds ${value.toString("hex")}, model says ${expected?.toString("hex")}`);
    }
  }
  expect(forward).toEqual(keys);
  const backward: string[] = [];
  for (const [key] of tree.range({ reverse: true })) backward.push(key.toString("hex"));
  expect(backward).toEqual(keys.slice().reverse());
  expect(tree.count).toBe(model.size);
}

export function expectForestEquals(store: Store, model: ForestModel): void {
  const ids = store.treeIds().filter((id) => id >= 256);
  expect(ids).toEqual([...model.keys()].sort((a, b) => a - b));
  for (const [id, treeModel] of model) expectTreeEquals(store.openTree(id), treeModel);
}

/** Both checkers over the committed state on the device, plus the allocator against its trees. */
export function expectClean(device: BlockDevice, space?: FreeSpace): void {
  const report = checkSpace(device);
  if (report.problems.length > 0) throw new Error(`checkers found problems:\n${report.problems.slice(0, 20).join("\n")}`);
  if (space !== undefined) {
    expect(report.free).toEqual(space.targetExtents());
    expect(space.usage().freeBlocks).toBe(report.freeBlocks);
    expect(space.usage().usedBlocks).toBe(report.forest.reachableBlocks + report.forest.reservedBlocks + 2);
  }
}

/** A reachable tree node found on the device: where it is, whose it is, how high. */
export interface NodeInfo {
  lba: number;
  owner: number;
  level: number;
}

/**
 * The reachable blocks of `forest` whose header (the layout table at the top
 * of kvstore/node.ts, read here from the bytes, not through the module) is a
 * node's: what damage tests aim at, by owner and level.
 */
export function reachableNodes(device: BlockDevice, forest: ForestReport): NodeInfo[] {
  const nodeMagic = Buffer.from("GRVN", "latin1");
  const nodeOwnerOffset = 24;
  const nodeLevelOffset = 32;
  const nodes: NodeInfo[] = [];
  const block = Buffer.alloc(blockSizeBytes);
  for (let lba = 0; lba < forest.deviceBlocks; lba++) {
    if (!forest.reachable.get(lba)) continue;
    device.read(lba, block);
    if (!block.subarray(0, 4).equals(nodeMagic)) continue;
    nodes.push({ lba, owner: Number(block.readBigUInt64LE(nodeOwnerOffset)), level: block[nodeLevelOffset]! });
  }
  return nodes;
}
