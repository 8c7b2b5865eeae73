// Request counters for Prometheus (rendered by metrics_render.h, served by
// metrics_http.h).
//
// Threading: every block of counters (ThreadCounters) belongs to one export
// and one thread, and only that thread writes it; the scraper reads it from
// the main thread. Counters are relaxed atomics written with a plain load and
// store (no lock prefix, no shared cache line with another writer), so the
// request path pays a few ordinary instructions and the reader sees no torn
// values. A session takes its block once, on its own worker, when it starts.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace qnbd::metrics {

// The commands counted apart; anything else is `other`.
enum class Command : std::uint8_t {
  read,
  write,
  flush,
  trim,
  write_zeroes,
  block_status,
  cache,
  other,
};
inline constexpr std::size_t kCommands = 8;
Command command_of(std::uint16_t nbd_type);
std::string_view name_of(Command c);

// The errors an NBD reply can carry (NBD_EPERM ... NBD_ESHUTDOWN), by errno name.
inline constexpr std::size_t kErrors = 8;
// The slot of NBD error `nbd_error`, or kErrors - 1 (EINVAL) for a value the
// protocol does not define.
std::size_t error_slot(std::uint32_t nbd_error);
std::string_view error_name(std::size_t slot);

// Upper bounds (nanoseconds) of the latency histogram buckets; +Inf is implied.
inline constexpr std::array<std::uint64_t, 15> kLatencyBoundsNs{
    10'000,     25'000,     50'000,      100'000,     250'000,
    500'000,    1'000'000,  2'500'000,   5'000'000,   10'000'000,
    25'000'000, 50'000'000, 100'000'000, 250'000'000, 1'000'000'000};
inline constexpr std::size_t kBuckets = kLatencyBoundsNs.size() + 1;

// Written by one thread only (see above).
class Counter {
 public:
  void add(std::uint64_t n = 1) {
    v_.store(v_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
  std::uint64_t get() const { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<std::uint64_t> v_{0};
};

struct CommandCounters {
  Counter requests, bytes, duration_ns;
  std::array<Counter, kBuckets> buckets;  // not cumulative; the renderer sums
};

// One export's counters as written by one thread.
struct alignas(64) ThreadCounters {
  std::array<CommandCounters, kCommands> commands;
  std::array<Counter, kErrors> errors;
  Counter started, finished;  // requests; in flight = started - finished
  Counter connections_opened, connections_closed;

  using Clock = std::chrono::steady_clock;
  // A request was read; returns when, for finish().
  Clock::time_point start() {
    started.add();
    return Clock::now();
  }
  // Its reply is queued, with NBD error `nbd_error` (0: success).
  void finish(std::uint16_t nbd_type, std::uint64_t length, std::uint32_t nbd_error,
              Clock::time_point since);
};

// The sum over threads of one export's counters, read at scrape time.
struct ExportTotals {
  struct Cmd {
    std::uint64_t requests = 0, bytes = 0, duration_ns = 0;
    std::array<std::uint64_t, kBuckets> buckets{};
  };
  std::array<Cmd, kCommands> commands{};
  std::array<std::uint64_t, kErrors> errors{};
  std::uint64_t in_flight = 0;
  std::uint64_t connections = 0, connections_total = 0;
};

// Every export's counter blocks, by export name. Blocks live as long as the
// process, so an export removed and added again keeps counting from where it
// was (Prometheus counters must not go backwards).
class Registry {
 public:
  // The block the calling thread writes for export `name`. Takes a lock:
  // call once per connection, not per request.
  ThreadCounters& local(const std::string& name);
  // Sums of every export seen so far.
  std::map<std::string, ExportTotals> totals() const;

 private:
  struct Entry {
    std::thread::id thread;
    std::unique_ptr<ThreadCounters> counters;
  };
  mutable std::mutex mu_;
  std::map<std::string, std::vector<Entry>> exports_;
};

// The process's registry (metrics are per process, like its exports).
Registry& process();

// Why a client was turned away before it had a session (each is also logged
// with the peer). Counted per process, not per export: most happen before an
// export is named.
enum class Refusal : std::uint8_t {
  policy,             // an export's allow: rules do not match the client
  tls_required,       // an option other than STARTTLS/ABORT without TLS (mode require)
  tls_failed,         // the TLS handshake failed (certificate, PSK, garbage)
  max_connections,    // the server is full
  handshake_limit,    // closed as the oldest of too many handshakes
  handshake_timeout,  // did not finish the handshake in time
};
inline constexpr std::size_t kRefusals = 6;
std::string_view name_of(Refusal r);

// Written by the main thread only (the handshakes run there).
class Refusals {
 public:
  void add(Refusal r) { c_[static_cast<std::size_t>(r)].add(); }
  std::array<std::uint64_t, kRefusals> totals() const;

 private:
  std::array<Counter, kRefusals> c_;
};
Refusals& refusals();

}  // namespace qnbd::metrics
