#include "model/llama.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <sys/mman.h>

#include "core/status.h"
#include "cpu/qblocks.h"
#include "cpu/qgemm_cpu.h"
#include "ops/batch_checks.h"
#include "ops/ops.h"
#include "ops/prepack.h"

namespace fastlm::model {
namespace {

std::string layer_prefix(int l) { return "model.layers." + std::to_string(l) + "."; }

void check_shape(const Tensor& t, const std::string& name, const std::vector<int64_t>& want) {
  Tensor expected = Tensor::view(nullptr, want, t.dtype());
  FASTLM_CHECK(t.shape() == want, "tensor ", name, " has shape ", t.shape_str(), ", expected ",
               expected.shape_str());
  FASTLM_CHECK(t.dtype() == DType::kF32 || t.dtype() == DType::kF16 || t.dtype() == DType::kBF16,
               "tensor ", name, " has dtype ", dtype_name(t.dtype()), "; expected a float type");
}

// Copies (converting) all of src into dst memory of dtype dst_dtype.
void copy_into(const Tensor& src, void* dst, DType dst_dtype) {
  if (src.dtype() == dst_dtype) {
    std::memcpy(dst, src.data(), src.nbytes());
  } else {
    convert_dtype(src.data(), src.dtype(), dst, dst_dtype, src.numel());
  }
}

size_t round_up(size_t v, size_t to) { return (v + to - 1) / to * to; }

// Whether madvise(MADV_HUGEPAGE) can give this process transparent huge pages.
bool huge_pages_available() {
  std::ifstream f("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string mode;
  std::getline(f, mode);
  return mode.find("[always]") != std::string::npos || mode.find("[madvise]") != std::string::npos;
}

// `bytes` of anonymous memory on 2 MiB boundaries, advised to be backed by huge pages.
std::shared_ptr<void> huge_page_buffer(size_t bytes) {
  constexpr size_t kHuge = size_t{2} << 20;
  void* p = std::aligned_alloc(kHuge, round_up(bytes, kHuge));
  if (p == nullptr) return nullptr;
  ::madvise(p, round_up(bytes, kHuge), MADV_HUGEPAGE);  // a hint: 4 KiB pages if refused
  return std::shared_ptr<void>(p, [](void* q) { std::free(q); });
}

// Returns freed heap memory to the system (glibc keeps large freed chunks mapped).
void release_free_heap() {
#if defined(__GLIBC__)
  ::malloc_trim(0);
#endif
}

}  // namespace

std::optional<Weight> LlamaModel::stored_packed(const WeightSource& w, const std::string& name,
                                                int64_t rows, int64_t cols) const {
  if (!format_.keep_packed) return std::nullopt;
  std::optional<Weight> p = w.get_packed(name);
  if (!p || !cpu::qgemm_supports(p->qtype)) return std::nullopt;
  FASTLM_CHECK(p->rows == rows && p->cols == cols, "tensor ", name, " is ", p->rows, " x ", p->cols,
               ", expected ", rows, " x ", cols);
  return p;
}

Weight LlamaModel::quantized(const Tensor& dense, QType type) {
  const int64_t rows = dense.size(0), cols = dense.size(1);
  const Tensor f = dense.dtype() == DType::kF32 ? dense : dense.to(DType::kF32);
  const size_t row_bytes = qtype_row_bytes(type, cols);
  Tensor bytes = Tensor::empty({rows, static_cast<int64_t>(row_bytes)}, DType::kU8);
  const float* src = f.data<float>();
  auto* dst = static_cast<uint8_t*>(bytes.data());
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r)
    cpu::quantize_blocks(type, src + r * cols, dst + r * row_bytes, cols);
  return Weight::quantized(type, std::move(bytes), rows, cols);
}

Weight LlamaModel::matrix(const WeightSource& w, const std::string& name, int64_t rows,
                          int64_t cols, std::optional<QType> quantize_to) {
  if (std::optional<Weight> p = stored_packed(w, name, rows, cols)) {
    weight_bytes_ += p->nbytes();
    // A view of the file, unless transcoded at load (Q3_K, IQ4_NL).
    if (w.maps(p->packed.data(), p->packed.nbytes())) mapped_bytes_ += p->nbytes();
    return *p;
  }
  Tensor t = w.get(name);
  check_shape(t, name, {rows, cols});
  Weight out;
  if (quantize_to && cols % qtype_block_elems(*quantize_to) == 0) {
    out = quantized(t, *quantize_to);
  } else {
    out = Weight::of(t.dtype() == compute_dtype_ ? t : t.to(compute_dtype_));
  }
  // A copy (converted or quantized) is the resident one: drop the file's pages. A view in the
  // compute dtype is released after prepacking (see the constructor).
  if (out.is_packed() || out.dense.data() != t.data()) w.release(t.data(), t.nbytes());
  weight_bytes_ += out.nbytes();
  return out;
}

Weight LlamaModel::fused_rows(const WeightSource& w, const std::vector<std::string>& names,
                              const std::vector<int64_t>& rows, int64_t cols) {
  int64_t total = 0;
  for (int64_t r : rows) total += r;
  std::vector<Weight> parts;
  bool one_format = true;
  for (size_t i = 0; i < names.size(); ++i) {
    std::optional<Weight> p = stored_packed(w, names[i], rows[i], cols);
    if (!p) break;
    one_format = one_format && (parts.empty() || p->qtype == parts[0].qtype);
    parts.push_back(std::move(*p));
  }
  if (parts.size() == names.size() && !one_format) {
    // Packed in different formats (Q4_K_M stores v at Q6_K where q and k are Q4_K): each part
    // stays packed and fills its own output columns, instead of the whole projection
    // dequantizing to the compute dtype.
    Weight out = Weight::stacked(std::move(parts));
    weight_bytes_ += out.nbytes();
    for (const Weight& p : out.parts)  // the file's views (GGUF's q and k are un-permuted copies)
      if (w.maps(p.packed.data(), p.packed.nbytes())) mapped_bytes_ += p.nbytes();
    return out;
  }
  if (parts.size() == names.size()) {
    const QType type = parts[0].qtype;
    const size_t row_bytes = qtype_row_bytes(type, cols);
    const auto* first = static_cast<const uint8_t*>(parts[0].packed.data());
    bool adjacent = true;  // back to back in memory (GGUF's ffn_gate, ffn_up): fuse as a view
    for (size_t i = 1, at = parts[0].packed.nbytes(); i < parts.size(); ++i) {
      adjacent = adjacent && parts[i].packed.data() == first + at;
      at += parts[i].packed.nbytes();
    }
    if (adjacent) {
      auto keep = std::make_shared<std::vector<Weight>>(parts);  // every part's storage
      Tensor view = Tensor::view(const_cast<uint8_t*>(first),
                                 {total, static_cast<int64_t>(row_bytes)}, DType::kU8, keep);
      Weight out = Weight::quantized(type, std::move(view), total, cols);
      weight_bytes_ += out.nbytes();
      if (w.maps(first, out.packed.nbytes())) mapped_bytes_ += out.nbytes();
      return out;
    }
    Tensor bytes = Tensor::empty({total, static_cast<int64_t>(row_bytes)}, DType::kU8);
    auto* dst = static_cast<uint8_t*>(bytes.data());
    for (const Weight& p : parts) {
      std::memcpy(dst, p.packed.data(), p.packed.nbytes());
      w.release(p.packed.data(), p.packed.nbytes());  // the copy is the resident one
      dst += p.packed.nbytes();
    }
    Weight out = Weight::quantized(type, std::move(bytes), total, cols);
    weight_bytes_ += out.nbytes();
    return out;
  }
  const std::optional<QType> q = format_.quantize;
  const bool quantize = q && cols % qtype_block_elems(*q) == 0;
  const DType dtype = quantize ? DType::kF32 : compute_dtype_;
  std::vector<Tensor> dense_parts;
  bool adjacent = !quantize;  // back to back in the compute dtype (a file's gate, up): a view
  for (size_t i = 0; i < names.size(); ++i) {
    dense_parts.push_back(w.get(names[i]));
    const Tensor& t = dense_parts.back();
    check_shape(t, names[i], {rows[i], cols});
    adjacent = adjacent && t.dtype() == dtype &&
               (i == 0 || static_cast<const char*>(t.data()) ==
                              static_cast<const char*>(dense_parts[i - 1].data()) +
                                  dense_parts[i - 1].nbytes());
  }
  if (adjacent) {
    auto keep = std::make_shared<std::vector<Tensor>>(dense_parts);  // every part's storage
    Tensor view = Tensor::view(dense_parts[0].data(), {total, cols}, dtype, keep);
    weight_bytes_ += view.nbytes();
    return Weight::of(std::move(view));
  }
  Tensor dense = Tensor::empty({total, cols}, dtype);
  auto* dst = static_cast<char*>(dense.data());
  for (size_t i = 0; i < names.size(); ++i) {
    const Tensor& t = dense_parts[i];
    copy_into(t, dst, dtype);
    w.release(t.data(), t.nbytes());  // the copy is the resident one
    dst += rows[i] * cols * dtype_size(dtype);
  }
  dense_parts.clear();
  Weight out = quantize ? quantized(dense, *q) : Weight::of(std::move(dense));
  weight_bytes_ += out.nbytes();
  return out;
}

Tensor LlamaModel::vector(const WeightSource& w, const std::string& name, int64_t size) {
  Tensor t = w.get(name);
  check_shape(t, name, {size});
  if (t.dtype() != DType::kF32) t = t.to(DType::kF32);
  weight_bytes_ += t.nbytes();
  return t;
}

Tensor LlamaModel::fused_vector(const WeightSource& w, const std::vector<std::string>& names,
                                const std::vector<int64_t>& sizes) {
  int64_t total = 0;
  for (int64_t s : sizes) total += s;
  Tensor out = Tensor::empty({total}, DType::kF32);
  float* dst = out.data<float>();
  for (size_t i = 0; i < names.size(); ++i) {
    Tensor t = w.get(names[i]);
    check_shape(t, names[i], {sizes[i]});
    copy_into(t, dst, DType::kF32);
    dst += sizes[i];
  }
  weight_bytes_ += out.nbytes();
  return out;
}

LlamaModel::LlamaModel(ModelConfig config, const WeightSource& w, DType compute_dtype,
                       MatrixFormat format)
    : LlamaModel(std::move(config), w, compute_dtype, /*load_lm_head=*/true, format) {}

LlamaModel::LlamaModel(ModelConfig config, const WeightSource& w, DType compute_dtype,
                       bool load_lm_head, MatrixFormat format)
    : config_(std::move(config)), compute_dtype_(compute_dtype), format_(format), rope_(config_) {
  FASTLM_CHECK(compute_dtype_ == DType::kF32 || compute_dtype_ == DType::kBF16,
               "compute dtype must be float32 or bfloat16, not ", dtype_name(compute_dtype_));
  FASTLM_CHECK(is_supported_decoder(config_.architecture), "LlamaModel cannot run ",
               config_.architecture);
  FASTLM_CHECK(config_.partial_rotary_factor == 1.0,
               "partial rotary embeddings (partial_rotary_factor ", config_.partial_rotary_factor,
               ") are not supported");
  const ModelConfig& c = config_;
  const int64_t H = c.hidden_size, I = c.intermediate_size, V = c.vocab_size, D = c.head_dim;
  const int64_t nq = static_cast<int64_t>(c.num_attention_heads) * D;
  const int64_t nk = static_cast<int64_t>(c.num_key_value_heads) * D;
  FASTLM_CHECK(c.layer_uses_sliding_window.empty() ||
                   static_cast<int>(c.layer_uses_sliding_window.size()) == c.num_hidden_layers,
               "layer_uses_sliding_window must have one entry per layer");

  // Embeddings and lm_head quantize to Q8_0 whatever the body's format (as llama.cpp keeps the
  // output matrix at higher precision): logits are the most sensitive product.
  const std::optional<QType> head_format =
      format_.quantize ? std::optional<QType>(QType::kQ8_0) : std::nullopt;
  embed_tokens_ = matrix(w, "model.embed_tokens.weight", V, H, head_format);
  if (c.tie_word_embeddings) {
    lm_head_ = embed_tokens_;
  } else if (load_lm_head) {
    lm_head_ = matrix(w, "lm_head.weight", V, H, head_format);
  }
  final_norm_ = vector(w, "model.norm.weight", H);
  layers_.resize(c.num_hidden_layers);
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = layer_prefix(l);
    const std::string a = p + "self_attn.";
    Layer& L = layers_[l];
    L.input_norm = vector(w, p + "input_layernorm.weight", H);
    L.post_norm = vector(w, p + "post_attention_layernorm.weight", H);
    L.qkv = fused_rows(w, {a + "q_proj.weight", a + "k_proj.weight", a + "v_proj.weight"},
                       {nq, nk, nk}, H);
    if (c.attention_bias) {
      L.qkv_bias =
          fused_vector(w, {a + "q_proj.bias", a + "k_proj.bias", a + "v_proj.bias"}, {nq, nk, nk});
    }
    if (c.qk_norm) {
      L.q_norm = vector(w, a + "q_norm.weight", D);
      L.k_norm = vector(w, a + "k_norm.weight", D);
    }
    L.o_proj = matrix(w, a + "o_proj.weight", H, nq, format_.quantize);
    // Llama's attention_bias also covers o_proj; Qwen2's q/k/v-only bias does not.
    if (w.has(a + "o_proj.bias")) L.o_bias = vector(w, a + "o_proj.bias", H);
    L.gate_up = fused_rows(w, {p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"}, {I, I}, H);
    L.down = matrix(w, p + "mlp.down_proj.weight", H, I, format_.quantize);
    const bool sliding = c.layer_uses_sliding_window.empty() || c.layer_uses_sliding_window[l];
    L.sliding_window = sliding ? c.sliding_window : 0;
    for (const Weight* t : {&L.qkv, &L.o_proj, &L.gate_up, &L.down}) prepack(w, *t);
  }
  if (lm_head_.defined()) prepack(w, lm_head_);
  place_packed(w);
}

// Decode streams every packed matrix once per step. From the file mapping (4 KiB pages) the
// stream takes a TLB miss, and a page walk whose entries the stream itself evicted, every 4 KiB;
// from transparent huge pages it reads ~20% faster (a GEMV-only step of the Q8_0 model on the
// 2-core EPYC, one thread: 14.7 -> 11.6 ms). So when the kernel offers huge pages, the packed
// matrices move into one buffer, in the order a step reads them, and their file pages are
// dropped (RSS stays one copy). The panels prepack() made of dense (bf16 / f32) matrices move
// into one such buffer too.
void LlamaModel::place_packed(const WeightSource& w) {
  if (!huge_pages_available()) return;
  place_prepacked();
  std::vector<Weight*> order;
  for (Layer& L : layers_)
    for (Weight* t : {&L.qkv, &L.o_proj, &L.gate_up, &L.down}) {
      if (!t->is_stacked()) order.push_back(t);
      for (Weight& part : t->parts) order.push_back(&part);
    }
  order.push_back(&lm_head_);
  size_t total = 0;
  std::erase_if(order, [](Weight* t) { return !t->is_packed(); });
  for (Weight* t : order) total += round_up(t->packed.nbytes(), 64);
  if (total == 0) return;
  std::shared_ptr<void> buffer = huge_page_buffer(total);
  if (buffer == nullptr) return;
  auto* dst = static_cast<uint8_t*>(buffer.get());
  for (Weight* t : order) {
    const Tensor old = t->packed;
    std::memcpy(dst, old.data(), old.nbytes());
    t->packed = Tensor::view(dst, old.shape(), old.dtype(), buffer);
    if (embed_tokens_.is_packed() && embed_tokens_.packed.data() == old.data()) {
      embed_tokens_.packed = t->packed;  // the tied table reads the new copy too
    }
    if (w.release(old.data(), old.nbytes())) mapped_bytes_ -= old.nbytes();
    dst += round_up(old.nbytes(), 64);
  }
  release_free_heap();  // the owned copies (fused q/k/v) just freed
}

void LlamaModel::place_prepacked() {
  size_t total = 0;
  for (const auto& h : packed_) total += round_up(ops::prepacked_bytes(h), 64);
  if (total == 0) return;
  std::shared_ptr<void> buffer = huge_page_buffer(total);
  if (buffer == nullptr) return;
  auto* dst = static_cast<uint8_t*>(buffer.get());
  for (const auto& h : packed_) {
    if (h == nullptr) continue;
    const size_t bytes = ops::prepacked_bytes(h);
    ops::move_prepacked(h, dst, buffer);
    dst += round_up(bytes, 64);
  }
  release_free_heap();  // the heap copies just freed
}

void LlamaModel::prepack(const WeightSource& w, const Weight& t) {
  if (t.is_packed() || t.is_stacked()) return;
  packed_.push_back(ops::prepack_linear(t.dense));
  weight_bytes_ += ops::prepacked_bytes(packed_.back());
  // Batch-invariant linears (the default) read only the packed copy; where t is a view of the
  // file, its pages leave the resident set (they fault back in for whatever reads t: the
  // embedding rows of a tied table, oneDNN linears with batch invariance off).
  if (packed_.back() != nullptr && w.release(t.dense.data(), t.dense.nbytes())) {
    weight_bytes_ -= t.dense.nbytes();
  }
}

void LlamaModel::ensure_scratch(int64_t num_tokens) {
  if (num_tokens <= scratch_.capacity) return;
  const ModelConfig& c = config_;
  const int64_t n = std::max<int64_t>(num_tokens, scratch_.capacity * 3 / 2);
  const int64_t H = c.hidden_size, I = c.intermediate_size, D = c.head_dim;
  const int64_t nq = static_cast<int64_t>(c.num_attention_heads) * D;
  const int64_t nk = static_cast<int64_t>(c.num_key_value_heads) * D;
  scratch_ = Scratch{};  // the old buffers go first, so growing never holds both
  scratch_.hidden = Tensor::empty({n, H}, DType::kF32);
  scratch_.normed = Tensor::empty({n, H}, DType::kF32);
  scratch_.proj = Tensor::empty({n, H}, DType::kF32);
  const int64_t attention_half = (nq + 2 * nk) + nq + 2 * nk + nq;  // qkv, q, k, v, attn
  const int64_t mlp_half = 3 * I;                                   // gate_up, act
  // + 16 floats of alignment padding per part (5 at most).
  scratch_.layer = Tensor::empty({n * std::max(attention_half, mlp_half) + 5 * 16}, DType::kF32);
  scratch_.capacity = n;
}

void LlamaModel::plan(int64_t max_num_tokens, int64_t max_model_len) {
  ensure_scratch(max_num_tokens);
  rope_.ensure(max_model_len);
}

void LlamaModel::validate(const ForwardBatch& b, const model::KvStorage& kv) {
  const int T = b.num_tokens();
  const int S = b.num_seqs();
  FASTLM_CHECK_ARG(T > 0, "forward: empty batch");
  FASTLM_CHECK_ARG(
      static_cast<int>(b.positions.size()) == T && static_cast<int>(b.slot_mapping.size()) == T,
      "forward: positions and slot_mapping need one entry per token (", T, ")");
  FASTLM_CHECK_ARG(static_cast<int>(b.query_start_loc.size()) == S + 1 &&
                       b.query_start_loc.front() == 0 && b.query_start_loc.back() == T,
                   "forward: query_start_loc must hold num_seqs + 1 offsets from 0 to ", T);
  FASTLM_CHECK_ARG(b.block_tables.size() == static_cast<size_t>(S) * b.max_blocks_per_seq,
                   "forward: block_tables must be num_seqs x max_blocks_per_seq");
  for (int32_t id : b.token_ids) {
    FASTLM_CHECK_ARG(id >= 0 && id < config_.vocab_size, "forward: token id ", id,
                     " outside the vocabulary [0, ", config_.vocab_size, ")");
  }
  int32_t max_pos = 0;
  for (int32_t p : b.positions) {
    FASTLM_CHECK_ARG(p >= 0, "forward: negative position ", p);
    max_pos = std::max(max_pos, p);
  }
  // Index arrays are validated once per step here; the ops check shapes only.
  const Tensor& k0 = kv.k[0];
  for (int32_t r : b.logits_indices) {
    FASTLM_CHECK_ARG(r >= 0 && r < T, "forward: logits index ", r, " outside [0, ", T, ")");
  }
  FASTLM_CHECK_ARG(
      static_cast<int>(kv.k.size()) == config_.num_hidden_layers && kv.v.size() == kv.k.size(),
      "forward: KV storage has ", kv.k.size(), " layers, the model ", config_.num_hidden_layers);
  FASTLM_CHECK_ARG(
      k0.dim() == 4 && k0.size(2) == config_.num_key_value_heads && k0.size(3) == config_.head_dim,
      "forward: KV cache ", k0.shape_str(), " does not match ", config_.num_key_value_heads,
      " kv heads x head_dim ", config_.head_dim);
  ops::check_slot_mapping(host_view(b.slot_mapping), k0.size(0) * k0.size(1));
  ops::AttentionBatch ab;
  ab.query_start_loc = host_view(b.query_start_loc);
  ab.seq_lens = host_view(b.seq_lens);
  ab.block_tables = host_view(b.block_tables, S, b.max_blocks_per_seq);
  ab.block_size = kv.block_size;
  ops::check_attention_batch(ab, T, k0.size(0));
  // The RoPE table covers max_model_len after plan(); callers that did not plan grow it here,
  // on the host, before any op runs.
  rope_.ensure(static_cast<int64_t>(max_pos) + 1);
}

void LlamaModel::run_layers(const ForwardBatch& b, model::KvStorage& kv) {
  validate(b, kv);
  const ModelConfig& c = config_;
  const int64_t T = b.num_tokens();
  const int64_t D = c.head_dim;
  const int Hq = c.num_attention_heads, Hk = c.num_key_value_heads;
  const int64_t nq = Hq * D, nk = Hk * D, I = c.intermediate_size;
  const float eps = static_cast<float>(c.rms_norm_eps);
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));

