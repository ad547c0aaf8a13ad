// fastlm._core model API for tests and debugging: load a model and run whole sequences through a
// fresh paged KV cache (one shot, in chunks, or several sequences in one flat batch).
#include "model/model.h"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cstring>

#include "bindings/registry.h"
#include "model/batch_builder.h"
#include "model/gguf.h"
#include "model/llama.h"

namespace py = pybind11;

namespace fastlm::bindings {
namespace {

using model::ForwardBatch;
using model::Model;

py::dict config_dict(const model::ModelConfig& c) {
  py::dict d;
  d["architecture"] = c.architecture;
  d["model_type"] = c.model_type;
  d["vocab_size"] = c.vocab_size;
  d["hidden_size"] = c.hidden_size;
  d["intermediate_size"] = c.intermediate_size;
  d["num_hidden_layers"] = c.num_hidden_layers;
  d["num_attention_heads"] = c.num_attention_heads;
  d["num_key_value_heads"] = c.num_key_value_heads;
  d["head_dim"] = c.head_dim;
  d["rms_norm_eps"] = c.rms_norm_eps;
  d["rope_theta"] = c.rope_theta;
  d["rope_type"] = c.rope_scaling.type;
  d["rope_factor"] = c.rope_scaling.factor;
  d["max_position_embeddings"] = c.max_position_embeddings;
  d["tie_word_embeddings"] = c.tie_word_embeddings;
  d["attention_bias"] = c.attention_bias;
  d["qk_norm"] = c.qk_norm;
  d["sliding_window"] = c.sliding_window;
  d["layer_uses_sliding_window"] = c.layer_uses_sliding_window;
  d["eos_token_ids"] = c.eos_token_ids;
  d["bos_token_id"] = c.bos_token_id;
  d["torch_dtype"] = std::string(dtype_name(c.torch_dtype));
  return d;
}

py::array_t<float> to_numpy(const Tensor& t) {
  FASTLM_CHECK(t.dtype() == DType::kF32, "to_numpy: expected float32");
  std::vector<py::ssize_t> shape(t.shape().begin(), t.shape().end());
  py::array_t<float> out(shape);
  std::memcpy(out.mutable_data(), t.data(), t.nbytes());
  return out;
}

// One sequence per entry of `seqs`, each fed in the chunks `chunks[s]` (summing to its length);
// step i runs chunk i of every sequence that still has one, in one flat batch. Each sequence
// owns ceil(len / block_size) blocks, handed out in reverse order so block tables are not the
// identity. Returns every row's logits per sequence.
std::vector<Tensor> run(Model& m, const std::vector<std::vector<int32_t>>& seqs,
                        const std::vector<std::vector<int>>& chunks, int block_size) {
  FASTLM_CHECK_ARG(block_size > 0, "block_size must be positive");
  const model::ModelConfig& c = m.config();
  const int S = static_cast<int>(seqs.size());
  int max_blocks = 1;
  int total_blocks = 0;
  for (int s = 0; s < S; ++s) {
    FASTLM_CHECK_ARG(!seqs[s].empty(), "empty token sequence");
    int sum = 0;
    for (int n : chunks[s]) {
      FASTLM_CHECK_ARG(n > 0, "chunk sizes must be positive");
      sum += n;
    }
    FASTLM_CHECK_ARG(sum == static_cast<int>(seqs[s].size()), "chunk sizes sum to ", sum,
                     ", the sequence has ", seqs[s].size(), " tokens");
    const int nb = (sum + block_size - 1) / block_size;
    max_blocks = std::max(max_blocks, nb);
    total_blocks += nb;
  }
  model::KvStorage kv =
      model::KvStorage::allocate(c.num_hidden_layers, total_blocks, block_size,
                                 c.num_key_value_heads, c.head_dim, m.compute_dtype());
  std::vector<std::vector<int32_t>> tables(S);
  int next_block = total_blocks - 1;
  for (int s = 0; s < S; ++s) {
    const int nb = (static_cast<int>(seqs[s].size()) + block_size - 1) / block_size;
    for (int i = 0; i < nb; ++i) tables[s].push_back(next_block--);
  }
  std::vector<Tensor> out(S);
  for (int s = 0; s < S; ++s) {
    out[s] = Tensor::empty({static_cast<int64_t>(seqs[s].size()), c.vocab_size}, DType::kF32);
  }
  std::vector<int> done(S, 0);
  model::BatchBuilder builder;
  for (size_t step = 0;; ++step) {
    builder.reserve(0, S, max_blocks);
    builder.begin(block_size, /*with_token_types=*/false);
    std::vector<std::pair<int, int>> rows;  // (sequence, first row) per scheduled sequence
    for (int s = 0; s < S; ++s) {
      if (step >= chunks[s].size()) continue;
      const int n = chunks[s][step];
      rows.emplace_back(s, done[s]);
      const std::vector<int32_t>& seq = seqs[s];
      const int row0 = builder.add_sequence_with_table([&seq](int pos) { return seq[pos]; },
                                                       done[s], n, tables[s]);
      for (int i = 0; i < n; ++i) builder.add_logits_row(row0 + i);
      done[s] += n;
    }
    if (rows.empty()) break;
    const ForwardBatch& b = builder.finish();
    Tensor logits = m.forward(b, kv);
    const int64_t V = c.vocab_size;
    for (size_t r = 0; r < rows.size(); ++r) {
      const auto [s, first] = rows[r];
      const int64_t begin = b.query_start_loc[r], end = b.query_start_loc[r + 1];
      std::memcpy(out[s].data<float>() + first * V, logits.data<float>() + begin * V,
                  (end - begin) * V * sizeof(float));
    }
  }
  return out;
}

}  // namespace
}  // namespace fastlm::bindings

