// Test driver for the qcow2 engine without the NBD front end:
//   qcow2-driver dump IMAGE OUT.raw      read the whole image into a raw file
//   qcow2-driver status IMAGE            print block_status extents
//   qcow2-driver ops IMAGE < SCRIPT      apply operations, then close:
//       write OFF LEN BYTE | zero OFF LEN [trim] [fast] | trim OFF LEN | flush
//   qcow2-driver open IMAGE [ro]         open and close (prints the error)
// Exit status 0 on success, 1 on an operation error, 2 on an open error.
#include "io/uring.h"
#include "qcow2/open.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace asio = boost::asio;
using namespace qnbd;

namespace {

int fail_op(const std::string& what, const error_code& ec) {
  std::cerr << what << ": " << ec.message() << "\n";
  return 1;
}

asio::awaitable<int> dump(BlockBackend& b, const std::string& out) {
  std::ofstream f(out, std::ios::binary | std::ios::trunc);
  std::vector<std::byte> buf(1 << 20);
  for (std::uint64_t pos = 0; pos < b.size(); pos += buf.size()) {
    const auto n = std::min<std::uint64_t>(buf.size(), b.size() - pos);
    if (auto r = co_await b.read(pos, std::span(buf.data(), n)); !r)
      co_return fail_op("read", r.error());
    f.write(reinterpret_cast<const char*>(buf.data()), static_cast<std::streamsize>(n));
  }
  co_return 0;
}

asio::awaitable<int> status(BlockBackend& b) {
  std::uint64_t pos = 0;
  while (pos < b.size()) {
    auto ex = co_await b.block_status(pos, b.size() - pos);
    if (!ex) co_return fail_op("block_status", ex.error());
    for (const Extent& e : *ex) {
      std::cout << pos << " " << e.length << " " << (e.hole ? "hole" : "data") << " "
                << (e.zero ? "zero" : "nonzero") << "\n";
      pos += e.length;
    }
  }
  co_return 0;
}

asio::awaitable<int> ops(BlockBackend& b) {
  std::string line;
  while (std::getline(std::cin, line)) {
    std::istringstream in(line);
    std::string op;
    std::uint64_t off = 0, len = 0;
    in >> op >> off >> len;
    result<> r;
    if (op == "write") {
      int byte = 0;
      in >> byte;
      std::vector<std::byte> data(len, static_cast<std::byte>(byte));
      r = co_await b.write(off, data, false);
    } else if (op == "zero") {
      std::string w;
      bool trim = false, fast = false;
      while (in >> w) (w == "trim" ? trim : fast) = true;
      r = co_await b.write_zeroes(off, len, trim, fast, false);
    } else if (op == "trim") {
      r = co_await b.trim(off, len, false);
    } else if (op == "flush") {
      r = co_await b.flush();
    } else if (!op.empty()) {
      std::cerr << "unknown op " << op << "\n";
      co_return 1;
    }
    if (!r) co_return fail_op(line, r.error());
  }
  co_return 0;
}

asio::awaitable<int> run(io::Ring& ring, std::vector<std::string> args) {
  qcow2::OpenOptions opts;
  opts.read_only = args[0] == "dump" || args[0] == "status" || (args.size() > 2 && args[2] == "ro");
  std::unique_ptr<BlockBackend> b;
  try {
    b = co_await qcow2::open_image(ring, args[1], opts);
  } catch (const std::exception& e) {
    std::cerr << e.what() << "\n";
    co_return 2;
  }
  int rc = 0;
  if (args[0] == "dump")
    rc = co_await dump(*b, args.at(2));
  else if (args[0] == "status")
    rc = co_await status(*b);
  else if (args[0] == "ops")
    rc = co_await ops(*b);
  if (auto r = co_await b->close(); !r && rc == 0) rc = fail_op("close", r.error());
  co_return rc;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: qcow2-driver dump|status|ops|open IMAGE [OUT|ro]\n";
    return 2;
  }
  asio::io_context ctx;
  io::Ring ring(ctx);
  int rc = 2;
  asio::co_spawn(ctx, run(ring, std::vector<std::string>(argv + 1, argv + argc)),
                 [&](std::exception_ptr e, int r) {
                   if (e) std::rethrow_exception(e);
                   rc = r;
                   ctx.stop();  // the ring's eventfd watch would keep run() going
                 });
  ctx.run();
  return rc;
}
