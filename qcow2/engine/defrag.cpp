// The defragmenter's cycle: scan, plan, claim, copy, link, flush (see
// defrag.h for the crash rules and where each is kept).
#include "qcow2/engine/defrag.h"

#include "common/co_try.h"
#include "io/aligned_bytes.h"
#include "qcow2/engine/image.h"

#include <spdlog/spdlog.h>

#include <new>
#include <optional>

namespace qnbd::qcow2 {

using namespace format;
using defrag::ItemKind;
using defrag::Step;

struct Defragmenter::Move {
  Step step;
  std::optional<Inflight::Guard> claim;  // data moves: the guest cluster
};

namespace {

task<> copy_run(io::File& file, std::uint64_t from, std::uint64_t to, std::uint64_t bytes) {
  const io::AlignedBytes buf(bytes);
  QNBD_CO_TRY(co_await file.read_at(from, buf.span()));
  co_return co_await file.write_at(to, buf.span());
}

}  // namespace

// Under the metadata lock.
task<defrag::Layout> Defragmenter::scan() {
  const Geometry& g = img_.g_;
  defrag::Layout l;
  auto size = img_.file_->size();
  if (!size) co_return size.error();
  l.file_clusters = g.round_up_cluster(*size) >> g.cluster_bits();
  auto used = co_await img_.refcounts_.in_use(l.file_clusters);
  if (!used) co_return used.error();
  l.in_use = std::move(*used);
  auto movable = [&](std::uint64_t host) {
    const std::uint64_t c = host >> g.cluster_bits();
    return g.cluster_aligned(host) && c > 0 && c < l.file_clusters && l.in_use[c];
  };
  const std::uint64_t guest_clusters = g.round_up_cluster(img_.size()) >> g.cluster_bits();
  for (std::uint64_t i = 0; i < img_.l1_.size(); ++i) {
    const std::uint64_t e = img_.l1_[i];
    if (!l1_l2_offset(e)) continue;
    if (l1_copied(e) && movable(l1_l2_offset(e)))
      l.items.push_back({ItemKind::L2Table, i, l1_l2_offset(e) >> g.cluster_bits()});
    auto t = co_await img_.l2_table_for(i * g.l2_coverage());
    if (!t) co_return t.error();
    if (!*t) continue;
    const std::uint64_t first = i * g.l2_entries();
    for (std::uint64_t j = 0; j < g.l2_entries() && first + j < guest_clusters; ++j) {
      const L2Entry le = load_l2(g, (*t)->data.data(), j);
      const auto type = cluster_type(g, le);
      if (type != ClusterType::Normal && type != ClusterType::ZeroAlloc) continue;
      const std::uint64_t host = l2_host_offset(le);
      if (!host) continue;
      if (type == ClusterType::Normal) l.data.push_back({first + j, host >> g.cluster_bits()});
      if (l2_copied(le) && !l2_reserved_bits_set(g, le) && movable(host))
        l.items.push_back({ItemKind::Data, first + j, host >> g.cluster_bits()});
    }
  }
  co_return l;
}

std::uint64_t Defragmenter::cluster_size() const { return img_.g_.cluster_size(); }
const std::string& Defragmenter::name() const { return img_.name_; }

bool Defragmenter::client_active() {
  const bool active = img_.active_ops_ > 0 || img_.ops_started_ != ops_seen_;
  ops_seen_ = img_.ops_started_;
  return active;
}

task<defrag::Plan> Defragmenter::plan() {
  auto lock = co_await img_.meta_.lock();
  auto l = co_await scan();
  if (!l) co_return l.error();
  co_return defrag::make_plan(*l);
}

// Under the metadata lock: checks that each step's source is still what the
// plan saw, claims the guest cluster and allocates the destination. Steps
// that no longer apply are dropped.
task<std::vector<Defragmenter::Move>> Defragmenter::begin_moves(const std::vector<Step>& batch) {
  const Geometry& g = img_.g_;
  std::vector<Move> moves;
  for (const Step& s : batch) {
    const std::uint64_t from = s.from << g.cluster_bits();
    std::optional<Inflight::Guard> claim;
    if (s.kind == ItemKind::Data) {
      const std::uint64_t guest = s.key << g.cluster_bits();
      auto t = co_await img_.l2_table_for(guest);
      if (!t) co_return t.error();
      if (!*t) continue;
      const L2Entry e = load_l2(g, (*t)->data.data(), g.l2_index(guest));
      if (!l2_copied(e) || l2_compressed(e) || l2_host_offset(e) != from) continue;
      auto c = img_.inflight_.try_claim(s.key, s.key, true);
      if (!c) continue;  // a client request has it: next cycle
      claim.emplace(std::move(*c));
      QNBD_CO_TRY(co_await img_.guard_.rewrite_data(from, guest));
    } else {
      const std::uint64_t e = img_.l1_[s.key];
      if (!l1_copied(e) || l1_l2_offset(e) != from) continue;
      QNBD_CO_TRY(co_await img_.guard_.rewrite_table(from));
    }
    auto ok = co_await img_.refcounts_.allocate_at(s.to);
    if (ok.has_error()) co_return img_.alloc_error(ok.error());
    if (!*ok) continue;  // taken since the plan
    const HostRun to{s.to << g.cluster_bits(), 1, false};
    img_.guard_.given_out({&to, 1});
    moves.push_back(Move{s, std::move(claim)});
  }
  co_return moves;
}

// No lock: the claims keep clients off these guest clusters. Adjacent moves
// are copied as one run.
task<> Defragmenter::copy_data(const std::vector<Move>& moves) {
  const unsigned bits = img_.g_.cluster_bits();
  Tasks io;
  for (std::size_t i = 0; i < moves.size();) {
    const Step& s = moves[i].step;
    if (s.kind != ItemKind::Data) {
      ++i;
      continue;
    }
    std::uint64_t n = 1;
    while (i + n < moves.size() && moves[i + n].step.kind == ItemKind::Data &&
           moves[i + n].step.from == s.from + n && moves[i + n].step.to == s.to + n && n < 256)
      ++n;
    io.push_back(copy_run(*img_.file_, s.from << bits, s.to << bits, n << bits));
    i += n;
  }
  co_return co_await run_parallel(std::move(io));
}

// Under the metadata lock: the L2 (or L1) entries point at the copies. An
// old L2 table is freed once the L1 entry is durable (readers use the cached
// copy, never the old cluster); old data clusters wait for free_old(). Data
// entries first: a table that moves in the same batch takes them along.
task<> Defragmenter::link(const std::vector<Move>& moves) {
  const Geometry& g = img_.g_;
  const unsigned bits = g.cluster_bits();
  for (const Move& m : moves) {
    if (m.step.kind != ItemKind::Data) continue;
    const std::uint64_t guest = m.step.key << bits;
    auto t = co_await img_.l2_table_for(guest);
    if (!t) co_return t.error();
    if (!*t) co_return img_.corrupt("L2 table vanished during a cluster move");
    L2Entry e = load_l2(g, (*t)->data.data(), g.l2_index(guest));
    if (l2_host_offset(e) != m.step.from << bits)
      co_return img_.corrupt("L2 entry changed under a claimed cluster move");
    e.entry = (e.entry & ~L2E_OFFSET_MASK) | (m.step.to << bits);
    store_l2(g, (*t)->data.data(), g.l2_index(guest), e);
    img_.mark_l2_dirty(**t, m.step.key, m.step.key);
    img_.needs_barrier_ = true;  // dirty-bit mode: the copy before the entry
  }
  for (const Move& m : moves) {
    if (m.step.kind != ItemKind::L2Table) continue;
    auto src = co_await img_.l2_table_for(m.step.key * g.l2_coverage());
    if (!src) co_return src.error();
    if (!*src) co_return img_.corrupt("L2 table vanished during its move");
    const std::uint64_t to = m.step.to << bits;
    auto t = img_.l2_cache_.create(to);
    t->data = (*src)->data;
    img_.guard_.table_is_ours(to);
    img_.metadata_.add(to, g.cluster_size());
    img_.l1_[m.step.key] = to | QCOW_OFLAG_COPIED;
    img_.l1_dirty_.insert(m.step.key);
    img_.l2_cache_.drop(m.step.from << bits);
    img_.refcounts_.defer_free_cluster(m.step.from << bits);
  }
  co_return result<>{};
}

// After the reads that may have mapped the old places are done: the old
// data clusters are freed once the new entries are durable (crash rule 2).
// A crash before this leaves them leaked, never referenced twice.
task<> Defragmenter::free_old(const std::vector<Move>& moves) {
  co_await img_.read_epochs_.drain();
  auto lock = co_await img_.meta_.lock();
  for (const Move& m : moves)
    if (m.step.kind == ItemKind::Data)
      img_.refcounts_.defer_free_cluster(m.step.from << img_.g_.cluster_bits());
  co_return result<>{};
}

task<> Defragmenter::give_back(const std::vector<Move>& moves) {
  for (const Move& m : moves) QNBD_CO_TRY(co_await img_.refcounts_.update(m.step.to, -1));
  co_return result<>{};
}

task<DefragCycle> Defragmenter::cycle(std::size_t max_steps) {
  QNBD_CO_TRY(img_.check_writable());
  QNBD_CO_TRY(co_await img_.mark_modified());
  DefragCycle out;
  std::vector<Move> moves;
  {
    auto lock = co_await img_.meta_.lock();
    auto l = co_await scan();
    if (!l) co_return l.error();
    const defrag::Plan p = defrag::make_plan(*l);
    out.stats = p.stats;
    out.remaining = p.steps.size();
    if (p.steps.empty()) co_return out;
    auto m = co_await begin_moves(defrag::select_batch(p.steps, max_steps));
    if (!m) co_return m.error();
    moves = std::move(*m);
  }
  auto r = co_await copy_data(moves);
  {
    auto lock = co_await img_.meta_.lock();
    if (!r) {
      img_.rollback_failed(co_await give_back(moves), "giving back the clusters of failed moves");
      co_return r.error();
    }
    QNBD_CO_TRY(co_await link(moves));
  }
  out.moved = moves.size();
  for (Move& m : moves) m.claim.reset();  // client requests now see the new places
  QNBD_CO_TRY(co_await free_old(moves));
  QNBD_CO_TRY(co_await img_.flush());
  co_return out;
}

task<std::uint64_t> Defragmenter::compact() {
  QNBD_CO_TRY(img_.check_writable());
  // Applies the last deferred frees.
  QNBD_CO_TRY(co_await img_.flush());
  auto lock = co_await img_.meta_.lock();
  auto l = co_await scan();
  if (!l) co_return l.error();
  const defrag::Plan p = defrag::make_plan(*l);
  const std::uint64_t end = p.stats.target_clusters << img_.g_.cluster_bits();
  auto size = img_.file_->size();
  if (!size) co_return size.error();
  if (end >= *size) co_return *size;
  // The refcounts of what lies past `end` (all 0) are durable before the
  // file loses it, so no refcount ever points past the end of the file.
  QNBD_CO_TRY(co_await img_.refcounts_.write_back());
  QNBD_CO_TRY(co_await img_.growth_.shrink(end));
  spdlog::debug("{}: compacted from {} to {} bytes", img_.name_, *size, end);
  co_return end;
}

}  // namespace qnbd::qcow2
