// The exports a server offers, by name, and those a reload took off the list
// that are still open (clients connected) or recently closed. Main thread
// only. A session holds a plain pointer to its export, which stays open
// until the last session leaves; an unlisted export's memory is kept until no
// handshake that started before it was closed can still hold its pointer.
#pragma once

#include "backend/block_backend.h"
#include "config/config.h"
#include "io/image_lock.h"

#include <boost/asio/io_context.hpp>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace qnbd::server {

struct Export {
  std::string name;
  std::string description;
  config::Export cfg;  // the definition it was opened with
  std::unique_ptr<BlockBackend> backend;
  std::vector<io::ImageLock> locks;  // released once the backend is closed
  Capabilities caps;
  std::uint64_t size = 0;
  unsigned connections = 0;                 // touched on the main thread only
  boost::asio::io_context* home = nullptr;  // the worker that owns the backend
  std::vector<config::AllowRule> allow;     // who may use it (server/authz.h)
  // Reload state. A listed export with a replacement serves new clients as
  // it is until the last one leaves, then is reopened as the replacement.
  std::optional<config::Export> replacement;
  bool closing = false;  // closed or being closed: takes no new session
  // Metadata contexts offered besides base:allocation, e.g.
  // "qemu:dirty-bitmap:NAME"; context id = kBaseAllocationId + 1 + index.
  std::vector<std::string> contexts;
};

class ExportRegistry {
 public:
  using Clock = std::chrono::steady_clock;

  Export& add(config::Export cfg, std::unique_ptr<BlockBackend> backend,
              std::vector<io::ImageLock> locks, boost::asio::io_context& home);
  // A listed export (the ones clients can pick).
  Export* find(std::string_view name);
  const Export* find(std::string_view name) const;
  const std::vector<std::unique_ptr<Export>>& all() const { return exports_; }
  bool listed(const Export* e) const;
  // An unlisted export that is still open (removed, clients connected).
  Export* find_unlisted_open(std::string_view name);
  // Takes `e` off the list (new clients no longer find it); it stays open.
  void unlist(Export& e);
  // Puts an unlisted, still open export back on the list.
  void relist(Export& e);
  // Unlisted exports still open, to be closed at shutdown.
  std::vector<Export*> unlisted_open() const;
  // Frees closed unlisted exports closed before `oldest_handshake` started
  // (pass Clock::now() when no handshake is in progress).
  void collect(Clock::time_point oldest_handshake);
  void mark_closed(Export& e);

 private:
  struct Unlisted {
    std::unique_ptr<Export> exp;
    std::optional<Clock::time_point> closed_at;
  };
  std::vector<std::unique_ptr<Export>> exports_;
  std::vector<Unlisted> unlisted_;
};

}  // namespace qnbd::server
