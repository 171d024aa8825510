// The optimizer update alone: ns per element of the native adamw kernel (every tier) and of its TypeScript definition
// (the reference backend), on one tensor far larger than the caches, and the traffic it moves (p, g, m and v read;
// p, m and v written: 28 bytes per element) beside the machine's read bandwidth, the bound a memory-bound pass meets.
// Usage: node dist/bench/adamw.js [elements=50000000] [threads=2]   (prints one JSON object)
import { NativeBackend, nativeInfo, readBandwidth } from '../src/tensor/native.js';
import { ReferenceBackend } from '../src/tensor/reference.js';
import { Tensor } from '../src/tensor/tensor.js';
import type { Backend } from '../src/tensor/backend.js';
import { round } from './stats.js';

const BYTES_PER_ELEMENT = 28;

const [elementsArg, threadsArg] = process.argv.slice(2);
const n = Number(elementsArg ?? 50_000_000);
const threads = Number(threadsArg ?? 2);
if (!Number.isInteger(n) || n < 1 || !Number.isInteger(threads) || threads < 1) throw new Error('usage: adamw.js [elements] [threads]');

function filled(seed: number, scale: number): Tensor<'f32'> {
  const t = Tensor.empty('f32', [n]);
  let x = seed;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    t.data[i] = (x / 2 ** 32 - 0.5) * scale;
  }
  return t;
}

const p = filled(1, 0.04);
const g = filled(2, 1e-3);
const m = Tensor.f32([n]);
const v = Tensor.f32([n]);
let step = 0;

/** Seconds of the fastest of `runs` updates after one warm-up (the machine is shared: the fastest is the undisturbed one). */
function best(backend: Backend, runs: number): number {
  const update = () => backend.adamw(p, g, m, v, ++step, { lr: 1e-5, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0 });
  update();
  let s = Infinity;
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    update();
    s = Math.min(s, (performance.now() - t0) / 1000);
  }
  return s;
}

const figure = (s: number) => ({ nsPerElement: round((s * 1e9) / n, 3), GBs: round((BYTES_PER_ELEMENT * n) / s / 1e9, 1) });
const info = nativeInfo();
const native = [...info.tiers].reverse().map((isa) => ({ isa, ...figure(best(new NativeBackend({ isa, threads }), isa === 'scalar' ? 2 : 5)) }));
const reference = figure(best(new ReferenceBackend(), 1));
const readGBs = round(readBandwidth(threads, 256 * 2 ** 20, 5), 1);
process.stdout.write(
  JSON.stringify({
    elements: n,
    threads,
    bytesPerElement: BYTES_PER_ELEMENT,
    readGBs,
    nsPerElementAtReadBandwidth: round(BYTES_PER_ELEMENT / readGBs, 3),
    native,
    reference: { name: 'TypeScript definition (reference backend, 1 thread)', ...reference },
  }) + '\n',
);
