// Whether a buffer holds only zero bytes (--detect-zeroes).
#pragma once

#include <cstddef>
#include <cstring>
#include <span>

namespace qnbd {

// The first byte is zero and every byte equals the one before it: one
// memcmp of the buffer against itself shifted by a byte (glibc's vectorised
// memcmp), which stops at the first difference, so data exits early.
inline bool all_zero_bytes(std::span<const std::byte> b) {
  return b.empty() ||
         (b[0] == std::byte{0} && std::memcmp(b.data(), b.data() + 1, b.size() - 1) == 0);
}

}  // namespace qnbd
