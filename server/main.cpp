// qnbd: serve qcow2 and raw images over NBD.
#include "config/config.h"
#include "io/uring.h"
#include "server/cli.h"
#include "server/daemon.h"
#include "server/live_exports.h"
#include "server/open_image.h"
#include "server/reload.h"
#include "server/logging.h"
#include "server/metrics_http.h"
#include "server/server.h"
#include "server/workers.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <sys/stat.h>

#include <csignal>
#include <optional>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>

namespace {

using namespace qnbd;

// True if the process named by the config's pid file (a running qnbd) has
// `path` open: its image locks on that file are its own, not a conflict.
bool open_by_running_server(const config::Config& cfg, const std::string& path) {
  if (!cfg.pid_file) return false;
  std::ifstream f(*cfg.pid_file);
  long pid = 0;
  if (!(f >> pid) || pid <= 0) return false;
  struct stat want {};
  if (::stat(path.c_str(), &want) != 0) return false;
  std::error_code ec;
  for (const auto& fd : std::filesystem::directory_iterator(fmt::format("/proc/{}/fd", pid), ec)) {
    struct stat st {};
    if (::stat(fd.path().c_str(), &st) == 0 && st.st_dev == want.st_dev && st.st_ino == want.st_ino)
      return true;
  }
  return false;
}

// --check-config beyond the syntax: every image opens (read-only, nothing is
// changed) and its locks could be taken.
void check_images(const config::Config& cfg) {
  server::Workers one(1);
  for (const auto& e : cfg.exports) {
    std::exception_ptr failure;
    bool done = false;
    auto excuse = [&cfg](const std::string& p) { return open_by_running_server(cfg, p); };
    boost::asio::co_spawn(one.context(0), probe_image(one.ring(0), e, excuse),
                          [&](std::exception_ptr x) {
                            failure = x;
                            done = true;
                          });
    while (!done && one.context(0).run_one() > 0) {
    }
    try {
      if (failure) std::rethrow_exception(failure);
    } catch (const std::exception& x) {
      throw config::ConfigError("export '" + e.name + "': " + x.what());
    }
  }
}

// SIGHUP: re-read the config (same command line) and apply it. A config
// with any error is rejected whole and the old one keeps running.
class Reloader {
 public:
  Reloader(boost::asio::io_context& ctx, int argc, char** argv, config::Config& cfg,
           server::LiveExports& live, server::Server& srv)
      : ctx_(ctx), argc_(argc), argv_(argv), cfg_(cfg), live_(live), srv_(srv), hup_(ctx, SIGHUP) {}

  void arm() {
    hup_.async_wait([this](const boost::system::error_code& ec, int) {
      if (ec) return;
      boost::asio::co_spawn(ctx_, reload(), [this](std::exception_ptr) { arm(); });
    });
  }

 private:
  boost::asio::awaitable<void> reload() {
    spdlog::info("SIGHUP: reloading {}",
                 cfg_.config_file.empty() ? "the command line" : cfg_.config_file);
    server::daemon::notify_reloading();
    std::string status;
    try {
      config::Config next = server::parse_command_line(argc_, argv_);
      for (const auto& key : server::restart_only_changes(cfg_, next))
        spdlog::warn("reload: '{}' changed; it takes effect only after a restart", key);
      co_await live_.reload(next.exports);
      srv_.update_limits(next);
      srv_.reload_tls();
      server::set_log_level(next.log_level);
      next.listen = cfg_.listen;
      next.workers = cfg_.workers;
      next.pid_file = cfg_.pid_file;
      next.metrics = cfg_.metrics;
      cfg_ = std::move(next);
      status = fmt::format("serving {} export(s)", live_.registry().all().size());
      spdlog::info("reload done: {}", status);
    } catch (const std::exception& e) {
      status = fmt::format("reload rejected, old config kept: {}", e.what());
      spdlog::error("{}", status);
    }
    server::daemon::ready(status);
  }

  boost::asio::io_context& ctx_;
  int argc_;
  char** argv_;
  config::Config& cfg_;
  server::LiveExports& live_;
  server::Server& srv_;
  boost::asio::signal_set hup_;
};

// Drains the clients, then closes every export (writing back its caches).
boost::asio::awaitable<void> stop(server::Server& srv, server::LiveExports& live) {
  co_await srv.shutdown();
  co_await live.close_all();
}

int serve(config::Config cfg, int argc, char** argv) {
  io::require_event_loop();
  if (cfg.fork) server::daemon::fork_and_wait_for_ready();
  std::signal(SIGPIPE, SIG_IGN);
  // The event loops live until the process exits, never destroyed. Boost
  // 1.81's io_uring backend keeps an operation whose socket was closed in the
  // socket's freed slot until the cancellation's completion comes back; a
  // loop destroyed before that destroys the operation's handler (a coroutine
  // frame owning a socket) after the socket service is gone (ASan:
  // heap-use-after-free at exit). By then the clients are drained and the
  // exports closed, their caches written back.
  static auto* const main_loop = new boost::asio::io_context(1);
  boost::asio::io_context& ctx = *main_loop;
  // Not capped by the number of exports: several connections to one export
  // are spread over the workers (see server/workers.h).
  static auto* const worker_loops =
      new server::Workers(cfg.workers ? cfg.workers : server::default_worker_count());
  server::Workers& workers = *worker_loops;
  struct StopOnExit {  // also when start-up throws: no worker thread outlives serve()
    server::Workers& w;
    ~StopOnExit() { w.stop(); }
  } stop_workers{workers};
  server::LiveExports live(ctx, workers);
  live.open_initial(cfg.exports);
  workers.start();

  server::Server srv(ctx, cfg, live.registry(), workers, server::open_listeners(ctx, cfg.listen));
  srv.on_export_idle([&live](server::Export& e) { live.client_left(e); });
  srv.start();
  std::optional<server::MetricsServer> metrics;
  if (cfg.metrics) {
    metrics.emplace(ctx, *cfg.metrics, live.registry());
    metrics->start();
    spdlog::info("metrics at {}", metrics->url());
  }
  Reloader reloader(ctx, argc, argv, cfg, live, srv);
  reloader.arm();
  boost::asio::signal_set signals(ctx, SIGINT, SIGTERM);
  signals.async_wait([&](const boost::system::error_code& ec, int sig) {
    if (ec) return;
    spdlog::info("signal {} received", sig);
    server::daemon::notify_stopping();
    if (metrics) metrics->stop();
    boost::asio::co_spawn(ctx, stop(srv, live), [&](std::exception_ptr) { ctx.stop(); });
  });
  // Ready (and --fork's parent released) only now: a SIGHUP or SIGTERM sent
  // as soon as the service is up must find its handler, not kill the server.
  if (cfg.pid_file) server::daemon::write_pid_file(*cfg.pid_file);
  const auto where = fmt::format("{}", fmt::join(srv.listeners().descriptions, ", "));
  spdlog::info("qnbd {} serving {} export(s) on {}", QNBD_VERSION, cfg.exports.size(), where);
  server::daemon::ready("serving on " + where);
  ctx.run();
  workers.stop();
  if (cfg.pid_file) std::remove(cfg.pid_file->c_str());
  spdlog::info("stopped");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    server::setup_logging(config::LogLevel::warn);  // quiet while --check-config opens images
    config::Config cfg = server::parse_command_line(argc, argv, check_images);
    server::set_log_level(cfg.log_level);
    return serve(std::move(cfg), argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "qnbd: %s\n", e.what());
    return 1;
  }
}
