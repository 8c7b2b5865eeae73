// vport_relay SOCKET PORT: inside the VM test's guest, joins one client of a
// new Unix socket SOCKET to the virtio-serial port PORT (a byte stream QEMU
// connects to qnbd's Unix socket on the host). The kernel's NBD driver needs a
// socket, and the guest has no IP networking by design.
//
// Returns once SOCKET is listening (the relay goes on in a child process), so
// the caller can connect straight away; relays one connection until either
// side reaches end of file, then exits.
#define _GNU_SOURCE  // accept4
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static void die(const char* what) {
  fprintf(stderr, "vport_relay: %s: %s\n", what, strerror(errno));
  exit(1);
}

// Copies what `from` has to `to`; returns 0 at end of file or on an error.
static int pump(int from, int to) {
  char buf[1 << 16];
  ssize_t n = read(from, buf, sizeof buf);
  if (n <= 0) return 0;
  for (ssize_t done = 0; done < n;) {
    ssize_t w = write(to, buf + done, (size_t)(n - done));
    if (w < 0) return 0;
    done += w;
  }
  return 1;
}

int main(int argc, char** argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: vport_relay SOCKET PORT\n");
    return 2;
  }
  int port = open(argv[2], O_RDWR | O_CLOEXEC);
  if (port < 0) die(argv[2]);
  int lsock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (lsock < 0) die("socket");
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  snprintf(addr.sun_path, sizeof addr.sun_path, "%s", argv[1]);
  if (bind(lsock, (struct sockaddr*)&addr, sizeof addr) < 0) die(argv[1]);
  if (listen(lsock, 1) < 0) die("listen");
  pid_t child = fork();
  if (child < 0) die("fork");
  if (child > 0) return 0;

  int conn = accept4(lsock, NULL, NULL, SOCK_CLOEXEC);
  if (conn < 0) die("accept");
  close(lsock);
  unlink(argv[1]);
  struct pollfd fds[2] = {{.fd = conn, .events = POLLIN}, {.fd = port, .events = POLLIN}};
  for (;;) {
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      die("poll");
    }
    if (fds[0].revents && !pump(conn, port)) break;
    if (fds[1].revents && !pump(port, conn)) break;
  }
  return 0;
}
