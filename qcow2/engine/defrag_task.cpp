#include "qcow2/engine/defrag_task.h"

#include "qcow2/engine/image.h"

#include <spdlog/spdlog.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>

#include <algorithm>
#include <chrono>

namespace qnbd::qcow2 {
namespace {

// How long the export must have been idle before a cycle starts.
constexpr double kBusyPause = 0.05;
// Bytes one cycle moves at most: a client write that meets a moving
// cluster waits for at most this much copying.
constexpr std::uint64_t kCycleBytes = 1ull << 20;

}  // namespace

void DefragTask::start(const boost::asio::any_io_executor& ex) {
  timer_ = std::make_unique<boost::asio::steady_timer>(ex);
  running_ = true;
  boost::asio::co_spawn(ex, run(), boost::asio::detached);
}

boost::asio::awaitable<void> DefragTask::stop() {
  stopping_ = true;
  if (timer_) timer_->cancel();
  while (running_) co_await stopped_.wait();
}

boost::asio::awaitable<void> DefragTask::pause(double seconds) {
  timer_->expires_after(std::chrono::duration_cast<std::chrono::steady_clock::duration>(
      std::chrono::duration<double>(seconds)));
  co_await timer_->async_wait(boost::asio::as_tuple(boost::asio::use_awaitable));
}

namespace {
std::uint64_t reclaimable_bytes(const defrag::Stats& s, std::uint64_t cluster_size) {
  return (s.file_clusters - std::min(s.file_clusters, s.target_clusters)) * cluster_size;
}
}  // namespace

bool DefragTask::wanted(const defrag::Stats& s) const {
  return s.contiguous_fraction() < o_.threshold ||
         reclaimable_bytes(s, d_.cluster_size()) >= o_.reclaim;
}

void DefragTask::observe(const defrag::Stats& s) {
  progress_.contiguous_fraction = s.contiguous_fraction();
  progress_.reclaimable_bytes = reclaimable_bytes(s, d_.cluster_size());
}

boost::asio::awaitable<void> DefragTask::run() {
  while (!stopping_) {
    auto p = co_await d_.plan();
    if (!p) {
      spdlog::warn("{}: defrag: cannot read the layout: {}", d_.name(), p.error().message());
    } else {
      observe(p->stats);
      if (!p->steps.empty() && wanted(p->stats)) {
        progress_.active = 1;
        co_await pass(p->stats, p->steps.size());
        progress_.active = 0;
      }
    }
    if (!stopping_) co_await pause(o_.check_interval);
  }
  running_ = false;
  stopped_.notify_all();
}

boost::asio::awaitable<void> DefragTask::pass(const defrag::Stats& before, std::uint64_t steps) {
  const std::uint64_t cs = d_.cluster_size();
  spdlog::info(
      "{}: defrag: pass starts: {}/{} runs host-contiguous, {} moves planned, {} bytes "
      "reclaimable",
      d_.name(), before.contiguous_runs, before.guest_runs, steps, reclaimable_bytes(before, cs));
  const std::size_t batch = std::max<std::uint64_t>(1, std::min(kCycleBytes, o_.rate / 4) / cs);
  std::uint64_t moved = 0, total = steps, reported = 0;
  while (!stopping_) {
    if (d_.client_active()) {
      co_await pause(kBusyPause);
      continue;
    }
    auto c = co_await d_.cycle(batch);
    if (!c) {
      spdlog::warn("{}: defrag: pass stopped: {}", d_.name(), c.error().message());
      co_return;
    }
    total = std::max(total, moved + c->remaining);
    if (c->remaining == 0) break;
    moved += c->moved;
    progress_.clusters_moved += c->moved;
    if (moved * 10 / total > reported) {
      reported = moved * 10 / total;
      spdlog::info("{}: defrag: {}% ({} clusters moved)", d_.name(), reported * 10, moved);
    }
    co_await pause(static_cast<double>(c->moved * cs) / static_cast<double>(o_.rate));
  }
  if (stopping_) co_return;
  auto end = co_await d_.compact();
  auto after = co_await d_.plan();
  if (!end || !after) {
    spdlog::warn("{}: defrag: compaction failed", d_.name());
    co_return;
  }
  ++progress_.passes;
  observe(after->stats);
  spdlog::info(
      "{}: defrag: pass done: {} clusters moved, {}/{} runs host-contiguous, file {} "
      "bytes",
      d_.name(), moved, after->stats.contiguous_runs, after->stats.guest_runs, *end);
}

}  // namespace qnbd::qcow2
