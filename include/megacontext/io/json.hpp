// SPDX-License-Identifier: Apache-2.0
// A small strict JSON (RFC 8259) parser and string writer for file headers, used by
// io/safetensors.hpp to read and write the safetensors header. Input is untrusted: every byte is
// checked (UTF-8 validity, escapes incl. surrogate pairs, number grammar), nesting depth and value
// count are bounded, duplicate object keys are refused, and every error carries its byte offset.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "megacontext/detail/utf8.hpp"
#include "megacontext/error.hpp"

namespace mc::io {

/// Why a JSON text was refused.
enum class JsonFault {
  kSyntax,        ///< not JSON: unexpected byte, bad escape, bad number, bad UTF-8, trailing text
  kTooDeep,       ///< arrays/objects nested deeper than JsonLimits::max_depth
  kTooLarge,      ///< more values than JsonLimits::max_values
  kDuplicateKey,  ///< an object holds the same key twice (the key is in the message)
};

/// A JSON text was refused; `offset()` is the byte offset in the parsed text where it went wrong.
class JsonError : public Error {
 public:
  JsonError(JsonFault fault, std::size_t offset, int depth, const std::string& message)
      : Error(Errc::kFormat, message), fault_(fault), offset_(offset), depth_(depth) {}
  /// What kind of problem it is.
  JsonFault fault() const noexcept { return fault_; }
  /// Byte offset, in the parsed text, of the offending byte (for kDuplicateKey: of the key).
  std::size_t offset() const noexcept { return offset_; }
  /// Nesting depth where it went wrong: 0 outside any container, 1 inside the root container, ...
  int depth() const noexcept { return depth_; }

 private:
  JsonFault fault_;
  std::size_t offset_;
  int depth_;
};

/// Bounds that keep a hostile document from exhausting the stack or memory.
struct JsonLimits {
  int max_depth = 64;                          ///< deepest array/object nesting accepted
  std::size_t max_values = std::size_t{1} << 23;  ///< most values (of any kind) in one document
};

struct JsonMember;

/// One parsed JSON value (a DOM node); objects keep their members in document order.
class JsonValue {
 public:
  /// The JSON type of a value.
  enum class Kind : std::uint8_t { kNull, kBool, kNumber, kString, kArray, kObject };

  /// The JSON type of this value.
  Kind kind() const noexcept { return kind_; }
  /// Byte offset of the value's first byte in the parsed text (for error messages).
  std::size_t offset() const noexcept { return offset_; }
  /// True for kObject.
  bool is_object() const noexcept { return kind_ == Kind::kObject; }
  /// True for kArray.
  bool is_array() const noexcept { return kind_ == Kind::kArray; }
  /// True for kString.
  bool is_string() const noexcept { return kind_ == Kind::kString; }
  /// True for kNumber.
  bool is_number() const noexcept { return kind_ == Kind::kNumber; }
  /// The boolean of a kBool (false for any other kind).
  bool as_bool() const noexcept { return kind_ == Kind::kBool && bool_; }
  /// The decoded UTF-8 text of a kString, or the exact lexeme of a kNumber; empty otherwise.
  const std::string& text() const noexcept { return text_; }
  /// The elements of a kArray (empty for other kinds).
  const std::vector<JsonValue>& items() const noexcept { return items_; }
  /// The members of a kObject in document order (empty for other kinds).
  const std::vector<JsonMember>& members() const noexcept { return members_; }
  /// The member of a kObject named `key`, or nullptr.
  inline const JsonValue* find(std::string_view key) const noexcept;

  /// The value of a kNumber written as a non-negative integer (no sign, fraction or exponent)
  /// that fits in uint64; false for anything else (1.0, 1e3, -0, 18446744073709551616).
  bool to_uint64(std::uint64_t& out) const noexcept {
    if (kind_ != Kind::kNumber || text_.empty()) return false;
    std::uint64_t v = 0;
    for (char c : text_) {
      if (c < '0' || c > '9') return false;
      const auto d = static_cast<std::uint64_t>(c - '0');
      if (v > (UINT64_MAX - d) / 10) return false;
      v = v * 10 + d;
    }
    out = v;
    return true;
  }

