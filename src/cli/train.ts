// `vl3 train`: the official training recipe from the command line (spec 10): stage presets, overrides, a progress
// bar, checkpoints, resume, and Ctrl-C saving the last whole step.
import { InvalidArgumentError, type Command } from 'commander';
import type { LoraConfig } from '../model/lora.js';
import { dirname, resolve } from 'node:path';
import { resolveModel } from '../hub/index.js';
import { createBackend, ISAS, type ComputeMode, type Isa } from '../tensor/index.js';
import { train, TRAIN_LOG } from '../train/trainer.js';
import type { ModuleGroup, StageOptions } from '../train/stages.js';
import { byteCount, EXIT, flag, integer, number, positive } from './flags.js';
import { DownloadBars, TrainingBar } from './progress.js';

/** The LoRA flags given (the rest default to the official LoraArguments). */
function loraOptions(o: Record<string, unknown>): Partial<LoraConfig> {
  const lora: Partial<LoraConfig> = {};
  if (o.loraR !== undefined) lora.r = o.loraR as number;
  if (o.loraAlpha !== undefined) lora.alpha = o.loraAlpha as number;
  if (o.loraDropout !== undefined) lora.dropout = o.loraDropout as number;
  if (typeof o.loraTargetModules === 'string') lora.targetModules = o.loraTargetModules.split(',').map((t) => t.trim()).filter(Boolean);
  return lora;
}

const probability = (name: string) => (value: string) => {
  const p = Number(value);
  if (!(p >= 0 && p < 1)) throw new InvalidArgumentError(`${name} must be a number in [0, 1)`);
  return p;
};

/** A learning rate, or `frozen` (that module group is not trained). */
const learningRate = (name: string) => (value: string) => (value === 'frozen' ? null : positive(name)(value));

