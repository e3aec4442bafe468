// SPDX-License-Identifier: Apache-2.0
// Tests of the corpus text cleaners (include/megacontext/corpus.hpp): HTML tags, entities and
// dropped elements, roff requests and escapes, POD commands and codes, the whitespace rules of
// normalize_text, Latin-1 fallback, hashing and the split rule, determinism, and real files from
// /usr/share when the machine has them. Expected outputs are written by hand from the rules.
#include <doctest/doctest.h>

#include <megacontext/corpus.hpp>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

namespace {

namespace corpus = mc::corpus;

std::string read_file(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

/// True if `s` has no control character other than LF, no trailing blank on any line, no two
/// blank lines in a row, no leading newline and no trailing whitespace (a first line may be
/// indented).
bool is_normalized(const std::string& s) {
  if (s.empty()) return true;
  if (s.front() == '\n' || s.back() == ' ' || s.back() == '\n') return false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if ((c < 0x20 && c != '\n') || c == 0x7F) return false;
    if (c == '\n' && i > 0 && s[i - 1] == ' ') return false;
    if (i >= 2 && s[i] == '\n' && s[i - 1] == '\n' && s[i - 2] == '\n') return false;
  }
  return true;
}

}  // namespace

TEST_CASE("normalize_text: line endings, controls, blanks and trailing spaces") {
  CHECK(corpus::normalize_text("") == "");
  CHECK(corpus::normalize_text(" \n\t\n") == "");
  CHECK(corpus::normalize_text("a\r\nb\rc\n") == "a\nb\nc");
  CHECK(corpus::normalize_text("a  \nb\t\n") == "a\nb");
  CHECK(corpus::normalize_text("\n\n  x\n\n\n\ny\n\n") == "  x\n\ny");  // indentation kept
  CHECK(corpus::normalize_text("a\tb") == "a b");
  CHECK(corpus::normalize_text(std::string("a\x01\x1e\x7f" "b\0c", 7)) == "abc");
  CHECK(corpus::normalize_text("caf\xc3\xa9") == "caf\xc3\xa9");       // valid UTF-8 kept
  CHECK(corpus::normalize_text("a\xff" "b") == "a\xef\xbf\xbd" "b");  // invalid -> U+FFFD
  CHECK(corpus::normalize_text("\xed\xa0\x80") == "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
}

TEST_CASE("to_utf8 keeps UTF-8 and re-encodes Latin-1") {
  CHECK(corpus::to_utf8("na\xc3\xafve") == "na\xc3\xafve");
  CHECK(corpus::to_utf8("na\xefve") == "na\xc3\xafve");
  CHECK(corpus::to_utf8("plain") == "plain");
}

TEST_CASE("decode_entities: named, numeric, invalid and unknown") {
  CHECK(corpus::decode_entities("a &amp; b &lt;c&gt; &quot;d&quot; &apos;") == "a & b <c> \"d\" '");
  CHECK(corpus::decode_entities("x&nbsp;y") == "x y");
  CHECK(corpus::decode_entities("&#65;&#x42;&#X43;") == "ABC");
  CHECK(corpus::decode_entities("&mdash;&#8212;&#x2014;") ==
        "\xe2\x80\x94\xe2\x80\x94\xe2\x80\x94");
  CHECK(corpus::decode_entities("&#x1F600;") == "\xf0\x9f\x98\x80");
  CHECK(corpus::decode_entities("&#0;&#xD800;&#x110000;") ==
        "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
  CHECK(corpus::decode_entities("&bogus; & alone &amp") == "&bogus; & alone &amp");
  CHECK(corpus::decode_entities("AT&T; &#;") == "AT&T; &#;");
}

TEST_CASE("html_to_text: tags, paragraphs, lines and whitespace") {
  CHECK(corpus::html_to_text("<p>Hello   <b>bold</b>\n world.</p><p>Second</p>") ==
        "Hello bold world.\n\nSecond");
  CHECK(corpus::html_to_text("<h1>Title</h1>text<br>next<br/>last") == "Title\n\ntext\nnext\nlast");
  CHECK(corpus::html_to_text("<ul><li>one</li><li>two</li></ul>after") == "one\ntwo\n\nafter");
  CHECK(corpus::html_to_text("<table><tr><td>a</td><td>b</td></tr><tr><td>c</td></tr></table>") ==
        "a b\nc");
  CHECK(corpus::html_to_text("x &lt;y&gt; &amp;amp;") == "x <y> &amp;");
  CHECK(corpus::html_to_text("<P CLASS=x>Upper</P>") == "Upper");
  CHECK(corpus::html_to_text("a < b and c") == "a < b and c");
}

TEST_CASE("html_to_text: pre keeps its whitespace") {
  CHECK(corpus::html_to_text("<p>before</p><pre>  x = 1\n    y  =  2</pre><p>after</p>") ==
        "before\n\n  x = 1\n    y  =  2\n\nafter");
  CHECK(corpus::html_to_text("<pre>a &lt; b</pre>") == "a < b");
}

TEST_CASE("html_to_text: dropped elements") {
  CHECK(corpus::html_to_text("<html><head><title>T</title><style>p{color:red}</style></head>"
                             "<body><script>var s = '<p>no</p>';</script><p>yes</p></body>") ==
        "yes");
  CHECK(corpus::html_to_text("<!DOCTYPE html><!-- a <p>comment</p> -->ok") == "ok");
  CHECK(corpus::html_to_text("<div class=\"navheader\"><div>Prev</div> Next</div><p>body</p>") ==
        "body");
  CHECK(corpus::html_to_text("<h2>Sec<a class=\"headerlink\" href=\"#s\">\xc2\xb6</a></h2>") ==
        "Sec");
  CHECK(corpus::html_to_text("<nav><ul><li>menu</li></ul></nav><p>text</p>") == "text");
  CHECK(corpus::html_to_text("<div role=\"navigation\">index</div>main") == "main");
  CHECK(corpus::html_to_text("<SCRIPT type=x>if (a<b) {}</SCRIPT>after") == "after");
}

TEST_CASE("html_to_text: role=main keeps only the main element") {
  const std::string page =
      "<div class=\"sidebar\">Side</div><div class=\"body\" role=\"main\"><p>Main <div>inner</div>"
      "</p></div><div>Footer text</div>";
  CHECK(corpus::html_to_text(page) == "Main\n\ninner");
}

TEST_CASE("roff_to_text: sections, fonts and filling") {
  const std::string page =
      ".\\\" a comment\n"
      ".TH LS 1 2024-01-01 \"GNU\"\n"
      ".SH NAME\n"
      "ls \\- list directory contents\n"
      ".SH DESCRIPTION\n"
      "List information about the\n"
      "\\fBFILE\\fRs (the current\n"
      "directory by default).\n"
      ".PP\n"
      "Second \\fIparagraph\\fP.\n";
  CHECK(corpus::roff_to_text(page) ==
        "NAME\n\nls - list directory contents\n\nDESCRIPTION\n\n"
        "List information about the FILEs (the current directory by default).\n\n"
        "Second paragraph.");
}

TEST_CASE("roff_to_text: font macros with quoted arguments") {
  CHECK(corpus::roff_to_text(".BI \"int open(const char *\" pathname \", int \" flags );\n") ==
        "int open(const char *pathname, int flags);");
  CHECK(corpus::roff_to_text("See\n.BR stat (2)\nfor details.\n") == "See stat(2) for details.");
  CHECK(corpus::roff_to_text(".B \"two words\" three\n") == "two words three");
  CHECK(corpus::roff_to_text(".SH \"SEE ALSO\"\n.BR a (1),\n.BR b (2)\n") ==
        "SEE ALSO\n\na(1), b(2)");
}

TEST_CASE("roff_to_text: no-fill, tagged paragraphs, breaks and continuations") {
  CHECK(corpus::roff_to_text(".nf\n  a   b\nc\n.fi\nfilled\ntext\n") ==
        "  a   b\nc\n\nfilled text");
  CHECK(corpus::roff_to_text(".TP\n.B \\-a\nShow all.\n.TP\n\\-l\nLong.\n") ==
        "-a\nShow all.\n\n-l\nLong.");
  CHECK(corpus::roff_to_text(".IP \\(bu 2\nItem one.\n") == "\xe2\x80\xa2\nItem one.");
  CHECK(corpus::roff_to_text("one\n.br\ntwo\n\nthree\n") == "one\ntwo\n\nthree");
  CHECK(corpus::roff_to_text("joined \\\nline\n") == "joined line");
}

TEST_CASE("roff_to_text: escapes") {
  CHECK(corpus::roff_to_text("a\\(emb \\[en] \\(lqq\\(rq \\e \\\\ x\\&y \\[u00E9]\n") ==
        "a\xe2\x80\x94" "b \xe2\x80\x93 \xe2\x80\x9cq\xe2\x80\x9d \\ \\ xy \xc3\xa9");
  CHECK(corpus::roff_to_text("\\s-1SMALL\\s0 \\s+2big\\s0 \\f(CWcode\\fR \\f[B]b\\f[]\n") ==
        "SMALL big code b");
  CHECK(corpus::roff_to_text("\\*(L\"quoted\\*(R\" text \\\" trailing comment\n") ==
        "\"quoted\" text");
  CHECK(corpus::roff_to_text("\\h'2n'x\\v'-1'y \\(xx unknown\n") == "xy unknown");
}

TEST_CASE("roff_to_text: definitions, conditionals and tables are dropped or flattened") {
  const std::string src =
      ".de Vb\n.ft CW\n.nf\n..\n"
      ".ie n \\{\\\n.ds C` \"\n.\\}\n.el \\{\\\n.ds C`\n.\\}\n"
      ".if t .sp\n"
      "Text after.\n"
      ".TS\nallbox;\nl l.\nName\tValue\nx\t1\n.TE\n";
  CHECK(corpus::roff_to_text(src) == "Text after.\n\nName Value\nx 1");
}

TEST_CASE("pod_to_text: commands, paragraphs, verbatim and codes") {
  const std::string pod =
      "=encoding utf8\n\n"
      "=head1 NAME\n\n"
      "perlfoo - a B<bold> and I<italic>\n"
      "test of C<< $a <=> $b >>\n\n"
      "    my $x = 1;\n"
      "      print $x;\n\n"
      "=over 4\n\n=item * first\n\nSee L<perlfunc/open> and L<the docs|perldoc>.\n\n=back\n\n"
      "=begin html\n\n<p>raw</p>\n\n=end html\n\n"
      "=for comment hidden\n\n"
      "E<lt>tagE<gt> X<index>wordZ<> S<non breaking> E<eacute> E<0x41>E<66>\n\n"
      "=cut\n\nsub code { }\n";
  CHECK(corpus::pod_to_text(pod) ==
        "NAME\n\n"
        "perlfoo - a bold and italic test of $a <=> $b\n\n"
        "    my $x = 1;\n"
        "      print $x;\n\n"
        "* first\n\n"
        "See open in perlfunc and the docs.\n\n"
        "<tag> word non breaking \xc3\xa9 AB");
  CHECK(corpus::pod_to_text("=head2 L<\"Quoted Section\">\n\nB<I<nested>>\n") ==
        "Quoted Section\n\nnested");
}

TEST_CASE("hash, split rule and separator") {
  // FNV-1a 64 reference values: the offset basis for "", and the published vector for "a".
  CHECK(corpus::fnv1a64("") == 0xcbf29ce484222325ull);
  CHECK(corpus::fnv1a64("a") == 0xaf63dc4c8601ec8cull);
  CHECK(corpus::is_validation(40, 20));
  CHECK_FALSE(corpus::is_validation(41, 20));
  CHECK_FALSE(corpus::is_validation(0, 0));
  CHECK(corpus::kDocumentSeparator == std::string_view("\n\x1e\n", 3));
  // Cleaned text can never contain the separator's RS byte.
  CHECK(corpus::html_to_text("a&#30;b\x1e" "c") == "abc");
}

TEST_CASE("cleaners are deterministic and produce normalised text") {
  const std::string html = "<p>  A <i>b</i>\n\n\n c</p>\n\n<pre>x  \n\n\n\ny</pre>";
  const std::string roff = ".SH A\n\ntext  \n\n\n.nf\nq  \n\n\n\nr\n";
  const std::string a = corpus::html_to_text(html);
  CHECK(a == corpus::html_to_text(html));
  CHECK(a == "A b c\n\nx\n\ny");
  CHECK(is_normalized(a));
  const std::string r = corpus::roff_to_text(roff);
  CHECK(r == corpus::roff_to_text(roff));
  CHECK(is_normalized(r));
}

TEST_CASE("real documentation files from /usr/share") {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path html = "/usr/share/doc/python3.11/html/tutorial/classes.html";
  const fs::path pod = "/usr/share/perl/5.36.0/pod/perlintro.pod";
  const fs::path license = "/usr/share/common-licenses/GPL-3";
  if (fs::is_regular_file(html, ec)) {
    const std::string t = corpus::html_to_text(corpus::to_utf8(read_file(html)));
    CHECK(t.starts_with("9. Classes"));
    CHECK(t.find("<div") == std::string::npos);
    CHECK(t.find("&amp;") == std::string::npos);
    CHECK(t.find("Navigation") == std::string::npos);  // outside role="main"
    CHECK(t.size() > 20000);
    CHECK(is_normalized(t));
  } else {
    MESSAGE("skipped: ", html.string(), " not installed (scripts/build_corpus.sh installs it)");
  }
  if (fs::is_regular_file(pod, ec)) {
    const std::string t = corpus::pod_to_text(read_file(pod));
    CHECK(t.starts_with("NAME\n\nperlintro"));
    CHECK(t.find("=head") == std::string::npos);
    CHECK(t.find("C<") == std::string::npos);
    CHECK(is_normalized(t));
  } else {
    MESSAGE("skipped: ", pod.string(), " not installed");
  }
  if (fs::is_regular_file(license, ec)) {
    const std::string raw = read_file(license);
    const std::string t = corpus::normalize_text(raw);
    CHECK(t.find("GNU GENERAL PUBLIC LICENSE") < 80);  // the title line keeps its indentation
    CHECK(t == corpus::normalize_text(t));  // idempotent
    CHECK(is_normalized(t));
  } else {
    MESSAGE("skipped: ", license.string(), " missing");
  }
}
