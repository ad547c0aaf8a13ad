// fastlm._core test hooks for encoder-decoder (Whisper) models: the encoder's hidden states, the
// decoder's logits of whole sequences through a fresh paged KV cache, and the cross-attention op.
#include "model/whisper.h"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cstring>

#include "bindings/registry.h"
#include "model/batch_builder.h"
#include "model/model.h"
#include "ops/backend.h"
#include "ops/ops.h"

namespace py = pybind11;

namespace fastlm::bindings {
namespace {

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;
using IntArray = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

// A view of a C-contiguous cache array: float32 values or bfloat16 bits (uint16).
Tensor cache_view(const py::array& a, DType dtype, const char* name) {
  const bool ok = dtype == DType::kF32 ? py::isinstance<py::array_t<float>>(a)
                                       : py::isinstance<py::array_t<uint16_t>>(a);
  FASTLM_CHECK_ARG(ok && (a.flags() & py::array::c_style) && a.ndim() == 4, name,
                   " must be a C-contiguous 4-D ",
                   dtype == DType::kF32 ? "float32" : "uint16 (bfloat16 bits)", " array");
  return Tensor::view(const_cast<void*>(a.data()), {a.shape(0), a.shape(1), a.shape(2), a.shape(3)},
                      dtype);
}

py::array_t<float> copy_out(const Tensor& t) {
  std::vector<py::ssize_t> shape(t.shape().begin(), t.shape().end());
  py::array_t<float> out(shape);
  std::memcpy(out.mutable_data(), t.data(), t.nbytes());
  return out;
}

// One sequence per feature array: [E encoder slots | decoder tokens], all in one step.
Tensor decoder_logits(model::Model& m, const FloatArray& features,
                      const std::vector<std::vector<int32_t>>& tokens, int block_size) {
  const int n = static_cast<int>(tokens.size());
  const std::vector<int64_t> shape = m.encoder_input_shape();
  FASTLM_CHECK_ARG(!shape.empty(), "model has no encoder");
  const int64_t per = shape[0] * shape[1];
  FASTLM_CHECK_ARG(features.size() == per * n, "features must hold ", n, " arrays of ", shape[0],
                   " x ", shape[1]);
  const int E = (m.encoder_len() + block_size - 1) / block_size * block_size;
  const model::ModelConfig& c = m.config();
  int max_blocks = 0;
  for (const auto& t : tokens) {
    max_blocks =
        std::max(max_blocks, static_cast<int>((E + t.size() + block_size - 1) / block_size));
  }
  model::BatchBuilder builder;
  builder.reserve(0, n, max_blocks);
  builder.begin(block_size, /*with_token_types=*/false);
  std::vector<const float*> encoder_inputs;
  int next_block = n * max_blocks - 1;  // reverse order: tables are not the identity
  for (int s = 0; s < n; ++s) {
    std::vector<int32_t> table(max_blocks);
    for (int& x : table) x = next_block--;
    const std::vector<int32_t>& toks = tokens[s];
    const int len = E + static_cast<int>(toks.size());
    const int row0 = builder.add_sequence_with_table([&](int p) { return p < E ? 0 : toks[p - E]; },
                                                     0, len, table);
    for (int p = E; p < len; ++p) builder.add_logits_row(row0 + p);
    encoder_inputs.push_back(features.data() + s * per);
  }
  model::ForwardBatch& b = builder.finish();
  b.num_encoder_slots = E;
  b.encoder_inputs = std::move(encoder_inputs);
  auto kv = model::KvStorage::allocate(c.num_hidden_layers, n * max_blocks, block_size,
                                       c.num_key_value_heads, c.head_dim, m.compute_dtype());
  return m.forward(b, kv);
}

}  // namespace
}  // namespace fastlm::bindings

