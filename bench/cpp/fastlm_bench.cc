// fastlm_bench: drives the C++ Engine directly (no Python, no tokenizer) with random prompt
// token ids and ignore_eos, and prints tokens/s for prefill, single-stream decode and offline
// throughput, plus this machine's memory read bandwidth and the decode roofline it implies.
//
//   fastlm_bench --model PATH [--dtype bfloat16] [--prompt-len 128] [--gen-len 128] [--batch 1]
//                [--prefill-len 1024] [--num-prompts 32] [--mode decode|prefill|throughput|
//                membw|all] [--kv-cache-memory BYTES] [--repeat 3] [--json]
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "core/status.h"
#include "engine/engine.h"
#include "model/kv_storage.h"

namespace fastlm::bench {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

struct Options {
  std::string model;
  std::string dtype = "bfloat16";
  int prompt_len = 128;
  int gen_len = 128;
  int batch = 1;
  int prefill_len = 1024;
  int num_prompts = 32;
  std::string mode = "all";
  int64_t kv_cache_memory = 0;
  int max_model_len = 0;
  int max_num_batched_tokens = 0;
  int repeat = 3;
  int64_t membw_bytes = int64_t{1} << 30;
  int threads = 0;  // membw reader threads; 0 = all hardware threads
  uint64_t seed = 0;
  bool json = false;
};

const char* kUsage =
    "usage: fastlm_bench --model PATH [--dtype bfloat16] [--prompt-len 128] [--gen-len 128]\n"
    "                    [--batch 1] [--prefill-len 1024] [--num-prompts 32]\n"
    "                    [--mode decode|prefill|throughput|membw|all] [--kv-cache-memory BYTES]\n"
    "                    [--max-model-len N] [--max-num-batched-tokens N] [--repeat 3]\n"
    "                    [--membw-bytes BYTES] [--threads N] [--seed N] [--json]\n"
    "  decode:     --batch streams of --prompt-len tokens, --gen-len new tokens each\n"
    "  prefill:    one --prefill-len prompt, max_tokens=1 (time to first token), best of --repeat\n"
    "  throughput: --num-prompts prompts of --prompt-len tokens, --gen-len new tokens each\n"
    "  membw:      multi-threaded streaming read of --membw-bytes (the decode roofline;\n"
    "              best of 1, 4 and 8 interleaved streams per thread)\n";

int64_t parse_int(const std::string& flag, const std::string& value) {
  size_t pos = 0;
  int64_t v = 0;
  try {
    v = std::stoll(value, &pos);
  } catch (const std::exception&) {
    pos = 0;
  }
  FASTLM_CHECK_ARG(pos == value.size() && !value.empty(), flag, " takes an integer, got '", value,
                   "'");
  return v;
}

Options parse_args(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "-h" || flag == "--help") {
      std::cout << kUsage;
      std::exit(0);
    }
    if (flag == "--json") {
      o.json = true;
      continue;
    }
    FASTLM_CHECK_ARG(i + 1 < argc, flag, " needs a value\n", kUsage);
    const std::string value = argv[++i];
    if (flag == "--model") {
      o.model = value;
    } else if (flag == "--dtype") {
      o.dtype = value;
    } else if (flag == "--prompt-len") {
      o.prompt_len = static_cast<int>(parse_int(flag, value));
    } else if (flag == "--gen-len") {
      o.gen_len = static_cast<int>(parse_int(flag, value));
    } else if (flag == "--batch") {
      o.batch = static_cast<int>(parse_int(flag, value));
    } else if (flag == "--prefill-len") {
      o.prefill_len = static_cast<int>(parse_int(flag, value));
    } else if (flag == "--num-prompts") {
      o.num_prompts = static_cast<int>(parse_int(flag, value));
    } else if (flag == "--mode") {
      o.mode = value;
    } else if (flag == "--kv-cache-memory") {
      o.kv_cache_memory = parse_int(flag, value);
    } else if (flag == "--max-model-len") {
      o.max_model_len = static_cast<int>(parse_int(flag, value));
    } else if (flag == "--max-num-batched-tokens") {
      o.max_num_batched_tokens = static_cast<int>(parse_int(flag, value));
    } else if (flag == "--repeat") {
      o.repeat = static_cast<int>(parse_int(flag, value));
    } else if (flag == "--membw-bytes") {
      o.membw_bytes = parse_int(flag, value);
    } else if (flag == "--threads") {
      o.threads = static_cast<int>(parse_int(flag, value));
    } else if (flag == "--seed") {
      o.seed = static_cast<uint64_t>(parse_int(flag, value));
    } else {
      throw InvalidArgument("unknown flag '" + flag + "'\n" + kUsage);
    }
  }
  const bool known_mode = o.mode == "decode" || o.mode == "prefill" || o.mode == "throughput" ||
                          o.mode == "membw" || o.mode == "all";
  FASTLM_CHECK_ARG(known_mode, "--mode must be decode, prefill, throughput, membw or all, got '",
                   o.mode, "'");
  FASTLM_CHECK_ARG(o.mode == "membw" || !o.model.empty(), "--model is required\n", kUsage);
  FASTLM_CHECK_ARG(o.prompt_len >= 1 && o.gen_len >= 2 && o.batch >= 1 && o.prefill_len >= 1 &&
                       o.num_prompts >= 1 && o.repeat >= 1,
                   "lengths, counts and --repeat must be positive (--gen-len at least 2)");
  FASTLM_CHECK_ARG(o.membw_bytes >= (int64_t{1} << 20), "--membw-bytes must be at least 1 MiB");
  FASTLM_CHECK_ARG(o.threads >= 0, "--threads must be >= 0");
  return o;
}

