// Paged attention for short queries (decode tokens, speculative candidates) on CPU.
//
// Reads K and V in place through each request's block table: no gathered copy of the context, one
// call per layer for the whole batch. Online softmax over blocks of keys (exp vectorised over the
// keys of a block). Work is split over (request, KV head) pairs with OpenMP. The query heads that share
// a KV head are processed together, so each key and value row is loaded once per KV head.
//
// Layout: q/out [T, H, D]; k_cache/v_cache [num_blocks, block_size, Hkv, D]; block_tables [n, max_blocks].
// Masking: the new tokens of a request are its last q_len context positions; a new token sees every
// cached token and, among the new ones, itself and earlier ones, or, when the request has a custom
// mask (uint8 [q_len, q_len] at masks + mask_off[r], mask_off -1 = none), exactly what the mask allows.
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <omp.h>

#include "cpu_common.h"

#define MAX_ROWS 32   // query vectors (new tokens x heads of a group) handled per pass over the keys
#define MAX_DIM 256
#define KEYS 16       // keys per softmax block: one zmm of scores

// Load D (multiple of 16) values of either dtype as float32 into dst.
ALWAYS_INLINE void load_row(float* dst, const void* src, int D, int is_bf16) {
  if (is_bf16) {
    const uint16_t* s = (const uint16_t*)src;
    for (int d = 0; d < D; d += 16) {
      _mm512_storeu_ps(dst + d, load16_bf16(s + d));
    }
  } else {
    memcpy(dst, src, sizeof(float) * D);
  }
}

