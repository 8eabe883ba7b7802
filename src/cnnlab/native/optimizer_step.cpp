// One fused update step of the Keras RMSprop and Adam rules over a list of float32 tensors, for cnnlab.
//
// cnnlab's optimizers (cnnlab/optim.py) write each rule as a chain of torch._foreach ops: six to eight passes
// over every tensor, each dispatched per tensor (about 0.2 ms a step for the seed model). Here each element
// is read and written once, a tile at a time. The arithmetic is the foreach chain's, operation for operation
// and rounding for rounding, so both give the same bits:
// - torch's addcmul is fma(value * t1, t2, self); its lerp fma(w, end - self, self) for |w| < 0.5, else
//   fma(w - 1, end - self, end); its addcdiv self + value * t1 / t2, without a fused multiply-add (so no
//   multiply may be fused into the add after it: `apart` below);
// - torch's sqrt of float32 is MKL's vsSqrt where torch has MKL (within an ulp, not correctly rounded):
//   `cnnlab_use_sqrt` hands over the same function, and the square roots of a tile go through it.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernels.h"
#include "simd.h"

namespace {

using cnnlab_simd::Floats;
using cnnlab_simd::kLanes;

constexpr int64_t kGrain = 32768;  // elements per thread at least: a small model's step stays on one thread

// A fused multiply-add and a correctly rounded square root, of one float or of a vector of them.
inline float fused(float a, float b, float c) { return std::fma(a, b, c); }
inline float root(float x) { return std::sqrt(x); }
#if defined(__x86_64__) && defined(__AVX512F__)
#define CNNLAB_VECTOR_STEP 1
inline Floats fused(Floats a, Floats b, Floats c) { return (Floats)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c); }
inline Floats root(Floats x) { return (Floats)_mm512_sqrt_ps((__m512)x); }
#elif defined(__x86_64__) && defined(__AVX__) && defined(__FMA__)
#define CNNLAB_VECTOR_STEP 1
inline Floats fused(Floats a, Floats b, Floats c) { return (Floats)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c); }
inline Floats root(Floats x) { return (Floats)_mm256_sqrt_ps((__m256)x); }
#else
#define CNNLAB_VECTOR_STEP 0  // one float at a time
#endif

// x as rounded, kept apart: the compiler may not fuse it into the add that follows (GCC does by default, which
// rounds once where torch rounds twice). An empty asm statement it cannot see through.
template <typename T>
inline T apart(T x) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  asm("" : "+x"(x));
#elif defined(__GNUC__) && defined(__aarch64__)
  asm("" : "+w"(x));
#endif
  return x;
}

// torch's lerp of `self` towards `end` by the weight `w`, as it rounds (the branch is the weight's, so one per
// call): `small` is |w| < 0.5.
template <typename T>
inline T lerp(T self, T end, T w, T w_minus_1, bool small) {
  return small ? fused(w, end - self, self) : fused(w_minus_1, end - self, end);
}

// Calls body.operator()<Floats>(i) for each whole vector of [begin, end), then body.operator()<float>(i) for
// each element left.
template <typename F>
void in_vectors(int64_t begin, int64_t end, F body) {
  int64_t i = begin;
#if CNNLAB_VECTOR_STEP
  for (; i + kLanes <= end; i += kLanes) body.template operator()<Floats>(i);
#endif
  for (; i < end; i++) body.template operator()<float>(i);
}

template <typename T>
inline T splat(float x) {
  if constexpr (sizeof(T) == sizeof(float)) {
    return x;
  } else {
    return x - T{};  // x in every lane (x - 0 is x, -0 included)
  }
}

template <typename T>
inline T load(const float* p) {
  if constexpr (sizeof(T) == sizeof(float)) return *p;
  else return cnnlab_simd::load<T>(p);
}

template <typename T>
inline void store(float* p, T v) {
  if constexpr (sizeof(T) == sizeof(float)) *p = v;
  else cnnlab_simd::store(p, v);
}

constexpr int64_t kTile = 4096;  // elements whose square roots are taken in one call

cnnlab_sqrt_fn vml_sqrt = nullptr;  // MKL's vsSqrt as torch's sqrt uses it, or none: correctly rounded

void square_roots(float* x, int64_t n) {
  if (vml_sqrt != nullptr) {
    vml_sqrt(static_cast<int>(n), x, x);
    return;
  }
  in_vectors(0, n, [&]<typename T>(int64_t i) { store(x + i, root(load<T>(x + i))); });
}