export function addTrainCommand(program: Command): void {
  program
    .command('train')
    .description('train or fine-tune with the paper\'s four-stage recipe (writes checkpoints in the Hugging Face layout)')
    .addOption(flag('--stage <n>', 'stage preset: 1 vision encoder + projector, 2 everything, 3 + DiffFP, 4 + image merge 2').choices(['1', '2', '3', '4']).makeOptionMandatory())
    .addOption(flag('--data <file>', 'annotations in the official format (JSON list or JSONL)').makeOptionMandatory())
    .addOption(flag('--data-folder <dir>', 'folder the annotations\' media paths are relative to (default: the data file\'s folder)'))
    .addOption(flag('-m, --model <ref>', 'checkpoint folder, or hub id ORG/NAME[@revision]').makeOptionMandatory())
    .addOption(flag('-o, --output <dir>', 'where checkpoints, the final model and train_log.jsonl go').makeOptionMandatory())
    .addOption(flag('--epochs <n>', 'passes over the data (default 1)').argParser(integer('--epochs', 1)))
    .addOption(flag('--batch-size <n>', 'samples per micro-batch, packed into one sequence (default 1)').argParser(integer('--batch-size', 1)))
    .addOption(flag('--grad-accum <n>', 'micro-batches per optimizer step (default 1)').argParser(integer('--grad-accum', 1)))
    .addOption(flag('--max-steps <n>', 'stop after this many optimizer steps').argParser(integer('--max-steps', 1)))
    .addOption(flag('--save-every <n>', 'write checkpoint-<step> every n steps (default: at the end only)').argParser(integer('--save-every', 1)))
    .addOption(flag('--resume', 'continue from the latest checkpoint-<step> in --output'))
    .addOption(flag('--lr-llm <x>', 'learning rate of the language model, or "frozen" (default: the stage\'s)').argParser(learningRate('--lr-llm')))
    .addOption(flag('--lr-projector <x>', 'learning rate of the projector, or "frozen"').argParser(learningRate('--lr-projector')))
    .addOption(flag('--lr-vision <x>', 'learning rate of the vision encoder, or "frozen"').argParser(learningRate('--lr-vision')))
    .addOption(flag('--warmup-ratio <x>', 'share of the steps spent warming up (default 0.03)').argParser(number('--warmup-ratio')))
    .addOption(flag('--max-grad-norm <x>', 'clip the global gradient norm (default: off, as the official runs)').argParser(positive('--max-grad-norm')))
    .addOption(flag('--seed <n>', 'data order seed (default 42)').argParser(integer('--seed', 0)))
    .addOption(flag('--image-merge-size <n>', 'image token merge (default: the stage\'s)').choices(['1', '2']))
    .addOption(flag('--video-merge-size <n>', 'video token merge (default 2)').choices(['1', '2']))
    .addOption(flag('--token-compression', 'prune unchanged video tokens (DiffFP; default: the stage\'s)'))
    .addOption(flag('--no-token-compression', 'keep every video token'))
    .addOption(flag('--fps <x>', 'video frames sampled per second (default 1)').argParser(positive('--fps')))
    .addOption(flag('--max-frames <n>', 'most frames per video (default 180)').argParser(integer('--max-frames', 1)))
    .addOption(flag('--model-max-length <n>', 'tokens per sample at most (default 16384)').argParser(integer('--model-max-length', 2)))
    .addOption(flag('--mm-max-length <n>', 'visual token budget per image or frame set (default 10240)').argParser(integer('--mm-max-length', 1)))
    .addOption(flag('--activation-checkpointing', 'keep only each layer\'s input for the backward and recompute the layer: far less activation memory, one more forward per layer'))
    .addOption(flag('--sample-cache-bytes <n>', 'built samples (decoded, resized media) kept for later epochs, LRU (e.g. 4GiB; 0: off; default 1GiB)').argParser(byteCount('--sample-cache-bytes')))
    .addOption(flag('--lora', 'train LoRA adapters and the projector instead of the weights (writes a PEFT adapter, which ask, chat and serve load)'))
    .addOption(flag('--lora-r <n>', 'adapter rank (default 64)').argParser(integer('--lora-r', 1)))
    .addOption(flag('--lora-alpha <x>', 'adapter scaling numerator: scaling = alpha / r (default 16)').argParser(positive('--lora-alpha')))
    .addOption(flag('--lora-dropout <x>', 'dropout on the adapters\' input while training (default 0.05)').argParser(probability('--lora-dropout')))
    .addOption(flag('--lora-target-modules <names>', 'comma-separated layer names matched as suffixes (default: every linear layer outside the vision encoder and projector, as the official find_all_linear_names)'))
    .addOption(flag('-t, --threads <n>', 'kernel threads (default: available cores)').argParser(integer('--threads', 1)))
    .addOption(flag('--isa <tier>', 'kernel tier (default: the best this CPU has)').choices([...ISAS]))
    .addOption(flag('--compute <mode>', 'matmul numerics, forward and backward: "exact" (f32, what the parity tests check) or "bf16" (operands rounded to bf16, sums in f32, as bf16 training on a GPU; f32 master weights and optimizer either way; fast where the CPU has bf16 dot products); default: the fastest this CPU has').choices(['exact', 'bf16']))
    .action(async (o) => {
      const downloads = new DownloadBars();
      const modelDir = await resolveModel(o.model, { onProgress: downloads.update }).finally(() => downloads.stop());
      const lr: Partial<Record<ModuleGroup, number | null>> = {};
      if (o.lrLlm !== undefined) lr.llm = o.lrLlm;
      if (o.lrProjector !== undefined) lr.projector = o.lrProjector;
      if (o.lrVision !== undefined) lr.vision = o.lrVision;
      const stageOptions: StageOptions = { lr };
      if (o.warmupRatio !== undefined) stageOptions.warmupRatio = o.warmupRatio;
      if (o.imageMergeSize !== undefined) stageOptions.imageMergeSize = Number(o.imageMergeSize);
      if (o.videoMergeSize !== undefined) stageOptions.videoMergeSize = Number(o.videoMergeSize);
      if (o.tokenCompression !== undefined) stageOptions.useTokenCompression = o.tokenCompression;

      // Ctrl-C: the step under way finishes (or, while reading media, is dropped), the last whole step is saved.
      const stop = new AbortController();
      const onSigint = () => {
        if (stop.signal.aborted) process.exit(EXIT.interrupted);
        process.stderr.write('\nstopping after this step (Ctrl-C again to quit without saving)\n');
        stop.abort();
      };
      process.on('SIGINT', onSigint);
      const bar = new TrainingBar();
      const backend = createBackend('native', { threads: o.threads, isa: o.isa as Isa | undefined, compute: o.compute as ComputeMode | undefined });
      try {
        const result = await train({
          stage: Number(o.stage) as 1 | 2 | 3 | 4,
          stageOptions,
          dataFile: resolve(o.data),
          dataFolder: resolve(o.dataFolder ?? dirname(resolve(o.data))),
          modelDir,
          outputDir: resolve(o.output),
          backend,
          epochs: o.epochs,
          batchSize: o.batchSize,
          gradAccum: o.gradAccum,
          maxSteps: o.maxSteps,
          saveEvery: o.saveEvery,
          maxGradNorm: o.maxGradNorm,
          seed: o.seed,
          fps: o.fps,
          maxFrames: o.maxFrames,
          modelMaxLength: o.modelMaxLength,
          mmMaxLength: o.mmMaxLength,
          sampleCacheBytes: o.sampleCacheBytes,
          resume: o.resume === true,
          activationCheckpointing: o.activationCheckpointing === true,
          lora: o.lora || o.loraR !== undefined || o.loraAlpha !== undefined || o.loraDropout !== undefined || o.loraTargetModules !== undefined ? loraOptions(o) : undefined,
          signal: stop.signal,
          onStart: (plan) => {
            process.stderr.write(
              `${plan.samples} samples, ${plan.totalSteps} optimizer steps (${plan.stepsPerEpoch} per epoch), ` +
                `${(plan.trainableParameters / 1e6).toFixed(2)} M trainable parameters, ${backend.compute} compute` +
                `${plan.startStep ? `; resuming after step ${plan.startStep}` : ''}\n`,
            );
            bar.start(plan.startStep, plan.totalSteps);
          },
          onStep: bar.update,
        });
        bar.stop();
        const where = resolve(o.output);
        if (result.interrupted) {
          process.stderr.write(`stopped: saved ${where}/checkpoint-${result.steps}; continue with --resume\n`);
          process.exitCode = EXIT.interrupted;
          return;
        }
        const what = o.lora ? `adapter in ${where} (load it with --adapter ${where})` : `model in ${where}`;
        process.stderr.write(`trained ${result.steps} steps, final loss ${result.finalLoss?.toFixed(4)}; ${what}, log in ${where}/${TRAIN_LOG}\n`);
      } finally {
        bar.stop();
        process.off('SIGINT', onSigint);
      }
    });
}
