// One function per NBD command, each turning a validated request into
// backend calls and a reply (nbdkit server/protocol.c style). The request met
// the BlockBackend contract in validate_request; the backend enforces it
// again for its other callers. Every backend call goes through on_home(): the
// backend may live on another worker.
#include "server/session.h"

#include "common/co_try.h"
#include "common/zero_bytes.h"
#include "server/read_plan.h"

#include <spdlog/spdlog.h>

#include <algorithm>

namespace qnbd::server {

using boost::asio::awaitable;
using namespace nbd;

namespace {

std::uint32_t wire_error(const error_code& ec) { return errno_to_nbd(to_errno(ec)); }

struct ChunkRead {
  std::uint64_t offset;
  std::span<std::byte> into;
};

// The data chunks of a sparse read, in one trip to the home worker. `parts`
// is the caller's, which awaits this.
task<> read_chunks(BlockBackend& be, std::span<const ChunkRead> parts) {
  for (const auto& p : parts) QNBD_CO_TRY(co_await be.read(p.offset, p.into));
  co_return result<>{};
}

}  // namespace

awaitable<Session::Reply> Session::execute(const Request& req, Buffer& payload) {
  BlockBackend& be = *neg_.exp->backend;
  const bool fua = req.flags & NBD_CMD_FLAG_FUA;
  result<> r;
  switch (req.type) {
    case NBD_CMD_READ:
      co_return co_await cmd_read(req);
    case NBD_CMD_BLOCK_STATUS:
      co_return co_await cmd_block_status(req);
    case NBD_CMD_WRITE: {
      std::span<const std::byte> data = payload.span();
      if (zero_write(data)) {
        // As qemu's bdrv_aligned_pwritev; unmap only where TRIM is allowed.
        const bool unmap =
            neg_.exp->cfg.detect_zeroes == config::DetectZeroes::unmap && lim_.can_trim;
        r = co_await on_home([&be, off = req.offset, len = req.length, unmap, fua] {
          return be.write_zeroes(off, len, unmap, false, fua);
        });
        break;
      }
      r = co_await on_home([&be, off = req.offset, data, fua] { return be.write(off, data, fua); });
      break;
    }
    case NBD_CMD_FLUSH:
      r = co_await on_home([&be] { return be.flush(); });
      break;
    case NBD_CMD_TRIM:
      r = co_await on_home(
          [&be, off = req.offset, len = req.length, fua] { return be.trim(off, len, fua); });
      break;
    case NBD_CMD_WRITE_ZEROES:
      r = co_await cmd_write_zeroes(req);
      break;
    case NBD_CMD_CACHE:
      r = co_await on_home(
          [&be, off = req.offset, len = req.length] { return be.cache(off, len); });
      break;
    default:
      co_return simple(req, NBD_EINVAL);
  }
  if (!r) {
    spdlog::debug("{}: {} at {} (+{}) failed: {}", peer(), command_name(req.type), req.offset,
                  req.length, r.error().message());
    co_return simple(req, wire_error(r.error()));
  }
  co_return simple(req, 0);
}

bool Session::zero_write(std::span<const std::byte> data) const {
  return neg_.exp->cfg.detect_zeroes != config::DetectZeroes::off && all_zero_bytes(data);
}

awaitable<result<>> Session::cmd_write_zeroes(const Request& req) {
  const bool fua = req.flags & NBD_CMD_FLAG_FUA;
  const bool may_trim = !(req.flags & NBD_CMD_FLAG_NO_HOLE);
  const bool fast = req.flags & NBD_CMD_FLAG_FAST_ZERO;
  BlockBackend& be = *neg_.exp->backend;
  co_return co_await on_home([&be, off = req.offset, len = req.length, may_trim, fast, fua] {
    return be.write_zeroes(off, len, may_trim, fast, fua);
  });
}

awaitable<Session::Reply> Session::cmd_read(const Request& req) {
  BlockBackend& be = *neg_.exp->backend;
  if (lim_.structured && !(req.flags & NBD_CMD_FLAG_DF) && req.length >= kSparseReadMin) {
    auto ex = co_await on_home(
        [&be, off = req.offset, len = req.length] { return be.block_status(off, len); });
    if (ex) {
      auto chunks = plan_read_chunks(req.offset, req.length, *ex);
      if (chunks.size() > 1 || chunks.front().hole) co_return co_await cmd_sparse_read(req, chunks);
    }
  }
  Reply out;
  if (req.length) {
    out.body = pool_.acquire(req.length);
    std::span<std::byte> into = out.body.span();
    auto r = co_await on_home([&be, off = req.offset, into] { return be.read(off, into); });
    if (!r) {
      pool_.release(std::move(out.body));
      spdlog::debug("{}: READ at {} (+{}) failed: {}", peer(), req.offset, req.length,
                    r.error().message());
      co_return error_reply(req, wire_error(r.error()));
    }
  }
  read_reply_head(out, req);
  co_return out;
}

void Session::read_reply_head(Reply& out, const Request& req) const {
  if (!lim_.structured) {
    encode_simple_reply(std::span<std::byte, kSimpleReplySize>(out.head.data(), kSimpleReplySize),
                        0, req.cookie);
    out.head_len = kSimpleReplySize;
    return;
  }
  auto head = std::span<std::byte, kChunkHeaderSize>(out.head.data(), kChunkHeaderSize);
  if (req.length == 0) {
    encode_chunk_header(head, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, req.cookie, 0);
    out.head_len = kChunkHeaderSize;
    return;
  }
  // One data chunk: always valid with DF, and the client reassembles nothing.
  encode_chunk_header(head, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA, req.cookie,
                      8 + req.length);
  put64(out.head.data() + kChunkHeaderSize, req.offset);
  out.head_len = kChunkHeaderSize + 8;
}

// The whole reply (every chunk header and the data) goes in one buffer, the
// data read straight into place; the last chunk carries NBD_REPLY_FLAG_DONE.
awaitable<Session::Reply> Session::cmd_sparse_read(const Request& req,
                                                   const std::vector<ReadChunk>& chunks) {
  std::size_t total = 0;
  for (const auto& c : chunks) total += kChunkHeaderSize + (c.hole ? 12 : 8 + c.length);
  Reply out;
  out.body = pool_.acquire(total);
  std::byte* p = out.body.data();
  std::vector<ChunkRead> parts;
  for (std::size_t i = 0; i < chunks.size(); ++i) {
    const ReadChunk& c = chunks[i];
    const std::uint16_t flags = i + 1 == chunks.size() ? NBD_REPLY_FLAG_DONE : 0;
    auto head = std::span<std::byte, kChunkHeaderSize>(p, kChunkHeaderSize);
    put64(p + kChunkHeaderSize, c.offset);
    if (c.hole) {
      encode_chunk_header(head, flags, NBD_REPLY_TYPE_OFFSET_HOLE, req.cookie, 12);
      put32(p + kChunkHeaderSize + 8, c.length);
      p += kChunkHeaderSize + 12;
      continue;
    }
    encode_chunk_header(head, flags, NBD_REPLY_TYPE_OFFSET_DATA, req.cookie, 8 + c.length);
    p += kChunkHeaderSize + 8;
    parts.push_back({c.offset, std::span(p, c.length)});
    p += c.length;
  }
  BlockBackend& be = *neg_.exp->backend;
  // Only trivially destructible captures in a co_await expression: GCC 12
  // destroys a temporary lambda owning a vector there twice.
  std::span<const ChunkRead> all = parts;
  auto r = co_await on_home([&be, all] { return read_chunks(be, all); });
  if (!r) {
    pool_.release(std::move(out.body));
    co_return error_reply(req, wire_error(r.error()));
  }
  co_return out;
}

namespace {

// One NBD_REPLY_TYPE_BLOCK_STATUS chunk: the runs clipped to `length`, only
// the first with REQ_ONE.
void append_status_chunk(std::vector<std::byte>& out, const Request& req, std::uint32_t id,
                         const std::vector<StatusRun>& runs, bool last) {
  const bool one = req.flags & NBD_CMD_FLAG_REQ_ONE;
  const std::size_t at = out.size();
  out.resize(at + kChunkHeaderSize + 4);
  std::uint64_t covered = 0;
  for (const auto& r : runs) {
    if (covered >= req.length) break;
    const std::uint64_t len = std::min<std::uint64_t>(r.length, req.length - covered);
    const std::size_t e = out.size();
    out.resize(e + 8);
    put32(out.data() + e, static_cast<std::uint32_t>(len));
    put32(out.data() + e + 4, r.flags);
    covered += len;
    if (one) break;
  }
  auto head = std::span<std::byte, kChunkHeaderSize>(out.data() + at, kChunkHeaderSize);
  encode_chunk_header(head, last ? NBD_REPLY_FLAG_DONE : 0, NBD_REPLY_TYPE_BLOCK_STATUS, req.cookie,
                      static_cast<std::uint32_t>(out.size() - at - kChunkHeaderSize));
  put32(out.data() + at + kChunkHeaderSize, id);
}

}  // namespace

// One chunk per selected metadata context, base:allocation first.
awaitable<Session::Reply> Session::cmd_block_status(const Request& req) {
  BlockBackend& be = *neg_.exp->backend;
  std::vector<std::byte> chunks;
  std::size_t left = (neg_.base_allocation ? 1 : 0) + neg_.contexts.size();
  if (neg_.base_allocation) {
    auto extents = co_await on_home(
        [&be, off = req.offset, len = req.length] { return be.block_status(off, len); });
    if (!extents) co_return simple(req, wire_error(extents.error()));
    std::vector<StatusRun> runs;
    for (const auto& e : *extents)
      runs.push_back({e.length, std::uint32_t{(e.hole ? NBD_STATE_HOLE : 0u) |
                                              (e.zero ? NBD_STATE_ZERO : 0u)}});
    append_status_chunk(chunks, req, kBaseAllocationId, runs, --left == 0);
  }
  for (std::uint32_t i : neg_.contexts) {
    const std::string& context = neg_.exp->contexts[i];
    auto runs = co_await on_home([&be, &context, off = req.offset, len = req.length] {
      return be.context_status(context, off, len);
    });
    if (!runs) co_return simple(req, wire_error(runs.error()));
    append_status_chunk(chunks, req, kBaseAllocationId + 1 + i, *runs, --left == 0);
  }
  Reply out;
  out.body = pool_.acquire(chunks.size());
  out.body.resize(chunks.size());
  std::copy(chunks.begin(), chunks.end(), out.body.data());
  out.head_len = 0;
  co_return out;
}

}  // namespace qnbd::server
