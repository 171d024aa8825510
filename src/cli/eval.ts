// `vl3 eval`: a benchmark of the paper with its official prompts and scoring, against a model or any
// OpenAI-compatible server (spec 11).
import type { Command } from 'commander';
import { join } from 'node:path';
import { VideoLLaMA3 } from '../api/videollama3.js';
import { BENCHMARKS } from '../eval/registry.js';
import { openAiJudge } from '../eval/judge.js';
import { formatTable } from '../eval/report.js';
import { loadSamples, runEval } from '../eval/runner.js';
import { modelTarget, serverTarget, type Target } from '../eval/targets.js';
import { WEIGHT_FORMATS, type WeightFormat } from '../tensor/dtype.js';
import { EXIT, flag, integer } from './flags.js';
import { EvalBar } from './progress.js';

export function addEvalCommand(program: Command, loadModel: (o: Record<string, unknown>) => Promise<VideoLLaMA3>): void {
  program
    .command('eval')
    .description(`run a benchmark with the paper's protocol, prompts and scoring: ${[...BENCHMARKS.keys()].join(', ')}`)
    .argument('<benchmark>', 'the benchmark (README, "Evaluation", gives each one\'s --data layout)')
    .addOption(flag('--data <dir>', 'the benchmark\'s files, in the layout of its release').makeOptionMandatory())
    .addOption(flag('-m, --model <ref>', 'checkpoint folder, or hub id ORG/NAME[@revision]'))
    .addOption(flag('--server <url>', 'an OpenAI-compatible server to evaluate instead (for vl3 serve: 180 frames allowed and the data folder readable; README, "Evaluation")'))
    .addOption(flag('--server-model <name>', 'the model name sent to --server'))
    .addOption(flag('--api-key <key>', 'bearer token for --server'))
    .addOption(flag('--limit <n>', 'the first n samples only').argParser(integer('--limit', 1)))
    .addOption(flag('-o, --out <dir>', 'predictions.jsonl, results.json and results.md (default: vl3-eval/<benchmark>); a run continues the predictions there'))
    .addOption(flag('--concurrency <n>', 'samples answered at once (default 1)').argParser(integer('--concurrency', 1)))
    .addOption(flag('--max-new-tokens <n>', 'most tokens per answer (default 2048, the protocol\'s)').argParser(integer('--max-new-tokens', 1)))
    .addOption(flag('--judge-url <url>', 'an OpenAI-compatible endpoint as the GPT judge of ActivityNet-QA, TempCompass captioning and ChartQA\'s text answers (README, "Evaluation")'))
    .addOption(flag('--judge-model <name>', 'the model name sent to --judge-url (the official code asked an Azure OpenAI GPT deployment)'))
    .addOption(flag('--judge-api-key <key>', 'bearer token for --judge-url'))
    .addOption(flag('--robust', 'the robust answer extractor instead of the official one (README, "Evaluation")'))
    .addOption(flag('--strict-official', 'extract answers exactly as the official code does, quirks included (the default)'))
    .addOption(flag('-t, --threads <n>', 'kernel threads (default: available cores)').argParser(integer('--threads', 1)))
    .addOption(flag('--weights <format>', 'language model weights: bf16, int8, int4, int4m (default: as stored)').choices([...WEIGHT_FORMATS]))
    .action(async (name: string, o: Record<string, unknown>, command: Command) => {
      const benchmark = BENCHMARKS.get(name);
      if (!benchmark) command.error(`vl3 eval: unknown benchmark "${name}" (one of ${[...BENCHMARKS.keys()].join(', ')})`);
      if ((o.model === undefined) === (o.server === undefined)) command.error('vl3 eval: give exactly one of --model and --server');
      if (o.server !== undefined && o.serverModel === undefined) command.error('vl3 eval: --server needs --server-model');
      if (o.robust && o.strictOfficial) command.error('vl3 eval: --robust and --strict-official exclude each other');
      if ((o.judgeUrl === undefined) !== (o.judgeModel === undefined)) command.error('vl3 eval: --judge-url and --judge-model go together');
      const abort = new AbortController();
      const onSigint = () => abort.abort();
      process.once('SIGINT', onSigint);
      let model: VideoLLaMA3 | undefined;
      try {
        // The data first: a wrong --data fails at once, not after the weights are read.
        const samples = await loadSamples(benchmark, String(o.data));
        let target: Target;
        if (o.server !== undefined) target = serverTarget({ url: String(o.server), model: String(o.serverModel), apiKey: o.apiKey as string | undefined, maxNewTokens: o.maxNewTokens as number | undefined });
        else {
          model = await loadModel({ model: o.model, threads: o.threads, weights: o.weights as WeightFormat | undefined, maxFrames: 180, maxActiveRequests: o.concurrency });
          target = modelTarget(model, String(o.model), o.maxNewTokens as number | undefined);
        }
        // Only benchmarks with a judged part use the judge (a VL3_JUDGE_URL set for all runs is ignored by the others).
        const judge = o.judgeUrl !== undefined && benchmark.judgeAsks ? openAiJudge({ url: String(o.judgeUrl), model: String(o.judgeModel), apiKey: o.judgeApiKey as string | undefined }) : undefined;
        const bar = new EvalBar(benchmark.name);
        const out = String(o.out ?? join('vl3-eval', benchmark.name));
        let result;
        try {
          const onJudge = (e: { asking: number; kept: number }) => {
            bar.stop();
            process.stderr.write(`${benchmark.name}: asking ${judge!.name} ${e.asking} questions (${e.kept} replies kept in judgements.jsonl)\n`);
          };
          result = await runEval({ benchmark, samples, data: String(o.data), target, out, mode: o.robust ? 'robust' : 'official', limit: o.limit as number | undefined, concurrency: o.concurrency as number | undefined, signal: abort.signal, onProgress: bar.update, judge, onJudge });
        } finally {
          bar.stop();
        }
        process.stdout.write(formatTable(result.report));
        for (const f of result.failures) process.stderr.write(`vl3: ${f.id} failed: ${f.error}\n`);
        process.stderr.write(`predictions, results.json and results.md in ${out}\n`);
        if (result.interrupted) process.exitCode = EXIT.interrupted;
        else if (result.failures.length > 0) process.exitCode = EXIT.failure;
      } finally {
        process.off('SIGINT', onSigint);
        await model?.close();
      }
    });
}
