// An MLP speculator's single-chain proposal (every stage's argmax) in one call, for CPU decode, and a
// beam over its stages for the nodes beside the chain (spec/chain_beam.py).
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
} MlpChain;

ALWAYS_INLINE float get(const void* p, int64_t i, int bf16) {
  return bf16 ? from_bf16(((const uint16_t*)p)[i]) : ((const float*)p)[i];
}
ALWAYS_INLINE float rnd(float v, int bf16) { return bf16 ? from_bf16(to_bf16(v)) : v; }
ALWAYS_INLINE void put(void* p, int64_t i, float v, int bf16) {
  if (bf16) ((uint16_t*)p)[i] = to_bf16(v);
  else ((float*)p)[i] = v;
}

// The largest of a row's n logits, the ``num_skip`` lanes in ``skip`` left out, and the first index
// holding ``value`` outside them (-1 if none), 16 values at a time.
ALWAYS_INLINE __mmask16 kept_lanes(int r, const int* skip, int num_skip) {
  __mmask16 keep = (__mmask16)0xffff;
  for (int t = 0; t < num_skip; t++)
    if (skip[t] >= r && skip[t] < r + 16) keep &= (__mmask16)~(1u << (skip[t] - r));
  return keep;
}

static int skipped(int r, const int* skip, int num_skip) {
  for (int t = 0; t < num_skip; t++) if (skip[t] == r) return 1;
  return 0;
}

static float max_except(const void* logits, int64_t row, int n, int bf16, const int* skip, int num_skip) {
  __m512 acc = _mm512_set1_ps(-INFINITY);
  int r = 0;
  for (; r + 16 <= n; r += 16)
    acc = _mm512_mask_max_ps(acc, kept_lanes(r, skip, num_skip), acc, load16(logits, row + r, bf16));
  float top = _mm512_reduce_max_ps(acc);
  for (; r < n; r++) {
    const float v = get(logits, row + r, bf16);
    if (v > top && !skipped(r, skip, num_skip)) top = v;
  }
  return top;
}

static int first_index_of(const void* logits, int64_t row, int n, int bf16, float value, const int* skip,
                          int num_skip) {
  int r = 0;
  for (; r + 16 <= n; r += 16) {
    const __mmask16 hit = _mm512_cmp_ps_mask(load16(logits, row + r, bf16), _mm512_set1_ps(value), _CMP_EQ_OQ)
                          & kept_lanes(r, skip, num_skip);
    if (hit) return r + __builtin_ctz(hit);
  }
  for (; r < n; r++) if (get(logits, row + r, bf16) == value && !skipped(r, skip, num_skip)) return r;
  return -1;
}

// The k best of a row of n logits, best first: each the first index of the largest value among those
// not yet taken (as torch.max on ties); index -1 and value -inf once every other one is -inf.
// Vectorised, in place of a scalar scan with a branch per value (session 11, the shipped 5-stage chain
// with a second row: ~0.50 -> ~0.46 ms per proposal, least of 200).
static void top_k(const void* logits, int64_t row, int n, int bf16, int k, int* index, float* value) {
  int taken = 0;
  for (int t = 0; t < k; t++) {
    const float v = taken < t ? -INFINITY : max_except(logits, row, n, bf16, index, taken);
    index[t] = v > -INFINITY ? first_index_of(logits, row, n, bf16, v, index, taken) : -1;
    value[t] = index[t] < 0 ? -INFINITY : v;
    if (index[t] >= 0) taken++;
  }
}

// log(sum(exp(logits - top))) over a row: the log-softmax normaliser, given the row's largest logit.
static float log_sum_exp_from(const void* logits, int64_t row, int n, int bf16, float top) {
  __m512 acc = _mm512_setzero_ps();
  int r = 0;
  for (; r + 16 <= n; r += 16)
    acc = _mm512_add_ps(acc, exp512(_mm512_sub_ps(load16(logits, row + r, bf16), _mm512_set1_ps(top))));
  float sum = _mm512_reduce_add_ps(acc);
  for (; r < n; r++) sum += expf(get(logits, row + r, bf16) - top);
  return logf(sum);
}

