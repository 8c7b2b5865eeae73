#include "tests/fuzz/mutator.h"

#include <algorithm>
#include <array>

namespace qnbd::fuzz {

namespace {

constexpr std::array<std::uint8_t, 9> kBytes = {0x00, 0x01, 0x7f, 0x80, 0xff,
                                                0x10, 0x20, 0x40, 0xfe};
constexpr std::size_t kHead = 512;  // the region most formats keep their headers in
constexpr std::size_t kMaxRun = 512;

void store(Bytes& b, std::size_t pos, std::uint64_t v, unsigned width, bool big_endian) {
  for (unsigned i = 0; i < width && pos + i < b.size(); ++i) {
    const unsigned shift = big_endian ? 8 * (width - 1 - i) : 8 * i;
    b[pos + i] = static_cast<std::uint8_t>(v >> shift);
  }
}

std::uint64_t load(const Bytes& b, std::size_t pos, unsigned width) {
  std::uint64_t v = 0;
  for (unsigned i = 0; i < width && pos + i < b.size(); ++i) v = v << 8 | b[pos + i];
  return v;
}

}  // namespace

std::size_t Mutator::below(std::size_t n) {
  return n == 0 ? 0 : static_cast<std::size_t>(rng_() % n);
}

Bytes Mutator::next(const std::vector<Bytes>& seeds, std::size_t base) {
  Bytes b = seeds[base];
  // Mostly one or two edits: more would rarely keep an input parseable.
  const std::size_t edits = 1 + (below(4) == 0 ? below(4) : below(2));
  for (std::size_t i = 0; i < edits; ++i) mutate_once(b, seeds);
  if (b.size() > max_len_) b.resize(max_len_);
  return b;
}

void Mutator::mutate_once(Bytes& b, const std::vector<Bytes>& seeds) {
  if (b.empty()) {
    insert_run(b);
    return;
  }
  switch (below(10)) {
    case 0:
    case 1:
      b[position(b, 1)] ^= static_cast<std::uint8_t>(1u << below(8));
      break;
    case 2:
      b[position(b, 1)] = kBytes[below(kBytes.size())];
      break;
    case 3:
      b[position(b, 1)] = static_cast<std::uint8_t>(rng_());
      break;
    case 4:
    case 5:
      set_field(b);
      break;
    case 6:
      b.resize(below(b.size()));
      break;
    case 7:
      below(2) ? insert_run(b) : erase_run(b);
      break;
    case 8:
      copy_chunk(b);
      break;
    default:
      splice(b, seeds[below(seeds.size())]);
      break;
  }
}

// A 16/32/64-bit field set to a boundary value, mostly big-endian (qcow2
// and NBD are big-endian; bitmaps and some payloads are not).
void Mutator::set_field(Bytes& b) {
  static constexpr std::array<unsigned, 3> kWidths = {2, 4, 8};
  const unsigned width = kWidths[below(kWidths.size())];
  const std::size_t pos = position(b, width);
  store(b, pos, interesting(b, width), width, below(4) != 0);
}

std::uint64_t Mutator::interesting(const Bytes& b, unsigned width) {
  const unsigned bits = 8 * width;
  const std::uint64_t max = bits == 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << bits) - 1;
  switch (below(8)) {
    case 0:
      return 0;
    case 1:
      return max;
    case 2:
      return max >> 1 | (below(2) ? 0 : max ^ (max >> 1));  // INT_MAX or INT_MIN
    case 3: {  // a power of two near a size: 512 B .. 2^(bits-1), or one off it
      const std::uint64_t p = std::uint64_t{1} << (9 + below(bits - 9));
      return (p + static_cast<std::uint64_t>(below(3)) - 1) & max;
    }
    case 4:  // the input's own size, or one off it (an offset at EOF)
      return (b.size() + below(3) - 1) & max;
    case 5:
      return rng_() & max;
    default: {  // the field's current value, nudged
      const std::size_t pos = position(b, width);
      const std::uint64_t v = load(b, pos, width);
      const std::uint64_t delta = 1 + below(16);
      return (below(2) ? v + delta : v - delta) & max;
    }
  }
}

void Mutator::insert_run(Bytes& b) {
  if (b.size() >= max_len_) return;
  const std::size_t pos = b.empty() ? 0 : position(b, 1);
  const std::size_t n = std::min(run_length(kMaxRun), max_len_ - b.size());
  Bytes run(n);
  if (below(2)) {
    std::fill(run.begin(), run.end(), kBytes[below(kBytes.size())]);
  } else {
    for (auto& x : run) x = static_cast<std::uint8_t>(rng_());
  }
  b.insert(b.begin() + static_cast<std::ptrdiff_t>(pos), run.begin(), run.end());
}

void Mutator::erase_run(Bytes& b) {
  const std::size_t pos = position(b, 1);
  const std::size_t n = std::min(run_length(kMaxRun), b.size() - pos);
  b.erase(b.begin() + static_cast<std::ptrdiff_t>(pos),
          b.begin() + static_cast<std::ptrdiff_t>(pos + n));
}

// Overwrites one part of the input with another (a table entry pointing
// where another does, a header field holding another field's value).
void Mutator::copy_chunk(Bytes& b) {
  const std::size_t from = position(b, 8);
  const std::size_t to = position(b, 8);
  const std::size_t n = std::min({run_length(64), b.size() - from, b.size() - to});
  std::copy_n(b.begin() + static_cast<std::ptrdiff_t>(from), n,
              b.begin() + static_cast<std::ptrdiff_t>(to));
}

// The start of b with the rest of another seed, cut at the same offset (so
// structures stay where each seed put them) or at any offset in other.
void Mutator::splice(Bytes& b, const Bytes& other) {
  const std::size_t cut = below(b.size() + 1);
  const std::size_t from = below(2) ? std::min(cut, other.size()) : below(other.size() + 1);
  b.resize(cut);
  b.insert(b.end(), other.begin() + static_cast<std::ptrdiff_t>(from), other.end());
}

std::size_t Mutator::position(const Bytes& b, std::size_t align) {
  const std::size_t span = below(2) ? std::min(b.size(), kHead) : b.size();
  std::size_t pos = below(span);
  if (below(2)) pos -= pos % align;
  return pos;
}

// Mostly short runs, sometimes up to the limit.
std::size_t Mutator::run_length(std::size_t limit) {
  return 1 + (below(4) == 0 ? below(limit) : below(std::min<std::size_t>(limit, 16)));
}

}  // namespace qnbd::fuzz
