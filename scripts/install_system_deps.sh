#!/usr/bin/env bash
# System packages the test suite needs beyond Python: PostgreSQL (the tracking-server tests)
# and OpenSSH's server (the Ray test's git and DVC remotes, served over SSH on a loopback
# port). Debian/Ubuntu; uses sudo when not root. Does nothing if both are installed.
set -euo pipefail
missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
[ ${#missing[@]} -gt 0 ] || exit 0
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq "${missing[@]}" >/dev/null
# The packages may start their own services (PostgreSQL on 5432, sshd on 22); the tests run
# private ones on other ports.
