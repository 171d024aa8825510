// The tokenizer against the reference (slow Qwen2Tokenizer) golden strings, plus the streaming decoder.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { before, describe, it } from 'node:test';
import { byteLevelTokenBytes } from '../src/processing/stream-decoder.js';
import { Tokenizer } from '../src/processing/tokenizer.js';
import { FIXTURES_MISSING, fixturesDir, readJson, TINY_CHECKPOINT } from './fixtures.js';

interface GoldenCase {
  name: string;
  text: string;
  ids: number[];
  decoded: string;
  decoded_skip_special: string;
}

const fixtures = fixturesDir();
const skip = fixtures ? false : FIXTURES_MISSING;

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/** Streams `ids` one by one; returns every piece, flush last. */
function streamPieces(tokenizer: Tokenizer, ids: readonly number[], skipSpecialTokens: boolean): string[] {
  const decoder = tokenizer.createStreamDecoder({ skipSpecialTokens });
  const pieces = ids.map((id) => decoder.push(id));
  pieces.push(decoder.flush());
  return pieces;
}

/** The id of the single-byte token for `byte` (byte-level BPE gives every byte its own token). */
function byteToken(tokenizer: Tokenizer, byte: number): number {
  // Bytes that are not printable Latin-1 are written as U+0100 + their rank among those bytes.
  const printable = (b: number) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  if (printable(byte)) return tokenizer.tokenId(String.fromCharCode(byte));
  let rank = 0;
  for (let b = 0; b < byte; b++) if (!printable(b)) rank++;
  return tokenizer.tokenId(String.fromCharCode(256 + rank));
}

