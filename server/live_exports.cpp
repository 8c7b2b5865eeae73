#include "server/live_exports.h"

#include "common/run_sync.h"
#include "server/open_image.h"
#include "server/reload.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <spdlog/spdlog.h>

#include <exception>
#include <map>
#include <stdexcept>

namespace qnbd::server {

using boost::asio::awaitable;
using boost::asio::use_awaitable;

struct LiveExports::Opened {
  OpenedImage image;
  unsigned worker = 0;
};

namespace {

// Runs `aw` to completion on ctx (whose loop is not running yet); rethrows.
template <class T>
T run_sync(boost::asio::io_context& ctx, awaitable<T> aw) {
  auto value = run_until_done(ctx, std::move(aw));
  if (!value) throw std::logic_error("opening an image never finished");
  return std::move(*value);
}

std::string label(const std::string& name) { return "export '" + name + "'"; }

}  // namespace

awaitable<void> close_image(const std::string& name, std::unique_ptr<BlockBackend>& backend,
                            std::vector<io::ImageLock>& locks, boost::asio::io_context& home);

Export& LiveExports::install(const config::Export& e, Opened opened) {
  auto& x = registry_.add(e, std::move(opened.image.backend), std::move(opened.image.locks),
                          workers_.context(opened.worker));
  spdlog::info("export '{}': {} ({} bytes{})", x.name, e.path, x.size,
               x.caps.read_only ? ", read-only" : "");
  return x;
}

void LiveExports::open_initial(const std::vector<config::Export>& exports) {
  for (const auto& e : exports) {
    Opened o;
    o.worker = next_worker_++ % workers_.size();
    o.image = run_sync(workers_.context(o.worker), open_image(workers_.ring(o.worker), e));
    install(e, std::move(o));
  }
}

awaitable<LiveExports::Opened> LiveExports::open_on_worker(const config::Export& e) {
  Opened o;
  o.worker = next_worker_++ % workers_.size();
  io::Ring& ring = workers_.ring(o.worker);
  o.image = co_await boost::asio::co_spawn(workers_.context(o.worker), open_image(ring, e),
                                           use_awaitable);
  co_return o;
}

// Writes back and frees `backend` on its worker (its files belong to that
// worker's ring), then drops the image locks.
awaitable<void> close_image(const std::string& name, std::unique_ptr<BlockBackend>& backend,
                            std::vector<io::ImageLock>& locks, boost::asio::io_context& home) {
  if (!backend) co_return;
  auto r = co_await boost::asio::co_spawn(
      home.get_executor(),
      [&backend]() -> task<> {
        auto r = co_await backend->close();
        backend.reset();
        co_return r;
      },
      use_awaitable);
  locks.clear();
  if (!r)
    spdlog::error("export '{}': closing failed: {}", name, r.error().message());
  else
    spdlog::info("export '{}': closed, image lock released", name);
}

awaitable<void> LiveExports::close(Export& e) {
  co_await close_image(e.name, e.backend, e.locks, *e.home);
}

awaitable<void> LiveExports::settle() {
  while (retiring_ > 0) co_await settled_.wait();
}

awaitable<void> LiveExports::reload(const std::vector<config::Export>& next) {
  co_await settle();  // an export being reopened is neither listed nor gone
  std::vector<config::Export> current;
  for (const auto& e : registry_.all()) current.push_back(e->cfg);
  const auto plan = plan_exports(current, next);
  // Open the new exports first, so a failure leaves everything as it was.
  std::map<std::string, Opened> opened;
  std::string failure;  // no co_await in a catch block
  for (const auto& a : plan) {
    if (a.kind != ExportAction::add || registry_.find_unlisted_open(a.name)) continue;
    try {
      opened.emplace(a.name, co_await open_on_worker(a.next));
    } catch (const std::exception& err) {
      failure = label(a.name) + ": " + err.what();
      break;
    }
  }
  if (!failure.empty()) {
    for (auto& [name, o] : opened)
      co_await close_image(name, o.image.backend, o.image.locks, workers_.context(o.worker));
    throw std::runtime_error(failure);
  }
  for (const auto& a : plan) {
    if (a.kind == ExportAction::remove) {
      Export& e = *registry_.find(a.name);
      e.replacement.reset();
      registry_.unlist(e);
      spdlog::info("export '{}': removed; {} client(s) still connected", e.name, e.connections);
      if (e.connections == 0) boost::asio::co_spawn(main_, retire(e), boost::asio::detached);
    } else if (a.kind == ExportAction::add) {
      if (Export* back = registry_.find_unlisted_open(a.name)) {
        registry_.relist(*back);  // removed earlier, its clients still there
        apply_existing(*back, a.next);
      } else {
        install(a.next, std::move(opened.at(a.name)));
      }
    } else {
      apply_existing(*registry_.find(a.name), a.next);
    }
  }
  // Unchanged exports whose change a reload asked for earlier: cancelled.
  for (const auto& e : registry_.all())
    if (e->replacement && !needs_reopen(e->cfg, *e->replacement)) e->replacement.reset();
}

void LiveExports::apply_existing(Export& e, const config::Export& next) {
  e.description = next.description;
  e.cfg.description = next.description;
  e.allow = next.allow;
  e.cfg.allow = next.allow;
  if (!needs_reopen(e.cfg, next)) {
    e.replacement.reset();
    spdlog::info("export '{}': updated", e.name);
    return;
  }
  e.replacement = next;
  spdlog::info("export '{}': changed; reopened once its {} client(s) have left", e.name,
               e.connections);
  if (e.connections == 0) client_left(e);
}

void LiveExports::client_left(Export& e) {
  if (e.connections > 0 || e.closing) return;
  const bool listed = registry_.listed(&e);
  if (listed && !e.replacement) return;
  if (listed) registry_.unlist(e);
  boost::asio::co_spawn(main_, retire(e), boost::asio::detached);
}

awaitable<void> LiveExports::retire(Export& e) {
  if (e.closing) co_return;
  e.closing = true;
  ++retiring_;
  const auto replacement = e.replacement;
  co_await close(e);
  registry_.mark_closed(e);
  if (replacement) {
    std::string failure;
    try {
      install(*replacement, co_await open_on_worker(*replacement));
    } catch (const std::exception& err) {
      failure = err.what();
    }
    if (!failure.empty())
      spdlog::error("export '{}': reopening failed, not served: {}", replacement->name, failure);
  }
  --retiring_;
  settled_.notify_all();
}

awaitable<void> LiveExports::close_all() {
  co_await settle();
  for (auto& e : registry_.all()) co_await close(*e);
  for (Export* e : registry_.unlisted_open()) co_await close(*e);
}

}  // namespace qnbd::server
