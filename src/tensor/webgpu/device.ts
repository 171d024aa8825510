/**
 * The synchronous side of the device thread: the Backend interface returns values (download, argmax, topK) while
 * WebGPU in Node only resolves promises, so the model's thread records commands into a batch, sends it at a sync
 * point (or when it grows large) and blocks on a shared word until the device thread answers. Errors of the device
 * thread (validation, out of memory, a lost device) surface as WebGpuErrors at the next sync point.
 */
import { MessageChannel, receiveMessageOnPort, Worker, type MessagePort } from 'node:worker_threads';
import type { KernelDispatch } from './dispatch.js';
import { WebGpuError, type AdapterSummary, type WebGpuErrorCode } from './errors.js';
import { CONTROL_WORDS, LOST, SIGNAL, type Answer, type Command, type DeviceThreadData } from './protocol.js';

export interface DeviceOptions {
  /** Refuse a software adapter (the 'no-adapter' error) instead of opening it. */
  hardwareOnly?: boolean;
  /** Longest wait for one answer of the device thread, in ms (default 10 minutes: a large upload on a slow device). */
  timeoutMs?: number;
}

/** A batch is sent without waiting once it holds this many bytes of data or commands. */
const FLUSH_BYTES = 32 * 2 ** 20;
const FLUSH_COMMANDS = 2048;
/** Batches in flight before the proxy waits for the oldest: bounds the memory of data not yet on the device. */
const MAX_IN_FLIGHT = 4;

/**
 * Devices not yet closed. Terminating a device thread while Dawn is busy (a batch in flight when the program calls
 * process.exit) aborts the process inside Dawn's Node binding, so at exit each is closed first: its pending batches
 * run, its device is destroyed, and only then its thread ends.
 */
const openDevices = new Set<WebGpuDevice>();
let exitHook = false;

export class WebGpuDevice {
  readonly adapter: AdapterSummary;
  private readonly found: AdapterSummary[];
  /** Reads so far: each is a wait for the device (tests check that only what must sync does). */
  readbacks = 0;
  private readonly worker: Worker;
  private readonly port: MessagePort;
  private readonly words: Int32Array;
  private readonly timeoutMs: number;
  private commands: Command[] = [];
  private transfers: ArrayBuffer[] = [];
  private pendingBytes = 0;
  private nextSeq = 1;
  /** Answers not yet received: the seq of each batch sent. */
  private readonly inFlight = new Set<number>();
  private readonly answers = new Map<number, Answer>();
  private failure: WebGpuError | null = null;
  private readonly knownKeys = new Set<string>();
  private nextBuffer = 1;
  private closed = false;

  private constructor(options: DeviceOptions, mode: 'open' | 'list' = 'open') {
    this.timeoutMs = options.timeoutMs ?? 600_000;
    const control = new SharedArrayBuffer(CONTROL_WORDS * 4);
    this.words = new Int32Array(control);
    const { port1, port2 } = new MessageChannel();
    this.port = port1;
    const data: DeviceThreadData = { control, port: port2, hardwareOnly: options.hardwareOnly === true, mode };
    // The device thread runs one file of ours: none of the program's own flags (--input-type, loaders) apply to it.
    this.worker = new Worker(new URL('./device-thread.js', import.meta.url), { workerData: data, transferList: [port2], execArgv: [] });
    // A thread that fails later is heard when the program next waits: its error becomes the device's.
    this.worker.on('error', (e) => {
      this.failure ??= new WebGpuError('device-lost', `the WebGPU device thread failed: ${e.message}`);
    });
    // The device thread must not keep a finished program alive; the port is only ever read synchronously.
    this.worker.unref();
    this.port.unref();
    this.inFlight.add(0);
    let first: Answer;
    try {
      first = this.wait(0, 120_000);
    } catch (e) {
      void this.worker.terminate();
      throw e;
    }
    this.adapter = first.adapter as AdapterSummary;
    this.found = (first.adapters as AdapterSummary[] | undefined) ?? [];
    openDevices.add(this);
    if (!exitHook) {
      exitHook = true;
      process.on('exit', () => {
        for (const device of openDevices) device.close();
      });
    }
  }

  /** The adapters this machine offers (none where WebGPU finds none), the one a device opens on first. */
  static list(): AdapterSummary[] {
    const probe = new WebGpuDevice({}, 'list');
    probe.close();
    return probe.found;
  }

  /** Starts the device thread and waits (blocking) until it has a device or has failed. */
  static open(options: DeviceOptions = {}): WebGpuDevice {
    return new WebGpuDevice(options);
  }

  newBufferId(): number {
    return this.nextBuffer++;
  }

  /** Records a command; `data` buffers are moved to the device thread (callers pass copies they own). */
  enqueue(command: Command): void {
    this.assertOpen();
    this.commands.push(command);
    if ('data' in command && command.data) {
      this.pendingBytes += command.data.byteLength;
      this.transfers.push(command.data.buffer as ArrayBuffer);
    }
    if (command.op === 'dispatch') this.pendingBytes += command.uniforms.byteLength;
    if (this.pendingBytes >= FLUSH_BYTES || this.commands.length >= FLUSH_COMMANDS) this.flush();
  }

