// SPDX-License-Identifier: Apache-2.0
// Disk-backed storage policy for a Tree: one memory-mapped, append-only file per level plus a
// CRC-32C table per level, and `tree.mct` with the header and two commit slots
// (docs/formats.md). A commit writes checksums for the new bytes, then the inactive slot; a
// process killed at any instant leaves the previous commit intact, and open() ignores anything
// past the newest valid slot (the SQLite/LMDB rule: a commit is one small write after the data).
#pragma once

#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "megacontext/detail/crc32c.hpp"
#include "megacontext/error.hpp"
#include "megacontext/io/tree_file.hpp"
#include "megacontext/tree_storage.hpp"

namespace mc {

/// How much of a tree open() checks before returning.
enum class Verify {
  kFull,        ///< every committed byte against its CRC-32C (default; O(file size))
  kCommitOnly,  ///< header, commit slot and file sizes only (O(1)); call verify() later
};

/// What a commit must survive.
enum class Durability {
  kProcessCrash,  ///< a killed process (default): the page cache keeps every store, no fsync
  kPowerLoss,     ///< also power loss: msync the data, then the slot, at every commit
};

/// Options for opening an existing tree directory.
struct DiskOpenOptions {
  bool read_only = false;                         ///< open as a reader (no lock, no writes)
  Verify verify = Verify::kFull;                  ///< checks done by open()
  Durability durability = Durability::kProcessCrash;  ///< what commits survive (writers)
};

/// Options for creating a tree directory.
struct DiskCreateOptions {
  bool overwrite = false;                         ///< replace an existing tree in the directory
  Durability durability = Durability::kProcessCrash;  ///< what commits survive
  std::uint64_t chunk_bytes = io::kDefaultChunkBytes;  ///< checksum granularity (power of two)
};

/// What open() found: the commit in force and whether a torn newer commit was dropped.
struct RecoveryReport {
  std::uint64_t seq = 0;         ///< sequence number of the commit in force
  std::uint64_t num_tokens = 0;  ///< tokens it holds
  bool torn_slot = false;        ///< the other slot failed its checksum (a commit was cut short)
};

namespace detail {

[[noreturn]] inline void throw_io(const std::string& what, const std::filesystem::path& p,
                                  std::int64_t offset = -1) {
  throw IoError(what + " " + p.string() + ": " + std::strerror(errno), p, offset);
}

/// One file mapped with MAP_SHARED; writers grow it, readers map what exists.
class MappedFile {
 public:
  MappedFile() = default;
  MappedFile(std::filesystem::path path, bool writable, bool create)
      : path_(std::move(path)), writable_(writable) {
    const int flags = writable ? (O_RDWR | (create ? (O_CREAT | O_TRUNC) : 0)) : O_RDONLY;
    fd_ = ::open(path_.c_str(), flags | O_CLOEXEC, 0644);
    if (fd_ < 0) throw_io("[mc.tree.open_failed] cannot open", path_);
  }
  MappedFile(MappedFile&& o) noexcept { swap(o); }
  MappedFile& operator=(MappedFile&& o) noexcept {
    swap(o);
    return *this;
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile() {
    if (base_) ::munmap(base_, mapped_);
    if (fd_ >= 0) ::close(fd_);
  }

  const std::filesystem::path& path() const { return path_; }
  std::byte* base() const { return base_; }
  std::uint64_t mapped() const { return mapped_; }

  /// Current size of the file in bytes.
  std::uint64_t file_size() const {
    struct stat st {};
    if (::fstat(fd_, &st) != 0) throw_io("[mc.tree.stat_failed] cannot stat", path_);
    return static_cast<std::uint64_t>(st.st_size);
  }

  /// Maps the whole file as it is now (readers, and writers after open).
  void map_existing() { remap(file_size()); }

  /// Writers: makes the file and its mapping hold at least `bytes` bytes. Blocks are allocated
  /// with posix_fallocate so a full disk is an IoError here, not a SIGBUS on a later store.
  void ensure(std::uint64_t bytes) {
    if (bytes <= mapped_) return;
    std::uint64_t cap = std::max<std::uint64_t>({bytes, 2 * mapped_, std::uint64_t{1} << 16});
    cap = (cap + 4095) & ~std::uint64_t{4095};
    if (file_size() < cap) {
      const int rc = ::posix_fallocate(fd_, 0, static_cast<off_t>(cap));
      if (rc == EOPNOTSUPP || rc == EINVAL) {
        if (::ftruncate(fd_, static_cast<off_t>(cap)) != 0)
          throw_io("[mc.tree.grow_failed] cannot grow", path_, static_cast<std::int64_t>(cap));
      } else if (rc != 0) {
        errno = rc;
        throw_io("[mc.tree.grow_failed] cannot allocate space in", path_,
                 static_cast<std::int64_t>(cap));
      }
    }
    remap(cap);
  }

  /// Flushes bytes [begin, end) of the mapping to the device (Durability::kPowerLoss).
  void sync(std::uint64_t begin, std::uint64_t end) const {
    if (!base_ || end <= begin) return;
    const std::uint64_t page = 4096;
    begin &= ~(page - 1);
    if (::msync(base_ + begin, end - begin, MS_SYNC) != 0)
      throw_io("[mc.tree.sync_failed] msync failed on", path_, static_cast<std::int64_t>(begin));
  }

  int fd() const { return fd_; }

  /// Unmaps and shrinks the file to `bytes` (writers closing); errors are ignored because the
  /// bytes past a commit are never read.
  void truncate(std::uint64_t bytes) noexcept {
    if (base_) ::munmap(base_, mapped_);
    base_ = nullptr;
    mapped_ = 0;
    if (fd_ >= 0 && writable_) [[maybe_unused]] int rc = ::ftruncate(fd_, static_cast<off_t>(bytes));
  }

 private:
  void remap(std::uint64_t bytes) {
    if (bytes == mapped_) return;
    const int prot = writable_ ? (PROT_READ | PROT_WRITE) : PROT_READ;
    void* p = nullptr;
    if (base_ && bytes > 0) {
      p = ::mremap(base_, mapped_, bytes, MREMAP_MAYMOVE);
    } else if (bytes > 0) {
      p = ::mmap(nullptr, bytes, prot, MAP_SHARED, fd_, 0);
    } else {
      if (base_) ::munmap(base_, mapped_);
      base_ = nullptr;
      mapped_ = 0;
      return;
    }
    if (p == MAP_FAILED) throw_io("[mc.tree.map_failed] cannot map", path_);
    base_ = static_cast<std::byte*>(p);
    mapped_ = bytes;
  }
  void swap(MappedFile& o) noexcept {
    std::swap(path_, o.path_);
    std::swap(fd_, o.fd_);
    std::swap(base_, o.base_);
    std::swap(mapped_, o.mapped_);
    std::swap(writable_, o.writable_);
  }

  std::filesystem::path path_;
  int fd_ = -1;
  std::byte* base_ = nullptr;
  std::uint64_t mapped_ = 0;
  bool writable_ = false;
};

inline std::filesystem::path level_path(const std::filesystem::path& dir, int lod) {
  return dir / ("lod" + std::to_string(lod) + ".bin");
}
inline std::filesystem::path crc_path(const std::filesystem::path& dir, int lod) {
  return dir / ("lod" + std::to_string(lod) + ".crc");
}

}  // namespace detail

/// Storage policy backed by a directory of memory-mapped files; see docs/formats.md.
class DiskStorage {
 public:
  /// Name of the header file inside a tree directory.
  static constexpr const char* kHeaderName = "tree.mct";

