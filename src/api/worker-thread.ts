// The worker side of `ModelWorker`: loads the model and runs chats sent by the parent thread.
import { parentPort, workerData } from 'node:worker_threads';
import { serializeError, type FromWorker, type ToWorker, type WorkerData } from './worker-protocol.js';
import { VideoLLaMA3 } from './videollama3.js';

const port = parentPort!;
const send = (message: FromWorker) => port.postMessage(message);
const { folder, options, progress } = workerData as WorkerData;
const running = new Map<number, AbortController>();

try {
  const model = await VideoLLaMA3.load(folder, {
    ...options,
    onProgress: progress ? (event) => send({ type: 'load-progress', event }) : undefined,
    onWarning: (message) => send({ type: 'warning', message }),
  });
  port.on('message', (message: ToWorker) => {
    switch (message.type) {
      case 'chat': {
        const abort = new AbortController();
        running.set(message.id, abort);
        const { id } = message;
        const stream = model.chat(message.input, {
          ...message.options,
          signal: abort.signal,
          onProgress: message.progress ? (event) => send({ type: 'progress', id, event }) : undefined,
        });
        void (async () => {
          try {
            for await (const text of stream) send({ type: 'delta', id, text });
            send({ type: 'result', id, result: await stream.result });
          } catch (e) {
            send({ type: 'error', id, error: serializeError(e) });
          } finally {
            running.delete(id);
          }
        })();
        break;
      }
      case 'abort':
        running.get(message.id)?.abort();
        break;
      case 'stats':
        void model.stats().then((stats) => send({ type: 'stats', id: message.id, stats }));
        break;
      case 'close':
        void model.close().then(() => port.close());
        break;
    }
  });
  send({ type: 'ready', info: model.info });
} catch (e) {
  send({ type: 'load-error', error: serializeError(e) });
}
