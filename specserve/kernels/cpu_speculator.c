// An MLP speculator's single-chain proposal (every stage's argmax) in one call, for CPU decode, and
// optionally each stage's second-best token (the chain's siblings, see spec/siblings.py).
//
// Why: a chain of three stages is ~25 small PyTorch ops around three products with the head; at one
// request those ops cost about as much as the products themselves (~1 ms of a ~12 ms bfloat16 step).
// The products use the packed GEMM (cpu_gemm_packed.c), the rest is plain C over a few hundred values.
// Numerics follow the PyTorch path (model/spec/mlp_speculator.py): float32 maths, rounding to bfloat16
// where PyTorch rounds; sums are ordered differently, so a near-tie between two tokens may resolve
// the other way. A proposal only decides what gets verified, never what is emitted.
#include <math.h>
#include <stdint.h>

#include "cpu_common.h"

void specserve_gemm_packed_f32(const float* x, const float* p, float* y, int M, int N, int K, int threads);
void specserve_gemm_packed_bf16(const uint16_t* x, const uint16_t* p, uint16_t* y, int M, int N, int K,
                                int threads);

typedef struct {
  int M, depth, emb_dim, inner, head_rows, is_bf16, threads, scale_input;
  float eps, input_eps, emb_scale, state_weight;
  const void* hidden;           // [M, emb_dim]: the base model's last hidden state per request
  const int64_t* last_tokens;   // [M]: the token each request just produced
  const void* const* emb;       // per stage: [vocab, inner] (not packed: rows are looked up)
  const void* const* proj;      // per stage: packed [inner, emb_dim at stage 0 else inner]
  const void* const* ln_weight; // per stage: [inner]
  const void* const* ln_bias;   // per stage: [inner]
  const void* const* head;      // per stage: packed [head_rows, inner]
  const int64_t* vocab_map;     // [head_rows] token id of each head row, or NULL (head covers the vocab)
  void* state;                  // scratch [M, max(emb_dim, inner)], the dtype
  void* projected;              // scratch [M, inner]
  void* logits;                 // scratch [M, head_rows]
  float* work;                  // scratch [inner]
  int64_t* out_tokens;          // [M, depth]
  float* out_scores;            // [M]: the chain's summed log-probabilities (under each stage's head)
  int64_t* out_second;          // [M, depth] or NULL: each stage's second-best token (chain siblings)
  float* out_second_logp;       // [M, depth] or NULL: its path's log-probability (chain prefix + it)
  const int32_t* first_rank;    // [M] or NULL: 1 = the row's first token is its stage's runner-up, not
                                // its best (a chain that continues a sibling at position 1)
} MlpChain;

ALWAYS_INLINE float get(const void* p, int64_t i, int bf16) {
  return bf16 ? from_bf16(((const uint16_t*)p)[i]) : ((const float*)p)[i];
}
ALWAYS_INLINE float rnd(float v, int bf16) { return bf16 ? from_bf16(to_bf16(v)) : v; }
ALWAYS_INLINE void put(void* p, int64_t i, float v, int bf16) {
  if (bf16) ((uint16_t*)p)[i] = to_bf16(v);
  else ((float*)p)[i] = v;
}

// The largest of a row's n logits, lane ``skip`` left out (-1: none), and the first index holding
// ``value`` other than ``skip`` (-1 if none), 16 values at a time.
static float max_except(const void* logits, int64_t row, int n, int bf16, int skip) {
  __m512 acc = _mm512_set1_ps(-INFINITY);
  int r = 0;
  for (; r + 16 <= n; r += 16) {
    const __mmask16 keep = skip >= r && skip < r + 16 ? (__mmask16)~(1u << (skip - r)) : (__mmask16)0xffff;
    acc = _mm512_mask_max_ps(acc, keep, acc, load16(logits, row + r, bf16));
  }
  float top = _mm512_reduce_max_ps(acc);
  for (; r < n; r++) { const float v = get(logits, row + r, bf16); if (r != skip && v > top) top = v; }
  return top;
}

static int first_index_of(const void* logits, int64_t row, int n, int bf16, float value, int skip) {
  int r = 0;
  for (; r + 16 <= n; r += 16) {
    __mmask16 hit = _mm512_cmp_ps_mask(load16(logits, row + r, bf16), _mm512_set1_ps(value), _CMP_EQ_OQ);
    if (skip >= r && skip < r + 16) hit &= (__mmask16)~(1u << (skip - r));
    if (hit) return r + __builtin_ctz(hit);
  }
  for (; r < n; r++) if (r != skip && get(logits, row + r, bf16) == value) return r;
  return -1;
}

