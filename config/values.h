// Parsing of single option values shared by the command line and the YAML
// loader, so `--cache none` and `cache: none` accept exactly the same words
// and report the same one-line messages. Every parser throws ValueError with
// a message that does not name the option; the caller adds "--port: " or
// "FILE:LINE: exports[0].cache: " in front.
#pragma once

#include "config/config.h"

#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>

namespace qnbd::config {

// Upper bounds shared by the command line and the YAML file.
inline constexpr std::uint64_t max_connections_limit = 1'000'000;
inline constexpr std::uint64_t max_workers = 64;
inline constexpr std::uint64_t max_handshake_timeout = 3600;  // seconds
inline constexpr double max_clean_interval = 86400;           // seconds

struct ValueError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Decimal integer in [lo, hi]; no sign, no spaces, no suffix.
std::uint64_t parse_uint(std::string_view text, std::uint64_t lo, std::uint64_t hi);

// Byte count with an optional power-of-1024 suffix K, M, G or T (either
// case, optionally followed by "B" or "iB"), as qemu-img sizes are.
std::uint64_t parse_size(std::string_view text);

// Non-negative decimal number of seconds (fractions allowed) up to hi.
double parse_seconds(std::string_view text, double hi);

// "off" or "auto" (the YAML defrag: and --defrag): true for auto.
bool parse_defrag_mode(std::string_view text);

// "HOST:PORT" or "[IPV6]:PORT"; the host checked as host_problem() does.
Endpoint parse_endpoint(std::string_view text);

Format parse_format(std::string_view text);
CacheMode parse_cache_mode(std::string_view text);
DetectZeroes parse_detect_zeroes(std::string_view text);
LogLevel parse_log_level(std::string_view text);

std::string_view to_string(Format f);
std::string_view to_string(CacheMode c);
std::string_view to_string(LogLevel l);

// The candidate closest to `word` by edit distance, or "" when none is close
// enough to be a plausible typo.
std::string_view nearest(std::string_view word, std::span<const std::string_view> candidates);

}  // namespace qnbd::config
