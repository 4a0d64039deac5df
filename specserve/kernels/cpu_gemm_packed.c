// Matrix products on weights packed in 16-column panels, for 8-64 rows (batched decode, verification).
//
// Why: with a few rows the row-at-a-time kernel of cpu_gemm.c streams the weights at memory speed, but
// from ~16 rows the work is arithmetic, and dot products along K end in a horizontal sum per output
// that costs as much as the products themselves at K = 576. Here the weights are packed so that for one
// k, 16 consecutive output columns are one vector: each step broadcasts one input value per row and
// accumulates 16 outputs at once, with no horizontal sums (the register blocking of real GEMMs).
//
// float32 panel layout: P[nb][k][16] = W[nb * 16 + j][k] (rows past N are zero).
// bfloat16:             P[nb][kp][16][2] = W[nb * 16 + j][2 kp + e] (K padded to even with zero).
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#include <omp.h>

#include "cpu_common.h"

#define MB 12  // the most input rows per register tile: 12 rows x 2 panels = 24 of the 32 vector registers

// Rows run in tiles of 8, except that 9-12 rows, or a remainder of 1-4 rows after full tiles together with
// the last full tile, run as one tile. Why: a tile of 1-4 rows after a full one reads the panels again
// and has too few accumulators to hide the FMA latency; verifying 9 rows cost ~20% more than 8 (one
// request, a chain of 8 drafts: 23.5 against 19.6 ms per step). Every tile starts at a multiple of 8.
ALWAYS_INLINE int packed_tiles(int M) {
  if (M <= MB) return 1;
  const int rest = M % 8;
  return M / 8 + (rest > 4 ? 1 : 0);
}
#define TILE_SWITCH(m0, rows, CALL)                                                             \
  switch (rows) {                                                                               \
    case 12: CALL(m0, 12); break;                                                               \
    case 11: CALL(m0, 11); break;                                                               \
    case 10: CALL(m0, 10); break;                                                               \
    case 9: CALL(m0, 9); break;                                                                 \
    case 8: CALL(m0, 8); break;                                                                 \
    case 7: CALL(m0, 7); break;                                                                 \
    case 6: CALL(m0, 6); break;                                                                 \
    case 5: CALL(m0, 5); break;                                                                 \
    case 4: CALL(m0, 4); break;                                                                 \
    case 3: CALL(m0, 3); break;                                                                 \
    case 2: CALL(m0, 2); break;                                                                 \
    case 1: CALL(m0, 1); break;                                                                 \
  }
#define FOR_TILES(M, CALL)                                                                      \
  do {                                                                                          \
    const int tiles_ = packed_tiles(M);                                                         \
    for (int t_ = 0; t_ < tiles_ - 1; t_++) CALL(8 * t_, 8);                                    \
    TILE_SWITCH(8 * (tiles_ - 1), (M) - 8 * (tiles_ - 1), CALL);                                \
  } while (0)

void specserve_pack_f32(const float* w, float* p, int N, int K) {
  int nbs = (N + 15) / 16;
  for (int nb = 0; nb < nbs; nb++)
    for (int k = 0; k < K; k++)
      for (int j = 0; j < 16; j++) {
        int n = nb * 16 + j;
        p[((int64_t)nb * K + k) * 16 + j] = n < N ? w[(int64_t)n * K + k] : 0.0f;
      }
}

void specserve_pack_bf16(const uint16_t* w, uint16_t* p, int N, int K) {
  int nbs = (N + 15) / 16, kps = (K + 1) / 2;
  for (int nb = 0; nb < nbs; nb++)
    for (int kp = 0; kp < kps; kp++)
      for (int j = 0; j < 16; j++)
        for (int e = 0; e < 2; e++) {
          int n = nb * 16 + j, k = 2 * kp + e;
          p[(((int64_t)nb * kps + kp) * 16 + j) * 2 + e] = (n < N && k < K) ? w[(int64_t)n * K + k] : 0;
        }
}

