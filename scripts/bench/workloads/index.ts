/**
 * Every workload, in the order the jobs run them: within a group, each one
 * starts from what the ones before it left (see workload.ts).
 */
import type { Workload } from "../workload.js";
import { cpA } from "./cp_a.js";
import { du } from "./du.js";
import { randRead, randWrite, seqRead, seqWrite } from "./fio.js";
import { find } from "./find.js";
import { gitClone } from "./git_clone.js";
import { gitStatus } from "./git_status.js";
import { create, stat, unlink } from "./meta.js";
import { rmRf } from "./rm_rf.js";
import { tar } from "./tar.js";

export const workloads: readonly Workload[] = [
  seqWrite,
  seqRead,
  randRead,
  randWrite,
  create,
  stat,
  unlink,
  cpA,
  tar,
  du,
  find,
  rmRf,
  gitClone,
  gitStatus,
];
