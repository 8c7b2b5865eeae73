#include "server/workers.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdlib>

namespace qnbd::server {

Workers::Workers(unsigned count) {
  for (unsigned i = 0; i < std::max(count, 1u); ++i) {
    auto w = std::make_unique<Worker>();
    w->ring = std::make_unique<io::Ring>(w->ctx);
    workers_.push_back(std::move(w));
  }
}

Workers::~Workers() { stop(); }

void Workers::start() {
  for (auto& w : workers_) {
    // Opening an export ran this loop (run_until_done) and, when nothing else
    // kept it busy (no file ring to watch where io_uring is denied), ran it
    // dry, which leaves an io_context stopped: run() would return at once and
    // the export's connections would never be served. Restarted here, before
    // the thread, so that a stop() right after start() is not undone.
    w->ctx.restart();
    w->thread = std::thread([ctx = &w->ctx] {
      // Work guard: the loop must outlive idle periods between clients.
      auto guard = boost::asio::make_work_guard(*ctx);
      ctx->run();
    });
  }
}

void Workers::stop() {
  for (auto& w : workers_) w->ctx.stop();
  for (auto& w : workers_)
    if (w->thread.joinable()) w->thread.join();
}

unsigned Workers::index_of(const boost::asio::io_context& ctx) const {
  for (unsigned i = 0; i < size(); ++i)
    if (&workers_[i]->ctx == &ctx) return i;
  return size();
}

unsigned default_worker_count() { return std::clamp(std::thread::hardware_concurrency(), 1u, 8u); }

}  // namespace qnbd::server
