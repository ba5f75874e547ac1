package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nixpeer/nixpeer/internal/testenv"
	"github.com/nixpeer/nixpeer/pkg/api"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// BenchmarkRotateFleet runs one staging host (its agent, real sshd, and a
// nix-daemon its apply restarts, on 127.0.0.2) and N production agents
// (10 unless NIXPEER_FLEET_N says otherwise), waits until all are Ready,
// then rotates staging's signing key and reports the time from `rotate
// cache-key` to the old key retired on staging and gone from every
// consumer's settings; the first consumer fetches a path from staging
// throughout, and a failed fetch fails the benchmark. Staging re-signs
// every path of the machine's store with a good signature of its old key.
//
//	sudo go test -run '^$' -bench '^BenchmarkRotateFleet$' -benchtime 1x -count 3 ./cmd/agent/
func BenchmarkRotateFleet(b *testing.B) {
	testenv.RequireRoot(b)
	testenv.Require(b, "nix", "nix-daemon", "sshd")
	testenv.RequireNixSSHUser(b)
	n := 10
	if v := os.Getenv("NIXPEER_FLEET_N"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 || n > 1000 {
			b.Fatalf("NIXPEER_FLEET_N=%q: want 1 to 1000", v)
		}
	}
	var total time.Duration
	for range b.N {
		total += rotateFleet(b, n)
	}
	b.ReportMetric(total.Seconds()/float64(b.N), "s/rotation")
	b.ReportMetric(0, "ns/op")
}

func rotateFleet(b *testing.B, n int) time.Duration {
	f := prepareFleet(b, testenv.FreePort(b, "127.0.0.2"), "ssh")
	restart := f.daemon.RestartCommand()
	quoted := make([]string, len(restart))
	for i, a := range restart {
		quoted[i] = strconv.Quote(a)
	}
	yaml := strings.Replace(fleetYAML(f.port, n, ""), `apply: ["true"]`, "apply: ["+strings.Join(quoted, ", ")+"]", 1)
	writeFile(b, f.config, []byte(yaml))
	roots := make([]string, n)
	for i := range roots {
		roots[i] = b.TempDir()
		os.MkdirAll(filepath.Join(roots[i], "etc/nix"), 0o755)
		testenv.WriteNixConf(b, filepath.Join(roots[i], "etc/nix"))
	}
	f.stage = startAgent(b, f.S, f.config, "stage", "--log-level", "warn")
	prods := make([]*agent, n)
	var wg sync.WaitGroup
	for i := range prods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			prods[i] = startAgentNoWait(b, roots[i], f.config, fmt.Sprintf("prod-%d", i))
		}()
	}
	wg.Wait()
	f.startSSHD(b)
	waitAll := func(what string, d time.Duration, cond func(*agent, status.Status) bool) {
		for _, a := range append([]*agent{f.stage}, prods...) {
			if st, ok := waitQuietly(a, d, func(st status.Status) bool { return cond(a, st) }); !ok {
				b.Fatalf("%s: %s not there: %+v", what, a.root, st.Conditions)
			}
		}
	}
	waitAll("all Ready", 3*time.Minute, func(_ *agent, st status.Status) bool { return ready(st) })

	// The first consumer fetches a path from staging throughout: not one
	// fetch may fail.
	path := testenv.BuildPath(b, f.daemon, "nixpeer-rotate-fleet", "rotated "+strconv.FormatInt(time.Now().UnixNano(), 10))
	first := *f
	first.P = roots[0]
	stopFetching := first.fetchLoop(b, path)

	start := time.Now()
	if _, err := f.stage.client.Key(context.Background(), api.KeyRequest{Key: "cache-key", Action: "rotate"}); err != nil {
		b.Fatal(err)
	}
	waitAll("rotated", 3*time.Minute, func(a *agent, st status.Status) bool {
		if a == f.stage {
			_, err := os.Stat(filepath.Join(f.S, "var/lib/nixpeer/keys/cache-retired/127.0.0.2.pem"))
			return err == nil && st.Rotation == nil && ready(st)
		}
		conf, _ := os.ReadFile(filepath.Join(a.root, "etc/nix/nixpeer.conf"))
		return ready(st) && strings.Contains(string(conf), "127.0.0.2-g2:") && !strings.Contains(string(conf), "127.0.0.2:")
	})
	took := time.Since(start)
	fetches, failures := stopFetching()
	if len(failures) > 0 || fetches == 0 {
		b.Fatalf("%d of %d fetches by prod-0 during the rotation failed: %v", len(failures), fetches, failures)
	}
	b.Logf("N=%d: rotate cache-key to the old key retired everywhere: %.2f s; %d fetches by prod-0 meanwhile, none failed", n, took.Seconds(), fetches)
	return took
}