// Sums `streams` equal parts of [p, p + count) side by side, 64 bytes of each per step (the
// compiler vectorizes the 8 lanes). The decode GEMV reads 4 weight panels at once: on this VM
// one sequential stream per core reads at half the rate of 4 (the prefetchers follow each
// stream separately), so a single stream would understate the decode roofline.
template <int S>
uint64_t sum_streams(const uint64_t* p, int64_t count) {
  const int64_t len = count / S / 8 * 8;
  uint64_t acc[S][8] = {};
  for (int64_t i = 0; i < len; i += 8) {
#pragma GCC unroll 8
    for (int s = 0; s < S; ++s) {
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j) acc[s][j] += p[s * len + i + j];
    }
  }
  uint64_t total = 0;
  for (int s = 0; s < S; ++s)
    for (int j = 0; j < 8; ++j) total += acc[s][j];
  for (int64_t i = S * len; i < count; ++i) total += p[i];
  return total;
}

// Streaming read bandwidth in bytes/s: the ceiling for decode, which reads every weight once
// per step. Each thread sums its own slice, which it also first-touched, as 1, 4 or 8
// interleaved streams; the best pass of any of them counts.
double measure_read_bandwidth(int64_t bytes, int threads) {
  if (threads <= 0) threads = std::max(1u, std::thread::hardware_concurrency());
  const int64_t n = bytes / static_cast<int64_t>(sizeof(uint64_t));
  std::unique_ptr<uint64_t[]> buf(new uint64_t[n]);
  auto slice = [&](int t) {
    return std::pair<int64_t, int64_t>{n * t / threads, n * (t + 1) / threads};
  };
  auto parallel = [&](auto&& body) {
    std::vector<std::thread> pool;
    for (int t = 1; t < threads; ++t) pool.emplace_back(body, t);
    body(0);
    for (std::thread& th : pool) th.join();
  };
  parallel([&](int t) {
    auto [b, e] = slice(t);
    for (int64_t i = b; i < e; ++i) buf[i] = static_cast<uint64_t>(i);
  });
  using SumFn = uint64_t (*)(const uint64_t*, int64_t);
  const SumFn kinds[] = {&sum_streams<1>, &sum_streams<4>, &sum_streams<8>};
  std::vector<uint64_t> sums(static_cast<size_t>(threads) * 8);  // a cache line apart
  const uint64_t expect = static_cast<uint64_t>(n) * static_cast<uint64_t>(n - 1) / 2;
  double best = 0.0;
  for (int pass = 0; pass < 3; ++pass) {
    for (SumFn sum : kinds) {
      const Clock::time_point start = Clock::now();
      parallel([&](int t) {
        auto [b, e] = slice(t);
        sums[static_cast<size_t>(t) * 8] = sum(buf.get() + b, e - b);
      });
      const double dt = seconds_since(start);
      best = std::max(best, static_cast<double>(n * sizeof(uint64_t)) / dt);
      uint64_t check = 0;
      for (int t = 0; t < threads; ++t) check += sums[static_cast<size_t>(t) * 8];
      FASTLM_CHECK(check == expect, "membw: the read checksum is wrong");
    }
  }
  return best;
}

