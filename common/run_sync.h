// Driving one coroutine to completion from synchronous code: start-up
// (opening an export's image on a worker whose loop is not running yet), the
// offline tools and the tests. Never call it inside a running event loop.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>

#include <exception>
#include <optional>
#include <utility>

namespace qnbd {

namespace detail {
template <class T>
boost::asio::awaitable<void> store_into(std::optional<T>& out, boost::asio::awaitable<T> aw) {
  out.emplace(co_await std::move(aw));
}
}  // namespace detail

// Runs `aw` on `ctx` handler by handler until it finishes, not until the loop
// runs dry: an io_uring eventfd watch or an engine timer (idle metadata
// write-back) would keep run() going for ever. Rethrows the coroutine's
// exception. Returns nullopt when the loop ran out of work while the
// coroutine was still suspended (it could never finish): a bug the caller
// reports in its own way. (The value is stored by a wrapper coroutine, not
// passed through the completion handler, where g++ 12 -O3 warns falsely
// about a moved-from result's vector.)
template <class T>
std::optional<T> run_until_done(boost::asio::io_context& ctx, boost::asio::awaitable<T> aw) {
  std::optional<T> out;
  std::exception_ptr error;
  bool done = false;
  boost::asio::co_spawn(ctx, detail::store_into(out, std::move(aw)), [&](std::exception_ptr e) {
    error = e;
    done = true;
  });
  while (!done) {
    ctx.restart();
    if (ctx.run_one() == 0) break;
  }
  if (error) std::rethrow_exception(error);
  return out;
}

}  // namespace qnbd
