// Vector types and helpers shared by cnnlab's native kernels: GCC/Clang vector extensions as wide as the CPU's
// registers (AVX-512: 16 floats, else 8), so one source compiles to either.
#pragma once

#include <cstdint>
#include <cstring>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace cnnlab_simd {

#if defined(__AVX512F__)
constexpr int64_t kLanes = 16;
#else
constexpr int64_t kLanes = 8;
#endif
// (wider vector types than the CPU's registers compile to slow code)
typedef float Floats __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t Ints __attribute__((vector_size(kLanes * sizeof(int32_t))));
typedef uint8_t Bytes __attribute__((vector_size(kLanes)));

template <typename V, typename T>
inline V load(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Store the first `lanes` lanes of v (all of them, or fewer in the last block of channels).
template <typename V, typename T>
inline void store(T* p, const V& v, int64_t lanes = kLanes) {
  if (lanes >= kLanes) {
    std::memcpy(p, &v, sizeof v);
  } else {
    T tmp[kLanes];
    std::memcpy(tmp, &v, sizeof v);
    for (int64_t c = 0; c < lanes; c++) p[c] = tmp[c];
  }
}

// The position a pooled output gets when a fused ReLU zeroed it: no window position (0..3) matches it, so the
// backward passes give it no gradient.
constexpr int32_t kDead = 4;

// The sum of a 2x2 window's four values, each through the ReLU where `relu` (a NaN passes, as through torch's
// relu), in a fixed order: a map's mean without the map (the pooled kernels' `sums`).
template <typename V>
inline V window_total(const V y[4], bool relu) {
  V r[4];
  for (int e = 0; e < 4; e++) r[e] = relu ? (y[e] <= V{} ? V{} : y[e]) : y[e];
  return (r[0] + r[1]) + (r[2] + r[3]);
}

// Window positions, one int32 lane each, stored as bytes; and loaded back. GCC's generic conversions go lane
// by lane without AVX-512, so AVX2 gets its pack and widen instructions.
inline void store_positions(uint8_t* p, const Ints& at, int64_t lanes) {
#if !defined(__AVX512F__) && defined(__AVX2__)
  __m256i v;
  std::memcpy(&v, &at, sizeof v);
  const __m128i words = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  const __m128i bytes = _mm_packus_epi16(words, words);
  Bytes b;
  std::memcpy(&b, &bytes, sizeof b);
  store(p, b, lanes);
#else
  store(p, __builtin_convertvector(at, Bytes), lanes);
#endif
}

inline Ints widen_positions(const Bytes& won) {
#if !defined(__AVX512F__) && defined(__AVX2__)
  __m128i bytes = _mm_setzero_si128();
  std::memcpy(&bytes, &won, sizeof won);
  const __m256i v = _mm256_cvtepu8_epi32(bytes);
  Ints w;
  std::memcpy(&w, &v, sizeof w);
  return w;
#else
  return __builtin_convertvector(won, Ints);
#endif
}

}  // namespace cnnlab_simd