class Bench {
 public:
  explicit Bench(const Options& o) : o_(o), rng_(o.seed) {}

  void load() {
    engine::EngineConfig cfg;
    cfg.model = o_.model;
    cfg.dtype = o_.dtype;
    cfg.kv_cache_memory = o_.kv_cache_memory;
    cfg.max_model_len = o_.max_model_len;
    cfg.max_num_batched_tokens = o_.max_num_batched_tokens;
    cfg.max_num_seqs = std::max({256, o_.batch, o_.num_prompts});
    // Random prompts never share blocks anyway; off so repeated runs time real prefill.
    cfg.enable_prefix_caching = false;
    cfg.seed = o_.seed;
    const Clock::time_point start = Clock::now();
    engine_ = std::make_unique<engine::Engine>(cfg);
    load_seconds_ = seconds_since(start);
    const model::ModelConfig& mc = engine_->model_config();
    vocab_ = mc.vocab_size;
    kv_bytes_per_token_ = model::KvStorage::bytes_per_block(
        mc.num_hidden_layers, 1, mc.num_key_value_heads, mc.head_dim, engine_->compute_dtype());
  }

  engine::Engine& engine() { return *engine_; }
  double load_seconds() const { return load_seconds_; }
  size_t kv_bytes_per_token() const { return kv_bytes_per_token_; }

  std::vector<int32_t> random_prompt(int len) {
    std::uniform_int_distribution<int32_t> dist(0, vocab_ - 1);
    std::vector<int32_t> ids(static_cast<size_t>(len));
    for (int32_t& t : ids) t = dist(rng_);
    return ids;
  }

  struct Run {
    double total_s = 0;        // add_request -> last request finished
    double first_token_s = 0;  // add_request -> every request has its first token
    int64_t generated = 0;
    int64_t decode_tokens = 0;  // tokens of the steps after every request had its first one
    std::vector<double> decode_step_s;
  };

