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
  echo "demo: Nix, sshd or the nix-ssh user are missing (see above): the demo shows the agents exchanging their keys only" >&2
fi
work=$(mktemp -d)
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
bin=$work/nixpeer
# A user whose home cannot be written (nobody) builds in a cache of its own.
if [ ! -w "${HOME:-/nonexistent}" ]; then
  export GOCACHE=$work/cache GOPATH=$work/go
fi
vcs=auto # "nixpeer version" names the commit, where git may read the repository
git rev-parse HEAD >/dev/null 2>&1 || vcs=false
go build -buildvcs=$vcs -o "$bin" ./cmd/agent
"$bin" demo "$@"
