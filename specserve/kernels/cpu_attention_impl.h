// The paged-attention kernel's body, shared by cpu_attention.c (float32, and bfloat16 converted to
// float32) and cpu_attention_bf16.c (bfloat16 with AVX512-BF16 dot products, compiled for that target).
// Mode: 0 float32, 1 bfloat16 via float32, 2 bfloat16 dot products (only where ATTN_BF16_DP is defined).
#pragma once
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
ALWAYS_INLINE __m512 load_chunk(const char* row, int c, int is_bf16) { return load16(row, 16 * c, is_bf16); }

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

#ifdef ATTN_BF16_DP
// Mode 2. Scores: bfloat16 q and K pairs multiplied with one dot-product instruction per 32 dims, exact
// products summed in float32 (scale applied to the sums). P.V: probabilities rounded to bfloat16 (as
// PyTorch's softmax(...).to(v.dtype) @ v does) and two keys' V rows interleaved per instruction; the
// accumulators then hold dims in the order of the 16-bit unpacks, undone once at the end (acc_dim).
ALWAYS_INLINE __m512 block_scores_dp(const uint16_t* qrow, const char* const* krows, int nc2) {
  __m512 dots[KEYS];
  UNROLL_ALL for (int j = 0; j < KEYS; j++) dots[j] = _mm512_setzero_ps();
  for (int c = 0; c < nc2; c++) {
    __m512bh qc = (__m512bh)_mm512_load_si512(qrow + 32 * c);
    UNROLL_ALL for (int j = 0; j < KEYS; j++)
      dots[j] = _mm512_dpbf16_ps(dots[j], qc, (__m512bh)_mm512_loadu_si512(krows[j] + 64 * c));
  }
  return reduce16(dots);
}

#define DP_TILE_CHUNKS 2  // 32 dims each: 4 rows x 2 chunks x (low, high) = 16 accumulators

ALWAYS_INLINE void pv_tile_dp(float (*acc)[MAX_DIM], const uint16_t (*pb)[KEYS], const char* const* vrows, int nk,
                              int r0, int c0, const int nr, const int ncc) {
  __m512 a[TILE][DP_TILE_CHUNKS][2];
  UNROLL_ALL for (int r = 0; r < nr; r++)
    UNROLL_ALL for (int c = 0; c < ncc; c++)
      UNROLL_ALL for (int h = 0; h < 2; h++) a[r][c][h] = _mm512_load_ps(acc[r0 + r] + 32 * (c0 + c) + 16 * h);
  for (int j = 0; j < nk; j += 2) {  // key j + 1 past nk has probability 0 and a valid row pointer
    __m512bh lo[DP_TILE_CHUNKS], hi[DP_TILE_CHUNKS];
    UNROLL_ALL for (int c = 0; c < ncc; c++) {
      __m512i v0 = _mm512_loadu_si512(vrows[j] + 64 * (c0 + c)), v1 = _mm512_loadu_si512(vrows[j + 1] + 64 * (c0 + c));
      lo[c] = (__m512bh)_mm512_unpacklo_epi16(v0, v1);
      hi[c] = (__m512bh)_mm512_unpackhi_epi16(v0, v1);
    }
    UNROLL_ALL for (int r = 0; r < nr; r++) {
      int32_t pair;
      memcpy(&pair, &pb[r0 + r][j], 4);
      __m512bh pj = (__m512bh)_mm512_set1_epi32(pair);
      UNROLL_ALL for (int c = 0; c < ncc; c++) {
        a[r][c][0] = _mm512_dpbf16_ps(a[r][c][0], lo[c], pj);
        a[r][c][1] = _mm512_dpbf16_ps(a[r][c][1], hi[c], pj);
      }
    }
  }
  UNROLL_ALL for (int r = 0; r < nr; r++)
    UNROLL_ALL for (int c = 0; c < ncc; c++)
      UNROLL_ALL for (int h = 0; h < 2; h++) _mm512_store_ps(acc[r0 + r] + 32 * (c0 + c) + 16 * h, a[r][c][h]);
}

