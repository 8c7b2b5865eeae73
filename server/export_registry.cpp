#include "server/export_registry.h"

#include <algorithm>
#include <utility>

namespace qnbd::server {

Export& ExportRegistry::add(config::Export cfg, std::unique_ptr<BlockBackend> backend,
                            std::vector<io::ImageLock> locks, boost::asio::io_context& home) {
  auto e = std::make_unique<Export>();
  e->name = cfg.name;
  e->description = cfg.description;
  e->allow = cfg.allow;
  if (cfg.allocation_depth) e->contexts.emplace_back(kAllocationDepthContext);
  for (const auto& bitmap : cfg.bitmaps) e->contexts.push_back("qemu:dirty-bitmap:" + bitmap);
  e->cfg = std::move(cfg);
  e->caps = backend->capabilities();
  e->size = backend->size();
  e->backend = std::move(backend);
  e->locks = std::move(locks);
  e->home = &home;
  exports_.push_back(std::move(e));
  return *exports_.back();
}

const Export* ExportRegistry::find(std::string_view name) const {
  for (const auto& e : exports_)
    if (e->name == name) return e.get();
  return nullptr;
}

Export* ExportRegistry::find(std::string_view name) {
  return const_cast<Export*>(std::as_const(*this).find(name));
}

bool ExportRegistry::listed(const Export* e) const {
  return std::any_of(exports_.begin(), exports_.end(), [e](const auto& p) { return p.get() == e; });
}

Export* ExportRegistry::find_unlisted_open(std::string_view name) {
  for (auto& u : unlisted_)
    if (!u.exp->closing && u.exp->name == name) return u.exp.get();
  return nullptr;
}

void ExportRegistry::unlist(Export& e) {
  auto it =
      std::find_if(exports_.begin(), exports_.end(), [&e](const auto& p) { return p.get() == &e; });
  if (it == exports_.end()) return;
  unlisted_.push_back({std::move(*it), std::nullopt});
  exports_.erase(it);
}

void ExportRegistry::relist(Export& e) {
  auto it = std::find_if(unlisted_.begin(), unlisted_.end(),
                         [&e](const auto& u) { return u.exp.get() == &e; });
  if (it == unlisted_.end()) return;
  exports_.push_back(std::move(it->exp));
  unlisted_.erase(it);
}

std::vector<Export*> ExportRegistry::unlisted_open() const {
  std::vector<Export*> out;
  for (const auto& u : unlisted_)
    if (!u.exp->closing) out.push_back(u.exp.get());
  return out;
}

void ExportRegistry::mark_closed(Export& e) {
  e.closing = true;
  for (auto& u : unlisted_)
    if (u.exp.get() == &e) u.closed_at = Clock::now();
}

void ExportRegistry::collect(Clock::time_point oldest_handshake) {
  std::erase_if(unlisted_,
                [&](const Unlisted& u) { return u.closed_at && *u.closed_at < oldest_handshake; });
}

}  // namespace qnbd::server