  // Serves `count` prompts of `prompt_len` tokens, `gen_len` new tokens each, to completion.
  Run run(int count, int prompt_len, int gen_len) {
    sched::SamplingParams p;
    p.temperature = 0.0f;
    p.max_tokens = gen_len;
    p.ignore_eos = true;
    std::vector<std::vector<int32_t>> prompts;
    for (int i = 0; i < count; ++i) prompts.push_back(random_prompt(prompt_len));
    Run r;
    std::unordered_map<std::string, bool> started;
    const Clock::time_point start = Clock::now();
    for (int i = 0; i < count; ++i) {
      engine_->add_request("b" + std::to_string(next_id_++), std::move(prompts[i]), p);
    }
    int finished = 0;
    while (finished < count) {
      const bool all_started = static_cast<int>(started.size()) == count;
      const Clock::time_point step_start = Clock::now();
      std::vector<engine::RequestOutputDelta> deltas = engine_->step();
      const double step_s = seconds_since(step_start);
      if (all_started) r.decode_step_s.push_back(step_s);
      for (const engine::RequestOutputDelta& d : deltas) {
        FASTLM_CHECK(d.error.empty(), "request ", d.request_id, " failed: ", d.error);
        r.generated += static_cast<int64_t>(d.new_token_ids.size());
        if (all_started) r.decode_tokens += static_cast<int64_t>(d.new_token_ids.size());
        if (!d.new_token_ids.empty()) started[d.request_id] = true;
        if (d.finished) finished++;
      }
      if (!all_started && static_cast<int>(started.size()) == count) {
        r.first_token_s = seconds_since(start);
      }
      FASTLM_CHECK(!deltas.empty() || engine_->has_unfinished(),
                   "the engine went idle with requests pending");
    }
    r.total_s = seconds_since(start);
    FASTLM_CHECK(r.generated == static_cast<int64_t>(count) * gen_len, "expected ",
                 static_cast<int64_t>(count) * gen_len, " tokens, got ", r.generated,
                 " (ignore_eos should make every request run to max_tokens)");
    return r;
  }

