// Shared helpers for the vmamba-rt kernels: one template per kernel over the
// activation type T (float, __half, __nv_bfloat16); arithmetic is always fp32.
#pragma once
#include <cuda_fp16.h>
#include <cuda_bf16.h>

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

__device__ __forceinline__ float silu_f(float x) { return x / (1.0f + __expf(-x)); }
__device__ __forceinline__ float gelu_f(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }
// Activations by code, as the plan's `Act` (gpu.py ACT_CODES): 0 none, 1 GELU,
// 2 SiLU, 3 ReLU, 4 sigmoid.
__device__ __forceinline__ float act_f(float x, int act) {
    switch (act) {
        case 1: return gelu_f(x);
        case 2: return silu_f(x);
        case 3: return x < 0.0f ? 0.0f : x;  // NaN stays NaN
        case 4: return 1.0f / (1.0f + __expf(-x));
        default: return x;
    }
}
// softplus with the reference threshold: x itself above 20.
__device__ __forceinline__ float softplus_f(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
