/**
 * Incremental detokenisation for byte-level BPE (GPT-2 / Qwen2 style).
 *
 * A byte-level token is a run of raw bytes, so one multi-byte UTF-8 character can be split across tokens (most CJK
 * characters and emoji are). Decoding a token on its own would then print U+FFFD. Instead each token is turned back
 * into its bytes and fed to a streaming `TextDecoder`, which holds an incomplete trailing sequence until the next
 * bytes arrive. Work per token is proportional to the token's length, independent of how much was generated before,
 * and the concatenated output is exactly a one-shot decode of all the bytes (the WHATWG decoder guarantees that
 * streaming and one-shot decoding agree, including where invalid bytes become U+FFFD).
 */

/**
 * The byte <-> character table of byte-level BPE: printable Latin-1 bytes stand for themselves, the other 68 bytes
 * are shifted to U+0100.. so that every vocabulary entry is printable text.
 */
function buildCharToByte(): Int16Array {
  const charToByte = new Int16Array(256 + 68).fill(-1);
  const printable = (b: number) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  let shifted = 0;
  for (let b = 0; b < 256; b++) {
    if (printable(b)) charToByte[b] = b;
    else charToByte[256 + shifted++] = b;
  }
  return charToByte;
}

const CHAR_TO_BYTE = buildCharToByte();

/** The raw bytes a byte-level vocabulary entry (e.g. "Ġthe") stands for. */
export function byteLevelTokenBytes(token: string): Uint8Array {
  const bytes = new Uint8Array(token.length);
  for (let i = 0; i < token.length; i++) {
    const code = token.charCodeAt(i);
    const byte = code < CHAR_TO_BYTE.length ? CHAR_TO_BYTE[code] : -1;
    if (byte < 0) throw new Error(`token ${JSON.stringify(token)} is not a byte-level BPE token`);
    bytes[i] = byte;
  }
  return bytes;
}

/** How the stream decoder sees the vocabulary: byte-level entries, and added tokens that are printed verbatim. */
export interface StreamVocabulary {
  /** Content of an added token (`<|im_end|>`, `<image>`, ...), or undefined for ordinary vocabulary ids. */
  addedTokenContent(id: number): string | undefined;
  /** The byte-level string of an ordinary id, or undefined when the id has no token. */
  byteLevelToken(id: number): string | undefined;
  /** Whether the id is dropped when special tokens are skipped. */
  isSkippedSpecial(id: number): boolean;
}

export interface StreamDecoder {
  /** Adds one token id; returns the text completed by it (often '', e.g. inside a split character). */
  push(id: number): string;
  /** Ends the stream: returns what is still held back (an incomplete character becomes U+FFFD, as in decode). */
  flush(): string;
}

export class ByteLevelStreamDecoder implements StreamDecoder {
  // ignoreBOM keeps a leading U+FEFF as text, as Python's bytes.decode('utf-8') and the batch decoder do.
  private readonly utf8 = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });

  constructor(
    private readonly vocabulary: StreamVocabulary,
    private readonly skipSpecialTokens: boolean,
  ) {}

  push(id: number): string {
    // Skipping happens before decoding (as in the batch decode): the bytes on either side of a skipped token join.
    if (this.skipSpecialTokens && this.vocabulary.isSkippedSpecial(id)) return '';
    const added = this.vocabulary.addedTokenContent(id);
    if (added !== undefined) {
      // An added token is text, not bytes. Bytes still pending cannot continue across it: flush them first. This
      // equals the batch decode, where an incomplete sequence followed by the token's first byte (never a
      // continuation byte) also becomes U+FFFD.
      return this.utf8.decode() + added;
    }
    return this.utf8.decode(this.bytesOf(id), { stream: true });
  }

  flush(): string {
    return this.utf8.decode();
  }

  private bytesOf(id: number): Uint8Array {
    const token = this.vocabulary.byteLevelToken(id);
    // Ids without a token (the embedding's padding rows) print nothing, like the Rust tokenizers' decode.
    return token === undefined ? new Uint8Array(0) : byteLevelTokenBytes(token);
  }
}
