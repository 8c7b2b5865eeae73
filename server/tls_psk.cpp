#include "server/tls_psk.h"

#include <stdexcept>

namespace qnbd::server {
namespace {

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

PskKeys parse_psk_file(std::string_view text) {
  PskKeys keys;
  unsigned line_no = 0;
  while (!text.empty()) {
    auto nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == text.npos ? std::string_view{} : text.substr(nl + 1);
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty() || line.front() == '#') continue;
    const auto bad = [&](const std::string& why) {
      return std::runtime_error("line " + std::to_string(line_no) + ": " + why);
    };
    auto colon = line.find(':');
    if (colon == line.npos) throw bad("expected username:hexkey");
    std::string_view user = line.substr(0, colon), hex = line.substr(colon + 1);
    if (user.empty()) throw bad("empty user name");
    if (hex.empty() || hex.size() % 2) throw bad("the key must be an even number of hex digits");
    std::vector<unsigned char> key;
    for (std::size_t i = 0; i < hex.size(); i += 2) {
      int hi = hex_digit(hex[i]), lo = hex_digit(hex[i + 1]);
      if (hi < 0 || lo < 0) throw bad("the key must be hex digits");
      key.push_back(static_cast<unsigned char>(hi * 16 + lo));
    }
    if (!keys.emplace(std::string(user), std::move(key)).second)
      throw bad("user '" + std::string(user) + "' appears twice");
  }
  return keys;
}

}  // namespace qnbd::server
