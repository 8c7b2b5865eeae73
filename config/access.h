// Parsing and checks of the access settings: a listener's TLS (`tls:`,
// --tls*) and an export's `allow:` list. Shared by the command line and the
// YAML loader so both accept the same words; parsers throw ValueError.
//
// Allow-list grammar, one rule per entry (a client may use the export when
// any rule matches it):
//   10.0.0.0/8, 192.168.1.7, 2001:db8::/32, ::1   client address range (TCP)
//   uid:1000                                      Unix-socket peer by user id
//   dn:CN=client1,O=Example                       verified X.509 subject (RFC 4514)
//   psk:alice                                     TLS-PSK user name
#pragma once

#include "config/config.h"

#include <string>
#include <string_view>

namespace qnbd::config {

TlsMode parse_tls_mode(std::string_view text);
std::string_view to_string(TlsMode m);

// The mode in force: the explicit one, else require when credentials are
// given (as qemu-nbd does with --tls-creds), else off.
TlsMode effective_mode(const Tls& t);

AllowRule parse_allow_rule(std::string_view text);

// Subject DNs compare after dropping the blanks that may follow a separating
// comma ("CN=a, O=b" and "CN=a,O=b" are one name).
std::string normalise_dn(std::string_view dn);

// "" when the TLS settings can be served, else why not (files are checked
// for presence and readability; their contents at start-up).
std::string tls_problem(const Tls& t);

// "" when every rule of `e` can ever match on a listener with `t`.
std::string allow_problem(const Export& e, const Tls& t);

}  // namespace qnbd::config
