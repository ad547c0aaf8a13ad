// load_model: a Hugging Face folder (config.json + safetensors) or a .gguf file -> LlamaModel.
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/status.h"
#include "model/llama.h"
#include "model/model.h"

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

}  // namespace

std::unique_ptr<Model> load_model(const std::string& path, const LoadOptions& options) {
  namespace fs = std::filesystem;
  ModelConfig config;
  std::unique_ptr<WeightSource> weights;
  if (ends_with(path, ".gguf") && fs::is_regular_file(path)) {
    weights = open_gguf(path, &config);
  } else if (fs::is_directory(path) && fs::exists(fs::path(path) / "config.json")) {
    config = parse_hf_config(read_text(fs::path(path) / "config.json"));
    weights = open_safetensors(path);
  } else {
    throw InvalidArgument(detail::concat(
        "model path '", path, "' is neither a folder with config.json nor a .gguf file"));
  }

  // "auto" follows the checkpoint (GGUF: float32 when every tensor is, else bfloat16).
  DType dtype;
  if (options.dtype == "auto") {
    dtype = config.torch_dtype;
  } else {
    try {
      dtype = parse_dtype(options.dtype);
    } catch (const Error& e) {
      throw InvalidArgument(e.what());
    }
  }
  std::vector<std::string> notes;
  if (dtype == DType::kF16) {
    // float16 -> float32 is exact; CPU kernels have no float16 compute path.
    notes.push_back("float16 weights are computed in float32 (no CPU float16 compute)");
    dtype = DType::kF32;
  }
  auto model = std::make_unique<LlamaModel>(std::move(config), *weights, dtype);
  for (auto& n : notes) model->add_load_note(std::move(n));
  return model;
}

}  // namespace fastlm::model
