// io::Ring's delivery of completions: work deferred with after_completions
// runs once every completion at hand has run (the session's one send for
// the replies of a whole batch relies on it); and when submissions go out:
// at the end of a Batch or of a reap, without a posted handler.
#include "io/uring.h"

#include <boost/asio/io_context.hpp>
#include <doctest/doctest.h>

#include <vector>

namespace {

using qnbd::io::Completion;
using qnbd::io::Ring;

struct Nop : Completion {
  std::vector<int>* log = nullptr;
  Completion* deferred = nullptr;
  int id = 0;
};

struct Deferred : Completion {
  std::vector<int>* log = nullptr;
  int calls = 0;
};

TEST_CASE("io::Ring: after_completions runs deferred work after the batch it was asked in") {
  boost::asio::io_context ctx;
  Ring ring(ctx);
  REQUIRE(ring.available());
  std::vector<int> log;
  Deferred after;
  after.log = &log;
  after.complete = [](Completion* c, int res) {
    auto* d = static_cast<Deferred*>(c);
    CHECK(res == 0);
    ++d->calls;
    d->log->push_back(-1);
  };
  CHECK_FALSE(Ring::after_completions(&after));  // no completions being delivered here
  // Three NOPs submitted together complete together; the first one defers.
  std::vector<Nop> nops(3);
  for (int i = 0; i < 3; ++i) {
    nops[i].log = &log;
    nops[i].id = i;
    nops[i].deferred = i == 0 ? &after : nullptr;
    nops[i].complete = [](Completion* c, int) {
      auto* n = static_cast<Nop*>(c);
      n->log->push_back(n->id);
      if (n->deferred) CHECK(Ring::after_completions(n->deferred));
    };
    ring.submit(&nops[i], [](io_uring_sqe* sqe) { io_uring_prep_nop(sqe); });
  }
  while (log.size() < 4 && ctx.run_one() > 0) {
  }
  CHECK(log == std::vector<int>{0, 1, 2, -1});
  CHECK(after.calls == 1);
  CHECK_FALSE(Ring::after_completions(&after));  // the batch is over
}

// Runs handlers until `done` holds.
template <class Pred>
void run_until(boost::asio::io_context& ctx, Pred done) {
  while (!done() && ctx.run_one() > 0) {
  }
}

// A NOP whose completion submits the next one.
struct Chained : Nop {
  Ring* ring = nullptr;
  Nop* next = nullptr;
};

void prep_nop(io_uring_sqe* sqe) { io_uring_prep_nop(sqe); }

TEST_CASE("io::Ring: a Batch submits at its end, a reap at its end, otherwise a post") {
  boost::asio::io_context ctx;
  Ring ring(ctx);
  REQUIRE(ring.available());
  std::vector<int> log;
  const auto logged = [](Completion* c, int) {
    auto* n = static_cast<Nop*>(c);
    n->log->push_back(n->id);
  };
  const auto done = [&log](std::size_t n) { return [&log, n] { return log.size() >= n; }; };
  std::vector<Nop> nops(3);
  for (int i = 0; i < 3; ++i) {
    nops[i].log = &log;
    nops[i].id = i;
    nops[i].complete = logged;
  }
  // Outside a batch and a reap: a posted handler submits.
  ring.submit(&nops[0], prep_nop);
  CHECK(ring.unsubmitted() == 1);
  run_until(ctx, [&] { return ring.unsubmitted() == 0; });
  run_until(ctx, done(1));
  {
    Ring::Batch outer;
    Ring::Batch inner;  // joins the outer one
    ring.submit(&nops[1], prep_nop);
    CHECK(ring.unsubmitted() == 1);
  }
  CHECK(ring.unsubmitted() == 0);  // at the batch's end, before any handler runs
  run_until(ctx, done(2));
  // Submitted while completions are delivered: goes out once they are, by
  // the same handler.
  Chained first;
  first.log = &log;
  first.id = 10;
  first.ring = &ring;
  first.next = &nops[2];
  first.complete = [](Completion* c, int) {
    auto* self = static_cast<Chained*>(c);
    self->log->push_back(self->id);
    self->ring->submit(self->next, prep_nop);
  };
  {
    Ring::Batch batch;
    ring.submit(&first, prep_nop);
  }
  run_until(ctx, done(3));
  CHECK(ring.unsubmitted() == 0);
  run_until(ctx, done(4));
  CHECK(log == std::vector<int>{0, 1, 10, 2});
}

}  // namespace
