// load_model: a Hugging Face folder (config.json + safetensors) or a .gguf file -> a Model.
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "core/status.h"
#include "model/bert.h"
#include "model/ctranslate2.h"
#include "model/decoder_pooling.h"
#include "model/llama.h"
#include "model/model.h"
#include "model/whisper.h"
#include "ops/backend.h"

namespace fastlm::model {
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  FASTLM_CHECK(in.good(), "cannot read ", path.string());
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

// Pooling checkpoints: an encoder, or a decoder with a classification head.
struct PoolingCheckpoint {
  bool encoder = false;
  std::string architecture;  // the checkpoint's own
  std::string body;          // decoder body architecture for *ForSequenceClassification
  int num_labels = 0;
};

PoolingCheckpoint classify_checkpoint(const std::string& json_text) {
  PoolingCheckpoint p;
  nlohmann::json j = nlohmann::json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return p;  // parse_hf_config reports the error
  if (j.contains("architectures") && j["architectures"].is_array() && !j["architectures"].empty() &&
      j["architectures"][0].is_string()) {
    p.architecture = j["architectures"][0].get<std::string>();
  }
  const std::string model_type = j.contains("model_type") && j["model_type"].is_string()
                                     ? j["model_type"].get<std::string>()
                                     : "";
  p.encoder = is_encoder_architecture(p.architecture) ||
              (p.architecture.empty() &&
               (model_type == "bert" || model_type == "roberta" || model_type == "xlm-roberta"));
  p.body = decoder_body_architecture(p.architecture);
  if (!p.body.empty()) {
    if (j.contains("id2label") && j["id2label"].is_object()) {
      p.num_labels = static_cast<int>(j["id2label"].size());
    } else if (j.contains("num_labels") && j["num_labels"].is_number_integer()) {
      p.num_labels = j["num_labels"].get<int>();
    } else {
      p.num_labels = 2;  // transformers' PretrainedConfig default
    }
  }
  return p;
}

// LoadOptions::quantization -> how the decoder keeps its matrices.
MatrixFormat matrix_format(const std::string& quantization, bool gguf) {
  MatrixFormat f;
  // Default: GGUF blocks stay packed and run the quantized kernels (cpu/qgemm_cpu.h: faster
  // than the dequantized bf16 path at decode, and closer to the file's own values); "none"
  // dequantizes at load.
  if (quantization == "none") {
    f.keep_packed = false;
    return f;
  }
  if (quantization.empty()) {
    f.keep_packed = gguf;
    return f;
  }
  if (quantization == "gguf") {
    FASTLM_CHECK_ARG(gguf, "--quantization gguf needs a .gguf model file");
    return f;
  }
  // Float checkpoints quantized at load to these block formats.
  for (const QType q : {QType::kQ8_0, QType::kQ4_0, QType::kQ4_1}) {
    if (quantization == qtype_name(q)) {
      f.quantize = q;
      return f;
    }
  }
  throw InvalidArgument(
      detail::concat("--quantization '", quantization,
                     "' is not supported; expected gguf, none, q8_0, q4_0 or q4_1"));
}

std::string with_architecture(const std::string& json_text, const std::string& architecture) {
  nlohmann::json j = nlohmann::json::parse(json_text);
  j["architectures"] = nlohmann::json::array({architecture});
  return j.dump();
}

}  // namespace

std::unique_ptr<Model> load_model(const std::string& path, const LoadOptions& options) {
  namespace fs = std::filesystem;
  ModelConfig config;
  std::unique_ptr<WeightSource> weights;
  FASTLM_CHECK_ARG(
      options.runner == "auto" || options.runner == "generate" || options.runner == "pooling",
      "runner must be auto, generate or pooling, got '", options.runner, "'");
  PoolingCheckpoint pooling;
  BertConfig bert;
  std::optional<WhisperConfig> whisper;
  if (ends_with(path, ".gguf") && fs::is_regular_file(path)) {
    weights = open_gguf(path, &config);
  } else if (fs::is_directory(path) && is_ctranslate2_folder(path)) {
    auto ct2 = std::make_unique<Ctranslate2Source>(path);
    whisper = whisper_config_from_ctranslate2(*ct2, path, &config);
    weights = std::move(ct2);
  } else if (fs::is_directory(path) && fs::exists(fs::path(path) / "config.json")) {
    const std::string text = read_text(fs::path(path) / "config.json");
    pooling = classify_checkpoint(text);
    if (is_whisper_config(text)) {
      whisper = parse_whisper_config(text, &config);
    } else if (pooling.encoder) {
      bert = parse_bert_config(text, &config);
    } else if (!pooling.body.empty()) {
      config = parse_hf_config(with_architecture(text, pooling.body));
    } else {
      config = parse_hf_config(text);
    }
    weights = open_safetensors(path);
  } else {
    throw InvalidArgument(detail::concat("model path '", path,
                                         "' is neither a folder with config.json or model.bin "
                                         "(CTranslate2) nor a .gguf file"));
  }

  // The backend decides what dtype=auto computes in (and what it cannot compute).
  std::vector<std::string> notes;
  const DType dtype =
      ops::backend(options.device).resolve_dtype(options.dtype, config.torch_dtype, &notes);
  MatrixFormat format = matrix_format(options.quantization, ends_with(path, ".gguf"));
  const bool pooling_only = pooling.encoder || !pooling.body.empty();
  const bool pooling_model = pooling_only || options.runner == "pooling";
  // By default a pooling model dequantizes (the packed kernels serve generating decoders);
  // asking for a quantization on one is an error.
  if (options.quantization.empty() && pooling_model) format.keep_packed = false;
  const bool packs_differently = format.quantize || format.keep_packed;
  FASTLM_CHECK_ARG(!packs_differently || !pooling_model, "--quantization ", options.quantization,
                   " applies to generating decoders only, not to pooling model ", path);
  FASTLM_CHECK_ARG(!(pooling_only && options.runner == "generate"), "model ", path, " (",
                   config.architecture.empty() ? pooling.architecture : config.architecture,
                   ") is a pooling model (embeddings / classification); it cannot run with "
                   "runner=generate");
  FASTLM_CHECK_ARG(!(whisper && options.runner == "pooling"), "model ", path,
                   " (Whisper) is a speech-to-text model; it cannot run with runner=pooling");
  FASTLM_CHECK_ARG(!whisper || options.quantization.empty() || options.quantization == "none",
                   "--quantization ", options.quantization, " is not supported for model ", path,
                   " (Whisper runs float32 or bfloat16 weights)");
  std::unique_ptr<Model> model;
  if (whisper) {
    model = std::make_unique<WhisperModel>(std::move(config), *whisper, *weights, dtype);
  } else if (pooling.encoder) {
    model = std::make_unique<BertModel>(std::move(config), bert, *weights, dtype);
  } else if (!pooling.body.empty() || options.runner == "pooling") {
    const std::string arch = pooling.body.empty() ? config.architecture : pooling.architecture;
    model = std::make_unique<DecoderPoolingModel>(std::move(config), arch, pooling.num_labels,
                                                  *weights, dtype);
  } else {
    model = std::make_unique<LlamaModel>(std::move(config), *weights, dtype, format);
  }
  for (auto& n : weights->format_notes(format.keep_packed && !pooling_model && !whisper))
    notes.push_back(std::move(n));
  for (auto& n : notes) model->add_load_note(std::move(n));
  return model;
}

}  // namespace fastlm::model
