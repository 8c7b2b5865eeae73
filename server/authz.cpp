#include "server/authz.h"

#include "config/access.h"

#include <boost/asio/ip/address_v6.hpp>

#include <fmt/format.h>

#include <sys/socket.h>
#include <netinet/in.h>

#include <cstring>

namespace qnbd::server {
namespace {

using Kind = config::AllowRule::Kind;

bool in_range(const std::array<unsigned char, 16>& a, const config::AllowRule& r) {
  unsigned bits = r.prefix;
  for (std::size_t i = 0; i < 16 && bits; ++i) {
    unsigned take = bits >= 8 ? 8 : bits;
    auto mask = static_cast<unsigned char>(0xff00u >> take);
    if ((a[i] & mask) != (r.addr[i] & mask)) return false;
    bits -= take;
  }
  return true;
}

bool matches(const config::AllowRule& r, const PeerIdentity& who) {
  switch (r.kind) {
    case Kind::address:
      return who.address && in_range(*who.address, r);
    case Kind::uid:
      return who.uid && *who.uid == r.uid;
    case Kind::dn:
      return !who.dn.empty() && config::normalise_dn(who.dn) == r.name;
    case Kind::psk:
      return !who.psk_user.empty() && who.psk_user == r.name;
  }
  return false;
}

std::string describe(const PeerIdentity& who) {
  std::string s;
  if (who.address) {
    auto v6 = boost::asio::ip::make_address_v6(*who.address);
    s = "address " +
        (v6.is_v4_mapped()
             ? boost::asio::ip::make_address_v4(boost::asio::ip::v4_mapped, v6).to_string()
             : v6.to_string());
  } else if (who.uid) {
    s = fmt::format("uid {}", *who.uid);
  } else {
    s = "unknown address";
  }
  s += who.dn.empty() ? ", no verified certificate" : ", subject '" + who.dn + "'";
  s += who.psk_user.empty() ? ", no PSK user" : ", PSK user '" + who.psk_user + "'";
  return s;
}

}  // namespace

PeerIdentity identify(Socket& s) {
  PeerIdentity who;
  error_code ec;
  auto ep = s.remote_endpoint(ec);
  if (ec) return who;
  const auto* sa = ep.data();
  if (sa->sa_family == AF_INET) {
    std::array<unsigned char, 16> a{};
    a[10] = a[11] = 0xff;
    std::memcpy(a.data() + 12, &reinterpret_cast<const sockaddr_in*>(sa)->sin_addr, 4);
    who.address = a;
  } else if (sa->sa_family == AF_INET6) {
    std::array<unsigned char, 16> a{};
    std::memcpy(a.data(), &reinterpret_cast<const sockaddr_in6*>(sa)->sin6_addr, 16);
    who.address = a;
  } else if (sa->sa_family == AF_UNIX) {
    ucred cred{};
    socklen_t len = sizeof cred;
    if (::getsockopt(s.native_handle(), SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0)
      who.uid = cred.uid;
  }
  return who;
}

std::string refusal(const std::vector<config::AllowRule>& allow, const PeerIdentity& who) {
  if (allow.empty()) return {};
  for (const auto& r : allow)
    if (matches(r, who)) return {};
  return "no allow rule matches (" + describe(who) + ")";
}

}  // namespace qnbd::server
