#include "server/daemon.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <ctime>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <stdexcept>

namespace qnbd::server::daemon {
namespace {

int ready_fd = -1;  // write end of the --fork pipe, in the child

void sd_notify(const std::string& msg) {
  const char* path = std::getenv("NOTIFY_SOCKET");
  if (!path || !*path) return;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::size_t len = std::strlen(path);
  if (len >= sizeof addr.sun_path) return;
  std::memcpy(addr.sun_path, path, len);
  if (addr.sun_path[0] == '@') addr.sun_path[0] = '\0';  // abstract namespace
  int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return;
  ::sendto(fd, msg.data(), msg.size(), MSG_NOSIGNAL, reinterpret_cast<sockaddr*>(&addr),
           static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + len));
  ::close(fd);
}

}  // namespace

void fork_and_wait_for_ready() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) < 0)
    throw std::runtime_error("pipe: " + std::string(std::strerror(errno)));
  pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("fork: " + std::string(std::strerror(errno)));
  if (pid > 0) {
    ::close(fds[1]);
    char c;
    ssize_t n;
    do n = ::read(fds[0], &c, 1);
    while (n < 0 && errno == EINTR);
    if (n == 1) std::_Exit(0);
    int status = 0;
    ::waitpid(pid, &status, 0);  // the child already said why on stderr
    std::_Exit(1);
  }
  ::close(fds[0]);
  ready_fd = fds[1];
  ::setsid();
  int devnull = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  if (devnull >= 0) {
    ::dup2(devnull, STDIN_FILENO);
    ::dup2(devnull, STDOUT_FILENO);
    ::close(devnull);
  }
}

void ready(const std::string& status) {
  sd_notify("READY=1\nSTATUS=" + status);
  if (ready_fd >= 0) {
    char c = 1;
    [[maybe_unused]] auto r = ::write(ready_fd, &c, 1);
    ::close(ready_fd);
    ready_fd = -1;
  }
}

void notify_stopping() { sd_notify("STOPPING=1"); }

void notify_reloading() {
  timespec now{};
  ::clock_gettime(CLOCK_MONOTONIC, &now);
  const long long usec = now.tv_sec * 1000000LL + now.tv_nsec / 1000;
  sd_notify("RELOADING=1\nMONOTONIC_USEC=" + std::to_string(usec));
}

void write_pid_file(const std::string& path) {
  std::ofstream f(path, std::ios::trunc);
  f << ::getpid() << '\n';
  if (!f.flush()) throw std::runtime_error(path + ": cannot write pid file");
}

std::vector<int> inherited_listen_fds() {
  const char* pid = std::getenv("LISTEN_PID");
  const char* fds = std::getenv("LISTEN_FDS");
  if (!pid || !fds || std::atol(pid) != static_cast<long>(::getpid())) return {};
  int n = std::atoi(fds);
  std::vector<int> out;
  for (int fd = 3; fd < 3 + n; ++fd) {
    ::fcntl(fd, F_SETFD, FD_CLOEXEC);
    out.push_back(fd);
  }
  ::unsetenv("LISTEN_PID");
  ::unsetenv("LISTEN_FDS");
  ::unsetenv("LISTEN_FDNAMES");
  return out;
}

}  // namespace qnbd::server::daemon
