// Paged attention for bfloat16 caches with AVX512-BF16 dot products (mode 2 of cpu_attention_impl.h).
// A separate file so that only this code is compiled for that instruction set; cpu_attention.c calls it
// where the CPU has it (about 2.5x fewer instructions per key than converting to float32).
#pragma GCC target("avx512bf16")
#define ATTN_BF16_DP
#include "cpu_attention_impl.h"

void specserve_attend_group_bf16dp(const void* q, const void* kc, const void* vc, void* out, int q0, int qn,
                                   int q_len, int seq_len, const int32_t* table, const int32_t* tree_keys,
                                   const int32_t* tree_vis, int kvh0, int nkv, int H, int Hkv, int D, int bs,
                                   float scale) {
  attend_group_impl(q, kc, vc, out, 2, q0, qn, q_len, seq_len, table, tree_keys, tree_vis, kvh0, nkv, H, Hkv, D, bs,
                    scale);
}