FASTLM_BINDING(whisper) {
  using fastlm::model::Model;
  m.def(
      "whisper_encode",
      [](Model& self, fastlm::bindings::FloatArray features) {
        auto* w = dynamic_cast<fastlm::model::WhisperModel*>(&self);
        FASTLM_CHECK_ARG(w != nullptr, "not a Whisper model");
        const std::vector<int64_t> shape = w->encoder_input_shape();
        const int64_t per = shape[0] * shape[1];
        FASTLM_CHECK_ARG(features.size() % per == 0 && features.size() > 0,
                         "features must be [n, mels, frames]");
        std::vector<const float*> ptrs;
        for (int64_t i = 0; i < features.size() / per; ++i)
          ptrs.push_back(features.data() + i * per);
        fastlm::Tensor out;
        {
          py::gil_scoped_release release;
          out = w->encode(ptrs);
        }
        return fastlm::bindings::copy_out(out);
      },
      py::arg("model"), py::arg("features"),
      "Encoder hidden states [n * encoder_len, d_model] of features [n, mels, frames].");
  m.def(
      "encoder_decoder_logits",
      [](Model& self, fastlm::bindings::FloatArray features,
         const std::vector<std::vector<int32_t>>& tokens, int block_size) {
        fastlm::Tensor out;
        {
          py::gil_scoped_release release;
          out = fastlm::bindings::decoder_logits(self, features, tokens, block_size);
        }
        return fastlm::bindings::copy_out(out);
      },
      py::arg("model"), py::arg("features"), py::arg("decoder_tokens"), py::arg("block_size") = 16,
      "Decoder logits [sum of lengths, vocab] of each sequence's decoder tokens over its features "
      "(one flat batch, fresh paged cache).");
  m.def(
      "cross_attention",
      [](fastlm::bindings::FloatArray q, const py::array& k_cache, const py::array& v_cache,
         const std::string& cache_dtype, fastlm::bindings::IntArray block_tables, int num_keys,
         int num_heads, int head_dim, float scale) {
        FASTLM_CHECK_ARG(cache_dtype == "float32" || cache_dtype == "bfloat16",
                         "cache_dtype must be float32 or bfloat16");
        const fastlm::DType dt =
            cache_dtype == "float32" ? fastlm::DType::kF32 : fastlm::DType::kBF16;
        FASTLM_CHECK_ARG(q.ndim() == 2 && block_tables.ndim() == 2, "q and block_tables are 2-D");
        const fastlm::Tensor qt =
            fastlm::Tensor::view(q.mutable_data(), {q.shape(0), q.shape(1)}, fastlm::DType::kF32);
        const fastlm::Tensor kc = fastlm::bindings::cache_view(k_cache, dt, "k_cache");
        const fastlm::Tensor vc = fastlm::bindings::cache_view(v_cache, dt, "v_cache");
        const fastlm::Tensor bt = fastlm::Tensor::view(
            block_tables.mutable_data(), {block_tables.shape(0), block_tables.shape(1)},
            fastlm::DType::kI32);
        for (py::ssize_t i = 0; i < block_tables.size(); ++i) {
          FASTLM_CHECK_ARG(block_tables.data()[i] >= 0 && block_tables.data()[i] < kc.size(0),
                           "cross_attention: block id out of range");
        }
        py::array_t<float> out({q.shape(0), q.shape(1)});
        fastlm::Tensor ot =
            fastlm::Tensor::view(out.mutable_data(), {q.shape(0), q.shape(1)}, fastlm::DType::kF32);
        {
          py::gil_scoped_release release;
          fastlm::ops::cross_attention(fastlm::ops::default_context(fastlm::Device::kCPU), qt, kc,
                                       vc, bt, num_keys, num_heads, head_dim, scale, ot);
        }
        return out;
      },
      py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("cache_dtype"),
      py::arg("block_tables"), py::arg("num_keys"), py::arg("num_heads"), py::arg("head_dim"),
      py::arg("scale"),
      "ops::cross_attention: row i of q attends to slots [0, num_keys) of block_tables[i].");
}
