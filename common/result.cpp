#include "common/result.h"

#include <string>

namespace qnbd {
namespace {

class category final : public boost::system::error_category {
 public:
  const char* name() const noexcept override { return "qnbd"; }
  std::string message(int ev) const override {
    switch (static_cast<errc>(ev)) {
      case errc::corrupt_image:
        return "image is corrupt";
      case errc::read_only:
        return "read-only";
      case errc::out_of_range:
        return "request out of range";
      case errc::no_space:
        return "no space left for the image";
      case errc::unsupported:
        return "operation not supported";
      case errc::fast_zero_unsupported:
        return "fast zeroing not possible";
      case errc::shutting_down:
        return "server is shutting down";
      case errc::invalid_image:
        return "invalid image structure";
    }
    return "unknown qnbd error";
  }
};

}  // namespace

const boost::system::error_category& qnbd_category() noexcept {
  static const category instance;
  return instance;
}

int to_errno(const error_code& ec) noexcept {
  if (!ec) return 0;
  if (ec.category() == qnbd_category()) {
    switch (static_cast<errc>(ec.value())) {
      case errc::read_only:
        return EPERM;
      case errc::out_of_range:
        return EINVAL;
      case errc::no_space:
        return ENOSPC;
      case errc::unsupported:
      case errc::fast_zero_unsupported:
        return ENOTSUP;
      case errc::shutting_down:
        return ESHUTDOWN;
      case errc::corrupt_image:
      case errc::invalid_image:
        return EIO;
    }
    return EIO;
  }
  if (ec.category() == boost::system::system_category() ||
      ec.category() == boost::system::generic_category())
    return ec.value();
  return EIO;
}

}  // namespace qnbd
