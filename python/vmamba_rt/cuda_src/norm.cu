// LayerNorm over channels (eps 1e-5), one warp per row, statistics in fp32.
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void row_stats(const T* x, int C, float& mean, float& inv) {
    float s = 0.0f;
    for (int c = threadIdx.x & 31; c < C; c += 32) s += to_f(x[c]);
    mean = warp_sum(s) / C;
    float v = 0.0f;
    for (int c = threadIdx.x & 31; c < C; c += 32) { float d = to_f(x[c]) - mean; v += d * d; }
    inv = rsqrtf(warp_sum(v) / C + 1e-5f);
}

// out (rows, C) = LN(x), x rows `x_stride` apart; w, b may be null (weight 1, bias 0).
template <typename T>
__global__ void layernorm(const T* __restrict__ x, int x_stride, T* __restrict__ out, const float* __restrict__ w,
                          const float* __restrict__ b, long long rows, int C) {
    long long row = blockIdx.x * (long long)(blockDim.x / 32) + threadIdx.x / 32;
    if (row >= rows) return;
    const T* xr = x + row * x_stride;
    float mean, inv;
    row_stats(xr, C, mean, inv);
    for (int c = threadIdx.x & 31; c < C; c += 32)
        out[row * C + c] = from_f<T>((to_f(xr[c]) - mean) * inv * (w ? w[c] : 1.0f) + (b ? b[c] : 0.0f));
}

// The residual step with the next norm fused: x += y (+ bias); out = LN(x).
template <typename T>
__global__ void residual_layernorm(T* __restrict__ x, const T* __restrict__ y, const float* __restrict__ bias,
                                   T* __restrict__ out, const float* __restrict__ w, const float* __restrict__ b,
                                   long long rows, int C) {
    long long row = blockIdx.x * (long long)(blockDim.x / 32) + threadIdx.x / 32;
    if (row >= rows) return;
    T* xr = x + row * C;
    for (int c = threadIdx.x & 31; c < C; c += 32)
        xr[c] = from_f<T>(to_f(xr[c]) + to_f(y[row * C + c]) + (bias ? bias[c] : 0.0f));
    __syncwarp();
    if (out == nullptr) return;
    float mean, inv;
    row_stats(xr, C, mean, inv);
    for (int c = threadIdx.x & 31; c < C; c += 32)
        out[row * C + c] = from_f<T>((to_f(xr[c]) - mean) * inv * w[c] + b[c]);
}

// SS2D's out_norm of the fp32 scan output with the gate fused: out = LN(y) * act(z)
// (z, w, b may be null; act as in common.cuh).
template <typename T>
__global__ void layernorm_gate(const float* __restrict__ y, T* __restrict__ out, const T* __restrict__ z, int z_stride,
                               const float* __restrict__ w, const float* __restrict__ b, long long rows, int C,
                               int gate_act) {
    long long row = blockIdx.x * (long long)(blockDim.x / 32) + threadIdx.x / 32;
    if (row >= rows) return;
    const float* yr = y + row * C;
    float mean, inv;
    row_stats(yr, C, mean, inv);
    for (int c = threadIdx.x & 31; c < C; c += 32) {
        float v = (yr[c] - mean) * inv * (w ? w[c] : 1.0f) + (b ? b[c] : 0.0f);
        if (z) v *= act_f(to_f(z[row * z_stride + c]), gate_act);
        out[row * C + c] = from_f<T>(v);
    }
}
