package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.uber.org/zap"

	"github.com/nixpeer/nixpeer/internal/testenv"
	"github.com/nixpeer/nixpeer/pkg/metrics"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// scrape fetches and parses /metrics, over the status socket when
// socket is set, else over TCP at addr.
func scrape(t testing.TB, socket, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	url := "http://" + addr + "/metrics"
	if socket != "" {
		client.Transport = &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}}
		url = "http://nixpeer/metrics"
	}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse the metrics of %s: %v", url, err)
	}
	return fams
}

// value is the value of the metric of family name whose labels include
// labels (name=value pairs); ok is false when there is none.
func value(fams map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.Metric {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, l := range m.Label {
				if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		}
	}
	return 0, false
}

// TestMetrics: production's /metrics, on its status socket and over TCP,
// parses as Prometheus text and says what its status says; after staging
// goes dark, its substituter is no longer live.
func TestMetrics(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.Require(t, "nix", "nix-store", "nix-daemon", "nix-build", "sshd", "iptables")
	testenv.RequireNixSSHUser(t)
	const stageAddr, prodAddr = "127.0.0.14", "127.0.0.15"
	f := prepareFleetAt(t, stageAddr, prodAddr, testenv.FreePort(t, stageAddr), "ssh")
	metricsAddr := fmt.Sprintf("%s:%d", prodAddr, testenv.FreePort(t, prodAddr))
	f.stage = startAgent(t, f.S, f.config, "stage", "--log-level", "info")
	f.prod = startAgent(t, f.P, f.config, "prod", "--log-level", "info", "--metrics-listen", metricsAddr)
	f.startSSHD(t)
	f.stage.waitFor("staging Ready", ready)
	st := f.prod.waitFor("production Ready", ready)

	for _, fams := range []map[string]*dto.MetricFamily{scrape(t, f.prod.socket, ""), scrape(t, "", metricsAddr)} {
		for _, c := range []struct {
			name   string
			labels []string
			want   func(float64) bool
		}{
			{"nixpeer_ready", nil, func(v float64) bool { return v == 1 }},
			{"nixpeer_condition", []string{"condition", "SubstitutersReady"}, func(v float64) bool { return v == 1 }},
			{"nixpeer_condition", []string{"condition", "NixSettingsApplied", "reason", "Applied"}, func(v float64) bool { return v == 1 }},
			{"nixpeer_generation", nil, func(v float64) bool { return v == float64(st.Generation) }},
			{"nixpeer_observed_generation", nil, func(v float64) bool { return v == float64(st.ObservedGeneration) }},
			{"nixpeer_peer_state", []string{"peer", "stage", "role", "substituter", "state", "Serving"}, func(v float64) bool { return v == 1 }},
			{"nixpeer_peer_substituter_live", []string{"peer", "stage"}, func(v float64) bool { return v == 1 }},
			{"nixpeer_peer_connected", []string{"peer", "stage"}, func(v float64) bool { return v == 1 }},
			{"nixpeer_peer_trust", []string{"peer", "stage", "trust", "tofu", "refused", "false"}, func(v float64) bool { return v == 1 }},
			{"nixpeer_peer_last_heard_timestamp_seconds", []string{"peer", "stage"}, func(v float64) bool { return v > float64(time.Now().Add(-time.Minute).Unix()) }},
			{"nixpeer_reconciles_total", []string{"result", "ok"}, func(v float64) bool { return v >= 1 }},
			{"nixpeer_reconcile_duration_seconds", nil, func(v float64) bool { return v >= 1 }},
			{"nixpeer_probe_duration_seconds", []string{"result", "ok"}, func(v float64) bool { return v >= 1 }},
		} {
			if v, ok := value(fams, c.name, c.labels...); !ok || !c.want(v) {
				t.Errorf("%s%v = %v (found %v)", c.name, c.labels, v, ok)
			}
		}
	}

	testenv.Dark(t, stageAddr)
	f.prod.waitFor("staging withdrawn", func(s status.Status) bool {
		return len(s.Peers) == 1 && s.Peers[0].State == status.PeerUnreachable
	})
	fams := scrape(t, f.prod.socket, "")
	if v, ok := value(fams, "nixpeer_peer_substituter_live", "peer", "stage"); !ok || v != 0 {
		t.Errorf("nixpeer_peer_substituter_live with staging dark = %v (found %v), want 0", v, ok)
	}
	if v, ok := value(fams, "nixpeer_peer_state", "peer", "stage", "state", "Unreachable"); !ok || v != 1 {
		t.Errorf("nixpeer_peer_state Unreachable = %v (found %v)", v, ok)
	}
}

// TestMetricsListenerIsBounded: --metrics-listen is open to whoever
// reaches it. Connections that send nothing take at most maxMetricsConns
// slots and are closed by the server's read timeout; meanwhile another
// scrape waits (for the first second of their 5 s, at least), and is
// answered once they are gone.
func TestMetricsListenerIsBounded(t *testing.T) {
	addr, stop, err := serveMetrics(zap.NewNop(), "127.0.0.1:0", metrics.New(func() status.Status { return status.Status{Host: "h"} }))
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	var idle []net.Conn
	for range maxMetricsConns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		idle = append(idle, c)
	}
	answered := make(chan error, 1)
	go func() {
		resp, err := (&http.Client{Timeout: time.Minute}).Get("http://" + addr + "/metrics")
		if err == nil {
			resp.Body.Close()
		}
		answered <- err
	}()
	// The idle connections hold every slot for the server's 5 s read
	// timeout: in the first second, the scrape is not answered.
	select {
	case err := <-answered:
		t.Fatalf("a scrape was answered (%v) while %d idle connections held every slot", err, maxMetricsConns)
	case <-time.After(time.Second):
	}
	for i, c := range idle {
		// Closed by the server (EOF), not by this test's deadline.
		c.SetReadDeadline(time.Now().Add(time.Minute))
		if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("idle connection %d: read %v; want it closed by the server's read timeout", i, err)
		}
	}
	if err := <-answered; err != nil {
		t.Fatalf("the scrape once the idle connections were closed: %v", err)
	}
}
