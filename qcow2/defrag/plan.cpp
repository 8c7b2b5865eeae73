#include "qcow2/defrag/plan.h"

#include <algorithm>
#include <set>
#include <unordered_map>
#include <unordered_set>

namespace qnbd::qcow2::defrag {
namespace {

// Metadata gaps up to this many clusters do not break a run (one L2 table
// per 512 MiB of guest data with 64 KiB clusters, a refcount block per 2 GiB).
constexpr std::uint64_t kMaxPinnedGap = 8;

struct Clusters {
  const Layout& l;
  std::vector<bool> item_here;  // below file_clusters
  std::vector<bool> data_here;

  explicit Clusters(const Layout& layout)
      : l(layout), item_here(layout.file_clusters), data_here(layout.file_clusters) {
    for (const Item& i : l.items)
      if (i.host < l.file_clusters) item_here[i.host] = true;
    for (const Mapped& m : l.data)
      if (m.host < l.file_clusters) data_here[m.host] = true;
  }
  bool used(std::uint64_t c) const { return c < l.file_clusters && l.in_use[c]; }
  // In use and not moved by the plan.
  bool pinned(std::uint64_t c) const { return used(c) && !item_here[c]; }
  bool metadata_gap(std::uint64_t from, std::uint64_t to) const {  // [from, to)
    if (to <= from || to - from > kMaxPinnedGap) return false;
    for (std::uint64_t c = from; c < to; ++c)
      if (!used(c) || data_here[c]) return false;
    return true;
  }
};

Stats statistics(const Layout& l, const Clusters& cl) {
  Stats s;
  s.data_clusters = l.data.size();
  s.file_clusters = l.file_clusters;
  for (std::uint64_t c = 0; c < l.file_clusters; ++c) s.free_clusters += !l.in_use[c];
  bool run_contiguous = true;
  for (std::size_t i = 0; i < l.data.size(); ++i) {
    const bool continues = i > 0 && l.data[i].guest == l.data[i - 1].guest + 1;
    if (!continues) {
      if (i > 0) s.contiguous_runs += run_contiguous;
      ++s.guest_runs;
      run_contiguous = true;
      continue;
    }
    const std::uint64_t prev = l.data[i - 1].host, cur = l.data[i].host;
    if (cur != prev + 1 && !(cur > prev && cl.metadata_gap(prev + 1, cur))) {
      ++s.breaks;
      run_contiguous = false;
    }
  }
  if (!l.data.empty()) s.contiguous_runs += run_contiguous;
  return s;
}

// Where each item goes: data in guest order from the first unpinned
// cluster, then the L2 tables that lie beyond the data. L2 tables among the
// data stay (moving one would shift all data after it by one cluster).
struct Goal {
  std::vector<Item> order;            // items that take part, in goal order
  std::vector<std::uint64_t> target;  // per item of `order`
  std::uint64_t end = 0;              // one past the last target
};

Goal goal_of(const Layout& l, Clusters& cl) {
  std::vector<Item> data, tables;
  for (const Item& i : l.items) (i.kind == ItemKind::Data ? data : tables).push_back(i);
  std::sort(data.begin(), data.end(), [](auto& a, auto& b) { return a.key < b.key; });
  std::sort(tables.begin(), tables.end(), [](auto& a, auto& b) { return a.key < b.key; });
  // First pass: every L2 table pinned.
  for (const Item& t : tables)
    if (t.host < l.file_clusters) cl.item_here[t.host] = false;
  Goal g;
  std::uint64_t c = 0;
  auto next_slot = [&] {
    while (cl.pinned(c)) ++c;
    return c++;
  };
  for (const Item& d : data) {
    g.order.push_back(d);
    g.target.push_back(next_slot());
  }
  const std::uint64_t data_end = c;
  // Tables past the data move right behind it; making them items frees
  // their clusters for slots, all of which lie at or after data_end.
  for (const Item& t : tables)
    if (t.host >= data_end && t.host < l.file_clusters) cl.item_here[t.host] = true;
  for (const Item& t : tables)
    if (t.host >= data_end) {
      g.order.push_back(t);
      g.target.push_back(next_slot());
    }
  g.end = c;
  return g;
}

}  // namespace

Plan make_plan(const Layout& l) {
  Clusters cl(l);
  Plan p;
  p.stats = statistics(l, cl);
  const Goal g = goal_of(l, cl);

  // Simulate the moves. occupant: host cluster -> index into g.order.
  std::unordered_map<std::uint64_t, std::size_t> occupant;
  std::vector<std::uint64_t> cur(g.order.size());
  for (std::size_t i = 0; i < g.order.size(); ++i) {
    cur[i] = g.order[i].host;
    occupant[cur[i]] = i;
  }
  // Temporary places: free clusters past the goal region, then the end.
  std::set<std::uint64_t> spare;
  for (std::uint64_t c = g.end; c < l.file_clusters; ++c)
    if (!cl.used(c)) spare.insert(c);
  std::uint64_t beyond = std::max(g.end, l.file_clusters);
  auto is_free = [&](std::uint64_t c) { return !cl.pinned(c) && !occupant.count(c); };
  auto move = [&](std::size_t i, std::uint64_t to) {
    p.steps.push_back({g.order[i].kind, g.order[i].key, cur[i], to});
    occupant.erase(cur[i]);
    if (cur[i] >= g.end) spare.insert(cur[i]);
    spare.erase(to);
    occupant[to] = i;
    cur[i] = to;
  };
  for (std::size_t i = 0; i < g.order.size(); ++i) {
    const std::uint64_t t = g.target[i];
    if (cur[i] == t) continue;
    if (auto it = occupant.find(t); it != occupant.end()) {
      const std::size_t j = it->second;
      if (is_free(g.target[j])) {
        move(j, g.target[j]);
      } else {
        std::uint64_t tmp = beyond;
        if (!spare.empty()) tmp = *spare.begin();
        if (tmp == beyond) ++beyond;
        move(j, tmp);
      }
    }
    move(i, t);
  }
  std::uint64_t end = g.end;
  for (std::uint64_t c = g.end; c < l.file_clusters; ++c)
    if (cl.pinned(c)) end = c + 1;
  p.stats.target_clusters = std::min(end, l.file_clusters);
  return p;
}

std::vector<Step> select_batch(const std::vector<Step>& steps, std::size_t max_steps) {
  std::vector<Step> out;
  std::unordered_set<std::uint64_t> touched;
  for (const Step& s : steps) {
    if (out.size() >= max_steps) break;
    const bool free = !touched.count(s.from) && !touched.count(s.to);
    touched.insert(s.from);
    touched.insert(s.to);
    if (free) out.push_back(s);
  }
  return out;
}

}  // namespace qnbd::qcow2::defrag
