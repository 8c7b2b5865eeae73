// The PSK file format qemu, nbdkit and gnutls' psktool share: one
// "username:hexkey" per line. Pure parser; the caller reads the file.
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace qnbd::server {

using PskKeys = std::map<std::string, std::vector<unsigned char>, std::less<>>;

// Throws std::runtime_error naming the line on a malformed entry (missing
// ':', empty user, odd or non-hex key, duplicate user). Blank lines and
// lines starting with '#' are skipped.
PskKeys parse_psk_file(std::string_view text);

}  // namespace qnbd::server
