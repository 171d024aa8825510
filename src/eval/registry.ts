import { ai2d, chartqa, docvqa, gqa, infovqa, mme, mmmu, ocrbench } from './image.js';
import type { Benchmark, EvalSample } from './types.js';
import { activitynetQa, charadesSta, egoschema, longvideobench, lvbench, mlvu, mvbench, nextqa, perceptionTest, tempcompass, videomme } from './video.js';

/** Every benchmark `vl3 eval` runs, by the name given on the command line. */
export const BENCHMARKS: ReadonlyMap<string, Benchmark<EvalSample>> = new Map(
  ([mvbench, videomme, egoschema, perceptionTest, activitynetQa, mlvu, longvideobench, lvbench, nextqa, tempcompass, charadesSta, docvqa, infovqa, chartqa, ocrbench, ai2d, mmmu, gqa, mme] as unknown as Benchmark<EvalSample>[]).map((b) => [b.name, b]),
);
