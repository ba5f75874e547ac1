#!/usr/bin/env bash
# Prints the vendorHash of nix/package.nix for the current go.mod: the
# hash of `go mod vendor`'s output, as buildGoModule computes it. With
# --write, puts it into nix/package.nix. Needs Go and Nix (nix-bin).
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go mod vendor -o "$tmp/vendor"
hash=$(nix --extra-experimental-features nix-command hash path --sri "$tmp/vendor")
if [ "${1:-}" = "--write" ]; then
  sed -i -E "s|vendorHash = \"[^\"]*\";|vendorHash = \"$hash\";|" nix/package.nix
fi
echo "$hash"