FASTLM_BINDING(model) {
  using fastlm::bindings::run;
  using fastlm::bindings::to_numpy;
  using fastlm::model::Model;
  py::class_<Model, std::shared_ptr<Model>>(m, "Model")
      .def_property_readonly(
          "config", [](const Model& self) { return fastlm::bindings::config_dict(self.config()); })
      .def_property_readonly(
          "compute_dtype",
          [](const Model& self) { return std::string(fastlm::dtype_name(self.compute_dtype())); })
      .def_property_readonly("weight_bytes", &Model::weight_bytes)
      .def_property_readonly("mapped_weight_bytes", &Model::mapped_weight_bytes)
      .def_property_readonly("load_notes", &Model::load_notes)
      .def(
          "forward_logits",
          [](Model& self, const std::vector<int32_t>& token_ids, int block_size) {
            std::vector<fastlm::Tensor> out;
            {
              py::gil_scoped_release release;
              out = run(self, {token_ids}, {{static_cast<int>(token_ids.size())}}, block_size);
            }
            return to_numpy(out[0]);
          },
          py::arg("token_ids"), py::arg("block_size") = 16,
          "Logits [T, vocab] of one forward over the whole sequence (fresh paged cache).")
      .def(
          "forward_chunks",
          [](Model& self, const std::vector<int32_t>& token_ids, const std::vector<int>& chunks,
             int block_size) {
            std::vector<fastlm::Tensor> out;
            {
              py::gil_scoped_release release;
              out = run(self, {token_ids}, {chunks}, block_size);
            }
            return to_numpy(out[0]);
          },
          py::arg("token_ids"), py::arg("chunk_sizes"), py::arg("block_size") = 16,
          "Logits [T, vocab] of the sequence fed in chunks through one paged cache.")
      .def(
          "forward_batch",
          [](Model& self, const std::vector<std::vector<int32_t>>& seqs,
             std::vector<std::vector<int>> chunks, int block_size) {
            if (chunks.empty()) {
              for (const auto& s : seqs) chunks.push_back({static_cast<int>(s.size())});
            }
            FASTLM_CHECK_ARG(chunks.size() == seqs.size(), "one chunk list per sequence");
            std::vector<fastlm::Tensor> out;
            {
              py::gil_scoped_release release;
              out = run(self, seqs, chunks, block_size);
            }
            py::list result;
            for (const auto& t : out) result.append(to_numpy(t));
            return result;
          },
          py::arg("seqs"), py::arg("chunk_sizes") = std::vector<std::vector<int>>{},
          py::arg("block_size") = 16,
          "Several sequences in one flat batch per step; chunk_sizes[s] splits sequence s "
          "(default: whole). Returns each sequence's logits.");

  m.def(
      "load_model",
      [](const std::string& path, const std::string& dtype, const std::string& quantization) {
        fastlm::model::LoadOptions options;
        options.dtype = dtype;
        options.quantization = quantization;
        py::gil_scoped_release release;
        return std::shared_ptr<Model>(fastlm::model::load_model(path, options));
      },
      py::arg("path"), py::arg("dtype") = "auto", py::arg("quantization") = "",
      "Loads a Hugging Face folder (config.json + safetensors) or a .gguf file; quantization as "
      "vLLM's --quantization (\"\", gguf, none, q8_0, q4_0, q4_1).");
  m.def(
      "gguf_dequantize",
      [](const std::string& path, const std::string& name) {
        auto file = fastlm::model::GgufFile::open(path);
        const auto* info = file->find(name);
        FASTLM_CHECK_ARG(info != nullptr, "no tensor ", name, " in ", path);
        return to_numpy(file->dequantized(*info));
      },
      py::arg("path"), py::arg("name"),
      "A GGUF tensor dequantized to float32, row-major (reversed ne), without renaming.");
}
