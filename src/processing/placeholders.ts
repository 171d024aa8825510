import { IMAGE_TOKEN } from './chat-template.js';

/**
 * Spec 5.2: after rendering, the k-th image token of the prompt (one per image, one per video frame, left to right)
 * is replaced by `counts[k]` copies of itself, one per visual token the vision encoder produces for that image or
 * frame. The number of image tokens in the prompt must equal the number of counts.
 */
export function expandImageTokens(prompt: string, counts: readonly number[], imageToken = IMAGE_TOKEN): string {
  const pieces = prompt.split(imageToken);
  const found = pieces.length - 1;
  if (found !== counts.length) {
    throw new Error(`the prompt has ${found} ${imageToken} placeholder(s) but ${counts.length} image/frame(s) were processed`);
  }
  let out = pieces[0];
  for (let k = 0; k < counts.length; k++) {
    const n = counts[k];
    if (!Number.isInteger(n) || n < 0) throw new Error(`invalid visual token count ${n} for image/frame ${k}`);
    out += imageToken.repeat(n) + pieces[k + 1];
  }
  return out;
}

/**
 * Visual tokens per image token for one processed item: an image (t = 1) gives one entry, a video of t frames gives
 * t entries; each is (h / m) * (w / m) for a grid of (t, h, w) patches merged m x m.
 */
export function visualTokenCounts(grid: readonly [number, number, number], mergeSize: number): number[] {
  const [t, h, w] = grid;
  if (h % mergeSize !== 0 || w % mergeSize !== 0) throw new Error(`grid ${h}x${w} is not divisible by merge size ${mergeSize}`);
  return new Array<number>(t).fill((h / mergeSize) * (w / mergeSize));
}
