#!/usr/bin/env bash
# The Nix version matrix: runs the end-to-end tests with real sshd and real
# Nix again on newer Nix than the machine's own, each in a minimal Debian
# chroot (scripts/nixroot.sh; built once, cached). The Go test binary and
# nixpeer are built static here and copied in with the test data they read.
#
#   scripts/nixmatrix.sh [SUITE...]          default: trixie sid
#   scripts/nixmatrix.sh --bench [SUITE...]  the README's figures per Nix
#       version instead: BenchmarkFleetConverges (3 runs of 10) and the
#       demo's build and fetch of a closure of 100 paths (2 runs)
#
# NIXMATRIX_RUN overrides the tests run (a go test -run pattern). Every
# failure is named with its Nix version and suite. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

bench=false
if [ "${1:-}" = --bench ]; then bench=true; shift; fi
suites=("$@")
[ ${#suites[@]} -gt 0 ] || suites=(trixie sid)

# What the issue of the matrix asks of every Nix: convergence and a signed
# fetch, a host-key change refused, dark staging withdrawn, plan, wait
# --path, the fleet view, three tiers, the demo's closure, the cache tier
# on SeaweedFS (its weed copied in); every agent is
# started the way the unit starts it (installed_test.go).
run=${NIXMATRIX_RUN:-'^(TestStagingServesProductionWithNothingCopiedByHand|TestHostKeyChangeIsRefused|TestDarkStagingIsWithdrawn|TestPlan|TestWaitForAPath|TestStatusFleet|TestThreeTiers|TestDemoConverges|TestStatusWarnsWhenStagingTrustsNixSSH|TestTrustCA|TestRotateCacheKey|TestRotateHostKey|TestCacheTier|TestCacheTierRotation)$'}

build=$(mktemp -d /tmp/nixmatrix-build.XXXXXX)
trap 'rm -rf "$build"' EXIT
CGO_ENABLED=0 go build -o "$build/nixpeer" ./cmd/agent
CGO_ENABLED=0 go test -c -o "$build/agent.test" ./cmd/agent
CGO_ENABLED=0 go test -c -o "$build/nix.test" ./pkg/nix
CGO_ENABLED=0 go test -c -o "$build/probe.test" ./pkg/probe

failed=()
for suite in "${suites[@]}"; do
  root=$(scripts/nixroot.sh prepare "$suite")
  version=$(scripts/nixroot.sh version "$suite")
  echo "=== Nix $version (Debian $suite)"
  dst=$root/opt/nixpeer-test
  rm -rf --one-file-system "$dst"
  mkdir -p "$dst/bin"
  cp "$build/nixpeer" "$build/agent.test" "$build/nix.test" "$build/probe.test" "$dst/bin/"
  # The object store of the cache tier's tests (scripts/prepare.sh seaweedfs).
  if weed=$(command -v weed); then cp "$(readlink -f "$weed")" "$dst/bin/weed"; fi
  # The tests read files of the repository relative to their package.
  git ls-files -z cmd/agent pkg/nix pkg/probe configs systemd | tar --null -T - -cf - | tar -C "$dst" -xf -
  # pkg/nix whole: its tests of real Nix reading back what nixpeer writes.
  cmd="cd /opt/nixpeer-test/pkg/nix && ../../bin/nix.test -test.v -test.count=1"
  # pkg/probe: the handshakes with this Nix's own daemon, and what it says
  # of trusting nix-ssh.
  cmd="$cmd && cd ../probe && ../../bin/probe.test -test.v -test.count=1 -test.run '^(TestProbeServes|TestProbeSaysWhetherTheDaemonTrustsNixSSH)\$'"
  cmd="$cmd && cd ../../cmd/agent && ../../bin/agent.test -test.v -test.count=1 -test.timeout=6m -test.run '$run'"
  if $bench; then
    cmd="cd /opt/nixpeer-test/cmd/agent && ../../bin/agent.test -test.run '^\$' -test.bench FleetConverges -test.benchtime 10x -test.count 3"
    cmd="$cmd && for i in 1 2; do ../../bin/nixpeer demo | grep -E 'Both agents Ready|fetching took'; done"
  fi
  if scripts/nixroot.sh run "$suite" env CI="${CI:-}" NIXPEER_BIN=/opt/nixpeer-test/bin/nixpeer \
      PATH=/opt/nixpeer-test/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      /bin/sh -c "$cmd" 2>&1 | grep -v -E '^=== (RUN|PAUSE|CONT|NAME)' | sed "s/^/[nix $version] /"; then
    echo "=== Nix $version (Debian $suite): ok"
  else
    echo "=== Nix $version (Debian $suite): FAIL"
    failed+=("Nix $version (Debian $suite)")
  fi
  rm -rf --one-file-system "$dst"
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "nixmatrix: failed on ${failed[*]}" >&2
  exit 1
fi
