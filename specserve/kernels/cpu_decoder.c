// A whole Llama-family decoder stack in one call, for short-query steps on CPU.
//
// Why: per layer the Python path makes ~10 kernel calls through ctypes and nn.Module dispatch, about
// 0.15 ms of interpreter work per layer (4-5 ms of a 17 ms single-request bfloat16 step). This driver
// runs the same kernels in the same order with the same roundings (add + RMSNorm, packed GEMMs, RoPE +
// KV write, paged attention, SiLU * up), so its output equals the Python path's bit for bit.
// The Python side (model/cpu_decoder.py) decides when it applies and falls back otherwise.
#include <stdint.h>

// The kernels it chains (cpu_fused.c, cpu_gemm_packed.c, cpu_attention.c).
void specserve_add_rms_norm(const void* x, const void* h, void* sum, void* out, const void* weight, int rows,
                            int dim, float eps, int bf16);
void specserve_rope_write_kv(const void* qkv, const void* cos, const void* sin, void* q_out, void* k_cache,
                             void* v_cache, const int64_t* slots, int T, int H, int Hkv, int D, int bf16);
void specserve_silu_mul(const void* gate_up, void* out, int T, int I, int bf16);
void specserve_gemm_packed_f32(const float* x, const float* p, float* y, int M, int N, int K, int threads);
void specserve_gemm_packed_bf16(const uint16_t* x, const uint16_t* p, uint16_t* y, int M, int N, int K,
                                int threads);
int specserve_paged_attention(const void* q, const void* k_cache, const void* v_cache, void* out, int is_bf16,
                              const int32_t* q_start, const int32_t* q_len, const int32_t* seq_len,
                              const int32_t* block_tables, int max_blocks, const int64_t* mask_off,
                              const uint8_t* masks, int n, int H, int Hkv, int D, int bs, float scale,
                              int threads);

// One layer's parameters: norm weights, panel-packed projections, and its KV cache.
typedef struct {
  const void* input_norm;
  const void* qkv;      // packed [q + 2 kv, hidden]
  const void* o;        // packed [hidden, q]
  const void* post_norm;
  const void* gate_up;  // packed [2 inter, hidden]
  const void* down;     // packed [hidden, inter]
  void* k_cache;
  void* v_cache;
} DecoderLayer;

// One step: shapes, activations and scratch buffers (all [M, ...], contiguous), attention metadata.
typedef struct {
  int num_layers, M, hidden, inter, H, Hkv, D, block_size, is_bf16, threads;
  float eps, scale;
  const void* embeddings;  // [M, hidden]: the layer-0 input
  void* residual;          // [M, hidden]
  void* normed;            // [M, hidden]; holds the final normed hidden state on return
  void* qkv;               // [M, (H + 2 Hkv) D]
  void* q;                 // [M, H, D]
  void* attn;              // [M, H, D]
  void* update;            // [M, hidden]: attention or MLP output before the residual add
  void* gate_up;           // [M, 2 inter]
  void* act;               // [M, inter]
  const void* cos;
  const void* sin;
  const int64_t* slots;
  const int32_t* q_start;
  const int32_t* q_len;
  const int32_t* seq_len;
  const int32_t* block_tables;
  int max_blocks, num_reqs;
  const int64_t* mask_off;
  const uint8_t* masks;
  const void* final_norm;
} DecoderStep;

static void project(const DecoderStep* s, const void* x, const void* packed, void* y, int N, int K) {
  if (s->is_bf16)
    specserve_gemm_packed_bf16((const uint16_t*)x, (const uint16_t*)packed, (uint16_t*)y, s->M, N, K, s->threads);
  else
    specserve_gemm_packed_f32((const float*)x, (const float*)packed, (float*)y, s->M, N, K, s->threads);
}

// Returns 0, or -1 if the attention kernel rejects the shapes (checked on the Python side first).
int specserve_llama_decoder(const DecoderStep* s, const DecoderLayer* layers) {
  const int q_size = s->H * s->D, qkv_size = (s->H + 2 * s->Hkv) * s->D;
  for (int l = 0; l < s->num_layers; l++) {
    const DecoderLayer* w = &layers[l];
    if (l == 0)
      specserve_add_rms_norm(s->embeddings, 0, 0, s->normed, w->input_norm, s->M, s->hidden, s->eps, s->is_bf16);
    else  // the previous layer's MLP output joins the residual stream here
      specserve_add_rms_norm(s->residual, s->update, s->residual, s->normed, w->input_norm, s->M, s->hidden,
                             s->eps, s->is_bf16);
    project(s, s->normed, w->qkv, s->qkv, qkv_size, s->hidden);
    specserve_rope_write_kv(s->qkv, s->cos, s->sin, s->q, w->k_cache, w->v_cache, s->slots, s->M, s->H, s->Hkv,
                            s->D, s->is_bf16);
    if (specserve_paged_attention(s->q, w->k_cache, w->v_cache, s->attn, s->is_bf16, s->q_start, s->q_len,
                                  s->seq_len, s->block_tables, s->max_blocks, s->mask_off, s->masks, s->num_reqs,
                                  s->H, s->Hkv, s->D, s->block_size, s->scale, s->threads) != 0)
      return -1;
    project(s, s->attn, w->o, s->update, s->hidden, q_size);
    // Layer 0's residual stream starts as the embeddings.
    specserve_add_rms_norm(l == 0 ? s->embeddings : s->residual, s->update, s->residual, s->normed, w->post_norm,
                           s->M, s->hidden, s->eps, s->is_bf16);
    project(s, s->normed, w->gate_up, s->gate_up, 2 * s->inter, s->hidden);
    specserve_silu_mul(s->gate_up, s->act, s->M, s->inter, s->is_bf16);
    project(s, s->act, w->down, s->update, s->hidden, s->inter);
  }
  specserve_add_rms_norm(s->residual, s->update, s->residual, s->normed, s->final_norm, s->M, s->hidden, s->eps,
                         s->is_bf16);
  return 0;
}
