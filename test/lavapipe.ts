// Imported for its effect by every test that opens a WebGPU device, before any does. On a machine without a GPU that
// device is Mesa's lavapipe, which compiles each kernel with LLVM for the CPU's widest vectors; the WebGPU tests spend
// most of their time in those compiles (a fresh CI machine has no shader cache), and at 4 lanes rather than AVX2's 8
// they take half as long (on Zen 3: the WebGPU kernel tests 373 → 186 s); every WebGPU test passes at either width.
// Mesa reads the variable when the device is created; one the user set is kept.
process.env.LP_NATIVE_VECTOR_WIDTH ??= '128';
