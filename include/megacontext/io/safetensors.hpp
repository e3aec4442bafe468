// SPDX-License-Identifier: Apache-2.0
// Weights on disk: reading and writing safetensors files (docs/formats/safetensors.md). GistNet,
// LensNet and the reference decoder load and save their parameters through this header. Reading
// maps the file and checks every rule of the format before handing out zero-copy views; writing
// collects tensors in memory and replaces the target file atomically.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "megacontext/detail/eigen.hpp"
#include "megacontext/detail/half.hpp"
#include "megacontext/error.hpp"
#include "megacontext/io/json.hpp"

namespace mc::io {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian and this build only supports such hosts");

/// Element type of a tensor, named as in the safetensors header ("F32", "BF16", ...).
enum class TensorDtype : std::uint8_t {
  kBool,    ///< "BOOL", 1 byte
  kU8,      ///< "U8"
  kI8,      ///< "I8"
  kF8E5M2,  ///< "F8_E5M2" (raw access only)
  kF8E4M3,  ///< "F8_E4M3" (raw access only)
  kI16,     ///< "I16"
  kU16,     ///< "U16"
  kF16,     ///< "F16", IEEE binary16
  kBF16,    ///< "BF16", bfloat16
  kI32,     ///< "I32"
  kU32,     ///< "U32"
  kF32,     ///< "F32"
  kI64,     ///< "I64"
  kU64,     ///< "U64"
  kF64,     ///< "F64"
};

/// The header spelling of `t`, e.g. "BF16".
constexpr std::string_view to_string(TensorDtype t) noexcept {
  switch (t) {
    case TensorDtype::kBool: return "BOOL";
    case TensorDtype::kU8: return "U8";
    case TensorDtype::kI8: return "I8";
    case TensorDtype::kF8E5M2: return "F8_E5M2";
    case TensorDtype::kF8E4M3: return "F8_E4M3";
    case TensorDtype::kI16: return "I16";
    case TensorDtype::kU16: return "U16";
    case TensorDtype::kF16: return "F16";
    case TensorDtype::kBF16: return "BF16";
    case TensorDtype::kI32: return "I32";
    case TensorDtype::kU32: return "U32";
    case TensorDtype::kF32: return "F32";
    case TensorDtype::kI64: return "I64";
    case TensorDtype::kU64: return "U64";
    case TensorDtype::kF64: return "F64";
  }
  return "?";
}

/// Bytes per element of `t`.
constexpr std::uint64_t dtype_size(TensorDtype t) noexcept {
  switch (t) {
    case TensorDtype::kBool:
    case TensorDtype::kU8:
    case TensorDtype::kI8:
    case TensorDtype::kF8E5M2:
    case TensorDtype::kF8E4M3: return 1;
    case TensorDtype::kI16:
    case TensorDtype::kU16:
    case TensorDtype::kF16:
    case TensorDtype::kBF16: return 2;
    case TensorDtype::kI32:
    case TensorDtype::kU32:
    case TensorDtype::kF32: return 4;
    case TensorDtype::kI64:
    case TensorDtype::kU64:
    case TensorDtype::kF64: return 8;
  }
  return 0;
}

/// The dtype spelled `s` in a header, or nullopt for one this build does not know.
inline std::optional<TensorDtype> dtype_from_string(std::string_view s) noexcept {
  for (int i = 0; i <= static_cast<int>(TensorDtype::kF64); ++i) {
    const auto t = static_cast<TensorDtype>(i);
    if (to_string(t) == s) return t;
  }
  return std::nullopt;
}

/// Largest header a file may declare (the reference implementation's limit, 100 MB).
inline constexpr std::uint64_t kSafetensorsMaxHeaderBytes = 100'000'000;
/// JSON bounds for the header: valid headers nest 3 deep; 2^21 values (about 300k tensors)
/// bound the parse to a few hundred MB whatever a hostile header holds.
inline constexpr JsonLimits kSafetensorsJsonLimits{16, std::size_t{1} << 21};

/// A float matrix in row-major order, what as_f32() returns (the same type as mc::RowMatrix).
using F32Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// What the header says about one tensor.
struct TensorInfo {
  TensorDtype dtype = TensorDtype::kF32;  ///< element type
  std::vector<std::int64_t> shape;        ///< dimensions, row-major; empty for a scalar
  std::uint64_t begin = 0;                ///< first byte, relative to the data buffer
  std::uint64_t end = 0;                  ///< one past the last byte, relative to the data buffer