  DiskStorage(DiskStorage&& o) noexcept { swap(o); }
  DiskStorage& operator=(DiskStorage&& o) noexcept {
    swap(o);
    return *this;
  }
  DiskStorage(const DiskStorage&) = delete;
  DiskStorage& operator=(const DiskStorage&) = delete;
  ~DiskStorage() { close(); }

  /// Writers: trims every file to the bytes of the commit in force (files grow in large steps
  /// while appending), so a closed tree takes exactly its documented size on disk. Called by the
  /// destructor; safe to call twice. Readers: just unmaps.
  void close() noexcept {
    // Only a fully opened writer trims: a writer whose open() failed half-way must leave the
    // files exactly as it found them (they may be the evidence of the damage it reported).
    if (!read_only() && header_map_ && opened_ && data_.size() == crc_.size()) {
      for (std::uint32_t l = 0; l < data_.size(); ++l) {
        const std::uint64_t bytes = layout_.level_bytes(static_cast<int>(l), commit_.num_tokens);
        data_[l].truncate(bytes);
        crc_[l].truncate((bytes / layout_.chunk_bytes) * 4);
      }
    }
    if (header_map_) ::munmap(header_map_, io::kHeaderFileBytes);
    header_map_ = nullptr;
    data_.clear();
    crc_.clear();
    header_ = detail::MappedFile();
    opened_ = false;
  }

