/**
 * Sizes on the command line: plain bytes ("1048576"), or a number with a
 * binary suffix K, M, G, T or P (powers of 1024, as truncate(1) and mkfs do),
 * optionally followed by "iB" or "B" ("4G", "4GiB", "1.5G", "512k").
 * Anything else, and anything that is not a whole number of bytes, is refused.
 */
import { CliError } from "./errors.js";

const suffixPowers: Record<string, number> = { "": 0, K: 1, M: 2, G: 3, T: 4, P: 5 };
const sizePattern = /^(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:(?<=[KMGTP])i?B|B)?$/i;

export function parseSize(text: string): number {
  const match = sizePattern.exec(text.trim());
  const hint = "give bytes or a number with K, M, G or T (powers of 1024), e.g. --size 4G";
  if (match === null) throw new CliError(`invalid size '${text}'`, hint);
  const power = suffixPowers[match[2]!.toUpperCase()]!;
  const bytes = Number(match[1]) * 1024 ** power;
  if (!Number.isSafeInteger(bytes)) {
    throw new CliError(`invalid size '${text}': not a whole number of bytes, or too large`, hint);
  }
  return bytes;
}

/** "1.5 GiB": for summaries; exact byte counts are printed next to it where they matter. */
export function formatSize(bytes: number): string {
  const units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  if (unit === 0) return `${bytes} bytes`;
  return `${value >= 100 ? value.toFixed(0) : value.toFixed(1)} ${units[unit]}`;
}
