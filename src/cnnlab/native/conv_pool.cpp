// The first block of a grayscale CNN in one pass: a KxK convolution of one input channel (stride 1, no
// padding, with bias) followed by a 2x2 stride-2 max-pool, forward and backward, for cnnlab.
//
// A first layer on MNIST-sized images writes a map of N x 26 x 26 x C floats that the pool then reads and
// shrinks fourfold; its backward pass writes a gradient map of the same size only to read it back for the
// weight gradient. Here the convolution values of each 2x2 window are computed in registers, only the pooled
// maximum and a one-byte window position are stored, and the weight gradient is summed from the positions
// that won (a quarter of the multiply-adds). Ties go to the first maximum in row-major order, as in torch.
// With `relu`, the ReLU after the pool happens here too: a maximum <= 0 is stored as 0 with position 4, which
// no window position matches, so its gradient is zero (torch's threshold_backward: grad where output > 0).
// Where asked (`sums` not null), each pooled output's window also gives the sum of its four convolution values
// (after the ReLU): a map's mean without storing the map (the report's pass over the test images).
// The input's gradient too, for inputs that need one (a filter pattern's gradient ascent, a saliency map):
// per pooled output, the weights times the gradient its window position won, summed into the input pixels
// the window covers.
#include "kernels.h"
#include "simd.h"

#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// Output channels handled together: two vector registers' worth (32 on AVX-512, 16 on AVX2), so each pixel
// read serves eight multiply-adds and the four window positions' sums stay in registers. The weights and the
// bias come padded with zeros to a multiple of 32 channels (the Python side pads them).
using namespace cnnlab_simd;
constexpr int64_t kBlock = 2 * kLanes;
// Pooled outputs computed side by side: two on AVX-512 (16 sums in registers; the first layer's forward pass of
// the seed model 153 -> 124 us on a Zen 5 EPYC), one on AVX2, whose 16 registers hold one's 8 sums.
constexpr int kWindows = kLanes >= 16 ? 2 : 1;

struct Geometry {
  int64_t N, H, W, C, K, h, w, Cp;  // input N x H x W, C filters of K x K, pooled output h x w, C padded
};

// The four convolutions (window positions s = 0..3, row-major) of NW pooled outputs side by side, for one
// block of channels: `top` is the image pixel under the top-left tap of the first one's position 0 (the outputs
// share each weight load). K_ > 0 fixes K at compile time.
template <int K_, int NW>
inline void window_sums(const Geometry& g, const float* top, const float* wp, int64_t c0, Floats acc[NW][2][4]) {
  const int64_t K = K_ > 0 ? K_ : g.K;
  for (int64_t ky = 0; ky < K; ky++) {
    for (int64_t kx = 0; kx < K; kx++) {
      const float* wr = wp + (ky * K + kx) * g.Cp + c0;
      const Floats w0 = load<Floats>(wr), w1 = load<Floats>(wr + kLanes);
      for (int o = 0; o < NW; o++) {
        const float* px = top + ky * g.W + kx + 2 * o;
        const float v[4] = {px[0], px[1], px[g.W], px[g.W + 1]};
        for (int s = 0; s < 4; s++) {
          acc[o][0][s] += v[s] * w0;
          acc[o][1][s] += v[s] * w1;
        }
      }
    }
  }
}

