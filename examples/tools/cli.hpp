// SPDX-License-Identifier: Apache-2.0
// Shared command-line plumbing of the tools: a cursor over argv that reads each flag's value and
// parses numbers strictly (a value with trailing junk is an error that names the flag), and a
// whole-file reader. Every tool reports bad arguments with the same messages.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <megacontext/error.hpp>

namespace mc::tools {

/// The bytes of `path` (the first `max_bytes` when > 0). Throws IoError when it cannot be read.
inline std::string read_file(const std::filesystem::path& path, std::int64_t max_bytes = 0) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw IoError("cannot read " + path.string(), path);
  if (max_bytes > 0) {  // read only what is asked for (corpora are large)
    std::string s(static_cast<std::size_t>(max_bytes), '\0');
    f.read(s.data(), max_bytes);
    s.resize(static_cast<std::size_t>(f.gcount()));
    return s;
  }
  std::ostringstream o;
  o << f.rdbuf();
  return o.str();
}

/// Walks `--flag value` pairs: `while (args.next()) { if (args.is("--n")) n = args.integer();
/// ... else args.unknown(); }`.
class ArgCursor {
 public:
  /// Starts before argv[first].
  ArgCursor(int argc, char** argv, int first = 1) : argc_(argc), argv_(argv), i_(first - 1) {}

  /// Moves to the next flag; false when none is left.
  bool next() {
    if (++i_ >= argc_) return false;
    flag_ = argv_[i_];
    return true;
  }
  /// The current flag.
  const std::string& flag() const { return flag_; }
  /// True when the current flag is `name`.
  bool is(const char* name) const { return flag_ == name; }
  /// The current flag's value (the next argument). Throws when there is none.
  std::string value() {
    MC_EXPECTS(i_ + 1 < argc_, Errc::kInvalidArgument, "missing value after ", flag_);
    return argv_[++i_];
  }
  /// The value as an integer; throws mc::Error naming the flag for anything else.
  std::int64_t integer() {
    const std::string v = value();
    std::size_t used = 0;
    long long x = 0;
    try {
      x = std::stoll(v, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    MC_EXPECTS(used != 0 && used == v.size(), Errc::kInvalidArgument, flag_, " = '", v,
               "' is not an integer");
    return static_cast<std::int64_t>(x);
  }
  /// The value as a real number; throws mc::Error naming the flag for anything else.
  double real() {
    const std::string v = value();
    std::size_t used = 0;
    double x = 0;
    try {
      x = std::stod(v, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    MC_EXPECTS(used != 0 && used == v.size(), Errc::kInvalidArgument, flag_, " = '", v,
               "' is not a number");
    return x;
  }
  /// Throws "unknown argument '<flag>' (try --help)".
  [[noreturn]] void unknown() const {
    throw Error(Errc::kInvalidArgument, "unknown argument '" + flag_ + "' (try --help)");
  }

 private:
  int argc_;
  char** argv_;
  int i_;
  std::string flag_;
};

}  // namespace mc::tools
