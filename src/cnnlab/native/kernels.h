// The C ABI of cnnlab's native kernels: plain functions over float pointers, called from Python with ctypes
// (cnnlab/native/library.py allocates every tensor with torch and passes its data pointer; it also checks
// shapes, dtypes and layouts, so these functions trust their arguments). No torch, ATen or pybind headers:
// the whole library compiles in one compiler call in seconds.
//
// Layouts: "channels-last" means N x H x W x C in memory; `where` holds one byte per pooled output, the
// position (0..3, row-major) of its window's maximum. The conv-pool kernels take `relu` (0 or 1): with 1 they
// apply the ReLU after the pool as well, and an output it zeroed (<= 0) gets position 4 and no gradient.
// `threads` is torch's thread count at the call.
#pragma once

#include <algorithm>
#include <cstdint>

extern "C" {

// 2x2 stride-2 max-pool of a channels-last (N, C, H, W) map into out (N, C, H/2, W/2), channels-last.
void cnnlab_max_pool_forward(const float* x, float* out, uint8_t* where, int64_t N, int64_t C, int64_t H,
                             int64_t W, int threads);
// Its gradient: grad_in (N, C, H, W), channels-last, every element written.
void cnnlab_max_pool_backward(const float* grad_out, const uint8_t* where, float* grad_in, int64_t N, int64_t C,
                              int64_t H, int64_t W, int threads);

// One-channel KxK convolution (stride 1, valid) + bias, then 2x2 max-pool: x (N, 1, H, W) contiguous, wt the
// filters as (K*K, Cp) with Cp = C padded with zero filters to a multiple of 32, bias (Cp); out (N, C, h, w)
// channels-last; sums (the shape of out), or null for none: each pooled window's sum of its four conv values
// (after the ReLU where relu).
void cnnlab_conv_pool_forward(const float* x, const float* wt, const float* bias, float* out, uint8_t* where,
                              float* sums, int64_t N, int64_t H, int64_t W, int64_t K, int64_t C, int64_t Cp,
                              int relu, int threads);
// Its gradients: grad_wt (K*K, Cp) then grad_bias (Cp), one array of (K*K + 1) * Cp floats, overwritten.
void cnnlab_conv_pool_backward(const float* grad_out, const uint8_t* where, const float* x, float* grad_wt_bias,
                               int64_t N, int64_t H, int64_t W, int64_t K, int64_t C, int64_t Cp, int threads);
// The input's gradient: dx (N, 1, H, W) contiguous, overwritten.
void cnnlab_conv_pool_backward_input(const float* grad_out, const uint8_t* where, const float* wt, float* dx,
                                     int64_t N, int64_t H, int64_t W, int64_t K, int64_t C, int64_t Cp,
                                     int threads);

// 3x3 convolution (stride 1, valid) + bias, then 2x2 max-pool, by Winograd F(2x2, 3x3): x (N, C, H, W)
// channels-last, u the transformed filters (16, C, K), bias (K); out (N, K, (H-2)/2, (W-2)/2) channels-last;
// sums as conv_pool_forward's.
void cnnlab_winograd_pool_forward(const float* x, const float* u, const float* bias, float* out, uint8_t* where,
                                  float* sums, int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int relu,
                                  int threads);
// Its gradients: dx (N, C, H, W) channels-last, zeroed by the caller, or null for none; du (16, C, K), or null
// for none, and dbias (K) overwritten. u_t is u transposed, (16, K, C).
void cnnlab_winograd_pool_backward(const float* grad_out, const uint8_t* where, const float* x, const float* u_t,
                                   float* dx, float* du, float* dbias, int64_t N, int64_t C, int64_t H, int64_t W,
                                   int64_t K, int threads);

// Y = L X L^T for each of `groups` blocks X of Q x Q vectors of C contiguous channels, L (P x Q: 5 x 5, 3 x 5 or
// 5 x 3) contiguous; position (i, j) of x's block g at x + g * x_group + (i * Q + j) * x_position, y's (P x P)
// likewise; bias (C) added to every output vector, or null. Every output written; y must not overlap x.
void cnnlab_block_transform(const float* L, const float* x, float* y, const float* bias, int64_t P, int64_t Q,
                            int64_t groups, int64_t C, int64_t x_group, int64_t x_position, int64_t y_group,
                            int64_t y_position, int threads);

// One step of Keras' RMSprop (not centered) over `count` float32 tensors of `sizes` elements, each with its
// gradient, velocity and, where `momentum` is not null, momentum buffer (all of one layout); the same bits as
// cnnlab.optim.KerasRMSprop's torch ops.
void cnnlab_rmsprop_step(float* const* params, const float* const* grads, float* const* velocity,
                         float* const* momentum, const int64_t* sizes, int64_t count, double lr, double rho,
                         double momentum_factor, double epsilon, int threads);
// One step of Keras' Adam (no amsgrad) with the bias-corrected rate `alpha`; each parameter is first multiplied
// by `decay` (AdamW's 1 - weight_decay * lr; 1 for Adam). The same bits as cnnlab.optim.KerasAdam's torch ops.
void cnnlab_adam_step(float* const* params, const float* const* grads, float* const* m, float* const* v,
                      const int64_t* sizes, int64_t count, double alpha, double beta_1, double beta_2,
                      double epsilon, double decay, int threads);

// The float32 square root to take in the optimizer steps: MKL's vsSqrt(n, a, r) (LP64), as torch's sqrt uses
// it where torch has MKL, or null for the correctly rounded one.
typedef void (*cnnlab_sqrt_fn)(int n, const float* a, float* r);
void cnnlab_use_sqrt(cnnlab_sqrt_fn sqrt);

// The Fortran BLAS sgemm_ to use for the Winograd step's matrix products, or null for the built-in loops.
typedef void (*cnnlab_sgemm_fn)(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                                const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                                const float* beta, float* c, const int* ldc);
void cnnlab_use_sgemm(cnnlab_sgemm_fn sgemm);

}  // extern "C"

namespace cnnlab_parallel {

// Threads for `work` items of which each thread should get at least `grain` (as at::parallel_for decides):
// small inputs run on one thread, without waking the others.
inline int threads_for(int64_t work, int64_t grain, int threads) {
  const int64_t most = std::max<int64_t>(1, (work + grain - 1) / std::max<int64_t>(grain, 1));
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, most)));
}

// The share [begin, end) of `work` items that thread `me` of `count` takes: contiguous, as even as can be.
inline void share(int64_t work, int me, int count, int64_t* begin, int64_t* end) {
  const int64_t each = work / count, extra = work % count;
  *begin = me * each + std::min<int64_t>(me, extra);
  *end = *begin + each + (me < extra ? 1 : 0);
}

}  // namespace cnnlab_parallel
