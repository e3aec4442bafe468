// SPDX-License-Identifier: Apache-2.0
// Text cleaning for the training corpus (docs/data.md): pure functions that turn HTML, roff man
// pages and POD into plain UTF-8 prose, the final whitespace normaliser every document goes
// through, and the document hash that drives de-duplication and the train/validation split.
// No I/O here; examples/tools/mc_corpus.cpp walks the installed packages and writes the files.
#pragma once

#include <algorithm>
#include <cctype>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "megacontext/detail/utf8.hpp"

namespace mc::corpus {

/// Bytes written after every document in train.txt / valid.txt: "\n", ASCII RS (0x1E), "\n".
/// Cleaned documents never contain 0x1E (normalize_text removes control characters).
inline constexpr std::string_view kDocumentSeparator = "\n\x1e\n";

/// 64-bit FNV-1a hash of the bytes; stable across platforms and releases.
constexpr std::uint64_t fnv1a64(std::string_view s) noexcept {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (const char c : s) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ull;
  }
  return h;
}

/// True if the document with this hash belongs to the validation split (hash % modulus == 0).
constexpr bool is_validation(std::uint64_t hash, std::uint64_t modulus = 20) noexcept {
  return modulus != 0 && hash % modulus == 0;
}

namespace detail {

inline void append_utf8(std::string& out, std::uint32_t cp) {
  // NUL, surrogates and values past Unicode become U+FFFD (a document never contains NUL).
  if (cp == 0 || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) cp = 0xFFFD;
  mc::detail::encode_utf8(out, cp);
}

/// Length of the valid UTF-8 sequence starting at s[i], or 0 if it is not valid.
inline std::size_t utf8_length(std::string_view s, std::size_t i) noexcept {
  const auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[i + k]); };
  const unsigned char c = b(0);
  if (c < 0x80) return 1;
  std::size_t n = 0;
  std::uint32_t cp = 0;
  if (c >= 0xC2 && c <= 0xDF) n = 2, cp = c & 0x1Fu;
  else if (c >= 0xE0 && c <= 0xEF) n = 3, cp = c & 0x0Fu;
  else if (c >= 0xF0 && c <= 0xF4) n = 4, cp = c & 0x07u;
  else return 0;
  if (i + n > s.size()) return 0;
  for (std::size_t k = 1; k < n; ++k) {
    if ((b(k) & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (b(k) & 0x3Fu);
  }
  if ((n == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) || (n == 4 && cp < 0x10000) ||
      cp > 0x10FFFF)
    return 0;
  return n;
}

inline bool is_space(char c) noexcept {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

inline char lower(char c) noexcept {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c;
}

inline bool iequals_prefix(std::string_view s, std::size_t at, std::string_view prefix) noexcept {
  if (at + prefix.size() > s.size()) return false;
  for (std::size_t k = 0; k < prefix.size(); ++k)
    if (lower(s[at + k]) != prefix[k]) return false;
  return true;
}

/// Accumulates text with collapsed whitespace and pending line / paragraph breaks.
class TextBuilder {
 public:
  /// Appends text whose whitespace runs collapse to one space (none at the start of a line).
  void text(std::string_view s) {
    for (const char c : s) {
      if (is_space(c)) {
        space_ = true;
      } else {
        flush();
        out_ += c;
      }
    }
  }
  /// Appends text verbatim (newlines kept), after any pending break.
  void verbatim(std::string_view s) {
    if (s.empty()) return;
    space_ = false;
    flush();
    out_ += s;
  }
  /// Requests a line break (1) or a paragraph break (2) before the next text.
  void brk(int level) {
    brk_ = std::max(brk_, level);
    space_ = false;
  }
  /// The accumulated text (unnormalised).
  std::string take() { return std::move(out_); }

 private:
  void flush() {
    if (brk_ > 0) {
      while (!out_.empty() && (out_.back() == ' ' || out_.back() == '\t')) out_.pop_back();
      if (!out_.empty()) out_.append(static_cast<std::size_t>(brk_), '\n');
    } else if (space_ && !out_.empty() && out_.back() != '\n') {
      out_ += ' ';
    }
    brk_ = 0;
    space_ = false;
  }
  std::string out_;
  int brk_ = 0;
  bool space_ = false;
};

struct NamedChar {
  std::string_view name;
  std::uint32_t cp;
};

/// HTML named entities decoded by decode_entities (the others are kept as written).
inline constexpr NamedChar kHtmlEntities[] = {
    {"amp", '&'},       {"lt", '<'},         {"gt", '>'},        {"quot", '"'},
    {"apos", '\''},     {"nbsp", ' '},       {"copy", 0xA9},     {"reg", 0xAE},
    {"trade", 0x2122},  {"mdash", 0x2014},   {"ndash", 0x2013},  {"hellip", 0x2026},
    {"lsquo", 0x2018},  {"rsquo", 0x2019},   {"ldquo", 0x201C},  {"rdquo", 0x201D},
    {"laquo", 0xAB},    {"raquo", 0xBB},     {"para", 0xB6},     {"sect", 0xA7},
    {"middot", 0xB7},   {"bull", 0x2022},    {"times", 0xD7},    {"divide", 0xF7},
    {"deg", 0xB0},      {"plusmn", 0xB1},    {"larr", 0x2190},   {"rarr", 0x2192},
    {"uarr", 0x2191},   {"darr", 0x2193},    {"harr", 0x2194},   {"rArr", 0x21D2},
    {"lArr", 0x21D0},   {"hArr", 0x21D4},    {"le", 0x2264},     {"ge", 0x2265},
    {"ne", 0x2260},     {"minus", 0x2212},   {"euro", 0x20AC},   {"pound", 0xA3},
    {"cent", 0xA2},     {"yen", 0xA5},       {"shy", 0xAD},      {"zwsp", 0x200B},
    {"dagger", 0x2020}, {"Dagger", 0x2021},  {"prime", 0x2032},  {"micro", 0xB5},
    {"eacute", 0xE9},   {"egrave", 0xE8},    {"aacute", 0xE1},   {"agrave", 0xE0},
    {"uuml", 0xFC},     {"ouml", 0xF6},      {"auml", 0xE4},     {"szlig", 0xDF},
    {"ccedil", 0xE7},   {"ntilde", 0xF1},    {"iexcl", 0xA1},    {"iquest", 0xBF},
    {"thinsp", 0x2009}, {"ensp", 0x2002},    {"emsp", 0x2003},   {"sup2", 0xB2},
};

/// roff special characters \(xx and \[xx] decoded by roff_to_text (unknown ones are dropped).
inline constexpr NamedChar kRoffChars[] = {
    {"em", 0x2014}, {"en", 0x2013}, {"hy", '-'},    {"bu", 0x2022}, {"co", 0xA9},
    {"rg", 0xAE},   {"tm", 0x2122}, {"lq", 0x201C}, {"rq", 0x201D}, {"oq", 0x2018},
    {"cq", 0x2019}, {"aq", '\''},   {"dq", '"'},    {"ga", '`'},    {"ti", '~'},
    {"ha", '^'},    {"mi", '-'},    {"pl", '+'},    {"mu", 0xD7},   {">=", 0x2265},
    {"<=", 0x2264}, {"!=", 0x2260}, {"->", 0x2192}, {"<-", 0x2190}, {"de", 0xB0},
    {"+-", 0xB1},   {"sc", 0xA7},   {"ps", 0xB6},   {"dg", 0x2020}, {"rs", '\\'},
    {"bv", '|'},    {"ba", '|'},    {"sl", '/'},    {"lh", 0x261C}, {"rh", 0x261E},
    {"Fo", 0xAB},   {"Fc", 0xBB},   {"fo", 0x2039}, {"fc", 0x203A}, {"at", '@'},
    {"sh", '#'},    {"Do", '$'},    {"ct", 0xA2},   {"eu", 0x20AC}, {"Po", 0xA3},
    {"ss", 0xDF},   {"'e", 0xE9},   {"`e", 0xE8},   {"'a", 0xE1},   {":u", 0xFC},
    {":o", 0xF6},   {":a", 0xE4},   {"~n", 0xF1},   {",c", 0xE7},   {"lB", '['},
    {"rB", ']'},    {"lC", '{'},    {"rC", '}'},    {"la", 0x27E8}, {"ra", 0x27E9},
    {"or", '|'},    {"no", 0xAC},   {"sq", 0x25A1}, {"es", 0x2205}, {"if", 0x221E},
};

template <std::size_t N>
bool lookup(const NamedChar (&table)[N], std::string_view name, std::uint32_t& cp) {
  for (const auto& e : table)
    if (e.name == name) {
      cp = e.cp;
      return true;
    }
  return false;
}

inline bool parse_number(std::string_view digits, int base, std::uint32_t& cp) {
  if (digits.empty() || digits.size() > 8) return false;
  std::uint32_t v = 0;
  for (const char c : digits) {
    std::uint32_t d = 0;
    if (c >= '0' && c <= '9') d = static_cast<std::uint32_t>(c - '0');
    else if (base == 16 && lower(c) >= 'a' && lower(c) <= 'f')
      d = static_cast<std::uint32_t>(lower(c) - 'a' + 10);
    else return false;
    v = v * static_cast<std::uint32_t>(base) + d;
  }
  cp = v;
  return true;
}

}  // namespace detail

/// Returns `bytes` unchanged if it is valid UTF-8, else re-encodes it from ISO-8859-1 (every
/// byte becomes the code point of the same value), so old Latin-1 man pages stay readable.
inline std::string to_utf8(std::string_view bytes) {
  for (std::size_t i = 0; i < bytes.size();) {
    const std::size_t n = detail::utf8_length(bytes, i);
    if (n == 0) {
      std::string out;
      out.reserve(bytes.size() + bytes.size() / 8);
      for (const char c : bytes) detail::append_utf8(out, static_cast<unsigned char>(c));
      return out;
    }
    i += n;
  }
  return std::string(bytes);
}

/// Final normaliser of every document: CRLF and CR become LF; control characters other than
/// LF and TAB are removed; TAB becomes a space; trailing spaces of each line are removed; more
/// than one blank line in a row becomes one; leading and trailing blank lines are removed. The
/// result has no trailing newline. Invalid UTF-8 bytes become U+FFFD.
inline std::string normalize_text(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  int newlines = 0;  // newlines pending since the last non-blank character
  bool started = false;
  std::size_t spaces = 0;  // spaces pending on the current line
  for (std::size_t i = 0; i < in.size();) {
    const char c = in[i];
    const std::size_t n = detail::utf8_length(in, i);
    if (c == '\r' || c == '\n') {
      if (c == '\r' && i + 1 < in.size() && in[i + 1] == '\n') ++i;
      ++i;
      ++newlines;
      spaces = 0;
      continue;
    }
    if (c == ' ' || c == '\t') {
      ++spaces;
      ++i;
      continue;
    }
    if (n == 1 && (static_cast<unsigned char>(c) < 0x20 || c == 0x7F)) {
      ++i;
      continue;
    }
    if (started && newlines > 0) out.append(static_cast<std::size_t>(std::min(newlines, 2)), '\n');
    newlines = 0;
    out.append(spaces, ' ');
    spaces = 0;
    started = true;
    if (n == 0) {
      detail::append_utf8(out, 0xFFFD);
      ++i;
    } else {
      out.append(in.substr(i, n));
      i += n;
    }
  }
  return out;
}

/// Decodes HTML character references: the named ones in detail::kHtmlEntities (`&nbsp;` becomes
/// a plain space), `&#NNN;` and `&#xHH;` (0, surrogates and values past U+10FFFF become
/// U+FFFD). Unknown or unterminated references are kept as written.
inline std::string decode_entities(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '&') {
      out += s[i];
      continue;
    }
    const std::size_t semi = s.find(';', i + 1);
    if (semi == std::string_view::npos || semi - i > 12) {
      out += '&';
      continue;
    }
    const std::string_view name = s.substr(i + 1, semi - i - 1);
    std::uint32_t cp = 0;
    bool ok = false;
    if (name.size() >= 2 && name[0] == '#') {
      if (detail::lower(name[1]) == 'x') ok = detail::parse_number(name.substr(2), 16, cp);
      else ok = detail::parse_number(name.substr(1), 10, cp);
    } else {
      ok = detail::lookup(detail::kHtmlEntities, name, cp);
    }
    if (!ok) {
      out += '&';
      continue;
    }
    detail::append_utf8(out, cp);
    i = semi;
  }
  return out;
}