  ensure_scratch(T);  // planned at start-up (plan()); grows only for unplanned callers
  Tensor hidden = scratch_.hidden.slice_rows(0, T);
  Tensor normed = scratch_.normed.slice_rows(0, T);
  Tensor proj = scratch_.proj.slice_rows(0, T);
  // Per-layer temporaries, back to back from the start of scratch_.layer:
  //   | qkv [T, nq+2nk] | q [T, nq] | k [T, nk] | v [T, nk] | attn [T, nq] |  attention half
  //   | gate_up [T, 2I]                     | act [T, I]             |     MLP half (same bytes)
  int64_t at = 0;
  auto part = [&](int64_t width) {
    Tensor t = scratch_.layer.slice_rows(at, at + T * width).reshape({T, width});
    at += (T * width + 15) / 16 * 16;  // every part 64-byte aligned, as Tensor::empty's
    return t;
  };
  Tensor qkv = part(nq + 2 * nk), q = part(nq), k = part(nk), v = part(nk), attn = part(nq);
  at = 0;
  Tensor gate_up = part(2 * I), act = part(I);

  ops::AttentionBatch ab;
  ab.query_start_loc = host_view(b.query_start_loc);
  ab.seq_lens = host_view(b.seq_lens);
  ab.block_tables = host_view(b.block_tables, b.num_seqs(), b.max_blocks_per_seq);
  ab.block_size = kv.block_size;
  const Tensor positions = host_view(b.positions);
  const Tensor slots = host_view(b.slot_mapping);

