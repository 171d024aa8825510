// `vl3 info`: what this machine offers the kernels (CPU features, tiers) and what a model loaded now would run with.
import { nativeInfo } from '../tensor/native.js';
import { cpuName } from './machine.js';

export function printInfo(json: boolean): void {
  const info = nativeInfo();
  const cpu = { model: cpuName(), arch: process.arch, cores: info.defaultThreads };
  const features = Object.entries(info.features)
    .filter(([, present]) => present)
    .map(([name]) => name);
  if (json) {
    process.stdout.write(JSON.stringify({ cpu, features, tiers: info.tiers, isa: info.isa, compute: info.compute, threads: info.defaultThreads, addon: info.path }) + '\n');
    return;
  }
  const lines = [
    `cpu       ${cpu.model} (${cpu.arch}, ${cpu.cores} core${cpu.cores === 1 ? '' : 's'} available)`,
    `features  ${features.join(' ') || 'none of those the kernels use'}`,
    `tiers     ${info.tiers.join(', ')}`,
    `in use    ${info.isa} kernels, ${info.defaultThreads} thread${info.defaultThreads === 1 ? '' : 's'}, ${info.compute} compute${process.env.VL3_ISA || process.env.VL3_COMPUTE ? ' (set by VL3_ISA / VL3_COMPUTE)' : ''}`,
    `addon     ${info.path}`,
  ];
  process.stdout.write(lines.join('\n') + '\n');
}
