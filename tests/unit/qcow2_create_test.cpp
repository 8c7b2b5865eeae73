// qcow2/create: the layout planner (pure) and images written into a
// MemoryFile, verified by parsing them back and by the checker.
#include "io/memory_file.h"
#include "qcow2/check/check.h"
#include "qcow2/check/run_sync.h"
#include "qcow2/create/create.h"
#include "qcow2/format/endian.h"
#include "qcow2/format/entries.h"

#include <doctest/doctest.h>

using namespace qnbd;
using namespace qnbd::qcow2;

namespace {

std::vector<std::byte> make_image(const create::CreateOptions& o) {
  SyncRunner run;
  io::MemoryFile f;
  f.set_yield(false);
  REQUIRE(run.run(create::create_image(f, o)));
  return f.contents();
}

check::CheckResult check_bytes(std::vector<std::byte> bytes) {
  SyncRunner run;
  io::MemoryFile f(std::move(bytes));
  return run.run(check::check_image(f, {}));
}

}  // namespace

TEST_CASE("qcow2 create: the refcount structure covers every cluster it plans") {
  for (std::uint64_t cs : {512ull, 4096ull, 65536ull, 2ull << 20}) {
    for (std::uint32_t bits : {1u, 16u, 64u}) {
      for (auto p : {create::Prealloc::off, create::Prealloc::metadata}) {
        create::CreateOptions o;
        o.size = 3ull << 30;
        o.cluster_size = cs;
        o.refcount_bits = bits;
        o.prealloc = p;
        const auto L = create::plan_layout(o);
        const auto g = L.header.geometry();
        CAPTURE(cs);
        CAPTURE(bits);
        CHECK(L.refblock_count * g.refblock_entries() >= L.used_clusters);
        CHECK(L.reftable_clusters * cs / 8 >= L.refblock_count);
        CHECK(L.header.l1_size == g.l1_entries_for(o.size));
        CHECK(L.file_size == L.used_clusters * cs);
        if (p == create::Prealloc::metadata) {
          CHECK(L.data_clusters * cs == o.size);
          CHECK(L.data_offset + L.data_clusters * cs == L.file_size);
        } else {
          CHECK(L.file_size == L.l1_offset + L.l1_clusters * cs);
        }
      }
    }
  }
}

TEST_CASE("qcow2 create: invalid option combinations are refused") {
  create::CreateOptions o;
  o.size = 1 << 20;
  auto refused = [](create::CreateOptions x) {
    CHECK_THROWS_AS(create::plan_layout(x), create::OptionError);
  };
  auto x = o;
  x.cluster_size = 1000;
  refused(x);
  x = o;
  x.cluster_size = 4 << 20;
  refused(x);
  x = o;
  x.refcount_bits = 3;
  refused(x);
  x = o;
  x.version = 2;
  x.lazy_refcounts = true;
  refused(x);
  x = o;
  x.version = 2;
  x.refcount_bits = 8;
  refused(x);
  x = o;
  x.extended_l2 = true;
  x.cluster_size = 4096;
  refused(x);
  x = o;
  x.backing_file = "base";
  x.prealloc = create::Prealloc::metadata;
  refused(x);
  x = o;
  x.size = 1ull << 63;
  refused(x);
  x = o;
  x.backing_file = "base";
  x.prealloc = create::Prealloc::metadata;
  x.extended_l2 = true;
  CHECK_NOTHROW(create::plan_layout(x));
}

TEST_CASE("qcow2 create: images parse back with the requested options and check clean") {
  create::CreateOptions o;
  o.size = 5ull << 20;
  o.cluster_size = 16384;
  o.refcount_bits = 8;
  o.lazy_refcounts = true;
  o.extended_l2 = true;
  o.compression_type = format::QCOW2_COMPRESSION_TYPE_ZSTD;
  o.backing_file = "base.qcow2";
  o.backing_format = "qcow2";
  for (auto p : {create::Prealloc::off, create::Prealloc::metadata}) {
    o.prealloc = p;
    const auto bytes = make_image(o);
    const auto h = format::parse_header(std::span(bytes).first(16384));
    CHECK(h.version == 3);
    CHECK(h.size == o.size);
    CHECK(h.cluster_size() == 16384);
    CHECK((1u << h.refcount_order) == 8);
    CHECK(h.extended_l2());
    CHECK(h.compression_type == format::QCOW2_COMPRESSION_TYPE_ZSTD);
    CHECK((h.compatible_features & format::QCOW2_COMPAT_LAZY_REFCOUNTS) != 0);
    CHECK(h.backing_file == "base.qcow2");
    CHECK(h.backing_format == "qcow2");
    const auto r = check_bytes(bytes);
    CHECK(r.corruptions == 0);
    CHECK(r.leaks == 0);
    CHECK(r.check_errors == 0);
    CHECK(r.allocated_clusters == (p == create::Prealloc::metadata ? o.size / 16384 : 0));
    CHECK(r.fragmented_clusters == 0);
  }
}

TEST_CASE("qcow2 create: version 2 image with metadata preallocation") {
  create::CreateOptions o;
  o.size = 3ull << 20;
  o.version = 2;
  o.cluster_size = 512;
  o.prealloc = create::Prealloc::metadata;
  const auto bytes = make_image(o);
  const auto h = format::parse_header(std::span(bytes).first(512));
  CHECK(h.version == 2);
  const auto r = check_bytes(bytes);
  CHECK(check::exit_code(r) == 0);
  CHECK(r.allocated_clusters == o.size / 512);
  CHECK(r.total_clusters == o.size / 512);
}
