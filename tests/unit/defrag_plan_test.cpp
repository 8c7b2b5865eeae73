// The defragmentation planner over model images: executing its steps in
// batches, re-planning after each as the engine does, never writes onto a
// cluster in use, never moves pinned clusters, and ends with data in guest
// order, free space at the end and the truncation target honoured.
#include "qcow2/defrag/plan.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <map>
#include <random>

using namespace qnbd::qcow2::defrag;

namespace {

// A model image: what each host cluster holds.
struct Model {
  // host cluster -> 'M' pinned metadata, 'D' data (key = guest), 'L' L2 table (key = l1 index),
  // 'S' shared data (pinned).
  std::map<std::uint64_t, std::pair<char, std::uint64_t>> used;
  std::uint64_t file_clusters = 0;

  Layout layout() const {
    Layout l;
    l.file_clusters = file_clusters;
    l.in_use.assign(file_clusters, false);
    for (auto& [h, what] : used) {
      if (h < file_clusters) l.in_use[h] = true;
      if (what.first == 'D') l.items.push_back({ItemKind::Data, what.second, h});
      if (what.first == 'L') l.items.push_back({ItemKind::L2Table, what.second, h});
      if (what.first == 'D' || what.first == 'S') l.data.push_back({what.second, h});
    }
    std::sort(l.data.begin(), l.data.end(), [](auto& a, auto& b) { return a.guest < b.guest; });
    return l;
  }
  // Runs one cycle; checks that every destination is free and every source holds the item.
  void apply(const std::vector<Step>& batch) {
    for (const Step& s : batch) {
      REQUIRE(used.count(s.to) == 0);
      auto it = used.find(s.from);
      REQUIRE(it != used.end());
      CHECK(it->second.first == (s.kind == ItemKind::Data ? 'D' : 'L'));
      CHECK(it->second.second == s.key);
    }
    for (const Step& s : batch) {
      used[s.to] = used[s.from];
      used.erase(s.from);
      file_clusters = std::max(file_clusters, s.to + 1);
    }
  }
  // Defragments like the engine: plan, one batch, repeat. Returns cycles.
  int defrag(std::size_t batch, Stats* first = nullptr) {
    for (int cycle = 0; cycle < 10000; ++cycle) {
      Plan p = make_plan(layout());
      if (first && cycle == 0) *first = p.stats;
      if (p.steps.empty()) {
        for (auto& [h, what] : used) REQUIRE(h < p.stats.target_clusters);
        file_clusters = p.stats.target_clusters;
        return cycle;
      }
      auto b = select_batch(p.steps, batch);
      REQUIRE(!b.empty());
      apply(b);
    }
    FAIL("no convergence");
    return -1;
  }
};

Model fragmented(std::uint64_t n, unsigned seed, double trim = 0.0) {
  Model m;
  for (std::uint64_t c = 0; c < 4; ++c) m.used[c] = {'M', 0};
  std::vector<std::uint64_t> guests(n);
  for (std::uint64_t i = 0; i < n; ++i) guests[i] = i;
  std::mt19937 rng(seed);
  std::shuffle(guests.begin(), guests.end(), rng);
  std::uint64_t h = 4;
  m.used[h++] = {'L', 0};
  for (std::uint64_t i = 0; i < n; ++i) {
    if (i == n / 2) m.used[h++] = {'L', 1};  // an L2 table among the data
    m.used[h++] = {'D', guests[i]};
  }
  m.file_clusters = h;
  std::bernoulli_distribution drop(trim);
  for (auto it = m.used.begin(); it != m.used.end();)
    it = it->second.first == 'D' && drop(rng) ? m.used.erase(it) : std::next(it);
  return m;
}

void expect_defragmented(const Model& m) {
  const Plan p = make_plan(m.layout());
  CHECK(p.steps.empty());
  CHECK(p.stats.breaks == 0);
  CHECK(p.stats.contiguous_runs == p.stats.guest_runs);
  CHECK(p.stats.free_clusters == 0);
}

}  // namespace