namespace detail {

/// One parsed HTML tag.
struct Tag {
  std::string name;   ///< lower-case element name; empty for comments, doctypes and the like
  bool closing = false;
  std::string attrs;  ///< the raw attribute text
  std::size_t end = 0;  ///< index just past the '>'
};

inline Tag parse_tag(std::string_view s, std::size_t at) {
  Tag t;
  if (s.compare(at, 4, "<!--") == 0) {
    const std::size_t e = s.find("-->", at + 4);
    t.end = e == std::string_view::npos ? s.size() : e + 3;
    return t;
  }
  std::size_t i = at + 1;
  if (i < s.size() && (s[i] == '!' || s[i] == '?')) {
    const std::size_t e = s.find('>', i);
    t.end = e == std::string_view::npos ? s.size() : e + 1;
    return t;
  }
  if (i < s.size() && s[i] == '/') t.closing = true, ++i;
  while (i < s.size() && (std::isalnum(static_cast<unsigned char>(s[i])) != 0))
    t.name += lower(s[i++]);
  const std::size_t attr_begin = i;
  char quote = 0;
  for (; i < s.size(); ++i) {
    if (quote != 0) {
      if (s[i] == quote) quote = 0;
    } else if (s[i] == '"' || s[i] == '\'') {
      quote = s[i];
    } else if (s[i] == '>') {
      break;
    }
  }
  t.attrs = std::string(s.substr(attr_begin, i - attr_begin));
  t.end = i < s.size() ? i + 1 : s.size();
  return t;
}

/// Value of attribute `name` in raw attribute text (lower-cased names), or empty.
inline std::string attribute(std::string_view attrs, std::string_view name) {
  for (std::size_t i = 0; i < attrs.size();) {
    while (i < attrs.size() && (is_space(attrs[i]) || attrs[i] == '/')) ++i;
    std::string key;
    while (i < attrs.size() && !is_space(attrs[i]) && attrs[i] != '=' && attrs[i] != '>')
      key += lower(attrs[i++]);
    while (i < attrs.size() && is_space(attrs[i])) ++i;
    std::string value;
    if (i < attrs.size() && attrs[i] == '=') {
      ++i;
      while (i < attrs.size() && is_space(attrs[i])) ++i;
      if (i < attrs.size() && (attrs[i] == '"' || attrs[i] == '\'')) {
        const char q = attrs[i++];
        const std::size_t e = attrs.find(q, i);
        const std::size_t stop = e == std::string_view::npos ? attrs.size() : e;
        value = std::string(attrs.substr(i, stop - i));
        i = stop + 1;
      } else {
        while (i < attrs.size() && !is_space(attrs[i])) value += attrs[i++];
      }
    }
    if (key == name) return value;
    if (key.empty()) ++i;
  }
  return {};
}

inline bool has_token(std::string_view list, std::string_view token) {
  std::size_t i = 0;
  while (i < list.size()) {
    while (i < list.size() && is_space(list[i])) ++i;
    std::size_t j = i;
    while (j < list.size() && !is_space(list[j])) ++j;
    if (list.substr(i, j - i) == token) return true;
    i = j;
  }
  return false;
}

/// Elements dropped with everything inside them.
inline bool is_dropped_element(const Tag& t) {
  static constexpr std::string_view kTags[] = {"script", "style", "head", "nav", "noscript",
                                               "template", "svg"};
  for (const auto n : kTags)
    if (t.name == n) return true;
  static constexpr std::string_view kClasses[] = {"navheader", "navfooter",     "related",
                                                  "footer",    "sphinxsidebar", "headerlink",
                                                  "toc",       "mobile-nav"};
  const std::string cls = attribute(t.attrs, "class");
  const std::string id = attribute(t.attrs, "id");
  for (const auto c : kClasses)
    if (has_token(cls, c) || id == c) return true;
  return attribute(t.attrs, "role") == "navigation";
}

inline int break_level(std::string_view name) {
  static constexpr std::string_view kParagraph[] = {
      "p",     "div",     "h1",     "h2",    "h3",   "h4",    "h5",       "h6",
      "pre",   "table",   "ul",     "ol",    "dl",   "hr",    "section",  "article",
      "title", "header",  "footer", "main",  "aside", "figure", "blockquote", "address",
      "form",  "fieldset", "body",  "html"};
  static constexpr std::string_view kLine[] = {"br", "li", "tr", "dt", "dd", "caption",
                                               "figcaption", "option"};
  for (const auto n : kParagraph)
    if (name == n) return 2;
  for (const auto n : kLine)
    if (name == n) return 1;
  if (name == "td" || name == "th") return -1;  // a space between cells
  return 0;
}

inline bool is_void_element(std::string_view name) {
  static constexpr std::string_view kVoid[] = {"br", "hr", "img", "meta", "link", "input",
                                               "area", "base", "col", "wbr", "source", "embed"};
  for (const auto n : kVoid)
    if (name == n) return true;
  return false;
}

/// Index just past the element opened by tag `open` (matching close tag by depth), or s.size().
inline std::size_t element_end(std::string_view s, const Tag& open, std::size_t* content_end) {
  int depth = 1;
  for (std::size_t i = open.end; i < s.size();) {
    const std::size_t lt = s.find('<', i);
    if (lt == std::string_view::npos) break;
    const Tag t = parse_tag(s, lt);
    if (t.name == open.name) depth += t.closing ? -1 : (t.attrs.ends_with('/') ? 0 : 1);
    if (depth == 0) {
      if (content_end != nullptr) *content_end = lt;
      return t.end;
    }
    i = std::max(t.end, lt + 1);
  }
  if (content_end != nullptr) *content_end = s.size();
  return s.size();
}

}  // namespace detail

