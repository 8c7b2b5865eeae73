// Error propagation inside coroutines that return task<T>: the one spelling
// of "if this step failed, return its error".
#pragma once

// Evaluates `expr` (a result<...>, typically `co_await step()`) once and
// returns its error from the enclosing coroutine if it has one.
#define QNBD_CO_TRY(expr)                \
  do {                                   \
    if (auto qnbd_r_ = (expr); !qnbd_r_) \
      co_return qnbd_r_.error();         \
  } while (0)
