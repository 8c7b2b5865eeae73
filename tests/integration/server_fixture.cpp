#include "server_fixture.h"

#include "tests/lib/child.h"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>

namespace qnbd_it {

using qnbd::test::describe_status;
using qnbd::test::wait_with_timeout;

namespace {

std::string errno_text(const std::string& what) { return what + ": " + std::strerror(errno); }

}  // namespace

std::string server_binary() {
  const char* p = std::getenv("QNBD");
  if (p == nullptr || *p == '\0') throw std::runtime_error("QNBD must name the server binary");
  return p;
}

bool is_reference_server() {
  return std::filesystem::path(server_binary()).filename() == "qemu-nbd";
}

void become_subreaper() {
  if (::prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0)
    throw std::runtime_error(errno_text("prctl(PR_SET_CHILD_SUBREAPER)"));
}

std::vector<std::uint8_t> pattern(std::uint64_t offset, std::uint64_t length, std::uint32_t seed) {
  std::vector<std::uint8_t> out(length);
  for (std::uint64_t i = 0; i < length; ++i) {
    std::uint64_t pos = offset + i;
    std::uint32_t word = static_cast<std::uint32_t>((pos / 512) * 2654435761ULL + seed * 40503ULL);
    out[i] = static_cast<std::uint8_t>(word >> (8 * (pos % 4)));
  }
  return out;
}

std::string make_sparse_image(const std::string& path, std::uint64_t size,
                              const std::vector<Range>& data, std::uint32_t seed) {
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) throw std::runtime_error(errno_text("open " + path));
  bool ok = ::ftruncate(fd, static_cast<off_t>(size)) == 0;
  for (auto r : data) {
    auto bytes = pattern(r.offset, r.length, seed);
    ok = ok && ::pwrite(fd, bytes.data(), bytes.size(), static_cast<off_t>(r.offset)) ==
                   static_cast<ssize_t>(bytes.size());
  }
  ::close(fd);
  if (!ok) throw std::runtime_error("cannot write image " + path);
  return path;
}

std::vector<std::uint8_t> read_file(const std::string& path, std::uint64_t offset,
                                    std::uint64_t length) {
  std::vector<std::uint8_t> out(length);
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw std::runtime_error(errno_text("open " + path));
  ssize_t n = ::pread(fd, out.data(), length, static_cast<off_t>(offset));
  ::close(fd);
  if (n < 0) throw std::runtime_error(errno_text("pread " + path));
  out.resize(static_cast<std::size_t>(n));
  return out;
}

std::uint64_t allocated_bytes(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw std::runtime_error(errno_text("stat " + path));
  return static_cast<std::uint64_t>(st.st_blocks) * 512;
}

std::vector<std::pair<Range, bool>> file_extents(const std::string& path) {
  std::vector<std::pair<Range, bool>> out;
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw std::runtime_error(errno_text("open " + path));
  off_t size = ::lseek(fd, 0, SEEK_END), pos = 0;
  while (pos < size) {
    off_t data = ::lseek(fd, pos, SEEK_DATA);
    if (data < 0) data = size;
    if (data > pos) out.push_back({{std::uint64_t(pos), std::uint64_t(data - pos)}, false});
    if (data >= size) break;
    off_t hole = ::lseek(fd, data, SEEK_HOLE);
    out.push_back({{std::uint64_t(data), std::uint64_t(hole - data)}, true});
    pos = hole;
  }
  ::close(fd);
  return out;
}

int free_tcp_port() {
  int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (::bind(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::getsockname(s, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    ::close(s);
    throw std::runtime_error(errno_text("bind port 0"));
  }
  ::close(s);
  return ntohs(addr.sin_port);
}

std::string last_error() {
  const char* e = nbd_get_error();
  return std::string(e ? e : "(no message)") + " [errno " + std::to_string(nbd_get_errno()) + "]";
}

Server::Server(const TempDir& dir, ServerOptions options)
    : options_(std::move(options)),
      socket_(options_.unix_socket ? dir.file("nbd.sock") : ""),
      pid_file_(dir.file("qnbd.pid")),
      log_(dir.file("qnbd.log")),
      port_(options_.tcp ? free_tcp_port() : 0) {
  start();
}

Server::~Server() { stop(); }

std::vector<std::string> Server::argv() const {
  std::vector<std::string> a{server_binary(), "--fork", "--pid-file", pid_file_};
  if (!options_.config.empty()) {
    a.insert(a.end(), {"--config", options_.config});
    return a;
  }
  if (!socket_.empty()) a.insert(a.end(), {"-k", socket_});
  if (port_ != 0) a.insert(a.end(), {"-b", "127.0.0.1", "-p", std::to_string(port_)});
  a.insert(a.end(), {"-x", options_.name, "-f", options_.format});
  if (!options_.description.empty()) a.insert(a.end(), {"-D", options_.description});
  if (options_.read_only) a.push_back("-r");
  if (is_reference_server()) a.insert(a.end(), {"-t", "-e", "0", "--discard=unmap"});
  a.insert(a.end(), options_.extra_args.begin(), options_.extra_args.end());
  a.push_back(options_.image);
  return a;
}

void Server::start() {
  for (const auto& stale : {socket_, pid_file_})
    if (!stale.empty()) ::unlink(stale.c_str());
  int rc = qnbd::test::run_program(argv(), log_, 30000);
  if (rc != 0) {
    dump_log();
    throw std::runtime_error("server start failed with exit " + std::to_string(rc));
  }
  std::ifstream pf(pid_file_);
  pf >> pid_;
  if (!pf || pid_ <= 0) throw std::runtime_error("no pid in " + pid_file_);
}

bool Server::alive() {
  int status = 0;
  if (pid_ > 0 && ::waitpid(pid_, &status, WNOHANG) == pid_) {
    MESSAGE("server died: " << describe_status(status));
    dump_log();
    pid_ = -1;
  }
  return pid_ > 0;
}

void Server::kill() {
  REQUIRE(pid_ > 0);
  const pid_t pid = pid_;
  pid_ = -1;
  REQUIRE(::kill(pid, SIGKILL) == 0);
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  CHECK_MESSAGE(WIFSIGNALED(status), "server had already exited: " << describe_status(status));
}

void Server::stop() {
  if (pid_ <= 0) return;
  pid_t pid = pid_;
  pid_ = -1;
  int status = 0;
  ::kill(pid, SIGTERM);
  bool exited = wait_with_timeout(pid, 20000, status);
  if (!exited) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
  }
  bool clean = exited && WIFEXITED(status) && WEXITSTATUS(status) == 0;
  if (!clean) dump_log();
  CHECK_MESSAGE(exited, "server did not exit within 20 s of SIGTERM");
  CHECK_MESSAGE(clean, "server exit after SIGTERM: " << describe_status(status));
}

void Server::dump_log() const {
  std::ifstream in(log_);
  std::stringstream ss;
  ss << in.rdbuf();
  std::cerr << "---- server log " << log_ << " ----\n" << ss.str() << "----\n";
}

Handle::Handle() : h_(nbd_create()) {
  if (h_ == nullptr) throw std::runtime_error("nbd_create: " + last_error());
}

Handle::~Handle() { nbd_close(h_); }

}  // namespace qnbd_it
