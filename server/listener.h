// Creates the listening sockets: TCP, Unix, or those inherited from systemd.
// Start-up only: failures throw std::runtime_error with one clear line.
#pragma once

#include "common/result.h"
#include "config/config.h"

#include <boost/asio/basic_socket_acceptor.hpp>

#include <boost/asio/generic/stream_protocol.hpp>
#include <boost/asio/io_context.hpp>

#include <string>
#include <vector>

namespace qnbd::server {

using Acceptor = boost::asio::basic_socket_acceptor<boost::asio::generic::stream_protocol>;

struct Listeners {
  std::vector<Acceptor> acceptors;
  std::vector<std::string> descriptions;  // "127.0.0.1:10809", "unix:/path"
  std::string unix_path;                  // to unlink at exit
};

Listeners open_listeners(boost::asio::io_context& ctx, const config::Listen& listen);

// Printable peer address of an accepted socket.
std::string peer_name(const boost::asio::generic::stream_protocol::socket& s);

}  // namespace qnbd::server
