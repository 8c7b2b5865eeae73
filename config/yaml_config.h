// YAML configuration file -> Config. Every problem, including a missing
// image, is a ConfigError "FILE:LINE: what" pointing at the offending value.
#pragma once

#include "config/config.h"

#include <filesystem>
#include <string>

namespace qnbd::config {

// Reads, parses and validates the file at `path`.
Config load_config_file(const std::string& path);

// Parses and validates YAML `text`. `file_name` prefixes error messages;
// relative paths in the text (images, pid file, Unix socket) are resolved
// against `base_dir`, which should be absolute.
Config parse_config_text(const std::string& text, const std::string& file_name,
                         const std::filesystem::path& base_dir);

}  // namespace qnbd::config
