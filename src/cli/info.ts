// `vl3 info`: what this machine offers the kernels (CPU features, tiers, WebGPU adapters) and what a model loaded with
// the same --threads/--compute/--isa/--device (or their VL3_ twins) would run with: a backend is made with them and
// asked.
import type { DeviceName } from '../tensor/index.js';
import { NativeBackend, nativeInfo, type NativeBackendOptions } from '../tensor/native.js';
import { WebGpuDevice } from '../tensor/webgpu/device.js';
import type { AdapterSummary } from '../tensor/webgpu/errors.js';
import { cpuName } from './machine.js';

/** The adapters found (none where WebGPU itself cannot start) and the reason when it cannot. */
function adapters(): { found: AdapterSummary[]; problem?: string } {
  try {
    return { found: WebGpuDevice.list() };
  } catch (e) {
    return { found: [], problem: (e as Error).message };
  }
}

const gib = (bytes: number) => (bytes >= 2 ** 30 ? `${+(bytes / 2 ** 30).toFixed(1)} GiB` : `${+(bytes / 2 ** 20).toFixed(1)} MiB`);

export function printInfo(options: NativeBackendOptions, json: boolean, device: DeviceName = 'cpu'): void {
  const info = nativeInfo();
  const backend = new NativeBackend(options);
  const inUse = { isa: backend.isa, compute: backend.compute, threads: backend.threads };
  const cpu = { model: cpuName(), arch: process.arch, cores: info.defaultThreads };
  const features = Object.entries(info.features)
    .filter(([, present]) => present)
    .map(([name]) => name);
  const webgpu = adapters();
  // The device thread opens the first adapter listed; auto takes it only when it is a real GPU.
  const first = webgpu.found[0];
  const auto = first && !first.software ? 'webgpu' : 'cpu';
  const chosen = device === 'auto' ? auto : device;
  if (json) {
    const out = { cpu, features, tiers: info.tiers, ...inUse, addon: info.path, adapters: webgpu.found, auto, device: chosen, ...(webgpu.problem && { webgpuProblem: webgpu.problem }) };
    process.stdout.write(JSON.stringify(out) + '\n');
    return;
  }
  const set = Object.entries(options).filter(([, value]) => value !== undefined).map(([name]) => name);
  const lines = [
    `cpu       ${cpu.model} (${cpu.arch}, ${cpu.cores} core${cpu.cores === 1 ? '' : 's'} available)`,
    `features  ${features.join(' ') || 'none of those the kernels use'}`,
    `tiers     ${info.tiers.join(', ')}`,
  ];
  if (webgpu.found.length === 0) lines.push(`webgpu    no adapter${webgpu.problem ? ` (${webgpu.problem})` : ''}`);
  for (const a of webgpu.found) {
    const l = a.limits;
    lines.push(
      `webgpu    ${a.name} (vendor ${a.vendor || '?'}, ${a.architecture || '?'}, ${a.backend}${a.software ? ', software rasterizer' : ''})`,
      `          limits: buffer ${gib(l.maxBufferSize)}, storage binding ${gib(l.maxStorageBufferBindingSize)}, ${l.maxStorageBuffersPerShaderStage} storage buffers, ` +
        `workgroup ${l.maxComputeWorkgroupStorageSize / 1024} KiB / ${l.maxComputeInvocationsPerWorkgroup} invocations` +
        (a.subgroupMaxSize ? `, subgroups of ${a.subgroupMinSize === a.subgroupMaxSize ? a.subgroupMinSize : `${a.subgroupMinSize}–${a.subgroupMaxSize}`}` : ''),
      `          features: ${a.features.join(' ')}`,
    );
  }
  lines.push(
    `auto      ${auto === 'webgpu' ? `webgpu on ${first!.name}` : `cpu (${first ? `the WebGPU adapter is a software rasterizer, slower than the CPU kernels` : 'no WebGPU adapter'})`}`,
  );
  if (chosen === 'webgpu') lines.push(`in use    webgpu${first ? ` on ${first.name}` : ' (no adapter: a model would not load)'}, ${options.compute ?? 'exact'} compute`);
  else {
    lines.push(
      `in use    ${inUse.isa} kernels, ${inUse.threads} thread${inUse.threads === 1 ? '' : 's'}, ${inUse.compute} compute` +
        (set.length ? ` (${set.join(', ')} set by flag or environment)` : ' (the defaults)'),
    );
  }
  lines.push(`addon     ${info.path}`);
  process.stdout.write(lines.join('\n') + '\n');
}
