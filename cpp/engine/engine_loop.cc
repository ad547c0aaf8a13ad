// The engine thread: steps while requests are live and fails every live request when a step
// throws; the stats snapshot published after each step.
#include <unistd.h>

#include "core/status.h"
#include "engine/engine.h"

namespace fastlm::engine {

void Engine::start_loop() {
  if (running_loop_.exchange(true)) return;
  stop_ = false;
  thread_ = std::thread([this] { loop(); });
}

void Engine::stop_loop() {
  if (!running_loop_.exchange(false)) return;
  {
    std::lock_guard<std::mutex> lk(inbox_mu_);
    stop_ = true;
  }
  inbox_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Engine::loop() {
  while (true) {
    {
      std::unique_lock<std::mutex> lk(inbox_mu_);
      inbox_cv_.wait(lk, [&] {
        return stop_.load() || !inbox_.empty() || !inbox_aborts_.empty() || !live_ids_.empty();
      });
      if (stop_) return;
    }
    try {
      std::vector<RequestOutputDelta> deltas;
      {
        std::lock_guard<std::mutex> lk(step_mu_);
        deltas = step_locked();
      }
      push_outputs(std::move(deltas));
    } catch (const std::exception& e) {
      // A failed step leaves the batch in an unknown state: fail every live request, stop.
      std::vector<RequestOutputDelta> failed;
      {
        std::lock_guard<std::mutex> lk(inbox_mu_);
        for (auto& [id, live] : live_ids_) {
          RequestOutputDelta d;
          d.request_id = id;
          d.finished = true;
          d.finish_reason = "abort";
          d.error = e.what();
          failed.push_back(std::move(d));
        }
        live_ids_.clear();
        inbox_.clear();
        stop_ = true;
      }
      {
        std::lock_guard<std::mutex> lk(out_mu_);
        fatal_error_ = e.what();
      }
      push_outputs(std::move(failed));
      const uint64_t one = 1;
      [[maybe_unused]] ssize_t n = write(event_fd_, &one, sizeof(one));
      return;
    }
  }
}

void Engine::publish_stats() {
  EngineStats s = counters_;
  const sched::SchedulerStats ss = scheduler_->stats();
  s.num_running = ss.num_running;
  s.num_waiting = ss.num_waiting;
  s.num_blocks = num_blocks_;
  s.num_free_blocks = scheduler_->kv().num_free_blocks();
  s.kv_usage = ss.kv_usage;
  s.prefix_cache_queries = static_cast<int64_t>(ss.prefix_cache_queries);
  s.prefix_cache_hits = static_cast<int64_t>(ss.prefix_cache_hits);
  s.num_preemptions = static_cast<int64_t>(ss.num_preemptions);
  std::lock_guard<std::mutex> lk(stats_mu_);
  stats_ = s;
}

EngineStats Engine::stats() const {
  // A snapshot taken at the end of the last step: never waits for a running step (the
  // server's /metrics reads it from the event loop).
  std::lock_guard<std::mutex> lk(stats_mu_);
  return stats_;
}

}  // namespace fastlm::engine
