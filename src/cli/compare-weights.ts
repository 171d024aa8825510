// `vl3 dev compare-weights`: a quantized load measured against the checkpoint as stored, printed as one table (or JSON).
import { InvalidArgumentError } from 'commander';
import { compareWeights, readComparePrompts, type CompareOptions, type CompareReport } from '../api/compare-weights.js';
import { WEIGHT_FORMATS, type WeightFormat } from '../tensor/dtype.js';

/** `--weights int4` or `--weights int8,int4,int4m`: every format measured against one reference run. */
export function weightFormatList(value: string): WeightFormat[] {
  const formats = value.split(',').map((s) => s.trim());
  for (const f of formats) {
    if (!(WEIGHT_FORMATS as readonly string[]).includes(f)) {
      throw new InvalidArgumentError(`unknown format "${f}" (expected ${WEIGHT_FORMATS.join(', ')}, or several joined by commas)`);
    }
  }
  return formats as WeightFormat[];
}

export interface CompareCommandOptions extends Omit<CompareOptions, 'prompts' | 'onProgress' | 'onWarning'> {
  data?: string;
  json: boolean;
}

export async function runCompareWeights(o: CompareCommandOptions): Promise<void> {
  const prompts = o.data === undefined ? undefined : readComparePrompts(o.data);
  // A status line on a terminal: the reference and each load take minutes on a large model.
  const status = process.stderr.isTTY ? (line: string) => process.stderr.write(`\r\x1b[K${line}`) : undefined;
  const warned = new Set<string>();
  let report: CompareReport;
  try {
    report = await compareWeights({
      ...o,
      prompts,
      onProgress: status && ((e) => status(`${e.load === 'bf16' ? 'reference bf16' : e.load}: prompt ${e.prompt}/${e.prompts}, ${e.positions} positions`)),
      // Both loads of the checkpoint warn alike: once is enough.
      onWarning: (message) => warned.has(message) || (warned.add(message), process.emitWarning(message, { code: 'VL3_CHECKPOINT' })),
    });
  } finally {
    status?.('');
  }
  process.stdout.write(o.json ? JSON.stringify(report) + '\n' : formatReport(report, o.data ?? 'the default prompts'));
}

const pct = (part: number, whole: number) => `${part}/${whole} (${((100 * part) / whole).toFixed(1)}%)`;
const sci = (x: number) => (Number.isNaN(x) ? 'NaN' : x === 0 ? '0' : x.toExponential(2));

export function formatReport(r: CompareReport, data: string): string {
  const b = r.backend;
  const head = [
    `model      ${r.model}`,
    `data       ${data}: ${r.positions} positions scored in ${r.promptsRun} of ${r.prompts} prompts (chat template, teacher-forced); greedy ${r.greedyTokens} tokens per prompt`,
    `reference  bf16 weights, vision ${r.reference.vision}; ${b.name}${b.isa ? ` ${b.isa}` : ''}, compute ${b.compute}, ${b.threads} threads; ${r.reference.seconds.toFixed(1)} s`,
    '',
  ];
  const rows = [['weights', 'vision', 'KL mean', 'KL p50', 'KL p99', 'KL max', 'top-1 agree', 'greedy prefix', 'greedy match', 'identical', 'time']];
  for (const x of r.results) {
    rows.push([
      x.weights.language,
      x.weights.vision,
      sci(x.kl.mean),
      sci(x.kl.p50),
      sci(x.kl.p99),
      sci(x.kl.max),
      pct(x.top1.agree, x.top1.positions),
      pct(x.greedy.prefix, x.greedy.tokens),
      pct(x.greedy.matching, x.greedy.tokens),
      `${x.greedy.identical}/${x.greedy.prompts}`,
      `${x.seconds.toFixed(1)} s`,
    ]);
  }
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((row) => row[c]!.length)));
  const table = rows.map((row) => row.map((cell, c) => cell.padEnd(widths[c]!)).join('  ').trimEnd());
  const notes = [
    '',
    'KL: KL(P_bf16 ‖ P_quant) in nats per position, full vocabulary. greedy prefix: tokens equal before the first difference;',
    'greedy match: positions with equal tokens (argmax, no repetition penalty, no stop tokens).',
  ];
  return [...head, ...table, ...notes].join('\n') + '\n';
}
