#include "server/read_plan.h"

#include <doctest/doctest.h>

using qnbd::Extent;
using qnbd::server::plan_read_chunks;

TEST_CASE("read plan: zero extents become holes, the rest data, covering the request") {
  std::vector<Extent> ex{{65536, false, false}, {131072, true, true}, {65536, false, false}};
  auto c = plan_read_chunks(1 << 20, 262144, ex);
  REQUIRE(c.size() == 3);
  CHECK(c[0].offset == 1 << 20);
  CHECK(c[0].length == 65536);
  CHECK_FALSE(c[0].hole);
  CHECK(c[1].offset == (1 << 20) + 65536);
  CHECK(c[1].length == 131072);
  CHECK(c[1].hole);
  CHECK(c[2].length == 65536);
  CHECK_FALSE(c[2].hole);
}

TEST_CASE("read plan: small holes merge into data, allocated zeros count as holes") {
  std::vector<Extent> ex{{8192, false, false}, {512, false, true}, {8192, false, false}};
  auto c = plan_read_chunks(0, 16896, ex);
  REQUIRE(c.size() == 1);
  CHECK(c[0].length == 16896);
  CHECK_FALSE(c[0].hole);
  std::vector<Extent> z{{4096, false, true}};
  auto d = plan_read_chunks(0, 4096, z);
  REQUIRE(d.size() == 1);
  CHECK(d[0].hole);
}

TEST_CASE("read plan: extents longer or shorter than the request") {
  std::vector<Extent> longer{{1 << 30, true, true}};
  auto c = plan_read_chunks(4096, 65536, longer);
  REQUIRE(c.size() == 1);
  CHECK(c[0].length == 65536);
  CHECK(c[0].hole);
  std::vector<Extent> shorter{{8192, true, true}};
  auto d = plan_read_chunks(0, 65536, shorter);
  REQUIRE(d.size() == 2);
  CHECK(d[0].hole);
  CHECK(d[1].offset == 8192);
  CHECK(d[1].length == 65536 - 8192);
  CHECK_FALSE(d[1].hole);
  CHECK(plan_read_chunks(0, 4096, {}).size() == 1);
}
