#include "config/access.h"

#include "config/values.h"

#include <arpa/inet.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>

namespace qnbd::config {
namespace {

constexpr std::array<std::pair<std::string_view, TlsMode>, 3> tls_modes{
    {{"off", TlsMode::off}, {"on", TlsMode::on}, {"require", TlsMode::require}}};

std::string readable_problem(const std::string& path) {
  if (::access(path.c_str(), R_OK) != 0) return "'" + path + "': " + std::strerror(errno);
  return {};
}

AllowRule parse_address(std::string_view text) {
  AllowRule r;
  r.kind = AllowRule::Kind::address;
  std::string addr(text.substr(0, text.find('/')));
  in_addr v4;
  unsigned bits = 0;
  if (::inet_pton(AF_INET, addr.c_str(), &v4) == 1) {
    r.addr[10] = r.addr[11] = 0xff;
    std::memcpy(r.addr.data() + 12, &v4, 4);
    bits = 32;
  } else if (::inet_pton(AF_INET6, addr.c_str(), r.addr.data()) == 1) {
    bits = 128;
  } else {
    throw ValueError(
        "expected an address range (10.0.0.0/8, ::1), uid:N, dn:SUBJECT or psk:USER, "
        "got '" +
        std::string(text) + "'");
  }
  unsigned prefix = bits;
  if (auto slash = text.find('/'); slash != text.npos)
    prefix = static_cast<unsigned>(parse_uint(text.substr(slash + 1), 0, bits));
  r.prefix = prefix + (128 - bits);
  return r;
}

}  // namespace

TlsMode parse_tls_mode(std::string_view text) {
  for (const auto& [name, value] : tls_modes)
    if (name == text) return value;
  throw ValueError("expected off|on|require, got '" + std::string(text) + "'");
}

std::string_view to_string(TlsMode m) {
  for (const auto& [name, value] : tls_modes)
    if (value == m) return name;
  return "off";
}

TlsMode effective_mode(const Tls& t) {
  if (t.mode) return *t.mode;
  return t.certificates.empty() && t.psk_file.empty() ? TlsMode::off : TlsMode::require;
}

std::string normalise_dn(std::string_view dn) {
  std::string out;
  bool after_comma = false;
  for (std::size_t i = 0; i < dn.size(); ++i) {
    char c = dn[i];
    if (after_comma && c == ' ') continue;
    after_comma = c == ',' && (i == 0 || dn[i - 1] != '\\');
    out += c;
  }
  return out;
}

AllowRule parse_allow_rule(std::string_view text) {
  auto value = [&](std::string_view prefix) { return text.substr(prefix.size()); };
  AllowRule r;
  if (text.starts_with("uid:")) {
    r.kind = AllowRule::Kind::uid;
    r.uid = static_cast<std::uint32_t>(parse_uint(value("uid:"), 0, 0xfffffffe));
  } else if (text.starts_with("dn:")) {
    r.kind = AllowRule::Kind::dn;
    r.name = normalise_dn(value("dn:"));
    if (r.name.empty()) throw ValueError("dn: needs a subject such as CN=client,O=Example");
  } else if (text.starts_with("psk:")) {
    r.kind = AllowRule::Kind::psk;
    r.name = std::string(value("psk:"));
    if (r.name.empty()) throw ValueError("psk: needs a user name");
  } else {
    r = parse_address(text);
  }
  r.text = std::string(text);
  return r;
}

std::string tls_problem(const Tls& t) {
  const TlsMode mode = effective_mode(t);
  if (mode == TlsMode::off) return {};
  if (t.certificates.empty() && t.psk_file.empty())
    return "mode " + std::string(to_string(mode)) + " needs certificates (a directory) or psk_file";
  if (!t.certificates.empty()) {
    for (const char* f : {"server-cert.pem", "server-key.pem"})
      if (auto p = readable_problem(t.certificates + "/" + f); !p.empty()) return p;
    if (t.verify_peer)
      if (auto p = readable_problem(t.certificates + "/ca-cert.pem"); !p.empty())
        return "verify_peer needs " + p;
  } else if (t.verify_peer) {
    return "verify_peer needs certificates (a directory with ca-cert.pem)";
  }
  if (!t.psk_file.empty())
    if (auto p = readable_problem(t.psk_file); !p.empty()) return p;
  return {};
}

std::string allow_problem(const Export& e, const Tls& t) {
  const bool tls = effective_mode(t) != TlsMode::off;
  for (const auto& r : e.allow) {
    if (r.kind == AllowRule::Kind::dn && !(tls && t.verify_peer))
      return "allow '" + r.text + "' needs TLS with verify_peer (only verified subjects count)";
    if (r.kind == AllowRule::Kind::psk && !(tls && !t.psk_file.empty()))
      return "allow '" + r.text + "' needs TLS with a psk_file";
  }
  return {};
}

}  // namespace qnbd::config