  ExecContext& cx = ctx();
  ops::embedding(cx, embed_tokens_, host_view(b.token_ids), hidden);
  for (size_t l = 0; l < layers_.size(); ++l) {
    const Layer& L = layers_[l];
    if (l == 0) {
      ops::rms_norm(cx, hidden, L.input_norm, eps, normed);
    } else {
      ops::add_rms_norm(cx, hidden, proj, L.input_norm, eps, normed);  // previous MLP's residual
    }
    ops::linear(cx, normed, L.qkv, L.qkv_bias.defined() ? &L.qkv_bias : nullptr, qkv);
    // The ops want q, k, v as separate contiguous [T, n] tensors.
    ops::copy_columns(cx, qkv, 0, q);
    ops::copy_columns(cx, qkv, nq, k);
    ops::copy_columns(cx, qkv, nq + nk, v);
    if (c.qk_norm) {
      ops::head_rms_norm(cx, q, L.q_norm, static_cast<int>(D), eps);
      ops::head_rms_norm(cx, k, L.k_norm, static_cast<int>(D), eps);
    }
    ops::rope(cx, q, k, positions, rope_.cos_sin(), static_cast<int>(D));
    ops::write_kv(cx, k, v, kv.k[l], kv.v[l], slots);
    ops::paged_attention(cx, q, kv.k[l], kv.v[l], ab, Hq, Hk, static_cast<int>(D), scale,
                         L.sliding_window, attn);
    ops::linear(cx, attn, L.o_proj, L.o_bias.defined() ? &L.o_bias : nullptr, proj);
    ops::add_rms_norm(cx, hidden, proj, L.post_norm, eps, normed);
    ops::linear(cx, normed, L.gate_up, nullptr, gate_up);
    ops::silu_mul(cx, gate_up, act);
    ops::linear(cx, act, L.down, nullptr, proj);
  }
}