/// HTML to plain text. If an element has role="main" (Sphinx), only its content is kept.
/// Dropped with their content: script, style, head, nav, noscript, template, svg, comments,
/// and elements whose class (or id) is navheader, navfooter, related, footer, sphinxsidebar,
/// headerlink, toc or mobile-nav, or whose role is navigation. Block elements (p, div, h1-h6,
/// pre, table, lists, ...) end a paragraph (blank line); br, li, tr, dt, dd end a line; td
/// and th add a space; other tags vanish. Whitespace collapses to one space except inside
/// <pre>, which is kept verbatim. Entities are decoded (decode_entities); then normalize_text.
inline std::string html_to_text(std::string_view html) {
  using namespace detail;
  // Restrict to the main content when the page marks it.
  for (std::size_t i = html.find('<'); i != std::string_view::npos; i = html.find('<', i + 1)) {
    const Tag t = parse_tag(html, i);
    if (!t.name.empty() && !t.closing && attribute(t.attrs, "role") == "main") {
      std::size_t content_end = html.size();
      element_end(html, t, &content_end);
      html = html.substr(t.end, content_end - t.end);
      break;
    }
  }
  TextBuilder b;
  int pre = 0;
  for (std::size_t i = 0; i < html.size();) {
    if (html[i] != '<') {
      std::size_t lt = html.find('<', i);
      if (lt == std::string_view::npos) lt = html.size();
      const std::string text = decode_entities(html.substr(i, lt - i));
      if (pre > 0) b.verbatim(text);
      else b.text(text);
      i = lt;
      continue;
    }
    const char next = i + 1 < html.size() ? html[i + 1] : ' ';
    if (std::isalpha(static_cast<unsigned char>(next)) == 0 && next != '/' && next != '!' &&
        next != '?') {  // a stray '<' in text
      b.text("<");
      ++i;
      continue;
    }
    const Tag t = parse_tag(html, i);
    if (t.name.empty()) {  // comment, doctype, processing instruction
      i = std::max(t.end, i + 1);
      continue;
    }
    if (!t.closing && is_dropped_element(t)) {
      const bool empty = is_void_element(t.name) || t.attrs.ends_with('/');
      i = empty ? t.end : element_end(html, t, nullptr);
      if (t.name == "script" || t.name == "style") {  // raw text: the first close tag ends it
        const std::string close = "</" + t.name;
        std::size_t e = t.end;
        while (e < html.size() && !iequals_prefix(html, e, close)) ++e;
        i = e < html.size() ? parse_tag(html, e).end : html.size();
      }
      continue;
    }
    const int level = break_level(t.name);
    if (t.name == "pre") {
      pre = std::max(0, pre + (t.closing ? -1 : 1));
    }
    if (level > 0) b.brk(level);
    else if (level < 0) b.text(" ");
    i = t.end;
  }
  return normalize_text(b.take());
}

