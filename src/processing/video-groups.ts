// Several video items of one request on the same file (spec 3.4): which loads the reference makes, and which of
// the loaded frames each item keeps.
import type { VideoMedia } from './conversation.js';
import type { ProcessorConfig } from './processor-config.js';
import type { VideoOptions } from './video.js';

/** The fps / max_frames / range of a conversation's video item, with the processor's defaults. */
export function videoOptionsFor(media: VideoMedia, config: Pick<ProcessorConfig, 'fps' | 'maxFrames'>): VideoOptions {
  const options: VideoOptions = { fps: media.fps ?? config.fps, maxFrames: media.maxFrames ?? config.maxFrames };
  if (media.startTime !== undefined) options.startTime = media.startTime;
  if (media.endTime !== undefined) options.endTime = media.endTime;
  return options;
}

/** Items of one request that the reference loads with a single call (spec 3.4). */
export interface VideoLoadGroup {
  source: string;
  options: VideoOptions;
  /** Positions of the member items in the list given, and the range [start, end] whose frames each keeps. */
  members: { item: number; start: number; end: number }[];
}

/**
 * Groups video items as the reference's `_load_multimodal_data`: items with the same load arguments apart from
 * start_time / end_time share one load spanning the smallest start and the largest end (0 and infinity when
 * absent); each item then keeps the loaded frames with start <= timestamp <= end (`framesInRange`).
 * The reference's quirk is kept: the load starts from the first item's own arguments and replaces its bounds only
 * by a start > 0 or a finite end, so [{5..10 s}, {whole video}] loads 5..10 s for both.
 */
export function groupVideoItems(items: readonly VideoMedia[], defaults: Pick<ProcessorConfig, 'fps' | 'maxFrames'>): VideoLoadGroup[] {
  const groups = new Map<string, { first: VideoMedia; members: VideoLoadGroup['members'] }>();
  items.forEach((media, item) => {
    const key = JSON.stringify([media.source, media.fps ?? null, media.maxFrames ?? null]);
    let group = groups.get(key);
    if (!group) groups.set(key, (group = { first: media, members: [] }));
    group.members.push({ item, start: media.startTime ?? 0, end: media.endTime ?? Infinity });
  });
  return [...groups.values()].map(({ first, members }) => {
    const start = Math.min(...members.map((m) => m.start));
    const end = Math.max(...members.map((m) => m.end));
    const options = videoOptionsFor(first, defaults);
    if (start > 0) options.startTime = start;
    if (end < Infinity) options.endTime = end;
    return { source: first.source, options, members };
  });
}

/** Indices of the timestamps with start <= t <= end. */
export function framesInRange(timestamps: ArrayLike<number>, start: number, end: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < timestamps.length; i++) if (start <= timestamps[i]! && timestamps[i]! <= end) out.push(i);
  return out;
}
