// Guest clusters that requests are working on. A request that changes the
// mapping of clusters (allocating write, write-zeroes, trim) claims them
// exclusively; an in-place write claims them shared. Conflicting claims wait
// for the holder (crash rule 4: one allocation per guest cluster, and no
// zero/trim racing a write to the same cluster). All-or-nothing claiming, so
// no request holds one claim while waiting for another.
#pragma once

#include "qcow2/engine/coro_sync.h"

#include <cstdint>
#include <list>
#include <optional>

namespace qnbd::qcow2 {

class Inflight {
 public:
  struct Claim {
    std::uint64_t first, last;  // guest cluster indices, inclusive
    bool exclusive;
  };

  class Guard {
   public:
    Guard(Inflight* o, std::list<Claim>::iterator it) : owner_(o), it_(it) {}
    Guard(Guard&& g) noexcept : owner_(std::exchange(g.owner_, nullptr)), it_(g.it_) {}
    Guard& operator=(Guard&&) = delete;
    ~Guard() {
      if (owner_) owner_->release(it_);
    }

   private:
    Inflight* owner_;
    std::list<Claim>::iterator it_;
  };

  // Claims clusters first..last (inclusive) if nothing conflicts; otherwise returns false and
  // the caller waits with changed() and re-examines the clusters.
  std::optional<Guard> try_claim(std::uint64_t first, std::uint64_t last, bool exclusive) {
    // A shared claim conflicts only with exclusive ones: none, no scan.
    if (exclusive || exclusive_ != 0)
      for (const Claim& c : claims_)
        if (c.first <= last && first <= c.last && (exclusive || c.exclusive)) return std::nullopt;
    exclusive_ += exclusive;
    // Nodes move between the lists: claiming allocates nothing once warm.
    if (spare_.empty())
      claims_.push_back({first, last, exclusive});
    else
      claims_.splice(claims_.end(), spare_, spare_.begin());
    claims_.back() = {first, last, exclusive};
    return Guard(this, std::prev(claims_.end()));
  }
  boost::asio::awaitable<void> changed() { co_await released_.wait(); }
  // Waits until the claim can be taken.
  boost::asio::awaitable<Guard> claim(std::uint64_t first, std::uint64_t last, bool exclusive) {
    for (;;) {
      if (auto g = try_claim(first, last, exclusive)) co_return std::move(*g);
      co_await released_.wait();
    }
  }

 private:
  void release(std::list<Claim>::iterator it) {
    exclusive_ -= it->exclusive;
    spare_.splice(spare_.end(), claims_, it);
    released_.notify_all();
  }
  std::list<Claim> claims_;
  std::list<Claim> spare_;
  std::size_t exclusive_ = 0;  // exclusive claims in claims_
  WaitQueue released_;
};

}  // namespace qnbd::qcow2
