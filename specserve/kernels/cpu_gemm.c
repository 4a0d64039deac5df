// Few-row matrix products for CPU decode: y[M, N] = x[M, K] @ w[N, K]^T, w in nn.Linear's layout.
//
// Why by hand: with 1-8 rows a decode step is a stream over the weights, and PyTorch's GEMM reaches
// only 5-13 GB/s on the 2-core EPYC this project targets (its memory moves ~24 GB/s with both cores).
// These loops read each weight row once, pass up to 4 input rows over it from registers, and split
// the output rows over OpenMP threads (the same libgomp PyTorch runs on).
// Built by specserve/kernels/cpu_gemm.py with gcc at first use; absent a compiler, F.linear is used.
#include <immintrin.h>
#include <stdint.h>
#include <omp.h>

#include "cpu_common.h"

// One weight row at a time: the prefetcher follows a single linear stream (4 interleaved rows drew
// 9 GB/s per core against 14 GB/s for one stream here). Two accumulators per input row hide the FMA
// latency; the row stays in L1 while groups of 4 input rows pass over it.
#ifndef PREFETCH_BYTES
#define PREFETCH_BYTES 2048  // measured best of 512-4096 at 4-8 rows; no effect at 1-2
#endif
#define UNROLL _Pragma("GCC unroll 4")

// ---- float32 ----
ALWAYS_INLINE void f32_row(const float* x, const float* wr, float* y, int N, int K, int n, int m0, const int mb) {
  __m512 a[4], b[4];
  UNROLL for (int j = 0; j < mb; j++) { a[j] = _mm512_setzero_ps(); b[j] = _mm512_setzero_ps(); }
  int k = 0;
  for (; k + 32 <= K; k += 32) {
    _mm_prefetch((const char*)(wr + k) + PREFETCH_BYTES, _MM_HINT_T0);
    _mm_prefetch((const char*)(wr + k) + PREFETCH_BYTES + 64, _MM_HINT_T0);
    __m512 w0 = _mm512_loadu_ps(wr + k), w1 = _mm512_loadu_ps(wr + k + 16);
    UNROLL for (int j = 0; j < mb; j++) {
      const float* xm = x + (int64_t)(m0 + j) * K + k;
      a[j] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xm), a[j]);
      b[j] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xm + 16), b[j]);
    }
  }
  for (; k < K; k += 16) {
    __mmask16 m = K - k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (K - k)) - 1);
    __m512 w0 = _mm512_maskz_loadu_ps(m, wr + k);
    UNROLL for (int j = 0; j < mb; j++)
      a[j] = _mm512_fmadd_ps(w0, _mm512_maskz_loadu_ps(m, x + (int64_t)(m0 + j) * K + k), a[j]);
  }
  UNROLL for (int j = 0; j < mb; j++) y[(int64_t)(m0 + j) * N + n] = _mm512_reduce_add_ps(_mm512_add_ps(a[j], b[j]));
}

// From TILE_MIN_ROWS input rows on, the product is compute-bound: a 4x4 register tile (4 weight rows
// against 4 input rows) needs 8 loads per 16 FMAs where one weight row needs 5 per 4.
#ifndef TILE_MIN_ROWS
#define TILE_MIN_ROWS 16  // measured crossover: rows below it stream faster one weight row at a time
#endif
ALWAYS_INLINE void f32_tile(const float* x, const float* w, float* y, int N, int K, int n, int m0, const int mb) {
  __m512 a[4][4];
  UNROLL for (int r = 0; r < 4; r++) UNROLL for (int j = 0; j < mb; j++) a[r][j] = _mm512_setzero_ps();
  const float* wr = w + (int64_t)n * K;
  int k = 0;
  for (; k < K; k += 16) {
    __mmask16 m = K - k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (K - k)) - 1);
    __m512 xv[4];
    UNROLL for (int j = 0; j < mb; j++) xv[j] = _mm512_maskz_loadu_ps(m, x + (int64_t)(m0 + j) * K + k);
    UNROLL for (int r = 0; r < 4; r++) {
      __m512 wv = _mm512_maskz_loadu_ps(m, wr + (int64_t)r * K + k);
      UNROLL for (int j = 0; j < mb; j++) a[r][j] = _mm512_fmadd_ps(wv, xv[j], a[r][j]);
    }
  }
  UNROLL for (int j = 0; j < mb; j++) UNROLL for (int r = 0; r < 4; r++)
    y[(int64_t)(m0 + j) * N + n + r] = _mm512_reduce_add_ps(a[r][j]);
}

static void f32_range(const float* x, const float* w, float* y, int M, int N, int K, int n0, int n1) {
  int n = n0;
  if (M >= TILE_MIN_ROWS) {
    for (; n + 4 <= n1; n += 4) {
      #define F32_TILE_CALL(m, mb) f32_tile(x, w, y, N, K, n, m, mb)
      FOR_ROW_GROUPS(M, 4, F32_TILE_CALL);
      #undef F32_TILE_CALL
    }
  }
  for (; n < n1; n++) {
    const float* wr = w + (int64_t)n * K;
    #define F32_ROW_CALL(m, mb) f32_row(x, wr, y, N, K, n, m, mb)
    FOR_ROW_GROUPS(M, 4, F32_ROW_CALL);
    #undef F32_ROW_CALL
  }
}

