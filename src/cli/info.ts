// `vl3 info`: what this machine offers the kernels (CPU features, tiers) and what a model loaded with the same
// --threads/--compute/--isa (or their VL3_ twins) would run with: a backend is made with them and asked.
import { NativeBackend, nativeInfo, type NativeBackendOptions } from '../tensor/native.js';
import { cpuName } from './machine.js';

export function printInfo(options: NativeBackendOptions, json: boolean): void {
  const info = nativeInfo();
  const backend = new NativeBackend(options);
  const inUse = { isa: backend.isa, compute: backend.compute, threads: backend.threads };
  const cpu = { model: cpuName(), arch: process.arch, cores: info.defaultThreads };
  const features = Object.entries(info.features)
    .filter(([, present]) => present)
    .map(([name]) => name);
  if (json) {
    process.stdout.write(JSON.stringify({ cpu, features, tiers: info.tiers, ...inUse, addon: info.path }) + '\n');
    return;
  }
  const chosen = Object.entries(options).filter(([, value]) => value !== undefined).map(([name]) => name);
  const lines = [
    `cpu       ${cpu.model} (${cpu.arch}, ${cpu.cores} core${cpu.cores === 1 ? '' : 's'} available)`,
    `features  ${features.join(' ') || 'none of those the kernels use'}`,
    `tiers     ${info.tiers.join(', ')}`,
    `in use    ${inUse.isa} kernels, ${inUse.threads} thread${inUse.threads === 1 ? '' : 's'}, ${inUse.compute} compute` +
      (chosen.length ? ` (${chosen.join(', ')} set by flag or environment)` : ' (the defaults)'),
    `addon     ${info.path}`,
  ];
  process.stdout.write(lines.join('\n') + '\n');
}