Tensor LlamaModel::forward_hidden(const ForwardBatch& b, model::KvStorage& kv) {
  run_layers(b, kv);
  const int64_t T = b.num_tokens();
  Tensor res = scratch_.hidden.slice_rows(0, T);
  Tensor out = Tensor::empty({T, config_.hidden_size}, DType::kF32);
  ops::add_rms_norm(ctx(), res, scratch_.proj.slice_rows(0, T), final_norm_,
                    static_cast<float>(config_.rms_norm_eps), out);
  return out;
}

Tensor LlamaModel::forward(const ForwardBatch& b, model::KvStorage& kv) {
  FASTLM_CHECK_ARG(lm_head_.defined(), config_.architecture,
                   " was loaded without lm_head (pooling runner); it cannot generate");
  run_layers(b, kv);
  const ModelConfig& c = config_;
  const int64_t T = b.num_tokens();
  const int64_t H = c.hidden_size;
  const float eps = static_cast<float>(c.rms_norm_eps);
  Tensor hidden = scratch_.hidden.slice_rows(0, T);
  Tensor proj = scratch_.proj.slice_rows(0, T);

  // Only the rows whose logits are wanted get the last residual add, final norm and lm_head.
  const int64_t n = static_cast<int64_t>(b.logits_indices.size());
  Tensor logits = Tensor::empty({n, c.vocab_size}, DType::kF32);
  if (n == 0) return logits;
  Tensor res = Tensor::empty({n, H}, DType::kF32);
  Tensor delta = Tensor::empty({n, H}, DType::kF32);
  const Tensor rows = host_view(b.logits_indices);
  ops::gather_rows(ctx(), hidden, rows, res);
  ops::gather_rows(ctx(), proj, rows, delta);
  Tensor out = Tensor::empty({n, H}, DType::kF32);
  ops::add_rms_norm(ctx(), res, delta, final_norm_, eps, out);
  ops::linear(ctx(), out, lm_head_, nullptr, logits);
  return logits;
}

}  // namespace fastlm::model
