import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  SafetensorsCheckpoint,
  SafetensorsFile,
  writeSafetensors,
  writeSafetensorsFrom,
  type F64Array,
} from '../src/model/safetensors.js';
import { startsOnLine } from '../src/tensor/native.js';
import { Tensor } from '../src/tensor/tensor.js';
import { FIXTURES_MISSING, fixturesDir, TINY_CHECKPOINT } from './fixtures.js';

const fixtures = fixturesDir();
const MANIFEST_DTYPES: Record<string, string> = { int64: 'i64', float32: 'f32', float64: 'f64', uint8: 'u8' };

const sha256 = (file: string): string => createHash('sha256').update(fs.readFileSync(file)).digest('hex');

/** A RegExp matching `text` literally (paths contain dots and slashes). */
const literally = (text: string): RegExp => new RegExp(text.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&'));

/** Builds a raw safetensors file from a header object and a data section, bypassing the writer's checks. */
function rawFile(file: string, header: unknown, data: Uint8Array, headerLength?: bigint): void {
  const json = Buffer.from(JSON.stringify(header));
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(headerLength ?? BigInt(json.length));
  fs.writeFileSync(file, Buffer.concat([prefix, json, data]));
}

function sampleTensors(): Record<string, Tensor | F64Array> {
  return {
    'b.bf16': new Tensor('bf16', [3], Uint16Array.from([0x3f80, 0xbf80, 0x7fc0])),
    'a.f16': new Tensor('f16', [1, 3], Uint16Array.from([0x3c00, 0xc000, 0x0001])),
    f32: Tensor.f32([2, 2], [1.5, -2.25, Math.PI, 1e-30]),
    f64: { dtype: 'f64', shape: [3], data: Float64Array.from([Math.PI, -1e300, 5e-324]) },
    i64: new Tensor('i64', [2], BigInt64Array.from([-(2n ** 62n), 151665n])),
    i32: Tensor.i32([5], [-1, 0, 1, 2 ** 31 - 1, -(2 ** 31)]),
    u8: new Tensor('u8', [7], Uint8Array.from([0, 1, 2, 127, 128, 254, 255])),
    scalar: Tensor.f32([], [42]),
    empty: Tensor.f32([0, 4]),
    '0': Tensor.i32([1], [7]), // integer-like name: must keep its place in the header order
  };
}

describe('safetensors round trip', () => {
  let dir: string;
  before(() => {
    dir = fs.mkdtempSync(path.join(tmpdir(), 'vl3-st-'));
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('writes and reads back every dtype, scalars, empty tensors and metadata', () => {
    const file = path.join(dir, 'all.safetensors');
    const tensors = sampleTensors();
    writeSafetensors(file, tensors, { format: 'pt', note: 'ünïcode ✓' });
    const st = SafetensorsFile.open(file);
    try {
      assert.deepEqual(st.metadata, { format: 'pt', note: 'ünïcode ✓' });
      assert.deepEqual([...st.names].sort(), Object.keys(tensors).sort());
      for (const [name, t] of Object.entries(tensors)) {
        const back = st.readAny(name);
        assert.equal(back.dtype, t.dtype, name);
        assert.deepEqual(back.shape, t.shape, name);
        assert.deepEqual(Array.from(back.data as ArrayLike<unknown>), Array.from(t.data as ArrayLike<unknown>), name);
        // Its own buffer, at most a cache line longer: the data starts on a line (weightBuffer).
        assert.ok(back.data.buffer.byteLength - back.data.byteLength <= 64, `${name} owns a fresh buffer`);
        assert.ok(startsOnLine(back.data), `${name} starts on a cache line`);
      }
      assert.deepEqual(st.info('b.bf16').shape, [3]);
      assert.throws(() => st.read('f64'), /F64; read it with readF64/);
      assert.throws(() => st.readF64('f32'), /not F64/);
      assert.throws(() => st.read('nope'), /no tensor named "nope"/);
    } finally {
      st.close();
    }
  });

  it('pads the header with spaces to a multiple of 8 and lays data out like the official writer', () => {
    const file = path.join(dir, 'layout.safetensors');
    writeSafetensors(file, sampleTensors());
    const bytes = fs.readFileSync(file);
    const n = Number(bytes.readBigUInt64LE(0));
    assert.equal(n % 8, 0);
    const text = bytes.subarray(8, 8 + n).toString('utf8');
    assert.match(text, /^\{"i64":/, 'no metadata key without metadata; header in data order');
    const json = text.trimEnd();
    assert.ok(text.slice(json.length).split('').every((c) => c === ' '));
    assert.ok(text.length - json.length < 8);
    // Data order: by dtype (I64, F64, F32, I32, BF16, F16, U8), then by name.
    // Names in header text order (JSON.parse would move the integer-like "0" first).
    const textOrder = [...json.matchAll(/"([^"]+)":\{"dtype"/g)].map((m) => m[1]!);
    assert.deepEqual(textOrder, ['i64', 'f64', 'empty', 'f32', 'scalar', '0', 'i32', 'b.bf16', 'a.f16', 'u8']);
    const header = JSON.parse(json) as Record<string, { data_offsets: [number, number] }>;
    let cursor = 0;
    for (const name of textOrder) {
      assert.equal(header[name]!.data_offsets[0], cursor, `${name} starts where the previous tensor ends`);
      cursor = header[name]!.data_offsets[1];
    }
    assert.equal(bytes.length, 8 + n + header.u8!.data_offsets[1]);
    assert.deepEqual(SafetensorsFile.open(file).metadata, {});
  });

  it('with an alignment of 64, the data and every tensor whose size is a multiple of 64 start at one', () => {
    const file = path.join(dir, 'aligned.safetensors');
    const source = (dtype: 'u8' | 'bf16' | 'f32', shape: number[], fill: number) => ({
      dtype,
      shape,
      produce: (emit: (b: Uint8Array) => void) => emit(new Uint8Array(shape.reduce((a, b) => a * b, 1) * ({ u8: 1, bf16: 2, f32: 4 } as const)[dtype]).fill(fill)),
    });
    writeSafetensorsFrom(file, {
      'odd.bias': source('bf16', [4304], 1),
      'a.weight': source('u8', [4, 288], 2),
      'z.weight': source('bf16', [64, 32], 3),
      'norm': source('f32', [3], 4),
      'b.weight': source('u8', [8, 72], 5),
    }, { format: 'pt' }, 64);
    const bytes = fs.readFileSync(file);
    const n = Number(bytes.readBigUInt64LE(0));
    assert.equal((8 + n) % 64, 0, 'the data starts on a 64-byte boundary');
    const opened = SafetensorsFile.open(file);
    const starts = Object.fromEntries(opened.names.map((name) => [name, opened.info(name).fileOffset]));
    for (const name of ['a.weight', 'z.weight', 'b.weight']) assert.equal(starts[name]! % 64, 0, name);
    // Whole multiples of 64 first (by element size, then name), the rest after them in the same order.
    assert.deepEqual(opened.names, ['z.weight', 'a.weight', 'b.weight', 'norm', 'odd.bias']);
    const b = opened.read('b.weight').data;
    assert.deepEqual([...new Uint8Array(b.buffer, b.byteOffset, 3)], [5, 5, 5]);
    assert.equal(opened.read('odd.bias').numel, 4304);
    opened.close();
    assert.throws(() => writeSafetensorsFrom(path.join(dir, 'bad.safetensors'), {}, undefined, 48), /alignment must be a power of two of at least 8, got 48/);
  });

  it('streams sources and refuses a source that produces the wrong number of bytes, leaving no file', () => {
    const file = path.join(dir, 'stream.safetensors');
    writeSafetensorsFrom(file, {
      x: { dtype: 'u8', shape: [2, 3], produce: (emit) => [0, 1, 2].forEach((i) => emit(Uint8Array.from([i, i + 10]))) },
    });
    assert.deepEqual(Array.from(SafetensorsFile.open(file).read('x').data as Uint8Array), [0, 10, 1, 11, 2, 12]);

    const bad = path.join(dir, 'short.safetensors');
    assert.throws(
      () => writeSafetensorsFrom(bad, { x: { dtype: 'f32', shape: [2], produce: (emit) => emit(new Uint8Array(4)) } }),
      /tensor "x" produced 4 bytes, expected 8/,
    );
    assert.equal(fs.existsSync(bad), false);
    assert.deepEqual(fs.readdirSync(dir).filter((f) => f.includes('partial')), []);
  });
});

describe('safetensors corrupt files', () => {
  let dir: string;
  before(() => {
    dir = fs.mkdtempSync(path.join(tmpdir(), 'vl3-st-bad-'));
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  const good = { a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'U8', shape: [4], data_offsets: [8, 12] } };
  // Each case writes a broken file at the given path; opening it must fail with a message naming the file.
  const cases: [string, (file: string) => void, RegExp][] = [
    ['truncated', (f) => rawFile(f, good, new Uint8Array(10)), /run past the end of the data/],
    ['too short', (f) => fs.writeFileSync(f, Buffer.alloc(5)), /too short/],
    ['huge header length', (f) => rawFile(f, good, new Uint8Array(12), 1n << 40n), /header length 1099511627776 is impossible/],
    ['header length past the end', (f) => rawFile(f, good, new Uint8Array(0), 500n), /header length 500 is impossible/],
    ['zero header length', (f) => rawFile(f, good, new Uint8Array(12), 0n), /header length 0 is impossible/],
    ['bad JSON', (f) => rawFile(f, '{"a": ', new Uint8Array(0)), /header is not a JSON object/],
    ['truncated JSON', (f) => {
      const body = Buffer.from('{"a":{]]]');
      const prefix = Buffer.alloc(8);
      prefix.writeBigUInt64LE(BigInt(body.length));
      fs.writeFileSync(f, Buffer.concat([prefix, body]));
    }, /not valid UTF-8 JSON/],
    ['overlapping offsets', (f) => rawFile(f, {
      a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
      b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] },
    }, new Uint8Array(12)), /tensor "b": data_offsets \[4, 12\] overlaps/],
    ['gap', (f) => rawFile(f, { a: { dtype: 'U8', shape: [2], data_offsets: [2, 4] } }, new Uint8Array(4)), /leaves a gap/],
    ['wrong byte count', (f) => rawFile(f, { a: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }, new Uint8Array(8)),
      /tensor "a": 8 bytes stored but shape \[3\] f32 needs 12/],
    ['unknown dtype', (f) => rawFile(f, { a: { dtype: 'C64', shape: [1], data_offsets: [0, 8] } }, new Uint8Array(8)),
      /tensor "a": unsupported dtype "C64"/],
    ['bad shape', (f) => rawFile(f, { a: { dtype: 'U8', shape: [-1], data_offsets: [0, 1] } }, new Uint8Array(1)), /invalid shape/],
    ['reversed offsets', (f) => rawFile(f, { a: { dtype: 'U8', shape: [0], data_offsets: [1, 0] } }, new Uint8Array(1)),
      /invalid data_offsets/],
    ['trailing bytes', (f) => rawFile(f, good, new Uint8Array(16)), /cover 12 bytes but the data section has 16/],
    ['bad metadata', (f) => rawFile(f, { __metadata__: { n: 1 } }, new Uint8Array(0)), /__metadata__.n is not a string/],
  ];
  for (const [name, make, message] of cases) {
    it(`${name} → error naming the file`, () => {
      const file = path.join(dir, `${name}.safetensors`);
      make(file);
      assert.throws(() => SafetensorsFile.open(file), (err: Error) => {
        assert.match(err.message, literally(file));
        assert.match(err.message, message);
        return true;
      });
    });
  }

  it('a missing file and a read after close are errors naming the file', () => {
    const missing = path.join(dir, 'missing.safetensors');
    assert.throws(() => SafetensorsFile.open(missing), literally(missing));
    const file = path.join(dir, 'closed.safetensors');
    writeSafetensors(file, { x: Tensor.f32([1], [1]) });
    const st = SafetensorsFile.open(file);
    st.close();
    assert.throws(() => st.read('x'), /after close/);
  });
});

describe('sharded checkpoint (model.safetensors.index.json)', () => {
  let dir: string;
  before(() => {
    dir = fs.mkdtempSync(path.join(tmpdir(), 'vl3-st-shards-'));
    writeSafetensors(path.join(dir, 'model-00001-of-00002.safetensors'), { a: Tensor.f32([2], [1, 2]), b: Tensor.i32([1], [3]) });
    writeSafetensors(path.join(dir, 'model-00002-of-00002.safetensors'), { c: new Tensor('bf16', [1], Uint16Array.from([0x3f80])) });
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  const writeIndex = (weightMap: Record<string, string>): void =>
    fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: 14 }, weight_map: weightMap }));

  it('opens every shard and reads tensors from the right one', () => {
    writeIndex({ a: 'model-00001-of-00002.safetensors', b: 'model-00001-of-00002.safetensors', c: 'model-00002-of-00002.safetensors' });
    const ckpt = SafetensorsCheckpoint.open(dir);
    try {
      assert.deepEqual(ckpt.names, ['a', 'b', 'c']);
      assert.equal(ckpt.files.length, 2);
      assert.equal(path.basename(ckpt.fileOf('c').path), 'model-00002-of-00002.safetensors');
      assert.deepEqual(Array.from(ckpt.read('a').data as Float32Array), [1, 2]);
      assert.equal(ckpt.info('c').dtype, 'bf16');
      assert.equal(ckpt.has('d'), false);
      assert.throws(() => ckpt.read('d'), /no tensor named "d"/);
    } finally {
      ckpt.close();
    }
  });

  it('reports a missing shard, a tensor absent from its shard and a path outside the folder', () => {
    writeIndex({ a: 'model-00001-of-00002.safetensors', x: 'model-00003-of-00003.safetensors' });
    assert.throws(() => SafetensorsCheckpoint.open(dir), /model-00003-of-00003\.safetensors: cannot open/);
    writeIndex({ c: 'model-00001-of-00002.safetensors' });
    assert.throws(() => SafetensorsCheckpoint.open(dir), /tensor "c" is not in .*model-00001-of-00002\.safetensors/);
    writeIndex({ a: '../model-00001-of-00002.safetensors' });
    assert.throws(() => SafetensorsCheckpoint.open(dir), /invalid file/);
    fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), '{"metadata": {}}');
    assert.throws(() => SafetensorsCheckpoint.open(dir), /"weight_map" is missing/);
  });

  it('a folder without weights is an error naming the expected files', () => {
    const empty = fs.mkdtempSync(path.join(dir, 'empty-'));
    assert.throws(() => SafetensorsCheckpoint.open(empty), /no weights found \(expected model\.safetensors or model\.safetensors\.index\.json\)/);
  });
});