  /// Creates an empty tree of `layout` in directory `dir` (made if missing) and opens it for
  /// writing. The header appears atomically (written to a temporary file, then renamed).
  static DiskStorage create(const std::filesystem::path& dir, const io::TreeLayout& layout,
                            const DiskCreateOptions& opts = {}) {
    namespace fs = std::filesystem;
    MC_EXPECTS(layout.k >= 2 && layout.depth >= 1 && layout.depth < io::kMaxLevels,
               Errc::kInvalidArgument, "[mc.tree.bad_layout] K = ", layout.k, ", Depth = ",
               layout.depth);
    MC_EXPECTS(opts.chunk_bytes >= 64 && (opts.chunk_bytes & (opts.chunk_bytes - 1)) == 0,
               Errc::kInvalidArgument, "[mc.tree.bad_chunk] chunk_bytes = ", opts.chunk_bytes,
               " must be a power of two >= 64");
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) throw IoError("[mc.tree.mkdir_failed] cannot create " + dir.string() + ": " +
                              ec.message(), dir);
    const fs::path header = dir / kHeaderName;
    MC_EXPECTS(opts.overwrite || !fs::exists(header), Errc::kState,
               "[mc.tree.exists] a tree already exists in ", dir.string(),
               " (pass overwrite = true to replace it)");
    io::TreeLayout l = layout;
    l.chunk_bytes = opts.chunk_bytes;
    fs::remove(header, ec);
    for (std::uint32_t lod = 0; lod <= l.depth; ++lod) {
      detail::MappedFile(detail::level_path(dir, static_cast<int>(lod)), true, true);
      detail::MappedFile(detail::crc_path(dir, static_cast<int>(lod)), true, true);
    }
    std::vector<unsigned char> buf(io::kHeaderFileBytes, 0);
    io::encode_header(l, buf.data());
    io::CommitSlot empty;
    empty.seq = 1;
    io::encode_slot(empty, buf.data() + io::slot_offset(0));
    const fs::path tmp = dir / "tree.mct.tmp";
    {
      detail::MappedFile f(tmp, true, true);
      if (::pwrite(f.fd(), buf.data(), buf.size(), 0) != static_cast<ssize_t>(buf.size()))
        detail::throw_io("[mc.tree.write_failed] cannot write", tmp);
      if (::fsync(f.fd()) != 0) detail::throw_io("[mc.tree.sync_failed] cannot fsync", tmp);
    }
    fs::rename(tmp, header, ec);
    if (ec) throw IoError("[mc.tree.rename_failed] cannot rename " + tmp.string() + ": " +
                              ec.message(), tmp);
    if (const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); dfd >= 0) {
      ::fsync(dfd);
      ::close(dfd);
    }
    DiskOpenOptions o;
    o.durability = opts.durability;
    o.verify = Verify::kCommitOnly;
    return open(dir, o);
  }

