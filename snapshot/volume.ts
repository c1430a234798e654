/**
 * The open volume: the single place where the device, the store, the
 * allocator, the reference counts and the subvolume table are wired
 * together. mkfs, mount, fsck and the tests all open a volume through here;
 * the filesystem passes in which of its records hold block pointers.
 */
import { BlockDevice, EdgeReader, FormatOptions, Store, StoreOptions, Tree } from "../kvstore/index.js";
import { FreeSpace, type SpaceOptions, formatVolume as formatSpace, openVolume as openSpace } from "../alloc/index.js";
import { Refcounts } from "./refcounts.js";
import { Subvolumes } from "./subvolumes.js";
import { treeIdRefcounts, treeIdSubvolumes } from "./format.js";
import { GroveError } from "../kvstore/index.js";

export interface Volume {
  store: Store;
  space: FreeSpace;
  refcounts: Refcounts;
  subvolumes: Subvolumes;
}

export interface VolumeOptions extends StoreOptions, SpaceOptions {
  edges?: EdgeReader;
}

function sharing(): { refcounts: Refcounts; attach: (store: Store) => Subvolumes } {
  let store: Store | null = null;
  let subvolumes: Subvolumes | null = null;
  const refcounts = new Refcounts(
    () => store!,
    (id) => subvolumes?.lastSnapshotOf(id),
    () => subvolumes?.forgetCache(),
  );
  return {
    refcounts,
    attach: (s) => {
      store = s;
      subvolumes = new Subvolumes(s);
      return subvolumes;
    },
  };
}

/**
 * Formats `device` with the snapshot layer's trees and an empty default
 * subvolume, whose tree is returned for the caller to fill and commit.
 */
export function formatVolume(
  device: BlockDevice,
  options: FormatOptions & VolumeOptions & { nowNs: bigint },
): Volume & { defaultTree: Tree } {
  const s = sharing();
  const { store, space } = formatSpace(device, { ...options, sharing: s.refcounts });
  const subvolumes = s.attach(store);
  Refcounts.create(store);
  const defaultTree = Subvolumes.format(store, options.nowNs);
  return { store, space, refcounts: s.refcounts, subvolumes, defaultTree };
}

export function openVolume(device: BlockDevice, options: VolumeOptions = {}): Volume {
  const s = sharing();
  const { store, space } = openSpace(device, { ...options, sharing: s.refcounts });
  try {
    if (!store.hasTree(treeIdRefcounts) || !store.hasTree(treeIdSubvolumes)) {
      throw new GroveError("EINVAL", "EINVAL_no_filesystem", "the volume holds no filesystem (no refcount tree or subvolume table)");
    }
  } catch (error) {
    store.close();
    throw error;
  }
  return { store, space, refcounts: s.refcounts, subvolumes: s.attach(store) };
}
