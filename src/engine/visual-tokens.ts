import type { PositionKey } from './prefix-cache.js';

/**
 * Where each visual token of the language model's prompt comes from: prompt position `positions[j]` takes row
 * `rows[j]` of item `items[j]`'s features (rows numbered before pruning, so that DiffFP's choice shows).
 */
export interface VisualPositions {
  positions: Int32Array;
  items: Int32Array;
  rows: Int32Array;
}

/**
 * The visual positions of a prompt: its `<image>` tokens in order take the visual tokens `keepMask` keeps, items
 * one after another with `tokensPerItem[i]` tokens each (all of them without a mask).
 */
export function visualPositions(ids: readonly number[], imageTokenId: number, tokensPerItem: readonly number[], keepMask?: Uint8Array): VisualPositions {
  const total = tokensPerItem.reduce((a, b) => a + b, 0);
  if (keepMask && keepMask.length !== total) throw new Error(`the keep mask covers ${keepMask.length} visual tokens but the items have ${total}`);
  const sources: [number, number][] = [];
  let start = 0;
  tokensPerItem.forEach((n, item) => {
    for (let row = 0; row < n; row++) if (!keepMask || keepMask[start + row]) sources.push([item, row]);
    start += n;
  });
  const positions: number[] = [];
  ids.forEach((id, p) => id === imageTokenId && positions.push(p));
  if (positions.length !== sources.length) throw new Error(`the prompt has ${positions.length} image tokens but its media keep ${sources.length} visual tokens`);
  return {
    positions: Int32Array.from(positions),
    items: Int32Array.from(sources, ([item]) => item),
    rows: Int32Array.from(sources, ([, row]) => row),
  };
}

/** The prefix cache's key of every prompt position: the token id, or for a visual token its feature key and row. */
export function positionKeys(ids: readonly number[], visual: VisualPositions, itemKeys: readonly string[]): PositionKey[] {
  const keys: PositionKey[] = ids.slice();
  visual.positions.forEach((p, j) => {
    keys[p] = `${itemKeys[visual.items[j]!]}:${visual.rows[j]}`;
  });
  return keys;
}