TEST_CASE("defrag plan: a randomly written image becomes contiguous in guest order") {
  Model m = fragmented(300, 1);
  Stats before;
  const int cycles = m.defrag(64, &before);
  CHECK(before.guest_runs == 1);
  CHECK(before.contiguous_runs == 0);
  CHECK(before.breaks > 250);
  CHECK(cycles < 40);
  expect_defragmented(m);
  // Guest order is host order.
  std::uint64_t prev = 0;
  for (auto& [h, what] : m.used)
    if (what.first == 'D') {
      CHECK(h > prev);
      prev = h;
    }
}

TEST_CASE("defrag plan: reverse order, batches of one") {
  Model m;
  for (std::uint64_t c = 0; c < 3; ++c) m.used[c] = {'M', 0};
  for (std::uint64_t i = 0; i < 40; ++i) m.used[3 + i] = {'D', 39 - i};
  m.file_clusters = 43;
  m.defrag(1);
  expect_defragmented(m);
  CHECK(m.file_clusters == 43);
}

TEST_CASE("defrag plan: a trimmed image shrinks by the trimmed amount") {
  Model m = fragmented(400, 7, 0.5);
  std::uint64_t data = 0;
  for (auto& [h, what] : m.used) data += what.first == 'D';
  const std::uint64_t before = m.file_clusters;
  Stats s;
  m.defrag(32, &s);
  CHECK(s.free_clusters == before - m.used.size());
  CHECK(s.target_clusters == m.used.size());
  CHECK(m.file_clusters == 4 + 2 + data);  // metadata, two L2 tables, data
  expect_defragmented(m);
}

TEST_CASE("defrag plan: pinned clusters stay, data flows around them, tail L2 tables move") {
  Model m;
  m.used[0] = {'M', 0};
  m.used[1] = {'S', 100};  // shared with a snapshot
  m.used[5] = {'D', 2};
  m.used[7] = {'D', 1};
  m.used[9] = {'M', 0};  // pinned in the middle
  m.used[12] = {'D', 0};
  m.used[20] = {'L', 0};  // L2 table in the tail
  m.file_clusters = 21;
  const auto pinned = [&] {
    std::map<std::uint64_t, char> p;
    for (auto& [h, w] : m.used)
      if (w.first == 'M' || w.first == 'S') p[h] = w.first;
    return p;
  };
  const auto before = pinned();
  m.defrag(8);
  CHECK(pinned() == before);
  CHECK(m.used.at(2) == std::pair<char, std::uint64_t>{'D', 0});
  CHECK(m.used.at(3) == std::pair<char, std::uint64_t>{'D', 1});
  CHECK(m.used.at(4) == std::pair<char, std::uint64_t>{'D', 2});
  CHECK(m.used.at(5) == std::pair<char, std::uint64_t>{'L', 0});
  CHECK(m.file_clusters == 10);  // the pinned cluster 9 bounds the truncation
}

TEST_CASE("defrag plan: a contiguous image needs no step; pinned gaps do not count as breaks") {
  Model m;
  for (std::uint64_t c = 0; c < 4; ++c) m.used[c] = {'M', 0};
  m.used[4] = {'L', 0};
  for (std::uint64_t i = 0; i < 10; ++i) m.used[5 + i] = {'D', i};
  m.used[15] = {'L', 1};
  for (std::uint64_t i = 10; i < 20; ++i) m.used[6 + i] = {'D', i};
  m.file_clusters = 26;
  const Plan p = make_plan(m.layout());
  CHECK(p.steps.empty());
  CHECK(p.stats.breaks == 0);
  CHECK(p.stats.guest_runs == 1);
  CHECK(p.stats.contiguous_fraction() == 1.0);
  CHECK(p.stats.target_clusters == 26);
}

TEST_CASE("defrag plan: batches never touch one cluster twice") {
  std::vector<Step> steps{{ItemKind::Data, 1, 10, 20},
                          {ItemKind::Data, 2, 30, 10},
                          {ItemKind::Data, 3, 40, 50},
                          {ItemKind::Data, 4, 50, 60}};
  auto b = select_batch(steps, 10);
  REQUIRE(b.size() == 2);
  CHECK(b[0].key == 1);
  CHECK(b[1].key == 3);
  CHECK(select_batch(steps, 1).size() == 1);
}
