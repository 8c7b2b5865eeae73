#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <csignal>

#include "server_fixture.h"

int main(int argc, char** argv) {
  // A server that misbehaves must fail a check, not kill the test with SIGPIPE.
  std::signal(SIGPIPE, SIG_IGN);
  qnbd_it::become_subreaper();
  doctest::Context context(argc, argv);
  return context.run();
}