// Pooled outputs [j, j + NW) of one row for one block of channels: the bias, the window sums, the maximum
// and its position, the ReLU where asked; the window's sum of values where `sums` is not null.
template <int K_, int NW>
inline void pooled_outputs(const Geometry& g, const float* src, const float* wp, const float* bp, float* dst,
                           uint8_t* pos, float* sums, bool relu, int64_t row, int64_t j, int64_t c0) {
  const int64_t n = row / g.h, i = row % g.h;
  Floats acc[NW][2][4];
  for (int half = 0; half < 2; half++) {
    const Floats b = load<Floats>(bp + c0 + half * kLanes);
    for (int o = 0; o < NW; o++)
      for (int s = 0; s < 4; s++) acc[o][half][s] = b;
  }
  window_sums<K_, NW>(g, src + (n * g.H + 2 * i) * g.W + 2 * j, wp, c0, acc);
  for (int o = 0; o < NW; o++) {
    float* out = dst + (row * g.w + j + o) * g.C;
    uint8_t* p = pos + (row * g.w + j + o) * g.C;
    for (int half = 0; half < 2; half++) {
      // Strictly greater: on a tie the earlier position keeps the maximum, as in torch.
      Floats m = acc[o][half][0];
      Ints at = {};
      for (int s = 1; s < 4; s++) {
        const Ints more = acc[o][half][s] > m;
        m = more ? acc[o][half][s] : m;
        at = more ? Ints{} + s : at;
      }
      if (relu) {
        const Ints dead = m <= Floats{};  // (not m > 0: a NaN passes, as through torch's relu)
        m = dead ? Floats{} : m;
        at = dead ? Ints{} + kDead : at;
      }
      const int64_t c = c0 + half * kLanes;
      if (c < g.C) {
        store(out + c, m, g.C - c);
        store_positions(p + c, at, g.C - c);
        if (sums != nullptr)
          store(sums + (row * g.w + j + o) * g.C + c, window_total(acc[o][half], relu), g.C - c);
      }
    }
  }
}

template <int K_>
void forward_rows(const Geometry& g, const float* src, const float* wp, const float* bp, float* dst,
                  uint8_t* pos, float* sums, bool relu, int64_t begin, int64_t end) {
  for (int64_t row = begin; row < end; row++) {
    // Channel blocks outside the pixel loop: the compiler then streams each pixel from memory instead of
    // hoisting (and spilling) the whole window's broadcasts.
    for (int64_t c0 = 0; c0 < g.C; c0 += kBlock) {
      int64_t j = 0;
      for (; j + kWindows <= g.w; j += kWindows)
        pooled_outputs<K_, kWindows>(g, src, wp, bp, dst, pos, sums, relu, row, j, c0);
      for (; j < g.w; j++) pooled_outputs<K_, 1>(g, src, wp, bp, dst, pos, sums, relu, row, j, c0);
    }
  }
}

// The gradient at one pooled output for one vector of channels from c, sent to the window position that won:
// masked[s] for position s, zero elsewhere (and everywhere where a fused ReLU zeroed the output); returns the
// gradient itself (zero where the ReLU cut it), for the bias.
inline Floats masked_grads(const Geometry& g, const float* gp, const uint8_t* pos, int64_t at, int64_t c,
                           Floats masked[4]) {
  Floats grad = {};
  Bytes won = {};
  if (c + kLanes <= g.C) {
    grad = load<Floats>(gp + at + c);
    won = load<Bytes>(pos + at + c);
  } else {  // the last vector: lanes past C get no gradient
    for (int64_t l = 0; l < g.C - c; l++) {
      grad[l] = gp[at + c + l];
      won[l] = pos[at + c + l];
    }
  }
  const Ints w = widen_positions(won);
  grad = w == kDead ? Floats{} : grad;
  for (int s = 0; s < 4; s++) masked[s] = w == s ? grad : Floats{};
  return grad;
}

constexpr int64_t kTapsPerPass = 9;  // sums kept in registers through a pass over the images: a 3x3 kernel's