  /// Number of elements (1 for a scalar, 0 when a dimension is 0).
  std::int64_t numel() const noexcept {
    // Zero first: a validated shape like [2^40, 2^40, 0] has a product that fits only this way.
    if (std::find(shape.begin(), shape.end(), 0) != shape.end()) return 0;
    std::int64_t n = 1;
    for (auto d : shape) n *= d;
    return n;
  }
  /// Bytes of data, end - begin (== numel() * dtype_size(dtype) in a validated file).
  std::uint64_t num_bytes() const noexcept { return end - begin; }
  friend bool operator==(const TensorInfo&, const TensorInfo&) = default;
};

namespace detail {

[[noreturn]] inline void throw_format(const std::filesystem::path& path, const std::string& what) {
  throw FormatError(what + " in " + (path.empty() ? std::string("<memory>") : path.string()),
                    path);
}

[[noreturn]] inline void throw_io(const std::string& what, const std::filesystem::path& path,
                                  std::int64_t offset = -1) {
  throw IoError(what + " " + path.string() + ": " + std::strerror(errno), path, offset);
}

// A name from an untrusted header, shortened and with control bytes escaped, for messages.
inline std::string quoted(std::string_view s) {
  std::string out;
  append_json_string(out, s.substr(0, 80));
  if (s.size() > 80) out += "...";
  return out;
}

inline std::string shape_string(const std::vector<std::int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i)
    s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// a * b, or nullopt when it does not fit in uint64.
inline std::optional<std::uint64_t> mul_checked(std::uint64_t a, std::uint64_t b) {
  if (a != 0 && b > UINT64_MAX / a) return std::nullopt;
  return a * b;
}

}  // namespace detail

/// A parsed, validated safetensors file over bytes someone else owns (a mapping, a buffer).
/// Every view it returns lies inside those bytes; they must outlive it.
class SafetensorsView {
 public:
  /// An empty view (no file, no tensors); parse() makes real ones.
  SafetensorsView() = default;

  /// Parses and validates the whole of `file` (header length, JSON, dtypes, shapes, offsets,
  /// full coverage of the data buffer). Throws FormatError with a "[mc.safetensors.*]" tag;
  /// `path` only names the source in messages.
  static SafetensorsView parse(std::span<const std::byte> file,
                               const std::filesystem::path& path = {}) {
    using detail::throw_format;
    using mc::detail::concat;
    SafetensorsView v;
    v.bytes_ = file;
    v.path_ = path;
    if (file.size() < 8)
      throw_format(path, concat("[mc.safetensors.bad_header_length] the file has ", file.size(),
                                " bytes, fewer than the 8-byte header length"));
    std::uint64_t n = 0;
    std::memcpy(&n, file.data(), 8);
    const std::uint64_t avail = file.size() - 8;
    if (n < 2 || n > kSafetensorsMaxHeaderBytes || n > avail)
      throw_format(path, concat("[mc.safetensors.bad_header_length] header length ", n,
                                " is not in [2, min(", kSafetensorsMaxHeaderBytes, ", ", avail,
                                ")] (", avail, " bytes follow the length field)"));
    v.data_offset_ = 8 + n;
    const std::string_view text(reinterpret_cast<const char*>(file.data()) + 8,
                                static_cast<std::size_t>(n));
    if (text.front() != '{')
      throw_format(path, "[mc.safetensors.bad_json] the header must start with '{' at byte 8");
    JsonValue root;
    try {
      root = parse_json(text, kSafetensorsJsonLimits);
    } catch (const JsonError& e) {
      if (e.fault() == JsonFault::kDuplicateKey && e.depth() == 1)
        throw_format(path, concat("[mc.safetensors.duplicate_name] tensor name repeated at byte ",
                                  8 + e.offset(), " of the file: ", e.what()));
      throw_format(path, concat("[mc.safetensors.bad_json] at byte ", 8 + e.offset(),
                                " of the file (header byte ", e.offset(), "): ", e.what()));
    }
    const std::uint64_t buffer = file.size() - v.data_offset_;
    for (const auto& m : root.members()) {
      if (m.key == "__metadata__") {
        v.read_metadata(m.value, path);
        continue;
      }
      v.tensors_.emplace(m.key, read_info(m.key, m.value, buffer, path));
    }
    v.check_coverage(buffer, path);
    return v;
  }

