// Deterministic mutations of seed inputs, for the suite's fuzz driver
// (driver.cpp). No coverage feedback: each new input is one seed with a few
// stacked edits of the kinds that break parsers of binary formats (bit
// flips, boundary values in 8/16/32/64-bit fields, truncation, inserted and
// deleted runs, copied chunks, splices of two seeds). The same seed and the
// same seed corpus give the same sequence of inputs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

namespace qnbd::fuzz {

using Bytes = std::vector<std::uint8_t>;

class Mutator {
 public:
  // Inputs never grow past max_len bytes.
  Mutator(std::uint64_t seed, std::size_t max_len) : rng_(seed), max_len_(max_len) {}

  // A new input made from seeds[base] (and maybe a second seed, to splice).
  // seeds must not be empty; base < seeds.size().
  Bytes next(const std::vector<Bytes>& seeds, std::size_t base);

  // Uniform in [0, n); 0 when n is 0.
  std::size_t below(std::size_t n);

 private:
  void mutate_once(Bytes& b, const std::vector<Bytes>& seeds);
  void set_field(Bytes& b);
  void insert_run(Bytes& b);
  void erase_run(Bytes& b);
  void copy_chunk(Bytes& b);
  void splice(Bytes& b, const Bytes& other);
  // A position in b, often inside the first 512 bytes (qcow2 header, NBD
  // headers) and often aligned to `align` (table entries, header fields).
  std::size_t position(const Bytes& b, std::size_t align);
  std::uint64_t interesting(const Bytes& b, unsigned width);
  std::size_t run_length(std::size_t limit);

  std::mt19937_64 rng_;
  std::size_t max_len_;
};

}  // namespace qnbd::fuzz
