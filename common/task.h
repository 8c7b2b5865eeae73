// The awaitable type every asynchronous operation returns: a coroutine whose
// value is a result<T>, so errors travel as values on the request path.
#pragma once

#include "common/result.h"

#include <boost/asio/awaitable.hpp>

namespace qnbd {

template <class T = void>
using task = boost::asio::awaitable<result<T>>;

}  // namespace qnbd
