#include "server/metrics.h"

#include "server/protocol.h"

#include <algorithm>

namespace qnbd::metrics {

using namespace nbd;

Command command_of(std::uint16_t t) {
  switch (t) {
    case NBD_CMD_READ:
      return Command::read;
    case NBD_CMD_WRITE:
      return Command::write;
    case NBD_CMD_FLUSH:
      return Command::flush;
    case NBD_CMD_TRIM:
      return Command::trim;
    case NBD_CMD_WRITE_ZEROES:
      return Command::write_zeroes;
    case NBD_CMD_BLOCK_STATUS:
      return Command::block_status;
    case NBD_CMD_CACHE:
      return Command::cache;
    default:
      return Command::other;
  }
}

std::string_view name_of(Command c) {
  static constexpr std::array<std::string_view, kCommands> names{
      "read", "write", "flush", "trim", "write_zeroes", "block_status", "cache", "other"};
  return names[static_cast<std::size_t>(c)];
}

namespace {
struct ErrorName {
  std::uint32_t code;
  std::string_view name;
};
// EINVAL last: it also takes codes the protocol does not define.
constexpr std::array<ErrorName, kErrors> kErrorNames{{{NBD_EPERM, "EPERM"},
                                                      {NBD_EIO, "EIO"},
                                                      {NBD_ENOMEM, "ENOMEM"},
                                                      {NBD_ENOSPC, "ENOSPC"},
                                                      {NBD_EOVERFLOW, "EOVERFLOW"},
                                                      {NBD_ENOTSUP, "ENOTSUP"},
                                                      {NBD_ESHUTDOWN, "ESHUTDOWN"},
                                                      {NBD_EINVAL, "EINVAL"}}};
}  // namespace

std::size_t error_slot(std::uint32_t e) {
  for (std::size_t i = 0; i < kErrors; ++i)
    if (kErrorNames[i].code == e) return i;
  return kErrors - 1;
}

std::string_view error_name(std::size_t slot) { return kErrorNames[slot].name; }

void ThreadCounters::finish(std::uint16_t nbd_type, std::uint64_t length, std::uint32_t nbd_error,
                            Clock::time_point since) {
  const auto ns = static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - since).count());
  CommandCounters& c = commands[static_cast<std::size_t>(command_of(nbd_type))];
  c.requests.add();
  c.bytes.add(length);
  c.duration_ns.add(ns);
  const auto b = std::lower_bound(kLatencyBoundsNs.begin(), kLatencyBoundsNs.end(), ns);
  c.buckets[static_cast<std::size_t>(b - kLatencyBoundsNs.begin())].add();
  if (nbd_error) errors[error_slot(nbd_error)].add();
  finished.add();
}

ThreadCounters& Registry::local(const std::string& name) {
  const auto me = std::this_thread::get_id();
  std::lock_guard lock(mu_);
  auto& list = exports_[name];
  for (auto& e : list)
    if (e.thread == me) return *e.counters;
  list.push_back({me, std::make_unique<ThreadCounters>()});
  return *list.back().counters;
}

namespace {
void add_to(ExportTotals& t, const ThreadCounters& c) {
  // `finished` before `started`: a request finishing meanwhile cannot make
  // the difference negative.
  const std::uint64_t finished = c.finished.get();
  t.in_flight += c.started.get() - finished;
  const std::uint64_t closed = c.connections_closed.get();
  const std::uint64_t opened = c.connections_opened.get();
  t.connections += opened - closed;
  t.connections_total += opened;
  for (std::size_t i = 0; i < kCommands; ++i) {
    const CommandCounters& from = c.commands[i];
    ExportTotals::Cmd& to = t.commands[i];
    to.requests += from.requests.get();
    to.bytes += from.bytes.get();
    to.duration_ns += from.duration_ns.get();
    for (std::size_t b = 0; b < kBuckets; ++b) to.buckets[b] += from.buckets[b].get();
  }
  for (std::size_t i = 0; i < kErrors; ++i) t.errors[i] += c.errors[i].get();
}
}  // namespace

std::map<std::string, ExportTotals> Registry::totals() const {
  std::map<std::string, ExportTotals> out;
  std::lock_guard lock(mu_);
  for (const auto& [name, list] : exports_) {
    ExportTotals& t = out[name];
    for (const auto& e : list) add_to(t, *e.counters);
  }
  return out;
}

Registry& process() {
  static Registry r;
  return r;
}

std::string_view name_of(Refusal r) {
  static constexpr std::array<std::string_view, kRefusals> names{
      "policy",          "tls_required",    "tls_failed",
      "max_connections", "handshake_limit", "handshake_timeout"};
  return names[static_cast<std::size_t>(r)];
}

std::array<std::uint64_t, kRefusals> Refusals::totals() const {
  std::array<std::uint64_t, kRefusals> t{};
  for (std::size_t i = 0; i < kRefusals; ++i) t[i] = c_[i].get();
  return t;
}

Refusals& refusals() {
  static Refusals r;
  return r;
}

}  // namespace qnbd::metrics
