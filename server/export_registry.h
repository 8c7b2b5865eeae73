// The exports a server offers, by name. Built once at start-up; sessions
// hold plain pointers because exports outlive every connection.
#pragma once

#include "backend/block_backend.h"
#include "config/config.h"

#include <boost/asio/io_context.hpp>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace qnbd::server {

struct Export {
  std::string name;
  std::string description;
  std::unique_ptr<BlockBackend> backend;
  Capabilities caps;
  std::uint64_t size = 0;
  unsigned connections = 0;                 // touched on the main thread only
  boost::asio::io_context* home = nullptr;  // the worker that owns the backend
  std::vector<config::AllowRule> allow;     // who may use it (server/authz.h)
};

class ExportRegistry {
 public:
  Export& add(std::string name, std::string description, std::unique_ptr<BlockBackend> backend,
              boost::asio::io_context& home);
  Export* find(std::string_view name);
  const std::vector<std::unique_ptr<Export>>& all() const { return exports_; }

 private:
  std::vector<std::unique_ptr<Export>> exports_;
};

}  // namespace qnbd::server
