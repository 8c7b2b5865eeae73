// Opens the image behind an export as the right BlockBackend: qcow2 when the
// format says so (or, with format detection, when the file starts with the
// qcow2 magic), raw otherwise. Takes QEMU's advisory locks (io/image_lock.h)
// on the image and on each backing file before reading it, with the
// permissions qemu-nbd takes for the same export, so an image another
// process writes is refused (never repaired or served). Start-up and reload
// only: throws std::runtime_error with one clear line.
#pragma once

#include "backend/block_backend.h"
#include "config/config.h"
#include "io/image_lock.h"
#include "io/uring.h"

#include <boost/asio/awaitable.hpp>

#include <functional>
#include <memory>
#include <vector>

namespace qnbd {

// The backend and the locks that must outlive it (release after close()).
struct OpenedImage {
  std::unique_ptr<BlockBackend> backend;
  std::vector<io::ImageLock> locks;
};

boost::asio::awaitable<OpenedImage> open_image(io::Ring& ring, const config::Export& e);

// For --check-config: opens the image and its chain read-only (changes
// nothing) and tests the locks serving `e` would take. A lock conflict on a
// file for which `excuse(path)` is true is logged and forgiven (the running
// qnbd serving that file holds it).
boost::asio::awaitable<void> probe_image(io::Ring& ring, const config::Export& e,
                                         std::function<bool(const std::string&)> excuse);

}  // namespace qnbd
