#include "qcow2/meta/tables.h"

#include "qcow2/format/endian.h"

#include <fmt/format.h>

#include <stdexcept>

namespace qnbd::qcow2::meta {

boost::asio::awaitable<std::vector<std::uint64_t>> read_u64_table(io::File& file,
                                                                  std::uint64_t offset,
                                                                  std::uint64_t count,
                                                                  const char* what) {
  std::vector<std::byte> raw(count * 8);
  if (auto r = co_await file.read_at(offset, raw); !r)
    throw std::runtime_error(fmt::format("could not read {}: {}", what, r.error().message()));
  std::vector<std::uint64_t> out(count);
  for (std::uint64_t i = 0; i < count; ++i) out[i] = format::load_be64(raw.data() + i * 8);
  co_return out;
}

task<> write_u64(io::File& file, std::uint64_t offset, std::uint64_t value) {
  std::byte b[8];
  format::store_be64(b, value);
  co_return co_await file.write_at(offset, b);
}

}  // namespace qnbd::qcow2::meta
