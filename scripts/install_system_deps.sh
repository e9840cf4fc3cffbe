#!/usr/bin/env bash
# System packages the test suite needs beyond Python: PostgreSQL (for the tracking-server
# test). Debian/Ubuntu; uses sudo when not root. Does nothing if already installed.
set -euo pipefail
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  exit 0
fi
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq postgresql >/dev/null
# The package may start its own cluster on 5432; the tests run a private one on other ports.