namespace detail {

/// Splits the arguments of a roff macro line: blanks separate, "double quotes" group, and ""
/// inside quotes is a literal quote.
inline std::vector<std::string> roff_args(std::string_view s) {
  std::vector<std::string> args;
  std::size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t')) ++i;
    if (i >= s.size()) break;
    std::string a;
    if (s[i] == '"') {
      ++i;
      while (i < s.size()) {
        if (s[i] == '"') {
          if (i + 1 < s.size() && s[i + 1] == '"') {
            a += '"';
            i += 2;
            continue;
          }
          ++i;
          break;
        }
        a += s[i++];
      }
    } else {
      while (i < s.size() && s[i] != ' ' && s[i] != '\t') a += s[i++];
    }
    args.push_back(std::move(a));
  }
  return args;
}

/// Skips a roff escape argument in the forms x, (xx, [name] or 'delimited'; returns the name.
inline std::string_view roff_escape_arg(std::string_view s, std::size_t& i) {
  if (i >= s.size()) return {};
  if (s[i] == '(') {
    const std::size_t b = i + 1;
    i = std::min(s.size(), i + 3);
    return s.substr(b, i - b);
  }
  if (s[i] == '[') {
    const std::size_t e = s.find(']', i);
    const std::size_t b = i + 1;
    i = e == std::string_view::npos ? s.size() : e + 1;
    return s.substr(b, (e == std::string_view::npos ? s.size() : e) - b);
  }
  if (s[i] == '\'') {
    const std::size_t e = s.find('\'', i + 1);
    const std::size_t b = i + 1;
    i = e == std::string_view::npos ? s.size() : e + 1;
    return s.substr(b, (e == std::string_view::npos ? s.size() : e) - b);
  }
  return s.substr(i++, 1);
}

