// The worker side of `TokenizerThread`: rebuilds the prompt encoder from tokenizer.json and encodes long prompts.
import { parentPort, workerData } from 'node:worker_threads';
import { isPlainObject, readJsonFile } from './json-file.js';
import { PromptEncoder, PromptTooLongError } from './prompt-encoder.js';
import type { FromTokenizerWorker, ToTokenizerWorker, TokenizerWorkerData } from './tokenizer-thread.js';

const port = parentPort!;
const { tokenizerFile, config, expected } = workerData as TokenizerWorkerData;

const json = await readJsonFile(tokenizerFile);
if (!isPlainObject(json)) throw new Error(`${tokenizerFile}: not a tokenizers JSON file`);
const encoder = PromptEncoder.fromJson(json, config);
if (JSON.stringify(encoder.summary) !== JSON.stringify(expected)) {
  throw new Error(`${tokenizerFile} has changed since the tokenizer was loaded`);
}

/** Thrown between pieces when the caller has cancelled; never leaves this file. */
const CANCELLED = Symbol('cancelled');

port.on('message', (request: ToTokenizerWorker) => {
  const { id, cancel } = request;
  const send = (message: FromTokenizerWorker, transfer: ArrayBuffer[] = []) => port.postMessage(message, transfer);
  const checkpoint = () => {
    if (Atomics.load(cancel, 0) !== 0) throw CANCELLED;
  };
  try {
    checkpoint();
    const ids = Int32Array.from(encoder.encode(request.text, request, checkpoint));
    send({ id, type: 'ids', ids }, [ids.buffer]);
  } catch (e) {
    if (e === CANCELLED) send({ id, type: 'cancelled' });
    else if (e instanceof PromptTooLongError) send({ id, type: 'too-long' });
    else send({ id, type: 'error', message: e instanceof Error ? e.message : String(e) });
  }
});
