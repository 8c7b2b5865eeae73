// Start a real qnbd on a temporary socket for libnbd-driven tests.
//
// The binary is $QNBD (meson sets it). When it names qemu-nbd, the same tests
// run against qemu-nbd, which is how they were validated; YAML configs are
// qnbd-only.
#pragma once

#include "tests/lib/temp_dir.h"

#include <libnbd.h>
#include <sys/types.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace qnbd_it {

inline constexpr std::uint64_t KiB = 1024;
inline constexpr std::uint64_t MiB = 1024 * 1024;

std::string server_binary();
bool is_reference_server();

// Must run before any server starts: daemonised servers are re-parented to us,
// so their real exit status can be collected.
void become_subreaper();

using qnbd::test::TempDir;

struct Range {
  std::uint64_t offset;
  std::uint64_t length;
};

// Bytes that differ per 512-byte sector (same formula as qnbd_harness.py).
std::vector<std::uint8_t> pattern(std::uint64_t offset, std::uint64_t length,
                                  std::uint32_t seed = 0);
std::string make_sparse_image(const std::string& path, std::uint64_t size,
                              const std::vector<Range>& data, std::uint32_t seed = 0);
std::vector<std::uint8_t> read_file(const std::string& path, std::uint64_t offset,
                                    std::uint64_t length);
std::uint64_t allocated_bytes(const std::string& path);
// The file system's view: [offset, length, is_data] via SEEK_DATA / SEEK_HOLE.
std::vector<std::pair<Range, bool>> file_extents(const std::string& path);

struct ServerOptions {
  std::string image;
  std::string format = "raw";
  std::string name;
  std::string description;
  bool read_only = false;
  bool unix_socket = true;
  bool tcp = false;
  std::string config;  // YAML config instead of the flags above
  std::vector<std::string> extra_args;

  // Fluent set-up (designated initialisers trip -Wmissing-field-initializers).
  static ServerOptions serving(std::string image_path) {
    ServerOptions o;
    o.image = std::move(image_path);
    return o;
  }
  static ServerOptions from_config(std::string path) {
    ServerOptions o;
    o.config = std::move(path);
    return o;
  }
  ServerOptions formatted(std::string f) && {
    format = std::move(f);
    return std::move(*this);
  }
  ServerOptions named(std::string n) && {
    name = std::move(n);
    return std::move(*this);
  }
  ServerOptions described(std::string d) && {
    description = std::move(d);
    return std::move(*this);
  }
  ServerOptions readonly() && {
    read_only = true;
    return std::move(*this);
  }
  ServerOptions with_tcp() && {
    tcp = true;
    return std::move(*this);
  }
  ServerOptions with_args(std::vector<std::string> a) && {
    extra_args = std::move(a);
    return std::move(*this);
  }
};

// One qnbd serving in `dir` (nbd.sock, qnbd.pid, qnbd.log there). Ready once
// constructed: --fork returns after the socket listens. A stale socket or pid
// file of an earlier server in the same directory is removed first.
class Server {
 public:
  Server(const TempDir& dir, ServerOptions options);
  ~Server();  // stops the server and checks that it exits 0 (unless killed)
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  const std::string& socket() const { return socket_; }
  const std::string& log() const { return log_; }
  int port() const { return port_; }
  bool alive();
  // SIGKILL (the crash under test) and reap; checks it was still running.
  void kill();
  void dump_log() const;
  std::vector<std::string> argv() const;

 private:
  void start();
  void stop();

  ServerOptions options_;
  std::string socket_;
  std::string pid_file_;
  std::string log_;
  int port_ = 0;
  pid_t pid_ = -1;
};

// An owned nbd_handle.
class Handle {
 public:
  Handle();
  ~Handle();
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  operator nbd_handle*() const { return h_; }

 private:
  nbd_handle* h_;
};

int free_tcp_port();

// For the checks: "what libnbd said" on failure.
std::string last_error();

}  // namespace qnbd_it

// Fails the test with libnbd's message when a libnbd call returns -1.
#define NBD_OK(call)                                                        \
  do {                                                                      \
    auto nbd_ok_rc_ = (call);                                               \
    REQUIRE_MESSAGE(nbd_ok_rc_ != -1, #call ": " << qnbd_it::last_error()); \
  } while (0)