/// Replaces the roff escapes of one line by the characters they stand for (see roff_to_text).
inline std::string roff_unescape(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i < s.size();) {
    if (s[i] != '\\') {
      out += s[i++];
      continue;
    }
    if (++i >= s.size()) break;
    const char c = s[i++];
    switch (c) {
      case '"': return out;  // comment to end of line
      case '\\': case 'e': case 'E': out += '\\'; break;
      case '-': out += '-'; break;
      case ' ': case '~': case '0': out += ' '; break;
      case '&': case '|': case '^': case ',': case '/': case ':': case '%': case 'c': case '!':
      case ')': case '{': case '}': break;
      case 't': out += ' '; break;
      case '.': out += '.'; break;
      case '\'': out += '\''; break;
      case '`': out += '`'; break;
      case 'f': case 'F': case 'n': case 'g': case 'k': case 'm': case 'M': case 'Y': case 'V':
        if (i < s.size() && (c == 'n') && (s[i] == '+' || s[i] == '-')) ++i;
        roff_escape_arg(s, i);
        break;
      case 's':  // \s+N, \s-N, \sN, \s(NN, \s[N], \s'N'
        if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
        if (i < s.size() && (s[i] == '(' || s[i] == '[' || s[i] == '\'')) {
          roff_escape_arg(s, i);
        } else {
          while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i])) != 0) ++i;
        }
        break;
      case '*': {  // strings: pod2man's quotes become '"', others vanish
        const std::string_view name = roff_escape_arg(s, i);
        if (name == "L\"" || name == "R\"" || name == "C`" || name == "C'") out += '"';
        else if (name == "Aq") out += '\'';
        break;
      }
      case '(': case '[': {
        --i;
        const std::string_view name = roff_escape_arg(s, i);
        std::uint32_t cp = 0;
        if (lookup(kRoffChars, name, cp)) append_utf8(out, cp);
        else if (name.size() == 5 && name[0] == 'u' && parse_number(name.substr(1), 16, cp))
          append_utf8(out, cp);
        break;
      }
      case 'h': case 'v': case 'w': case 'l': case 'L': case 'o': case 'D': case 'X': case 'Z':
      case 'b': case 'x': case 'A': case 'B': case 'C': case 'N': case 'R': case 'S':
        roff_escape_arg(s, i);
        break;
      default: out += c; break;
    }
  }
  return out;
}

}  // namespace detail

