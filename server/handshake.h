// Fixed newstyle negotiation, one small function per option. Runs until the
// client picks an export (GO / EXPORT_NAME) or ends the conversation.
#pragma once

#include "server/connection.h"
#include "server/export_registry.h"
#include "server/tls_context.h"

#include <boost/asio/awaitable.hpp>

#include <functional>
#include <optional>

namespace qnbd::server {

struct Negotiated {
  Export* exp = nullptr;
  bool structured = false;
  bool base_allocation = false;
  std::vector<std::uint32_t> contexts;  // other metadata contexts selected (Export::contexts ids)
};

// Transmission flags for an export, advertised truthfully from its capabilities.
std::uint16_t transmission_flags(const Export& e);

// Asked once the client has picked an export, before the reply that tells it
// so: false means the server is full (the connection is then closed, and the
// client never sees a session that is dropped at once).
using Admission = std::function<bool()>;

// nullopt: the client aborted, disconnected, violated the protocol or was not
// admitted; the caller closes the connection. `tls` is the listener's TLS
// setup, null when TLS is off; no `admit` admits everyone.
boost::asio::awaitable<std::optional<Negotiated>> negotiate(Connection& conn,
                                                            ExportRegistry& exports,
                                                            const TlsContext* tls = nullptr,
                                                            Admission admit = {});

}  // namespace qnbd::server
