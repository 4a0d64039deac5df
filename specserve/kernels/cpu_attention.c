// Paged attention for short queries (decode tokens, speculative candidates) on CPU.
//
// Reads K and V in place through each request's block table: no gathered copy of the context, one
// call per layer for the whole batch. Online softmax over blocks of keys (exp vectorised over the
// keys of a block). Work is split with OpenMP over requests (all KV heads of a request in one item, so
// each cached slot is one contiguous read) or, with fewer requests than 2 per thread, over (request,
// KV head) pairs. The query heads that share a KV head are processed together, so each key and value
// row is loaded once per KV head. bfloat16 caches use AVX512-BF16 dot products where the CPU has them
// (cpu_attention_bf16.c); the kernel body is in cpu_attention_impl.h.
//
// Layout: q/out [T, H, D]; k_cache/v_cache [num_blocks, block_size, Hkv, D]; block_tables [n, max_blocks].
// Masking: the new tokens of a request are its last q_len context positions; a new token sees every
// cached token and, among the new ones, itself and earlier ones, or, when the request has a custom
// mask (uint8 [q_len, q_len] at masks + mask_off[r], mask_off -1 = none), exactly what the mask allows.
#include "cpu_attention_impl.h"

void specserve_attend_group_bf16dp(const void* q, const void* kc, const void* vc, void* out, int q0, int qn,
                                   int q_len, int seq_len, const int32_t* table, const int32_t* tree_keys,
                                   const int32_t* tree_vis, int kvh0, int nkv, int H, int Hkv, int D, int bs,
                                   float scale);

// One instance per dtype, so each inlines its loads.
static void attend_group_f32(const void* q, const void* kc, const void* vc, void* out, int q0, int qn, int q_len,
                             int seq_len, const int32_t* table, const int32_t* tree_keys, const int32_t* tree_vis,
                             int kvh0, int nkv, int H, int Hkv, int D, int bs, float scale) {
  attend_group_impl(q, kc, vc, out, 0, q0, qn, q_len, seq_len, table, tree_keys, tree_vis, kvh0, nkv, H, Hkv, D, bs,
                    scale);
}
static void attend_group_bf16(const void* q, const void* kc, const void* vc, void* out, int q0, int qn, int q_len,
                              int seq_len, const int32_t* table, const int32_t* tree_keys, const int32_t* tree_vis,
                              int kvh0, int nkv, int H, int Hkv, int D, int bs, float scale) {
  attend_group_impl(q, kc, vc, out, 1, q0, qn, q_len, seq_len, table, tree_keys, tree_vis, kvh0, nkv, H, Hkv, D, bs,
                    scale);
}

// Returns 0, or -1 when a shape is outside what this kernel handles (the caller falls back).
int specserve_paged_attention(const void* q, const void* k_cache, const void* v_cache, void* out, int is_bf16,
                              const int32_t* q_start, const int32_t* q_len, const int32_t* seq_len,
                              const int32_t* block_tables, int max_blocks, const int64_t* mask_off,
                              const uint8_t* masks, int n, int H, int Hkv, int D, int bs, float scale,
                              int threads) {
  if (D % 16 != 0 || D > MAX_DIM || H % Hkv != 0 || H / Hkv > MAX_ROWS) return -1;
  const int G = H / Hkv;
  typedef void (*group_fn)(const void*, const void*, const void*, void*, int, int, int, int, const int32_t*,
                           const int32_t*, const int32_t*, int, int, int, int, int, int, float);
  group_fn attend = is_bf16 ? attend_group_bf16 : attend_group_f32;
  if (is_bf16 && D % 32 == 0 && __builtin_cpu_supports("avx512bf16")) attend = specserve_attend_group_bf16dp;
  // With enough requests to share out, one item takes all KV heads of a request, so each cached slot
  // (all heads, contiguous) is read in one stream; with few, items are (request, KV head) pairs.
  int heads_per_item = 1;
  if (n >= 2 * threads && H <= MAX_ROWS) heads_per_item = Hkv;
  const int splits = Hkv / heads_per_item;
  // Still fewer than two items per thread (one request: 3 KV heads on 2 threads left one thread idle a
  // third of the time): the new tokens are split into chunks too. Each row's arithmetic is the same
  // whichever pass it runs in, so the split changes no bit of the result.
  const int chunks = n * splits < 2 * threads ? (2 * threads + n * splits - 1) / (n * splits) : 1;
  const int items = n * splits * chunks;
  #pragma omp parallel for schedule(dynamic, 1) num_threads(threads > 1 && items > 1 ? threads : 1)
  for (int item = 0; item < items; item++) {
    const int r = item / (splits * chunks), kvh0 = (item / chunks % splits) * heads_per_item, chunk = item % chunks;
    const int per_chunk = (q_len[r] + chunks - 1) / chunks, t0 = chunk * per_chunk;
    const int t1 = t0 + per_chunk < q_len[r] ? t0 + per_chunk : q_len[r];
    if (t0 >= t1) continue;
    const int32_t* table = block_tables + (size_t)r * max_blocks;
    const uint8_t* mask = mask_off[r] >= 0 ? masks + mask_off[r] : 0;
    const char* qr = (const char*)q + (size_t)q_start[r] * H * D * (is_bf16 ? 2 : 4);
    char* outr = (char*)out + (size_t)q_start[r] * H * D * (is_bf16 ? 2 : 4);
    // Tokens per pass: as many as fit in MAX_ROWS with all this item's heads; if not one, head by head.
    int nkv = heads_per_item, per_pass = MAX_ROWS / (nkv * G);
    if (per_pass == 0) { nkv = 1; per_pass = MAX_ROWS / G; }
    int32_t tree_keys[mask ? q_len[r] * q_len[r] : 1], tree_vis[mask ? q_len[r] : 1];
    if (mask) {
      // A token tree: each token attends to the cached keys, then its visible new ones taken as if they
      // sat right after them (attend_group_impl), as they will once its path is accepted.
      const int ql = q_len[r], cached = seq_len[r] - ql;
      for (int i = 0; i < ql; i++) {
        tree_vis[i] = 0;
        for (int k = 0; k < ql; k++)
          if (mask[(size_t)i * ql + k]) tree_keys[i * ql + tree_vis[i]++] = cached + k;
      }
    }
    for (int h0 = kvh0; h0 < kvh0 + heads_per_item; h0 += nkv)
      for (int q0 = t0; q0 < t1; q0 += per_pass) {
        int qn = t1 - q0 < per_pass ? t1 - q0 : per_pass;
        attend(qr, k_cache, v_cache, outr, q0, qn, q_len[r], seq_len[r], table, mask ? tree_keys : 0,
               mask ? tree_vis : 0, h0, nkv, H, Hkv, D, bs, scale);
      }
  }
  return 0;
}
