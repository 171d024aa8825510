// What every gradient kernel plan shares: the device limits a plan obeys, the binding map that lets operands share a
// buffer (WebGPU binds a buffer once per dispatch), uniforms by name, and grids that respect the workgroup-count limit.
import type { BufferBinding, KernelDispatch, Slice } from '../dispatch.js';
import { bf16Loader, bufferSlots, storageDecls } from './operands.js';
import type { DeviceTraits } from './wgsl-common.js';

export type { DeviceTraits };

/** How an operand's elements are stored: f32 and i32 one per word, bf16 two per word (the low half first). */
export type Elem = 'f32' | 'bf16' | 'i32';

export interface Operand {
  /** A WGSL identifier: accessors are ld_<name>(i), and st_<name>(i, v) / add_<name>(i, v) for written operands. */
  readonly name: string;
  readonly slice: Slice;
  readonly elem: Elem;
  readonly write?: boolean;
}

/**
 * Every distinct buffer becomes one `array<u32>` binding and each operand reaches its elements through accessors
 * that add its offset (a uniform): operands sharing a buffer (dx == dy, two views of one workspace) then share the
 * binding, and the key records which binding each operand got, since that changes the code.
 */
function bindOperands(operands: readonly Operand[], traits: DeviceTraits): { buffers: BufferBinding[]; decls: string; key: string } {
  for (const o of operands) {
    if (o.slice.buffer.byteLength > traits.maxStorageBufferBindingSize)
      throw new Error(
        `WebGPU: operand ${o.name} lies in a buffer of ${o.slice.buffer.byteLength} bytes, over the adapter's ` +
          `maxStorageBufferBindingSize (${traits.maxStorageBufferBindingSize}): allocate it in smaller buffers`,
      );
    const align = o.elem === 'bf16' ? 2 : 4;
    if (o.slice.byteOffset % align !== 0)
      throw new Error(`WebGPU: operand ${o.name} at byte offset ${o.slice.byteOffset} is not ${align}-byte aligned`);
  }
  const { buffers, slot } = bufferSlots(operands.map((o) => ({ buffer: o.slice.buffer, write: !!o.write })));
  const decls = [storageDecls(buffers)];
  for (const o of operands) {
    const b = `b${slot.get(o.slice.buffer.id)}`;
    const off = `u.o_${o.name}`;
    if (o.elem === 'f32') decls.push(`fn ld_${o.name}(i: u32) -> f32 { return bitcast<f32>(${b}[${off} + i]); }`);
    else if (o.elem === 'i32') decls.push(`fn ld_${o.name}(i: u32) -> i32 { return bitcast<i32>(${b}[${off} + i]); }`);
    else decls.push(bf16Loader(`ld_${o.name}`, b, `${off} + i`));
    if (o.write) {
      if (o.elem !== 'f32') throw new Error(`WebGPU: written operand ${o.name} must be f32`);
      decls.push(`fn st_${o.name}(i: u32, v: f32) { ${b}[${off} + i] = bitcast<u32>(v); }`);
      decls.push(`fn add_${o.name}(i: u32, v: f32) { st_${o.name}(i, ld_${o.name}(i) + v); }`);
    }
  }
  const key = operands.map((o) => `${o.name}${slot.get(o.slice.buffer.id)}${o.elem === 'bf16' ? 'h' : ''}${o.write ? 'w' : ''}`).join(',');
  return { buffers, decls: decls.join('\n'), key };
}

/** A scalar uniform: u32, i32 or f32 (its bits). */
export type UniformValue = { u32: number } | { i32: number } | { f32: number };

/**
 * One dispatch of a kernel whose body `body` (WGSL: helpers and the `main` entry point) uses the accessors of
 * `operands` and the uniforms `u.<name>`; the operands' offsets join the uniforms as `u.o_<name>`.
 */
export function dispatch(
  traits: DeviceTraits,
  spec: {
    op: string;
    operands: readonly Operand[];
    uniforms: Record<string, UniformValue>;
    body: string;
    /** Whatever besides the binding map changes the code (constants baked into the body). */
    variant?: string;
    workgroups: readonly [number, number, number];
  },
): KernelDispatch {
  const { buffers, decls, key } = bindOperands(spec.operands, traits);
  const fields: string[] = [];
  const words: number[] = [];
  const scratch = new DataView(new ArrayBuffer(4));
  for (const o of spec.operands) {
    fields.push(`o_${o.name}: u32`);
    words.push(o.slice.byteOffset / (o.elem === 'bf16' ? 2 : 4));
  }
  for (const [name, value] of Object.entries(spec.uniforms)) {
    if ('u32' in value) {
      fields.push(`${name}: u32`);
      scratch.setUint32(0, value.u32 >>> 0, true);
    } else if ('i32' in value) {
      fields.push(`${name}: i32`);
      scratch.setInt32(0, value.i32, true);
    } else {
      fields.push(`${name}: f32`);
      scratch.setFloat32(0, value.f32, true);
    }
    words.push(scratch.getUint32(0, true));
  }
  const bindingOfUniform = buffers.length;
  const wgsl = () =>
    `struct U { ${fields.join(', ')} }\n@group(0) @binding(${bindingOfUniform}) var<uniform> u: U;\n${decls}\n${COMMON_WGSL}\n${spec.body}`;
  const fieldKey = Object.keys(spec.uniforms).join('.');
  return {
    key: `grad.${spec.op}${spec.variant ? `.${spec.variant}` : ''}[${key}|${fieldKey}]`,
    wgsl,
    buffers,
    uniforms: Uint32Array.from(words),
    workgroups: spec.workgroups,
  };
}

/**
 * Workgroups for `count` independent work items, laid out over x, then y, then z so no dimension passes the device's
 * limit; kernels recover the item as `item(wg, nwg)` and return when it is ≥ count.
 */
export function grid(traits: DeviceTraits, count: number): [number, number, number] {
  const max = traits.maxWorkgroupsPerDimension;
  if (count <= max) return [Math.max(1, count), 1, 1];
  const rest = Math.ceil(count / max);
  if (rest <= max) return [max, rest, 1];
  const z = Math.ceil(rest / max);
  if (z > max) throw new Error(`WebGPU: ${count} workgroups exceed ${max}³ (maxComputeWorkgroupsPerDimension)`);
  return [max, max, z];
}

const COMMON_WGSL = `
fn item(wg: vec3u, nwg: vec3u) -> u32 { return wg.x + nwg.x * (wg.y + nwg.y * wg.z); }
// Round to bf16, to nearest even, kept widened: the 'bf16' compute mode's operand rounding (dtype.ts f32ToBf16).
fn roundBf16(v: f32) -> f32 {
  let b = bitcast<u32>(v);
  if ((b & 0x7f800000u) == 0x7f800000u && (b & 0x007fffffu) != 0u) { return bitcast<f32>((b | 0x00400000u) & 0xffff0000u); }
  return bitcast<f32>((b + 0x7fffu + ((b >> 16u) & 1u)) & 0xffff0000u);
}
`;

/** The slice `elements` elements of `bytes` each past `s`. */
export const advance = (s: Slice, elements: number, bytes: number): Slice => ({ buffer: s.buffer, byteOffset: s.byteOffset + elements * bytes });

export const f32u = (v: number): UniformValue => ({ f32: v });
export const u32u = (v: number): UniformValue => ({ u32: v });
export const i32u = (v: number): UniformValue => ({ i32: v });
