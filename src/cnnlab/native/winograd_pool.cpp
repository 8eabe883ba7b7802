// A 3x3 convolution (stride 1, no padding, with bias) followed by a 2x2 stride-2 max-pool, forward and
// backward, by Winograd's minimal filtering F(2x2, 3x3), over channels-last float32 tensors, for cnnlab.
//
// F(2x2, 3x3) computes a 2x2 block of convolution outputs from a 4x4 block of input with 16 multiplications
// per (input channel, filter) pair instead of 36; the 16 products of all channel pairs are 16 matrix
// products, (tiles x C) by (C x K), done by torch's GEMM. The 2x2 output blocks are exactly the pooling
// windows, so the output transform, the bias and the max-pool happen in one step and the full-size
// convolution output is never stored; a row or column the pool leaves out is never computed. Images are
// processed a few at a time per thread, so the transformed blocks stay in the cache.
//
// Notation (Lavin & Gray, 2016): V = B^T d B (input blocks), U = G g G^T (filters, done by the Python side),
// M = U . V summed over input channels, Y = A^T M A (the 2x2 outputs). The backward pass runs the same steps
// transposed: dM = A dY A^T, dV = dM U^T, dU = V^T dM, dd = B dV B^T added into the input gradient.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "simd.h"

namespace {

using namespace cnnlab_simd;

constexpr int64_t kImagesPerChunk = 4;  // about 100 blocks of 13x13 maps: the chunk's buffers fit in L2

struct Shape {
  int64_t N, H, W, C, K, h, w;  // input N x H x W x C (channels-last), K filters, pooled output h x w
  int64_t tiles() const { return h * w; }  // 4x4 input blocks per image, one per pooled output
};

Shape shape_of(const at::Tensor& x, const at::Tensor& u) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kFloat &&
              x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "winograd_pool: x must be a channels-last float32 tensor (N, C, H, W)");
  TORCH_CHECK(u.dim() == 3 && u.size(0) == 16 && u.size(1) == x.size(1) && u.is_contiguous() &&
              u.scalar_type() == at::kFloat, "winograd_pool: the filters must be a (16, C, K) tensor");
  TORCH_CHECK(x.size(2) >= 4 && x.size(3) >= 4, "winograd_pool: the input must be at least 4x4");
  return {x.size(0), x.size(2), x.size(3), x.size(1), u.size(2), (x.size(2) - 2) / 2, (x.size(3) - 2) / 2};
}

// Each transform below is written once for a vector of channels (Floats, the loops' body) and once more for
// single channels (float, the loops' tail when the channel count is not a multiple of the vector width).
inline void put_positions(uint8_t* p, const Ints& at) { store_positions(p, at, kLanes); }
inline void put_positions(uint8_t* p, int32_t at) { *p = static_cast<uint8_t>(at); }
inline Ints get_positions(const uint8_t* p, Floats) { return widen_positions(load<Bytes>(p)); }
inline int32_t get_positions(const uint8_t* p, float) { return *p; }

template <typename V>
inline void input_block(const float* const d[4][4], int64_t c, float* out, int64_t plane) {
  V r[4][4];  // B^T d: rows
  for (int b = 0; b < 4; b++) {
    const V d0 = load<V>(d[0][b] + c), d1 = load<V>(d[1][b] + c);
    const V d2 = load<V>(d[2][b] + c), d3 = load<V>(d[3][b] + c);
    r[0][b] = d0 - d2;
    r[1][b] = d1 + d2;
    r[2][b] = d2 - d1;
    r[3][b] = d1 - d3;
  }
  for (int a = 0; a < 4; a++) {  // (B^T d) B: columns
    store(out + (4 * a + 0) * plane + c, V(r[a][0] - r[a][2]));
    store(out + (4 * a + 1) * plane + c, V(r[a][1] + r[a][2]));
    store(out + (4 * a + 2) * plane + c, V(r[a][2] - r[a][1]));
    store(out + (4 * a + 3) * plane + c, V(r[a][1] - r[a][3]));
  }
}