static void gemm(const MlpChain* s, const void* x, const void* packed, void* y, int M, int N, int K) {
  if (s->is_bf16)
    specserve_gemm_packed_bf16((const uint16_t*)x, (const uint16_t*)packed, (uint16_t*)y, M, N, K, s->threads);
  else
    specserve_gemm_packed_f32((const float*)x, (const float*)packed, (float*)y, M, N, K, s->threads);
}

// The input state of M rows: the hidden state, RMS-normalised without weights and divided by sqrt(2)
// (scale_input).
static void input_state(const MlpChain* s, void* state) {
  const int bf16 = s->is_bf16, d = s->emb_dim;
  for (int m = 0; m < s->M; m++) {
    const int64_t row = (int64_t)m * d;
    float ss = 0.0f;
    if (s->scale_input)
      for (int j = 0; j < d; j++) { float v = get(s->hidden, row + j, bf16); ss += v * v; }
    const float inv = s->scale_input ? 1.0f / sqrtf(ss / d + s->input_eps) : 1.0f;
    for (int j = 0; j < d; j++) {
      float v = get(s->hidden, row + j, bf16);
      if (s->scale_input) v = rnd(v * inv, bf16) / (float)M_SQRT2;
      put(state, row + j, v, bf16);
    }
  }
}

// Stage i on ``rows`` rows: state [rows, in_dim] (dense) and each row's input token
// (tokens[m * token_stride]) -> the new state in place [rows, inner] and s->logits [rows, head_rows].
static void stage(const MlpChain* s, int i, int rows, void* state, int in_dim, const int64_t* tokens,
                  int token_stride) {
  const int bf16 = s->is_bf16, n = s->inner;
  gemm(s, state, s->proj[i], s->projected, rows, n, in_dim);
  for (int m = 0; m < rows; m++) {
    const int64_t row = (int64_t)m * n;
    const int64_t emb_row = tokens[(int64_t)m * token_stride] * n;
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
      put(state, row + j, 0.5f * v * (1.0f + erff(v * (float)M_SQRT1_2)), bf16);
    }
  }
  gemm(s, state, s->head[i], s->logits, rows, s->head_rows, n);
}

void specserve_mlp_chain(const MlpChain* s) {
  const int bf16 = s->is_bf16;
  input_state(s, s->state);
  int in_dim = s->emb_dim;
  for (int i = 0; i < s->depth; i++) {
    if (i == 0) stage(s, i, s->M, s->state, in_dim, s->last_tokens, 1);
    else stage(s, i, s->M, s->state, in_dim, s->out_tokens + i - 1, s->depth);
    for (int m = 0; m < s->M; m++) {  // argmax (first index on ties, as torch.max) and its log-probability
      const int64_t row = (int64_t)m * s->head_rows;
      int best;
      float best_value;
      top_k(s->logits, row, s->head_rows, bf16, 1, &best, &best_value);
      const float log_sum = log_sum_exp_from(s->logits, row, s->head_rows, bf16, best_value);
      s->out_scores[m] = (i == 0 ? 0.0f : s->out_scores[m]) - log_sum;
      s->out_tokens[(int64_t)m * s->depth + i] = s->vocab_map ? s->vocab_map[best] : best;
    }
    in_dim = s->inner;
  }
}

// A beam over the stages for the tree beside the chain (spec/chain_beam.py). Per request, the first stage
// runs one row; every later stage runs ``width`` rows: row 0 the chain (each stage's best token after
// the chain before it), rows 1.. the best other candidates of the stage before by path log-probability.
// Each row's ``width`` best tokens are its candidates. The extra rows share each product with the
// chain's (the weights are read once for all rows), so they cost next to nothing beside it.
#define BEAM_MAX_WIDTH 8

