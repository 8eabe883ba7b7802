// A small matrix applied to blocks of channel vectors, for the Winograd F(3x3, 3x3) layers cnnlab trains through
// (cnnlab/layers/winograd_conv.py): each of `groups` blocks holds Q vectors of C channels, and the result holds
// P vectors, y_p = sum_q m[p][q] x_q (+ bias). Blocks and positions may lie anywhere (strides in floats) as long
// as a vector's channels are contiguous, so this one function does the six transforms of a training step (the
// input's, the filters', the output's and their adjoints) in the layouts the batched products read and write,
// without copies; torch's matmul did them at 15-85 GFLOP/s, these shapes being too thin for BLAS.
// Zero coefficients are skipped (the Winograd matrices are more than half zeros); the sums run in q order.
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

constexpr int64_t kMostPositions = 25;  // Q: a 5x5 block

inline Floats load_lanes(const float* p, int64_t lanes) {
  if (lanes >= kLanes) return load<Floats>(p);
  float tmp[kLanes] = {};
  std::memcpy(tmp, p, lanes * sizeof(float));
  return load<Floats>(tmp);
}

// The matrix's nonzero coefficients, row by row: row p's are coef[first[p] .. first[p + 1]), taken from the
// positions at[...] of the input.
struct Sparse {
  int first[kMostPositions + 1];
  int at[kMostPositions * kMostPositions];
  float coef[kMostPositions * kMostPositions];
};

void sparse_rows(const float* m, int64_t P, int64_t Q, Sparse* s) {
  int k = 0;
  for (int64_t p = 0; p < P; p++) {
    s->first[p] = k;
    for (int64_t q = 0; q < Q; q++) {
      if (m[p * Q + q] != 0.f) {
        s->at[k] = static_cast<int>(q);
        s->coef[k++] = m[p * Q + q];
      }
    }
  }
  s->first[P] = k;
}

void transform_groups(const Sparse& s, int64_t P, int64_t Q, const float* x, int64_t x_group, int64_t x_position,
                      float* y, int64_t y_group, int64_t y_position, const float* bias, int64_t C, int64_t begin,
                      int64_t end) {
  Floats in[kMostPositions];
  for (int64_t g = begin; g < end; g++) {
    const float* xb = x + g * x_group;
    float* yb = y + g * y_group;
    for (int64_t c = 0; c < C; c += kLanes) {
      const int64_t lanes = std::min<int64_t>(kLanes, C - c);
      for (int64_t q = 0; q < Q; q++) in[q] = load_lanes(xb + q * x_position + c, lanes);
      const Floats start = bias ? load_lanes(bias + c, lanes) : Floats{};
      for (int64_t p = 0; p < P; p++) {
        Floats acc = start;
        for (int k = s.first[p]; k < s.first[p + 1]; k++) acc += s.coef[k] * in[s.at[k]];
        store(yb + p * y_position + c, acc, lanes);
      }
    }
  }
}

}  // namespace

extern "C" void cnnlab_block_transform(const float* m, const float* x, float* y, const float* bias, int64_t P,
                                       int64_t Q, int64_t groups, int64_t C, int64_t x_group, int64_t x_position,
                                       int64_t y_group, int64_t y_position, int threads) {
  Sparse sparse;
  sparse_rows(m, P, Q, &sparse);
  // About 32 KB of output per thread at least: a small call stays on one thread.
  const int nt = cnnlab_parallel::threads_for(groups, std::max<int64_t>(1, 8192 / std::max<int64_t>(P * C, 1)),
                                              threads);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int t = 0; t < nt; t++) {
    int64_t begin, end;
    cnnlab_parallel::share(groups, t, nt, &begin, &end);
    transform_groups(sparse, P, Q, x, x_group, x_position, y, y_group, y_position, bias, C, begin, end);
  }
}