 private:
  const Options& o_;
  std::mt19937 rng_;
  std::unique_ptr<engine::Engine> engine_;
  double load_seconds_ = 0;
  int vocab_ = 0;
  size_t kv_bytes_per_token_ = 0;
  uint64_t next_id_ = 0;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int run_main(const Options& o) {
  using nlohmann::json;
  json out;
  out["mode"] = o.mode;
  // Human-readable lines go to stderr when stdout carries the JSON.
  std::ostream& log = o.json ? std::cerr : std::cout;
  auto line = [&](const char* fmt, auto... args) {
    char buf[512];
    std::snprintf(buf, sizeof(buf), fmt, args...);
    log << buf << "\n" << std::flush;
  };
  const bool all = o.mode == "all";

  double membw = 0.0;
  if (all || o.mode == "membw") {
    membw = measure_read_bandwidth(o.membw_bytes, o.threads);
    out["membw_gbs"] = membw / 1e9;
    line("memory read bandwidth: %.2f GB/s (%lld MiB, %u threads)", membw / 1e9,
         static_cast<long long>(o.membw_bytes >> 20),
         o.threads > 0 ? static_cast<unsigned>(o.threads) : std::thread::hardware_concurrency());
  }
  if (o.mode == "membw") {
    if (o.json) std::cout << out.dump(2) << std::endl;
    return 0;
  }

  Bench bench(o);
  bench.load();
  engine::Engine& eng = bench.engine();
  out["model"] = o.model;
  out["dtype"] = dtype_name(eng.compute_dtype());
  out["weight_bytes"] = eng.weight_bytes();
  out["kv_cache_bytes"] = eng.kv_cache_bytes();
  out["load_s"] = bench.load_seconds();
  line("model %s: dtype %s, weights %.1f MB, KV cache %.1f MB (%d blocks), loaded in %.2f s",
       o.model.c_str(), dtype_name(eng.compute_dtype()), eng.weight_bytes() / 1e6,
       eng.kv_cache_bytes() / 1e6, eng.num_blocks(), bench.load_seconds());

  // Warm-up: first-use costs (page faults on the weights, kernel/primitive set-up).
  bench.run(1, std::min(o.prompt_len, 32), 4);

  if (all || o.mode == "prefill") {
    std::vector<double> times;
    for (int i = 0; i < o.repeat; ++i) times.push_back(bench.run(1, o.prefill_len, 1).total_s);
    const double best = *std::min_element(times.begin(), times.end());
    json j;
    j["prompt_len"] = o.prefill_len;
    j["ttft_s"] = best;
    j["ttft_median_s"] = median(times);
    j["tokens_per_s"] = o.prefill_len / best;
    out["prefill"] = j;
    line("prefill: %d-token prompt, time to first token %.1f ms (best of %d) -> %.1f tokens/s",
         o.prefill_len, best * 1e3, o.repeat, o.prefill_len / best);
  }

  if (all || o.mode == "decode") {
    Bench::Run r = bench.run(o.batch, o.prompt_len, o.gen_len);
    // Tokens produced after every stream had its first one, over the time that took.
    const double tps = r.decode_tokens / (r.total_s - r.first_token_s);
    json j;
    j["batch"] = o.batch;
    j["prompt_len"] = o.prompt_len;
    j["gen_len"] = o.gen_len;
    j["ttft_s"] = r.first_token_s;
    j["total_s"] = r.total_s;
    j["tokens_per_s"] = tps;
    j["end_to_end_tokens_per_s"] = r.generated / r.total_s;
    j["step_ms_median"] = median(r.decode_step_s) * 1e3;
    j["step_ms_min"] = *std::min_element(r.decode_step_s.begin(), r.decode_step_s.end()) * 1e3;
    line(
        "decode: batch %d, %d-token prompt, %d new tokens: %.2f tokens/s (step median %.2f ms, "
        "min %.2f ms; first token %.1f ms; end-to-end %.2f tokens/s)",
        o.batch, o.prompt_len, o.gen_len, tps, median(r.decode_step_s) * 1e3,
        j["step_ms_min"].get<double>(), r.first_token_s * 1e3, r.generated / r.total_s);
    // Each decode step reads every weight once and each stream's KV so far (mean context).
    const double mean_ctx = o.prompt_len + (o.gen_len - 1) / 2.0;
    const double bytes_per_step =
        static_cast<double>(eng.weight_bytes()) +
        o.batch * mean_ctx * static_cast<double>(bench.kv_bytes_per_token());
    j["bytes_per_step"] = bytes_per_step;
    if (membw > 0) {
      const double roofline = membw / bytes_per_step * o.batch;
      j["roofline_tokens_per_s"] = roofline;
      j["fraction_of_roofline"] = tps / roofline;
      line("decode roofline: %.2f GB/s / %.1f MB per step = %.1f tokens/s; achieved %.1f%%",
           membw / 1e9, bytes_per_step / 1e6, roofline, 100.0 * tps / roofline);
    }
    out["decode"] = j;
  }

  if (all || o.mode == "throughput") {
    Bench::Run r = bench.run(o.num_prompts, o.prompt_len, o.gen_len);
    const double tps = r.generated / r.total_s;
    json j;
    j["num_prompts"] = o.num_prompts;
    j["prompt_len"] = o.prompt_len;
    j["gen_len"] = o.gen_len;
    j["total_s"] = r.total_s;
    j["first_token_s"] = r.first_token_s;  // the prefill phase: every prompt has a token
    j["tokens_per_s"] = tps;
    j["total_tokens_per_s"] =
        static_cast<double>(o.num_prompts) * (o.prompt_len + o.gen_len) / r.total_s;
    j["decode_step_ms_median"] = median(r.decode_step_s) * 1e3;
    out["throughput"] = j;
    line(
        "throughput: %d prompts x (%d prompt + %d new) tokens in %.2f s: %.1f generated "
        "tokens/s (%.1f total tokens/s; every prompt had its first token after %.2f s; "
        "batched decode step median %.1f ms)",
        o.num_prompts, o.prompt_len, o.gen_len, r.total_s, tps,
        j["total_tokens_per_s"].get<double>(), r.first_token_s, median(r.decode_step_s) * 1e3);
  }
  if (o.json) std::cout << out.dump(2) << std::endl;
  return 0;
}

}  // namespace
}  // namespace fastlm::bench

int main(int argc, char** argv) {
  try {
    return fastlm::bench::run_main(fastlm::bench::parse_args(argc, argv));
  } catch (const fastlm::InvalidArgument& e) {
    std::cerr << "fastlm_bench: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "fastlm_bench: error: " << e.what() << "\n";
    return 1;
  }
}
