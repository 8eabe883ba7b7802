// Winograd's transforms of blocks of channel vectors, for the F(3x3, 3x3) layers cnnlab trains through
// (cnnlab/layers/winograd_conv.py): each of `groups` blocks holds Q x Q vectors of C channels (a 5x5 input
// block, a 3x3 filter, ...), and the result holds P x P vectors, Y = L X L^T for a P x Q matrix L (B^T, G,
// A^T and their transposes). Blocks and positions may lie anywhere (strides in floats) as long as a vector's
// channels are contiguous, so this one function does the six transforms of a training step (the input's, the
// filters', the output's and their adjoints) in the layouts the batched products read and write, without
// copies; torch's matmul with the 25 x 25 (kron) matrices ran at 15-85 GFLOP/s, these shapes being too thin
// for BLAS. Done as two passes, L X and then (L X) L^T: 2 x 125 multiply-adds per vector of a 5x5 block instead
// of 625 with the kron matrix, in short independent chains, the sums in index order.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernels.h"
#include "simd.h"

namespace {

using cnnlab_simd::Floats;
using cnnlab_simd::kLanes;
using cnnlab_simd::load;
using cnnlab_simd::store;

inline Floats load_lanes(const float* p, int64_t lanes) {
  if (lanes >= kLanes) return load<Floats>(p);
  float tmp[kLanes] = {};
  std::memcpy(tmp, p, lanes * sizeof(float));
  return load<Floats>(tmp);
}

// P and Q fixed at compile time (the three shapes the layer uses), so the loops unroll and the block's vectors
// stay in registers: dense multiply-adds, zeros included, ran 6-8x faster than skipping zeros in loops whose
// bounds are only known at run time (input transform of a batch of 64: 75 -> ~10 us, one core).
template <int P, int Q>
void transform_groups(const float* L, const float* x, int64_t x_group, int64_t x_position, float* y,
                      int64_t y_group, int64_t y_position, const float* bias, int64_t C, int64_t begin, int64_t end) {
  float l[P][Q];
  for (int a = 0; a < P; a++)
    for (int i = 0; i < Q; i++) l[a][i] = L[a * Q + i];
  for (int64_t g = begin; g < end; g++) {
    const float* xb = x + g * x_group;
    float* yb = y + g * y_group;
    for (int64_t c = 0; c < C; c += kLanes) {
      const int64_t lanes = std::min<int64_t>(kLanes, C - c);
      Floats in[Q][Q], half[P][Q];
      for (int i = 0; i < Q; i++)
        for (int j = 0; j < Q; j++) in[i][j] = load_lanes(xb + (i * Q + j) * x_position + c, lanes);
      for (int a = 0; a < P; a++) {  // half = L X
        for (int j = 0; j < Q; j++) {
          Floats sum = l[a][0] * in[0][j];
          for (int i = 1; i < Q; i++) sum += l[a][i] * in[i][j];
          half[a][j] = sum;
        }
      }
      const Floats start = bias ? load_lanes(bias + c, lanes) : Floats{};
      for (int a = 0; a < P; a++) {  // Y = (L X) L^T
        for (int b = 0; b < P; b++) {
          Floats sum = start;
          for (int j = 0; j < Q; j++) sum += l[b][j] * half[a][j];
          store(yb + (a * P + b) * y_position + c, sum, lanes);
        }
      }
    }
  }
}

using Transform = void (*)(const float*, const float*, int64_t, int64_t, float*, int64_t, int64_t, const float*,
                           int64_t, int64_t, int64_t);

Transform transform_for(int64_t P, int64_t Q) {
  if (P == 5 && Q == 5) return transform_groups<5, 5>;
  if (P == 3 && Q == 5) return transform_groups<3, 5>;
  if (P == 5 && Q == 3) return transform_groups<5, 3>;
  return nullptr;
}

}  // namespace

extern "C" void cnnlab_block_transform(const float* L, const float* x, float* y, const float* bias, int64_t P,
                                       int64_t Q, int64_t groups, int64_t C, int64_t x_group, int64_t x_position,
                                       int64_t y_group, int64_t y_position, int threads) {
  const Transform transform = transform_for(P, Q);
  // About 32 KB of output per thread at least: a small call stays on one thread.
  const int nt = cnnlab_parallel::threads_for(groups, std::max<int64_t>(1, 8192 / std::max<int64_t>(P * P * C, 1)),
                                              threads);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int t = 0; t < nt; t++) {
    int64_t begin, end;
    cnnlab_parallel::share(groups, t, nt, &begin, &end);
    transform(L, x, x_group, x_position, y, y_group, y_position, bias, C, begin, end);
  }
}
