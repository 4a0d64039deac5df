// Helpers shared by specserve's CPU kernels: bfloat16 conversion and a vectorised exp.
#pragma once
#include <immintrin.h>
#include <stdint.h>

#define ALWAYS_INLINE static inline __attribute__((always_inline))

// float32 -> bfloat16, round to nearest even (NaN kept quiet), as PyTorch rounds.
ALWAYS_INLINE uint16_t to_bf16(float f) {
  union { float f; uint32_t u; } v = {f};
  if ((v.u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((v.u >> 16) | 0x40);
  return (uint16_t)((v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16);
}

ALWAYS_INLINE float from_bf16(uint16_t b) {
  union { uint32_t u; float f; } v = {(uint32_t)b << 16};
  return v.f;
}

// 16 bfloat16 values -> float32 lanes, and back (round to nearest even; inputs here are finite).
ALWAYS_INLINE __m512 load16_bf16(const uint16_t* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}
ALWAYS_INLINE __m512 round_bf16(__m512 v) {  // the float32 value of v rounded to bfloat16
  __m512i u = _mm512_castps_si512(v);
  __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  u = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
  return _mm512_castsi512_ps(_mm512_and_si512(u, _mm512_set1_epi32((int)0xffff0000u)));
}
ALWAYS_INLINE void store16_bf16(uint16_t* p, __m512 v) {
  __m512i u = _mm512_srli_epi32(_mm512_castps_si512(round_bf16(v)), 16);
  _mm256_storeu_si256((__m256i*)p, _mm512_cvtepi32_epi16(u));
}

// 16 values of either dtype at element i of p, as float32 lanes, and back.
ALWAYS_INLINE __m512 load16(const void* p, int64_t i, int bf16) {
  return bf16 ? load16_bf16((const uint16_t*)p + i) : _mm512_loadu_ps((const float*)p + i);
}
ALWAYS_INLINE void store16(void* p, int64_t i, __m512 v, int bf16) {
  if (bf16) store16_bf16((uint16_t*)p + i, v);
  else _mm512_storeu_ps((float*)p + i, v);
}

// exp(x): 2^(x log2 e) = 2^n * 2^f, f in [-0.5, 0.5], 2^f by a degree-6 polynomial (relative error
// ~2e-7, below float32 rounding of the sums it feeds). Clamped to [-87, 88].
ALWAYS_INLINE __m512 exp512(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
  __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
  __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 f = _mm512_mul_ps(_mm512_sub_ps(t, n), _mm512_set1_ps(0.693147180559945309f));
  __m512 p = _mm512_set1_ps(1.0f / 720);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}
#define UNROLL_ALL _Pragma("GCC unroll 16")

// Runs CALL(m0, mb) over rows 0..M-1 in groups of GROUP (at most 8), with mb a literal in every call so
// that each inlined tile is specialised (register arrays sized by mb, loops unrolled). Remainders of
// GROUP or more cannot occur; their cases fold away at compile time.
#define FOR_ROW_GROUPS(M, GROUP, CALL)                                \
  do {                                                                \
    int m_ = 0;                                                       \
    for (; m_ + (GROUP) <= (M); m_ += (GROUP)) CALL(m_, GROUP);       \
    switch ((M) - m_) {                                               \
      case 7: if (7 < (GROUP)) CALL(m_, 7); break;                    \
      case 6: if (6 < (GROUP)) CALL(m_, 6); break;                    \
      case 5: if (5 < (GROUP)) CALL(m_, 5); break;                    \
      case 4: if (4 < (GROUP)) CALL(m_, 4); break;                    \
      case 3: if (3 < (GROUP)) CALL(m_, 3); break;                    \
      case 2: if (2 < (GROUP)) CALL(m_, 2); break;                    \
      case 1: if (1 < (GROUP)) CALL(m_, 1); break;                    \
    }                                                                 \
  } while (0)