// ---- bfloat16: pairs of bf16 products summed into float32 lanes (AVX512-BF16 vdpbf16ps) ----
__attribute__((target("avx512bf16")))
ALWAYS_INLINE void bf16_row(const uint16_t* x, const uint16_t* wr, uint16_t* y, int N, int K, int n, int m0,
                            const int mb) {
  __m512 a[4], b[4];
  UNROLL for (int j = 0; j < mb; j++) { a[j] = _mm512_setzero_ps(); b[j] = _mm512_setzero_ps(); }
  int k = 0;
  for (; k + 64 <= K; k += 64) {
    _mm_prefetch((const char*)(wr + k) + PREFETCH_BYTES, _MM_HINT_T0);
    _mm_prefetch((const char*)(wr + k) + PREFETCH_BYTES + 64, _MM_HINT_T0);
    __m512bh w0 = (__m512bh)_mm512_loadu_si512(wr + k), w1 = (__m512bh)_mm512_loadu_si512(wr + k + 32);
    UNROLL for (int j = 0; j < mb; j++) {
      const uint16_t* xm = x + (int64_t)(m0 + j) * K + k;
      a[j] = _mm512_dpbf16_ps(a[j], w0, (__m512bh)_mm512_loadu_si512(xm));
      b[j] = _mm512_dpbf16_ps(b[j], w1, (__m512bh)_mm512_loadu_si512(xm + 32));
    }
  }
  for (; k < K; k += 32) {
    __mmask32 m = K - k >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1ull << (K - k)) - 1);
    __m512bh w0 = (__m512bh)_mm512_maskz_loadu_epi16(m, wr + k);
    UNROLL for (int j = 0; j < mb; j++)
      a[j] = _mm512_dpbf16_ps(a[j], w0, (__m512bh)_mm512_maskz_loadu_epi16(m, x + (int64_t)(m0 + j) * K + k));
  }
  UNROLL for (int j = 0; j < mb; j++)
    y[(int64_t)(m0 + j) * N + n] = to_bf16(_mm512_reduce_add_ps(_mm512_add_ps(a[j], b[j])));
}

__attribute__((target("avx512bf16")))
ALWAYS_INLINE void bf16_tile(const uint16_t* x, const uint16_t* w, uint16_t* y, int N, int K, int n, int m0,
                             const int mb) {
  __m512 a[4][4];
  UNROLL for (int r = 0; r < 4; r++) UNROLL for (int j = 0; j < mb; j++) a[r][j] = _mm512_setzero_ps();
  const uint16_t* wr = w + (int64_t)n * K;
  for (int k = 0; k < K; k += 32) {
    __mmask32 m = K - k >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1ull << (K - k)) - 1);
    __m512bh xv[4];
    UNROLL for (int j = 0; j < mb; j++) xv[j] = (__m512bh)_mm512_maskz_loadu_epi16(m, x + (int64_t)(m0 + j) * K + k);
    UNROLL for (int r = 0; r < 4; r++) {
      __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(m, wr + (int64_t)r * K + k);
      UNROLL for (int j = 0; j < mb; j++) a[r][j] = _mm512_dpbf16_ps(a[r][j], wv, xv[j]);
    }
  }
  UNROLL for (int j = 0; j < mb; j++) UNROLL for (int r = 0; r < 4; r++)
    y[(int64_t)(m0 + j) * N + n + r] = to_bf16(_mm512_reduce_add_ps(a[r][j]));
}

__attribute__((target("avx512bf16")))
static void bf16_range(const uint16_t* x, const uint16_t* w, uint16_t* y, int M, int N, int K, int n0, int n1) {
  int n = n0;
  if (M >= TILE_MIN_ROWS) {
    for (; n + 4 <= n1; n += 4) {
      #define BF16_TILE_CALL(m, mb) bf16_tile(x, w, y, N, K, n, m, mb)
      FOR_ROW_GROUPS(M, 4, BF16_TILE_CALL);
      #undef BF16_TILE_CALL
    }
  }
  for (; n < n1; n++) {
    const uint16_t* wr = w + (int64_t)n * K;
    #define BF16_ROW_CALL(m, mb) bf16_row(x, wr, y, N, K, n, m, mb)
    FOR_ROW_GROUPS(M, 4, BF16_ROW_CALL);
    #undef BF16_ROW_CALL
  }
}

// Split N into one contiguous range per thread (rows rounded to 16 so ranges start on cache lines).
#define SPLIT_N(range_fn)                                                          \
  if (threads <= 1) { range_fn(x, w, y, M, N, K, 0, N); return; }                 \
  int tiles = (N + 15) / 16;                                                         \
  _Pragma("omp parallel num_threads(threads)")                                     \
  {                                                                                \
    int t = omp_get_thread_num(), nt = omp_get_num_threads();                      \
    int n0 = (int)((int64_t)tiles * t / nt) * 16;                                   \
    int n1 = (int)((int64_t)tiles * (t + 1) / nt) * 16;                             \
    if (n1 > N) n1 = N;                                                            \
    if (n0 < n1) range_fn(x, w, y, M, N, K, n0, n1);                               \
  }

void specserve_gemm_f32(const float* x, const float* w, float* y, int M, int N, int K, int threads) {
  SPLIT_N(f32_range)
}

// Accumulates in float32 and rounds once to bfloat16, as PyTorch's bf16 GEMM does.
void specserve_gemm_bf16(const uint16_t* x, const uint16_t* w, uint16_t* y, int M, int N, int K, int threads) {
  SPLIT_N(bf16_range)
}