/// A roff man page (man(7) macros, as written by hand or by pod2man) to plain text.
/// Requests: comments (.\" and \"), .TH, .de/.ig blocks up to "..", and every request not
/// listed here are dropped, as are .if/.ie/.el lines and their \{ ... \} blocks. .SH/.SS give
/// a paragraph with their text; .B .I .SM .SB join their arguments with spaces; .BR .BI .IB
/// .IR .RB .RI join them without; .PP .LP .P .sp .TP .IP .HP .RS .RE end a paragraph (.IP
/// keeps its tag); .br ends a line; .nf/.EX ... .fi/.EE lines are kept as written; tables
/// (.TS/.TE) keep their data lines, tabs as spaces. Other text lines are filled (joined with
/// spaces); a blank line ends a paragraph; a trailing backslash joins two lines. Escapes: fonts
/// (\f), sizes (\s), motions and the like vanish; \- \e \(xx \[xx] \[uXXXX] and pod2man's quote
/// strings become characters; \& \| \^ \c vanish. Then normalize_text.
inline std::string roff_to_text(std::string_view src) {
  using namespace detail;
  // Join continuation lines (a trailing backslash that is not itself escaped).
  std::vector<std::string> lines;
  {
    std::string cur;
    std::size_t i = 0;
    while (i <= src.size()) {
      const std::size_t e = std::min(src.find('\n', i), src.size());
      std::string_view line = src.substr(i, e - i);
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      std::size_t bs = 0;
      while (bs < line.size() && line[line.size() - 1 - bs] == '\\') ++bs;
      if (bs % 2 == 1) {
        cur.append(line.substr(0, line.size() - 1));
      } else {
        cur.append(line);
        lines.push_back(std::move(cur));
        cur.clear();
      }
      if (e == src.size()) break;
      i = e + 1;
    }
    if (!cur.empty()) lines.push_back(std::move(cur));
  }
  TextBuilder b;
  bool fill = true;
  bool table = false, table_format = false;
  int skip_braces = 0;
  bool skip_def = false;
  bool tag_line = false;  // the next text line is a .TP tag: it ends with a line break
  const auto padded = [&](const std::string& t) {  // text with a word break either side
    b.text(" ");
    b.text(t);
    b.text(" ");
  };
  const auto end_tag = [&] {
    if (tag_line) b.brk(1);
    tag_line = false;
  };
  for (const std::string& raw : lines) {
    std::string_view line = raw;
    if (skip_def) {
      if (line.starts_with("..")) skip_def = false;
      continue;
    }
    if (skip_braces > 0) {
      for (std::size_t k = 0; k + 1 < line.size(); ++k) {
        if (line[k] == '\\' && line[k + 1] == '{') ++skip_braces;
        if (line[k] == '\\' && line[k + 1] == '}') --skip_braces;
      }
      continue;
    }
    const bool control = !line.empty() && (line[0] == '.' || line[0] == '\'');
    if (control) {
      std::size_t k = 1;
      while (k < line.size() && (line[k] == ' ' || line[k] == '\t')) ++k;
      std::size_t m = k;
      while (m < line.size() && line[m] != ' ' && line[m] != '\t') ++m;
      const std::string_view req = line.substr(k, m - k);
      const std::string_view rest = line.substr(m);
      if (req.starts_with("\\\"") || req.empty()) continue;
      if (req == "TS") table = table_format = true, b.brk(2);
      else if (req == "TE") table = table_format = false, b.brk(2);
      else if (req == "de" || req == "de1" || req == "ig" || req == "am" || req == "ds1")
        skip_def = req != "ds1";
      else if (req == "if" || req == "ie" || req == "el") {
        if (rest.find("\\{") != std::string_view::npos) {
          skip_braces = 1;
          for (std::size_t q = rest.find("\\{") + 2; q + 1 < rest.size(); ++q) {
            if (rest[q] == '\\' && rest[q + 1] == '{') ++skip_braces;
            if (rest[q] == '\\' && rest[q + 1] == '}') --skip_braces;
          }
        }
      } else if (req == "SH" || req == "SS" || req == "SY") {
        b.brk(2);
        std::string head;
        for (const auto& a : roff_args(rest)) head += (head.empty() ? "" : " ") + a;
        b.text(roff_unescape(head));
        b.brk(2);
      } else if (req == "B" || req == "I" || req == "SM" || req == "SB") {
        std::string t;
        for (const auto& a : roff_args(rest)) t += (t.empty() ? "" : " ") + a;
        if (fill) padded(roff_unescape(t));
        else b.verbatim(roff_unescape(t) + "\n");
        end_tag();
      } else if (req == "BR" || req == "BI" || req == "IB" || req == "IR" || req == "RB" ||
                 req == "RI") {
        std::string t;
        for (const auto& a : roff_args(rest)) t += a;
        if (fill) padded(roff_unescape(t));
        else b.verbatim(roff_unescape(t) + "\n");
        end_tag();
      } else if (req == "PP" || req == "LP" || req == "P" || req == "sp" || req == "TP" ||
                 req == "HP" || req == "RS" || req == "RE" || req == "TQ" || req == "YS") {
        if (fill) b.brk(2);
        else b.verbatim("\n");
        tag_line = req == "TP" || req == "TQ";
      } else if (req == "IP") {
        b.brk(2);
        const auto args = roff_args(rest);
        if (!args.empty()) {
          b.text(roff_unescape(args[0]));
          b.brk(1);
        }
      } else if (req == "br") {
        if (fill) b.brk(1);
      } else if (req == "nf" || req == "EX") {
        fill = false;
        b.brk(2);
      } else if (req == "fi" || req == "EE") {
        fill = true;
        b.brk(2);
      }
      continue;
    }
    if (table) {
      if (table_format) {  // options and format lines end with '.'
        if (!line.empty() && line.back() == '.') table_format = false;
        continue;
      }
      std::string t = roff_unescape(line);
      if (t == "_" || t == "=") continue;
      for (char& ch : t)
        if (ch == '\t') ch = ' ';
      if (t.starts_with("T{") || t == "T}") continue;
      b.verbatim(t);
      b.brk(1);
      continue;
    }
    if (!fill) {
      b.verbatim(roff_unescape(line) + "\n");
      continue;
    }
    if (line.find_first_not_of(" \t") == std::string_view::npos) {
      b.brk(2);
      continue;
    }
    if (line[0] == ' ' || line[0] == '\t') b.brk(1);  // a line starting with space breaks
    padded(roff_unescape(line));
    end_tag();
  }
  return normalize_text(b.take());
}

