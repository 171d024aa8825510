// `vl3 serve`: the OpenAI-compatible server, with the model in a worker thread so connections are served meanwhile.
import { basename, resolve } from 'node:path';
import type { ModelWorker } from '../api/model-worker.js';
import { parseModelRef } from '../hub/index.js';
import { startServer, type RunningServer, type ServerOptions } from '../server/server.js';

export interface ServeSettings extends Omit<ServerOptions, 'model' | 'modelId'> {
  modelId?: string;
}

/** The name clients send as `model`: the hub id as given, or the folder's name. */
export function defaultModelId(ref: string, folder: string): string {
  try {
    if (resolve(ref) !== resolve(folder)) return parseModelRef(ref).repoId;
  } catch {
    // not a hub id: a folder
  }
  return basename(resolve(folder));
}

/** Serves a loaded model until SIGINT or SIGTERM, then closes connections and the worker. */
export async function serve(ref: string, model: ModelWorker, maxActiveRequests: number | undefined, settings: ServeSettings): Promise<void> {
  const modelId = settings.modelId ?? defaultModelId(ref, model.folder);
  let server: RunningServer;
  try {
    server = await startServer({ ...settings, model, modelId, maxConcurrentRequests: maxActiveRequests });
  } catch (e) {
    // The worker thread would keep the process alive after the error is printed.
    await model.close();
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EADDRINUSE') throw new Error(`cannot listen on ${settings.host ?? '127.0.0.1'}:${settings.port}: the port is in use`, { cause: e });
    if (code === 'EACCES') throw new Error(`cannot listen on ${settings.host ?? '127.0.0.1'}:${settings.port}: permission denied`, { cause: e });
    throw e;
  }
  process.stderr.write(`vl3: serving ${modelId} at ${server.url} (OpenAI API at ${server.url}/v1, chat page at ${server.url}/)\n`);
  await new Promise<void>((done) => {
    const stop = () => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      done();
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
  process.stderr.write('vl3: shutting down\n');
  await server.close();
  await model.close();
}
