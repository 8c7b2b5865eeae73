// Big-endian loads and stores over byte buffers: every qcow2 integer on disk
// is big-endian. Unaligned access is fine (memcpy).
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace qnbd::qcow2::format {

template <class T>
constexpr T swap_bytes(T v) {
  if constexpr (sizeof(T) == 1)
    return v;
  else if constexpr (sizeof(T) == 2)
    return static_cast<T>(__builtin_bswap16(v));
  else if constexpr (sizeof(T) == 4)
    return static_cast<T>(__builtin_bswap32(v));
  else
    return static_cast<T>(__builtin_bswap64(v));
}

template <class T>
inline T load_be(const std::byte* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  if constexpr (std::endian::native == std::endian::little) v = swap_bytes(v);
  return v;
}

template <class T>
inline void store_be(std::byte* p, T v) {
  if constexpr (std::endian::native == std::endian::little) v = swap_bytes(v);
  std::memcpy(p, &v, sizeof v);
}

inline std::uint16_t load_be16(const std::byte* p) { return load_be<std::uint16_t>(p); }
inline std::uint32_t load_be32(const std::byte* p) { return load_be<std::uint32_t>(p); }
inline std::uint64_t load_be64(const std::byte* p) { return load_be<std::uint64_t>(p); }
inline void store_be16(std::byte* p, std::uint16_t v) { store_be(p, v); }
inline void store_be32(std::byte* p, std::uint32_t v) { store_be(p, v); }
inline void store_be64(std::byte* p, std::uint64_t v) { store_be(p, v); }

}  // namespace qnbd::qcow2::format