namespace detail {

/// Expands POD formatting codes (B<> I<> C<> F<> S<> E<> L<> X<> Z<>, with << >> forms).
inline std::string pod_codes(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i < s.size();) {
    const char c = s[i];
    if (i + 1 < s.size() && s[i + 1] == '<' && std::string_view("BICFSELXZ").find(c) !=
                                                    std::string_view::npos) {
      std::size_t n = 0;
      std::size_t j = i + 1;
      while (j < s.size() && s[j] == '<') ++n, ++j;
      std::size_t body_begin = j, body_end = s.size(), next = s.size();
      if (n == 1) {  // nesting of single brackets counts
        int depth = 1;
        for (std::size_t k = j; k < s.size(); ++k) {
          if (s[k] == '<' && k > 0 && std::isupper(static_cast<unsigned char>(s[k - 1])) != 0)
            ++depth;
          else if (s[k] == '>' && --depth == 0) {
            body_end = k;
            next = k + 1;
            break;
          }
        }
      } else {  // "C<< text >>": needs whitespace after the opening and before the closing
        std::string close(n + 1, '>');
        close[0] = ' ';
        const std::size_t e = s.find(close, j);
        if (e != std::string_view::npos) body_end = e, next = e + close.size();
        while (body_begin < body_end && is_space(s[body_begin])) ++body_begin;
      }
      const std::string body = pod_codes(s.substr(body_begin, body_end - body_begin));
      if (c == 'X' || c == 'Z') {
      } else if (c == 'E') {
        std::uint32_t cp = 0;
        if (body == "lt") out += '<';
        else if (body == "gt") out += '>';
        else if (body == "verbar") out += '|';
        else if (body == "sol") out += '/';
        else if (body.starts_with("0x") && parse_number(std::string_view(body).substr(2), 16, cp))
          append_utf8(out, cp);
        else if (parse_number(body, 10, cp)) append_utf8(out, cp);
        else if (lookup(kHtmlEntities, body, cp)) append_utf8(out, cp);
      } else if (c == 'L') {
        const std::size_t bar = body.find('|');
        std::string t = bar == std::string::npos ? body : body.substr(0, bar);
        if (bar == std::string::npos) {  // L<name/"section"> shows as: "section" in name
          std::erase(t, '"');
          const std::size_t slash = t.find('/');
          if (slash != std::string::npos && t.find("://") == std::string::npos)
            t = slash == 0 ? t.substr(1) : t.substr(slash + 1) + " in " + t.substr(0, slash);
        }
        out += t;
      } else if (c == 'S') {
        out += body;  // non-breaking: the text itself
      } else {
        out += body;
      }
      i = next;
      continue;
    }
    out += c;
    ++i;
  }
  return out;
}

}  // namespace detail