  /// Opens the tree in `dir`; throws FormatError for a torn or corrupt tree, IoError when the
  /// files cannot be read, and mc::Error(kLocked) when another writer holds it.
  static DiskStorage open(const std::filesystem::path& dir, const DiskOpenOptions& opts = {}) {
    DiskStorage s;
    s.dir_ = dir;
    s.opts_ = opts;
    const std::filesystem::path header = dir / kHeaderName;
    if (!std::filesystem::exists(header))
      throw IoError("[mc.tree.not_found] no tree in " + dir.string() + " (" + kHeaderName +
                        " is missing)",
                    header);
    s.header_ = detail::MappedFile(header, !opts.read_only, false);
    if (!opts.read_only && ::flock(s.header_.fd(), LOCK_EX | LOCK_NB) != 0)
      throw Error(Errc::kLocked, "[mc.tree.locked] another process is writing the tree in " +
                                     dir.string());
    const std::uint64_t size = s.header_.file_size();
    if (size < io::kHeaderFileBytes)
      throw FormatError(detail::concat("[mc.tree.truncated] ", header.string(), " holds ", size,
                                       " bytes, a header needs ", io::kHeaderFileBytes),
                        header);
    if (!opts.read_only) {
      void* p = ::mmap(nullptr, io::kHeaderFileBytes, PROT_READ | PROT_WRITE, MAP_SHARED,
                       s.header_.fd(), 0);
      if (p == MAP_FAILED) detail::throw_io("[mc.tree.map_failed] cannot map", header);
      s.header_map_ = static_cast<unsigned char*>(p);
    }
    unsigned char buf[3 * io::kRecordBytes];
    s.read_header_records(buf);
    s.layout_ = io::decode_header(buf, header);
    s.load_commit(buf);
    s.open_levels();
    if (opts.verify == Verify::kFull) s.verify();
    s.opened_ = true;
    return s;
  }

  /// K, Depth, dim, dtype and checksum granularity.
  const io::TreeLayout& layout() const { return layout_; }
  /// Tokens of the commit in force.
  std::uint64_t committed_tokens() const { return commit_.num_tokens; }
  /// What open() (or the last refresh()) found.
  const RecoveryReport& recovery() const { return report_; }
  /// The tree directory.
  const std::filesystem::path& directory() const { return dir_; }
  /// True for a reader.
  bool read_only() const { return opts_.read_only; }
  /// Base of level `lod`'s mapping; valid until the next reserve() of that level.
  const std::byte* data(int lod) const { return data_[static_cast<std::size_t>(lod)].base(); }

  /// Grows level `lod` to at least `bytes` bytes and returns its (possibly moved) base.
  std::byte* reserve(int lod, std::uint64_t bytes) {
    MC_EXPECTS(!read_only(), Errc::kState, "[mc.tree.read_only] cannot append to ",
               dir_.string(), ": opened read-only");
    auto& f = data_[static_cast<std::size_t>(lod)];
    f.ensure(bytes);
    return f.base();
  }

  /// Makes the first `num_tokens` tokens (and every complete gist over them) the commit in
  /// force: checksums of the new bytes first, then the inactive slot, so a kill at any instant
  /// leaves either the old or the new commit.
  void commit(std::uint64_t num_tokens) {
    MC_EXPECTS(!read_only(), Errc::kState, "[mc.tree.read_only] cannot commit to ",
               dir_.string(), ": opened read-only");
    MC_EXPECTS(num_tokens >= commit_.num_tokens, Errc::kInvalidArgument,
               "[mc.tree.bad_commit] commit of ", num_tokens, " tokens is below the last (",
               commit_.num_tokens, ")");
    io::CommitSlot next;
    next.seq = commit_.seq + 1;
    next.num_tokens = num_tokens;
    const std::uint64_t C = layout_.chunk_bytes;
    for (std::uint32_t l = 0; l <= layout_.depth; ++l) {
      const int lod = static_cast<int>(l);
      const std::uint64_t old_bytes = layout_.level_bytes(lod, commit_.num_tokens);
      const std::uint64_t new_bytes = layout_.level_bytes(lod, num_tokens);
      auto& table = crc_[l];
      table.ensure((new_bytes / C) * 4);
      const std::byte* d = data_[l].base();
      std::uint32_t crc = commit_.tail_crc[l];
      for (std::uint64_t pos = old_bytes; pos < new_bytes;) {
        const std::uint64_t chunk_end = (pos / C + 1) * C;
        const std::uint64_t e = std::min(chunk_end, new_bytes);
        crc = mc::detail::crc32c_extend(crc, d + pos, e - pos);
        if (e == chunk_end) {
          std::memcpy(table.base() + (pos / C) * 4, &crc, 4);
          crc = 0;
        }
        pos = e;
      }
      next.tail_crc[l] = crc;
      if (opts_.durability == Durability::kPowerLoss) {
        data_[l].sync(old_bytes, new_bytes);
        table.sync((old_bytes / C) * 4, (new_bytes / C) * 4);
      }
    }
    write_slot(next);
  }

