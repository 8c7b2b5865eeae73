// Shared helpers of the qnbd-img subcommands: errors that end the program
// with a one-line message and exit status 1, size and option parsing in
// qemu-img's syntax, opening files, JSON and human-size formatting.
#pragma once

#include "io/uring_file.h"
#include "qcow2/check/run_sync.h"

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace qnbd::img {

// A user-facing error: printed as "qnbd-img: <what>", exit status 1.
class Fatal : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// "64M", "1.5G", "512": bytes. K/M/G/T/P/E suffixes (powers of 1024).
std::uint64_t parse_size(const std::string& s);
// "a=b,c=d" into pairs; ",," escapes a comma as in qemu.
std::vector<std::pair<std::string, std::string>> parse_options(const std::string& s);
bool parse_bool(const std::string& key, const std::string& value);

// qemu's size_to_str: "64 MiB", "1.5 GiB", "452 KiB".
std::string human_size(std::uint64_t bytes);
std::string json_string(const std::string& s);

std::unique_ptr<io::UringFile> open_file(qcow2::SyncRunner& run, const std::string& path,
                                         bool writable);
// True if the file starts with the qcow2 magic (Fatal if it cannot be read).
bool is_qcow2(const std::string& path);

// Silences the engine's log (its sink is stdout) while a subcommand prints
// qemu-img's output; the engine's errors reach the user as exceptions.
class QuietLog {
 public:
  QuietLog();
  ~QuietLog();

 private:
  int level_;
};

// One subcommand's argv (after the subcommand name).
using Args = std::vector<std::string>;
int cmd_create(const Args& args);
int cmd_info(const Args& args);
int cmd_map(const Args& args);
int cmd_check(const Args& args);
int cmd_bitmap(const Args& args);
int cmd_defrag(const Args& args);

}  // namespace qnbd::img

namespace qnbd::img {

// Command-line options of one subcommand: "-x VALUE", "--long=VALUE" or
// "--long VALUE" for names in `with_value`, bare flags in `flags`.
struct ParsedArgs {
  std::vector<std::pair<std::string, std::string>> options;  // in order
  std::vector<std::string> positional;
  const std::string* last(const std::string& name) const;
  bool has(const std::string& name) const { return last(name) != nullptr; }
};
ParsedArgs parse_args(const Args& args, const std::vector<std::string>& with_value,
                      const std::vector<std::string>& flags);

// "human" or "json" from --output.
bool json_output(const ParsedArgs& a);

}  // namespace qnbd::img