  /// The "__metadata__" map (empty when the file has none).
  const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }
  /// Tensor names, sorted.
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    out.reserve(tensors_.size());
    for (const auto& [name, info] : tensors_) out.push_back(name);
    return out;
  }
  /// Number of tensors.
  std::size_t size() const noexcept { return tensors_.size(); }
  /// True when a tensor called `name` exists.
  bool contains(std::string_view name) const { return tensors_.find(name) != tensors_.end(); }
  /// Dtype, shape and byte range of tensor `name`; throws Error(kOutOfRange) when absent.
  const TensorInfo& info(std::string_view name) const {
    const auto it = tensors_.find(name);
    MC_EXPECTS(it != tensors_.end(), Errc::kOutOfRange, "[mc.safetensors.no_such_tensor] ",
               detail::quoted(name), " is not in ", source());
    return it->second;
  }
  /// The little-endian bytes of tensor `name` inside the file (zero-copy; any alignment).
  std::span<const std::byte> raw(std::string_view name) const {
    const TensorInfo& t = info(name);
    return bytes_.subspan(static_cast<std::size_t>(data_offset_ + t.begin),
                          static_cast<std::size_t>(t.num_bytes()));
  }
  /// Tensor `name` converted to float (F32, F16, BF16, F64; others throw kConfigMismatch) as a
  /// matrix: rank r >= 2 gives [d0 * ... * d(r-2), d(r-1)], rank 1 [1, d0], a scalar [1, 1].
  F32Matrix as_f32(std::string_view name) const {
    const TensorInfo& t = info(name);
    const auto& s = t.shape;
    const Eigen::Index cols = s.empty() ? 1 : static_cast<Eigen::Index>(s.back());
    std::uint64_t rows = 1;
    bool zero = false, fits = true;
    for (std::size_t i = 0; i + 1 < s.size(); ++i) {
      zero = zero || s[i] == 0;
      const auto p = detail::mul_checked(rows, static_cast<std::uint64_t>(s[i]));
      fits = fits && p && *p <= static_cast<std::uint64_t>(INT64_MAX);
      rows = p.value_or(0);
    }
    // Only an empty tensor can get here with too many rows, e.g. [2^40, 2^40, 0].
    MC_EXPECTS(zero || fits, Errc::kOutOfRange, "[mc.safetensors.bad_shape] tensor ",
               detail::quoted(name), " of shape ", detail::shape_string(s),
               " has more rows than a matrix can index");
    F32Matrix m(zero ? 0 : static_cast<Eigen::Index>(rows), cols);
    to_f32(name, std::span<float>(m.data(), static_cast<std::size_t>(m.size())));
    return m;
  }
  /// Converts tensor `name` to float into `out` (numel() elements, row-major); see as_f32().
  void to_f32(std::string_view name, std::span<float> out) const {
    const TensorInfo& t = info(name);
    MC_EXPECTS(out.size() == static_cast<std::size_t>(t.numel()), Errc::kInvalidArgument,
               "[mc.safetensors.bad_size] tensor ", detail::quoted(name), " has ", t.numel(),
               " elements, output holds ", out.size());
    const std::byte* p = raw(name).data();
    const std::size_t n = out.size();
    switch (t.dtype) {
      case TensorDtype::kF32:
        if (n) std::memcpy(out.data(), p, n * 4);
        return;
      case TensorDtype::kF64:
        for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<float>(load<double>(p, i));
        return;
      case TensorDtype::kF16:
        for (std::size_t i = 0; i < n; ++i)
          out[i] = mc::detail::f16_to_float(load<std::uint16_t>(p, i));
        return;
      case TensorDtype::kBF16:
        for (std::size_t i = 0; i < n; ++i)
          out[i] = mc::detail::bf16_to_float(load<std::uint16_t>(p, i));
        return;
      default:
        throw Error(Errc::kConfigMismatch,
                    mc::detail::concat("[mc.safetensors.dtype_mismatch] tensor ",
                                       detail::quoted(name), " has dtype ", to_string(t.dtype),
                                       "; as_f32 reads F32, F16, BF16 and F64"));
    }
  }
  /// Byte offset of the data buffer in the file (8 + header length).
  std::uint64_t data_offset() const noexcept { return data_offset_; }
  /// All bytes of the file.
  std::span<const std::byte> bytes() const noexcept { return bytes_; }

 private:
  template <class T>
  static T load(const std::byte* p, std::size_t i) {
    T v;
    std::memcpy(&v, p + i * sizeof(T), sizeof(T));
    return v;
  }

  std::string source() const { return path_.empty() ? "<memory>" : path_.string(); }

  void read_metadata(const JsonValue& m, const std::filesystem::path& path) {
    using mc::detail::concat;
    if (!m.is_object())
      detail::throw_format(path, concat("[mc.safetensors.bad_metadata] __metadata__ at byte ",
                                        8 + m.offset(), " is not an object"));
    for (const auto& kv : m.members()) {
      if (!kv.value.is_string())
        detail::throw_format(path, concat("[mc.safetensors.bad_metadata] __metadata__ value of ",
                                          detail::quoted(kv.key), " at byte ",
                                          8 + kv.value.offset(), " is not a string"));
      metadata_.emplace(kv.key, kv.value.text());
    }
  }

  static TensorInfo read_info(const std::string& name, const JsonValue& v, std::uint64_t buffer,
                              const std::filesystem::path& path) {
    using detail::throw_format;
    using mc::detail::concat;
    const std::string q = detail::quoted(name);
    if (!v.is_object())
      throw_format(path, concat("[mc.safetensors.bad_tensor_info] entry of tensor ", q,
                                " at byte ", 8 + v.offset(), " is not an object"));
    const JsonValue* dtype = v.find("dtype");
    const JsonValue* shape = v.find("shape");
    const JsonValue* offsets = v.find("data_offsets");
    if (!dtype || !shape || !offsets)
      throw_format(path, concat("[mc.safetensors.bad_tensor_info] tensor ", q,
                                " lacks \"dtype\", \"shape\" or \"data_offsets\""));
    TensorInfo t;
    if (!dtype->is_string())
      throw_format(path, concat("[mc.safetensors.unknown_dtype] tensor ", q,
                                ": dtype at byte ", 8 + dtype->offset(), " is not a string"));
    const auto dt = dtype_from_string(dtype->text());
    if (!dt)
      throw_format(path, concat("[mc.safetensors.unknown_dtype] tensor ", q, " has dtype ",
                                detail::quoted(dtype->text()), "; known: BOOL U8 I8 F8_E5M2 "
                                "F8_E4M3 I16 U16 F16 BF16 I32 U32 F32 I64 U64 F64"));
    t.dtype = *dt;
    if (!shape->is_array())
      throw_format(path, concat("[mc.safetensors.bad_shape] tensor ", q, ": shape at byte ",
                                8 + shape->offset(), " is not an array"));
    std::uint64_t numel = 1;
    bool overflow = false;
    for (const auto& d : shape->items()) {
      std::uint64_t x = 0;
      if (!d.to_uint64(x) || x > static_cast<std::uint64_t>(INT64_MAX))
        throw_format(path, concat("[mc.safetensors.bad_shape] tensor ", q, ": dimension ",
                                  detail::quoted(d.text()), " at byte ", 8 + d.offset(),
                                  " is not an integer in [0, 2^63)"));
      t.shape.push_back(static_cast<std::int64_t>(x));
      const auto p = detail::mul_checked(numel, x);
      overflow = overflow || !p;
      numel = p.value_or(0);
    }
    const auto bytes = detail::mul_checked(numel, dtype_size(t.dtype));
    // A dimension of 0 makes the product 0 even after an overflowing prefix: only a nonzero
    // product can have overflowed.
    const bool has_zero = std::find(t.shape.begin(), t.shape.end(), 0) != t.shape.end();
    if ((overflow && !has_zero) || !bytes || *bytes > static_cast<std::uint64_t>(INT64_MAX))
      throw_format(path, concat("[mc.safetensors.bad_shape] tensor ", q, ": shape ",
                                detail::shape_string(t.shape), " of ", to_string(t.dtype),
                                " needs more than 2^63 bytes"));
    const std::uint64_t need = has_zero ? 0 : *bytes;
    std::uint64_t b = 0, e = 0;
    if (!offsets->is_array() || offsets->items().size() != 2 ||
        !offsets->items()[0].to_uint64(b) || !offsets->items()[1].to_uint64(e))
      throw_format(path, concat("[mc.safetensors.bad_offsets] tensor ", q,
                                ": data_offsets at byte ", 8 + offsets->offset(),
                                " is not [begin, end] of two unsigned integers"));
    if (b > e || e > buffer)
      throw_format(path, concat("[mc.safetensors.bad_offsets] tensor ", q, ": data_offsets [",
                                b, ", ", e, "] not a range inside the ", buffer,
                                "-byte data buffer"));
    if (e - b != need)
      throw_format(path, concat("[mc.safetensors.bad_offsets] tensor ", q, ": data_offsets [",
                                b, ", ", e, "] hold ", e - b, " bytes but shape ",
                                detail::shape_string(t.shape), " of ", to_string(t.dtype),
                                " needs ", need));
    t.begin = b;
    t.end = e;
    return t;
  }

  // The spec: "the byte buffer needs to be entirely indexed, and cannot contain holes" (this
  // prevents polyglot files). Tensors sorted by range must tile [0, buffer) exactly; zero-byte
  // tensors may sit at any boundary. Trailing bytes are refused like the reference does.
  void check_coverage(std::uint64_t buffer, const std::filesystem::path& path) const {
    using mc::detail::concat;
    std::vector<std::pair<const std::string*, const TensorInfo*>> order;
    order.reserve(tensors_.size());
    for (const auto& [name, info] : tensors_) order.emplace_back(&name, &info);
    std::sort(order.begin(), order.end(), [](const auto& x, const auto& y) {
      return std::pair(x.second->begin, x.second->end) < std::pair(y.second->begin, y.second->end);
    });
    std::uint64_t at = 0;
    const std::string* prev = nullptr;
    for (const auto& [name, t] : order) {
      if (t->begin < at)
        detail::throw_format(path, concat("[mc.safetensors.bad_offsets] tensor ",
                                          detail::quoted(*name), " [", t->begin, ", ", t->end,
                                          ") overlaps tensor ", detail::quoted(*prev),
                                          " ending at ", at));
      if (t->begin > at)
        detail::throw_format(path, concat("[mc.safetensors.bad_offsets] data buffer bytes [",
                                          at, ", ", t->begin, ") belong to no tensor"));
      at = t->end;
      prev = name;
    }
    if (at != buffer)
      detail::throw_format(path, concat("[mc.safetensors.bad_offsets] data buffer bytes [", at,
                                        ", ", buffer, ") belong to no tensor"));
  }

  std::span<const std::byte> bytes_;
  std::uint64_t data_offset_ = 0;
  std::map<std::string, TensorInfo, std::less<>> tensors_;
  std::map<std::string, std::string> metadata_;
  std::filesystem::path path_;
};