  /// Makes the first `num_tokens` tokens (at most the commit in force) the commit in force; the
  /// next append overwrites what lay past them. Full checksum chunks before the cut stay valid
  /// (their bytes do not change); only each level's partial tail chunk is checksummed again.
  /// One slot write, like commit(): a kill leaves either the old or the new state. Readers that
  /// hold the tree open must refresh() before reading past the new end.
  void rollback(std::uint64_t num_tokens) {
    MC_EXPECTS(!read_only(), Errc::kState, "[mc.tree.read_only] cannot roll back ",
               dir_.string(), ": opened read-only");
    MC_EXPECTS(num_tokens <= commit_.num_tokens, Errc::kInvalidArgument,
               "[mc.tree.bad_truncate] rollback to ", num_tokens, " tokens is above the commit (",
               commit_.num_tokens, ")");
    io::CommitSlot next;
    next.seq = commit_.seq + 1;
    next.num_tokens = num_tokens;
    const std::uint64_t C = layout_.chunk_bytes;
    for (std::uint32_t l = 0; l <= layout_.depth; ++l) {
      const std::uint64_t bytes = layout_.level_bytes(static_cast<int>(l), num_tokens);
      const std::uint64_t full = (bytes / C) * C;
      next.tail_crc[l] = mc::detail::crc32c(data_[l].base() + full, bytes - full);
    }
    write_slot(next);
  }

  /// Checks every committed byte of every level against its CRC-32C; throws FormatError naming
  /// the level, chunk, stored and computed checksum on the first mismatch.
  void verify() const {
    const std::uint64_t C = layout_.chunk_bytes;
    for (std::uint32_t l = 0; l <= layout_.depth; ++l) {
      const int lod = static_cast<int>(l);
      const std::uint64_t bytes = layout_.level_bytes(lod, commit_.num_tokens);
      const auto& f = data_[l];
      const auto& table = crc_[l];
      const std::uint64_t chunks = bytes / C;
      for (std::uint64_t c = 0; c <= chunks; ++c) {
        const std::uint64_t b = c * C, e = std::min(b + C, bytes);
        if (b >= e) break;
        const std::uint32_t got = mc::detail::crc32c(f.base() + b, e - b);
        std::uint32_t want = commit_.tail_crc[l];
        if (c < chunks) std::memcpy(&want, table.base() + c * 4, 4);
        if (got != want)
          throw FormatError(
              mc::detail::concat("[mc.tree.checksum] ", f.path().string(), " chunk ", c,
                                 " (bytes ", b, "..", e, ") of commit ", commit_.seq,
                                 ": stored CRC-32C 0x", std::hex, want, ", computed 0x", got),
              f.path());
      }
    }
  }

  /// Readers: picks up the newest commit written since open (or the last refresh) and verifies
  /// it as open() would. Returns true when the commit changed.
  bool refresh() {
    MC_EXPECTS(read_only(), Errc::kState,
               "[mc.tree.not_reader] refresh() is for trees opened read-only");
    const std::uint64_t before = commit_.seq;
    unsigned char buf[3 * io::kRecordBytes];
    read_header_records(buf);
    load_commit(buf);
    for (auto& f : data_) f.map_existing();
    for (auto& f : crc_) f.map_existing();
    check_sizes();
    if (opts_.verify == Verify::kFull) verify();
    return commit_.seq != before;
  }

 private:
  DiskStorage() = default;

