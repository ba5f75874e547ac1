#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh Debian machine
# (real Nix and a real sshd, from Debian), then vets and runs every test with
# the race detector. Safe to run again: installed things are left as they are.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v nix-store >/dev/null 2>&1 || need+=(nix-bin)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh-keygen >/dev/null 2>&1 || need+=(openssh-client)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
[ -x /usr/sbin/iptables ] || need+=(iptables)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh: missing ${need[*]}; run as root, or: sudo apt-get install -y ${need[*]}" >&2
  else
    echo "scripts/test.sh: installing ${need[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi

# The user sshd hands a substituter's connection to (nix.sshServe creates it
# on NixOS); in nix-users so that it reaches the Nix daemon's socket.
# Its password is "*", not the locked "!": sshd without PAM refuses key
# logins to a locked account.
if [ "$(id -u)" -eq 0 ] && ! id nix-ssh >/dev/null 2>&1 && getent group nix-users >/dev/null; then
  useradd --system --gid nix-users --shell /bin/bash --home-dir /var/empty --password '*' nix-ssh
fi

mkdir -p /var/empty 2>/dev/null || true

go vet ./...
go tool staticcheck ./...
go test -race -count=1 -timeout 8m "$@" ./...
# The Debian package: built, installed, verified, removed and purged. On
# its own, after the rest: while it is installed, its nixpeer group exists.
if [ "$(id -u)" -eq 0 ] || [ "${CI:-}" = true ]; then
  go test -count=1 -tags debtest "$@" ./internal/debpkg/
fi
