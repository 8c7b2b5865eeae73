// qnbd-img map [--output=human|json] FILE: allocation of every guest range
// through the backing chain, in qemu-img map's format.
#include "tools/image_chain.h"

#include <fmt/format.h>

#include <cstdio>
#include <optional>

namespace qnbd::img {
namespace {

struct MapEntry {
  std::uint64_t start = 0, length = 0;
  bool data = false, zero = false, present = false, has_offset = false;
  std::uint64_t offset = 0;
  std::size_t depth = 0;
  std::string filename;  // set when has_offset
};

// qemu-img's get_block_status: walk down until a layer answers.
MapEntry entry_at(ImageChain& chain, std::uint64_t offset) {
  std::uint64_t bytes = chain.size() - offset;
  std::size_t depth = 0;
  BlockStatus st;
  for (;;) {
    st = chain.status(depth, offset, bytes);
    bytes = st.length;
    if (st.allocated) break;
    if (depth + 1 >= chain.depth() || offset >= chain.layer(depth + 1).size) {
      st.zero = true;  // no backing data: reads as zeros
      break;
    }
    bytes = std::min(bytes, chain.layer(depth + 1).size - offset);
    ++depth;
  }
  MapEntry e;
  e.start = offset;
  e.length = bytes;
  e.data = st.data;
  e.zero = st.zero;
  e.present = st.allocated;
  e.has_offset = st.offset_valid;
  e.offset = st.offset;
  e.depth = depth;
  if (e.has_offset) e.filename = chain.layer(depth).path;
  return e;
}

bool mergeable(const MapEntry& a, const MapEntry& b) {
  if (a.length == 0) return false;
  if (a.zero != b.zero || a.data != b.data || a.depth != b.depth || a.present != b.present ||
      a.has_offset != b.has_offset || a.filename != b.filename)
    return false;
  return !a.has_offset || a.offset + a.length == b.offset;
}

void dump_json(const MapEntry& e, bool last) {
  std::string s = fmt::format(
      "{{ \"start\": {}, \"length\": {}, \"depth\": {}, \"present\": {}, \"zero\": {}, "
      "\"data\": {}",
      e.start, e.length, e.depth, e.present, e.zero, e.data);
  if (e.has_offset) s += fmt::format(", \"offset\": {}", e.offset);
  s += last ? "}" : "},\n";
  std::fputs(s.c_str(), stdout);
}

void dump_human(const MapEntry& e, MapEntry* next) {
  if (e.data && !e.has_offset)
    throw Fatal("File contains external, encrypted or compressed clusters.");
  if (e.data && !e.zero) {
    auto hex = [](std::uint64_t v) { return v ? fmt::format("{:#x}", v) : std::string("0"); };
    std::printf("%-16s%-16s%-16s%s\n", hex(e.start).c_str(), hex(e.length).c_str(),
                hex(e.has_offset ? e.offset : 0).c_str(), e.filename.c_str());
  }
  // Human output does not tell zero from unallocated: coalesce them.
  if (next && (!next->data || next->zero)) {
    next->data = false;
    next->zero = true;
  }
}

}  // namespace

int cmd_map(const Args& args) {
  const ParsedArgs a = parse_args(args, {"-f", "--output"}, {"-U", "--force-share"});
  if (a.positional.size() != 1) throw Fatal("Expecting one image file name");
  const bool json = json_output(a);
  const QuietLog quiet;
  qcow2::SyncRunner run;
  ImageChain chain(run, a.positional[0]);
  if (json)
    std::fputs("[", stdout);
  else
    std::printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
  MapEntry cur;
  const std::uint64_t size = chain.size();
  while (cur.start + cur.length < size) {
    MapEntry next = entry_at(chain, cur.start + cur.length);
    if (mergeable(cur, next)) {
      cur.length += next.length;
      continue;
    }
    if (cur.length) {
      if (json)
        dump_json(cur, false);
      else
        dump_human(cur, &next);
    }
    cur = next;
  }
  if (json) {
    if (cur.length) dump_json(cur, true);
    std::fputs("]\n", stdout);
  } else if (cur.length) {
    dump_human(cur, nullptr);
  }
  chain.close();
  return 0;
}

}  // namespace qnbd::img