// The weight and bias gradients of images [begin, end) into acc ((K*K + 1) x Cp, zeroed). One vector of
// channels and up to kTapsPerPass taps at a time, their sums in registers from the first image to the last;
// each sum takes its products in the order of images, outputs and window positions whatever the pass.
template <int K_>
void backward_images(const Geometry& g, const float* src, const float* gp, const uint8_t* pos, float* acc,
                     int64_t begin, int64_t end) {
  const int64_t K = K_ > 0 ? K_ : g.K, taps = K * K;
  for (int64_t c = 0; c < g.C; c += kLanes) {
    for (int64_t t0 = 0; t0 < taps; t0 += kTapsPerPass) {
      const int64_t count = std::min(kTapsPerPass, taps - t0);
      Floats sums[kTapsPerPass] = {}, bias = {};
      for (int64_t n = begin; n < end; n++) {
        for (int64_t i = 0; i < g.h; i++) {
          for (int64_t j = 0; j < g.w; j++) {
            const float* top = src + (n * g.H + 2 * i) * g.W + 2 * j;
            Floats masked[4];
            bias += masked_grads(g, gp, pos, ((n * g.h + i) * g.w + j) * g.C, c, masked);
            for (int64_t t = 0; t < (K_ == 3 ? kTapsPerPass : count); t++) {
              const float* px = top + ((t0 + t) / K) * g.W + (t0 + t) % K;
              const float v[4] = {px[0], px[1], px[g.W], px[g.W + 1]};
              for (int s = 0; s < 4; s++) sums[t] += v[s] * masked[s];
            }
          }
        }
      }
      for (int64_t t = 0; t < count; t++) store(acc + (t0 + t) * g.Cp + c, sums[t]);
      if (t0 == 0) store(acc + taps * g.Cp + c, bias);
    }
  }
}

// The input gradient of images [begin, end), each image's overwritten. The lanes of a patch hold the
// (K+1) x (K+1) input pixels that one pooled output's window covers (row-major, in NV vectors; 0: as many as
// `nv`, on the heap): each channel adds the gradient its output passed times its filter as placed at the
// window position that won (`placed`: per channel, five rows of nv vectors, the fifth all zero for an output a
// fused ReLU zeroed), so no lanes need summing. The channels take turns over kChains patches (one chain of
// dependent adds would wait on each), summed at the end; the patch is then added into the image, output after
// output in row-major order (the patches of neighbouring outputs overlap, so one thread owns each image).
constexpr int64_t kChains = 4;

template <int NV>
void input_grad_images(const Geometry& g, const float* gp, const uint8_t* pos, const Floats* placed, int64_t nv,
                       float* dx, int64_t begin, int64_t end) {
  const int64_t P = g.K + 1, count = NV > 0 ? NV : nv;
  Floats fixed[kChains][NV > 0 ? NV : 1];
  std::vector<Floats> loose(NV > 0 ? 0 : kChains * nv);
  auto patch = [&](int64_t chain, int64_t v) -> Floats& {
    return NV > 0 ? fixed[chain][v] : loose[chain * nv + v];
  };
  std::vector<float> lanes(count * kLanes);
  for (int64_t n = begin; n < end; n++) {
    float* image = dx + n * g.H * g.W;
    std::fill(image, image + g.H * g.W, 0.f);
    for (int64_t i = 0; i < g.h; i++) {
      for (int64_t j = 0; j < g.w; j++) {
        const int64_t at = ((n * g.h + i) * g.w + j) * g.C;
        for (int64_t chain = 0; chain < kChains; chain++)
          for (int64_t v = 0; v < count; v++) patch(chain, v) = Floats{};
        auto add = [&](int64_t chain, int64_t c) {
          const Floats* row = placed + (c * 5 + pos[at + c]) * count;
          const float grad = gp[at + c];
          for (int64_t v = 0; v < count; v++) patch(chain, v) += grad * row[v];
        };
        int64_t c = 0;
        for (; c + kChains <= g.C; c += kChains)
          for (int64_t chain = 0; chain < kChains; chain++) add(chain, c + chain);
        for (; c < g.C; c++) add(0, c);
        for (int64_t v = 0; v < count; v++)
          store(lanes.data() + v * kLanes, (patch(0, v) + patch(1, v)) + (patch(2, v) + patch(3, v)));
        float* corner = image + 2 * i * g.W + 2 * j;
        for (int64_t a = 0; a < P; a++)
          for (int64_t b = 0; b < P; b++) corner[a * g.W + b] += lanes[a * P + b];
      }
    }
  }
}

}  // namespace

