// qnbd: serve qcow2 and raw images over NBD.
#include "server/open_image.h"
#include "config/config.h"
#include "io/uring.h"
#include "server/cli.h"
#include "server/daemon.h"
#include "server/server.h"
#include "server/workers.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <csignal>
#include <cstdio>
#include <exception>

namespace {

using namespace qnbd;

spdlog::level::level_enum to_spdlog(config::LogLevel l) {
  switch (l) {
    case config::LogLevel::trace:
      return spdlog::level::trace;
    case config::LogLevel::debug:
      return spdlog::level::debug;
    case config::LogLevel::info:
      return spdlog::level::info;
    case config::LogLevel::warn:
      return spdlog::level::warn;
    case config::LogLevel::error:
      return spdlog::level::err;
  }
  return spdlog::level::info;
}

void setup_logging(config::LogLevel level) {
  auto logger = spdlog::stderr_color_mt("qnbd");
  logger->set_pattern("[%Y-%m-%d %H:%M:%S.%e] [%^%l%$] %v");
  logger->set_level(to_spdlog(level));
  spdlog::set_default_logger(logger);
}

// Runs `aw` to completion on ctx; rethrows its exception (start-up errors).
void run_sync(boost::asio::io_context& ctx, boost::asio::awaitable<void> aw) {
  std::exception_ptr failure;
  bool done = false;
  boost::asio::co_spawn(ctx, std::move(aw), [&](std::exception_ptr e) {
    failure = e;
    done = true;
  });
  while (!done && ctx.run_one() > 0) {
  }
  if (failure) std::rethrow_exception(failure);
}

boost::asio::awaitable<void> open_one(io::Ring& ring, const config::Export& e,
                                      std::unique_ptr<BlockBackend>& out) {
  out = co_await open_image(ring, e);
}

// Each export is opened on (and from then on owned by) its worker.
void open_exports(server::Workers& workers, const config::Config& cfg,
                  server::ExportRegistry& exports) {
  unsigned next = 0;
  for (const auto& e : cfg.exports) {
    unsigned w = next++ % workers.size();
    std::unique_ptr<BlockBackend> backend;
    run_sync(workers.context(w), open_one(workers.ring(w), e, backend));
    auto& x = exports.add(e.name, e.description, std::move(backend), workers.context(w));
    x.allow = e.allow;
    spdlog::info("export '{}': {} ({} bytes{})", x.name, e.path, x.size,
                 x.caps.read_only ? ", read-only" : "");
  }
}

int serve(const config::Config& cfg) {
  if (cfg.fork) server::daemon::fork_and_wait_for_ready();
  std::signal(SIGPIPE, SIG_IGN);
  boost::asio::io_context ctx(1);
  // Not capped by the number of exports: several connections to one export
  // are spread over the workers (see server/workers.h).
  server::Workers workers(cfg.workers ? cfg.workers : server::default_worker_count());
  server::ExportRegistry exports;
  open_exports(workers, cfg, exports);
  workers.start();

  server::Server srv(ctx, cfg, exports, workers, server::open_listeners(ctx, cfg.listen));
  srv.start();
  if (cfg.pid_file) server::daemon::write_pid_file(*cfg.pid_file);
  const auto where = fmt::format("{}", fmt::join(srv.listeners().descriptions, ", "));
  spdlog::info("qnbd {} serving {} export(s) on {}", QNBD_VERSION, cfg.exports.size(), where);
  server::daemon::ready("serving on " + where);

  boost::asio::signal_set signals(ctx, SIGINT, SIGTERM);
  signals.async_wait([&](const boost::system::error_code& ec, int sig) {
    if (ec) return;
    spdlog::info("signal {} received", sig);
    server::daemon::notify_stopping();
    boost::asio::co_spawn(ctx, srv.shutdown(), [&](std::exception_ptr) { ctx.stop(); });
  });
  ctx.run();
  workers.stop();
  if (cfg.pid_file) std::remove(cfg.pid_file->c_str());
  spdlog::info("stopped");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    config::Config cfg = server::parse_command_line(argc, argv);
    setup_logging(cfg.log_level);
    return serve(cfg);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "qnbd: %s\n", e.what());
    return 1;
  }
}