  dispatch(dispatches: readonly KernelDispatch[]): void {
    for (const d of dispatches) {
      const fresh = !this.knownKeys.has(d.key);
      if (fresh) this.knownKeys.add(d.key);
      this.enqueue({
        op: 'dispatch',
        key: d.key,
        wgsl: fresh ? d.wgsl() : undefined,
        entryPoint: d.entryPoint ?? 'main',
        buffers: d.buffers.map((b) => [b.buffer.id, b.write]),
        uniforms: Uint32Array.from(d.uniforms),
        workgroups: [...d.workgroups],
      });
    }
  }

  /** Bytes [offset, offset + size) of a buffer after everything recorded so far: a sync point. */
  read(id: number, offset: number, size: number): ArrayBuffer {
    this.readbacks++;
    this.enqueue({ op: 'read', id, offset, size });
    const seq = this.flush()!;
    // Batches run in order: when this one is answered, the earlier ones are too (and their errors received).
    const data = this.wait(seq, this.timeoutMs).data!;
    this.drain();
    return data;
  }

  /** Sends what is recorded and waits until the device thread has run all of it: errors surface here. */
  sync(): void {
    this.flush();
    this.drain();
  }

  /** Ends the device thread (buffers and pipelines go with it); the device is unusable afterwards. */
  close(): void {
    if (this.closed) return;
    openDevices.delete(this);
    // Destroying the device frees its memory now, rather than when the thread's heap goes.
    try {
      this.commands = [{ op: 'destroy-device' }];
      this.transfers = [];
      const seq = this.flush();
      if (seq !== null) this.wait(seq, 60_000);
    } catch {
      // Closing a device that failed or was lost: nothing left to free.
    }
    this.closed = true;
    this.commands = [];
    void this.worker.terminate();
  }

  /** Sends the recorded batch without waiting for it; returns its seq (null when nothing was recorded). */
  private flush(): number | null {
    if (this.commands.length === 0) return null;
    while (this.inFlight.size >= MAX_IN_FLIGHT) this.wait(Math.min(...this.inFlight), this.timeoutMs);
    const seq = this.nextSeq++;
    this.port.postMessage({ seq, commands: this.commands }, this.transfers);
    this.inFlight.add(seq);
    this.commands = [];
    this.transfers = [];
    this.pendingBytes = 0;
    return seq;
  }

  /** Waits for every batch in flight. */
  private drain(): void {
    while (this.inFlight.size > 0) this.wait(Math.min(...this.inFlight), this.timeoutMs);
  }

  /** Blocks until batch `seq` is answered; throws its error, or the first error of the device since the last one. */
  private wait(seq: number, timeoutMs: number): Answer {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const signal = Atomics.load(this.words, SIGNAL);
      for (let m = receiveMessageOnPort(this.port); m; m = receiveMessageOnPort(this.port)) this.receive(m.message as Answer);
      if (!this.inFlight.has(seq)) {
        const answer = this.answers.get(seq) ?? { seq };
        this.answers.delete(seq);
        this.throwFailure();
        return answer;
      }
      if (Atomics.load(this.words, LOST) === 1 || this.failure?.code === 'device-lost') {
        this.failure ??= new WebGpuError('device-lost', `the WebGPU device "${this.adapter?.name ?? 'unknown'}" was lost`);
        this.throwFailure();
      }
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new WebGpuError('timeout', `the WebGPU device thread did not answer within ${Math.round(timeoutMs / 1000)} s (adapter "${this.adapter?.name ?? 'not yet open'}")`);
      }
      Atomics.wait(this.words, SIGNAL, signal, Math.min(left, 1000));
    }
  }

  private receive(answer: Answer): void {
    if (answer.error) this.failure ??= new WebGpuError(answer.error.code as WebGpuErrorCode, this.describe(answer.error.message, answer));
    if (answer.seq < 0) return;
    this.inFlight.delete(answer.seq);
    // Only a read's bytes and the adapter are asked for; an error of a batch nobody waits for (it was sent for its
    // size) is thrown at the next wait.
    if (answer.data || answer.adapter || answer.adapters) this.answers.set(answer.seq, answer);
  }

  private throwFailure(): void {
    const f = this.failure;
    if (!f) return;
    if (f.code !== 'device-lost') this.failure = null;
    throw f;
  }

  private describe(message: string, answer: Answer): string {
    const adapter = (this.adapter ?? (answer.adapter as AdapterSummary | undefined))?.name;
    return adapter && !message.includes(adapter) ? `${message} (WebGPU adapter "${adapter}")` : message;
  }

  private assertOpen(): void {
    if (this.closed) throw new WebGpuError('device-lost', 'the WebGPU device was closed');
  }
}
