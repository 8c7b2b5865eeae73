// Single checks behind validate(), exposed so the YAML loader can report the
// same problems with the file and line where the value was written.
#pragma once

#include "config/config.h"

#include <string>

namespace qnbd::config {

// NBD limits strings in the handshake to 4096 bytes (NBD_MAX_STRING_LENGTH).
inline constexpr std::size_t max_nbd_string = 4096;

// Returns "" when `path` can be served, else why not ("No such file or
// directory", "is a directory, expected a regular file or block device", ...).
std::string image_file_problem(const std::string& path, bool read_only);

// Returns "" when `host` is an IPv4/IPv6 literal or a plausible host name.
std::string host_problem(const std::string& host);

// Returns "" when `path` fits in sockaddr_un.
std::string unix_path_problem(const std::string& path);

// Returns "" when the name and description fit the NBD handshake.
std::string export_strings_problem(const Export& e);

}  // namespace qnbd::config
