/**
 * What every kernel plan shares: the device traits a plan sizes itself by, the binding map that lets operands share a
 * buffer (WebGPU refuses one buffer in two bindings where either writes), workgroup grids that fit the per-dimension
 * limit, and the WGSL accessors for our storage formats (all buffers are `array<u32>`, so one binding serves f32, bf16
 * and packed bytes alike).
 */
import type { BufferBinding, Slice } from '../dispatch.js';

/** What a plan needs to know about the device (read once from the adapter; `traitsOf`). */
export interface DeviceTraits {
  maxWorkgroupsPerDimension: number;
  maxStorageBufferBindingSize: number;
  maxWorkgroupStorageBytes: number;
  maxInvocations: number;
  subgroups: boolean;
  shaderF16: boolean;
}

type TraitLimits = Pick<GPUSupportedLimits, 'maxComputeWorkgroupsPerDimension' | 'maxStorageBufferBindingSize' | 'maxComputeWorkgroupStorageSize' | 'maxComputeInvocationsPerWorkgroup'>;

export function traitsOf(limits: TraitLimits, features: { has(name: string): boolean }): DeviceTraits {
  return {
    maxWorkgroupsPerDimension: limits.maxComputeWorkgroupsPerDimension,
    maxStorageBufferBindingSize: limits.maxStorageBufferBindingSize,
    maxWorkgroupStorageBytes: limits.maxComputeWorkgroupStorageSize,
    maxInvocations: limits.maxComputeInvocationsPerWorkgroup,
    subgroups: features.has('subgroups'),
    shaderF16: features.has('shader-f16'),
  };
}

export interface Operand {
  slice: Slice;
  write?: boolean;
}

export interface Bindings {
  buffers: BufferBinding[];
  /** The WGSL name of each operand's binding (`b0`, `b1`, …), in the operands' order. */
  names: string[];
  /** The binding of each operand, e.g. "0.1.0.2": part of a pipeline key, since the WGSL differs with it. */
  signature: string;
  /**
   * Declarations of the storage bindings and of the uniform block `u` with the given u32 fields; `elements` may give a
   * binding another element type (e.g. `{ b1: 'vec4<u32>' }` for 16-byte loads), the default being `u32`.
   */
  declarations(uniformFields: readonly string[], elements?: Readonly<Record<string, string>>): string;
}

/** One binding per distinct buffer, written when any operand in it is. */
export function bindOperands(operands: readonly Operand[]): Bindings {
  const buffers: BufferBinding[] = [];
  const index: number[] = [];
  for (const op of operands) {
    let i = buffers.findIndex((b) => b.buffer.id === op.slice.buffer.id);
    if (i < 0) {
      i = buffers.length;
      buffers.push({ buffer: op.slice.buffer, write: false });
    }
    if (op.write) buffers[i] = { buffer: op.slice.buffer, write: true };
    index.push(i);
  }
  return {
    buffers,
    names: index.map((i) => `b${i}`),
    signature: index.join('.'),
    declarations: (fields, elements = {}) =>
      [
        ...buffers.map((b, i) => `@group(0) @binding(${i}) var<storage, ${b.write ? 'read_write' : 'read'}> b${i}: array<${elements[`b${i}`] ?? 'u32'}>;`),
        `struct U { ${fields.map((f) => `${f}: u32`).join(', ')} }`,
        `@group(0) @binding(${buffers.length}) var<uniform> u: U;`,
      ].join('\n'),
  };
}

/**
 * Workgroup counts for `groups` workgroups as an x·y grid within the per-dimension limit; the shader finds its linear
 * index with `LINEAR_GROUP` and returns when it is ≥ the count (the grid may hold a few more).
 */
export function grid(groups: number, t: DeviceTraits): [number, number, number] {
  const max = t.maxWorkgroupsPerDimension;
  if (groups <= max) return [Math.max(1, groups), 1, 1];
  const y = Math.ceil(groups / max);
  if (y > max) throw new Error(`${groups} workgroups exceed the device's ${max}×${max} grid`);
  return [Math.ceil(groups / y), y, 1];
}

