#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh Debian machine
# (real Nix and a real sshd, from Debian), then vets and runs every test with
# the race detector. Safe to run again: installed things are left as they are.
set -euo pipefail
cd "$(dirname "$0")/.."

# Real Nix and sshd, systemd-analyze and iptables from Debian; the nix-ssh
# user. Without root, what is missing is said, and the tests that need it
# skip (or fail with CI=true).
if [ "$(id -u)" -eq 0 ]; then
  scripts/prepare.sh systemd iptables
else
  scripts/prepare.sh systemd iptables || true
fi

go vet ./...
go tool staticcheck ./...
go test -race -count=1 -timeout 8m "$@" ./...
# The Debian package: built, installed, verified, removed and purged. On
# its own, after the rest: while it is installed, its nixpeer group exists.
if [ "$(id -u)" -eq 0 ] || [ "${CI:-}" = true ]; then
  go test -count=1 -tags debtest "$@" ./internal/debpkg/
fi
