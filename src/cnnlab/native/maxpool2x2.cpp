// 2x2, stride-2 max-pooling over channels-last float32 tensors, forward and backward, for cnnlab.
//
// The same values and gradients as torch's max_pool2d (the first maximum of a window, in row-major order,
// takes the gradient), with two savings: the forward pass keeps a one-byte window position per output
// instead of an int64 index, and the backward pass writes every input element once instead of zero-filling
// the whole gradient and scattering into it.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

int64_t rows_per_task(int64_t row_elements) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(row_elements, 1));
}

void check_input(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.dim() == 4 && t.scalar_type() == at::kFloat, what, ": a 4-d float32 tensor is required");
  TORCH_CHECK(t.is_contiguous(at::MemoryFormat::ChannelsLast), what, ": a channels-last tensor is required");
}

}  // namespace

std::vector<at::Tensor> max_pool_forward(const at::Tensor& x) {
  check_input(x, "max_pool_forward");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t h = H / 2, w = W / 2;
  auto out = at::empty({N, C, h, w}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  auto where = at::empty({N, h, w, C}, x.options().dtype(at::kByte));
  const float* src = x.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  uint8_t* pos = where.data_ptr<uint8_t>();
  at::parallel_for(0, N * h, rows_per_task(w * C * 4), [&](int64_t begin, int64_t end) {
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
  });
  return {out, where};
}

at::Tensor max_pool_backward(const at::Tensor& grad_out, const at::Tensor& where, int64_t H, int64_t W) {
  const auto g = grad_out.contiguous(at::MemoryFormat::ChannelsLast);
  check_input(g, "max_pool_backward");
  const int64_t N = g.size(0), C = g.size(1), h = g.size(2), w = g.size(3);
  TORCH_CHECK(H / 2 == h && W / 2 == w, "max_pool_backward: input size does not match the gradient");
  auto grad_in = at::empty({N, C, H, W}, g.options().memory_format(at::MemoryFormat::ChannelsLast));
  const float* gp = g.data_ptr<float>();
  const uint8_t* pos = where.data_ptr<uint8_t>();
  float* dst = grad_in.data_ptr<float>();
  at::parallel_for(0, N * H, rows_per_task(W * C), [&](int64_t begin, int64_t end) {
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
  });
  return grad_in;
}
