#include "server/export_registry.h"

namespace qnbd::server {

Export& ExportRegistry::add(std::string name, std::string description,
                            std::unique_ptr<BlockBackend> backend, boost::asio::io_context& home) {
  auto e = std::make_unique<Export>();
  e->name = std::move(name);
  e->description = std::move(description);
  e->caps = backend->capabilities();
  e->size = backend->size();
  e->backend = std::move(backend);
  e->home = &home;
  exports_.push_back(std::move(e));
  return *exports_.back();
}

Export* ExportRegistry::find(std::string_view name) {
  for (auto& e : exports_)
    if (e->name == name) return e.get();
  return nullptr;
}

}  // namespace qnbd::server