/// A safetensors file mapped read-only; views stay valid while the object lives (moves keep
/// them valid). The file must not be truncated by anyone while it is open (that is SIGBUS).
class SafetensorsFile {
 public:
  SafetensorsFile(SafetensorsFile&& o) noexcept { swap(o); }
  SafetensorsFile& operator=(SafetensorsFile&& o) noexcept {
    swap(o);
    return *this;
  }
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  ~SafetensorsFile() {
    if (base_) ::munmap(base_, size_);
  }

  /// Maps `path` and validates it (SafetensorsView::parse). Throws IoError when the file cannot
  /// be opened, stat'ed or mapped, FormatError when its contents break the format.
  static SafetensorsFile open(const std::filesystem::path& path) {
    SafetensorsFile f;
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) detail::throw_io("[mc.safetensors.open_failed] cannot open", path);
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      const int err = errno;
      ::close(fd);
      errno = err;
      detail::throw_io("[mc.safetensors.open_failed] cannot stat", path);
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd);
      errno = EINVAL;
      detail::throw_io("[mc.safetensors.open_failed] not a regular file:", path);
    }
    f.size_ = static_cast<std::size_t>(st.st_size);
    if (f.size_ > 0) {
      void* p = ::mmap(nullptr, f.size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        const int err = errno;
        ::close(fd);
        errno = err;
        detail::throw_io("[mc.safetensors.map_failed] cannot map", path);
      }
      f.base_ = p;
    }
    ::close(fd);  // the mapping keeps the file alive
    f.view_ = SafetensorsView::parse(
        std::span<const std::byte>(static_cast<const std::byte*>(f.base_), f.size_), path);
    return f;
  }

  /// The parsed contents; every accessor below forwards to it.
  const SafetensorsView& view() const noexcept { return view_; }
  /// The "__metadata__" map (empty when the file has none).
  const std::map<std::string, std::string>& metadata() const noexcept { return view_.metadata(); }
  /// Tensor names, sorted.
  std::vector<std::string> names() const { return view_.names(); }
  /// Number of tensors.
  std::size_t size() const noexcept { return view_.size(); }
  /// True when a tensor called `name` exists.
  bool contains(std::string_view name) const { return view_.contains(name); }
  /// Dtype, shape and byte range of tensor `name`; throws Error(kOutOfRange) when absent.
  const TensorInfo& info(std::string_view name) const { return view_.info(name); }
  /// The little-endian bytes of tensor `name` in the mapping (zero-copy).
  std::span<const std::byte> raw(std::string_view name) const { return view_.raw(name); }
  /// Tensor `name` as a float matrix; see SafetensorsView::as_f32.
  F32Matrix as_f32(std::string_view name) const { return view_.as_f32(name); }

 private:
  SafetensorsFile() = default;
  void swap(SafetensorsFile& o) noexcept {
    std::swap(base_, o.base_);
    std::swap(size_, o.size_);
    std::swap(view_, o.view_);
  }

  void* base_ = nullptr;
  std::size_t size_ = 0;
  SafetensorsView view_;
};