// Calls f(t, corner) for each tile t of images [n0, n1); corner is the pixel offset of its 4x4 input block.
template <typename F>
void for_each_tile(const Shape& s, int64_t n0, int64_t n1, F f) {
  for (int64_t n = n0; n < n1; n++)
    for (int64_t i = 0; i < s.h; i++)
      for (int64_t j = 0; j < s.w; j++) f(((n - n0) * s.h + i) * s.w + j, (n * s.H + 2 * i) * s.W + 2 * j);
}

// Pointers to the channels of the 16 pixels of the 4x4 block whose top-left pixel is `corner`.
template <typename P>
void block_pixels(const Shape& s, P* base, int64_t corner, P* d[4][4]) {
  for (int a = 0; a < 4; a++)
    for (int b = 0; b < 4; b++) d[a][b] = base + (corner + a * s.W + b) * s.C;
}

// V[e][t][c] = (B^T d B)[e] for the 4x4 input block d of each tile t of images [n0, n1).
void input_blocks(const Shape& s, const float* x, int64_t n0, int64_t n1, float* v) {
  const int64_t C = s.C, plane = (n1 - n0) * s.tiles() * C;
  for_each_tile(s, n0, n1, [&](int64_t t, int64_t corner) {
    const float* d[4][4];
    block_pixels(s, x, corner, d);
    int64_t c = 0;
    for (; c + kLanes <= C; c += kLanes) input_block<Floats>(d, c, v + t * C, plane);
    for (; c < C; c++) input_block<float>(d, c, v + t * C, plane);
  });
}

template <typename V, typename I>
inline void pool_block(const float* mt, const float* bias, int64_t k, int64_t plane, float* o, uint8_t* p) {
  V q[2][4];  // A^T M: rows
  for (int b = 0; b < 4; b++) {
    const V m0 = load<V>(mt + (0 + b) * plane + k), m1 = load<V>(mt + (4 + b) * plane + k);
    const V m2 = load<V>(mt + (8 + b) * plane + k), m3 = load<V>(mt + (12 + b) * plane + k);
    q[0][b] = m0 + m1 + m2;
    q[1][b] = m1 - m2 - m3;
  }
  const V y[4] = {q[0][0] + q[0][1] + q[0][2], q[0][1] - q[0][2] - q[0][3],
                  q[1][0] + q[1][1] + q[1][2], q[1][1] - q[1][2] - q[1][3]};
  // Strictly greater: on a tie the earlier position keeps the maximum, as in torch.
  V best = y[0];
  I at = I{};
  for (int e = 1; e < 4; e++) {
    const auto more = y[e] > best;
    best = more ? y[e] : best;
    at = more ? I{} + e : at;
  }
  store(o + k, V(best + load<V>(bias + k)));
  put_positions(p + k, at);
}

// Y = A^T M A plus the bias for each tile; the maximum of the 2x2 block and its position go to out/where.
void pool_outputs(const Shape& s, const float* m, const float* bias, int64_t n0, int64_t n1, float* out,
                  uint8_t* where) {
  const int64_t T = (n1 - n0) * s.tiles(), K = s.K, plane = T * K;
  for (int64_t t = 0; t < T; t++) {
    float* o = out + (n0 * s.tiles() + t) * K;
    uint8_t* p = where + (n0 * s.tiles() + t) * K;
    int64_t k = 0;
    for (; k + kLanes <= K; k += kLanes) pool_block<Floats, Ints>(m + t * K, bias, k, plane, o, p);
    for (; k < K; k++) pool_block<float, int32_t>(m + t * K, bias, k, plane, o, p);
  }
}

template <typename V>
inline void output_grad_block(const float* g, const uint8_t* p, int64_t k, int64_t plane, float* out,
                              float* dbias) {
  const V gv = load<V>(g + k);
  const auto w = get_positions(p + k, V{});
  const V y00 = w == 0 ? gv : V{}, y01 = w == 1 ? gv : V{}, y10 = w == 2 ? gv : V{}, y11 = w == 3 ? gv : V{};
  const V r[4][2] = {{y00, y01}, {y00 + y10, y01 + y11}, {y00 - y10, y01 - y11}, {-y10, -y11}};  // A dY
  for (int a = 0; a < 4; a++) {  // (A dY) A^T
    store(out + (4 * a + 0) * plane + k, r[a][0]);
    store(out + (4 * a + 1) * plane + k, V(r[a][0] + r[a][1]));
    store(out + (4 * a + 2) * plane + k, V(r[a][0] - r[a][1]));
    store(out + (4 * a + 3) * plane + k, V(-r[a][1]));
  }
  store(dbias + k, V(load<V>(dbias + k) + gv));
}

