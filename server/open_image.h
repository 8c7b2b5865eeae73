// Opens the image behind an export as the right BlockBackend: qcow2 when the
// format says so (or, with format detection, when the file starts with the
// qcow2 magic), raw otherwise. Start-up only: throws std::runtime_error with
// one clear line.
#pragma once

#include "backend/block_backend.h"
#include "config/config.h"
#include "io/uring.h"

#include <boost/asio/awaitable.hpp>

#include <memory>

namespace qnbd {

boost::asio::awaitable<std::unique_ptr<BlockBackend>> open_image(io::Ring& ring,
                                                                 const config::Export& e);

}  // namespace qnbd
