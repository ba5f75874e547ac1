package metrics

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nixpeer/nixpeer/pkg/status"
)

var (
	descReady = prometheus.NewDesc("nixpeer_ready",
		"1 when the host is Ready: every condition True and the desired state reconciled.", nil, nil)
	descCondition = prometheus.NewDesc("nixpeer_condition",
		"1 when the condition is True, 0 otherwise.", []string{"condition", "reason"}, nil)
	descGeneration = prometheus.NewDesc("nixpeer_generation",
		"The generation of the desired state the agent knows.", nil, nil)
	descObserved = prometheus.NewDesc("nixpeer_observed_generation",
		"The generation of the desired state last reconciled.", nil, nil)
	descLastReconcile = prometheus.NewDesc("nixpeer_last_reconcile_timestamp_seconds",
		"When the last reconcile pass ended.", nil, nil)
	descPeerState = prometheus.NewDesc("nixpeer_peer_state",
		"1 for the state each peer is in (WaitingForFacts, Probing, Serving, Unreachable, ...).", []string{"peer", "role", "state"}, nil)
	descSubstituter = prometheus.NewDesc("nixpeer_peer_substituter_live",
		"1 while the peer's substituter is in this host's live Nix settings (state Serving), 0 while it is not.", []string{"peer"}, nil)
	descConnected = prometheus.NewDesc("nixpeer_peer_connected",
		"1 while a watch of the peer's agent is open.", []string{"peer", "role"}, nil)
	descTrust = prometheus.NewDesc("nixpeer_peer_trust",
		"1 for how the peer's host key is trusted (pinned, approved, tofu, none) and whether a key is refused.", []string{"peer", "trust", "refused"}, nil)
	descPending = prometheus.NewDesc("nixpeer_peer_host_key_pending",
		"1 while the peer offers a host key that awaits an operator's approval (nixpeer trust pending).", []string{"peer", "fingerprint"}, nil)
	descWarnings = prometheus.NewDesc("nixpeer_warnings",
		"How many warnings the status carries (what is wrong without keeping the host from Ready: nixpeer status prints them).", nil, nil)
	descRotation = prometheus.NewDesc("nixpeer_cache_key_rotation_phase",
		"1 for the phase of the rotation of this serving host's signing key under way (MakingKey, Trusting, SigningWithBoth, Resigning, Retiring, Revoking), from key to key; absent when none is.", []string{"phase", "from", "to"}, nil)
	descLastHeard = prometheus.NewDesc("nixpeer_peer_last_heard_timestamp_seconds",
		"When the peer's agent was last heard from: now while its watch is open, else when its connection went down.", []string{"peer", "role"}, nil)
)

// statusCollector reads the status at each scrape.
type statusCollector struct {
	status func() status.Status
}

func (c *statusCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descReady, descCondition, descGeneration, descObserved, descLastReconcile,
		descPeerState, descSubstituter, descConnected, descTrust, descPending, descLastHeard, descWarnings, descRotation} {
		ch <- d
	}
}

func (c *statusCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.status()
	now := time.Now()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	gauge(descReady, b2f(st.Ready))
	for _, cond := range st.Conditions {
		gauge(descCondition, b2f(cond.Status == status.True), cond.Type, cond.Reason)
	}
	gauge(descWarnings, float64(len(st.Warnings)))
	if r := st.Rotation; r != nil {
		gauge(descRotation, 1, r.Phase, r.From, r.To)
	}
	gauge(descGeneration, float64(st.Generation))
	gauge(descObserved, float64(st.ObservedGeneration))
	if !st.LastReconcile.IsZero() {
		gauge(descLastReconcile, float64(st.LastReconcile.UnixNano())/1e9)
	}
	for _, p := range st.Peers {
		gauge(descPeerState, 1, p.Name, p.Role, string(p.State))
		if p.Role == "substituter" {
			gauge(descSubstituter, b2f(p.State == status.PeerServing), p.Name)
		}
		gauge(descConnected, b2f(p.Connected), p.Name, p.Role)
		gauge(descTrust, 1, p.Name, string(p.Trust), strconv.FormatBool(p.RefusedHostKeyFingerprint != ""))
		if p.PendingHostKey != "" {
			gauge(descPending, 1, p.Name, p.RefusedHostKeyFingerprint)
		}
		switch {
		case p.Connected:
			gauge(descLastHeard, float64(now.UnixNano())/1e9, p.Name, p.Role)
		case p.Since != nil:
			gauge(descLastHeard, float64(p.Since.UnixNano())/1e9, p.Name, p.Role)
		}
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