  void swap(DiskStorage& o) noexcept {
    std::swap(dir_, o.dir_);
    std::swap(opts_, o.opts_);
    std::swap(header_, o.header_);
    std::swap(header_map_, o.header_map_);
    std::swap(layout_, o.layout_);
    std::swap(commit_, o.commit_);
    std::swap(slot_index_, o.slot_index_);
    std::swap(report_, o.report_);
    std::swap(data_, o.data_);
    std::swap(crc_, o.crc_);
    std::swap(opened_, o.opened_);
  }

  // Publishes `next` in the inactive slot (after every data and checksum store before it).
  void write_slot(const io::CommitSlot& next) {
    std::atomic_thread_fence(std::memory_order_seq_cst);
    const int slot = 1 - slot_index_;
    unsigned char rec[io::kRecordBytes];
    io::encode_slot(next, rec);
    std::memcpy(header_map_ + io::slot_offset(slot), rec, io::kRecordBytes);
    if (opts_.durability == Durability::kPowerLoss &&
        ::msync(header_map_, io::kHeaderFileBytes, MS_SYNC) != 0)
      detail::throw_io("[mc.tree.sync_failed] msync failed on", dir_ / kHeaderName);
    commit_ = next;
    slot_index_ = slot;
    report_ = {next.seq, next.num_tokens, false};
  }

  void read_header_records(unsigned char* buf) const {
    if (header_map_) {
      std::memcpy(buf, header_map_, 3 * io::kRecordBytes);
      return;
    }
    const auto want = static_cast<ssize_t>(3 * io::kRecordBytes);
    if (::pread(header_.fd(), buf, 3 * io::kRecordBytes, 0) != want)
      detail::throw_io("[mc.tree.read_failed] cannot read the header of", header_.path());
  }

  // A reader may race a writer's slot store and see it torn; the other slot is then intact,
  // but two commits could land during one read, so retry a few times before giving up.
  void load_commit(unsigned char* buf) {
    for (int attempt = 0;; ++attempt) {
      try {
        const io::SlotChoice c = io::choose_slot(buf, header_.path());
        commit_ = c.slot;
        slot_index_ = c.index;
        report_ = {c.slot.seq, c.slot.num_tokens, !c.other_valid};
        return;
      } catch (const FormatError&) {
        if (!read_only() || attempt >= 8) throw;
        ::usleep(1000);
        read_header_records(buf);
      }
    }
  }

  void open_levels() {
    for (std::uint32_t l = 0; l <= layout_.depth; ++l) {
      const int lod = static_cast<int>(l);
      const bool w = !read_only();
      data_.emplace_back(detail::level_path(dir_, lod), w, false);
      crc_.emplace_back(detail::crc_path(dir_, lod), w, false);
    }
    check_sizes();
    for (auto& f : data_) f.map_existing();
    for (auto& f : crc_) f.map_existing();
  }

  void check_sizes() const {
    for (std::uint32_t l = 0; l <= layout_.depth; ++l) {
      const int lod = static_cast<int>(l);
      const std::uint64_t need = layout_.level_bytes(lod, commit_.num_tokens);
      const std::uint64_t need_crc = (need / layout_.chunk_bytes) * 4;
      for (const auto* f : {&data_[l], &crc_[l]}) {
        const std::uint64_t want = f == &data_[l] ? need : need_crc;
        const std::uint64_t have = f->file_size();
        if (have < want)
          throw FormatError(mc::detail::concat("[mc.tree.truncated] ", f->path().string(),
                                               " holds ", have, " bytes but commit ",
                                               commit_.seq, " (", commit_.num_tokens,
                                               " tokens) needs ", want),
                            f->path());
      }
    }
  }

  std::filesystem::path dir_;
  DiskOpenOptions opts_;
  detail::MappedFile header_;
  unsigned char* header_map_ = nullptr;
  io::TreeLayout layout_;
  io::CommitSlot commit_;
  int slot_index_ = 0;
  RecoveryReport report_;
  std::vector<detail::MappedFile> data_;
  std::vector<detail::MappedFile> crc_;
  bool opened_ = false;
};

static_assert(TreeStorage<DiskStorage>);

}  // namespace mc
