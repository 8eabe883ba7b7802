// A 3x3 convolution (stride 1, no padding, with bias) followed by a 2x2 stride-2 max-pool, forward and
// backward, by Winograd's minimal filtering F(2x2, 3x3), over channels-last float32 tensors, for cnnlab.
//
// F(2x2, 3x3) computes a 2x2 block of convolution outputs from a 4x4 block of input with 16 multiplications
// per (input channel, filter) pair instead of 36; the 16 products of all channel pairs are 16 matrix
// products, (tiles x C) by (C x K), done by the register-blocked loops below (or a BLAS sgemm_ if the Python
// side hands one over: see cnnlab_use_sgemm). The 2x2 output blocks are exactly the pooling
// windows, so the output transform, the bias and the max-pool happen in one step and the full-size
// convolution output is never stored; a row or column the pool leaves out is never computed; with `relu`, the
// ReLU after the pool too (a dead output gets position kDead, so its gradient is zero). Where asked, each block
// also gives the sum of its four outputs (after the ReLU): a map's mean without the map, less the row and column
// the pool leaves out (the caller adds those). Images are processed a few at a time per thread, so the
// transformed blocks stay in the cache.
//
// Notation (Lavin & Gray, 2016): V = B^T d B (input blocks), U = G g G^T (filters, done by the Python side),
// M = U . V summed over input channels, Y = A^T M A (the 2x2 outputs). The backward pass runs the same steps
// transposed: dM = A dY A^T, dV = dM U^T, dU = V^T dM, dd = B dV B^T added into the input gradient.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "kernels.h"
#include "simd.h"

