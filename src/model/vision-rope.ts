/** One visual item as the encoder sees it: t frames of gh×gw patches, merged m×m afterwards (spec 2.6). */
export interface VisualGrid {
  frames: number;
  gridH: number;
  gridW: number;
  mergeSize: number;
}

/**
 * Row and column of every patch of one frame, in the block order of the pixel rows (spec 6.2): block row R, block
 * column Cb, then dy, dx inside the m×m block → (m·R + dy, m·Cb + dx).
 */
export function patchPositions(grid: VisualGrid): { rows: Int32Array; cols: Int32Array } {
  const { gridH, gridW, mergeSize: m } = grid;
  const n = gridH * gridW;
  const rows = new Int32Array(n);
  const cols = new Int32Array(n);
  let i = 0;
  for (let R = 0; R < gridH / m; R++) {
    for (let C = 0; C < gridW / m; C++) {
      for (let dy = 0; dy < m; dy++) {
        for (let dx = 0; dx < m; dx++) {
          rows[i] = m * R + dy;
          cols[i] = m * C + dx;
          i++;
        }
      }
    }
  }
  return { rows, cols };
}

/**
 * 2-D rotary tables of one frame for head dim D: per patch, D/2 angles = [row·inv_freq (D/4), col·inv_freq (D/4)],
 * inv_freq[j] = 1/10000^(2j/(D/2)), all in float32 as the reference computes them. Returns cos and sin [n, D/2] (host arrays), the
 * layout the backend's half-split `rope` op takes, so q'[d] = q[d]·cos − q[d+D/2]·sin as in spec 6.2.
 */
export function visionRopeTables(grid: VisualGrid, headDim: number): { cos: Float32Array; sin: Float32Array; angles: Float32Array } {
  const rotaryDim = headDim / 2;
  const quarter = rotaryDim / 2;
  const invFreq = new Float32Array(quarter);
  for (let j = 0; j < quarter; j++) {
    invFreq[j] = Math.fround(1 / Math.fround(Math.pow(10000, Math.fround(Math.fround(2 * j) / rotaryDim))));
  }
  const { rows, cols } = patchPositions(grid);
  const n = rows.length;
  const angles = new Float32Array(n * rotaryDim);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < quarter; j++) {
      angles[i * rotaryDim + j] = Math.fround(rows[i]! * invFreq[j]!);
      angles[i * rotaryDim + quarter + j] = Math.fround(cols[i]! * invFreq[j]!);
    }
  }
  return { cos: angles.map(Math.cos), sin: angles.map(Math.sin), angles };
}
