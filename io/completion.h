// An I/O operation started without a coroutine (the request fast path):
// the starter embeds a Completion in its own state and is called back
// through a plain function pointer, so starting one allocates nothing.
#pragma once

namespace qnbd::io {

struct Completion {
  // res: bytes transferred, or a negative errno.
  void (*complete)(Completion*, int res) = nullptr;
};

}  // namespace qnbd::io
