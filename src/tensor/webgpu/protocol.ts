/**
 * The messages between the backend's proxy (on the model's thread) and the device thread. The proxy records commands
 * into a batch and sends it in one message; the device thread runs a batch as one command buffer, one submit, and
 * answers every batch (an error, or the bytes a batch ending in a read asked for). Buffers are named by ids the proxy
 * hands out, so a batch can create a buffer and use it before the device thread has seen it.
 */
import type { MessagePort } from 'node:worker_threads';
export type Command =
  /** A zero-filled buffer, or one holding `data` (an upload: written while mapped at creation, no staging copy). */
  | { op: 'create'; id: number; size: number; data?: Uint8Array }
  /** Freed after the batch's submit (so a batch may use a buffer and then free it). */
  | { op: 'destroy'; id: number }
  /** Bytes at a 4-aligned offset, a multiple of 4 long (the proxy turns other writes into a copy kernel). */
  | { op: 'write'; id: number; offset: number; data: Uint8Array }
  /** A transfer between two buffers: offsets and size multiples of 4, src ≠ dst (else the proxy uses a kernel). */
  | { op: 'copy'; src: number; srcOffset: number; dst: number; dstOffset: number; size: number }
  | {
      op: 'dispatch';
      key: string;
      /** Sent the first time a key is used: the device thread caches the pipeline by key. */
      wgsl?: string;
      entryPoint: string;
      buffers: [id: number, write: boolean][];
      uniforms: Uint32Array;
      workgroups: [number, number, number];
    }
  /** The batch's last command when present: bytes [offset, offset + size) come back in the answer. */
  | { op: 'read'; id: number; offset: number; size: number }
  /** After the batch: destroys the device (its memory is freed at once); the device is lost from then on. */
  | { op: 'destroy-device' };

export interface Batch {
  seq: number;
  commands: Command[];
}

export interface Answer {
  seq: number;
  error?: { code: string; message: string };
  data?: ArrayBuffer;
  /** The first answer (seq 0): the adapter the device thread opened. */
  adapter?: unknown;
  /** The first answer in 'list' mode: every adapter found. */
  adapters?: unknown[];
}

/** Words of the shared control block. */
export const SIGNAL = 0;
export const LOST = 1;
export const CONTROL_WORDS = 2;

export interface DeviceThreadData {
  control: SharedArrayBuffer;
  port: MessagePort;
  /** Refuse a software adapter (--device auto): the device thread answers 'no-adapter' instead of opening it. */
  hardwareOnly: boolean;
  /** 'list': answer with the adapters found, open nothing. */
  mode: 'open' | 'list';
}