/** The workgroup's linear index in a `grid`, given `wg` (workgroup_id) and `nwg` (num_workgroups). */
export const LINEAR_GROUP = 'wg.x + wg.y * nwg.x';

export const f32Bits = (v: number) => new Uint32Array(Float32Array.of(v).buffer)[0]!;

/** An f32 operand's word offset (f32 slices sit at multiples of 4 bytes). */
export function wordOffset(s: Slice, what: string): number {
  if (s.byteOffset % 4 !== 0) throw new Error(`${what}: an f32 operand at byte ${s.byteOffset}, not a multiple of 4`);
  return s.byteOffset / 4;
}

/** A bf16 operand's offset in 16-bit halves. */
export function halfOffset(s: Slice, what: string): number {
  if (s.byteOffset % 2 !== 0) throw new Error(`${what}: a bf16 operand at byte ${s.byteOffset}, not a multiple of 2`);
  return s.byteOffset / 2;
}

/** `prefix_f32(i)` reads word i of binding `b` as f32; `prefix_set(i, v)` writes it. */
export function f32Access(prefix: string, b: string, write = false): string {
  const get = `fn ${prefix}_f32(i: u32) -> f32 { return bitcast<f32>(${b}[i]); }`;
  return write ? `${get}\nfn ${prefix}_set(i: u32, v: f32) { ${b}[i] = bitcast<u32>(v); }` : get;
}

/** `prefix_bf16(h)` reads the bf16 at half index h of binding `b`, widened exactly to f32. */
export function bf16Access(prefix: string, b: string): string {
  return `fn ${prefix}_bf16(h: u32) -> f32 {
  let w = ${b}[h >> 1u];
  return bitcast<f32>(select(w << 16u, w & 0xffff0000u, (h & 1u) == 1u));
}`;
}

/** Byte-addressed reads of binding `b` at any alignment: `prefix_u8`, `prefix_u16` (little-endian), `prefix_u32`. */
export function byteAccess(prefix: string, b: string): string {
  return `fn ${prefix}_u8(a: u32) -> u32 { return (${b}[a >> 2u] >> ((a & 3u) * 8u)) & 0xffu; }
fn ${prefix}_u32(a: u32) -> u32 {
  let s = (a & 3u) * 8u;
  let lo = ${b}[a >> 2u];
  if (s == 0u) { return lo; }
  return (lo >> s) | (${b}[(a >> 2u) + 1u] << (32u - s));
}
fn ${prefix}_u16(a: u32) -> u32 {
  if ((a & 1u) == 0u) { return (${b}[a >> 2u] >> ((a & 2u) * 8u)) & 0xffffu; }
  return ${prefix}_u8(a) | (${prefix}_u8(a + 1u) << 8u);
}`;
}

/**
 * Exact conversions on bit patterns, in integer arithmetic: WGSL lets a compiler assume floats are finite, so NaN and
 * infinity are recognised by their bits, never by float comparisons.
 */
export const WGSL_CONVERSIONS = `
fn f16_to_f32(h: u32) -> f32 {
  let s = (h & 0x8000u) << 16u;
  let e = (h >> 10u) & 0x1fu;
  let f = h & 0x3ffu;
  if (e == 0u) {
    let v = f32(f) * 5.9604644775390625e-8;
    return select(v, -v, s != 0u);
  }
  if (e == 31u) { return bitcast<f32>(s | 0x7f800000u | (f << 13u)); }
  return bitcast<f32>(s | ((e + 112u) << 23u) | (f << 13u));
}
fn round_bf16(x: f32) -> f32 {
  let b = bitcast<u32>(x);
  if ((b & 0x7f800000u) == 0x7f800000u && (b & 0x7fffffu) != 0u) { return bitcast<f32>((b | 0x400000u) & 0xffff0000u); }
  return bitcast<f32>((b + 0x7fffu + ((b >> 16u) & 1u)) & 0xffff0000u);
}
`;
