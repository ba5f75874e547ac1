#!/usr/bin/env bash
# The first run: on a fresh Debian 12 machine, as root, installs what is
# missing (nix-bin, openssh-server), creates the nix-ssh user as
# nix.sshServe would, builds nixpeer and runs `nixpeer demo`: a staging and
# a production agent converge, staging builds and signs a closure of 100
# paths and production fetches it, measured against building it itself.
# Without root it says what needs root and runs the part it can.
#
#   sudo ./scripts/demo.sh [--keep] [--paths N]
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v go >/dev/null 2>&1; then
  echo "demo: Go is needed to build nixpeer (https://go.dev/dl/, or apt-get install golang-go if it is 1.26 or newer)" >&2
  exit 1
fi
if ! scripts/prepare.sh; then
  echo "demo: without root, staging's sshd and nix-daemon cannot run: the demo shows the agents exchanging their keys only" >&2
fi
bin=$(mktemp -d)/nixpeer
trap 'rm -rf "$(dirname "$bin")"' EXIT
go build -buildvcs=auto -o "$bin" ./cmd/agent
"$bin" demo "$@"
