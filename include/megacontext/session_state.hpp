// SPDX-License-Identifier: Apache-2.0
// What a Session needs besides its tree to continue exactly where it stopped: the working
// context's entries (with the step each was made at, which drives cooldowns), the allocator's
// step counter, the last scores, the refocus phase and the sampler's generator state. Stored as a
// small safetensors file beside the tree (written atomically: temp file, fsync, rename) with a
// CRC-32C of its contents in the metadata, so a torn or edited file is refused, never half-read.
// Format details: docs/formats.md ("Session state").
#pragma once

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "megacontext/config.hpp"
#include "megacontext/detail/crc32c.hpp"
#include "megacontext/error.hpp"
#include "megacontext/io/safetensors.hpp"
#include "megacontext/working_context.hpp"

namespace mc {

/// One document of a session's history: tokens [begin, end) under a stable id.
struct DocumentSpan {
  std::int64_t id = 0;     ///< returned by Session::add_document, never reused
  std::int64_t begin = 0;  ///< first token
  std::int64_t end = 0;    ///< one past the last token
  friend constexpr bool operator==(const DocumentSpan&, const DocumentSpan&) = default;
};

/// The resumable state of a Session (everything except the tree, the model and the networks).
struct SessionState {
  static constexpr std::int32_t kFormatVersion = 1;  ///< "format" metadata value written

  std::int32_t k = 0;                  ///< Config K it was written with
  std::int32_t depth = 0;              ///< Config Depth it was written with
  std::int64_t tokens = 0;             ///< history tokens the context covered
  std::int64_t window_begin = 0;       ///< WorkingContext::window_begin()
  std::int32_t step = 0;               ///< FocusAllocator::step_number()
  std::int64_t since_refocus = 0;      ///< tokens appended since the last refocus
  std::vector<WcEntry> entries;        ///< the working context, in order
  std::vector<float> scores;           ///< the last score of each entry
  std::string sampler;                 ///< Sampler::state()
  std::vector<DocumentSpan> documents; ///< documents in history order
  std::int64_t next_document_id = 0;   ///< id the next add_document returns

  /// Writes the state to `path` atomically. Throws IoError when the file cannot be written.
  void save(const std::filesystem::path& path) const {
    MC_EXPECTS(scores.size() == entries.size(), Errc::kInvalidArgument,
               "[mc.session.bad_state] ", scores.size(), " scores for ", entries.size(),
               " entries");
    const auto n = static_cast<std::int64_t>(entries.size());
    std::vector<std::int64_t> index(entries.size());
    std::vector<std::int32_t> lod(entries.size()), changed(entries.size());
    for (std::size_t i = 0; i < entries.size(); ++i) {
      index[i] = entries[i].index;
      lod[i] = entries[i].lod;
      changed[i] = entries[i].changed_at;
    }
    io::SafetensorsWriter w;
    w.add_raw("entries.index", io::TensorDtype::kI64, {n}, std::as_bytes(std::span(index)));
    w.add_raw("entries.lod", io::TensorDtype::kI32, {n}, std::as_bytes(std::span(lod)));
    w.add_raw("entries.changed_at", io::TensorDtype::kI32, {n}, std::as_bytes(std::span(changed)));
    w.add_raw("scores", io::TensorDtype::kF32, {n}, std::as_bytes(std::span(scores)));
    std::vector<std::int64_t> docs;
    for (const DocumentSpan& d : documents) docs.insert(docs.end(), {d.id, d.begin, d.end});
    w.add_raw("documents", io::TensorDtype::kI64, {static_cast<std::int64_t>(docs.size())},
              std::as_bytes(std::span(docs)));
    w.set_metadata("next_document_id", std::to_string(next_document_id));
    w.set_metadata("format", std::to_string(kFormatVersion));
    w.set_metadata("k", std::to_string(k));
    w.set_metadata("depth", std::to_string(depth));
    w.set_metadata("tokens", std::to_string(tokens));
    w.set_metadata("window_begin", std::to_string(window_begin));
    w.set_metadata("step", std::to_string(step));
    w.set_metadata("since_refocus", std::to_string(since_refocus));
    w.set_metadata("sampler", sampler);
    w.set_metadata("crc32c", std::to_string(checksum()));
    w.write(path);
  }

