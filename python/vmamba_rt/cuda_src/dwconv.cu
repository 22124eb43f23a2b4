// Depthwise k x k convolution, stride 1, same padding, then an activation
// (SS2D's conv; SS2D's dwconv out norm, which reads the fp32 scan output: S).
#include "common.cuh"

// x (B, H, W, C) rows `x_stride` apart; w (k*k, C) tap-major; u (B, H, W, C).
template <typename T, typename S>
__global__ void dwconv_act(const S* __restrict__ x, int x_stride, T* __restrict__ u, const float* __restrict__ w,
                           const float* __restrict__ bias, int B, int H, int W, int C, int k, int act) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    long long n = (long long)B * H * W * C;
    if (i >= n) return;
    int c = i % C; long long p = i / C; int ox = p % W; long long r = p / W; int oy = r % H; int b = r / H;
    int pad = k / 2;
    float s = bias ? bias[c] : 0.0f;
    for (int ky = 0; ky < k; ++ky) {
        int iy = oy + ky - pad;
        if (iy < 0 || iy >= H) continue;
        for (int kx = 0; kx < k; ++kx) {
            int ix = ox + kx - pad;
            if (ix < 0 || ix >= W) continue;
            s += to_f(x[(((long long)b * H + iy) * W + ix) * x_stride + c]) * w[(ky * k + kx) * C + c];
        }
    }
    u[i] = from_f<T>(act_f(s, act));
}
