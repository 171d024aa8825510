// A `vl3 serve` child process and a streaming client for it, shared by the serving benchmarks.
import { spawn, type ChildProcess } from 'node:child_process';
import http from 'node:http';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export interface ServeChild {
  url: string;
  process: ChildProcess;
}

/** Starts `vl3 serve --model dir --port 0 …args` and resolves once it listens. */
export async function startServe(dir: string, args: string[] = []): Promise<ServeChild> {
  const vl3 = join(dirname(fileURLToPath(import.meta.url)), '..', 'src', 'cli', 'vl3.js');
  const child = spawn(process.execPath, [vl3, 'serve', '--model', dir, '--port', '0', '--served-model-name', 'bench', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  const url = await new Promise<string>((resolve, reject) => {
    let text = '';
    child.stderr!.on('data', (d: Buffer) => {
      text += d.toString();
      const m = / at (http:\/\/[^\s]+) \(/.exec(text);
      if (m) resolve(m[1]!);
    });
    child.once('exit', (code) => reject(new Error(`vl3 serve exited (code ${code}): ${text}`)));
  });
  return { url, process: child };
}

export interface StreamedAnswer {
  /** Seconds from sending the request to the first content delta. */
  seconds: number;
  text: string;
  promptTokens: number;
  /** Prompt tokens the server read from its prefix cache. */
  cachedTokens: number;
  /** Seconds from sending the request to the end of the stream, and the answer's tokens. */
  totalSeconds: number;
  completionTokens: number;
}

/**
 * One streamed chat completion (`stream_options.include_usage` is added). node:http rather than fetch: fetch gives
 * up after 300 s without response headers, and with many clients on two cores the last requests wait longer than
 * that in the queue.
 */
export function streamChat(url: string, body: object): Promise<StreamedAnswer> {
  const t0 = performance.now();
  const payload = JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } });
  return new Promise((resolve, reject) => {
    const headers = { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) };
    const request = http.request(`${url}/v1/chat/completions`, { method: 'POST', headers }, (response) => {
      let first: number | undefined;
      let buffered = '';
      response.setEncoding('utf8');
      response.on('data', (text: string) => {
        buffered += text;
        if (first === undefined && /"content":"/.test(buffered)) first = performance.now();
      });
      response.on('error', reject);
      response.on('end', () => {
        if (response.statusCode !== 200 || buffered.includes('"error"')) return reject(new Error(`HTTP ${response.statusCode}: ${buffered.slice(0, 500)}`));
        const events = buffered
          .split('\n')
          .filter((line) => line.startsWith('data: {'))
          .map((line) => JSON.parse(line.slice(6)) as { choices: { delta: { content?: string } }[]; usage?: { prompt_tokens: number; completion_tokens: number; prompt_tokens_details?: { cached_tokens: number } } });
        const usage = events.find((e) => e.usage)?.usage;
        if (first === undefined || !usage) return reject(new Error('no content or no usage chunk was streamed'));
        const text = events.map((e) => e.choices[0]?.delta.content ?? '').join('');
        resolve({
          seconds: (first - t0) / 1000,
          text,
          promptTokens: usage.prompt_tokens,
          cachedTokens: usage.prompt_tokens_details?.cached_tokens ?? 0,
          totalSeconds: (performance.now() - t0) / 1000,
          completionTokens: usage.completion_tokens,
        });
      });
    });
    request.on('error', reject);
    request.end(payload);
  });
}
