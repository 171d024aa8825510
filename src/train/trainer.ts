/**
 * The training loop of `vl3 train` (spec 10, the official `train.py` with transformers' Trainer): annotations in a
 * seeded order per epoch, micro-batches of `batchSize` samples packed into one row, `gradAccum` micro-batches per
 * optimizer step with the loss of each divided by the supervised tokens of the whole step, optional clipping, the
 * cosine schedule with warm-up (the first step at multiplier 0, as LambdaLR gives it), AdamW; a JSONL log line per
 * step, checkpoints every `saveEvery` steps and at the end, and on abort (Ctrl-C) a checkpoint of the last whole step.
 */
import fs from 'node:fs';
import path from 'node:path';
import { loadCheckpoint } from '../model/checkpoint.js';
import { VideoLLaMA3Training } from '../model/videollama3-training.js';
import { loadProcessorConfig } from '../processing/processor-config.js';
import { Tokenizer } from '../processing/tokenizer.js';
import { readAnnotationFile } from '../processing/training-annotation.js';
import { collateTrainingSamples } from '../processing/training-batch.js';
import { buildTrainingSample, type TrainingSample } from '../processing/training-sample.js';
import { LRUCache } from 'lru-cache';
import type { Backend } from '../tensor/backend.js';
import { supervisedCount } from './accumulation.js';
import { latestCheckpoint, loadCheckpointState, saveCheckpoint, saveLoraModel, saveModel, type TrainerState } from './checkpoints.js';
import { findAllLinearNames, OFFICIAL_LORA_DEFAULTS, type LoraConfig } from '../model/lora.js';
import { clipGradNorm, globalGradNorm } from './clip.js';
import { modelInputs, type ModelInputs } from './model-inputs.js';
import { applyLrMultiplier, cosineSchedule } from './schedule.js';
import { baseLrs, stageConfig, stageOptimizer, trainableByGroup, type StageOptions } from './stages.js';

export interface TrainOptions {
  stage: 1 | 2 | 3 | 4;
  /** Overrides of the stage preset (lrs, merge sizes, DiffFP, warm-up ratio). */
  stageOptions?: StageOptions;
  /** The annotation file (JSON list or JSONL) and the folder its media paths are relative to. */
  dataFile: string;
  dataFolder: string;
  /** A checkpoint folder (bf16 safetensors in the Hugging Face layout). */
  modelDir: string;
  outputDir: string;
  backend: Backend;
  epochs?: number;
  /** Samples per micro-batch, packed into one row (`per_device_train_batch_size` with batch flattening). */
  batchSize?: number;
  gradAccum?: number;
  /** Stop after this many optimizer steps (the schedule then spans them). */
  maxSteps?: number;
  /** Write `checkpoint-<step>` every this many steps (0: at the end only). */
  saveEvery?: number;
  /** Clip the global gradient norm to this (off by default, as in the official DeepSpeed runs). */
  maxGradNorm?: number;
  seed?: number;
  /** The official data arguments. */
  fps?: number;
  maxFrames?: number;
  modelMaxLength?: number;
  mmMaxLength?: number;
  /**
   * Bytes of built samples (tokenized, media decoded and resized) kept for later epochs, LRU (default 1 GiB; 0: off):
   * a sample is built the same way every time, so a small dataset is read once rather than once per epoch.
   */
  sampleCacheBytes?: number;
  /** Continue from the latest `checkpoint-<step>` of outputDir. */
  resume?: boolean;
  /**
   * LoRA (the official `--lora_enable`): adapters on the linear layers (default: every one `find_all_linear_names`
   * gives, r 64, alpha 16, dropout 0.05), the projector trained whole, everything else frozen. The run writes the
   * adapter (PEFT's format) and the projector, not a whole model.
   */
  lora?: Partial<LoraConfig>;
  /**
   * Keep only each layer's input from the forward and run the layer again before its backward: activation memory of
   * one layer plus every layer's input instead of every layer's, for one more forward per layer. The gradients are
   * the same bits, so a run may resume with it switched either way.
   */
  activationCheckpointing?: boolean;
  signal?: AbortSignal;
  onStart?: (plan: TrainPlan) => void;
  onStep?: (log: StepLog) => void;
}

export interface TrainPlan {
  samples: number;
  stepsPerEpoch: number;
  totalSteps: number;
  /** Steps already done (a resumed run). */
  startStep: number;
  trainableParameters: number;
}

