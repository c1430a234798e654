/**
 * The compression names the CLI accepts, for `mkfs --compress` (the volume's
 * default for new writes) and `mount -o compress=` (an override for one
 * mount), as GroveFs.format and GroveFs.open take them. Anything else is
 * refused with the accepted values named.
 */
import { type CompressionName, compressionNames } from "../fs/index.js";
import { printable } from "./control.js";
import { CliError } from "./errors.js";

export { compressionNames, type CompressionName };

export function isCompressionName(value: string): value is CompressionName {
  return (compressionNames as readonly string[]).includes(value);
}

/** `value` as a compression name; `spelled(name)` says how the user writes it, for the hint. */
export function parseCompression(value: string, what: string, spelled: (name: string) => string): CompressionName {
  if (isCompressionName(value)) return value;
  const shown = value === "" ? "''" : `'${printable(value)}'`;
  throw new CliError(`unknown compression ${shown} for ${what}`, `accepted: ${compressionNames.map(spelled).join(", ")}`);
}
