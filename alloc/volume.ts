/**
 * The open volume: the single place where a device, the store and the
 * allocator are wired together. mkfs, mount, fsck and the tests all go
 * through here (the snapshot layer will add reference counts at this point).
 */
import { BlockDevice, FormatOptions, SpaceProvider, Store, StoreOptions } from "../kvstore/index.js";
import { FreeSpace } from "./free_space.js";
import type { Extent } from "./extent_set.js";

export interface Volume {
  store: Store;
  space: FreeSpace;
}

export interface SpaceOptions extends StoreOptions {
  /** The free set to start from instead of the free-space trees (fsck's salvage of damaged ones: `FreeSpace.given`). */
  freeSpace?: readonly Extent[];
}

function provider(free?: readonly Extent[]): { provider: SpaceProvider; space: () => FreeSpace } {
  let space: FreeSpace | null = null;
  return {
    provider: {
      format: (store) => (space = FreeSpace.format(store)),
      open: (store) => (space = free === undefined ? FreeSpace.open(store) : FreeSpace.given(store, free)),
    },
    space: () => space!,
  };
}

export function formatVolume(device: BlockDevice, options: FormatOptions = {}): Volume {
  const p = provider();
  const store = Store.format(device, p.provider, options);
  return { store, space: p.space() };
}

export function openVolume(device: BlockDevice, options: SpaceOptions = {}): Volume {
  const p = provider(options.freeSpace);
  const store = Store.open(device, p.provider, options);
  return { store, space: p.space() };
}
