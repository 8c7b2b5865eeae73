#include "tools/qnbd_img_common.h"

#include "qcow2/meta/backing.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

namespace qnbd::img {

std::uint64_t parse_size(const std::string& s) {
  const auto bad = [&] {
    return Fatal(
        "Invalid image size specified. You may use k, M, G, T, P or E suffixes for "
        "kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
  };
  if (s.empty() || s[0] == '-' || s[0] == '+' || std::isspace(static_cast<unsigned char>(s[0])))
    throw bad();
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(s.c_str(), &end);
  if (errno || end == s.c_str() || !std::isfinite(v)) throw bad();
  std::string suffix(end);
  int shift = 0;
  if (suffix.size() == 1) {
    const char* units = "BKMGTPE";
    const char* p = std::strchr(units, std::toupper(static_cast<unsigned char>(suffix[0])));
    if (!p) throw bad();
    shift = static_cast<int>(p - units) * 10;
  } else if (!suffix.empty()) {
    throw bad();
  }
  const double bytes = std::ldexp(v, shift);
  if (bytes >= 9223372036854775808.0) throw Fatal("Image size must be less than 8 EiB!");
  if (bytes != std::floor(bytes)) throw bad();
  return static_cast<std::uint64_t>(bytes);
}

std::vector<std::pair<std::string, std::string>> parse_options(const std::string& s) {
  std::vector<std::pair<std::string, std::string>> out;
  std::string cur;
  std::vector<std::string> items;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == ',' && i + 1 < s.size() && s[i + 1] == ',') {
      cur += ',';
      ++i;
    } else if (s[i] == ',') {
      items.push_back(cur);
      cur.clear();
    } else {
      cur += s[i];
    }
  }
  items.push_back(cur);
  for (const auto& item : items) {
    if (item.empty()) continue;
    const auto eq = item.find('=');
    if (eq == std::string::npos) throw Fatal(fmt::format("Invalid parameter '{}'", item));
    out.emplace_back(item.substr(0, eq), item.substr(eq + 1));
  }
  return out;
}

bool parse_bool(const std::string& key, const std::string& v) {
  if (v == "on" || v == "true" || v == "yes") return true;
  if (v == "off" || v == "false" || v == "no") return false;
  throw Fatal(fmt::format("Parameter '{}' expects 'on' or 'off'", key));
}

std::string human_size(std::uint64_t val) {
  static const char* suffixes[] = {"", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"};
  int i = 0;
  std::frexp(static_cast<double>(val) / (1000.0 / 1024.0), &i);
  i = (i - 1) / 10;
  if (i < 0) i = 0;
  const double div = std::ldexp(1.0, i * 10);
  return fmt::format("{} {}B", fmt::format("{:.3g}", static_cast<double>(val) / div), suffixes[i]);
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      out += fmt::format("\\u{:04x}", c);
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

std::unique_ptr<io::UringFile> open_file(qcow2::SyncRunner& run, const std::string& path,
                                         bool writable) {
  auto f = io::UringFile::open(run.ring(), path, {.read_only = !writable});
  if (!f) throw Fatal(fmt::format("Could not open '{}': {}", path, f.error().message()));
  return std::move(*f);
}

QuietLog::QuietLog() : level_(spdlog::get_level()) { spdlog::set_level(spdlog::level::off); }
QuietLog::~QuietLog() { spdlog::set_level(static_cast<spdlog::level::level_enum>(level_)); }

bool is_qcow2(const std::string& path) {
  auto r = qcow2::meta::probe_qcow2(path);
  if (!r) throw Fatal(fmt::format("Could not open '{}': {}", path, r.error().message()));
  return *r;
}

}  // namespace qnbd::img

namespace qnbd::img {

const std::string* ParsedArgs::last(const std::string& name) const {
  const std::string* v = nullptr;
  for (const auto& [k, val] : options)
    if (k == name) v = &val;
  return v;
}

ParsedArgs parse_args(const Args& args, const std::vector<std::string>& with_value,
                      const std::vector<std::string>& flags) {
  auto known = [](const std::vector<std::string>& set, const std::string& n) {
    return std::find(set.begin(), set.end(), n) != set.end();
  };
  ParsedArgs out;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a.size() < 2 || a[0] != '-') {
      out.positional.push_back(a);
      continue;
    }
    std::string name = a, value;
    bool inline_value = false;
    if (a.rfind("--", 0) == 0) {
      if (const auto eq = a.find('='); eq != std::string::npos) {
        name = a.substr(0, eq);
        value = a.substr(eq + 1);
        inline_value = true;
      }
    }
    if (known(flags, name) && !inline_value) {
      out.options.emplace_back(name, "");
    } else if (known(with_value, name)) {
      if (!inline_value) {
        if (i + 1 >= args.size())
          throw Fatal(fmt::format("option '{}' requires an argument", name));
        value = args[++i];
      }
      out.options.emplace_back(name, value);
    } else {
      throw Fatal(fmt::format("Invalid option '{}'", a));
    }
  }
  return out;
}

bool json_output(const ParsedArgs& a) {
  const std::string* o = a.last("--output");
  if (!o || *o == "human") return false;
  if (*o == "json") return true;
  throw Fatal(fmt::format("--output must be used with human or json as argument."));
}

}  // namespace qnbd::img
