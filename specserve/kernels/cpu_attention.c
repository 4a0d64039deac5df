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
#define TILE 4        // P.V register tile: up to 4 rows x 4 chunks of 16 dims = 16 accumulators

// Chunk c (16 values) of a K or V row, read straight from the cache, as float32.
ALWAYS_INLINE __m512 load_chunk(const char* row, int c, int is_bf16) {
  return is_bf16 ? load16_bf16((const uint16_t*)row + 16 * c) : _mm512_loadu_ps((const float*)row + 16 * c);
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

// The 16 scores of one (pre-scaled) query row against a block's keys. All 16 key pointers are valid
// (a short block repeats its first key); the caller masks the lanes past the block's end.
ALWAYS_INLINE __m512 block_scores(const float* qrow, const char* const* krows, int nc, int is_bf16) {
  __m512 dots[KEYS];
  UNROLL_ALL for (int j = 0; j < KEYS; j++) dots[j] = _mm512_setzero_ps();
  for (int c = 0; c < nc; c++) {
    __m512 qc = _mm512_load_ps(qrow + 16 * c);
    UNROLL_ALL for (int j = 0; j < KEYS; j++) dots[j] = _mm512_fmadd_ps(qc, load_chunk(krows[j], c, is_bf16), dots[j]);
  }
  return reduce16(dots);
}

// acc[r0 + r][chunks c0 ..] += sum_j p[r0 + r][j] * V[j][chunks c0 ..], for nr rows x ncc chunks (literals
// at every call, so the accumulators stay in registers across the block's keys).
ALWAYS_INLINE void pv_tile(float (*acc)[MAX_DIM], const float (*p)[KEYS], const char* const* vrows, int nk,
                           int r0, int c0, const int nr, const int ncc, int is_bf16) {
  __m512 a[TILE][TILE];
  UNROLL_ALL for (int r = 0; r < nr; r++)
    UNROLL_ALL for (int c = 0; c < ncc; c++) a[r][c] = _mm512_load_ps(acc[r0 + r] + 16 * (c0 + c));
  for (int j = 0; j < nk; j++) {
    __m512 v[TILE];
    UNROLL_ALL for (int c = 0; c < ncc; c++) v[c] = load_chunk(vrows[j], c0 + c, is_bf16);
    UNROLL_ALL for (int r = 0; r < nr; r++) {
      __m512 pj = _mm512_set1_ps(p[r0 + r][j]);
      UNROLL_ALL for (int c = 0; c < ncc; c++) a[r][c] = _mm512_fmadd_ps(pj, v[c], a[r][c]);
    }
  }
  UNROLL_ALL for (int r = 0; r < nr; r++)
    UNROLL_ALL for (int c = 0; c < ncc; c++) _mm512_store_ps(acc[r0 + r] + 16 * (c0 + c), a[r][c]);
}

#define PV_CHUNKS(r0, nr, vr)                                                           \
  do {                                                                                  \
    int c_ = 0;                                                                         \
    for (; c_ + TILE <= nc; c_ += TILE) pv_tile(acc, s, vr, nk, r0, c_, nr, TILE, is_bf16); \
    switch (nc - c_) {                                                                  \
      case 3: pv_tile(acc, s, vr, nk, r0, c_, nr, 3, is_bf16); break;                   \
      case 2: pv_tile(acc, s, vr, nk, r0, c_, nr, 2, is_bf16); break;                   \
      case 1: pv_tile(acc, s, vr, nk, r0, c_, nr, 1, is_bf16); break;                   \
    }                                                                                   \
  } while (0)

// Rows are (KV head, new token, query head of its group), KV-head-major, so each KV head's rows are
// contiguous for the P.V tiles: nkv heads from kvh0, qn tokens from q0, G = H / Hkv heads each.
ALWAYS_INLINE void attend_group_impl(const void* q, const void* kc, const void* vc, void* out, const int is_bf16,
                                     int q0, int qn, int q_len, int seq_len, const int32_t* table,
                                     const uint8_t* mask, int kvh0, int nkv, int H, int Hkv, int D, int bs,
                                     float scale) {
  const int G = H / Hkv, per_head = qn * G, rows = nkv * per_head, cached = seq_len - q_len, nc = D / 16;
  const size_t esz = is_bf16 ? 2 : 4, head_bytes = (size_t)D * esz, slot_bytes = (size_t)Hkv * head_bytes;
  float qv[MAX_ROWS][MAX_DIM] __attribute__((aligned(64)));
  float acc[MAX_ROWS][MAX_DIM] __attribute__((aligned(64)));
  float s[MAX_ROWS][KEYS] __attribute__((aligned(64)));
  float row_max[MAX_ROWS], row_sum[MAX_ROWS];
  const char* krows[KEYS];
  const char* vrows[KEYS];
  for (int r = 0; r < rows; r++) {
    int i = q0 + (r % per_head) / G, h = (kvh0 + r / per_head) * G + r % G;
    const char* src = (const char*)q + ((size_t)i * H + h) * head_bytes;
    for (int c = 0; c < nc; c++)
      _mm512_store_ps(qv[r] + 16 * c, _mm512_mul_ps(load_chunk(src, c, is_bf16), _mm512_set1_ps(scale)));
    memset(acc[r], 0, sizeof(float) * D);
    row_max[r] = -INFINITY;
    row_sum[r] = 0.0f;
  }
  const char* kbase = (const char*)kc + kvh0 * head_bytes;
  const char* vbase = (const char*)vc + kvh0 * head_bytes;
  for (int j0 = 0; j0 < seq_len; j0 += KEYS) {
    const int nk = seq_len - j0 < KEYS ? seq_len - j0 : KEYS;
    // Slot of each key: block-table entry and offset stepped along (no division per key).
    int blk = j0 / bs, off = j0 % bs;
    for (int j = 0; j < KEYS; j++) {
      size_t slot = (size_t)table[blk] * bs + off;
      krows[j] = j < nk ? kbase + slot * slot_bytes : krows[0];
      vrows[j] = j < nk ? vbase + slot * slot_bytes : vrows[0];
      if (++off == bs) { off = 0; blk++; }
    }
    // The next 16 keys' rows: where they start another cache block the address jumps (block table),
    // which the hardware prefetcher cannot foresee, and a request's blocks are only ~16 rows long.
    if (j0 + KEYS < seq_len) {
      int nblk = blk, noff = off, left = seq_len - j0 - KEYS < KEYS ? seq_len - j0 - KEYS : KEYS;
      for (int j = 0; j < left; j++) {
        const size_t slot = (size_t)table[nblk] * bs + noff;
        for (size_t b = 0; b < nkv * head_bytes; b += 64) {
          _mm_prefetch(kbase + slot * slot_bytes + b, _MM_HINT_T0);
          _mm_prefetch(vbase + slot * slot_bytes + b, _MM_HINT_T0);
        }
        if (++noff == bs) { noff = 0; nblk++; }
      }
    }
    const __mmask16 in_block = nk == KEYS ? (__mmask16)0xffff : (__mmask16)((1u << nk) - 1);
    for (int hh = 0; hh < nkv; hh++) {
      const char* const* kr = krows;
      const char* kh[KEYS];
      if (hh) {
        for (int j = 0; j < KEYS; j++) kh[j] = krows[j] + hh * head_bytes;
        kr = kh;
      }
      for (int r = hh * per_head; r < (hh + 1) * per_head; r++) {
        __mmask16 visible = in_block;
        if (j0 + nk > cached) {  // the block reaches the new tokens: causal or custom mask
          const int i = q0 + (r % per_head) / G;
          for (int j = 0; j < nk; j++) {
            int pos = j0 + j;
            int ok = pos < cached || (mask ? mask[(size_t)i * q_len + (pos - cached)] != 0 : pos <= cached + i);
            if (!ok) visible &= (__mmask16)~(1u << j);
          }
        }
        if (!visible) { _mm512_store_ps(s[r], _mm512_setzero_ps()); continue; }
        __m512 sv = _mm512_mask_blend_ps(visible, _mm512_set1_ps(-INFINITY), block_scores(qv[r], kr, nc, is_bf16));
        float block_max = _mm512_reduce_max_ps(sv);
        float new_max = block_max > row_max[r] ? block_max : row_max[r];
        __m512 p = _mm512_maskz_mov_ps(visible, exp512(_mm512_sub_ps(sv, _mm512_set1_ps(new_max))));
        _mm512_store_ps(s[r], p);
        if (new_max != row_max[r]) {
          float correction = row_max[r] == -INFINITY ? 0.0f : expf(row_max[r] - new_max);
          row_sum[r] *= correction;
          __m512 cv = _mm512_set1_ps(correction);
          for (int c = 0; c < nc; c++) _mm512_store_ps(acc[r] + 16 * c, _mm512_mul_ps(_mm512_load_ps(acc[r] + 16 * c), cv));
          row_max[r] = new_max;
        }
        row_sum[r] += _mm512_reduce_add_ps(p);
      }
    }
    for (int hh = 0; hh < nkv; hh++) {
      const char* vh[KEYS];
      for (int j = 0; j < KEYS; j++) vh[j] = vrows[j] + hh * head_bytes;
      const char* const* vr = vh;
      const int base = hh * per_head;
#define PV_HEAD_ROWS(r0, nr) PV_CHUNKS(base + (r0), nr, vr)
      FOR_ROW_GROUPS(per_head, TILE, PV_HEAD_ROWS);
#undef PV_HEAD_ROWS
    }
  }
  for (int r = 0; r < rows; r++) {
    int i = q0 + (r % per_head) / G, h = (kvh0 + r / per_head) * G + r % G;
    __m512 inv = _mm512_set1_ps(1.0f / row_sum[r]);
    size_t base = ((size_t)i * H + h) * D;
    for (int c = 0; c < nc; c++) {
      __m512 o = _mm512_mul_ps(_mm512_load_ps(acc[r] + 16 * c), inv);
      if (is_bf16) store16_bf16((uint16_t*)out + base + 16 * c, o);
      else _mm512_storeu_ps((float*)out + base + 16 * c, o);
    }
  }
}

// One instance per dtype, so each inlines its loads.
static void attend_group_f32(const void* q, const void* kc, const void* vc, void* out, int q0, int qn, int q_len,
                             int seq_len, const int32_t* table, const uint8_t* mask, int kvh0, int nkv, int H,
                             int Hkv, int D, int bs, float scale) {
  attend_group_impl(q, kc, vc, out, 0, q0, qn, q_len, seq_len, table, mask, kvh0, nkv, H, Hkv, D, bs, scale);
}
static void attend_group_bf16(const void* q, const void* kc, const void* vc, void* out, int q0, int qn, int q_len,
                              int seq_len, const int32_t* table, const uint8_t* mask, int kvh0, int nkv, int H,
                              int Hkv, int D, int bs, float scale) {
  attend_group_impl(q, kc, vc, out, 1, q0, qn, q_len, seq_len, table, mask, kvh0, nkv, H, Hkv, D, bs, scale);
}

// Returns 0, or -1 when a shape is outside what this kernel handles (the caller falls back).
int specserve_paged_attention(const void* q, const void* k_cache, const void* v_cache, void* out, int is_bf16,
                              const int32_t* q_start, const int32_t* q_len, const int32_t* seq_len,
                              const int32_t* block_tables, int max_blocks, const int64_t* mask_off,
                              const uint8_t* masks, int n, int H, int Hkv, int D, int bs, float scale,
                              int threads) {
  if (D % 16 != 0 || D > MAX_DIM || H % Hkv != 0 || H / Hkv > MAX_ROWS) return -1;
  const int G = H / Hkv;
  // With enough requests to share out, one item takes all KV heads of a request, so each cached slot
  // (all heads, contiguous) is read in one stream; with few, items are (request, KV head) pairs.
  int heads_per_item = 1;
  if (n >= 2 * threads && H <= MAX_ROWS) heads_per_item = Hkv;
  const int splits = Hkv / heads_per_item, items = n * splits;
  #pragma omp parallel for schedule(dynamic, 1) num_threads(threads > 1 && items > 1 ? threads : 1)
  for (int item = 0; item < items; item++) {
    int r = item / splits, kvh0 = (item % splits) * heads_per_item;
    const int32_t* table = block_tables + (size_t)r * max_blocks;
    const uint8_t* mask = mask_off[r] >= 0 ? masks + mask_off[r] : 0;
    const char* qr = (const char*)q + (size_t)q_start[r] * H * D * (is_bf16 ? 2 : 4);
    char* outr = (char*)out + (size_t)q_start[r] * H * D * (is_bf16 ? 2 : 4);
    // Tokens per pass: as many as fit in MAX_ROWS with all this item's heads; if not one, head by head.
    int nkv = heads_per_item, per_pass = MAX_ROWS / (nkv * G);
    if (per_pass == 0) { nkv = 1; per_pass = MAX_ROWS / G; }
    for (int h0 = kvh0; h0 < kvh0 + heads_per_item; h0 += nkv)
      for (int q0 = 0; q0 < q_len[r]; q0 += per_pass) {
        int qn = q_len[r] - q0 < per_pass ? q_len[r] - q0 : per_pass;
        (is_bf16 ? attend_group_bf16 : attend_group_f32)(qr, k_cache, v_cache, outr, q0, qn, q_len[r], seq_len[r],
                                                         table, mask, h0, nkv, H, Hkv, D, bs, scale);
      }
  }
  return 0;
}
