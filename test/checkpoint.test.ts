import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { canonicalWeightName, loadCheckpoint } from '../src/model/checkpoint.js';
import { parseGenerationConfig, parseModelConfig } from '../src/model/config.js';
import {
  parameterList,
  planShards,
  PRESET_DIMS,
  pythonFloatRepr,
  randomCheckpointConfigFiles,
  writeRandomCheckpoint,
  type RandomCheckpointOptions,
} from '../src/model/random-checkpoint.js';
import { SafetensorsFile, writeSafetensors } from '../src/model/safetensors.js';
import { bf16ToF32 } from '../src/tensor/dtype.js';
import { Tensor } from '../src/tensor/tensor.js';
import { FIXTURES_MISSING, fixturesDir, TINY_CHECKPOINT } from './fixtures.js';

const fixtures = fixturesDir();
const tinyDir = fixtures ? path.join(fixtures, TINY_CHECKPOINT) : '';

const sha256 = (file: string): string => createHash('sha256').update(fs.readFileSync(file)).digest('hex');
const literally = (text: string): RegExp => new RegExp(text.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&'));

function copyFolder(from: string, to: string, skip: string[] = []): void {
  fs.mkdirSync(to, { recursive: true });
  for (const name of fs.readdirSync(from)) {
    if (!skip.includes(name)) fs.copyFileSync(path.join(from, name), path.join(to, name));
  }
}

/** A config.json object for the given sizes, as the random-checkpoint writer produces it. */
function configJson(options: Pick<RandomCheckpointOptions, 'preset' | 'dims'>): Record<string, unknown> {
  return JSON.parse(randomCheckpointConfigFiles(options)['config.json']!);
}

// Sizes small enough that a whole checkpoint is a few hundred kB.
const TINY_DIMS = {
  vocabSize: 320,
  hiddenSize: 16,
  intermediateSize: 24,
  numHiddenLayers: 2,
  numAttentionHeads: 4,
  numKeyValueHeads: 2,
  maxWindowLayers: 2,
  vision: { hiddenSize: 8, intermediateSize: 12, numHiddenLayers: 2, numAttentionHeads: 2 },
};

describe('config.json / generation_config.json parsing', () => {
  it('parses the released 2B and 7B configs with class defaults for the vision encoder', () => {
    const c2 = parseModelConfig(configJson({ preset: '2b' }));
    assert.equal(c2.hiddenSize, 1536);
    assert.equal(c2.headDim, 128);
    assert.equal(c2.numKeyValueHeads, 2);
    assert.equal(c2.tieWordEmbeddings, true);
    assert.equal(c2.vocabSize, 151936);
    assert.equal(c2.ropeTheta, 1e6);
    assert.equal(c2.rmsNormEps, 1e-6);
    assert.equal(c2.imageTokenIndex, 151665);
    assert.equal(c2.useTokenCompression, true);
    assert.equal(c2.mmProjectorType, 'mlp2x_gelu');
    assert.equal(c2.visionEncoder, null);
    assert.equal(c2.maxWindowLayers, 21);
    assert.deepEqual(c2.visionEncoderConfig, {
      modelType: 'videollama3_vision_encoder',
      hiddenSize: 1152,
      intermediateSize: 4304,
      numHiddenLayers: 27,
      numAttentionHeads: 16,
      headDim: 72,
      patchSize: 14,
      numChannels: 3,
      hiddenAct: 'gelu_pytorch_tanh',
      layerNormEps: 1e-6,
      attentionDropout: 0,
    });
    const c7 = parseModelConfig(configJson({ preset: '7b' }));
    assert.equal(c7.hiddenSize, 3584);
    assert.equal(c7.headDim, 128);
    assert.equal(c7.numKeyValueHeads, 4);
    assert.equal(c7.vocabSize, 152064);
    assert.equal(c7.tieWordEmbeddings, false);
  });

  it('names the file and key of a missing or mistyped value', () => {
    const base = configJson({ preset: '2b' });
    const without = (key: string): Record<string, unknown> => Object.fromEntries(Object.entries(base).filter(([k]) => k !== key));
    assert.throws(() => parseModelConfig(without('hidden_size'), '/x/config.json'), /\/x\/config\.json: key "hidden_size" is missing/);
    assert.throws(() => parseModelConfig(without('image_token_index'), 'c.json'), /c\.json: key "image_token_index" is missing/);
    assert.throws(() => parseModelConfig(without('vision_encoder_config'), 'c.json'), /key "vision_encoder_config" is missing/);
    assert.throws(() => parseModelConfig({ ...base, hidden_size: '1536' }, 'c.json'), /key "hidden_size" must be an integer, got "1536"/);
    assert.throws(() => parseModelConfig({ ...base, tie_word_embeddings: 1 }, 'c.json'), /key "tie_word_embeddings" must be true or false/);
    assert.throws(() => parseModelConfig({ ...base, model_type: 'qwen2' }, 'c.json'), /key "model_type" is "qwen2"/);
    assert.throws(() => parseModelConfig({ ...base, num_attention_heads: 10 }, 'c.json'), /"hidden_size" 1536 is not divisible/);
    assert.throws(() => parseModelConfig({ ...base, num_attention_heads: 7 }, 'c.json'), /7 is not a multiple of "num_key_value_heads" 2/);
    const vision = { ...(base.vision_encoder_config as object), patch_size: 14.5 };
    assert.throws(() => parseModelConfig({ ...base, vision_encoder_config: vision }, 'c.json'),
      /c\.json: key "vision_encoder_config\.patch_size" must be an integer/);
    const withVisionKeys = { ...(base.vision_encoder_config as object), layer_norm_eps: 1e-5, hidden_act: 'gelu' };
    const parsed = parseModelConfig({ ...base, vision_encoder_config: withVisionKeys });
    assert.equal(parsed.visionEncoderConfig.layerNormEps, 1e-5);
    assert.equal(parsed.visionEncoderConfig.hiddenAct, 'gelu');
  });

  it('parses generation configs: eos as id or list, transformers defaults for absent keys', () => {
    const g7 = parseGenerationConfig(JSON.parse(randomCheckpointConfigFiles({ preset: '7b' })['generation_config.json']!));
    assert.deepEqual(g7, {
      doSample: true,
      temperature: 0.7,
      topP: 0.8,
      topK: 20,
      repetitionPenalty: 1.05,
      eosTokenIds: [151645, 151643],
      padTokenId: 151643,
      bosTokenId: 151643,
      maxNewTokens: null,
    });
    const bare = parseGenerationConfig({ eos_token_id: 7 });
    assert.deepEqual(bare.eosTokenIds, [7]);
    assert.equal(bare.doSample, false);
    assert.equal(bare.topK, 50);
    assert.equal(bare.repetitionPenalty, 1);
    assert.throws(() => parseGenerationConfig({ top_k: 'x' }, 'g.json'), /g\.json: key "top_k" must be an integer/);
    assert.throws(() => parseGenerationConfig({ eos_token_id: [1, 'a'] }, 'g.json'), /key "eos_token_id" must be an id or a list of ids/);
  });
});

describe('tiny fixture checkpoint', { skip: !fixtures && FIXTURES_MISSING }, () => {
  let dir: string;
  before(() => {
    dir = fs.mkdtempSync(path.join(tmpdir(), 'vl3-ckpt-'));
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('loads config, generation config and 66 tensors whose names and shapes follow from the config', () => {
    const ckpt = loadCheckpoint(tinyDir);
    try {
      const { config, generationConfig, weights } = ckpt;
      assert.equal(ckpt.folder, tinyDir);
      assert.equal(config.hiddenSize, 64);
      assert.equal(config.headDim, 16);
      assert.equal(config.numKeyValueHeads, 2);
      assert.equal(config.visionEncoderConfig.headDim, 16);
      assert.equal(config.visionEncoderConfig.numChannels, 3);
      assert.equal(generationConfig.repetitionPenalty, 1.1);
      assert.deepEqual(generationConfig.eosTokenIds, [151645, 151643]);
      assert.equal(weights.names.length, 66);

      // The random-checkpoint writer's parameter list, at the fixture's sizes, must be exactly the real names/shapes.
      const expected = parameterList({
        vocabSize: config.vocabSize,
        hiddenSize: config.hiddenSize,
        intermediateSize: config.intermediateSize,
        numHiddenLayers: config.numHiddenLayers,
        numAttentionHeads: config.numAttentionHeads,
        numKeyValueHeads: config.numKeyValueHeads,
        maxWindowLayers: 2,
        tieWordEmbeddings: config.tieWordEmbeddings,
        vision: config.visionEncoderConfig,
      });
      assert.deepEqual(expected.map((p) => p.name).sort(), weights.names);
      for (const p of expected) {
        const t = weights.get(p.name, p.shape, ['bf16']);
        assert.equal(t.dtype, 'bf16');
      }
      assert.equal(weights.stats.tensorsRead, 66);
    } finally {
      ckpt.weights.close();
    }
  });

  it('resolves the tied lm_head to the embeddings, reading them once', () => {
    const { weights, config } = loadCheckpoint(tinyDir);
    try {
      assert.equal(weights.has('lm_head.weight'), true);
      assert.equal(weights.names.includes('lm_head.weight'), false);
      const head = weights.get('lm_head.weight', [config.vocabSize, config.hiddenSize]);
      const embed = weights.get('model.embed_tokens.weight', [151936, 64]);
      assert.equal(head, embed);
      assert.deepEqual(weights.stats, { tensorsRead: 1, bytesRead: 151936 * 64 * 2 });
      assert.throws(() => weights.get('lm_head.weight', [151936, 65]), /tensor "model\.embed_tokens\.weight" \(tied to model\.embed_tokens\.weight\): shape/);
      // Norm weights were drawn around 1: a sanity check that bf16 bits come through untouched.
      const norm = weights.get('model.norm.weight', [64]).data as Uint16Array;
      const mean = Array.from(norm, bf16ToF32).reduce((a, b) => a + b, 0) / norm.length;
      assert.ok(Math.abs(mean - 1) < 0.05, `mean ${mean}`);
    } finally {
      weights.close();
    }
  });

  it('missing tensor, wrong shape and wrong dtype are errors naming the file and the tensor', () => {
    const { weights } = loadCheckpoint(tinyDir);
    const file = path.join(tinyDir, 'model.safetensors');
    try {
      assert.throws(() => weights.get('model.layers.2.mlp.up_proj.weight', [128, 64]),
        (e: Error) => /tensor "model\.layers\.2\.mlp\.up_proj\.weight" not found in model\.safetensors/.test(e.message) && literally(tinyDir).test(e.message));
      assert.throws(() => weights.get('model.norm.weight', [65]),
        new RegExp(`checkpoint file ${literally(file).source}: tensor "model\\.norm\\.weight": shape \\[64\\], expected \\[65\\]`));
      assert.throws(() => weights.get('model.norm.weight', [64], ['f32']), /tensor "model\.norm\.weight": dtype bf16, expected f32/);
      assert.equal(weights.stats.tensorsRead, 0, 'failed checks read nothing');
    } finally {
      weights.close();
    }
  });

  it('an untied checkpoint without lm_head.weight is an error', () => {
    const untied = path.join(dir, 'untied');
    copyFolder(tinyDir, untied);
    const config = JSON.parse(fs.readFileSync(path.join(untied, 'config.json'), 'utf8'));
    fs.writeFileSync(path.join(untied, 'config.json'), JSON.stringify({ ...config, tie_word_embeddings: false }));
    const { weights } = loadCheckpoint(untied);
    assert.equal(weights.has('lm_head.weight'), false);
    assert.throws(() => weights.get('lm_head.weight', [151936, 64]), /tensor "lm_head\.weight" not found in model\.safetensors and tie_word_embeddings is false/);
    weights.close();
  });

  it('missing config.json, missing weights and a broken config are errors naming folder and file', () => {
    const noConfig = path.join(dir, 'no-config');
    copyFolder(tinyDir, noConfig, ['config.json']);
    assert.throws(() => loadCheckpoint(noConfig), new RegExp(`${literally(noConfig).source}: config\\.json not found`));
    const noWeights = path.join(dir, 'no-weights');
    copyFolder(tinyDir, noWeights, ['model.safetensors']);
    assert.throws(() => loadCheckpoint(noWeights), new RegExp(`${literally(noWeights).source}: no weights, expected .*model\\.safetensors or .*model\\.safetensors\\.index\\.json`));
    fs.writeFileSync(path.join(noWeights, 'pytorch_model.bin'), '');
    assert.throws(() => loadCheckpoint(noWeights), /found pytorch_model\.bin: PyTorch pickles are not supported/);
    const badConfig = path.join(dir, 'bad-config');
    copyFolder(tinyDir, badConfig, ['model.safetensors']);
    fs.writeFileSync(path.join(badConfig, 'config.json'), '{"model_type": "videollama3_qwen2"');
    assert.throws(() => loadCheckpoint(badConfig), new RegExp(`${literally(path.join(badConfig, 'config.json')).source}: invalid JSON`));
    assert.throws(() => loadCheckpoint(path.join(dir, 'nowhere')), /not a directory/);
  });

  it('without generation_config.json the special ids come from config.json', () => {
    const noGen = path.join(dir, 'no-gen');
    copyFolder(tinyDir, noGen, ['generation_config.json']);
    const { generationConfig, weights } = loadCheckpoint(noGen);
    assert.deepEqual(generationConfig.eosTokenIds, [151645]);
    assert.equal(generationConfig.bosTokenId, 151643);
    assert.equal(generationConfig.doSample, false);
    weights.close();
  });

  it('accepts the local training naming (model.vision_encoder.vision_encoder.*)', () => {
    const training = path.join(dir, 'training');
    copyFolder(tinyDir, training, ['model.safetensors']);
    const st = SafetensorsFile.open(path.join(tinyDir, 'model.safetensors'));
    const renamed: Record<string, Tensor> = {};
    for (const name of st.names) {
      renamed[name.replace('model.vision_encoder.', 'model.vision_encoder.vision_encoder.')] = st.read(name);
    }
    st.close();
    writeSafetensors(path.join(training, 'model.safetensors'), renamed, { format: 'pt' });
    const { weights } = loadCheckpoint(training);
    try {
      assert.equal(weights.names.length, 66);
      assert.ok(weights.names.includes('model.vision_encoder.post_layernorm.weight'));
      assert.ok(!weights.names.some((n) => n.includes('vision_encoder.vision_encoder')));
      const a = weights.get('model.vision_encoder.post_layernorm.weight', [32]);
      const b = weights.get('model.vision_encoder.vision_encoder.post_layernorm.weight', [32]);
      assert.equal(a, b);
      assert.equal(canonicalWeightName('model.vision_encoder.vision_encoder.encoder.layers.0.mlp.fc1.bias'),
        'model.vision_encoder.encoder.layers.0.mlp.fc1.bias');
    } finally {
      weights.close();
    }
  });
});

describe('random checkpoints', () => {
  let dir: string;
  before(() => {
    dir = fs.mkdtempSync(path.join(tmpdir(), 'vl3-random-'));
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('real presets: parameter counts and shard layout of the published checkpoints', () => {
    const p2 = parameterList(PRESET_DIMS['2b']);
    const count = (ps: typeof p2): number => ps.reduce((s, p) => s + p.shape.reduce((a, b) => a * b, 1), 0);
    assert.equal(count(p2), 1_959_993_584); // spec 1.6: 3,919,987,168 bytes in bf16
    assert.equal(p2.some((p) => p.name === 'lm_head.weight'), false);
    const p7 = parameterList(PRESET_DIMS['7b']);
    assert.equal(count(p7), 8_044_744_944);
    const shards = planShards(p7, 5_000_000_000).map((s) => count(s) * 2);
    assert.equal(shards.length, 4);
    // The hub listing shows 4.88 GB and 4.93 GB for the first two shards.
    assert.deepEqual(shards.slice(0, 2).map((b) => (b / 1e9).toFixed(2)), ['4.88', '4.93']);
  });

  it('real presets: config files byte-compatible with the published ones', { skip: !fixtures && FIXTURES_MISSING }, () => {
    const f2 = randomCheckpointConfigFiles({ preset: '2b' });
    const f7 = randomCheckpointConfigFiles({ preset: '7b' });
    // Published sizes (spec 1.1-1.3); the fixture's files are the real 2B ones for these three.
    assert.equal(Buffer.byteLength(f2['config.json']!), 1222);
    assert.equal(Buffer.byteLength(f7['config.json']!), 1224);
    assert.equal(Buffer.byteLength(f7['generation_config.json']!), 243);
    assert.match(f7['generation_config.json']!, /"repetition_penalty": 1\.05,/);
    for (const name of ['generation_config.json', 'preprocessor_config.json', 'processor_config.json']) {
      assert.equal(f2[name], fs.readFileSync(path.join(tinyDir, name), 'utf8'), name);
    }
    // With the fixture's sizes (and its use_cache false) config.json is the fixture's, byte for byte.
    const tinyConfig = randomCheckpointConfigFiles({
      preset: '2b',
      dims: { hiddenSize: 64, intermediateSize: 128, numHiddenLayers: 2, numAttentionHeads: 4, numKeyValueHeads: 2, maxWindowLayers: 2,
        vision: { hiddenSize: 32, intermediateSize: 72, numHiddenLayers: 2, numAttentionHeads: 2 } },
    })['config.json']!;
    assert.equal(tinyConfig.replace('"use_cache": true', '"use_cache": false'), fs.readFileSync(path.join(tinyDir, 'config.json'), 'utf8'));
  });

  it('Python float formatting', () => {
    const cases: [number, string][] = [
      [0, '0.0'], [1e-6, '1e-06'], [1e6, '1000000.0'], [1 / 255, '0.00392156862745098'], [0.7, '0.7'], [1.05, '1.05'],
      [1e-4, '0.0001'], [1.5e-5, '1.5e-05'], [1e16, '1e+16'], [123456789012345.6, '123456789012345.6'], [-2.5, '-2.5'], [1e300, '1e+300'],
    ];
    for (const [x, text] of cases) assert.equal(pythonFloatRepr(x), text, String(x));
  });

  it('a tiny 2b-like checkpoint: single tied file, loads back, deterministic', { timeout: 10_000 }, () => {
    const started = performance.now();
    const options = (out: string, seed = 7): RandomCheckpointOptions => ({
      preset: '2b', out, seed, dims: TINY_DIMS, ...(fixtures ? { tokenizerFrom: tinyDir } : {}),
    });
    const a = writeRandomCheckpoint(options(path.join(dir, '2b-a')));
    writeRandomCheckpoint(options(path.join(dir, '2b-b')));
    writeRandomCheckpoint(options(path.join(dir, '2b-c'), 8));
    assert.ok(performance.now() - started < 2000, 'three tiny writes take well under 2 s');

    assert.ok(a.files.includes('model.safetensors'));
    assert.ok(!a.files.some((f) => f.includes('index')));
    if (fixtures) assert.ok(a.files.includes('tokenizer.json') && a.files.includes('chat_template.json'));
    const weightsFile = (name: string): string => path.join(dir, name, 'model.safetensors');
    assert.equal(sha256(weightsFile('2b-a')), sha256(weightsFile('2b-b')), 'same seed, same bytes');
    assert.notEqual(sha256(weightsFile('2b-a')), sha256(weightsFile('2b-c')), 'another seed, other bytes');

    const { config, weights } = loadCheckpoint(path.join(dir, '2b-a'));
    try {
      assert.equal(config.hiddenSize, 16);
      assert.equal(config.tieWordEmbeddings, true);
      assert.equal(weights.names.length, a.tensorCount);
      assert.equal(weights.has('lm_head.weight'), true);
      assert.equal(weights.get('lm_head.weight', [320, 16]), weights.get('model.embed_tokens.weight', [320, 16]));
      const st = SafetensorsFile.open(weightsFile('2b-a'));
      assert.deepEqual(st.metadata, { format: 'pt' });
      st.close();
      for (const p of parameterList({ ...PRESET_DIMS['2b'], ...TINY_DIMS, vision: { ...PRESET_DIMS['2b'].vision, ...TINY_DIMS.vision } })) {
        weights.get(p.name, p.shape, ['bf16']);
      }
    } finally {
      weights.close();
    }
  });

  it('a tiny 7b-like checkpoint: sharded with an index, untied lm_head, deterministic', { timeout: 10_000 }, () => {
    const options = (out: string): RandomCheckpointOptions => ({ preset: '7b', out, seed: 3, dims: TINY_DIMS, maxShardBytes: 12_000 });
    const a = writeRandomCheckpoint(options(path.join(dir, '7b-a')));
    writeRandomCheckpoint(options(path.join(dir, '7b-b')));
    const shardFiles = a.files.filter((f) => /^model-\d{5}-of-\d{5}\.safetensors$/.test(f));
    assert.ok(shardFiles.length >= 3, `${shardFiles.length} shards`);
    assert.ok(shardFiles.every((f) => f.endsWith(`-of-${String(shardFiles.length).padStart(5, '0')}.safetensors`)));
    for (const f of [...shardFiles, 'model.safetensors.index.json', 'config.json']) {
      assert.equal(sha256(path.join(dir, '7b-a', f)), sha256(path.join(dir, '7b-b', f)), f);
    }
    const index = JSON.parse(fs.readFileSync(path.join(dir, '7b-a', 'model.safetensors.index.json'), 'utf8'));
    assert.equal(index.metadata.total_size, a.totalBytes);
    assert.equal(Object.keys(index.weight_map).length, a.tensorCount);
    assert.equal(index.weight_map['model.embed_tokens.weight'], shardFiles[0]);
    assert.equal(index.weight_map['lm_head.weight'], shardFiles.at(-1));

    const { config, generationConfig, weights } = loadCheckpoint(path.join(dir, '7b-a'));
    try {
      assert.equal(config.tieWordEmbeddings, false);
      assert.equal(generationConfig.repetitionPenalty, 1.05);
      assert.equal(weights.store.files.length, shardFiles.length);
      const head = weights.get('lm_head.weight', [320, 16], ['bf16']);
      const embed = weights.get('model.embed_tokens.weight', [320, 16], ['bf16']);
      assert.notEqual(head, embed);
      // Values follow the recipe: N(0, 1/fan_in) for the head, N(0, 0.05²) for the embeddings.
      const std = (t: Tensor): number => {
        const v = Array.from(t.data as Uint16Array, bf16ToF32);
        return Math.sqrt(v.reduce((s, x) => s + x * x, 0) / v.length);
      };
      assert.ok(Math.abs(std(head) - 0.25) < 0.02, `head std ${std(head)}`);
      assert.ok(Math.abs(std(embed) - 0.05) < 0.005, `embed std ${std(embed)}`);
    } finally {
      weights.close();
    }
  });

  it('a tokenizer source without tokenizer.json is an error', () => {
    const empty = fs.mkdtempSync(path.join(dir, 'no-tok-'));
    assert.throws(
      () => writeRandomCheckpoint({ preset: '2b', out: path.join(dir, 'x'), dims: TINY_DIMS, tokenizerFrom: empty }),
      new RegExp(`tokenizer source ${literally(empty).source}: tokenizer\\.json not found`),
    );
    assert.equal(fs.existsSync(path.join(dir, 'x')), false, 'nothing written');
  });
});