// dM = A dY A^T for each tile, where dY is the pooled gradient at the winning position and zero elsewhere;
// the bias gradient is summed on the way.
void output_grads(const Shape& s, const float* grad, const uint8_t* where, int64_t n0, int64_t n1, float* dm,
                  float* dbias) {
  const int64_t T = (n1 - n0) * s.tiles(), K = s.K, plane = T * K;
  for (int64_t t = 0; t < T; t++) {
    const float* g = grad + (n0 * s.tiles() + t) * K;
    const uint8_t* p = where + (n0 * s.tiles() + t) * K;
    int64_t k = 0;
    for (; k + kLanes <= K; k += kLanes) output_grad_block<Floats>(g, p, k, plane, dm + t * K, dbias);
    for (; k < K; k++) output_grad_block<float>(g, p, k, plane, dm + t * K, dbias);
  }
}

template <typename V>
inline void input_grad_block(const float* in, int64_t c, int64_t plane, float* const d[4][4]) {
  V r[4][4];  // B dV: rows
  for (int b = 0; b < 4; b++) {
    const V v0 = load<V>(in + (0 + b) * plane + c), v1 = load<V>(in + (4 + b) * plane + c);
    const V v2 = load<V>(in + (8 + b) * plane + c), v3 = load<V>(in + (12 + b) * plane + c);
    r[0][b] = v0;
    r[1][b] = v1 - v2 + v3;
    r[2][b] = v1 + v2 - v0;
    r[3][b] = -v3;
  }
  for (int a = 0; a < 4; a++) {  // (B dV) B^T: columns
    store(d[a][0] + c, V(load<V>(d[a][0] + c) + r[a][0]));
    store(d[a][1] + c, V(load<V>(d[a][1] + c) + r[a][1] - r[a][2] + r[a][3]));
    store(d[a][2] + c, V(load<V>(d[a][2] + c) + r[a][1] + r[a][2] - r[a][0]));
    store(d[a][3] + c, V(load<V>(d[a][3] + c) - r[a][3]));
  }
}

// dd = B dV B^T for each tile, added into the input gradient under the tile's 4x4 block.
void input_grads(const Shape& s, const float* dv, int64_t n0, int64_t n1, float* dx) {
  const int64_t C = s.C, plane = (n1 - n0) * s.tiles() * C;
  for_each_tile(s, n0, n1, [&](int64_t t, int64_t corner) {
    float* d[4][4];
    block_pixels(s, dx, corner, d);
    int64_t c = 0;
    for (; c + kLanes <= C; c += kLanes) input_grad_block<Floats>(dv + t * C, c, plane, d);
    for (; c < C; c++) input_grad_block<float>(dv + t * C, c, plane, d);
  });
}

// The number of chunks of at most kImagesPerChunk images (at::parallel_for runs over chunk numbers).
int64_t chunks(int64_t N) { return (N + kImagesPerChunk - 1) / kImagesPerChunk; }

}  // namespace