namespace {

using namespace cnnlab_simd;

constexpr int64_t kImagesPerChunk = 4;  // about 100 blocks of 13x13 maps: the chunk's buffers fit in L2

struct Shape {
  int64_t N, H, W, C, K, h, w;  // input N x H x W x C (channels-last), K filters, pooled output h x w
  int64_t tiles() const { return h * w; }  // 4x4 input blocks per image, one per pooled output
};

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
inline void pool_block(const float* mt, const float* bias, int64_t k, int64_t plane, bool relu, float* o,
                       uint8_t* p, float* sm) {
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
  const V b = load<V>(bias + k);
  if (sm != nullptr) {
    const V biased[4] = {y[0] + b, y[1] + b, y[2] + b, y[3] + b};
    store(sm + k, window_total(biased, relu));
  }
  V value = best + b;
  if (relu) {
    const auto dead = value <= V{};  // (not value > 0: a NaN passes, as through torch's relu)
    value = dead ? V{} : value;
    at = dead ? I{} + kDead : at;
  }
  store(o + k, value);
  put_positions(p + k, at);
}

// Y = A^T M A plus the bias for each tile; the maximum of the 2x2 block and its position go to out/where, the
// block's sum to sums where it is not null.
void pool_outputs(const Shape& s, const float* m, const float* bias, bool relu, int64_t n0, int64_t n1,
                  float* out, uint8_t* where, float* sums) {
  const int64_t T = (n1 - n0) * s.tiles(), K = s.K, plane = T * K;
  for (int64_t t = 0; t < T; t++) {
    float* o = out + (n0 * s.tiles() + t) * K;
    uint8_t* p = where + (n0 * s.tiles() + t) * K;
    float* sm = sums != nullptr ? sums + (n0 * s.tiles() + t) * K : nullptr;
    int64_t k = 0;
    for (; k + kLanes <= K; k += kLanes) pool_block<Floats, Ints>(m + t * K, bias, k, plane, relu, o, p, sm);
    for (; k < K; k++) pool_block<float, int32_t>(m + t * K, bias, k, plane, relu, o, p, sm);
  }
}

template <typename V>
inline void output_grad_block(const float* g, const uint8_t* p, int64_t k, int64_t plane, float* out,
                              float* dbias) {
  const auto w = get_positions(p + k, V{});
  const V gv = w == kDead ? V{} : load<V>(g + k);
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


// ---------------------------------------------------------------------------------------------------------
// The matrix products: out (rows x cols, row-major) = or += A (rows x depth) . B (depth x cols, row-major).
// A's element (i, p) is a[i * ars + p * acs], so one loop serves A and A transposed. Blocks of kRows rows by
// kVectors vectors of columns keep their sums in registers while B's rows stream from L1 (B is a transformed
// filter bank: C x K floats, a few KB).

cnnlab_sgemm_fn blas_sgemm = nullptr;  // set by cnnlab_use_sgemm

#if defined(__AVX512F__)
constexpr int kRows = 6;     // 24 sums + 4 rows of B + a broadcast: 29 of the 32 registers (4 rows: Conv2D_2 fwd+bwd
constexpr int kVectors = 4;  // 1.4 -> 1.07 ms on a Zen 5 EPYC; on a Zen 4 one, an earlier stop found 6 and 4 alike)
constexpr int kSingleRows = 8;
#else
constexpr int kRows = 6;     // 12 sums + 2 rows of B + a broadcast: 15 of the 16 registers (4 rows left 5 idle:
constexpr int kVectors = 2;  // Conv2D_2 of the seed model forward + backward 5.0 -> 4.4 ms, AVX2 code on Zen 4)
constexpr int kSingleRows = 8;
#endif

struct Operand {
  const float* a;
  int64_t ars, acs;  // A's row and column strides
  const float* b;
  int64_t ldb;
};

template <int R, int NV>
inline void product_block(const Operand& op, int64_t i, int64_t j, int64_t depth, float* out, int64_t ldo,
                          bool add) {
  Floats sum[R][NV];
  for (int r = 0; r < R; r++)
    for (int v = 0; v < NV; v++)
      sum[r][v] = add ? load<Floats>(out + (i + r) * ldo + j + v * kLanes) : Floats{};
  const float* a = op.a + i * op.ars;
  for (int64_t p = 0; p < depth; p++) {
    Floats b[NV];
    for (int v = 0; v < NV; v++) b[v] = load<Floats>(op.b + p * op.ldb + j + v * kLanes);
    for (int r = 0; r < R; r++) {
      const float av = a[r * op.ars + p * op.acs];
      for (int v = 0; v < NV; v++) sum[r][v] += av * b[v];
    }
  }
  for (int r = 0; r < R; r++)
    for (int v = 0; v < NV; v++) store(out + (i + r) * ldo + j + v * kLanes, sum[r][v]);
}

// Columns [j, j + NV vectors) of every row: blocks of R rows, then of 2, then single rows.
template <int R, int NV>
void product_columns(const Operand& op, int64_t rows, int64_t j, int64_t depth, float* out, int64_t ldo, bool add) {
  int64_t i = 0;
  for (; i + R <= rows; i += R) product_block<R, NV>(op, i, j, depth, out, ldo, add);
  for (; i + 2 <= rows; i += 2) product_block<2, NV>(op, i, j, depth, out, ldo, add);
  for (; i < rows; i++) product_block<1, NV>(op, i, j, depth, out, ldo, add);
}

// Whole blocks of kVectors vectors of columns, then the narrower rest: a block of fewer vectors takes more rows,
// so it still has as many independent sums (a product with 2 vectors of columns, Conv2D_2's input gradient on
// AVX-512, ran at half speed in 4 x 1 blocks). Each sum adds its products in depth order whatever the block:
// the same bits either way. Single columns last.
void product(const Operand& op, int64_t rows, int64_t cols, int64_t depth, float* out, int64_t ldo, bool add) {
  int64_t j = 0;
  for (; j + kVectors * kLanes <= cols; j += kVectors * kLanes)
    product_columns<kRows, kVectors>(op, rows, j, depth, out, ldo, add);
  if constexpr (kVectors > 2) {
    if (j + 2 * kLanes <= cols) {
      product_columns<2 * kRows, 2>(op, rows, j, depth, out, ldo, add);
      j += 2 * kLanes;
    }
  }
  for (; j + kLanes <= cols; j += kLanes) product_columns<kSingleRows, 1>(op, rows, j, depth, out, ldo, add);
  for (; j < cols; j++) {
    for (int64_t i = 0; i < rows; i++) {
      float sum = add ? out[i * ldo + j] : 0.f;
      for (int64_t p = 0; p < depth; p++) sum += op.a[i * op.ars + p * op.acs] * op.b[p * op.ldb + j];
      out[i * ldo + j] = sum;
    }
  }
}

// out (rows x cols) = or += a (rows x depth, row-major; transposed: depth x rows) . b (depth x cols), all
// row-major and dense; through BLAS if one was handed over (column-major: out^T = b^T a^T).
void matmul(bool transpose_a, const float* a, const float* b, float* out, int64_t rows, int64_t cols,
            int64_t depth, bool add) {
  if (blas_sgemm != nullptr) {
    const int m = static_cast<int>(cols), n = static_cast<int>(rows), k = static_cast<int>(depth);
    const int lda = static_cast<int>(cols), ldb = static_cast<int>(transpose_a ? rows : depth), ldc = m;
    const float one = 1.f, beta = add ? 1.f : 0.f;
    blas_sgemm("N", transpose_a ? "T" : "N", &m, &n, &k, &one, b, &lda, a, &ldb, &beta, out, &ldc);
    return;
  }
  const Operand op = transpose_a ? Operand{a, 1, rows, b, cols} : Operand{a, depth, 1, b, cols};
  product(op, rows, cols, depth, out, cols, add);
}

// The number of chunks of at most kImagesPerChunk images (the threads share out whole chunks).
int64_t chunks(int64_t N) { return (N + kImagesPerChunk - 1) / kImagesPerChunk; }

}  // namespace

extern "C" void cnnlab_use_sgemm(cnnlab_sgemm_fn sgemm) { blas_sgemm = sgemm; }

extern "C" void cnnlab_winograd_pool_forward(const float* x, const float* u, const float* bias, float* out,
                                             uint8_t* where, float* sums, int64_t N, int64_t C, int64_t H,
                                             int64_t W, int64_t K, int relu, int threads) {
  const Shape s{N, H, W, C, K, (H - 2) / 2, (W - 2) / 2};
  const int64_t all = chunks(N), most = kImagesPerChunk * s.tiles();
  const int nt = cnnlab_parallel::threads_for(all, 1, threads);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t t = 0; t < nt; t++) {
    int64_t begin, end;
    cnnlab_parallel::share(all, static_cast<int>(t), nt, &begin, &end);
    std::vector<float> v(16 * most * C), m(16 * most * K);
    for (int64_t chunk = begin; chunk < end; chunk++) {
      const int64_t n0 = chunk * kImagesPerChunk, n1 = std::min(N, n0 + kImagesPerChunk);
      const int64_t T = (n1 - n0) * s.tiles();
      input_blocks(s, x, n0, n1, v.data());
      for (int e = 0; e < 16; e++)
        matmul(false, v.data() + e * T * C, u + e * C * K, m.data() + e * T * K, T, K, C, false);
      pool_outputs(s, m.data(), bias, relu != 0, n0, n1, out, where, sums);
    }
  }
}