// While a thread works on one pair of panels, it prefetches its next pair into L2: the weights come from
// memory once per call, and without this the first row group of each pair waits on them (measured at
// 32 rows, bfloat16: about half of the arithmetic peak). Each row group fetches an equal share, two
// cache lines per k step.
#define PREFETCH_TWO_LINES(pf, i)                              \
  do {                                                         \
    _mm_prefetch((pf) + 128 * (int64_t)(i), _MM_HINT_T1);      \
    _mm_prefetch((pf) + 128 * (int64_t)(i) + 64, _MM_HINT_T1); \
  } while (0)
#define NEXT_PAIR_PREFETCH(next, bytes)                                                    \
  const char* pf = (next);                                                              \
  const int64_t groups = packed_tiles(M);                                                \
  const int64_t share = nb + 2 < nb1 ? ((int64_t)(bytes) / groups + 127) / 128 * 128 : 0; \
  const int pf_iters = (int)(share / 128)

ALWAYS_INLINE __mmask16 col_mask(int N, int n0) {
  int left = N - n0;
  return left >= 16 ? (__mmask16)0xffff : left <= 0 ? 0 : (__mmask16)((1u << left) - 1);
}

// ---- float32 ----
ALWAYS_INLINE void f32_panels(const float* x, const float* p, float* y, int M, int N, int K, int nb, int two,
                              const char* pf, int pf_iters, int m0, const int mb) {
  __m512 a[MB][2];
  UNROLL_ALL for (int j = 0; j < mb; j++) { a[j][0] = _mm512_setzero_ps(); a[j][1] = _mm512_setzero_ps(); }
  const float* p0 = p + (int64_t)nb * K * 16;
  const float* p1 = p0 + (int64_t)K * 16;
  for (int k = 0; k < K; k++) {
    if (k < pf_iters) PREFETCH_TWO_LINES(pf, k);
    __m512 w0 = _mm512_loadu_ps(p0 + (int64_t)k * 16);
    __m512 w1 = two ? _mm512_loadu_ps(p1 + (int64_t)k * 16) : w0;
    UNROLL_ALL for (int j = 0; j < mb; j++) {
      __m512 xb = _mm512_set1_ps(x[(int64_t)(m0 + j) * K + k]);
      a[j][0] = _mm512_fmadd_ps(w0, xb, a[j][0]);
      a[j][1] = _mm512_fmadd_ps(w1, xb, a[j][1]);
    }
  }
  __mmask16 c0 = col_mask(N, nb * 16), c1 = two ? col_mask(N, nb * 16 + 16) : 0;
  UNROLL_ALL for (int j = 0; j < mb; j++) {
    float* yr = y + (int64_t)(m0 + j) * N + nb * 16;
    _mm512_mask_storeu_ps(yr, c0, a[j][0]);
    if (c1) _mm512_mask_storeu_ps(yr + 16, c1, a[j][1]);
  }
}

static void f32_range(const float* x, const float* p, float* y, int M, int N, int K, int nb0, int nb1) {
  for (int nb = nb0; nb < nb1; nb += 2) {
    int two = nb + 1 < nb1;
    NEXT_PAIR_PREFETCH((const char*)(p + (int64_t)(nb + 2) * K * 16), (size_t)2 * K * 16 * 4);
    #define F32_PANELS_CALL(m, mb) f32_panels(x, p, y, M, N, K, nb, two, pf + (m) / 8 * share, pf_iters, m, mb)
    FOR_TILES(M, F32_PANELS_CALL);
    #undef F32_PANELS_CALL
  }
}