/// Collects tensors and metadata, then writes one safetensors file: tensor names sorted in the
/// header, header padded with spaces to a multiple of 8 bytes, data ordered by element size
/// (largest first) then name so every tensor is aligned to its element size.
class SafetensorsWriter {
 public:
  /// Sets metadata entry `key` (any valid UTF-8) to `value`, replacing an earlier one.
  void set_metadata(std::string key, std::string value) {
    MC_EXPECTS(is_valid_utf8(key) && is_valid_utf8(value), Errc::kInvalidArgument,
               "[mc.safetensors.bad_name] metadata key or value is not valid UTF-8");
    metadata_[std::move(key)] = std::move(value);
  }

  /// Adds tensor `name` from little-endian bytes `data` (numel * dtype_size bytes), copied.
  void add_raw(std::string name, TensorDtype dtype, std::vector<std::int64_t> shape,
               std::span<const std::byte> data) {
    const std::uint64_t need = check_new(name, dtype, shape);
    MC_EXPECTS(data.size() == need, Errc::kInvalidArgument, "[mc.safetensors.bad_size] tensor ",
               detail::quoted(name), " of shape ", detail::shape_string(shape), " and dtype ",
               to_string(dtype), " needs ", need, " bytes, got ", data.size());
    std::vector<std::byte> copy(data.begin(), data.end());
    tensors_.emplace(std::move(name), Entry{dtype, std::move(shape), std::move(copy)});
  }

