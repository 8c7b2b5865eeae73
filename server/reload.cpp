#include "server/reload.h"

#include <map>

namespace qnbd::server {

bool needs_reopen(const config::Export& current, const config::Export& next) {
  config::Export a = current;
  // Read per new connection: the description (handshake), the allow-list.
  a.description = next.description;
  a.allow = next.allow;
  return !(a == next);
}

std::vector<ExportAction> plan_exports(const std::vector<config::Export>& current,
                                       const std::vector<config::Export>& next) {
  std::map<std::string, const config::Export*> now, later;
  for (const auto& e : current) now[e.name] = &e;
  for (const auto& e : next) later[e.name] = &e;
  std::vector<ExportAction> out;
  for (const auto& e : current)
    if (!later.count(e.name)) out.push_back({ExportAction::remove, e.name, e});
  for (const auto& e : next) {
    auto it = now.find(e.name);
    if (it == now.end())
      out.push_back({ExportAction::add, e.name, e});
    else if (needs_reopen(*it->second, e))
      out.push_back({ExportAction::reopen, e.name, e});
    else if (!(*it->second == e))
      out.push_back({ExportAction::update, e.name, e});
  }
  return out;
}

std::vector<std::string> restart_only_changes(const config::Config& current,
                                              const config::Config& next) {
  std::vector<std::string> out;
  const auto& a = current.listen;
  const auto& b = next.listen;
  if (a.unix_path != b.unix_path || a.tcp != b.tcp || a.host != b.host || a.port != b.port)
    out.push_back("listen");
  const auto& t = a.tls;
  const auto& u = b.tls;
  // The files behind the same paths are re-read on reload (Server::reload_tls).
  if (t.mode != u.mode || t.certificates != u.certificates || t.psk_file != u.psk_file ||
      t.verify_peer != u.verify_peer)
    out.push_back("tls");
  const auto& m = current.metrics;
  const auto& n = next.metrics;
  if (m.has_value() != n.has_value() || (m && (m->host != n->host || m->port != n->port)))
    out.push_back("metrics");
  if (current.workers != next.workers) out.push_back("workers");
  if (current.pid_file != next.pid_file) out.push_back("pid_file");
  return out;
}

}  // namespace qnbd::server
