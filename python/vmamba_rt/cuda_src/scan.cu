// The fused SS2D core: cross-scan + dt projection + selective scan + cross-merge.
//
// One thread runs one chain (image b, direction k, channel d) over one chunk of
// its sequence. Direction k walks the pixel grid in its own order (`paths`, four
// bits a direction: row-major, column-major, both reversed, or rotated), so no
// scanned copies of the activations are made, and each step adds its output into
// y at that pixel (the merge).
//
// Small batches have too few chains to fill the GPU, so the sequence is cut into
// S chunks and scanned in three steps (the recurrence h = a*h + b is linear):
//   1. scan_chunks<.., false>: each chunk from h = 0, storing its end state and
//      the product of its decay factors;
//   2. scan_carry: per chain, a short sequential pass over the S chunks that
//      turns those into each chunk's true starting state;
//   3. scan_chunks<.., true>: each chunk again from that state, writing y.
// With S = 1 only step 3 runs (from h = 0).
#include "common.cuh"

// A path through an H x W grid as `lines` runs of `len` steps: run i starts at
// pixel start + i * line_step and moves by `step`. Codes as gpu.py SCAN_PATHS:
// 0 raster, 1 transposed, 2 raster reversed, 3 transposed reversed, 4 rotated
// 90 degrees, 5 rotated 270 degrees, 6 raster reversed with each step's output
// written at the step's index (the cascade scan's unflipped backward direction).
struct Walk {
    int len, start, line_step, step;
};

__device__ __forceinline__ Walk walk_of(int path, int H, int W) {
    int L = H * W;
    switch (path) {
        case 1: return {H, 0, 1, W};
        case 2: case 6: return {L, L - 1, 0, -1};
        case 3: return {H, L - 1, -1, -W};
        case 4: return {H, W - 1, -1, W};
        case 5: return {H, (H - 1) * W, 1, -W};
        default: return {L, 0, 0, 1};
    }
}

// K directions (4, or 2 for each pass of the cascade scan):
// u: (B*L, Di)    xdbl: (B*L, K, R+2N) holding dt (R), B (N), C (N)
// wdt: (K, Di, R) bias: (K*Di)  A: (K*Di, N) = -exp(A_logs)  D: (K*Di)
// y: (B*L, Di) fp32, accumulated with atomics (the directions meet at a pixel)
// carry_a, carry_h: (B, K, Di, S, N)
template <int N, int R, typename T, bool WRITE>
__global__ void scan_chunks(const T* __restrict__ u, const T* __restrict__ xdbl, const float* __restrict__ wdt,
                            const float* __restrict__ bias, const float* __restrict__ A, const float* __restrict__ D,
                            float* __restrict__ y, float* __restrict__ carry_a, float* __restrict__ carry_h,
                            int B, int H, int W, int Di, int S, int chunk, int paths, int K) {
    int d = blockIdx.x * blockDim.x + threadIdx.x;
    int s = blockIdx.y % S, k = blockIdx.y / S, b = blockIdx.z;
    if (d >= Di) return;
    const int L = H * W, XS = K * (R + 2 * N);
    const int ch = k * Di + d;
    float w[R];
#pragma unroll
    for (int r = 0; r < R; ++r) w[r] = wdt[(long long)ch * R + r];
    float a[N], h[N];
    long long carry = ((((long long)b * K + k) * Di + d) * S + s) * N;
#pragma unroll
    for (int n = 0; n < N; ++n) {
        a[n] = A[(long long)ch * N + n];
        h[n] = (WRITE && S > 1) ? carry_h[carry + n] : 0.0f;
    }
    const float dskip = D[ch], dbias = bias[ch];
    float delta_sum = 0.0f;
    int l0 = s * chunk, l1 = min(L, l0 + chunk);
    // Step l0's pixel once, then walk: no division in the loop.
    const int path = (paths >> (4 * k)) & 15;
    const Walk walk = walk_of(path, H, W);
    int j = l0 % walk.len, line = l0 / walk.len;
    int p = walk.start + line * walk.line_step + j * walk.step;
    for (int l = l0; l < l1; ++l) {
        long long row = (long long)b * L + p;
        if (++j == walk.len) {
            j = 0;
            ++line;
            p = walk.start + line * walk.line_step;
        } else {
            p += walk.step;
        }
        const T* x = xdbl + row * XS + k * (R + 2 * N);
        float dt = dbias;
#pragma unroll
        for (int r = 0; r < R; ++r) dt += to_f(x[r]) * w[r];
        float delta = softplus_f(dt);
        float uu = to_f(u[row * Di + d]);
        float acc = dskip * uu;
#pragma unroll
        for (int n = 0; n < N; ++n) {
            h[n] = __expf(delta * a[n]) * h[n] + delta * to_f(x[R + n]) * uu;
            acc += h[n] * to_f(x[R + N + n]);
        }
        if (WRITE) atomicAdd(y + (path == 6 ? (long long)b * L + l : row) * Di + d, acc);
        delta_sum += delta;
    }
    if (!WRITE) {
#pragma unroll
        for (int n = 0; n < N; ++n) {
            carry_a[carry + n] = __expf(delta_sum * a[n]);  // prod_t exp(delta_t * A_n)
            carry_h[carry + n] = h[n];
        }
    }
}

// Per (chain, state): chunk end states from zero -> chunk start states (in place).
__global__ void scan_carry(const float* __restrict__ carry_a, float* __restrict__ carry_h, long long chains, int S, int N) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= chains * N) return;
    long long base = (i / N) * S * N + i % N;
    float h = 0.0f;
    for (int s = 0; s < S; ++s) {
        float end = carry_h[base + (long long)s * N];
        carry_h[base + (long long)s * N] = h;
        h = carry_a[base + (long long)s * N] * h + end;
    }
}
