// The CPU by name, for `vl3 info` and the benchmarks: virtual machines often report only "AMD EPYC", so the family
// and model numbers are read too and named where they identify a core generation.
import { readFileSync } from 'node:fs';
import { cpus } from 'node:os';

/** AMD's core generations by family and model (the processor programming references' tables). */
function amdGeneration(family: number, model: number): string | undefined {
  if (family === 0x17) return model >= 0x30 ? 'Zen 2' : 'Zen / Zen+';
  if (family === 0x19) return (model >= 0x10 && model <= 0x1f) || (model >= 0x60 && model <= 0x7f) || (model >= 0xa0 && model <= 0xaf) ? 'Zen 4' : 'Zen 3';
  if (family === 0x1a) return 'Zen 5';
  return undefined;
}

/** e.g. "AMD EPYC (family 26 model 2: Zen 5)"; the model name alone where /proc/cpuinfo is not there. */
export function cpuName(): string {
  const name = cpus()[0]?.model.trim() || 'unknown CPU';
  let text = '';
  try {
    text = readFileSync('/proc/cpuinfo', 'utf8');
  } catch {
    return name;
  }
  const field = (key: string) => new RegExp(`^${key}\\s*:\\s*(.+)$`, 'm').exec(text)?.[1]?.trim();
  const family = Number(field('cpu family'));
  const model = Number(field('model'));
  if (!Number.isInteger(family) || !Number.isInteger(model)) return name;
  const generation = field('vendor_id') === 'AuthenticAMD' ? amdGeneration(family, model) : undefined;
  return `${name} (family ${family} model ${model}${generation ? `: ${generation}` : ''})`;
}
