/**
 * How a plan binds its operands: every distinct buffer once, as array<u32>, with accessor functions per operand that
 * add the operand's element offset (a uniform) and convert (f32 and i32 by bitcast, bf16 by shifting its half of a
 * word, bytes by masking). Operands sharing a buffer (out == x, two views of one workspace) then share a binding, which
 * WebGPU requires, and the binding map is part of the kernel's key: one variant of the code per map.
 */
import type { BufferBinding, KernelDispatch, Slice } from '../dispatch.js';

/** How the shader reads an operand: f32, i32, raw words (u32), bf16 (as f32) or bytes (u8, packed quantized blocks). */
export type Access = 'f32' | 'i32' | 'u32' | 'bf16' | 'u8';

export interface Operand {
  name: string;
  at: Slice;
  as: Access;
  write?: boolean;
}

const ELEMENT_BYTES: Record<Access, number> = { f32: 4, i32: 4, u32: 4, bf16: 2, u8: 1 };
const CODE: Record<Access, string> = { f32: 'f', i32: 'i', u32: 'u', bf16: 'h', u8: 'b' };

function accessors(o: Operand, b: string): string {
  const e = `u.${o.name}_o + i`;
  switch (o.as) {
    case 'f32':
      return `fn ${o.name}_ld(i: u32) -> f32 { return bitcast<f32>(${b}[${e}]); }\n` + (o.write ? `fn ${o.name}_st(i: u32, v: f32) { ${b}[${e}] = bitcast<u32>(v); }\n` : '');
    case 'i32':
      return `fn ${o.name}_ld(i: u32) -> i32 { return bitcast<i32>(${b}[${e}]); }\n` + (o.write ? `fn ${o.name}_st(i: u32, v: i32) { ${b}[${e}] = bitcast<u32>(v); }\n` : '');
    case 'u32':
      return `fn ${o.name}_ld(i: u32) -> u32 { return ${b}[${e}]; }\n` + (o.write ? `fn ${o.name}_st(i: u32, v: u32) { ${b}[${e}] = v; }\n` : '');
    case 'bf16':
      return `${bf16Loader(`${o.name}_ld`, b, e)}\n`;
    case 'u8':
      return `fn ${o.name}_ld(i: u32) -> u32 { let e = ${e}; return (${b}[e >> 2u] >> ((e & 3u) * 8u)) & 0xffu; }\n`;
  }
}

/** WGSL: `fn name(i: u32) -> f32`, the bf16 element at index `e` (an expression of i) of the u32 array `b`, widened. */
export function bf16Loader(name: string, b: string, e: string): string {
  // Little-endian halves: an even element is the low 16 bits of its word; bf16 bits are the top half of an f32's.
  return `fn ${name}(i: u32) -> f32 { let e = ${e}; let w = ${b}[e >> 1u]; return bitcast<f32>(select(w << 16u, w & 0xffff0000u, (e & 1u) == 1u)); }`;
}

/**
 * The bindings of operands (one use per operand): each distinct buffer once, in order of first use, written where any
 * use writes it; and each buffer id's slot. Its WGSL declarations are `storageDecls(buffers)`: slot i is `b<i>`.
 */
export function bufferSlots(uses: readonly BufferBinding[]): { buffers: BufferBinding[]; slot: Map<number, number> } {
  const buffers: BufferBinding[] = [];
  const slot = new Map<number, number>();
  for (const use of uses) {
    const at = slot.get(use.buffer.id);
    if (at === undefined) {
      slot.set(use.buffer.id, buffers.length);
      buffers.push({ buffer: use.buffer, write: use.write });
    } else if (use.write && !buffers[at]!.write) {
      buffers[at] = { buffer: use.buffer, write: true };
    }
  }
  return { buffers, slot };
}

export function storageDecls(buffers: readonly BufferBinding[]): string {
  return buffers.map((b, i) => `@group(0) @binding(${i}) var<storage, ${b.write ? 'read_write' : 'read'}> b${i}: array<u32>;\n`).join('');
}

export interface Bound {
  buffers: BufferBinding[];
  /** Bindings, the uniform struct U (operand offsets, then `params`), the accessors. */
  readonly header: string;
  /** The binding map, for the key. */
  variant: string;
  /** The uniform words: operand offsets in elements, then the params' words in order. */
  uniforms(params: readonly number[]): Uint32Array;
}

/** Binds `operands` (params: names of further u32 uniforms; f32 ones are passed as bits, see f32Bits). */
export function bind(operands: readonly Operand[], params: readonly string[]): Bound {
  for (const o of operands) {
    if (!Number.isInteger(o.at.byteOffset / ELEMENT_BYTES[o.as])) throw new Error(`${o.name}: byte offset ${o.at.byteOffset} is not aligned for ${o.as}`);
  }
  const { buffers, slot } = bufferSlots(operands.map((o) => ({ buffer: o.at.buffer, write: o.write === true })));
  // The source is only asked for when a key is new: built then, not on every call of a plan.
  const makeHeader = () => {
    const fields = [...operands.map((o) => `${o.name}_o: u32`), ...params.map((p) => `${p}: u32`)];
    let header = storageDecls(buffers);
    header += `struct U { ${fields.join(', ')} }\n@group(0) @binding(${buffers.length}) var<uniform> u: U;\n`;
    for (const o of operands) header += accessors(o, `b${slot.get(o.at.buffer.id)!}`);
    return header;
  };
  const variant = operands.map((o) => `${o.name}${slot.get(o.at.buffer.id)!}${CODE[o.as]}${o.write ? 'w' : ''}`).join('.');
  let header: string | undefined;
  return {
    buffers,
    get header() {
      return (header ??= makeHeader());
    },
    variant,
    uniforms: (values) => Uint32Array.from([...operands.map((o) => o.at.byteOffset / ELEMENT_BYTES[o.as]), ...values]),
  };
}

const bits = new Float32Array(1);
const bitsU32 = new Uint32Array(bits.buffer);

/** An f32 uniform's word (the shader reads it with bitcast<f32>). */
export function f32Bits(x: number): number {
  bits[0] = x;
  return bitsU32[0]!;
}

/** Workgroups per dimension in WebGPU's default limit; plans spread more over a second dimension. */
export const MAX_GROUPS_PER_DIM = 65535;

/** A grid of at least `count` workgroups: x up to the limit, y as many rows of x as needed. */
export function grid(count: number): [number, number, number] {
  if (count <= MAX_GROUPS_PER_DIM) return [Math.max(count, 1), 1, 1];
  const y = Math.ceil(count / MAX_GROUPS_PER_DIM);
  return [Math.ceil(count / y), y, 1];
}

/** The linear workgroup index of a `grid` (WGSL: needs wid and nwg builtins named so). */
export const GROUP_INDEX = 'wid.y * nwg.x + wid.x';
export const GRID_BUILTINS = '@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32';

/** One dispatch of an elementwise kernel over n items, `wg` invocations a workgroup, thread item index `gi`. */
export function dispatchOver(key: string, wgsl: () => string, bound: Bound, params: readonly number[], n: number, wg: number): KernelDispatch {
  return { key, wgsl, buffers: bound.buffers, uniforms: bound.uniforms(params), workgroups: grid(Math.ceil(n / wg)) };
}

/** The WGSL head of an elementwise entry point: `gi` is the item index; items past `u.n` return. */
export function elementwiseMain(wg: number, body: string): string {
  return `@compute @workgroup_size(${wg}) fn main(${GRID_BUILTINS}) {
  let gi = (${GROUP_INDEX}) * ${wg}u + lid;
  if (gi >= u.n) { return; }
${body}
}
`;
}