// Runs body(tensor, begin, end) over thread `me`'s share of every tensor's elements, a tile at a time.
template <typename F>
void each_tile(const int64_t* sizes, int64_t count, int threads, F body) {
  int64_t total = 0;
  for (int64_t t = 0; t < count; t++) total += sizes[t];
  const int nt = cnnlab_parallel::threads_for(total, kGrain, threads);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int me = 0; me < nt; me++) {
    for (int64_t t = 0; t < count; t++) {
      int64_t begin, end;
      cnnlab_parallel::share(sizes[t], me, nt, &begin, &end);
      for (int64_t at = begin; at < end; at += kTile) body(t, at, std::min(end, at + kTile));
    }
  }
}

}  // namespace

extern "C" void cnnlab_use_sqrt(cnnlab_sqrt_fn sqrt) { vml_sqrt = sqrt; }

extern "C" void cnnlab_rmsprop_step(float* const* params, const float* const* grads, float* const* velocity,
                                    float* const* momentum, const int64_t* sizes, int64_t count, double lr,
                                    double rho, double momentum_factor, double epsilon, int threads) {
  const float r = static_cast<float>(rho), keep = static_cast<float>(1.0 - rho), e = static_cast<float>(epsilon);
  const float l = static_cast<float>(momentum != nullptr ? lr : -lr), mf = static_cast<float>(momentum_factor);
  each_tile(sizes, count, threads, [&](int64_t t, int64_t begin, int64_t end) {
    float* p = params[t];
    const float* g = grads[t];
    float* v = velocity[t];
    float* b = momentum != nullptr ? momentum[t] : nullptr;
    alignas(64) float d[kTile];
    in_vectors(begin, end, [&]<typename T>(int64_t i) {
      const T gi = load<T>(g + i);
      const T vi = fused(splat<T>(keep) * gi, gi, load<T>(v + i) * splat<T>(r));  // v = v*rho + (1-rho)*g*g
      store(v + i, vi);
      store(d + (i - begin), vi + splat<T>(e));
    });
    square_roots(d, end - begin);                                                  // sqrt(v + epsilon)
    in_vectors(begin, end, [&]<typename T>(int64_t i) {
      const T step = (splat<T>(l) * load<T>(g + i)) / load<T>(d + (i - begin));    // lr * g / sqrt(...)
      if (b != nullptr) {
        const T bi = apart(load<T>(b + i) * splat<T>(mf)) + step;                   // b = b * momentum + step
        store(b + i, bi);
        store(p + i, load<T>(p + i) - bi);                                          // p -= b
      } else {
        store(p + i, load<T>(p + i) + step);                                        // (l is -lr here)
      }
    });
  });
}

extern "C" void cnnlab_adam_step(float* const* params, const float* const* grads, float* const* m,
                                 float* const* v, const int64_t* sizes, int64_t count, double alpha, double beta_1,
                                 double beta_2, double epsilon, double decay, int threads) {
  const float w1 = static_cast<float>(1.0 - beta_1), w2 = static_cast<float>(1.0 - beta_2);
  const bool small1 = std::fabs(w1) < 0.5f, small2 = std::fabs(w2) < 0.5f;
  const float e = static_cast<float>(epsilon), minus_a = static_cast<float>(-alpha);
  const float keep = static_cast<float>(decay);
  const bool decays = decay != 1.0;
  each_tile(sizes, count, threads, [&](int64_t t, int64_t begin, int64_t end) {
    float* p = params[t];
    const float* g = grads[t];
    float* mt = m[t];
    float* vt = v[t];
    alignas(64) float d[kTile];
    in_vectors(begin, end, [&]<typename T>(int64_t i) {
      const T gi = load<T>(g + i);
      store(mt + i, lerp(load<T>(mt + i), gi, splat<T>(w1), splat<T>(w1 - 1.0f), small1));  // m += (g-m)(1-b1)
      const T vi = lerp(load<T>(vt + i), apart(gi * gi), splat<T>(w2), splat<T>(w2 - 1.0f), small2);
      store(vt + i, vi);
      store(d + (i - begin), vi);
    });
    square_roots(d, end - begin);
    in_vectors(begin, end, [&]<typename T>(int64_t i) {
      const T pi = decays ? apart(load<T>(p + i) * splat<T>(keep)) : load<T>(p + i);  // AdamW: p *= 1 - wd*lr
      const T step = (splat<T>(minus_a) * load<T>(mt + i)) / (load<T>(d + (i - begin)) + splat<T>(e));
      store(p + i, pi + step);                                                         // p -= a*m/(sqrt(v)+eps)
    });
  });
}
