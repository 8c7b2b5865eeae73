// The exports as a reload changes them (issue 10, "live exports"): opens
// the exports of the config at start-up, applies a re-read config (SIGHUP)
// all-or-nothing, and closes an export that a reload removed or changed once
// its last client has left (caches written back, dirty bit cleared, image
// locks released), reopening it with its new definition if it was changed.
// Runs on the main thread; each backend is opened and closed on its worker.
#pragma once

#include "common/wait_queue.h"
#include "config/config.h"
#include "server/export_registry.h"
#include "server/workers.h"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>

#include <vector>

namespace qnbd::server {

class LiveExports {
 public:
  LiveExports(boost::asio::io_context& main, Workers& workers) : main_(main), workers_(workers) {}

  ExportRegistry& registry() { return registry_; }
  // Before workers.start(): opens every export on its worker; throws.
  void open_initial(const std::vector<config::Export>& exports);
  // Applies `next`: opens every added export first and, if any fails, closes
  // them again and throws (nothing changed). Then removes, updates and
  // schedules reopens.
  boost::asio::awaitable<void> reload(const std::vector<config::Export>& next);
  // Called when `e` has no session left: closes it if a reload asked to.
  void client_left(Export& e);
  // At shutdown, after every client has gone.
  boost::asio::awaitable<void> close_all();

 private:
  struct Opened;
  boost::asio::awaitable<Opened> open_on_worker(const config::Export& e);
  Export& install(const config::Export& e, Opened opened);
  boost::asio::awaitable<void> close(Export& e);
  // Closes `e` (already unlisted or closing) and opens its replacement, if any.
  boost::asio::awaitable<void> retire(Export& e);
  void apply_existing(Export& e, const config::Export& next);
  // Waits until no export is being closed or reopened.
  boost::asio::awaitable<void> settle();

  boost::asio::io_context& main_;
  Workers& workers_;
  ExportRegistry registry_;
  unsigned next_worker_ = 0;
  unsigned retiring_ = 0;  // retire() coroutines running
  WaitQueue settled_;
};

}  // namespace qnbd::server
