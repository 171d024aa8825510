// Generated tasks that a small model can only answer by looking: the colour of a square in an image, and whether a dot
// moves across the frames of a video. Each sample is written as media plus an annotation in the official format.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import sharp from 'sharp';
import { findFfmpeg, runTool } from '../src/processing/ffmpeg.js';

export const COLOUR_QUESTION = 'What colour is the square?';
export const MOTION_QUESTION = 'Does the dot move?';
const COLOURS = { red: [220, 30, 30], green: [30, 190, 40], blue: [30, 60, 220] } as const;
export type Colour = keyof typeof COLOURS;
const SIZE = 56;

export interface HeldOut {
  file: string;
  kind: 'image' | 'video';
  answer: string;
}

/** A seeded generator (mulberry32), so the data are the same on every run. */
function random(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = Math.imul(s ^ (s >>> 15), s | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

/** A square of `colour` (16-31 px) at a random place on a random grey background. */
async function squareImage(file: string, colour: Colour, rnd: () => number): Promise<void> {
  const pixels = Buffer.alloc(SIZE * SIZE * 3);
  const grey = 100 + Math.floor(rnd() * 60);
  const side = 16 + Math.floor(rnd() * 16);
  const x0 = Math.floor(rnd() * (SIZE - side));
  const y0 = Math.floor(rnd() * (SIZE - side));
  for (let y = 0; y < SIZE; y++)
    for (let x = 0; x < SIZE; x++) {
      const inside = x >= x0 && x < x0 + side && y >= y0 && y < y0 + side;
      pixels.set(inside ? COLOURS[colour] : [grey, grey, grey], (y * SIZE + x) * 3);
    }
  await sharp(pixels, { raw: { width: SIZE, height: SIZE, channels: 3 } }).png().toFile(file);
}

/**
 * Four seconds at 1 fps of a white dot on a grey frame that crosses it or stays where it is (lossless, ffmpeg): only the
 * frames after the first tell them apart.
 */
async function dotVideo(file: string, moving: boolean, rnd: () => number): Promise<void> {
  const ffmpeg = await findFfmpeg();
  const y = 8 + Math.floor(rnd() * 36);
  const step = (9 + Math.floor(rnd() * 3)) * (rnd() < 0.5 ? 1 : -1);
  const start = step > 0 ? 4 : SIZE - 16;
  const x = moving ? `${start}+t*${step}` : String(4 + Math.floor(rnd() * 36));
  const args = ['-nostdin', '-loglevel', 'error', '-f', 'lavfi', '-i', `color=c=gray:s=${SIZE}x${SIZE}:r=1:d=4`];
  args.push('-vf', `drawbox=x='${x}':y=${y}:w=12:h=12:color=white:t=fill`, '-c:v', 'ffv1', '-y', file);
  const { code, stderr } = await runTool(ffmpeg.program, args);
  if (code !== 0) throw new Error(`ffmpeg could not write ${file}: ${stderr}`);
}

/**
 * Writes `count` training samples of each task (annotations in `<dir>/train.json`, media in `<dir>/media`) and
 * `heldOut` more of each that training never sees.
 */
export async function writeLearningTasks(dir: string, count: number, heldOut: number, seed = 1): Promise<HeldOut[]> {
  const media = join(dir, 'media');
  mkdirSync(media, { recursive: true });
  const rnd = random(seed);
  const colours = Object.keys(COLOURS) as Colour[];
  const motions = ['yes', 'no'] as const;
  const train: object[] = [];
  const held: HeldOut[] = [];
  for (let i = 0; i < count + heldOut; i++) {
    const colour = colours[i % colours.length]!;
    const motion = motions[i % motions.length]!;
    const image = `square${i}.png`;
    const video = `dot${i}.mkv`;
    await squareImage(join(media, image), colour, rnd);
    await dotVideo(join(media, video), motion === 'yes', rnd);
    if (i < count) {
      train.push({ image, conversations: [{ from: 'human', value: `<image>\n${COLOUR_QUESTION}` }, { from: 'gpt', value: colour }] });
      train.push({ video: [video], conversations: [{ from: 'human', value: `<video>\n${MOTION_QUESTION}` }, { from: 'gpt', value: motion }] });
    } else {
      held.push({ file: join(media, image), kind: 'image', answer: colour }, { file: join(media, video), kind: 'video', answer: motion });
    }
  }
  writeFileSync(join(dir, 'train.json'), JSON.stringify(train));
  return held;
}
