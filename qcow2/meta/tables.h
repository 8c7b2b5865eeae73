// Big-endian 64-bit tables (L1, refcount table) as stored on disk.
#pragma once

#include "common/task.h"
#include "io/file.h"

#include <boost/asio/awaitable.hpp>

#include <cstdint>
#include <vector>

namespace qnbd::qcow2::meta {

// Reads `count` entries at `offset` (zeros past EOF). Throws
// std::runtime_error("could not read <what>: ...") on an I/O error.
boost::asio::awaitable<std::vector<std::uint64_t>> read_u64_table(io::File& file,
                                                                  std::uint64_t offset,
                                                                  std::uint64_t count,
                                                                  const char* what = "table");

// Writes one entry (L1 entry, reftable entry, header field...) in place.
task<> write_u64(io::File& file, std::uint64_t offset, std::uint64_t value);

}  // namespace qnbd::qcow2::meta
