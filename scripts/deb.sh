#!/usr/bin/env bash
# Builds nixpeer's .deb with nfpm (github.com/goreleaser/nfpm, run through
# the Go module proxy): /usr/bin/nixpeer, its systemd unit in
# /lib/systemd/system, /etc/nixpeer/desired.yaml (an example, kept as a
# conffile), the manual pages, the shell completions, the copyright file,
# a changelog and the lintian overrides. Prints the path of the package.
#
#   scripts/deb.sh [OUTDIR]      (default: dist/)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-dist}
mkdir -p "$out"
out=$(cd "$out" && pwd)
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT

nfpm_version=v2.45.2
arch=$(go env GOARCH)
# The version: the last tag, or 0.1.0 with the commit, as Debian orders them.
version=$(git describe --tags --abbrev=0 --match 'v[0-9]*' 2>/dev/null | sed 's/^v//' || true)
rev=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
[ -n "$version" ] || version="0.1.0~git$(git log -1 --format=%cd --date=format:%Y%m%d 2>/dev/null || echo 0).$rev"

CGO_ENABLED=0 go build -trimpath -buildvcs=auto -ldflags "-s -w -X main.version=$version" -o "$build/nixpeer" ./cmd/agent
sed 's|^ExecStart=/usr/local/bin/nixpeer |ExecStart=/usr/bin/nixpeer |' systemd/nixpeer.service > "$build/nixpeer.service"
grep -q '^ExecStart=/usr/bin/nixpeer ' "$build/nixpeer.service"
cp configs/tutorial.yaml "$build/desired.yaml"
# Compressed as Debian wants them, reproducibly (no name, no time stamp).
gzip -9n < docs/man/nixpeer.1 > "$build/nixpeer.1.gz"
gzip -9n < docs/man/nixpeer-desired.yaml.5 > "$build/nixpeer-desired.yaml.5.gz"
# Printed by nixpeer built for this machine, whatever GOARCH the package is for.
for sh in bash zsh fish; do GOOS= GOARCH= go run ./cmd/agent completion "$sh" > "$build/completion.$sh"; done
# A native package's changelog: this build, dated by its commit.
date=$(LC_ALL=C git log -1 --format=%cd --date=format:'%a, %d %b %Y %H:%M:%S %z' 2>/dev/null || LC_ALL=C date -R)
printf '%s\n' "nixpeer ($version) unstable; urgency=medium" "" \
  "  * Built from commit $rev." "" \
  " -- nixpeer developers <nixpeer@users.noreply.github.com>  $date" | gzip -9n > "$build/changelog.gz"
sed -e "s|@ARCH@|$arch|" -e "s|@VERSION@|$version|" -e "s|@BUILD@|$build|g" packaging/deb/nfpm.yaml > "$build/nfpm.yaml"

go run "github.com/goreleaser/nfpm/v2/cmd/nfpm@$nfpm_version" package \
  --config "$build/nfpm.yaml" --packager deb --target "$out/" >&2
# nfpm spells the version as Debian does (a - of a tag may become ~).
ls -t "$out"/nixpeer_*_"$arch".deb | head -n 1
