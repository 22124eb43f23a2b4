// Layout changes, patch gathering and small elementwise epilogues.
// Activations are channel-last: (rows, C) with rows = B*H*W.
#include "common.cuh"

// x (B, C, H, W) fp32 -> y (B, H, W, C) in T.
template <typename T>
__global__ void nchw_to_nhwc(const float* __restrict__ x, T* __restrict__ y, int B, int C, int H, int W) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    long long n = (long long)B * C * H * W;
    if (i >= n) return;
    int c = i % C; long long p = i / C; int hw = p % (H * W); int b = p / (H * W);
    y[i] = from_f<T>(x[((long long)b * C + c) * H * W + hw]);
}

// x (B, H, W, C) in T -> y (B, C, H, W) fp32.
template <typename T>
__global__ void nhwc_to_nchw(const T* __restrict__ x, float* __restrict__ y, int B, int C, int H, int W) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    long long n = (long long)B * C * H * W;
    if (i >= n) return;
    int hw = i % (H * W); long long q = i / (H * W); int c = q % C; int b = q / C;
    y[i] = to_f(x[((long long)b * H * W + hw) * C + c]);
}

// Patches for a dense conv: x (B, H, W, C) -> cols (B*Ho*Wo, k*k*C), order (ky, kx, c), zero outside.
template <typename T>
__global__ void im2col(const T* __restrict__ x, T* __restrict__ cols, int B, int H, int W, int C,
                       int k, int stride, int pad, int Ho, int Wo) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    int kc = k * k * C;
    long long n = (long long)B * Ho * Wo * kc;
    if (i >= n) return;
    int col = i % kc; long long row = i / kc;
    int c = col % C, t = col / C, kx = t % k, ky = t / k;
    int ox = row % Wo; long long r2 = row / Wo; int oy = r2 % Ho; int b = r2 / Ho;
    int iy = oy * stride + ky - pad, ix = ox * stride + kx - pad;
    cols[i] = (iy >= 0 && iy < H && ix >= 0 && ix < W) ? x[(((long long)b * H + iy) * W + ix) * C + c] : from_f<T>(0.0f);
}

// Patch merging (downsample v1): x (B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 4C),
// groups (row, col) offsets (0,0), (1,0), (0,1), (1,1); zeros past an odd edge.
template <typename T>
__global__ void patch_merge(const T* __restrict__ x, T* __restrict__ y, int B, int H, int W, int C) {
    int Ho = (H + 1) / 2, Wo = (W + 1) / 2;
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    long long n = (long long)B * Ho * Wo * 4 * C;
    if (i >= n) return;
    int c = i % C; long long q = i / C; int g = q % 4; long long p = q / 4;
    int ox = p % Wo; long long r = p / Wo; int oy = r % Ho; int b = r / Ho;
    int iy = 2 * oy + (g & 1), ix = 2 * ox + (g >> 1);
    y[i] = (iy < H && ix < W) ? x[(((long long)b * H + iy) * W + ix) * C + c] : from_f<T>(0.0f);
}

// x (rows, n) += bias (may be null), then the activation `act` (common.cuh): the
// GEMM epilogues, activations in place, and a learned map added to each image.
template <typename T>
__global__ void bias_act(T* __restrict__ x, const float* __restrict__ bias, long long rows, int n, int act) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= rows * n) return;
    float v = to_f(x[i]) + (bias ? bias[i % n] : 0.0f);
    x[i] = from_f<T>(act_f(v, act));
}

// y (rows, C) = act(x) * gate_act(z), z may be null; x is T or fp32 (S).
// Row r, channel c of x is x[r * xs + xo + c], of z z[r * zs + zo + c].
template <typename T, typename S>
__global__ void pointwise(const S* __restrict__ x, long long xs, long long xo, T* __restrict__ y, long long rows, int C,
                          int act, const T* __restrict__ z, long long zs, long long zo, int gate_act) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= rows * C) return;
    long long r = i / C;
    int c = i % C;
    float v = act_f(to_f(x[r * xs + xo + c]), act);
    if (z) v *= act_f(to_f(z[r * zs + zo + c]), gate_act);
    y[i] = from_f<T>(v);
}

// Softmax over the HW pixels of each channel: x (B, HW, C) fp32 -> y, one thread per (b, c).
template <typename T>
__global__ void spatial_softmax(const float* __restrict__ x, T* __restrict__ y, int B, int HW, int C) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= B * C) return;
    int c = i % C, b = i / C;
    const float* xb = x + (long long)b * HW * C + c;
    float m = -__int_as_float(0x7f800000), s = 0.0f;  // -inf (NVRTC has no math.h)
    for (int p = 0; p < HW; ++p) m = fmaxf(m, xb[(long long)p * C]);
    for (int p = 0; p < HW; ++p) s += __expf(xb[(long long)p * C] - m);
    for (int p = 0; p < HW; ++p) y[((long long)b * HW + p) * C + c] = from_f<T>(__expf(xb[(long long)p * C] - m) / s);
}

// out (rows, n) fp32 = x + bias (the classifier's epilogue).
template <typename T>
__global__ void bias_to_f32(const T* __restrict__ x, const float* __restrict__ bias, float* __restrict__ out, long long rows, int n) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= rows * n) return;
    out[i] = to_f(x[i]) + (bias ? bias[i % n] : 0.0f);
}

// Global average pool: x (B, HW, C) -> y (B, C).
template <typename T>
__global__ void mean_pool(const T* __restrict__ x, T* __restrict__ y, int B, int HW, int C) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= B * C) return;
    int c = i % C, b = i / C;
    float s = 0.0f;
    for (int p = 0; p < HW; ++p) s += to_f(x[((long long)b * HW + p) * C + c]);
    y[i] = from_f<T>(s / HW);
}

// Rows and columns swapped: x (B, H, W, C) -> y (B, W, H, C).
template <typename T>
__global__ void transpose_hw(const T* __restrict__ x, T* __restrict__ y, int B, int H, int W, int C) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= (long long)B * H * W * C) return;
    int c = i % C; long long q = i / C; int r = q % H; q /= H; int col = q % W; int b = q / W;
    y[i] = x[(((long long)b * H + r) * W + col) * C + c];
}