describe('Tokenizer (golden tokenization)', { skip }, () => {
  let tokenizer: Tokenizer;
  let cases: GoldenCase[];

  before(async () => {
    tokenizer = await Tokenizer.load(join(fixtures!, TINY_CHECKPOINT));
    cases = readJson<{ cases: GoldenCase[] }>(join(fixtures!, 'tokenizer', 'golden_tokenization.json')).cases;
    assert.equal(cases.length, 34);
  });

  it('encodes every golden string to the reference ids', () => {
    for (const c of cases) assert.deepEqual(tokenizer.encode(c.text), c.ids, c.name);
  });

  it('decodes every golden case with and without skipping special tokens', () => {
    for (const c of cases) {
      assert.equal(tokenizer.decode(c.ids), c.decoded, c.name);
      assert.equal(tokenizer.decode(c.ids, { skipSpecialTokens: true }), c.decoded_skip_special, `${c.name} (skip special)`);
    }
  });

  it('streams every golden case to the full decode, never printing half a character', () => {
    for (const c of cases) {
      for (const skipSpecialTokens of [false, true]) {
        const full = skipSpecialTokens ? c.decoded_skip_special : c.decoded;
        const pieces = streamPieces(tokenizer, c.ids, skipSpecialTokens);
        assert.equal(pieces.join(''), full, `${c.name} skip=${skipSpecialTokens}`);
        for (const piece of pieces) {
          if (!full.includes('\uFFFD')) assert.ok(!piece.includes('\uFFFD'), `${c.name}: U+FFFD in ${JSON.stringify(piece)}`);
          assert.ok(!LONE_SURROGATE.test(piece), `${c.name}: split surrogate pair in ${JSON.stringify(piece)}`);
        }
      }
    }
  });

  it('holds back a character split across tokens until it is complete', () => {
    // " 🦙" = 20 F0 9F A6 99 is tokenized as [20 F0 9F] [A6] [99].
    const ids = tokenizer.encode(' 🦙');
    assert.deepEqual(ids, [11162, 99, 247]);
    assert.deepEqual(streamPieces(tokenizer, ids, false), [' ', '', '🦙', '']);
  });

  it('turns an incomplete or interrupted character into U+FFFD exactly as decode does', () => {
    const [e4, b8, ad] = [0xe4, 0xb8, 0xad].map((b) => byteToken(tokenizer, b)); // 中 = E4 B8 AD
    const a = tokenizer.tokenId('a');
    const imEnd = tokenizer.eosTokenId;
    const image = tokenizer.imageTokenId;
    const sequences = [
      [e4, b8, ad],
      [e4, b8, a], // truncated character, then ASCII
      [e4, b8], // truncated at the end: flush prints it
      [ad, a], // lone continuation byte
      [e4, imEnd, b8, ad], // special token inside a character: joined when skipped, broken when kept
      [e4, image, b8, ad], // <image> is never skipped
    ];
    for (const ids of sequences) {
      for (const skipSpecialTokens of [false, true]) {
        const full = tokenizer.decode(ids, { skipSpecialTokens });
        assert.equal(streamPieces(tokenizer, ids, skipSpecialTokens).join(''), full, `${ids} skip=${skipSpecialTokens}`);
      }
    }
    assert.equal(tokenizer.decode([e4, b8, a]), '\uFFFDa');
    assert.equal(tokenizer.decode([e4, imEnd, b8, ad], { skipSpecialTokens: true }), '中');
    assert.equal(tokenizer.decode([e4, image, b8, ad], { skipSpecialTokens: true }), '\uFFFD<image>\uFFFD\uFFFD');
  });

  it('has the reference special ids and sizes', () => {
    assert.equal(tokenizer.eosTokenId, 151645);
    assert.equal(tokenizer.padTokenId, 151643);
    assert.equal(tokenizer.imageTokenId, 151665);
    assert.equal(tokenizer.vocabSize, 151668);
    // all_special_ids: pad, eos and the 13 additional special tokens (<|im_start|> .. <|video_pad|>).
    const expected = Array.from({ length: 151656 - 151643 + 1 }, (_, i) => 151643 + i);
    assert.deepEqual([...tokenizer.specialIds].sort((x, y) => x - y), expected);
    for (const kept of ['<image>', '<|stream_start|>', '<|stream_end|>', '<tool_call>', '<|file_sep|>']) {
      assert.ok(!tokenizer.specialIds.has(tokenizer.tokenId(kept)), kept);
    }
    assert.equal(tokenizer.tokenId('<|im_start|>'), 151644);
    assert.equal(tokenizer.tokenId('user'), 872);
    assert.equal(tokenizer.tokenId('assistant'), 77091);
    assert.equal(tokenizer.tokenId('system'), 8948);
    assert.equal(tokenizer.tokenId('Ċ'), 198); // "\n" in byte-level form
    assert.throws(() => tokenizer.tokenId('<not a token>'), /unknown token/);
  });

  it('handles empty input, padding-row ids and invalid ids', () => {
    assert.deepEqual(tokenizer.encode(''), []);
    assert.equal(tokenizer.decode([]), '');
    // Rows 151668..151935 of the embedding have no token: they print nothing (as the Rust tokenizers do).
    assert.equal(tokenizer.decode([9707, 151700, 151935]), 'Hello');
    assert.equal(streamPieces(tokenizer, [9707, 151700], true).join(''), 'Hello');
    assert.throws(() => tokenizer.decode([-1]), /invalid token id -1/);
    assert.throws(() => tokenizer.createStreamDecoder().push(1.5), /invalid token id 1.5/);
  });

  it('decodes a typed array as a list', () => {
    assert.equal(tokenizer.decode(Int32Array.from([9707, 11, 1879, 0])), 'Hello, world!');
  });
});

describe('byte-level token bytes', () => {
  it('maps printable Latin-1 to itself and the shifted characters back to their bytes', () => {
    assert.deepEqual(Array.from(byteLevelTokenBytes('Ġthe')), [0x20, 0x74, 0x68, 0x65]);
    assert.deepEqual(Array.from(byteLevelTokenBytes('ĊĉĀ')), [0x0a, 0x09, 0x00]);
    assert.deepEqual(Array.from(byteLevelTokenBytes('Ģ¡ÿŃ')), [0x80, 0xa1, 0xff, 0xad]);
    assert.throws(() => byteLevelTokenBytes('中'), /not a byte-level BPE token/);
  });
});

describe('Tokenizer.load errors', () => {
  it('names a missing file', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vl3-tok-'));
    try {
      await assert.rejects(Tokenizer.load(dir), (err: Error) => err.message.includes(join(dir, 'tokenizer.json')) && /not found/.test(err.message));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('names an invalid JSON file', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vl3-tok-'));
    try {
      writeFileSync(join(dir, 'tokenizer.json'), '{"model": {}, "decoder": {"type": "ByteLevel"}}');
      writeFileSync(join(dir, 'tokenizer_config.json'), '{ not json');
      await assert.rejects(Tokenizer.load(dir), (err: Error) => err.message.includes(join(dir, 'tokenizer_config.json')) && /not valid JSON/.test(err.message));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
