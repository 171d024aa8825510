// The worker side of `compareWeights`: one load's pass over the prompts; the thread's exit frees the model.
import { parentPort, workerData } from 'node:worker_threads';
import { runComparePass, type PassMessage, type PassRequest } from './compare-weights.js';
import { serializeError } from './worker-protocol.js';

const send = (message: PassMessage) => parentPort!.postMessage(message);
try {
  send({ type: 'done', result: await runComparePass(workerData as PassRequest, send) });
} catch (e) {
  send({ type: 'error', error: serializeError(e) });
}
