// Running other processes from C++ tests without sleeps: programs with their
// output in a log, and functions in a forked child with their stdout captured.
#pragma once

#include <sys/types.h>

#include <functional>
#include <string>
#include <vector>

namespace qnbd::test {

// Runs argv (looked up in PATH) with stdin from /dev/null and stdout and
// stderr appended to `log`. Returns its exit code, 128 + the signal that
// killed it, or -1 when it ran past timeout_ms (then it is killed; -1 waits
// for ever). Throws if it cannot be started.
int run_program(const std::vector<std::string>& argv, const std::string& log, int timeout_ms = -1);

// waitpid with a timeout, on a pidfd (no polling loop). False on timeout.
bool wait_with_timeout(pid_t pid, int timeout_ms, int& status);

// "exit code N" or "killed by signal N", for failure messages.
std::string describe_status(int status);

struct ChildResult {
  int exit_code;
  std::string out;  // what the child wrote to stdout
};

// Runs body in a forked child whose stdout is captured, and exits with the
// value body returns (99 if it throws). Throws if the child dies of a signal. For code that
// exits, changes credentials or must not touch the test process.
ChildResult run_in_child(const std::function<int()>& body);

}  // namespace qnbd::test
