// Package metrics exports the agent's state as Prometheus metrics. What
// the status says (Ready, conditions, peers, generations) is read from
// the status at each scrape, so that a metric never outlives what the
// agent last observed; durations and counts of reconciles and probes are
// observed as they happen.
package metrics

import (
	"context"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/nixpeer/nixpeer/pkg/probe"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// Metrics is the agent's registry.
type Metrics struct {
	reg        *prometheus.Registry
	reconciles *prometheus.CounterVec
	reconcile  prometheus.Histogram
	probes     *prometheus.HistogramVec
}

// New returns the metrics of an agent whose status st returns.
func New(st func() status.Status) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		reconciles: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nixpeer_reconciles_total",
			Help: "Reconcile passes, by result (ok or error)."}, []string{"result"}),
		reconcile: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "nixpeer_reconcile_duration_seconds",
			Help: "How long a reconcile pass took.", Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10)}),
		probes: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "nixpeer_probe_duration_seconds",
			Help:    "How long a probe of a serving host's sshd (a login and the Nix handshake) took, by result (ok or failed).",
			Buckets: prometheus.ExponentialBuckets(0.01, 2.5, 8)}, []string{"result"}),
	}
	m.reg.MustRegister(m.reconciles, m.reconcile, m.probes, &statusCollector{status: st},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, r := range []string{"ok", "error"} {
		m.reconciles.WithLabelValues(r)
	}
	for _, r := range []string{"ok", "failed"} {
		m.probes.WithLabelValues(r)
	}
	return m
}

// Handler serves the metrics in Prometheus' text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// Reconciler is a reconcile.Reconciler whose passes are observed.
type Reconciler struct {
	Inner interface {
		Reconcile(ctx context.Context) (time.Duration, error)
	}
	M *Metrics
}

// Reconcile runs a pass of Inner and observes it.
func (r Reconciler) Reconcile(ctx context.Context) (time.Duration, error) {
	start := time.Now()
	d, err := r.Inner.Reconcile(ctx)
	result := "ok"
	if err != nil {
		result = "error"
	}
	r.M.reconciles.WithLabelValues(result).Inc()
	r.M.reconcile.Observe(time.Since(start).Seconds())
	return d, err
}

// Prober is a reconcile.Prober whose probes are observed.
type Prober struct {
	Inner interface {
		Probe(ctx context.Context, t probe.Target) (probe.Result, error)
	}
	M *Metrics
}

// Probe probes with Inner and observes it.
func (p Prober) Probe(ctx context.Context, t probe.Target) (probe.Result, error) {
	start := time.Now()
	res, err := p.Inner.Probe(ctx, t)
	result := "ok"
	if err != nil {
		result = "failed"
	}
	p.M.probes.WithLabelValues(result).Observe(time.Since(start).Seconds())
	return res, err
}