// ---- bfloat16 ----
__attribute__((target("avx512bf16")))
ALWAYS_INLINE void bf16_panels(const uint16_t* x, const uint16_t* p, uint16_t* y, int M, int N, int K, int nb,
                               int two, const char* pf, int pf_iters, int m0, const int mb) {
  const int kps = (K + 1) / 2;
  __m512 a[MB][2];
  UNROLL_ALL for (int j = 0; j < mb; j++) { a[j][0] = _mm512_setzero_ps(); a[j][1] = _mm512_setzero_ps(); }
  const uint16_t* p0 = p + (int64_t)nb * kps * 32;
  const uint16_t* p1 = p0 + (int64_t)kps * 32;
  const int full = K / 2;  // pairs with both k in range; an odd K's last value is paired with zero
  for (int kp = 0; kp < kps; kp++) {
    if (kp < pf_iters) PREFETCH_TWO_LINES(pf, kp);
    __m512bh w0 = (__m512bh)_mm512_loadu_si512(p0 + (int64_t)kp * 32);
    __m512bh w1 = two ? (__m512bh)_mm512_loadu_si512(p1 + (int64_t)kp * 32) : w0;
    UNROLL_ALL for (int j = 0; j < mb; j++) {
      const uint16_t* xr = x + (int64_t)(m0 + j) * K + 2 * kp;
      int32_t pair;
      if (kp < full) memcpy(&pair, xr, 4);
      else pair = xr[0];
      __m512bh xb = (__m512bh)_mm512_set1_epi32(pair);
      a[j][0] = _mm512_dpbf16_ps(a[j][0], w0, xb);
      a[j][1] = _mm512_dpbf16_ps(a[j][1], w1, xb);
    }
  }
  __mmask16 c0 = col_mask(N, nb * 16), c1 = two ? col_mask(N, nb * 16 + 16) : 0;
  UNROLL_ALL for (int j = 0; j < mb; j++) {
    uint16_t* yr = y + (int64_t)(m0 + j) * N + nb * 16;
    uint16_t tmp[32];
    store16_bf16(tmp, a[j][0]);
    store16_bf16(tmp + 16, a[j][1]);
    for (int c = 0; c < 16; c++) if (c0 >> c & 1) yr[c] = tmp[c];
    for (int c = 0; c < 16; c++) if (c1 >> c & 1) yr[16 + c] = tmp[16 + c];
  }
}

__attribute__((target("avx512bf16")))
static void bf16_range(const uint16_t* x, const uint16_t* p, uint16_t* y, int M, int N, int K, int nb0, int nb1) {
  for (int nb = nb0; nb < nb1; nb += 2) {
    int two = nb + 1 < nb1;
    NEXT_PAIR_PREFETCH((const char*)(p + (int64_t)(nb + 2) * ((K + 1) / 2) * 32), (size_t)2 * ((K + 1) / 2) * 64);
    #define BF16_PANELS_CALL(m, mb) bf16_panels(x, p, y, M, N, K, nb, two, pf + (m) / 8 * share, pf_iters, m, mb)
    FOR_TILES(M, BF16_PANELS_CALL);
    #undef BF16_PANELS_CALL
  }
}

// Panels are split over threads in pairs (each thread a contiguous range).
#define SPLIT_PANELS(range_fn)                                                     \
  int nbs = (N + 15) / 16, pairs = (nbs + 1) / 2;                                  \
  if (threads <= 1) { range_fn(x, p, y, M, N, K, 0, nbs); return; }               \
  _Pragma("omp parallel num_threads(threads)")                                     \
  {                                                                                \
    int t = omp_get_thread_num(), nt = omp_get_num_threads();                      \
    int b0 = (int)((int64_t)pairs * t / nt) * 2, b1 = (int)((int64_t)pairs * (t + 1) / nt) * 2; \
    if (b1 > nbs) b1 = nbs;                                                        \
    if (b0 < b1) range_fn(x, p, y, M, N, K, b0, b1);                               \
  }

void specserve_gemm_packed_f32(const float* x, const float* p, float* y, int M, int N, int K, int threads) {
  SPLIT_PANELS(f32_range)
}

void specserve_gemm_packed_bf16(const uint16_t* x, const uint16_t* p, uint16_t* y, int M, int N, int K,
                                int threads) {
  SPLIT_PANELS(bf16_range)
}