 private:
  friend class JsonParser;
  Kind kind_ = Kind::kNull;
  bool bool_ = false;
  std::size_t offset_ = 0;
  std::string text_;
  std::vector<JsonValue> items_;
  std::vector<JsonMember> members_;
};

/// One `"key": value` pair of a JSON object.
struct JsonMember {
  std::string key;     ///< decoded UTF-8 key
  std::size_t offset;  ///< byte offset of the key's opening quote
  JsonValue value;     ///< the value
};

inline const JsonValue* JsonValue::find(std::string_view key) const noexcept {
  for (const auto& m : members_)
    if (m.key == key) return &m.value;
  return nullptr;
}

/// Recursive-descent parser over one complete JSON text; use parse_json().
class JsonParser {
 public:
  /// Prepares to parse `text` under `limits`.
  JsonParser(std::string_view text, const JsonLimits& limits) : s_(text), limits_(limits) {}

  /// Parses the whole text as one value surrounded by optional whitespace; throws JsonError.
  JsonValue parse() {
    skip_ws();
    JsonValue v = value(0);
    skip_ws();
    if (pos_ != s_.size()) fail(JsonFault::kSyntax, "unexpected text after the JSON value");
    return v;
  }

 private:
  [[noreturn]] void fail(JsonFault f, const std::string& what) const { fail_at(f, pos_, what); }
  [[noreturn]] void fail_at(JsonFault f, std::size_t at, const std::string& what) const {
    throw JsonError(f, at, depth_, mc::detail::concat(what, " at byte ", at));
  }
  bool at_end() const { return pos_ >= s_.size(); }
  unsigned char peek() const { return static_cast<unsigned char>(s_[pos_]); }
  void skip_ws() {
    while (!at_end() && (peek() == ' ' || peek() == '\t' || peek() == '\n' || peek() == '\r'))
      ++pos_;
  }
  void expect(char c, const char* what) {
    if (at_end() || s_[pos_] != c) fail(JsonFault::kSyntax, what);
    ++pos_;
  }

  JsonValue value(int depth) {
    depth_ = depth;
    if (++count_ > limits_.max_values)
      fail(JsonFault::kTooLarge, mc::detail::concat("more than ", limits_.max_values, " values"));
    if (at_end()) fail(JsonFault::kSyntax, "unexpected end of text, expected a value");
    JsonValue v;
    v.offset_ = pos_;
    const unsigned char c = peek();
    if (c == '{' || c == '[') {
      if (depth >= limits_.max_depth)
        fail(JsonFault::kTooDeep, mc::detail::concat("nesting deeper than ", limits_.max_depth));
      if (c == '{') {
        object(v, depth + 1);
      } else {
        array(v, depth + 1);
      }
    } else if (c == '"') {
      v.kind_ = JsonValue::Kind::kString;
      v.text_ = string();
    } else if (c == '-' || (c >= '0' && c <= '9')) {
      v.kind_ = JsonValue::Kind::kNumber;
      v.text_ = number();
    } else if (literal("true")) {
      v.kind_ = JsonValue::Kind::kBool;
      v.bool_ = true;
    } else if (literal("false")) {
      v.kind_ = JsonValue::Kind::kBool;
    } else if (!literal("null")) {
      fail(JsonFault::kSyntax, "unexpected byte, expected a value");
    }
    return v;
  }

  bool literal(std::string_view word) {
    if (s_.substr(pos_, word.size()) != word) return false;
    pos_ += word.size();
    return true;
  }

