// The qnbd command line (qemu-nbd-like) -> a validated config::Config.
//
//   qnbd [OPTIONS] IMAGE        serve one image
//   qnbd [OPTIONS] --config F   serve the exports of a YAML file
//
// With --config, per-export options and IMAGE are errors; the global options
// (-k/-b/-p, --log-level, --pid-file, --fork, --max-connections,
// --handshake-timeout) override the file's values. Every error is a
// config::ConfigError whose what() is one line, printed by main() after
// "qnbd: ": "--port: expected a number 1-65535, got 'abc'", or
// "FILE:LINE: ..." for problems inside a config file.
#pragma once

#include "config/config.h"

#include <functional>
#include <span>
#include <string>
#include <string_view>

namespace qnbd::server {

enum class CliAction {
  serve,         // run the server with `config`
  help,          // --help: print usage_text()
  version,       // --version: print version_text()
  check_config,  // --check-config: `config` is valid; report and exit
};

struct CliResult {
  CliAction action = CliAction::serve;
  config::Config config;  // validated for serve and check_config
};

// Parses the arguments after argv[0]. Does not print or exit, so it can be
// tested; it does read the config file and stat() the images (validate()).
CliResult parse_cli(std::span<const std::string_view> args);

std::string usage_text();
std::string version_text();

// For main(): --help, --version and --check-config print to stdout and
// exit(0) here; otherwise returns the validated config to serve. Throws
// config::ConfigError (print what() and exit 1). --check-config first runs
// `deep_check` (opening the images), which throws std::exception on a problem.
config::Config parse_command_line(
    int argc, char** argv, const std::function<void(const config::Config&)>& deep_check = {});

}  // namespace qnbd::server
