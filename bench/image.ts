import sharp from 'sharp';

/** A 448×448 PNG with busy content (no flat areas for the encoder to coast on), as a data URL. */
export async function benchImageDataUrl(): Promise<string> {
  const pixels = Buffer.alloc(448 * 448 * 3);
  for (let i = 0; i < pixels.length; i++) pixels[i] = (i * 7 + (i >> 10)) & 255;
  const png = await sharp(pixels, { raw: { width: 448, height: 448, channels: 3 } }).png().toBuffer();
  return `data:image/png;base64,${png.toString('base64')}`;
}