  void object(JsonValue& v, int depth) {
    v.kind_ = JsonValue::Kind::kObject;
    depth_ = depth;
    ++pos_;  // '{'
    skip_ws();
    if (!at_end() && peek() == '}') {
      ++pos_;
      return;
    }
    while (true) {
      skip_ws();
      if (at_end() || peek() != '"') fail(JsonFault::kSyntax, "expected a string key");
      const std::size_t key_at = pos_;
      std::string key = string();
      // Linear search keeps the DOM simple; headers with many keys are checked again by their
      // consumer with a map, so this quadratic scan is bounded by the member count of one object.
      for (const auto& m : v.members_)
        if (m.key == key)
          fail_at(JsonFault::kDuplicateKey, key_at, "duplicate key \"" + key + "\"");
      skip_ws();
      expect(':', "expected ':' after an object key");
      skip_ws();
      JsonValue child = value(depth);
      depth_ = depth;
      v.members_.push_back(JsonMember{std::move(key), key_at, std::move(child)});
      skip_ws();
      if (at_end()) fail(JsonFault::kSyntax, "unexpected end of text in an object");
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      expect('}', "expected ',' or '}' in an object");
      return;
    }
  }

  void array(JsonValue& v, int depth) {
    v.kind_ = JsonValue::Kind::kArray;
    depth_ = depth;
    ++pos_;  // '['
    skip_ws();
    if (!at_end() && peek() == ']') {
      ++pos_;
      return;
    }
    while (true) {
      skip_ws();
      v.items_.push_back(value(depth));
      depth_ = depth;
      skip_ws();
      if (at_end()) fail(JsonFault::kSyntax, "unexpected end of text in an array");
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      expect(']', "expected ',' or ']' in an array");
      return;
    }
  }

  // RFC 8259 number grammar: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? ; returns the lexeme.
  std::string number() {
    const std::size_t begin = pos_;
    auto digits = [&] {
      const std::size_t d = pos_;
      while (!at_end() && peek() >= '0' && peek() <= '9') ++pos_;
      if (pos_ == d) fail(JsonFault::kSyntax, "expected a digit in a number");
    };
    if (peek() == '-') ++pos_;
    if (!at_end() && peek() == '0') {
      ++pos_;
      if (!at_end() && peek() >= '0' && peek() <= '9')
        fail(JsonFault::kSyntax, "leading zero in a number");
    } else {
      digits();
    }
    if (!at_end() && peek() == '.') {
      ++pos_;
      digits();
    }
    if (!at_end() && (peek() == 'e' || peek() == 'E')) {
      ++pos_;
      if (!at_end() && (peek() == '+' || peek() == '-')) ++pos_;
      digits();
    }
    return std::string(s_.substr(begin, pos_ - begin));
  }

  unsigned hex4() {
    unsigned u = 0;
    for (int i = 0; i < 4; ++i, ++pos_) {
      if (at_end()) fail(JsonFault::kSyntax, "unexpected end of text in a \\u escape");
      const unsigned char c = peek();
      unsigned d = 0;
      if (c >= '0' && c <= '9') {
        d = c - '0';
      } else if (c >= 'a' && c <= 'f') {
        d = c - 'a' + 10u;
      } else if (c >= 'A' && c <= 'F') {
        d = c - 'A' + 10u;
      } else {
        fail(JsonFault::kSyntax, "bad hex digit in a \\u escape");
      }
      u = u * 16 + d;
    }
    return u;
  }

  static void put_utf8(std::string& out, std::uint32_t cp) { mc::detail::encode_utf8(out, cp); }

