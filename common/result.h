// Error values for the request path: every operation that can fail returns a
// result<T>; exceptions are reserved for start-up and configuration.
#pragma once

#include <boost/system/error_code.hpp>
#include <boost/system/result.hpp>

#include <cerrno>

namespace qnbd {

using error_code = boost::system::error_code;

template <class T = void>
using result = boost::system::result<T, error_code>;

// Errors that are not plain errno values. Each maps to the errno the NBD
// client should see (see to_errno), so the front end never guesses.
enum class errc {
  corrupt_image = 1,      // metadata inconsistent: image is marked corrupt
  read_only,              // write on a read-only export or image
  out_of_range,           // request beyond the end of the device
  no_space,               // image cannot grow
  unsupported,            // operation or flag not supported here
  fast_zero_unsupported,  // FAST_ZERO requested but zeroing would be slow
  shutting_down,          // server is stopping
  invalid_image,          // malformed on-disk structure found while serving
};

const boost::system::error_category& qnbd_category() noexcept;

inline error_code make_error_code(errc e) noexcept {
  return {static_cast<int>(e), qnbd_category()};
}

inline error_code errno_error(int e) noexcept { return {e, boost::system::system_category()}; }

inline error_code last_errno() noexcept { return errno_error(errno); }

// The errno value a client should receive for an error (EIO if unknown).
int to_errno(const error_code& ec) noexcept;

}  // namespace qnbd

namespace boost::system {
template <>
struct is_error_code_enum<qnbd::errc> : std::true_type {};
}  // namespace boost::system
