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

static void attend_group(const void* q, const void* kc, const void* vc, void* out, int is_bf16,
                         int q0, int qn, int q_len, int seq_len, const int32_t* table, const uint8_t* mask,
                         int kvh, int H, int Hkv, int D, int bs, float scale) {
  const int G = H / Hkv, rows = qn * G, cached = seq_len - q_len;
  const size_t esz = is_bf16 ? 2 : 4;
  float qv[MAX_ROWS][MAX_DIM] __attribute__((aligned(64)));
  float acc[MAX_ROWS][MAX_DIM] __attribute__((aligned(64)));
  float row_max[MAX_ROWS], row_sum[MAX_ROWS];
  float krow[KEYS][MAX_DIM] __attribute__((aligned(64)));
  float vrow[MAX_DIM] __attribute__((aligned(64)));
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
    }
    for (int r = 0; r < rows; r++) {
      const int i = q0 + r / G;
      for (int j = 0; j < KEYS; j++) {
        int pos = j0 + j;
        int visible = j < nk && (pos < cached || (mask ? mask[(size_t)i * q_len + (pos - cached)] != 0
                                                        : pos < limit[r]));
        if (!visible) { s[r][j] = -INFINITY; continue; }
        __m512 a = _mm512_setzero_ps();
        for (int d = 0; d < D; d += 16)
          a = _mm512_fmadd_ps(_mm512_load_ps(qv[r] + d), _mm512_load_ps(krow[j] + d), a);
        s[r][j] = _mm512_reduce_add_ps(a);
      }
      __m512 sv = _mm512_load_ps(s[r]);
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
    for (int j = 0; j < nk; j++) {
      int pos = j0 + j;
      size_t slot = (size_t)table[pos / bs] * bs + pos % bs;
      load_row(vrow, (const char*)vc + (slot * Hkv + kvh) * D * esz, D, is_bf16);
      for (int r = 0; r < rows; r++) {
        float pj = s[r][j];
        if (pj == 0.0f) continue;
        __m512 pv = _mm512_set1_ps(pj);
        for (int d = 0; d < D; d += 16)
          _mm512_store_ps(acc[r] + d, _mm512_fmadd_ps(pv, _mm512_load_ps(vrow + d), _mm512_load_ps(acc[r] + d)));
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
