/** Send and receive: snapshots as streams (fs/send/stream_format.ts), full or incremental. */
export * from "./stream_format.js";
export { sendSnapshot, startSend, type SendOptions, type SendRun, type SendSummary } from "./sender.js";
export { ReceivePush, receiveStream, resumeTokenOf, partialNameFor, type ReceiveOptions, type ReceiveSummary } from "./receiver.js";
export { findChanges, type Changes, type NameChange } from "./changes.js";
