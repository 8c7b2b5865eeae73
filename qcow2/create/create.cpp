// Writes the planned layout. Large regions (refcount blocks, L2 tables) are
// generated and written in chunks, so a metadata-preallocated 100 GiB image
// costs a few MiB of writes and bounded memory; the data area is never
// written for metadata preallocation (the file is grown with truncate).
#include "qcow2/create/create.h"
#include "common/co_try.h"

#include "qcow2/format/endian.h"
#include "qcow2/format/entries.h"

#include <algorithm>
#include <functional>
#include <vector>

namespace qnbd::qcow2::create {

using namespace format;

namespace {

constexpr std::uint64_t kChunk = 8ull << 20;

// Fills and writes `clusters` clusters at `offset`, a chunk at a time;
// fill(first_cluster_of_chunk, buffer) sees a zeroed buffer.
task<> write_generated(io::File& file, std::uint64_t offset, std::uint64_t clusters,
                       std::uint64_t cs,
                       const std::function<void(std::uint64_t, std::span<std::byte>)>& fill) {
  const std::uint64_t per_chunk = std::max<std::uint64_t>(1, kChunk / cs);
  std::vector<std::byte> buf;
  for (std::uint64_t c = 0; c < clusters; c += per_chunk) {
    const std::uint64_t n = std::min(per_chunk, clusters - c);
    buf.assign(n * cs, std::byte{0});
    fill(c, buf);
    QNBD_CO_TRY(co_await file.write_at(offset + c * cs, buf));
  }
  co_return result<>{};
}

task<> write_metadata(io::File& file, const Layout& L) {
  const Geometry g = L.header.geometry();
  const std::uint64_t cs = g.cluster_size();
  QNBD_CO_TRY(co_await file.write_at(0, encode_header(L.header)));
  QNBD_CO_TRY(co_await write_generated(
      file, L.reftable_offset, L.reftable_clusters, cs, [&](std::uint64_t c, auto buf) {
        const std::uint64_t per = cs / 8;
        for (std::uint64_t i = 0; i < buf.size() / 8; ++i) {
          const std::uint64_t block = c * per + i;
          if (block < L.refblock_count)
            store_be64(buf.data() + i * 8, L.refblocks_offset + block * cs);
        }
      }));
  QNBD_CO_TRY(co_await write_generated(
      file, L.refblocks_offset, L.refblock_count, cs, [&](std::uint64_t c, auto buf) {
        const std::uint64_t first = c * g.refblock_entries();
        const std::uint64_t n = buf.size() / cs * g.refblock_entries();
        for (std::uint64_t i = 0; i < n && first + i < L.used_clusters; ++i)
          set_refcount(buf.data(), g.refcount_order(), i, 1);
      }));
  QNBD_CO_TRY(co_await write_generated(
      file, L.l1_offset, L.l1_clusters, cs, [&](std::uint64_t c, auto buf) {
        const std::uint64_t first = c * (cs / 8);
        for (std::uint64_t i = 0; i < buf.size() / 8 && first + i < L.l2_count; ++i)
          store_be64(buf.data() + i * 8, (L.l2_offset + (first + i) * cs) | QCOW_OFLAG_COPIED);
      }));
  co_return co_await write_generated(
      file, L.l2_offset, L.l2_count, cs, [&](std::uint64_t c, auto buf) {
        const std::uint64_t first = c * g.l2_entries();
        const std::uint64_t n = buf.size() / cs * g.l2_entries();
        for (std::uint64_t i = 0; i < n && first + i < L.data_clusters; ++i) {
          // Allocated, refcount 1; with extended L2 every subcluster stays
          // unallocated (reads from the backing file or as zeros), as qemu does.
          L2Entry e{(L.data_offset + (first + i) * cs) | QCOW_OFLAG_COPIED, 0};
          store_l2(g, buf.data(), i, e);
        }
      });
}

task<> fill_data(io::File& file, const Layout& L, Prealloc mode) {
  const std::uint64_t bytes = L.data_clusters * L.header.cluster_size();
  if (mode == Prealloc::falloc) co_return co_await file.allocate(L.data_offset, bytes);
  if (mode != Prealloc::full) co_return result<>{};
  const std::vector<std::byte> zeros(kChunk);
  for (std::uint64_t done = 0; done < bytes; done += kChunk) {
    const std::uint64_t n = std::min<std::uint64_t>(kChunk, bytes - done);
    QNBD_CO_TRY(
        co_await file.write_at(L.data_offset + done, std::span<const std::byte>(zeros.data(), n)));
  }
  co_return result<>{};
}

}  // namespace

task<> create_image(io::File& file, const CreateOptions& o) {
  const Layout L = plan_layout(o);
  QNBD_CO_TRY(file.truncate(0));
  QNBD_CO_TRY(co_await write_metadata(file, L));
  QNBD_CO_TRY(file.truncate(L.file_size));
  QNBD_CO_TRY(co_await fill_data(file, L, o.prealloc));
  co_return co_await file.sync();
}

}  // namespace qnbd::qcow2::create
