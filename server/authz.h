// Per-export authorization: who a client is (address or Unix uid, and after
// STARTTLS its verified certificate subject or PSK user name) against the
// export's `allow:` rules (grammar in config/access.h). Pure apart from
// identify(), which asks the socket.
#pragma once

#include "config/config.h"
#include "server/connection.h"

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace qnbd::server {

struct PeerIdentity {
  std::optional<std::array<unsigned char, 16>> address;  // TCP; IPv4 as ::ffff:a.b.c.d
  std::optional<std::uint32_t> uid;                      // Unix socket (SO_PEERCRED)
  std::string dn;        // verified client certificate subject (RFC 4514); "" none
  std::string psk_user;  // TLS-PSK identity; "" none
};

// The address or uid of the peer of an accepted socket.
PeerIdentity identify(Socket& s);

// "" when `who` may use an export with `allow` (empty: everyone); else the
// reason it may not, for the log.
std::string refusal(const std::vector<config::AllowRule>& allow, const PeerIdentity& who);

}  // namespace qnbd::server