export interface StepLog {
  step: number;
  totalSteps: number;
  epoch: number;
  loss: number;
  lr: Record<string, number>;
  gradNorm: number;
  /** Tokens of the step's sequences (after DiffFP), and per second of this step. */
  tokens: number;
  tokensPerSecond: number;
  seconds: number;
  /** The most bytes a micro-batch's forward kept of the layers for its backward (what activation checkpointing cuts). */
  savedActivationBytes: number;
}

export interface TrainResult {
  steps: number;
  /** True when the signal stopped the run (a checkpoint of the last whole step was written). */
  interrupted: boolean;
  finalLoss: number | undefined;
}

export const TRAIN_LOG = 'train_log.jsonl';

export async function train(options: TrainOptions): Promise<TrainResult> {
  const stage = stageConfig(options.stage, { ...options.stageOptions, lora: options.lora !== undefined || options.stageOptions?.lora });
  const batchSize = positive('batchSize', options.batchSize ?? 1);
  const gradAccum = positive('gradAccum', options.gradAccum ?? 1);
  const epochs = positive('epochs', options.epochs ?? 1);
  const seed = options.seed ?? 42;
  const annotations = await readAnnotationFile(options.dataFile);
  if (annotations.length === 0) throw new Error(`${options.dataFile} holds no training sample`);
  const microBatches = Math.ceil(annotations.length / batchSize);
  const stepsPerEpoch = Math.ceil(microBatches / gradAccum);
  const totalSteps = Math.min(stepsPerEpoch * epochs, options.maxSteps ?? Infinity);
  const { config, weights } = loadCheckpoint(options.modelDir);
  const lora: LoraConfig | undefined = stage.lora ? { ...OFFICIAL_LORA_DEFAULTS, targetModules: findAllLinearNames(config), ...options.lora } : undefined;
  const settings = { stage: options.stage, stageOptions: options.stageOptions ?? {}, lora: lora ?? null, dataFile: path.resolve(options.dataFile), batchSize, gradAccum, epochs, totalSteps };
  const names = VideoLLaMA3Training.parameterNames(config, lora);
  const trainable = new Set(trainableByGroup(names, stage).groups.flatMap((g) => g.names));
  if (trainable.size === 0) throw new Error(`stage ${options.stage} with these learning rates trains nothing`);
  // One seeded stream for the adapters' initial values and the dropout masks: a resumed run draws its own, so
  // dropout makes a resumed LoRA run differ from an uninterrupted one (without dropout they are the same).
  const random = seededRandom(seed);
  const model = new VideoLLaMA3Training(config, { get: (spec) => weights.get(spec.name, spec.shape) }, (name) => trainable.has(name), options.backend, lora && { config: lora, random }, {
    activationCheckpointing: options.activationCheckpointing,
  });
  weights.close();
  const writeModel = (dir: string) =>
    lora ? saveLoraModel(dir, lora, model.loraPairs, model.parameters, options.modelDir) : saveModel(options.modelDir, dir, model.parameters);
  const optimizer = stageOptimizer(model.parameters, stage, options.backend);
  const schedule = cosineSchedule(totalSteps, stage.warmupRatio);
  const lrs = baseLrs(stage);

  let startStep = 0;
  if (options.resume) {
    const dir = latestCheckpoint(options.outputDir);
    if (!dir) throw new Error(`--resume: no checkpoint-<step> folder with ${'trainer_state.json'} in ${options.outputDir}`);
    const saved = loadCheckpointState(dir, model.parameters, optimizer);
    if (JSON.stringify(saved.settings) !== JSON.stringify(settings) || saved.seed !== seed) {
      throw new Error(`--resume: ${dir} was written by a run with other settings (${JSON.stringify(saved.settings)}, seed ${saved.seed})`);
    }
    startStep = saved.globalStep;
  }
  fs.mkdirSync(options.outputDir, { recursive: true });
  options.onStart?.({ samples: annotations.length, stepsPerEpoch, totalSteps, startStep, trainableParameters: [...model.parameters.values()].reduce((n, t) => n + t.numel, 0) });

  const tokenizer = await Tokenizer.load(options.modelDir);
  const processorConfig = await loadProcessorConfig(options.modelDir);
  const dataOptions = {
    tokenizer,
    processorConfig,
    dataFolder: options.dataFolder,
    mmMaxLength: options.mmMaxLength ?? 10240,
    imageMergeSize: stage.imageMergeSize,
    videoMergeSize: stage.videoMergeSize,
    fps: options.fps ?? 1,
    maxFrames: options.maxFrames ?? 180,
    modelMaxLength: options.modelMaxLength ?? 16384,
  };
  const cacheBytes = options.sampleCacheBytes ?? 2 ** 30;
  const built = cacheBytes > 0 ? new LRUCache<number, TrainingSample>({ maxSize: cacheBytes, sizeCalculation: (t) => Math.max(1, t.pixelValues.byteLength + 8 * t.inputIds.length) }) : undefined;
  const sample = async (index: number): Promise<TrainingSample> => {
    const cached = built?.get(index);
    if (cached) return cached;
    const made = await buildTrainingSample(annotations[index]!, { ...dataOptions, signal: options.signal });
    built?.set(index, made);
    return made;
  };
  const state = (globalStep: number): TrainerState => ({ globalStep, totalSteps, seed, settings });
  const checkpoint = (globalStep: number) => saveCheckpoint(writeModel, path.join(options.outputDir, `checkpoint-${globalStep}`), model.parameters, optimizer, state(globalStep));
  const log = fs.openSync(path.join(options.outputDir, TRAIN_LOG), 'a');
  let finalLoss: number | undefined;
  try {
    for (let step = startStep; step < totalSteps; step++) {
      if (options.signal?.aborted) {
        if (step > startStep) checkpoint(step);
        return { steps: step, interrupted: true, finalLoss };
      }
      const started = performance.now();
      const epoch = Math.floor(step / stepsPerEpoch);
      const order = shuffled(annotations.length, seed + epoch);
      const first = (step % stepsPerEpoch) * gradAccum;
      const batches: ModelInputs[] = [];
      try {
        for (let m = first; m < Math.min(first + gradAccum, microBatches); m++) {
          const samples: TrainingSample[] = [];
          for (const i of order.slice(m * batchSize, (m + 1) * batchSize)) samples.push(await sample(i));
          const batch = collateTrainingSamples(samples, { modelMaxLength: dataOptions.modelMaxLength, imageTokenId: tokenizer.imageTokenId });
          batches.push(modelInputs(batch, { imageTokenId: config.imageTokenIndex, useTokenCompression: stage.useTokenCompression }));
        }
      } catch (err) {
        // Stopped while reading media: the step had not begun, so the last whole step is what is saved.
        if (!options.signal?.aborted) throw err;
        if (step > startStep) checkpoint(step);
        return { steps: step, interrupted: true, finalLoss };
      }
      // transformers' num_items_in_batch: the supervised tokens of every micro-batch of the step.
      const numItems = batches.reduce((n, b) => n + supervisedCount(b.labels), 0);
      if (numItems === 0) throw new Error(`optimizer step ${step + 1} has no supervised token (every label is -100)`);
      model.zeroGradients();
      let lossSum = 0;
      let savedActivationBytes = 0;
      for (const b of batches) {
        const result = model.step(b, 1 / numItems);
        lossSum += result.lossSum;
        savedActivationBytes = Math.max(savedActivationBytes, result.savedActivationBytes);
      }
      const grads = [...model.gradients.values()].map((g) => g.data);
      const gradNorm = options.maxGradNorm ? clipGradNorm(grads, options.maxGradNorm).norm : globalGradNorm(grads);
      applyLrMultiplier(optimizer, lrs, schedule.multiplier(step));
      optimizer.update(model.gradients);

      const seconds = (performance.now() - started) / 1000;
      const tokens = batches.reduce((n, b) => n + b.inputIds.length, 0);
      finalLoss = lossSum / numItems;
      const entry: StepLog = {
        step: step + 1,
        totalSteps,
        epoch: (step + 1) / stepsPerEpoch,
        loss: finalLoss,
        lr: Object.fromEntries(optimizer.groups.map((g) => [g.name, g.lr])),
        gradNorm,
        tokens,
        tokensPerSecond: tokens / seconds,
        seconds,
        savedActivationBytes,
      };
      fs.writeSync(log, JSON.stringify(entry) + '\n');
      options.onStep?.(entry);
      if (options.saveEvery && (step + 1) % options.saveEvery === 0 && step + 1 < totalSteps) checkpoint(step + 1);
    }
    checkpoint(totalSteps);
    writeModel(options.outputDir);
    return { steps: totalSteps, interrupted: false, finalLoss };
  } finally {
    fs.closeSync(log);
    tokenizer.close();
  }
}

function positive(name: string, n: number): number {
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`${name} must be an integer >= 1, got ${n}`);
  return n;
}

/** Uniform numbers in [0, 1) from a seed (mulberry32). */
function seededRandom(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

/** 0..n-1 in a seeded order (Fisher-Yates): the same seed and epoch give the same order on resume. */
export function shuffled(n: number, seed: number): number[] {
  const next = seededRandom(seed);
  const order = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(next() * (i + 1));
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  return order;
}