  /// Adds tensor `name` of `shape` from row-major floats `values`, stored as `dtype` (F32, F16,
  /// BF16 rounded to nearest-even, or F64).
  void add(std::string name, std::vector<std::int64_t> shape, std::span<const float> values,
           TensorDtype dtype = TensorDtype::kF32) {
    MC_EXPECTS(dtype == TensorDtype::kF32 || dtype == TensorDtype::kF16 ||
                   dtype == TensorDtype::kBF16 || dtype == TensorDtype::kF64,
               Errc::kInvalidArgument, "[mc.safetensors.dtype_mismatch] cannot store floats as ",
               to_string(dtype), "; use F32, F16, BF16 or F64");
    const std::uint64_t need = check_new(name, dtype, shape);
    MC_EXPECTS(values.size() * dtype_size(dtype) == need, Errc::kInvalidArgument,
               "[mc.safetensors.bad_size] tensor ", detail::quoted(name), " of shape ",
               detail::shape_string(shape), " needs ", need / dtype_size(dtype),
               " values, got ", values.size());
    std::vector<std::byte> bytes(static_cast<std::size_t>(need));
    for (std::size_t i = 0; i < values.size(); ++i) {
      std::byte* p = bytes.data() + i * dtype_size(dtype);
      if (dtype == TensorDtype::kF32) {
        std::memcpy(p, &values[i], 4);
      } else if (dtype == TensorDtype::kF64) {
        const double d = values[i];
        std::memcpy(p, &d, 8);
      } else {
        const std::uint16_t h = dtype == TensorDtype::kF16 ? mc::detail::float_to_f16(values[i])
                                                           : mc::detail::float_to_bf16(values[i]);
        std::memcpy(p, &h, 2);
      }
    }
    tensors_.emplace(std::move(name), Entry{dtype, std::move(shape), std::move(bytes)});
  }