/// POD (Perl's documentation format) to plain text. Paragraphs are separated by blank lines.
/// Command paragraphs: =head1..=head4 and =item keep their text as a paragraph; =begin X ...
/// =end X blocks and =for paragraphs are dropped; =pod =cut =over =back =encoding vanish.
/// Verbatim paragraphs (first line starts with a blank) are kept as written; ordinary ones are
/// filled (lines joined with spaces). Formatting codes: B I C F S keep their text; E<lt> E<gt>
/// E<verbar> E<sol>, numeric and HTML-named E<> become characters; L<text|target> gives text,
/// L<name/"sec"> gives `sec in name`; X<> and Z<> vanish. Then normalize_text.
inline std::string pod_to_text(std::string_view src) {
  using namespace detail;
  // Split into paragraphs on blank (whitespace-only) lines.
  std::vector<std::string> paras;
  {
    std::string cur;
    std::size_t i = 0;
    while (i < src.size()) {
      std::size_t e = src.find('\n', i);
      if (e == std::string_view::npos) e = src.size();
      std::string_view line = src.substr(i, e - i);
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      if (line.find_first_not_of(" \t") == std::string_view::npos) {
        if (!cur.empty()) paras.push_back(std::move(cur));
        cur.clear();
      } else {
        cur.append(line);
        cur += '\n';
      }
      i = e + 1;
    }
    if (!cur.empty()) paras.push_back(std::move(cur));
  }
  TextBuilder b;
  std::string skip_until;  // "=end X" while inside =begin X
  bool in_pod = true;      // files that start with code (a .pm) begin outside POD; .pod files not
  for (const std::string& p : paras) {
    if (!skip_until.empty()) {
      if (p.starts_with(skip_until)) skip_until.clear();
      continue;
    }
    if (p[0] == '=') {
      std::size_t m = 1;
      while (m < p.size() && !is_space(p[m])) ++m;
      const std::string cmd = p.substr(1, m - 1);
      const std::string rest = p.substr(std::min(p.size(), m + 1));
      in_pod = cmd != "cut";
      if (cmd.starts_with("head") || cmd == "item") {
        b.brk(2);
        b.text(pod_codes(rest));
        b.brk(2);
      } else if (cmd == "begin") {
        std::size_t k = 0;
        while (k < rest.size() && !is_space(rest[k])) ++k;
        skip_until = "=end " + rest.substr(0, k);
      }
      continue;
    }
    if (!in_pod) continue;
    if (p[0] == ' ' || p[0] == '\t') {
      b.brk(2);
      b.verbatim(p);
      b.brk(2);
    } else {
      b.brk(2);
      b.text(pod_codes(p));
      b.brk(2);
    }
  }
  return normalize_text(b.take());
}

}  // namespace mc::corpus