#define PV_CHUNKS_DP(r0, nr, vr)                                                              \
  do {                                                                                        \
    int c_ = 0;                                                                               \
    for (; c_ + DP_TILE_CHUNKS <= nc2; c_ += DP_TILE_CHUNKS) pv_tile_dp(acc, sb, vr, nk, r0, c_, nr, DP_TILE_CHUNKS); \
    if (c_ < nc2) pv_tile_dp(acc, sb, vr, nk, r0, c_, nr, 1);                                \
  } while (0)

// Dim of accumulator slot i (unpack order): slot 32c + 16h + k holds dim 32c + 8(k / 4) + 4h + k % 4.
ALWAYS_INLINE int acc_dim(int i) {
  int c = i / 32, h = (i / 16) % 2, k = i % 16;
  return 32 * c + 8 * (k / 4) + 4 * h + k % 4;
}
#endif

// One row's scores against a block's keys (lanes in ``visible``), folded into its online softmax: the
// row's probabilities go to s[r] (sb[r] in mode 2) for the P.V tiles, and its running max, sum and
// accumulator are rescaled when the max grows. A row that sees no key of the block gets zeros.
ALWAYS_INLINE void softmax_row(const int mode, int r, const char* const* kr, __mmask16 visible, int nc, int nc2,
                               float scale, float (*qv)[MAX_DIM], float (*acc)[MAX_DIM], float (*s)[KEYS],
                               float* row_max, float* row_sum, uint16_t (*qb)[MAX_DIM], uint16_t (*sb)[KEYS]) {
  const int is_bf16 = mode != 0;
  (void)nc2; (void)qb; (void)sb; (void)scale;
  if (!visible) {
    _mm512_store_ps(s[r], _mm512_setzero_ps());
#ifdef ATTN_BF16_DP
    if (mode == 2) memset(sb[r], 0, sizeof(sb[r]));
#endif
    return;
  }
  __m512 scores;
#ifdef ATTN_BF16_DP
  if (mode == 2) scores = _mm512_mul_ps(block_scores_dp(qb[r], kr, nc2), _mm512_set1_ps(scale));
  else
#endif
  scores = block_scores(qv[r], kr, nc, is_bf16);
  __m512 sv = _mm512_mask_blend_ps(visible, _mm512_set1_ps(-INFINITY), scores);
  float block_max = _mm512_reduce_max_ps(sv);
  float new_max = block_max > row_max[r] ? block_max : row_max[r];
  __m512 p = _mm512_maskz_mov_ps(visible, exp512(_mm512_sub_ps(sv, _mm512_set1_ps(new_max))));
  _mm512_store_ps(s[r], p);
#ifdef ATTN_BF16_DP
  if (mode == 2) _mm256_store_si256((__m256i*)sb[r], (__m256i)_mm512_cvtneps_pbh(p));
#endif
  if (new_max != row_max[r]) {
    float correction = row_max[r] == -INFINITY ? 0.0f : expf(row_max[r] - new_max);
    row_sum[r] *= correction;
    __m512 cv = _mm512_set1_ps(correction);
    for (int c = 0; c < nc; c++) _mm512_store_ps(acc[r] + 16 * c, _mm512_mul_ps(_mm512_load_ps(acc[r] + 16 * c), cv));
    row_max[r] = new_max;
  }
  row_sum[r] += _mm512_reduce_add_ps(p);
}

// acc += P.V for ``count`` rows from ``base`` (of one KV head) against the block's first nk value rows
// vr_ (both named at the call site).
#ifdef ATTN_BF16_DP
#define PV_ROWS(base, count)                                    \
  do {                                                          \
    const int base_ = (base);                                   \
    if (mode == 2) FOR_ROW_GROUPS(count, TILE, PV_DP_AT);       \
    else FOR_ROW_GROUPS(count, TILE, PV_AT);                    \
  } while (0)
#define PV_DP_AT(r0, nr) PV_CHUNKS_DP(base_ + (r0), nr, vr_)
#else
#define PV_ROWS(base, count)                                    \
  do {                                                          \
    const int base_ = (base);                                   \
    FOR_ROW_GROUPS(count, TILE, PV_AT);                         \
  } while (0)
#endif
#define PV_AT(r0, nr) PV_CHUNKS(base_ + (r0), nr, vr_)