// out[i] = sum of the 16 lanes of v[i], for 16 vectors at once: pairwise unpacks and 128-bit lane
// shuffles, about 45 instructions where 16 separate horizontal sums take ~130.
ALWAYS_INLINE __m512 reduce16(const __m512 v[KEYS]) {
  __m512 w[8], x[4];
  for (int i = 0; i < 8; i++)  // per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3]
    w[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  for (int j = 0; j < 4; j++) {  // per 128-bit lane: the lane sums of v[4j .. 4j + 3]
    __m512d a = _mm512_castps_pd(w[2 * j]), b = _mm512_castps_pd(w[2 * j + 1]);
    x[j] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  __m512 s01 = _mm512_add_ps(_mm512_shuffle_f32x4(x[0], x[1], _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(x[0], x[1], _MM_SHUFFLE(3, 1, 3, 1)));
  __m512 s23 = _mm512_add_ps(_mm512_shuffle_f32x4(x[2], x[3], _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(x[2], x[3], _MM_SHUFFLE(3, 1, 3, 1)));
  return _mm512_add_ps(_mm512_shuffle_f32x4(s01, s23, _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(s01, s23, _MM_SHUFFLE(3, 1, 3, 1)));
}

static void attend_group(const void* q, const void* kc, const void* vc, void* out, int is_bf16,
                         int q0, int qn, int q_len, int seq_len, const int32_t* table, const uint8_t* mask,
                         int kvh, int H, int Hkv, int D, int bs, float scale) {
  const int G = H / Hkv, rows = qn * G, cached = seq_len - q_len;
  const size_t esz = is_bf16 ? 2 : 4;
  float qv[MAX_ROWS][MAX_DIM] __attribute__((aligned(64)));
  float acc[MAX_ROWS][MAX_DIM] __attribute__((aligned(64)));
  float row_max[MAX_ROWS], row_sum[MAX_ROWS];
  float krow[KEYS][MAX_DIM] __attribute__((aligned(64)));
  float vblk[KEYS][MAX_DIM] __attribute__((aligned(64)));
  float s[MAX_ROWS][KEYS] __attribute__((aligned(64)));
  int limit[MAX_ROWS];  // causal rows: keys [0, limit) visible
  for (int r = 0; r < rows; r++) {
    int i = q0 + r / G, h = kvh * G + r % G;
    load_row(qv[r], (const char*)q + ((size_t)i * H + h) * D * esz, D, is_bf16);
    for (int d = 0; d < D; d++) qv[r][d] *= scale;
    memset(acc[r], 0, sizeof(float) * D);
    row_max[r] = -INFINITY;
    row_sum[r] = 0.0f;
    limit[r] = cached + i + 1;  // i counts the request's new tokens from 0
  }
  for (int j0 = 0; j0 < seq_len; j0 += KEYS) {
    const int nk = seq_len - j0 < KEYS ? seq_len - j0 : KEYS;
    for (int j = 0; j < nk; j++) {
      int pos = j0 + j;
      size_t slot = (size_t)table[pos / bs] * bs + pos % bs;
      load_row(krow[j], (const char*)kc + (slot * Hkv + kvh) * D * esz, D, is_bf16);
      load_row(vblk[j], (const char*)vc + (slot * Hkv + kvh) * D * esz, D, is_bf16);
    }
    for (int r = 0; r < rows; r++) {
      const int i = q0 + r / G;
      __mmask16 visible = 0;
      __m512 dots[KEYS];
      for (int j = 0; j < KEYS; j++) {
        int pos = j0 + j;
        dots[j] = _mm512_setzero_ps();
        if (!(j < nk && (pos < cached || (mask ? mask[(size_t)i * q_len + (pos - cached)] != 0 : pos < limit[r]))))
          continue;
        visible |= (__mmask16)(1u << j);
        for (int d = 0; d < D; d += 16)
          dots[j] = _mm512_fmadd_ps(_mm512_load_ps(qv[r] + d), _mm512_load_ps(krow[j] + d), dots[j]);
      }
      __m512 sv = _mm512_mask_blend_ps(visible, _mm512_set1_ps(-INFINITY), reduce16(dots));
      float block_max = _mm512_reduce_max_ps(sv);
      if (block_max == -INFINITY) { _mm512_store_ps(s[r], _mm512_setzero_ps()); continue; }
      float new_max = block_max > row_max[r] ? block_max : row_max[r];
      float correction = row_max[r] == -INFINITY ? 0.0f : expf(row_max[r] - new_max);
      __m512 p = exp512(_mm512_sub_ps(sv, _mm512_set1_ps(new_max)));
      p = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(sv, _mm512_set1_ps(-INFINITY), _CMP_NEQ_OQ), p);
      _mm512_store_ps(s[r], p);
      row_sum[r] = row_sum[r] * correction + _mm512_reduce_add_ps(p);
      row_max[r] = new_max;
      if (correction != 1.0f) {
        __m512 c = _mm512_set1_ps(correction);
        for (int d = 0; d < D; d += 16) _mm512_store_ps(acc[r] + d, _mm512_mul_ps(_mm512_load_ps(acc[r] + d), c));
      }
    }
    // P.V with each row's accumulator chunk held in a register across the block's keys.
    for (int r = 0; r < rows; r++) {
      for (int d = 0; d < D; d += 16) {
        __m512 a = _mm512_load_ps(acc[r] + d);
        for (int j = 0; j < nk; j++)
          a = _mm512_fmadd_ps(_mm512_set1_ps(s[r][j]), _mm512_load_ps(vblk[j] + d), a);
        _mm512_store_ps(acc[r] + d, a);
      }
    }
  }
  for (int r = 0; r < rows; r++) {
    int i = q0 + r / G, h = kvh * G + r % G;
    float inv = 1.0f / row_sum[r];
    size_t base = ((size_t)i * H + h) * D;
    if (is_bf16) {
      uint16_t* o = (uint16_t*)out + base;
      for (int d = 0; d < D; d++) o[d] = to_bf16(acc[r][d] * inv);
    } else {
      float* o = (float*)out + base;
      for (int d = 0; d < D; d++) o[d] = acc[r][d] * inv;
    }
  }
}

// Returns 0, or -1 when a shape is outside what this kernel handles (the caller falls back).
int specserve_paged_attention(const void* q, const void* k_cache, const void* v_cache, void* out, int is_bf16,
                              const int32_t* q_start, const int32_t* q_len, const int32_t* seq_len,
                              const int32_t* block_tables, int max_blocks, const int64_t* mask_off,
                              const uint8_t* masks, int n, int H, int Hkv, int D, int bs, float scale,
                              int threads) {
  if (D % 16 != 0 || D > MAX_DIM || H % Hkv != 0 || H / Hkv > MAX_ROWS) return -1;
  const int G = H / Hkv, per_pass = MAX_ROWS / G;
  const int items = n * Hkv;
  #pragma omp parallel for schedule(dynamic, 1) num_threads(threads > 1 && items > 1 ? threads : 1)
  for (int item = 0; item < items; item++) {
    int r = item / Hkv, kvh = item % Hkv;
    const int32_t* table = block_tables + (size_t)r * max_blocks;
    const uint8_t* mask = mask_off[r] >= 0 ? masks + mask_off[r] : 0;
    const char* qr = (const char*)q + (size_t)q_start[r] * H * D * (is_bf16 ? 2 : 4);
    char* outr = (char*)out + (size_t)q_start[r] * H * D * (is_bf16 ? 2 : 4);
    for (int q0 = 0; q0 < q_len[r]; q0 += per_pass) {
      int qn = q_len[r] - q0 < per_pass ? q_len[r] - q0 : per_pass;
      attend_group(qr, k_cache, v_cache, outr, is_bf16, q0, qn, q_len[r], seq_len[r], table, mask,
                   kvh, H, Hkv, D, bs, scale);
    }
  }
  return 0;
}
