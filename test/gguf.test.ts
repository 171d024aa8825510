// The bench's GGUF writer and Q8_0/Q4_0 quantizers, read back by an independent minimal GGUF reader written here.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import {
  dequantizeQ4_0,
  dequantizeQ8_0,
  f32ToF16,
  gguf,
  GgmlType,
  GgufType,
  quantizeQ4_0,
  quantizeQ8_0,
  writeGguf,
  writeQwen2Gguf,
  type GgufTensor,
  type GgufValue,
} from '../bench/gguf.js';
import { SafetensorsFile } from '../src/model/safetensors.js';
import { f16ToF32 } from '../src/tensor/dtype.js';
import { FIXTURES_MISSING, fixturesDir, TINY_CHECKPOINT } from './fixtures.js';

const fixtures = fixturesDir();
const dir = fs.mkdtempSync(path.join(tmpdir(), 'vl3-gguf-test-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));

interface ReadTensor {
  dims: number[];
  type: number;
  offset: number;
}

/** Reads a GGUF v3 file's header the way the specification lays it out; values keep their JS forms. */
function readGguf(file: string) {
  const buf = fs.readFileSync(file);
  let p = 0;
  const u32 = () => ((p += 4), buf.readUInt32LE(p - 4));
  const u64 = () => ((p += 8), buf.readBigUInt64LE(p - 8));
  const str = () => {
    const n = Number(u64());
    p += n;
    return buf.toString('utf8', p - n, p);
  };
  const scalar = (type: number): unknown => {
    switch (type) {
      case 0: return ((p += 1), buf.readUInt8(p - 1));
      case 1: return ((p += 1), buf.readInt8(p - 1));
      case 2: return ((p += 2), buf.readUInt16LE(p - 2));
      case 3: return ((p += 2), buf.readInt16LE(p - 2));
      case 4: return u32();
      case 5: return ((p += 4), buf.readInt32LE(p - 4));
      case 6: return ((p += 4), buf.readFloatLE(p - 4));
      case 7: return ((p += 1), buf.readUInt8(p - 1) !== 0);
      case 8: return str();
      case 10: return u64();
      case 11: return ((p += 8), buf.readBigInt64LE(p - 8));
      case 12: return ((p += 8), buf.readDoubleLE(p - 8));
      default: throw new Error(`unknown value type ${type} at byte ${p}`);
    }
  };
  assert.equal(buf.toString('latin1', 0, 4), 'GGUF');
  p = 4;
  const version = u32();
  const tensorCount = Number(u64());
  const kvCount = Number(u64());
  const metadata = new Map<string, { type: number; itemType?: number; value: unknown }>();
  for (let i = 0; i < kvCount; i++) {
    const key = str();
    const type = u32();
    if (type === 9) {
      const itemType = u32();
      const n = Number(u64());
      const value = Array.from({ length: n }, () => scalar(itemType));
      metadata.set(key, { type, itemType, value });
    } else {
      metadata.set(key, { type, value: scalar(type) });
    }
  }
  const tensors = new Map<string, ReadTensor>();
  for (let i = 0; i < tensorCount; i++) {
    const name = str();
    const nd = u32();
    const dims = Array.from({ length: nd }, () => Number(u64()));
    const type = u32();
    tensors.set(name, { dims, type, offset: Number(u64()) });
  }
  const alignment = Number(metadata.get('general.alignment')?.value ?? 32);
  const dataStart = Math.ceil(p / alignment) * alignment;
  assert.ok(buf.subarray(p, dataStart).every((b) => b === 0), 'padding before the data is zeros');
  const data = (name: string, bytes: number) => {
    const t = tensors.get(name)!;
    return new Uint8Array(buf.buffer, buf.byteOffset + dataStart + t.offset, bytes);
  };
  return { version, metadata, tensors, alignment, dataStart, size: buf.length, data };
}

function lcg(seed: number) {
  let x = seed >>> 0;
  return () => {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    return x / 2 ** 32;
  };
}

const bytes = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
const source = (name: string, type: GgmlType, dims: number[], data: Uint8Array): GgufTensor => ({ name, type, dims, produce: (emit) => emit(data) });

describe('GGUF writer', () => {
  it('round-trips every metadata type, arrays of strings and numbers, and tensor infos at the default alignment', () => {
    const file = path.join(dir, 'types.gguf');
    const metadata = new Map<string, GgufValue>([
      ['general.architecture', gguf.str('qwen2')],
      ['u8', { type: GgufType.U8, value: 255 }],
      ['i8', { type: GgufType.I8, value: -128 }],
      ['u16', { type: GgufType.U16, value: 65535 }],
      ['i16', { type: GgufType.I16, value: -32768 }],
      ['u32', gguf.u32(4294967295)],
      ['i32', gguf.i32(-5)],
      ['f32', gguf.f32(1e-6)],
      ['bool', gguf.bool(true)],
      ['u64', gguf.u64(2n ** 63n + 5n)],
      ['i64', { type: GgufType.I64, value: -(2n ** 40n) }],
      ['f64', { type: GgufType.F64, value: Math.PI }],
      ['unicode', gguf.str('Ġhello ☃ 你好')],
      ['strings', gguf.array(GgufType.STRING, ['a', '', 'Ġb c', '<|im_end|>'])],
      ['ints', gguf.array(GgufType.I32, [1, -2, 3])],
      ['empty', gguf.array(GgufType.F32, [])],
    ]);
    const f32 = Float32Array.from([1, -2, 3.5, 0]);
    const bf16 = Uint16Array.from([0x3f80, 0xc000, 0x4060]); // 1, -2, 3.5: an odd byte count, so padding follows
    const q8 = new Uint8Array(34 * 2);
    quantizeQ8_0(Float32Array.from({ length: 64 }, (_, i) => i - 32), q8);
    writeGguf(file, metadata, [
      source('a', GgmlType.F32, [4], bytes(f32)),
      source('b', GgmlType.BF16, [3, 1], bytes(bf16)),
      source('c', GgmlType.Q8_0, [32, 2], q8),
    ]);
    const r = readGguf(file);
    assert.equal(r.version, 3);
    assert.equal(r.metadata.size, metadata.size);
    for (const [key, v] of metadata) {
      const got = r.metadata.get(key)!;
      assert.equal(got.type, v.type, key);
      if (v.type === GgufType.ARRAY) {
        assert.equal(got.itemType, v.itemType, key);
        assert.deepEqual(got.value, v.value, key);
      } else if (v.type === GgufType.F32) {
        assert.equal(got.value, Math.fround(v.value as number));
      } else if (v.type === GgufType.U64 || v.type === GgufType.I64) {
        assert.equal(got.value, BigInt(v.value as bigint));
      } else {
        assert.equal(got.value, v.value, key);
      }
    }
    assert.deepEqual([...r.tensors.keys()], ['a', 'b', 'c']);
    assert.deepEqual(r.tensors.get('b'), { dims: [3, 1], type: GgmlType.BF16, offset: 32 });
    assert.deepEqual(r.tensors.get('c'), { dims: [32, 2], type: GgmlType.Q8_0, offset: 64 });
    assert.equal(r.dataStart % 32, 0);
    assert.deepEqual([...r.data('a', 16)], [...bytes(f32)]);
    assert.deepEqual([...r.data('b', 6)], [...bytes(bf16)]);
    assert.deepEqual([...r.data('c', 68)], [...q8]);
    assert.equal(r.size, r.dataStart + 64 + 68, 'no padding after the last tensor');
  });

  it('honours general.alignment, and refuses wrong sizes, duplicate names and bad values', () => {
    const file = path.join(dir, 'aligned.gguf');
    const metadata = new Map([['general.alignment', gguf.u32(64)]]);
    writeGguf(file, metadata, [source('x', GgmlType.F32, [3], new Uint8Array(12)), source('y', GgmlType.F32, [1], new Uint8Array(4))]);
    const r = readGguf(file);
    assert.equal(r.alignment, 64);
    assert.equal(r.dataStart % 64, 0);
    assert.equal(r.tensors.get('y')!.offset, 64);

    assert.throws(() => writeGguf(file, new Map(), [source('x', GgmlType.F32, [3], new Uint8Array(8))]), /produced 8 bytes, expected 12/);
    assert.throws(() => writeGguf(file, new Map(), [source('x', GgmlType.F32, [1], new Uint8Array(4)), source('x', GgmlType.F32, [1], new Uint8Array(4))]), /appears twice/);
    assert.throws(() => writeGguf(file, new Map([['k', gguf.u32(-1)]]), []), /not an integer in/);
    assert.throws(() => writeGguf(file, new Map(), [source('q', GgmlType.Q4_0, [20, 2], new Uint8Array(0))]), /blocks of 32/);
    assert.ok(!fs.readdirSync(dir).some((n) => n.includes('.partial-')), 'a failed write leaves no partial file');
  });
});

describe('fp16 and the block quantizers', () => {
  it('f32ToF16 inverts f16ToF32 on every finite half and rounds ties to even', () => {
    for (let h = 0; h < 0x10000; h++) {
      if ((h & 0x7c00) === 0x7c00) continue;
      assert.equal(f32ToF16(f16ToF32(h)), h);
    }
    assert.equal(f32ToF16(1 + 2 ** -11), 0x3c00); // halfway between 1 and the next half: to even
    assert.equal(f32ToF16(1 + 3 * 2 ** -11), 0x3c02);
    assert.equal(f32ToF16(65520), 0x7c00); // rounds past the largest half
    assert.equal(f32ToF16(2 ** -25), 0x0000); // half of the smallest subnormal: to even (zero)
    assert.equal(f32ToF16(3 * 2 ** -26), 0x0001);
  });

  it('Q8_0: block layout and error within half a step', () => {
    const block = Float32Array.from({ length: 32 }, (_, i) => (i - 16) / 16); // max |x| = 1 at i = 0
    const out = new Uint8Array(34);
    quantizeQ8_0(block, out);
    const d = f16ToF32(out[0]! | (out[1]! << 8));
    assert.ok(Math.abs(d - 1 / 127) < 1e-5);
    assert.equal((out[2]! << 24) >> 24, -127); // element 0, a signed byte
    assert.equal(out[2 + 16], 0);

    const rand = lcg(1);
    const n = 32 * 512;
    const x = Float32Array.from({ length: n }, (_, i) => (rand() - 0.5) * (1 + (i >> 5) % 7) ** 2);
    const q = new Uint8Array((n / 32) * 34);
    quantizeQ8_0(x, q);
    const y = dequantizeQ8_0(q, n);
    for (let b = 0; b < n; b += 32) {
      const amax = Math.max(...x.subarray(b, b + 32).map(Math.abs));
      const step = amax / 127;
      for (let j = b; j < b + 32; j++) assert.ok(Math.abs(x[j]! - y[j]!) <= step * 0.5 * 1.002 + 1e-7, `element ${j}`);
    }
  });

  it('Q4_0: nibble layout and error within one step', () => {
    const block = Float32Array.from({ length: 32 }, (_, i) => (i < 16 ? -8 + i : (i - 16) / 2)); // largest magnitude -8 → d = 1
    const out = new Uint8Array(18);
    quantizeQ4_0(block, out);
    assert.equal(f16ToF32(out[0]! | (out[1]! << 8)), 1);
    for (let j = 0; j < 16; j++) {
      assert.equal(out[2 + j]! & 0x0f, j, `low nibble ${j} is element ${j}`);
      assert.equal(out[2 + j]! >> 4, Math.min(15, Math.round(j / 2) + 8), `high nibble ${j} is element ${j + 16}`);
    }

    const rand = lcg(2);
    const n = 32 * 512;
    const x = Float32Array.from({ length: n }, (_, i) => (rand() - 0.5) * (1 + (i >> 5) % 5));
    const q = new Uint8Array((n / 32) * 18);
    quantizeQ4_0(x, q);
    const y = dequantizeQ4_0(q, n);
    for (let b = 0; b < n; b += 32) {
      const amax = Math.max(...x.subarray(b, b + 32).map(Math.abs));
      const step = amax / 8;
      // Half a step inside the range; a value near +max on the side opposite the largest magnitude is clamped to
      // code 15 = 7 steps, one step short at most.
      for (let j = b; j < b + 32; j++) assert.ok(Math.abs(x[j]! - y[j]!) <= step * 1.002 + 1e-7, `element ${j}`);
    }
  });
});

describe('a checkpoint as a llama.cpp qwen2 GGUF', { skip: !fixtures && FIXTURES_MISSING }, () => {
  const checkpointDir = path.join(fixtures ?? '', TINY_CHECKPOINT);

  it('writes llama.cpp names, metadata and a vocabulary padded to the embedding rows', () => {
    const file = path.join(dir, 'tiny-bf16.gguf');
    writeQwen2Gguf({ checkpointDir, out: file, type: 'bf16' });
    const r = readGguf(file);
    const meta = (key: string) => r.metadata.get(key)?.value;
    assert.equal(meta('general.architecture'), 'qwen2');
    assert.equal(meta('general.file_type'), 32);
    assert.equal(meta('qwen2.block_count'), 2);
    assert.equal(meta('qwen2.embedding_length'), 64);
    assert.equal(meta('qwen2.feed_forward_length'), 128);
    assert.equal(meta('qwen2.attention.head_count'), 4);
    assert.equal(meta('qwen2.attention.head_count_kv'), 2);
    assert.equal(meta('qwen2.context_length'), 32768);
    assert.equal(meta('qwen2.rope.freq_base'), 1e6);
    assert.equal(meta('qwen2.attention.layer_norm_rms_epsilon'), Math.fround(1e-6));
    assert.equal(meta('tokenizer.ggml.model'), 'gpt2');
    assert.equal(meta('tokenizer.ggml.pre'), 'qwen2');
    const tokens = meta('tokenizer.ggml.tokens') as string[];
    const types = meta('tokenizer.ggml.token_type') as number[];
    assert.equal(tokens.length, 151936);
    assert.equal(types.length, 151936);
    assert.equal(tokens[0], '!');
    assert.equal(types[0], 1);
    assert.equal(tokens[151643], '<|endoftext|>');
    assert.equal(types[151643], 3);
    assert.equal(tokens[151659], '<|fim_prefix|>');
    assert.equal(types[151659], 3, 'added <|...|> tokens are control even when not flagged special');
    assert.equal(tokens[151665], '<image>');
    assert.equal(types[151665], 3);
    assert.equal(tokens[151935], '[PAD151935]');
    assert.equal(types[151935], 4);
    assert.equal((meta('tokenizer.ggml.merges') as string[])[0], 'Ġ Ġ');
    assert.equal(meta('tokenizer.ggml.bos_token_id'), 151643);
    assert.equal(meta('tokenizer.ggml.eos_token_id'), 151645);
    assert.equal(meta('tokenizer.ggml.padding_token_id'), 151643);
    assert.equal(meta('tokenizer.ggml.add_bos_token'), false);

    assert.equal(r.tensors.size, 1 + 2 * 12 + 1, 'tied: no output.weight');
    assert.ok(!r.tensors.has('output.weight'));
    assert.deepEqual(r.tensors.get('token_embd.weight'), { ...r.tensors.get('token_embd.weight'), dims: [64, 151936], type: GgmlType.BF16 });
    assert.deepEqual(r.tensors.get('blk.1.ffn_down.weight')!.dims, [128, 64]);
    assert.deepEqual(r.tensors.get('blk.1.attn_k.weight')!.dims, [64, 32]);
    for (const name of ['blk.0.attn_q.bias', 'blk.0.attn_k.bias', 'blk.0.attn_norm.weight', 'blk.1.ffn_norm.weight', 'output_norm.weight']) {
      assert.equal(r.tensors.get(name)!.type, GgmlType.F32, `${name} stays F32`);
    }
    for (const t of r.tensors.values()) assert.equal(t.offset % 32, 0);

    const st = SafetensorsFile.open(path.join(checkpointDir, 'model.safetensors'));
    try {
      const gate = st.read('model.layers.1.mlp.gate_proj.weight');
      const stored = new Uint16Array(r.data('blk.1.ffn_gate.weight', gate.data.length * 2).slice().buffer);
      assert.deepEqual(stored, gate.data, 'BF16 tensors are the checkpoint bytes, rows kept in order');
      const bias = st.read('model.layers.0.self_attn.k_proj.bias');
      const f32 = new Float32Array(r.data('blk.0.attn_k.bias', bias.data.length * 4).slice().buffer);
      assert.deepEqual(Array.from(f32), Array.from(bias.data as Uint16Array, (b) => new Float32Array(new Uint32Array([b << 16]).buffer)[0]));
    } finally {
      st.close();
    }
  });

  for (const type of ['q8_0', 'q4_0'] as const) {
    it(`${type}: matrices quantized, dequantizing to the checkpoint's weights within the format's error`, () => {
      const file = path.join(dir, `tiny-${type}.gguf`);
      writeQwen2Gguf({ checkpointDir, out: file, type });
      const r = readGguf(file);
      const ggmlType = type === 'q8_0' ? GgmlType.Q8_0 : GgmlType.Q4_0;
      assert.equal(r.metadata.get('general.quantization_version')?.value, 2);
      for (const name of ['token_embd.weight', 'blk.0.attn_q.weight', 'blk.1.ffn_down.weight']) assert.equal(r.tensors.get(name)!.type, ggmlType);
      assert.equal(r.tensors.get('blk.0.attn_v.bias')!.type, GgmlType.F32);

      const st = SafetensorsFile.open(path.join(checkpointDir, 'model.safetensors'));
      try {
        const w = st.read('model.layers.0.mlp.up_proj.weight');
        const x = Float32Array.from(w.data as Uint16Array, (b) => new Float32Array(new Uint32Array([b << 16]).buffer)[0]!);
        const blockBytes = type === 'q8_0' ? 34 : 18;
        const y = (type === 'q8_0' ? dequantizeQ8_0 : dequantizeQ4_0)(r.data('blk.0.ffn_up.weight', (x.length / 32) * blockBytes), x.length);
        const levels = type === 'q8_0' ? 127 : 8;
        const slack = type === 'q8_0' ? 0.5 : 1;
        for (let b = 0; b < x.length; b += 32) {
          const step = Math.max(...x.subarray(b, b + 32).map(Math.abs)) / levels;
          for (let j = b; j < b + 32; j++) assert.ok(Math.abs(x[j]! - y[j]!) <= step * slack * 1.002 + 1e-7, `element ${j}`);
        }
      } finally {
        st.close();
      }
    });
  }
});
