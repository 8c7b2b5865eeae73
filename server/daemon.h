// Process plumbing for running as a service: --fork readiness, pid file,
// systemd notification and socket activation. Start-up only; throws
// std::runtime_error with a one-line message.
#pragma once

#include <string>
#include <vector>

namespace qnbd::server::daemon {

// Forks; the parent waits until the child calls ready() (exit 0) or exits
// without calling it (exit 1). Returns only in the child.
void fork_and_wait_for_ready();
// Tells the waiting parent and systemd (NOTIFY_SOCKET) that we serve.
void ready(const std::string& status);
void notify_stopping();
// systemd's reload protocol: RELOADING=1 first, then ready() when done.
void notify_reloading();
void write_pid_file(const std::string& path);
// Listening sockets passed by systemd (LISTEN_PID/LISTEN_FDS), from fd 3.
std::vector<int> inherited_listen_fds();

}  // namespace qnbd::server::daemon