std::vector<at::Tensor> winograd_pool_forward(const at::Tensor& x, const at::Tensor& u, const at::Tensor& bias) {
  const Shape s = shape_of(x, u);
  TORCH_CHECK(bias.numel() == s.K && bias.is_contiguous(), "winograd_pool: bias must have one value per filter");
  auto out = at::empty({s.N, s.K, s.h, s.w}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  auto where = at::empty({s.N, s.h, s.w, s.K}, x.options().dtype(at::kByte));
  const float* xp = x.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();
  float* op = out.data_ptr<float>();
  uint8_t* wp = where.data_ptr<uint8_t>();
  at::parallel_for(0, chunks(s.N), 1, [&](int64_t begin, int64_t end) {
    const int64_t most = kImagesPerChunk * s.tiles();
    auto v = at::empty({16, most, s.C}, x.options().memory_format(at::MemoryFormat::Contiguous));
    auto m = at::empty({16, most, s.K}, v.options());
    for (int64_t chunk = begin; chunk < end; chunk++) {
      const int64_t n0 = chunk * kImagesPerChunk, n1 = std::min(s.N, n0 + kImagesPerChunk);
      const int64_t T = (n1 - n0) * s.tiles();
      auto vt = at::from_blob(v.data_ptr<float>(), {16, T, s.C}, v.options());
      auto mt = at::from_blob(m.data_ptr<float>(), {16, T, s.K}, m.options());
      input_blocks(s, xp, n0, n1, vt.data_ptr<float>());
      at::bmm_out(mt, vt, u);  // in a parallel region: one thread's GEMMs
      pool_outputs(s, mt.data_ptr<float>(), bp, n0, n1, op, wp);
    }
  });
  return {out, where};
}

std::vector<at::Tensor> winograd_pool_backward(const at::Tensor& grad_out, const at::Tensor& where,
                                               const at::Tensor& x, const at::Tensor& u, const at::Tensor& u_t,
                                               bool input_grad) {
  const Shape s = shape_of(x, u);
  const auto g = grad_out.contiguous(at::MemoryFormat::ChannelsLast);
  TORCH_CHECK(g.scalar_type() == at::kFloat && g.size(0) == s.N && g.size(1) == s.K && g.size(2) == s.h &&
              g.size(3) == s.w, "winograd_pool_backward: the gradient does not match");
  TORCH_CHECK(u_t.sizes() == at::IntArrayRef({16, s.K, s.C}) && u_t.is_contiguous(),
              "winograd_pool_backward: u_t must be u transposed, (16, K, C)");
  // (at::zeros ignores the memory format it is given: empty, then zero)
  auto dx = input_grad
                ? at::empty({s.N, s.C, s.H, s.W}, x.options().memory_format(at::MemoryFormat::ChannelsLast)).zero_()
                : at::Tensor();
  const int64_t threads = at::get_num_threads();
  auto du = at::zeros({threads, 16, s.C, s.K}, x.options().memory_format(at::MemoryFormat::Contiguous));
  auto dbias = at::zeros({threads, s.K}, du.options());
  const float* xp = x.data_ptr<float>();
  const float* gp = g.data_ptr<float>();
  const uint8_t* wp = where.data_ptr<uint8_t>();
  float* dxp = input_grad ? dx.data_ptr<float>() : nullptr;
  at::parallel_for(0, chunks(s.N), 1, [&](int64_t begin, int64_t end) {
    const int64_t most = kImagesPerChunk * s.tiles(), me = at::get_thread_num();
    auto v = at::empty({16, most, s.C}, du.options());
    auto dv = at::empty({16, most, s.C}, du.options());
    auto dm = at::empty({16, most, s.K}, du.options());
    // Summed here and copied out once, so no thread writes near another's sums.
    auto my_du = at::zeros({16, s.C, s.K}, du.options());
    std::vector<float> my_dbias(s.K, 0.f);
    for (int64_t chunk = begin; chunk < end; chunk++) {
      const int64_t n0 = chunk * kImagesPerChunk, n1 = std::min(s.N, n0 + kImagesPerChunk);
      const int64_t T = (n1 - n0) * s.tiles();
      auto vt = at::from_blob(v.data_ptr<float>(), {16, T, s.C}, v.options());
      auto dvt = at::from_blob(dv.data_ptr<float>(), {16, T, s.C}, dv.options());
      auto dmt = at::from_blob(dm.data_ptr<float>(), {16, T, s.K}, dm.options());
      output_grads(s, gp, wp, n0, n1, dmt.data_ptr<float>(), my_dbias.data());
      input_blocks(s, xp, n0, n1, vt.data_ptr<float>());  // recomputed: cheaper than keeping them
      my_du.baddbmm_(vt.transpose(1, 2), dmt);
      if (input_grad) {
        at::bmm_out(dvt, dmt, u_t);
        input_grads(s, dvt.data_ptr<float>(), n0, n1, dxp);
      }
    }
    du[me].add_(my_du);
    float* db = dbias[me].data_ptr<float>();
    for (int64_t k = 0; k < s.K; k++) db[k] += my_dbias[k];
  });
  return {dx, du.sum(0), dbias.sum(0)};
}