extern "C" void cnnlab_conv_pool_forward(const float* x, const float* wt, const float* bias, float* out,
                                         uint8_t* where, float* sums, int64_t N, int64_t H, int64_t W, int64_t K,
                                         int64_t C, int64_t Cp, int relu, int threads) {
  const Geometry g{N, H, W, C, K, (H - K + 1) / 2, (W - K + 1) / 2, Cp};
  const int64_t rows = g.N * g.h;
  const int nt = cnnlab_parallel::threads_for(rows, 1, threads);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t t = 0; t < nt; t++) {
    int64_t begin, end;
    cnnlab_parallel::share(rows, static_cast<int>(t), nt, &begin, &end);
    if (g.K == 3) {
      forward_rows<3>(g, x, wt, bias, out, where, sums, relu != 0, begin, end);
    } else {
      forward_rows<0>(g, x, wt, bias, out, where, sums, relu != 0, begin, end);
    }
  }
}

extern "C" void cnnlab_conv_pool_backward(const float* grad_out, const uint8_t* where, const float* x,
                                          float* grad_wt_bias, int64_t N, int64_t H, int64_t W, int64_t K,
                                          int64_t C, int64_t Cp, int threads) {
  const Geometry g{N, H, W, C, K, (H - K + 1) / 2, (W - K + 1) / 2, Cp};
  const int64_t per = (K * K + 1) * Cp;  // weight gradient, then bias gradient
  const int nt = cnnlab_parallel::threads_for(g.N, 1, threads);
  // One contiguous share of the images per thread, each summing into its own row; the rows are added in a
  // fixed order afterwards, so the result does not depend on which thread finishes first.
  std::vector<float> partial(nt * per, 0.f);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t t = 0; t < nt; t++) {
    int64_t begin, end;
    cnnlab_parallel::share(g.N, static_cast<int>(t), nt, &begin, &end);
    std::vector<float> acc(per, 0.f);  // summed here, copied out once: no thread writes near another's sums
    if (g.K == 3) {
      backward_images<3>(g, x, grad_out, where, acc.data(), begin, end);
    } else {
      backward_images<0>(g, x, grad_out, where, acc.data(), begin, end);
    }
    std::memcpy(partial.data() + t * per, acc.data(), per * sizeof(float));
  }
  for (int64_t e = 0; e < per; e++) {
    float sum = 0.f;
    for (int t = 0; t < nt; t++) sum += partial[t * per + e];
    grad_wt_bias[e] = sum;
  }
}

extern "C" void cnnlab_conv_pool_backward_input(const float* grad_out, const uint8_t* where, const float* wt,
                                                float* dx, int64_t N, int64_t H, int64_t W, int64_t K, int64_t C,
                                                int64_t Cp, int threads) {
  const Geometry g{N, H, W, C, K, (H - K + 1) / 2, (W - K + 1) / 2, Cp};
  const int64_t P = K + 1, nv = (P * P + kLanes - 1) / kLanes;
  std::vector<Floats> placed(C * 5 * nv, Floats{});  // each filter placed at each window position, then zeros
  for (int64_t c = 0; c < C; c++) {
    for (int s = 0; s < 4; s++) {
      float* row = reinterpret_cast<float*>(placed.data() + (c * 5 + s) * nv);
      for (int64_t ky = 0; ky < K; ky++)
        for (int64_t kx = 0; kx < K; kx++) row[(ky + s / 2) * P + kx + s % 2] = wt[(ky * K + kx) * Cp + c];
    }
  }
  const int nt = cnnlab_parallel::threads_for(g.N, 1, threads);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t t = 0; t < nt; t++) {
    int64_t begin, end;
    cnnlab_parallel::share(g.N, static_cast<int>(t), nt, &begin, &end);
    if (nv == 1) {
      input_grad_images<1>(g, grad_out, where, placed.data(), nv, dx, begin, end);
    } else if (nv == 2) {
      input_grad_images<2>(g, grad_out, where, placed.data(), nv, dx, begin, end);
    } else {
      input_grad_images<0>(g, grad_out, where, placed.data(), nv, dx, begin, end);
    }
  }
}
