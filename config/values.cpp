#include "config/values.h"

#include "config/validate.h"

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <limits>
#include <vector>

namespace qnbd::config {
namespace {

std::string quoted(std::string_view text) { return "'" + std::string(text) + "'"; }

bool all_digits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// Parses digits only; returns false on overflow.
bool to_u64(std::string_view digits, std::uint64_t& out) {
  auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), out);
  return ec == std::errc{} && ptr == digits.data() + digits.size();
}

template <class E, std::size_t N>
E parse_enum(std::string_view text, const std::array<std::pair<std::string_view, E>, N>& table,
             std::string_view expected) {
  for (const auto& [name, value] : table)
    if (name == text) return value;
  throw ValueError("expected " + std::string(expected) + ", got " + quoted(text));
}

constexpr std::array<std::pair<std::string_view, Format>, 2> formats{
    {{"raw", Format::raw}, {"qcow2", Format::qcow2}}};
constexpr std::array<std::pair<std::string_view, CacheMode>, 2> cache_modes{
    {{"writeback", CacheMode::writeback}, {"none", CacheMode::none}}};
constexpr std::array<std::pair<std::string_view, LogLevel>, 5> log_levels{
    {{"trace", LogLevel::trace},
     {"debug", LogLevel::debug},
     {"info", LogLevel::info},
     {"warn", LogLevel::warn},
     {"error", LogLevel::error}}};

std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      std::size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

}  // namespace

std::uint64_t parse_uint(std::string_view text, std::uint64_t lo, std::uint64_t hi) {
  std::uint64_t v = 0;
  if (!all_digits(text) || !to_u64(text, v) || v < lo || v > hi)
    throw ValueError("expected a number " + std::to_string(lo) + "-" + std::to_string(hi) +
                     ", got " + quoted(text));
  return v;
}

std::uint64_t parse_size(std::string_view text) {
  const auto bad = [&] {
    return ValueError("expected a size in bytes with an optional K, M, G or T suffix, got " +
                      quoted(text));
  };
  std::size_t n = 0;
  while (n < text.size() && text[n] >= '0' && text[n] <= '9') ++n;
  std::string_view digits = text.substr(0, n), suffix = text.substr(n);
  if (suffix.size() == 3 && suffix.substr(1) == "iB")
    suffix.remove_suffix(2);  // "MiB"
  else if ((suffix.size() == 2 && suffix[1] == 'B') || suffix == "B")
    suffix.remove_suffix(1);  // "MB", "B"
  unsigned shift = 0;
  if (suffix.size() == 1) {
    switch (suffix[0]) {
      case 'k':
      case 'K':
        shift = 10;
        break;
      case 'm':
      case 'M':
        shift = 20;
        break;
      case 'g':
      case 'G':
        shift = 30;
        break;
      case 't':
      case 'T':
        shift = 40;
        break;
      default:
        throw bad();
    }
  } else if (!suffix.empty()) {
    throw bad();
  }
  std::uint64_t v = 0;
  if (!all_digits(digits) || !to_u64(digits, v)) throw bad();
  if (v > (std::numeric_limits<std::uint64_t>::max() >> shift))
    throw ValueError("size " + quoted(text) + " is too large");
  return v << shift;
}

double parse_seconds(std::string_view text, double hi) {
  double v = 0;
  auto [ptr, ec] =
      std::from_chars(text.data(), text.data() + text.size(), v, std::chars_format::fixed);
  if (text.empty() || text[0] == '-' || ec != std::errc{} || ptr != text.data() + text.size() ||
      !std::isfinite(v) || v < 0 || v > hi) {
    char buf[32];
    auto end = std::to_chars(buf, buf + sizeof buf, hi).ptr;
    throw ValueError("expected a number of seconds 0-" + std::string(buf, end) + ", got " +
                     quoted(text));
  }
  return v;
}

Endpoint parse_endpoint(std::string_view text) {
  const auto colon = text.rfind(':');
  if (colon == text.npos) throw ValueError("expected HOST:PORT, got " + quoted(text));
  std::string_view host = text.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  else if (host.find(':') != host.npos)
    throw ValueError("write an IPv6 address in brackets, [ADDR]:PORT, got " + quoted(text));
  Endpoint e{std::string(host), 0};
  if (auto p = host_problem(e.host); !p.empty()) throw ValueError(p);
  e.port = static_cast<std::uint16_t>(parse_uint(text.substr(colon + 1), 1, 65535));
  return e;
}

Format parse_format(std::string_view text) { return parse_enum(text, formats, "raw|qcow2"); }

bool parse_defrag_mode(std::string_view text) {
  constexpr std::array<std::pair<std::string_view, bool>, 2> modes{
      {{"off", false}, {"auto", true}}};
  return parse_enum(text, modes, "off|auto");
}

CacheMode parse_cache_mode(std::string_view text) {
  return parse_enum(text, cache_modes, "writeback|none");
}

DetectZeroes parse_detect_zeroes(std::string_view text) {
  constexpr std::array<std::pair<std::string_view, DetectZeroes>, 3> modes{
      {{"off", DetectZeroes::off}, {"on", DetectZeroes::on}, {"unmap", DetectZeroes::unmap}}};
  return parse_enum(text, modes, "off|on|unmap");
}

LogLevel parse_log_level(std::string_view text) {
  return parse_enum(text, log_levels, "trace|debug|info|warn|error");
}

std::string_view to_string(Format f) {
  return f == Format::detect ? "detect" : f == Format::raw ? "raw" : "qcow2";
}

std::string_view to_string(CacheMode c) { return c == CacheMode::none ? "none" : "writeback"; }

std::string_view to_string(LogLevel l) {
  for (const auto& [name, value] : log_levels)
    if (value == l) return name;
  return "info";
}

std::string_view nearest(std::string_view word, std::span<const std::string_view> candidates) {
  std::string_view best;
  std::size_t best_distance = std::numeric_limits<std::size_t>::max();
  for (std::string_view c : candidates) {
    std::size_t d = edit_distance(word, c);
    if (d < best_distance) best = c, best_distance = d;
  }
  // A third of the word may be wrong, at least two characters (readonly -> read_only).
  std::size_t tolerance = std::max<std::size_t>(2, word.size() / 3);
  return best_distance <= tolerance ? best : std::string_view{};
}

}  // namespace qnbd::config
