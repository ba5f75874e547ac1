package main

import (
	"slices"
	"testing"
	"time"

	"github.com/nixpeer/nixpeer/internal/testenv"
)

// BenchmarkStartedApart starts a staging and a production agent 2 s apart,
// staging first in half of the runs and production first in the other
// half (staging's sshd and nix-daemon up all along), and measures the time
// from the second start to both Ready. It reports the median and the
// worst of each order, and in how many runs both were Ready within 1 s.
//
//	sudo go test -run '^$' -bench StartedApart -benchtime 10x ./cmd/agent/
func BenchmarkStartedApart(b *testing.B) {
	testenv.RequireRoot(b)
	testenv.Require(b, "nix", "nix-daemon", "sshd", "ssh-keygen")
	testenv.RequireNixSSHUser(b)
	const apart = 2 * time.Second
	took := map[string][]time.Duration{}
	within := 0
	for i := range b.N {
		f := prepareFleet(b, testenv.FreePort(b, "127.0.0.2"), "ssh")
		f.startSSHDFirst(b)
		order := "stage-first"
		start := func(first bool) *agent {
			if first == (i%2 == 0) {
				f.stage = startAgent(b, f.S, f.config, "stage", "--log-level", "warn")
				return f.stage
			}
			f.prod = startAgent(b, f.P, f.config, "prod", "--log-level", "warn")
			return f.prod
		}
		if i%2 == 1 {
			order = "prod-first"
		}
		start(true)
		<-time.After(apart) // the scenario: the second host comes up 2 s later
		second := time.Now()
		start(false)
		sr := readyAt(b, f.stage.waitFor("staging Ready", ready))
		pr := readyAt(b, f.prod.waitFor("production Ready", ready))
		d := max(sr.Sub(second), pr.Sub(second), 0)
		took[order] = append(took[order], d)
		if d <= time.Second {
			within++
		}
		f.stage.stop()
		f.prod.stop()
		f.sshd.Stop(b)
	}
	for order, d := range took {
		b.ReportMetric(ms(median(d)), "ms-p50/"+order)
		b.ReportMetric(ms(slices.Max(d)), "ms-max/"+order)
	}
	b.ReportMetric(float64(within), "runs-within-1s")
	b.ReportMetric(float64(b.N), "runs")
	b.ReportMetric(0, "ns/op")
}