  // Copies one well-formed UTF-8 sequence (RFC 3629: no overlongs, no surrogates, <= U+10FFFF).
  void utf8_sequence(std::string& out) {
    const std::size_t begin = pos_;
    const unsigned char c = peek();
    int n = 0;
    std::uint32_t cp = 0, min = 0;
    if (c >= 0xC2 && c <= 0xDF) {
      n = 1, cp = c & 0x1Fu, min = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
      n = 2, cp = c & 0x0Fu, min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
      n = 3, cp = c & 0x07u, min = 0x10000;
    } else {
      fail(JsonFault::kSyntax, "invalid UTF-8 lead byte");
    }
    ++pos_;
    for (int i = 0; i < n; ++i, ++pos_) {
      if (at_end() || (peek() & 0xC0) != 0x80)
        fail_at(JsonFault::kSyntax, begin, "truncated UTF-8 sequence");
      cp = (cp << 6) | (peek() & 0x3Fu);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
      fail_at(JsonFault::kSyntax, begin, "invalid UTF-8 sequence");
    out.append(s_.substr(begin, pos_ - begin));
  }

  std::string string() {
    ++pos_;  // opening quote
    std::string out;
    while (true) {
      if (at_end()) fail(JsonFault::kSyntax, "unterminated string");
      const unsigned char c = peek();
      if (c == '"') {
        ++pos_;
        return out;
      }
      if (c < 0x20) fail(JsonFault::kSyntax, "unescaped control character in a string");
      if (c >= 0x80) {
        utf8_sequence(out);
        continue;
      }
      if (c != '\\') {
        out += static_cast<char>(c);
        ++pos_;
        continue;
      }
      const std::size_t esc_at = pos_;
      ++pos_;
      if (at_end()) fail(JsonFault::kSyntax, "unterminated escape");
      const char e = s_[pos_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          std::uint32_t cp = hex4();
          if (cp >= 0xDC00 && cp <= 0xDFFF)
            fail_at(JsonFault::kSyntax, esc_at, "lone low surrogate in a \\u escape");
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (s_.substr(pos_, 2) != "\\u")
              fail_at(JsonFault::kSyntax, esc_at, "high surrogate not followed by \\u");
            pos_ += 2;
            const std::uint32_t lo = hex4();
            if (lo < 0xDC00 || lo > 0xDFFF)
              fail_at(JsonFault::kSyntax, esc_at, "high surrogate not followed by a low one");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          put_utf8(out, cp);
          break;
        }
        default:
          fail_at(JsonFault::kSyntax, esc_at, "unknown escape");
      }
    }
  }

  std::string_view s_;
  JsonLimits limits_;
  std::size_t pos_ = 0;
  std::size_t count_ = 0;
  int depth_ = 0;  // nesting depth of the container being read, reported in errors
};

/// Parses `text` as one JSON value; throws JsonError (with the byte offset) on anything else.
inline JsonValue parse_json(std::string_view text, const JsonLimits& limits = {}) {
  return JsonParser(text, limits).parse();
}

/// Byte offset of the first byte of `s` that does not start a well-formed UTF-8 sequence
/// (RFC 3629: no overlongs, no surrogates, <= U+10FFFF), or std::string_view::npos when `s` is
/// well-formed.
inline std::size_t first_invalid_utf8(std::string_view s) noexcept {
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    int n = 0;
    std::uint32_t cp = 0, min = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if (c >= 0xC2 && c <= 0xDF) {
      n = 1, cp = c & 0x1Fu, min = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
      n = 2, cp = c & 0x0Fu, min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
      n = 3, cp = c & 0x07u, min = 0x10000;
    } else {
      return i;
    }
    if (s.size() - i <= static_cast<std::size_t>(n)) return i;
    for (int k = 1; k <= n; ++k) {
      const auto b = static_cast<unsigned char>(s[i + static_cast<std::size_t>(k)]);
      if ((b & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (b & 0x3Fu);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
    i += static_cast<std::size_t>(n) + 1;
  }
  return std::string_view::npos;
}

/// True when `s` is well-formed UTF-8 (RFC 3629), i.e. parse_json would accept it in a string.
inline bool is_valid_utf8(std::string_view s) noexcept {
  return first_invalid_utf8(s) == std::string_view::npos;
}

/// Appends `s` (valid UTF-8) to `out` as a JSON string literal: quotes, `\"`, `\\`, and
/// control characters escaped; other characters, non-ASCII included, written as they are.
inline void append_json_string(std::string& out, std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  out += '"';
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += ch;
    } else if (c < 0x20) {
      out += "\\u00";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += ch;
    }
  }
  out += '"';
}

}  // namespace mc::io
