// The reload planner: which exports a re-read config adds, removes, reopens
// or updates in place, and which global changes need a restart.
#include "server/reload.h"

#include <doctest/doctest.h>

using namespace qnbd;
using server::ExportAction;

namespace {

config::Export exp(std::string name, std::string path) {
  config::Export e;
  e.name = std::move(name);
  e.path = std::move(path);
  return e;
}

std::string summary(const std::vector<ExportAction>& actions) {
  static const char* kinds[] = {"add", "remove", "reopen", "update"};
  std::string s;
  for (const auto& a : actions) s += std::string(kinds[a.kind]) + " " + a.name + "; ";
  return s;
}

}  // namespace

TEST_SUITE("reload") {
  TEST_CASE("unchanged exports produce no action") {
    std::vector<config::Export> v{exp("a", "/a"), exp("b", "/b")};
    CHECK(server::plan_exports(v, v).empty());
    // order does not matter
    CHECK(server::plan_exports(v, {v[1], v[0]}).empty());
  }

  TEST_CASE("added, removed, reopened and updated exports") {
    std::vector<config::Export> now{exp("a", "/a"), exp("b", "/b"), exp("c", "/c"), exp("d", "/d")};
    auto next = now;
    next.erase(next.begin());            // a removed
    next[0].path = "/b2";                // b: another image
    next[1].description = "the c disk";  // c: description only
    next[2].read_only = true;            // d: opened differently
    next.push_back(exp("e", "/e"));      // e added
    auto plan = server::plan_exports(now, next);
    CHECK(summary(plan) == "remove a; reopen b; update c; reopen d; add e; ");
    CHECK(plan[1].next.path == "/b2");
    CHECK(plan[2].next.description == "the c disk");
  }

  TEST_CASE("every field but the description needs a reopen") {
    const config::Export base = exp("x", "/x");
    auto changed = [&](auto mutate) {
      config::Export e = base;
      mutate(e);
      return server::needs_reopen(base, e);
    };
    CHECK_FALSE(changed([](config::Export& e) { e.description = "new"; }));
    CHECK(changed([](config::Export& e) { e.path = "/y"; }));
    CHECK(changed([](config::Export& e) { e.format = config::Format::qcow2; }));
    CHECK(changed([](config::Export& e) { e.cache = config::CacheMode::none; }));
    CHECK(changed([](config::Export& e) { e.read_only = true; }));
    CHECK(changed([](config::Export& e) { e.force_share = true; }));
    CHECK(changed([](config::Export& e) { e.l2_cache_size = 1 << 20; }));
    CHECK(changed([](config::Export& e) { e.lazy_refcounts = true; }));
    CHECK(changed([](config::Export& e) { e.cache_clean_interval = 1; }));
  }

  TEST_CASE("a rename is a removal and an addition") {
    auto plan = server::plan_exports({exp("old", "/img")}, {exp("new", "/img")});
    CHECK(summary(plan) == "remove old; add new; ");
  }

  TEST_CASE("listen, workers and pid_file need a restart; bounds do not") {
    config::Config a, b;
    CHECK(server::restart_only_changes(a, b).empty());
    b.max_connections = 5;
    b.max_handshakes = 3;
    b.handshake_timeout_s = 2;
    b.log_level = config::LogLevel::debug;
    CHECK(server::restart_only_changes(a, b).empty());
    b.listen.port = 10810;
    b.workers = 3;
    b.pid_file = "/run/x.pid";
    CHECK(server::restart_only_changes(a, b) ==
          std::vector<std::string>{"listen", "workers", "pid_file"});
    b.listen.tls.verify_peer = true;
    b.metrics = config::Endpoint{"::1", 9810};
    CHECK(server::restart_only_changes(a, b) ==
          std::vector<std::string>{"listen", "tls", "metrics", "workers", "pid_file"});
  }
}