  /// Reads a state written by save(). Throws FormatError ([mc.session.bad_state]) for a file
  /// that is not one, or whose checksum does not match its contents, and IoError when it cannot
  /// be read.
  static SessionState load(const std::filesystem::path& path) {
    const auto file = io::SafetensorsFile::open(path);
    const auto& v = file.view();
    const auto& meta = v.metadata();
    auto text = [&](const char* key) -> const std::string& {
      const auto it = meta.find(key);
      if (it == meta.end())
        throw FormatError(detail::concat("[mc.session.bad_state] ", path.string(),
                                 " has no metadata entry \"", key, "\""),
                          path.string());
      return it->second;
    };
    auto integer = [&](const char* key) -> std::int64_t {
      const std::string& s = text(key);
      std::size_t used = 0;
      std::int64_t x = 0;
      try {
        x = std::stoll(s, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used == 0 || used != s.size())
        throw FormatError(detail::concat("[mc.session.bad_state] ", path.string(), ": metadata \"", key,
                                 "\" = \"", s, "\" is not an integer"),
                          path.string());
      return x;
    };
    if (integer("format") != kFormatVersion)
      throw FormatError(detail::concat("[mc.session.bad_state] ", path.string(), " has format ",
                               text("format"), "; this build reads ", kFormatVersion),
                        path.string());
    SessionState s;
    s.k = static_cast<std::int32_t>(integer("k"));
    s.depth = static_cast<std::int32_t>(integer("depth"));
    s.tokens = integer("tokens");
    s.window_begin = integer("window_begin");
    s.step = static_cast<std::int32_t>(integer("step"));
    s.since_refocus = integer("since_refocus");
    s.sampler = text("sampler");
    s.next_document_id = integer("next_document_id");
    const auto docs = read<std::int64_t>(v, "documents", io::TensorDtype::kI64, path);
    if (docs.size() % 3 != 0)
      throw FormatError(detail::concat("[mc.session.bad_state] ", path.string(),
                                       ": \"documents\" holds ", docs.size(),
                                       " values, not (id, begin, end) triples"),
                        path.string());
    for (std::size_t i = 0; i < docs.size(); i += 3)
      s.documents.push_back({docs[i], docs[i + 1], docs[i + 2]});
    const auto index = read<std::int64_t>(v, "entries.index", io::TensorDtype::kI64, path);
    const auto lod = read<std::int32_t>(v, "entries.lod", io::TensorDtype::kI32, path);
    const auto changed = read<std::int32_t>(v, "entries.changed_at", io::TensorDtype::kI32, path);
    s.scores = read<float>(v, "scores", io::TensorDtype::kF32, path);
    if (lod.size() != index.size() || changed.size() != index.size() ||
        s.scores.size() != index.size())
      throw FormatError(detail::concat("[mc.session.bad_state] ", path.string(),
                               ": entry tensors have different lengths"),
                        path.string());
    s.entries.resize(index.size());
    for (std::size_t i = 0; i < index.size(); ++i) s.entries[i] = {index[i], lod[i], changed[i]};
    if (std::to_string(s.checksum()) != text("crc32c"))
      throw FormatError(detail::concat("[mc.session.bad_state] ", path.string(),
                               ": checksum mismatch (the file was damaged or edited)"),
                        path.string());
    return s;
  }

  /// CRC-32C over every field (the value stored in the "crc32c" metadata entry).
  std::uint32_t checksum() const {
    std::uint32_t c = 0;
    auto add = [&c](const void* p, std::size_t n) { c = detail::crc32c_extend(c, p, n); };
    const std::int64_t head[] = {k, depth, tokens, window_begin, step, since_refocus};
    add(head, sizeof head);
    for (const WcEntry& e : entries) {
      add(&e.index, sizeof e.index);
      add(&e.lod, sizeof e.lod);
      add(&e.changed_at, sizeof e.changed_at);
    }
    add(scores.data(), scores.size() * sizeof(float));
    add(sampler.data(), sampler.size());
    for (const DocumentSpan& d : documents) {
      const std::int64_t x[] = {d.id, d.begin, d.end};
      add(x, sizeof x);
    }
    add(&next_document_id, sizeof next_document_id);
    return c;
  }

 private:
  template <class T>
  static std::vector<T> read(const io::SafetensorsView& v, const char* name, io::TensorDtype dtype,
                             const std::filesystem::path& path) {
    if (!v.contains(name) || v.info(name).dtype != dtype || v.info(name).shape.size() != 1)
      throw FormatError(detail::concat("[mc.session.bad_state] ", path.string(), " lacks a 1-D ",
                               io::to_string(dtype), " tensor \"", name, "\""),
                        path.string());
    const auto raw = v.raw(name);
    std::vector<T> out(raw.size() / sizeof(T));
    if (!out.empty()) std::memcpy(out.data(), raw.data(), out.size() * sizeof(T));
    return out;
  }
};

}  // namespace mc
