package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nixpeer/nixpeer/internal/testenv"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// BenchmarkRenameSaveToReconciled measures the time from an editor's
// rename-save of the desired-state file to the daemon reporting the new
// generation reconciled, over the socket. It reports the median and the
// 90th percentile per edit.
//
//	go test -run '^$' -bench RenameSave -benchtime 50x ./cmd/agent/
func BenchmarkRenameSaveToReconciled(b *testing.B) {
	root := b.TempDir()
	config := filepath.Join(root, "etc/nixpeer/desired.yaml")
	os.MkdirAll(filepath.Dir(config), 0o755)
	os.WriteFile(config, []byte(fleet(testenv.FreePort(b, "127.0.0.2"), "")), 0o644)
	a := startAgent(b, root, config, "stage", "--log-level", "warn", noSSHDCheck) // no sshd here
	st := a.waitFor("Ready", ready)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		want := st.Generation + 1
		start := time.Now()
		renameSave(b, config, fleet(testenv.FreePort(b, "127.0.0.2"), ""))
		for !(st.Generation == want && ready(st)) {
			var err error
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			st, err = a.client.WaitReconciled(ctx, st.LastReconcile, 5*time.Second)
			cancel()
			if err != nil {
				b.Fatal(err)
			}
			if time.Since(start) > 10*time.Second {
				b.Fatalf("edit %d not reconciled within 10s: %+v", i, st)
			}
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(ms(lat[len(lat)/2]), "ms-p50/edit")
	b.ReportMetric(ms(lat[len(lat)*9/10]), "ms-p90/edit")
	b.ReportMetric(0, "ns/op")
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// BenchmarkFleetConverges starts a staging and a production agent at once,
// with staging's sshd and nix-daemon already up (a host that has its SSH
// host key, as NixOS hosts do), and measures by the agents' own clocks
// the time from starting both agents to both Ready, and from staging
// Ready to production Ready. It reports medians.
//
//	go test -run '^$' -bench FleetConverges -benchtime 10x ./cmd/agent/
func BenchmarkFleetConverges(b *testing.B) {
	testenv.RequireRoot(b)
	testenv.Require(b, "nix", "nix-daemon", "sshd", "ssh-keygen")
	testenv.RequireNixSSHUser(b)
	var total, handoff []time.Duration
	var rss []float64 // MiB, of each agent once both are Ready
	for i := 0; i < b.N; i++ {
		f := prepareFleet(b, testenv.FreePort(b, "127.0.0.2"), "ssh")
		f.startSSHDFirst(b)
		start := time.Now()
		f.stage = startAgent(b, f.S, f.config, "stage", "--log-level", "warn")
		f.prod = startAgent(b, f.P, f.config, "prod", "--log-level", "warn")
		s := f.stage.waitFor("staging Ready", ready)
		p := f.prod.waitFor("production Ready", ready)
		sr, pr := readyAt(b, s), readyAt(b, p)
		last := sr
		if pr.After(sr) {
			last = pr
		}
		total = append(total, last.Sub(start))
		handoff = append(handoff, pr.Sub(sr))
		for _, a := range []*agent{f.stage, f.prod} {
			rss = append(rss, float64(vmRSS(b, a.cmd.Process.Pid))/1024)
		}
		f.stage.stop()
		f.prod.stop()
		f.sshd.Stop(b)
	}
	b.ReportMetric(ms(median(total)), "ms-p50/both-ready")
	b.ReportMetric(ms(median(handoff)), "ms-p50/stage-to-prod")
	sort.Float64s(rss)
	b.ReportMetric(rss[len(rss)/2], "MiB-p50-rss/agent")
	b.ReportMetric(0, "ns/op")
}

// readyAt is when the agent's Ready condition last turned True.
func readyAt(b *testing.B, st status.Status) time.Time {
	c := status.Find(st.Conditions, status.Ready)
	if c == nil || c.Status != status.True {
		b.Fatalf("not Ready: %+v", st.Conditions)
	}
	return c.LastTransitionTime
}

func median(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// vmRSS is the resident set size of process pid, in KiB.
func vmRSS(b testing.TB, pid int) int {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kib, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			if err != nil {
				b.Fatal(err)
			}
			return kib
		}
	}
	b.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}

// BenchmarkDarkStaging measures the circuit breaker with a staging host
// that drops every packet (an iptables DROP rule the benchmark sets and
// takes away): how long after staging goes dark its substituter has left
// production's live Nix settings, how long after staging answers again it
// is back, and what production's builds cost once the breaker has
// tripped: a derivation with N fresh inputs (N = 5 and 50) built with
// production's settings, against the same build with no staging
// substituter at all. It reports medians.
//
//	sudo go test -run '^$' -bench DarkStaging -benchtime 5x ./cmd/agent/
//
// With NIXPEER_BENCH_UNTRIPPED=1 it also builds N = 5 with staging still
// configured while dark: what a production build cost before the breaker.
func BenchmarkDarkStaging(b *testing.B) {
	var trip, backAfterAnswer, backAfterLight []time.Duration
	builds := map[string][]time.Duration{}
	for i := 0; i < b.N; i++ {
		// A fleet of its own each time: going dark every few seconds is
		// flapping, which the breaker holds down.
		f := darkFleet(b, "127.0.0.22", "127.0.0.23")
		conf := filepath.Join(f.P, "etc/nix/nixpeer.conf")
		build := func(label, confDir string, n int) {
			start := time.Now()
			cmd := exec.Command("nix-build", "--no-out-link", "-E", freshClosure("nixpeer-bench-"+nonce(), n))
			cmd.Env = append(os.Environ(), "NIX_REMOTE=", "NIX_CONF_DIR="+confDir, "NIX_SSHOPTS=-F "+filepath.Join(f.P, "root/.ssh/config"))
			if out, err := cmd.CombinedOutput(); err != nil {
				b.Fatalf("build %s: %v\n%s", label, err, out)
			}
			builds[label] = append(builds[label], time.Since(start))
		}
		// Production's settings without any staging substituter, and with
		// staging still in them.
		base, untripped := b.TempDir(), b.TempDir()
		for _, dir := range []string{base, untripped} {
			writeFile(b, filepath.Join(dir, "nix.conf"), readFile(b, filepath.Join(f.P, "etc/nix/nix.conf")))
		}
		writeFile(b, filepath.Join(base, "nixpeer.conf"), []byte("fallback = true\n"))
		writeFile(b, filepath.Join(untripped, "nixpeer.conf"), readFile(b, conf))

		dark := time.Now()
		light := testenv.Dark(b, "127.0.0.22")
		st := f.prod.waitWithin(60*time.Second, "the breaker tripped", func(s status.Status) bool {
			return ready(s) && s.Peers[0].State == status.PeerUnreachable && !bytes.Contains(readFile(b, conf), []byte("ssh://"))
		})
		trip = append(trip, applied(b, st).Sub(dark))
		for _, n := range []int{5, 50} {
			build(fmt.Sprintf("none-%d", n), base, n)
			build(fmt.Sprintf("tripped-%d", n), filepath.Join(f.P, "etc/nix"), n)
		}
		if i == 0 && os.Getenv("NIXPEER_BENCH_UNTRIPPED") == "1" {
			build("untripped-5", untripped, 5)
		}
		lit := time.Now()
		light()
		st = f.prod.waitWithin(60*time.Second, "staging used again", func(s status.Status) bool {
			return ready(s) && s.Peers[0].State == status.PeerServing && bytes.Contains(readFile(b, conf), []byte("ssh://"))
		})
		backAfterLight = append(backAfterLight, applied(b, st).Sub(lit))
		backAfterAnswer = append(backAfterAnswer, applied(b, st).Sub(*st.Peers[0].Since))
		f.stage.stop()
		f.prod.stop()
		f.sshd.Stop(b)
	}
	b.ReportMetric(median(trip).Seconds(), "s-p50/dark-to-withdrawn")
	b.ReportMetric(ms(median(backAfterAnswer)), "ms-p50/answer-to-back")
	b.ReportMetric(median(backAfterLight).Seconds(), "s-p50/light-to-back")
	for _, n := range []string{"5", "50"} {
		none, tripped := median(builds["none-"+n]), median(builds["tripped-"+n])
		b.ReportMetric(none.Seconds(), "s-p50/build-"+n+"-no-staging")
		b.ReportMetric(tripped.Seconds(), "s-p50/build-"+n+"-tripped")
		b.ReportMetric(float64(tripped)/float64(none), "ratio-"+n+"/tripped-vs-none")
	}
	if u := builds["untripped-5"]; len(u) > 0 {
		b.ReportMetric(u[0].Seconds(), "s/build-5-untripped")
	}
	b.ReportMetric(0, "ns/op")
}

// applied is when NixSettingsApplied last turned True.
func applied(b *testing.B, st status.Status) time.Time {
	c := status.Find(st.Conditions, status.NixSettingsApplied)
	if c == nil || c.Status != status.True {
		b.Fatalf("NixSettingsApplied not True: %+v", c)
	}
	return c.LastTransitionTime
}

func writeFile(b testing.TB, path string, content []byte) {
	if err := os.WriteFile(path, content, 0o644); err != nil {
		b.Fatal(err)
	}
}