// Rows are (KV head, new token, query head of its group), KV-head-major, so each KV head's rows are
// contiguous for the P.V tiles: nkv heads from kvh0, qn tokens from q0, G = H / Hkv heads each.
// The new tokens are the last q_len of seq_len context positions. Without tree_keys they are causal:
// token i sees every cached key and the new ones up to itself. With tree_keys (a token tree), token i
// sees the cached keys and then tree_vis[i] new ones, tree_keys[i * q_len + k] (absolute positions, in
// order), taken as if they sat right after the cache: the keys fall into the same blocks and lanes as
// in a plain decode step of that token after its path was accepted, so the result is the same to the
// bit (a masked pass over all new positions sums in another order, which bfloat16 turns into different
// tokens now and then). The blocks of cached keys alone are shared by all tokens of the pass; the
// blocks that reach the new keys run token by token, each with its own key rows.
ALWAYS_INLINE void attend_group_impl(const void* q, const void* kc, const void* vc, void* out, const int mode,
                                     int q0, int qn, int q_len, int seq_len, const int32_t* table,
                                     const int32_t* tree_keys, const int32_t* tree_vis, int kvh0, int nkv,
                                     int H, int Hkv, int D, int bs, float scale) {
  const int is_bf16 = mode != 0, G = H / Hkv, per_head = qn * G, rows = nkv * per_head;
  const int cached = seq_len - q_len, nc = D / 16, nc2 = D / 32;
  const size_t esz = is_bf16 ? 2 : 4, head_bytes = (size_t)D * esz, slot_bytes = (size_t)Hkv * head_bytes;
  float qv[MAX_ROWS][MAX_DIM] __attribute__((aligned(64)));
  float acc[MAX_ROWS][MAX_DIM] __attribute__((aligned(64)));
  float s[MAX_ROWS][KEYS] __attribute__((aligned(64)));
  float row_max[MAX_ROWS], row_sum[MAX_ROWS];
  uint16_t (*qb)[MAX_DIM] = 0;
  uint16_t (*sb)[KEYS] = 0;
#ifdef ATTN_BF16_DP
  uint16_t qb_[MAX_ROWS][MAX_DIM] __attribute__((aligned(64)));  // mode 2: q as is (bfloat16)
  uint16_t sb_[MAX_ROWS][KEYS] __attribute__((aligned(64)));    // mode 2: probabilities in bfloat16
  qb = qb_;
  sb = sb_;
#endif
  (void)nc2;
  const char* krows[KEYS];
  const char* vrows[KEYS];
  for (int r = 0; r < rows; r++) {
    int i = q0 + (r % per_head) / G, h = (kvh0 + r / per_head) * G + r % G;
    const char* src = (const char*)q + ((size_t)i * H + h) * head_bytes;
#ifdef ATTN_BF16_DP
    if (mode == 2) memcpy(qb[r], src, head_bytes);
    else
#endif
    for (int c = 0; c < nc; c++)
      _mm512_store_ps(qv[r] + 16 * c, _mm512_mul_ps(load_chunk(src, c, is_bf16), _mm512_set1_ps(scale)));
    memset(acc[r], 0, sizeof(float) * D);
    row_max[r] = -INFINITY;
    row_sum[r] = 0.0f;
  }
  const char* kbase = (const char*)kc + kvh0 * head_bytes;
  const char* vbase = (const char*)vc + kvh0 * head_bytes;
  int seq_end = seq_len;  // a tree pass ends with the token that sees the most keys
  if (tree_keys) {
    seq_end = cached;
    for (int t = 0; t < qn; t++) seq_end = cached + tree_vis[q0 + t] > seq_end ? cached + tree_vis[q0 + t] : seq_end;
  }
  for (int j0 = 0; j0 < seq_end; j0 += KEYS) {
    if (tree_keys && j0 + KEYS > cached) {
      // A block that reaches the tree's keys: token by token, each with its keys after the cached ones.
      for (int t = 0; t < qn; t++) {
        const int i = q0 + t, nk = cached + tree_vis[i] - j0 < KEYS ? cached + tree_vis[i] - j0 : KEYS;
        if (nk <= 0) continue;  // this token's keys ended in an earlier block
        const int32_t* keys = tree_keys + (size_t)i * q_len;
        for (int j = 0; j < KEYS; j++) {
          if (j < nk) {
            const int pos = j0 + j < cached ? j0 + j : keys[j0 + j - cached];
            const size_t slot = (size_t)table[pos / bs] * bs + pos % bs;
            krows[j] = kbase + slot * slot_bytes;
            vrows[j] = vbase + slot * slot_bytes;
          } else {
            krows[j] = krows[0];
            vrows[j] = vrows[0];
          }
        }
        const __mmask16 visible = nk == KEYS ? (__mmask16)0xffff : (__mmask16)((1u << nk) - 1);
        for (int hh = 0; hh < nkv; hh++) {
          const char* kh[KEYS];
          for (int j = 0; j < KEYS; j++) kh[j] = krows[j] + hh * head_bytes;
          for (int g = 0; g < G; g++)
            softmax_row(mode, hh * per_head + t * G + g, kh, visible, nc, nc2, scale, qv, acc, s, row_max, row_sum,
                        qb, sb);
        }
        for (int hh = 0; hh < nkv; hh++) {
          const char* vh[KEYS];
          for (int j = 0; j < KEYS; j++) vh[j] = vrows[j] + hh * head_bytes;
          const char* const* vr_ = vh;
          PV_ROWS(hh * per_head + t * G, G);
        }
      }
      continue;
    }
    const int nk = seq_len - j0 < KEYS ? seq_len - j0 : KEYS;
    // Slot of each key: block-table entry and offset stepped along (no division per key).
    int blk = j0 / bs, off = j0 % bs;
    for (int j = 0; j < KEYS; j++) {
      size_t slot = (size_t)table[blk] * bs + off;
      krows[j] = j < nk ? kbase + slot * slot_bytes : krows[0];
      vrows[j] = j < nk ? vbase + slot * slot_bytes : vrows[0];
      if (++off == bs) { off = 0; blk++; }
    }
    // Prefetch: this block's V rows now (read after the scores), the next block's K rows (its first
    // cache lines jump, by the block table, where the hardware prefetcher cannot follow).
    for (int j = 0; j < nk; j++)
      for (size_t b = 0; b < nkv * head_bytes; b += 64) _mm_prefetch(vrows[j] + b, _MM_HINT_T0);
    if (j0 + KEYS < seq_end) {
      int nblk = blk, noff = off, left = seq_end - j0 - KEYS < KEYS ? seq_end - j0 - KEYS : KEYS;
      for (int j = 0; j < left; j++) {
        const size_t slot = (size_t)table[nblk] * bs + noff;
        for (size_t b = 0; b < nkv * head_bytes; b += 64) _mm_prefetch(kbase + slot * slot_bytes + b, _MM_HINT_T1);
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
        if (j0 + nk > cached) {  // the block reaches the new tokens: causal
          const int i = q0 + (r % per_head) / G;
          for (int j = 0; j < nk; j++)
            if (j0 + j > cached + i) visible &= (__mmask16)~(1u << j);
        }
        softmax_row(mode, r, kr, visible, nc, nc2, scale, qv, acc, s, row_max, row_sum, qb, sb);
      }
    }
    for (int hh = 0; hh < nkv; hh++) {
      const char* vh[KEYS];
      for (int j = 0; j < KEYS; j++) vh[j] = vrows[j] + hh * head_bytes;
      const char* const* vr_ = vh;
      PV_ROWS(hh * per_head, per_head);
    }
  }
  for (int r = 0; r < rows; r++) {
    int i = q0 + (r % per_head) / G, h = (kvh0 + r / per_head) * G + r % G;
    __m512 inv = _mm512_set1_ps(1.0f / row_sum[r]);
    size_t base = ((size_t)i * H + h) * D;
#ifdef ATTN_BF16_DP
    if (mode == 2) {  // back from unpack order
      float ordered[MAX_DIM] __attribute__((aligned(64)));
      for (int d = 0; d < D; d++) ordered[acc_dim(d)] = acc[r][d];
      memcpy(acc[r], ordered, sizeof(float) * D);
    }
#endif
    for (int c = 0; c < nc; c++) {
      store16(out, base + 16 * c, _mm512_mul_ps(_mm512_load_ps(acc[r] + 16 * c), inv), is_bf16);
    }
  }
}