  /// Adds matrix `m` as a [rows, cols] tensor in row-major order, stored as `dtype`.
  template <class Derived>
  void add_matrix(std::string name, const Eigen::MatrixBase<Derived>& m,
                  TensorDtype dtype = TensorDtype::kF32) {
    const F32Matrix rm = m.template cast<float>();
    add(std::move(name),
        {static_cast<std::int64_t>(rm.rows()), static_cast<std::int64_t>(rm.cols())},
        std::span<const float>(rm.data(), static_cast<std::size_t>(rm.size())), dtype);
  }

  /// Number of tensors added.
  std::size_t size() const noexcept { return tensors_.size(); }

  /// The complete file: 8-byte header length, padded JSON header, data buffer.
  std::vector<std::byte> to_bytes() const {
    const std::string header = header_json();
    std::vector<std::byte> out(8 + header.size());
    const std::uint64_t n = header.size();
    std::memcpy(out.data(), &n, 8);
    std::memcpy(out.data() + 8, header.data(), header.size());
    for (const auto* e : data_order())
      out.insert(out.end(), e->second.data.begin(), e->second.data.end());
    return out;
  }

  /// Writes the file to `path` atomically: a temporary file beside it is written, fsync'ed and
  /// renamed over `path`, then the directory is fsync'ed. Throws IoError; on failure `path` is
  /// untouched and the temporary file removed.
  void write(const std::filesystem::path& path) const {
    static std::atomic<unsigned> counter{0};
    const std::string header = header_json();
    const std::filesystem::path tmp =
        path.string() + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++);
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) detail::throw_io("[mc.safetensors.write_failed] cannot create", tmp);
    auto fail = [&](const char* what, std::uint64_t at) {
      const int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      errno = err;
      detail::throw_io(what, tmp, static_cast<std::int64_t>(at));
    };
    std::uint64_t at = 0;
    auto put = [&](const void* p, std::size_t n) {
      const char* c = static_cast<const char*>(p);
      while (n > 0) {
        const ssize_t w = ::write(fd, c, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) fail("[mc.safetensors.write_failed] cannot write", at);
        c += w;
        n -= static_cast<std::size_t>(w);
        at += static_cast<std::uint64_t>(w);
      }
    };
    const std::uint64_t n = header.size();
    put(&n, 8);
    put(header.data(), header.size());
    for (const auto* e : data_order()) put(e->second.data.data(), e->second.data.size());
    if (::fsync(fd) != 0) fail("[mc.safetensors.write_failed] cannot fsync", at);
    if (::close(fd) != 0) {
      ::unlink(tmp.c_str());
      detail::throw_io("[mc.safetensors.write_failed] cannot close", tmp);
    }
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
      const int err = errno;
      ::unlink(tmp.c_str());
      errno = err;
      detail::throw_io("[mc.safetensors.write_failed] cannot rename " + tmp.string() + " to",
                       path);
    }
    const auto dir = path.has_parent_path() ? path.parent_path() : std::filesystem::path(".");
    const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {  // best effort: some file systems cannot fsync a directory
      [[maybe_unused]] const int rc = ::fsync(dfd);
      ::close(dfd);
    }
  }

 private:
  struct Entry {
    TensorDtype dtype;
    std::vector<std::int64_t> shape;
    std::vector<std::byte> data;
  };
  using Item = std::pair<const std::string, Entry>;

  // Validates a new tensor's name and shape; returns its byte count.
  std::uint64_t check_new(const std::string& name, TensorDtype dtype,
                          const std::vector<std::int64_t>& shape) const {
    MC_EXPECTS(!name.empty() && name != "__metadata__" && is_valid_utf8(name),
               Errc::kInvalidArgument, "[mc.safetensors.bad_name] tensor name ",
               detail::quoted(name), " must be non-empty valid UTF-8 other than __metadata__");
    MC_EXPECTS(!tensors_.count(name), Errc::kInvalidArgument,
               "[mc.safetensors.duplicate_name] tensor ", detail::quoted(name),
               " was already added");
    std::uint64_t bytes = dtype_size(dtype);
    for (auto d : shape) {
      MC_EXPECTS(d >= 0, Errc::kInvalidArgument, "[mc.safetensors.bad_shape] tensor ",
                 detail::quoted(name), " has negative dimension ", d);
      const auto p = detail::mul_checked(bytes, static_cast<std::uint64_t>(d));
      MC_EXPECTS(p && *p <= static_cast<std::uint64_t>(INT64_MAX), Errc::kInvalidArgument,
                 "[mc.safetensors.bad_shape] tensor ", detail::quoted(name), " of shape ",
                 detail::shape_string(shape), " needs more than 2^63 bytes");
      bytes = *p;
    }
    return bytes;
  }

  std::vector<const Item*> data_order() const {
    std::vector<const Item*> order;
    for (const auto& item : tensors_) order.push_back(&item);
    std::stable_sort(order.begin(), order.end(), [](const Item* a, const Item* b) {
      return dtype_size(a->second.dtype) > dtype_size(b->second.dtype);
    });
    return order;
  }

  std::string header_json() const {
    std::map<const std::string*, std::pair<std::uint64_t, std::uint64_t>> ranges;
    std::uint64_t at = 0;
    for (const auto* e : data_order()) {
      ranges[&e->first] = {at, at + e->second.data.size()};
      at += e->second.data.size();
    }
    std::string h = "{";
    if (!metadata_.empty()) {
      h += "\"__metadata__\":{";
      bool first = true;
      for (const auto& [k, v] : metadata_) {
        if (!first) h += ',';
        first = false;
        append_json_string(h, k);
        h += ':';
        append_json_string(h, v);
      }
      h += '}';
    }
    for (const auto& item : tensors_) {  // std::map: sorted by name
      if (h.size() > 1) h += ',';
      append_json_string(h, item.first);
      h += ":{\"dtype\":\"";
      h += to_string(item.second.dtype);
      h += "\",\"shape\":[";
      for (std::size_t i = 0; i < item.second.shape.size(); ++i) {
        if (i) h += ',';
        h += std::to_string(item.second.shape[i]);
      }
      const auto [b, e] = ranges[&item.first];
      h += "],\"data_offsets\":[" + std::to_string(b) + "," + std::to_string(e) + "]}";
    }
    h += '}';
    while (h.size() % 8 != 0) h += ' ';  // the data buffer then starts 8-byte aligned
    return h;
  }

  std::map<std::string, Entry> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace mc::io