extern "C" void cnnlab_winograd_pool_backward(const float* grad_out, const uint8_t* where, const float* x,
                                              const float* u_t, float* dx, float* du, float* dbias, int64_t N,
                                              int64_t C, int64_t H, int64_t W, int64_t K, int threads) {
  const Shape s{N, H, W, C, K, (H - 2) / 2, (W - 2) / 2};
  const int64_t all = chunks(N), most = kImagesPerChunk * s.tiles(), per = 16 * C * K + K;
  const int nt = cnnlab_parallel::threads_for(all, 1, threads);
  std::vector<float> partial(nt * per);  // each thread's dU, then its bias gradient
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t t = 0; t < nt; t++) {
    int64_t begin, end;
    cnnlab_parallel::share(all, static_cast<int>(t), nt, &begin, &end);
    std::vector<float> v(du != nullptr ? 16 * most * C : 0), dv(dx != nullptr ? 16 * most * C : 0),
        dm(16 * most * K);
    std::vector<float> mine(per, 0.f);  // summed here and copied out once: no thread writes near another's sums
    for (int64_t chunk = begin; chunk < end; chunk++) {
      const int64_t n0 = chunk * kImagesPerChunk, n1 = std::min(N, n0 + kImagesPerChunk);
      const int64_t T = (n1 - n0) * s.tiles();
      output_grads(s, grad_out, where, n0, n1, dm.data(), mine.data() + 16 * C * K);
      if (du != nullptr) {
        input_blocks(s, x, n0, n1, v.data());  // recomputed: cheaper than keeping them
        for (int e = 0; e < 16; e++)
          matmul(true, v.data() + e * T * C, dm.data() + e * T * K, mine.data() + e * C * K, C, K, T, true);
      }
      if (dx != nullptr) {
        for (int e = 0; e < 16; e++)
          matmul(false, dm.data() + e * T * K, u_t + e * K * C, dv.data() + e * T * C, T, C, K, false);
        input_grads(s, dv.data(), n0, n1, dx);
      }
    }
    std::copy(mine.begin(), mine.end(), partial.begin() + t * per);
  }
  for (int64_t e = du != nullptr ? 0 : 16 * C * K; e < per; e++) {  // in a fixed order: the same sums
    float sum = 0.f;                                                  // whichever thread finished first
    for (int t = 0; t < nt; t++) sum += partial[t * per + e];
    (e < 16 * C * K ? du[e] : dbias[e - 16 * C * K]) = sum;
  }
}
