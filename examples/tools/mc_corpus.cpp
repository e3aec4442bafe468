// SPDX-License-Identifier: Apache-2.0
// mc_corpus: builds the English training corpus from installed Debian documentation packages
// (docs/data.md). Each package's files come from `dpkg -L`, in sorted order; each file is one
// document, cleaned by include/megacontext/corpus.hpp. The King James Bible (bible-kjv-text,
// rendered by its own `bible` program) is one document written alone to bible.txt. Output:
// train.txt, valid.txt, bible.txt, manifest.tsv; the same installed packages give the same bytes.
//
//   mc_corpus [--out DIR] [--packages P1,P2,...] [--min-bytes N] [--valid-mod M]
#include <megacontext/corpus.hpp>
#include <megacontext/error.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

namespace fs = std::filesystem;
namespace corpus = mc::corpus;

/// The package list of docs/data.md; bible-kjv-text is the one long document.
constexpr const char* kDefaultPackages =
    "bible-kjv-text,debian-reference-en,git-doc,manpages,manpages-dev,perl-doc,"
    "postgresql-doc-15,python3.11-doc";
constexpr const char* kBiblePackage = "bible-kjv-text";

struct Args {
  std::string out = "build/corpus";
  std::vector<std::string> packages;
  std::int64_t min_bytes = 500;
  std::int64_t valid_mod = 20;
};

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> v;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) v.push_back(item);
  std::sort(v.begin(), v.end());
  return v;
}

Args parse(int argc, char** argv) {
  Args a;
  std::string packages = kDefaultPackages;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw mc::Error(mc::Errc::kInvalidArgument, "missing value after " + k);
      return argv[++i];
    };
    if (k == "--out") a.out = value();
    else if (k == "--packages") packages = value();
    else if (k == "--min-bytes") a.min_bytes = std::stoll(value());
    else if (k == "--valid-mod") a.valid_mod = std::stoll(value());
    else if (k == "--help" || k == "-h") {
      std::cout << "usage: mc_corpus [--out DIR] [--packages P1,P2,...] [--min-bytes N] "
                   "[--valid-mod M]\n";
      std::exit(0);
    } else {
      throw mc::Error(mc::Errc::kInvalidArgument, "unknown argument '" + k + "' (try --help)");
    }
  }
  a.packages = split_list(packages);
  MC_EXPECTS(!a.packages.empty(), mc::Errc::kInvalidArgument, "--packages is empty");
  MC_EXPECTS(a.min_bytes >= 0, mc::Errc::kInvalidArgument, "--min-bytes = ", a.min_bytes,
             " must be >= 0");
  MC_EXPECTS(a.valid_mod >= 2, mc::Errc::kInvalidArgument, "--valid-mod = ", a.valid_mod,
             " must be >= 2");
  return a;
}

/// Runs a shell command and returns its standard output; throws if it fails.
std::string run(const std::string& cmd) {
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) throw mc::Error(mc::Errc::kIo, "cannot run: " + cmd);
  std::string out;
  char buf[1 << 16];
  for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  const int rc = pclose(p);
  MC_EXPECTS(rc == 0, mc::Errc::kIo, "command failed (status ", rc, "): ", cmd);
  return out;
}

/// Single-quotes a path for the shell.
std::string quoted(const std::string& s) {
  std::string q = "'";
  for (const char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

std::string read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) throw mc::IoError("cannot read " + p.string(), p);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

enum class Format { kHtml, kPod, kMan };

struct Source {
  std::string package, path;
  Format format;
};

bool ends_with(const std::string& s, std::string_view suffix) { return s.ends_with(suffix); }

/// The documents of one package: its HTML if it has any, else its POD, else its man pages.
/// Skipped: symlinks, /usr/share/doc/<pkg>/ changelogs and copyright, Sphinx index pages.
std::vector<Source> package_sources(const std::string& pkg) {
  std::vector<std::string> files;
  std::stringstream ss(run("dpkg -L " + quoted(pkg)));
  for (std::string line; std::getline(ss, line);) {
    std::error_code ec;
    if (fs::is_symlink(line, ec) || !fs::is_regular_file(line, ec)) continue;
    const std::string name = fs::path(line).filename().string();
    if (name.starts_with("changelog") || name == "copyright" || name.starts_with("NEWS.Debian"))
      continue;
    files.push_back(line);
  }
  std::sort(files.begin(), files.end());
  std::map<Format, std::vector<Source>> by_format;
  for (const auto& f : files) {
    const std::string name = fs::path(f).filename().string();
    if (ends_with(f, ".html") || ends_with(f, ".htm")) {
      if (name.starts_with("genindex") || name == "search.html" || name == "py-modindex.html" ||
          f.find("/_sources/") != std::string::npos)
        continue;
      by_format[Format::kHtml].push_back({pkg, f, Format::kHtml});
    } else if (ends_with(f, ".pod") || ends_with(f, ".pod.gz")) {
      by_format[Format::kPod].push_back({pkg, f, Format::kPod});
    } else if (f.find("/man/man") != std::string::npos && ends_with(f, ".gz")) {
      by_format[Format::kMan].push_back({pkg, f, Format::kMan});
    }
  }
  for (const Format fmt : {Format::kHtml, Format::kPod, Format::kMan})
    if (!by_format[fmt].empty()) return by_format[fmt];
  return {};
}

std::string clean(const Source& s) {
  const std::string raw =
      ends_with(s.path, ".gz") ? run("gzip -dc -- " + quoted(s.path)) : read_file(s.path);
  const std::string text = corpus::to_utf8(raw);
  switch (s.format) {
    case Format::kHtml: return corpus::html_to_text(text);
    case Format::kPod: return corpus::pod_to_text(text);
    case Format::kMan: return corpus::roff_to_text(text);
  }
  return {};
}

std::string hex(std::uint64_t h) {
  std::ostringstream os;
  os << std::hex << std::setw(16) << std::setfill('0') << h;
  return os.str();
}

std::string mb(std::uint64_t bytes) {
  std::ostringstream os;
  os << std::fixed << std::setprecision(2) << static_cast<double>(bytes) / 1e6 << " MB";
  return os.str();
}

struct Tally {
  std::uint64_t docs = 0, bytes = 0;
};

}  // namespace

