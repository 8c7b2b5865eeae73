// Reads: map first, then one I/O per run, all runs in parallel. Zero runs
// are memset without I/O; unallocated runs come from the backing image.
#include "qcow2/engine/image.h"

#include "qcow2/format/compression.h"

#include <spdlog/spdlog.h>

#include <cstring>

namespace qnbd::qcow2 {

using namespace format;

task<> Image::read(std::uint64_t offset, std::span<std::byte> buf) {
  const auto epoch = read_epochs_.enter();
  auto runs = co_await map_range(offset, buf.size());
  if (!runs) co_return runs.error();
  co_return co_await read_runs(*runs, offset, buf);
}

task<> Image::read_runs(std::span<const MapRun> runs, std::uint64_t base,
                        std::span<std::byte> buf) {
  Tasks io;
  for (const MapRun& r : runs) {
    auto part = buf.subspan(r.guest - base, r.length);
    switch (r.kind) {
      case MapKind::Zero:
        std::memset(part.data(), 0, part.size());
        break;
      case MapKind::Data:
        io.push_back(file_->read_at(r.host, part));
        break;
      case MapKind::Backing:
        io.push_back(read_backing(r.guest, part));
        break;
      case MapKind::Compressed:
        io.push_back(read_compressed(r.entry, r.guest, part));
        break;
    }
  }
  co_return co_await run_parallel(std::move(io));
}

// The backing image may be shorter than this one: the rest reads as zeros.
task<> Image::read_backing(std::uint64_t guest, std::span<std::byte> buf) {
  std::size_t n = 0;
  if (backing_ && guest < backing_size_)
    n = static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), backing_size_ - guest));
  std::memset(buf.data() + n, 0, buf.size() - n);
  if (n == 0) co_return result<>{};
  co_return co_await backing_->read(guest, buf.first(n));
}

task<> Image::read_compressed(L2Entry e, std::uint64_t guest, std::span<std::byte> buf) {
  const CompressedDescriptor d = decode_compressed(g_, e);
  std::vector<std::byte> in(d.size());
  if (auto r = co_await file_->read_at(d.host_offset, in); !r) co_return r;
  std::vector<std::byte> cluster(g_.cluster_size());
  if (!decompress_cluster(header_.compression_type, in, cluster)) {
    spdlog::error("{}: compressed cluster at {:#x} does not decompress", name_, d.host_offset);
    co_return errno_error(EIO);
  }
  std::memcpy(buf.data(), cluster.data() + g_.offset_in_cluster(guest), buf.size());
  co_return result<>{};
}

}  // namespace qnbd::qcow2