// The best and second-best of a row of n logits: the best is the first index of the largest value (as
// torch.max), the second the first index of the largest among the others (-1 if every other one is
// -inf). Vectorised, in place of a scalar scan with a branch per value (the shipped 5-stage chain with
// its runner-up row: ~0.50 -> ~0.46 ms per proposal, least of 200).
static void top_two(const void* logits, int64_t row, int n, int bf16, int* best, float* best_value, int* second,
                    float* second_value) {
  *best_value = max_except(logits, row, n, bf16, -1);
  *best = first_index_of(logits, row, n, bf16, *best_value, -1);
  const float next = max_except(logits, row, n, bf16, *best);
  *second = next > -INFINITY ? first_index_of(logits, row, n, bf16, next, *best) : -1;
  *second_value = *second < 0 ? -INFINITY : next;
}

static void gemm(const MlpChain* s, const void* x, const void* packed, void* y, int N, int K) {
  if (s->is_bf16)
    specserve_gemm_packed_bf16((const uint16_t*)x, (const uint16_t*)packed, (uint16_t*)y, s->M, N, K, s->threads);
  else
    specserve_gemm_packed_f32((const float*)x, (const float*)packed, (float*)y, s->M, N, K, s->threads);
}

void specserve_mlp_chain(const MlpChain* s) {
  const int bf16 = s->is_bf16, d = s->emb_dim, n = s->inner;
  // Input state: the hidden state, RMS-normalised without weights and divided by sqrt(2) (scale_input).
  for (int m = 0; m < s->M; m++) {
    const int64_t row = (int64_t)m * d;
    float ss = 0.0f;
    if (s->scale_input)
      for (int j = 0; j < d; j++) { float v = get(s->hidden, row + j, bf16); ss += v * v; }
    const float inv = s->scale_input ? 1.0f / sqrtf(ss / d + s->input_eps) : 1.0f;
    for (int j = 0; j < d; j++) {
      float v = get(s->hidden, row + j, bf16);
      if (s->scale_input) v = rnd(v * inv, bf16) / (float)M_SQRT2;
      put(s->state, row + j, v, bf16);
    }
  }
  int in_dim = d;
  for (int i = 0; i < s->depth; i++) {
    gemm(s, s->state, s->proj[i], s->projected, n, in_dim);
    for (int m = 0; m < s->M; m++) {
      const int64_t row = (int64_t)m * n;
      const int64_t tok = i == 0 ? s->last_tokens[m] : s->out_tokens[(int64_t)m * s->depth + i - 1];
      const int64_t emb_row = tok * n;
      // u = proj(state) * state_weight + emb(token) * emb_scale, each product rounded as PyTorch does
      float ss = 0.0f;
      for (int j = 0; j < n; j++) {
        const float z = rnd(get(s->emb[i], emb_row + j, bf16) * s->emb_scale, bf16);
        const float u = rnd(rnd(get(s->projected, row + j, bf16) * s->state_weight, bf16) + z, bf16);
        s->work[j] = u;
        ss += u * u;
      }
      // RMS norm with weight and bias, then exact (erf) GELU
      const float inv = 1.0f / sqrtf(ss / n + s->eps);
      for (int j = 0; j < n; j++) {
        float v = rnd(s->work[j] * inv, bf16);
        v = rnd(rnd(v * get(s->ln_weight[i], j, bf16), bf16) + get(s->ln_bias[i], j, bf16), bf16);
        put(s->state, row + j, 0.5f * v * (1.0f + erff(v * (float)M_SQRT1_2)), bf16);
      }
    }
    gemm(s, s->state, s->head[i], s->logits, s->head_rows, n);
    for (int m = 0; m < s->M; m++) {  // argmax (first index on ties, as torch.max) and its log-probability
      const int64_t row = (int64_t)m * s->head_rows;
      int best, second;
      float best_value, second_value;
      top_two(s->logits, row, s->head_rows, bf16, &best, &best_value, &second, &second_value);
      __m512 acc = _mm512_setzero_ps();
      int r = 0;
      for (; r + 16 <= s->head_rows; r += 16)
        acc = _mm512_add_ps(acc, exp512(_mm512_sub_ps(load16(s->logits, row + r, bf16), _mm512_set1_ps(best_value))));
      float sum = _mm512_reduce_add_ps(acc);
      for (; r < s->head_rows; r++) sum += expf(get(s->logits, row + r, bf16) - best_value);
      const float log_sum = logf(sum), prefix = i == 0 ? 0.0f : s->out_scores[m];
      int chosen = best;
      float chosen_logp = -log_sum;
      if (i == 0 && s->first_rank && s->first_rank[m] == 1 && second >= 0) {
        chosen = second;
        chosen_logp = second_value - best_value - log_sum;
      }
      s->out_scores[m] = prefix + chosen_logp;
      s->out_tokens[(int64_t)m * s->depth + i] = s->vocab_map ? s->vocab_map[chosen] : chosen;
      if (s->out_second) {  // a one-row head has no second token: -1
        const int64_t at = (int64_t)m * s->depth + i;
        s->out_second[at] = second < 0 ? -1 : (s->vocab_map ? s->vocab_map[second] : second);
        s->out_second_logp[at] = second < 0 ? -INFINITY : prefix + second_value - best_value - log_sum;
      }
    }
    in_dim = n;
  }
}
