#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Installs what MegaContext needs from Debian packages (idempotent). The CUDA toolkit is used
# when it is already installed (/usr/local/cuda); nothing is downloaded from anywhere else.
set -euo pipefail
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
PKGS="cmake ninja-build g++ make libeigen3-dev doctest-dev libbenchmark-dev git time"
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  echo "setup: installing$missing"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends $missing
fi
