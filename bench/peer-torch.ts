// Runs bench/peer-torch.py (Debian's python3-torch) with bench/llm.ts's prompts and threads, and reads its JSON; skipped with a message without torch.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { benchPrompt, CHECK, DECODE, PREFILL, type PeerReport, type PeerRun } from './peer-common.js';

export interface TorchExtra {
  python: string;
  torch: string;
  cpuCapability: string | null;
  mkldnn: boolean;
  /** The BLAS libraries the process mapped (fp32 GEMM runs on them; Debian's default is the reference BLAS). */
  blas: string[];
  /** GEMM 512×1536×8960 by thread count and dtype. */
  gemm: Record<string, Record<string, { gflops: number }>>;
}

interface ScriptOutput {
  torch: string;
  threads: number;
  cpuCapability: string | null;
  mkldnn: boolean;
  blas: string[];
  gemm: Record<string, { gflops: number }>;
  runs?: PeerRun[];
}

/** The script sits beside this file's source: bench/ in the checkout, two levels above dist/bench/. */
function scriptPath(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  for (const candidate of [join(here, 'peer-torch.py'), join(here, '..', '..', 'bench', 'peer-torch.py')]) {
    if (existsSync(candidate)) return candidate;
  }
  throw new Error(`bench/peer-torch.py not found from ${here}`);
}

/**
 * The first interpreter that imports torch: $VL3_BENCH_PYTHON, then `python3` on the PATH, then Debian's own
 * /usr/bin/python3 (where `apt-get install python3-torch` puts torch, even when a pyenv python3 comes first on the PATH).
 */
function findPython(): { python?: string; tried: string[] } {
  const candidates = [process.env.VL3_BENCH_PYTHON, 'python3', '/usr/bin/python3'].filter((c): c is string => !!c);
  const tried: string[] = [];
  for (const python of [...new Set(candidates)]) {
    const r = spawnSync(python, ['-c', 'import torch'], { encoding: 'utf8', timeout: 60_000 });
    if (r.status === 0) return { python, tried };
    tried.push(`${python}: ${r.error ? r.error.message : (r.stderr.trim().split('\n').pop() ?? `exit ${r.status}`)}`);
  }
  return { tried };
}

/**
 * GEMM at every thread count; the model (fp32 and bf16 weights) at `modelThreads` when a checkpoint is given.
 * Each thread count runs in a fresh interpreter with the OpenMP and BLAS pools sized to it.
 */
export function measureTorch(threadCounts: number[], modelDir: string | undefined, modelThreads: number[], log: (line: string) => void): PeerReport<TorchExtra> {
  const report: PeerReport<TorchExtra> = { peer: 'PyTorch', available: false, runs: [] };
  const { python, tried } = findPython();
  if (!python) {
    report.skipped = `no Python with torch (${tried.join('; ')}); \`apt-get install python3-torch\` brings Debian's`;
    return report;
  }
  const script = scriptPath();
  const prompts = [
    '--prefill-prompts', JSON.stringify(Array.from({ length: PREFILL.runs }, (_, r) => benchPrompt(PREFILL.tokens, PREFILL.seed + r))),
    '--decode-prompts', JSON.stringify(Array.from({ length: DECODE.runs }, (_, r) => benchPrompt(DECODE.promptTokens, DECODE.seed + r))),
    '--check-prompt', JSON.stringify(benchPrompt(CHECK.promptTokens, CHECK.seed)),
    '--decode-tokens', String(DECODE.tokens),
    '--check-tokens', String(CHECK.greedyTokens),
  ];
  const gemm: TorchExtra['gemm'] = {};
  let last: ScriptOutput | undefined;
  for (const n of threadCounts) {
    const withModel = modelDir !== undefined && modelThreads.includes(n);
    const argv = [script, '--threads', String(n), ...(withModel ? ['--model', modelDir, ...prompts] : ['--gemm-only'])];
    const env = { ...process.env, OMP_NUM_THREADS: String(n), OPENBLAS_NUM_THREADS: String(n), MKL_NUM_THREADS: String(n) };
    const r = spawnSync(python, argv, { encoding: 'utf8', env, maxBuffer: 64 * 2 ** 20, stdio: ['ignore', 'pipe', 'pipe'] });
    for (const line of (r.stderr ?? '').split('\n')) if (line.trim()) log(`  ${line}`);
    if (r.status !== 0) {
      const why = r.error?.message ?? (r.signal ? `signal ${r.signal}` : `exit ${r.status}`);
      report.skipped = `${python} ${script} failed (${why}): ${(r.stderr ?? '').trim().split('\n').pop() ?? ''}`;
      return report;
    }
    last = JSON.parse(r.stdout.trim().split('\n').pop()!) as ScriptOutput;
    gemm[n] = last.gemm;
    for (const run of last.runs ?? []) report.runs.push({ ...run, weights: `${run.weights} (eager)` });
  }
  report.available = true;
  report.version = last?.torch;
  report.extra = { python, torch: last!.torch, cpuCapability: last!.cpuCapability, mkldnn: last!.mkldnn, blas: last!.blas, gemm };
  return report;
}
