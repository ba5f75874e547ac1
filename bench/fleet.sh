#!/usr/bin/env bash
# The fleet benchmark: one staging host (agent, real sshd and nix-daemon)
# and N production agents on loopback addresses of their own, for
# N = 10, 100 and 300 (or the sizes given as arguments), each RUNS times
# (default 3), then the anonymous flood at N = 10. Root, and what
# scripts/test.sh installs. Run it on an otherwise idle machine: it prints
# `uptime` before each run so that you can tell.
#
#   sudo bench/fleet.sh            # 10 100 300
#   sudo RUNS=5 bench/fleet.sh 100
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-3}
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(10 100 300)

bin=$(mktemp -d)/agent.test
go test -c -o "$bin" ./cmd/agent/
cd cmd/agent
for n in "${sizes[@]}"; do
  for r in $(seq "$runs"); do
    echo "# N=$n run $r/$runs; $(uptime)"
    NIXPEER_FLEET_N=$n "$bin" -test.run '^$' -test.bench '^BenchmarkFleet$' \
      -test.benchtime 1x -test.timeout 30m | grep '^BenchmarkFleet'
  done
done
for r in $(seq "$runs"); do
  echo "# flood, N=10 run $r/$runs; $(uptime)"
  NIXPEER_FLEET_FLOOD=1 NIXPEER_FLEET_N=10 "$bin" -test.run '^$' -test.bench '^BenchmarkFleet$' \
    -test.benchtime 1x -test.timeout 30m | grep '^BenchmarkFleet'
done
