// 2x2, stride-2 max-pooling over channels-last float32 maps, forward and backward, for cnnlab.
//
// The same values and gradients as torch's max_pool2d (the first maximum of a window, in row-major order,
// takes the gradient), with two savings: the forward pass keeps a one-byte window position per output
// instead of an int64 index, and the backward pass writes every input element once instead of zero-filling
// the whole gradient and scattering into it.
#include <algorithm>
#include <cstdint>

#include "kernels.h"

namespace {

// Rows per thread at least: about 16 KB of output each, so small maps stay on one thread.
int64_t rows_per_task(int64_t row_elements) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(row_elements, 1));
}

void forward_rows(const float* src, float* dst, uint8_t* pos, int64_t C, int64_t H, int64_t W, int64_t begin,
                  int64_t end) {
  const int64_t h = H / 2, w = W / 2;
  for (int64_t row = begin; row < end; row++) {
    const int64_t n = row / h, i = row % h;
    for (int64_t j = 0; j < w; j++) {
      const float* __restrict__ a = src + ((n * H + 2 * i) * W + 2 * j) * C;  // top-left of the window
      const float* __restrict__ b = a + C;
      const float* __restrict__ c = a + W * C;
      const float* __restrict__ d = c + C;
      float* __restrict__ o = dst + (row * w + j) * C;
      uint8_t* __restrict__ p = pos + (row * w + j) * C;
#pragma omp simd
      for (int64_t ch = 0; ch < C; ch++) {
        // Strictly greater: on a tie the earlier element keeps the maximum, as in torch.
        float m = a[ch];
        uint8_t s = 0;
        if (b[ch] > m) { m = b[ch]; s = 1; }
        if (c[ch] > m) { m = c[ch]; s = 2; }
        if (d[ch] > m) { m = d[ch]; s = 3; }
        o[ch] = m;
        p[ch] = s;
      }
    }
  }
}

void backward_rows(const float* gp, const uint8_t* pos, float* dst, int64_t C, int64_t H, int64_t W,
                   int64_t begin, int64_t end) {
  const int64_t h = H / 2, w = W / 2;
  for (int64_t r = begin; r < end; r++) {
    const int64_t n = r / H, y = r % H;
    float* row = dst + r * W * C;
    if (y >= 2 * h) {  // the last row of an odd height is in no window
      std::fill(row, row + W * C, 0.f);
      continue;
    }
    const int64_t i = y / 2;
    const uint8_t left = static_cast<uint8_t>(2 * (y % 2)), right = static_cast<uint8_t>(left + 1);
    for (int64_t j = 0; j < w; j++) {
      const float* __restrict__ gg = gp + ((n * h + i) * w + j) * C;
      const uint8_t* __restrict__ p = pos + ((n * h + i) * w + j) * C;
      float* __restrict__ l = row + 2 * j * C;
      float* __restrict__ rr = l + C;
#pragma omp simd
      for (int64_t ch = 0; ch < C; ch++) {
        l[ch] = p[ch] == left ? gg[ch] : 0.f;
        rr[ch] = p[ch] == right ? gg[ch] : 0.f;
      }
    }
    std::fill(row + 2 * w * C, row + W * C, 0.f);  // the last column of an odd width
  }
}

}  // namespace

extern "C" void cnnlab_max_pool_forward(const float* x, float* out, uint8_t* where, int64_t N, int64_t C,
                                        int64_t H, int64_t W, int threads) {
  const int64_t rows = N * (H / 2);
  const int nt = cnnlab_parallel::threads_for(rows, rows_per_task((W / 2) * C * 4), threads);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t t = 0; t < nt; t++) {
    int64_t begin, end;
    cnnlab_parallel::share(rows, static_cast<int>(t), nt, &begin, &end);
    forward_rows(x, out, where, C, H, W, begin, end);
  }
}

extern "C" void cnnlab_max_pool_backward(const float* grad_out, const uint8_t* where, float* grad_in, int64_t N,
                                         int64_t C, int64_t H, int64_t W, int threads) {
  const int64_t rows = N * H;
  const int nt = cnnlab_parallel::threads_for(rows, rows_per_task(W * C), threads);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t t = 0; t < nt; t++) {
    int64_t begin, end;
    cnnlab_parallel::share(rows, static_cast<int>(t), nt, &begin, &end);
    backward_rows(grad_out, where, grad_in, C, H, W, begin, end);
  }
}