describe('fixture safetensors files', { skip: !fixtures && FIXTURES_MISSING }, () => {
  const casesDir = fixtures ? path.join(fixtures, 'cases') : '';
  const caseNames = fixtures ? fs.readdirSync(casesDir).filter((c) => fs.statSync(path.join(casesDir, c)).isDirectory()) : [];
  let dir: string;
  before(() => {
    dir = fs.mkdtempSync(path.join(tmpdir(), 'vl3-st-fix-'));
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('finds the seven cases', () => assert.equal(caseNames.length, 7));

  for (const caseName of caseNames) {
    it(`${caseName}: every file matches the manifest's names, dtypes and shapes, and re-serialises byte-identically`, () => {
      const manifest = JSON.parse(fs.readFileSync(path.join(casesDir, caseName, 'manifest.json'), 'utf8'));
      const groups = manifest.files as Record<string, Record<string, { dtype: string; shape: number[] }>>;
      let checkedFiles = 0;
      for (const [group, tensors] of Object.entries(groups)) {
        const file = path.join(casesDir, caseName, `${group}.safetensors`);
        if (Object.keys(tensors).length === 0) {
          assert.equal(fs.existsSync(file), false, `${file} is not expected`);
          continue;
        }
        const st = SafetensorsFile.open(file);
        try {
          assert.deepEqual([...st.names].sort(), Object.keys(tensors).sort(), file);
          const copy: Record<string, Tensor | F64Array> = {};
          for (const [name, expected] of Object.entries(tensors)) {
            const info = st.info(name);
            assert.equal(info.dtype, MANIFEST_DTYPES[expected.dtype], `${file} ${name}`);
            assert.deepEqual(info.shape, expected.shape, `${file} ${name}`);
            copy[name] = st.readAny(name);
          }
          const rewritten = path.join(dir, `${caseName}-${group}.safetensors`);
          writeSafetensors(rewritten, copy, st.metadata);
          assert.equal(sha256(rewritten), sha256(file), `${file} re-serialised`);
          fs.rmSync(rewritten);
          checkedFiles++;
        } finally {
          st.close();
        }
      }
      assert.ok(checkedFiles >= 2);

      // Spot-check values against the manifest: ids, grids and the float64 timestamps.
      const inputs = SafetensorsFile.open(path.join(casesDir, caseName, 'inputs.safetensors'));
      try {
        const ids = inputs.read('input_ids');
        assert.deepEqual(ids.shape, [1, manifest.num_input_tokens]);
        assert.equal(Array.from(ids.data as BigInt64Array, Number).filter((id) => id === manifest.image_token_index).length,
          manifest.num_visual_tokens_before_compression);
        if (manifest.grid_sizes.length > 0) {
          assert.deepEqual(Array.from(inputs.read('grid_sizes').data as BigInt64Array, Number), manifest.grid_sizes.flat());
        }
        for (const item of manifest.visual_items ?? []) {
          if (item.modal !== 'video') continue;
          assert.deepEqual(Array.from(inputs.readF64(`item${item.item}_timestamps`).data), item.timestamps);
        }
      } finally {
        inputs.close();
      }
    });
  }

  it('the tiny checkpoint: 66 bf16 tensors, {"format":"pt"}, re-serialises byte-identically', () => {
    const file = path.join(fixtures!, TINY_CHECKPOINT, 'model.safetensors');
    const st = SafetensorsFile.open(file);
    try {
      assert.equal(st.names.length, 66);
      assert.deepEqual(st.metadata, { format: 'pt' });
      assert.ok(st.names.every((n) => st.info(n).dtype === 'bf16'));
      assert.deepEqual(st.info('model.embed_tokens.weight').shape, [151936, 64]);
      assert.equal(st.has('lm_head.weight'), false);
      const copy = Object.fromEntries(st.names.map((n) => [n, st.read(n)]));
      const rewritten = path.join(dir, 'tiny.safetensors');
      writeSafetensors(rewritten, copy, st.metadata);
      assert.equal(sha256(rewritten), sha256(file));
    } finally {
      st.close();
    }
  });
});