typedef struct {
  const MlpChain* chain;  // requests (M), depth, weights; its state, projected and logits hold M*width rows
  int width;              // rows a request from the second stage on, and candidates a row (<= BEAM_MAX_WIDTH)
  void* next_state;       // scratch [M*width, inner], the dtype
  int64_t* row_tokens;    // scratch [M*width]: each row's input token
  float* row_logp;        // scratch [M*width]: each row's path log-probability
  int64_t* out_tokens;    // [M, depth, width, width]: each row's candidate tokens, best first (-1: none)
  float* out_logp;        // [M, depth, width, width]: their path log-probabilities (-inf: none)
  int64_t* out_source;    // [M, depth, width]: the candidate of the stage before (row * width + rank) that
                          // each row continues; stage 0: 0 for row 0 (the root), -1 for the rest; -1: no row
} MlpBeam;

void specserve_mlp_beam(const MlpBeam* b) {
  const MlpChain* s = b->chain;
  const int bf16 = s->is_bf16, W = b->width, M = s->M, depth = s->depth, n = s->inner;
  void* cur = s->state;
  void* next = b->next_state;
  input_state(s, cur);
  for (int m = 0; m < M; m++) b->row_logp[m] = 0.0f;
  int rows_per = 1, in_dim = s->emb_dim;
  for (int i = 0; i < depth; i++) {
    stage(s, i, M * rows_per, cur, in_dim, i == 0 ? s->last_tokens : b->row_tokens, 1);
    for (int r = 0; r < M; r++) {  // every row's candidates
      for (int j = 0; j < W; j++) {
        const int64_t at = ((int64_t)(r * depth + i) * W + j) * W;
        const int64_t source = i == 0 ? (j == 0 ? 0 : -1) : b->out_source[(int64_t)(r * depth + i) * W + j];
        if (i == 0) b->out_source[(int64_t)(r * depth) * W + j] = source;
        int index[BEAM_MAX_WIDTH];
        float value[BEAM_MAX_WIDTH];
        const int row = r * rows_per + j;
        if (source >= 0) {
          top_k(s->logits, (int64_t)row * s->head_rows, s->head_rows, bf16, W, index, value);
          const float log_sum = log_sum_exp_from(s->logits, (int64_t)row * s->head_rows, s->head_rows, bf16, value[0]);
          for (int k = 0; k < W; k++) {
            b->out_tokens[at + k] = index[k] < 0 ? -1 : (s->vocab_map ? s->vocab_map[index[k]] : index[k]);
            b->out_logp[at + k] = index[k] < 0 ? -INFINITY : b->row_logp[row] + value[k] - value[0] - log_sum;
          }
        } else {
          for (int k = 0; k < W; k++) { b->out_tokens[at + k] = -1; b->out_logp[at + k] = -INFINITY; }
        }
      }
    }
    if (i + 1 == depth) break;
    for (int r = 0; r < M; r++) {  // the next stage's rows: the chain's candidate, then the best others
      const int64_t at = (int64_t)(r * depth + i) * W * W;
      int64_t* source = b->out_source + (int64_t)(r * depth + i + 1) * W;
      source[0] = b->out_tokens[at] >= 0 ? 0 : -1;
      for (int q = 1; q < W; q++) {
        int best = -1;
        for (int c = 1; c < W * W; c++) {
          if (b->out_tokens[at + c] < 0 || (best >= 0 && b->out_logp[at + c] <= b->out_logp[at + best])) continue;
          int taken = 0;
          for (int t = 1; t < q; t++) taken |= source[t] == c;
          if (!taken) best = c;
        }
        source[q] = best;
      }
      for (int q = 0; q < W; q++) {
        const int c = source[q] >= 0 ? (int)source[q] : 0;  // a row without a candidate runs on the chain's
        const int from = r * rows_per + c / W, to = r * W + q;
        for (int j = 0; j < n; j++) put(next, (int64_t)to * n + j, get(cur, (int64_t)from * n + j, bf16), bf16);
        b->row_tokens[to] = b->out_tokens[at + c] >= 0 ? b->out_tokens[at + c] : s->last_tokens[r];
        b->row_logp[to] = b->out_logp[at + c];
      }
    }
    void* swap = cur;
    cur = next;
    next = swap;
    rows_per = W;
    in_dim = n;
  }
}
