// SPDX-License-Identifier: Apache-2.0
// Errors of the host API. Every public entry point validates its arguments and throws mc::Error
// (or a subclass) whose message starts with a stable tag such as "[mc.tree.config_mismatch]" and
// names the bad value; docs/errors.md lists every code. Library code never aborts or exits.
#pragma once

#include <cstdint>
#include <filesystem>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

namespace mc {

/// Broad category of an mc::Error; stable across releases (see docs/errors.md).
enum class Errc : int {
  kInvalidArgument = 1,  ///< an argument or option is outside its documented range
  kConfigMismatch = 2,   ///< a file was written with another K, Depth, dim or dtype
  kOutOfRange = 3,       ///< a node, level or token range lies outside what exists
  kIo = 4,               ///< the operating system refused a file operation
  kFormat = 5,           ///< a file is torn, truncated or corrupt (bad magic, checksum, sizes)
  kLocked = 6,           ///< another writer holds the file
  kState = 7,            ///< the call is not allowed in the object's current state
  kCuda = 8,             ///< a CUDA runtime or library call failed
};

/// Short stable name of an error code, e.g. "format".
constexpr std::string_view to_string(Errc c) noexcept {
  switch (c) {
    case Errc::kInvalidArgument: return "invalid_argument";
    case Errc::kConfigMismatch: return "config_mismatch";
    case Errc::kOutOfRange: return "out_of_range";
    case Errc::kIo: return "io";
    case Errc::kFormat: return "format";
    case Errc::kLocked: return "locked";
    case Errc::kState: return "state";
    case Errc::kCuda: return "cuda";
  }
  return "unknown";
}

/// The exception every MegaContext host API throws; `code()` tells the category.
class Error : public std::runtime_error {
 public:
  Error(Errc code, const std::string& message) : std::runtime_error(message), code_(code) {}
  /// The category of the failure.
  Errc code() const noexcept { return code_; }

 private:
  Errc code_;
};

/// A file operation failed; carries the path and the byte offset involved (or -1).
class IoError : public Error {
 public:
  IoError(const std::string& message, std::filesystem::path path, std::int64_t offset = -1)
      : Error(Errc::kIo, message), path_(std::move(path)), offset_(offset) {}
  /// The file the failing operation touched.
  const std::filesystem::path& path() const noexcept { return path_; }
  /// Byte offset of the failing operation, or -1 when none applies.
  std::int64_t offset() const noexcept { return offset_; }

 private:
  std::filesystem::path path_;
  std::int64_t offset_;
};

/// A file is torn, truncated or corrupt; carries the path that failed to parse.
class FormatError : public Error {
 public:
  FormatError(const std::string& message, std::filesystem::path path)
      : Error(Errc::kFormat, message), path_(std::move(path)) {}
  /// The file whose contents were rejected.
  const std::filesystem::path& path() const noexcept { return path_; }

 private:
  std::filesystem::path path_;
};

namespace detail {

/// Concatenates any streamable values into one string (g++ 12 has no <format>).
template <class... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}

}  // namespace detail
}  // namespace mc

/// Validates a run-time argument at the API boundary: throws mc::Error(code, message...) when
/// `cond` is false. The message parts are streamed, so values can be named inline.
#define MC_EXPECTS(cond, code, ...)                                     \
  do {                                                                  \
    if (!(cond)) throw ::mc::Error((code), ::mc::detail::concat(__VA_ARGS__)); \
  } while (0)
