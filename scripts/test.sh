#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh Debian machine
# (real Nix and a real sshd, from Debian), then vets and runs every test with
# the race detector, then the end-to-end tests on newer Nix (in chroots).
# Safe to run again: installed things are left as they are.
set -euo pipefail
cd "$(dirname "$0")/.."

# Real Nix and sshd, systemd-analyze and iptables from Debian, zsh and fish
# (their completion scripts are parsed), lintian and man (the .deb is
# checked, the manual pages rendered); the nix-ssh
# user. Without root, what is missing is said, and the tests that need it
# skip (or fail with CI=true).
if [ "$(id -u)" -eq 0 ]; then
  scripts/prepare.sh systemd iptables zsh fish lintian man-db seaweedfs
else
  scripts/prepare.sh systemd iptables zsh fish lintian man-db seaweedfs || true
fi

test -z "$(gofmt -l .)" || { echo "test: not gofmt-ed:" >&2; gofmt -l . >&2; exit 1; }
go vet ./...
go tool staticcheck ./...
go test -race -count=1 -timeout 15m "$@" ./...
# The Nix version matrix: the end-to-end tests again on Debian trixie's Nix
# (2.26) and sid's (the newest Debian has), each in a chroot built once with
# debootstrap and cached in /var/cache/nixpeer-test. After the tests above,
# not beside them: they use the same loopback addresses.
if [ "$(id -u)" -eq 0 ] || [ "${CI:-}" = true ]; then
  scripts/nixmatrix.sh
else
  echo "test: not root: the Nix version matrix (scripts/nixmatrix.sh) is not run" >&2
fi
# The Debian package: built, installed, verified, removed and purged. On
# its own, after the rest: while it is installed, its nixpeer group exists.
if [ "$(id -u)" -eq 0 ] || [ "${CI:-}" = true ]; then
  go test -count=1 -tags debtest "$@" ./internal/debpkg/
fi