int main(int argc, char** argv) try {
  const Args args = parse(argc, argv);
  const auto t0 = std::chrono::steady_clock::now();
  const fs::path out = args.out;
  fs::create_directories(out);
  std::ofstream train(out / "train.txt", std::ios::binary);
  std::ofstream valid(out / "valid.txt", std::ios::binary);
  std::ofstream manifest(out / "manifest.tsv", std::ios::binary);
  if (!train || !valid || !manifest) throw mc::IoError("cannot write into " + out.string(), out);
  manifest << "package\tpath\tbytes\tsplit\thash\n";

  std::unordered_map<std::uint64_t, std::string> seen;  // hash -> text, for exact duplicates
  std::map<std::string, Tally> per_split;
  std::map<std::string, std::map<std::string, Tally>> per_package;  // package -> split -> tally
  const auto record = [&](const std::string& pkg, const std::string& path, const std::string& text,
                          const std::string& split, std::uint64_t hash) {
    manifest << pkg << '\t' << path << '\t' << text.size() << '\t' << split << '\t' << hex(hash)
             << '\n';
    per_split[split].docs += 1;
    per_split[split].bytes += text.size();
    per_package[pkg][split].docs += 1;
    per_package[pkg][split].bytes += text.size();
  };

  for (const std::string& pkg : args.packages) {
    run("dpkg -s " + quoted(pkg) + " >/dev/null 2>&1 || { echo 'mc_corpus: package " + pkg +
        " is not installed (run scripts/build_corpus.sh)' >&2; exit 1; }");
    if (pkg == kBiblePackage) {
      // The text is stored compressed in /usr/lib/bible.data; the package's own reader renders
      // every verse, one a line, as "Ge1:1 In the beginning ...". COLUMNS unset: no wrapping.
      const std::string text =
          corpus::normalize_text(run("env -u COLUMNS bible -f Gen1:1-Rev22:21"));
      const std::uint64_t h = corpus::fnv1a64(text);
      std::ofstream bible(out / "bible.txt", std::ios::binary);
      bible << text << '\n';
      if (!bible) throw mc::IoError("cannot write bible.txt", out / "bible.txt");
      record(pkg, "/usr/lib/bible.data", text, "bible", h);
      continue;
    }
    for (const Source& s : package_sources(pkg)) {
      const std::string text = clean(s);
      const std::uint64_t h = corpus::fnv1a64(text);
      if (static_cast<std::int64_t>(text.size()) < args.min_bytes) {
        record(pkg, s.path, text, "short", h);
        continue;
      }
      const auto [it, fresh] = seen.emplace(h, text);
      if (!fresh && it->second == text) {
        record(pkg, s.path, text, "duplicate", h);
        continue;
      }
      const bool is_valid = corpus::is_validation(h, static_cast<std::uint64_t>(args.valid_mod));
      (is_valid ? valid : train) << text << corpus::kDocumentSeparator;
      record(pkg, s.path, text, is_valid ? "valid" : "train", h);
    }
  }
  train.close();
  valid.close();
  manifest.close();
  if (!train || !valid || !manifest) throw mc::IoError("writing the corpus failed", out);

  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::cout << "mc_corpus: wrote " << out.string() << " in " << std::fixed << std::setprecision(1)
            << secs << " s\n";
  for (const auto& [split, t] : per_split)
    std::cout << "  " << std::left << std::setw(10) << split << std::right << std::setw(7)
              << t.docs << " documents  " << std::setw(10) << mb(t.bytes) << '\n';
  std::cout << "  per package (train / valid / dropped short+duplicate):\n";
  for (const auto& [pkg, splits] : per_package) {
    const auto get = [&](const char* s) {
      const auto it = splits.find(s);
      return it == splits.end() ? Tally{} : it->second;
    };
    const Tally tr = get("train"), va = get("valid"), bi = get("bible");
    std::cout << "    " << std::left << std::setw(20) << pkg << std::right;
    if (bi.docs > 0) {
      std::cout << " bible " << mb(bi.bytes) << '\n';
      continue;
    }
    std::cout << std::setw(6) << tr.docs << " docs " << std::setw(10) << mb(tr.bytes) << " / "
              << std::setw(4) << va.docs << " docs " << std::setw(9) << mb(va.bytes) << " / "
              << get("short").docs + get("duplicate").docs << " dropped\n";
  }
  return 0;
} catch (const std::exception& e) {
  std::cerr << "mc_corpus: " << e.what() << '\n';
  return 1;
}
