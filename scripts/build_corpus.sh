#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds the English training corpus (docs/data.md): installs a fixed list of Debian
# documentation packages (the only download, from Debian's archive), builds mc_corpus and runs
# it. Output in OUT_DIR (default build/corpus): train.txt valid.txt bible.txt manifest.tsv.
# Deterministic: the same installed package versions give the same bytes. Never committed.
#
#   scripts/build_corpus.sh [OUT_DIR]
set -euo pipefail
source "$(dirname "$0")/env.sh"
OUT_DIR="${1:-$MC_ROOT/build/corpus}"
# bible-kjv holds the `bible` program that renders bible-kjv-text's compressed data file.
PKGS="bible-kjv bible-kjv-text debian-reference-en git-doc manpages manpages-dev perl-doc
  postgresql-doc-15 python3.11-doc"
CORPUS_PKGS="bible-kjv-text,debian-reference-en,git-doc,manpages,manpages-dev,perl-doc"
CORPUS_PKGS="$CORPUS_PKGS,postgresql-doc-15,python3.11-doc"
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  echo "build_corpus: installing$missing"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends $missing
fi
echo "build_corpus: package versions"
dpkg-query -W -f '  ${Package}\t${Version}\n' $PKGS
# The tool needs only a C++20 compiler and the headers; no CMake configure of the whole project.
mkdir -p "$MC_ROOT/build"
CXX="${CXX:-g++}"
"$CXX" -std=c++20 -O2 -Wall -Wextra -Wpedantic -Wshadow -Wconversion -I"$MC_ROOT/include" \
  "$MC_ROOT/examples/tools/mc_corpus.cpp" -o "$MC_ROOT/build/mc_corpus"
"$MC_ROOT/build/mc_corpus" --out "$OUT_DIR" --packages "$CORPUS_PKGS"
