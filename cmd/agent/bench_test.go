package main

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"
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
	os.WriteFile(config, []byte(fleet(7000, "")), 0o644)
	a := startAgent(b, root, config, "stage", "--log-level", "warn")
	st := a.waitFor("Ready", ready)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		want := st.Generation + 1
		start := time.Now()
		renameSave(b, config, fleet(7001+i, ""))
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
