package reconcile

import (
	"fmt"
	"time"

	"github.com/nixpeer/nixpeer/pkg/backoff"
	"github.com/nixpeer/nixpeer/pkg/peer"
	"github.com/nixpeer/nixpeer/pkg/peering"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// peerInput is what the breaker decides on, for one peer whose
// prerequisites hold.
type peerInput struct {
	Now   time.Time
	State peering.State
	Tuple string
	Probe jobState
	// InUse: the settings on disk have it as a substituter.
	InUse bool
	// Verified: a probe passed with Tuple, in this run or an earlier one.
	Verified bool
	// Trips are when it was withdrawn for going dark, oldest first.
	Trips []time.Time
	// Spread scales the intervals of its probes (see spread); 0 is 1.
	Spread float64
}

type decision struct {
	verdict
	// Verify: record that the peer passed a probe with the tuple.
	Verify bool
	// Probe: start a probe of its sshd now.
	Probe bool
	// Requeue: look again after this long.
	Requeue time.Duration
}

// decide is the circuit breaker of one substituter. Its agent's watch is
// the health signal: a peer that stops answering (silence past the
// keepalive deadline, a connect that times out) is withdrawn at once. One
// that refuses or closes the connection is probed: its sshd may serve
// still. A probe counts only if it started after the connection last came
// up or went down, and after its agent last said that its own sshd serves
// again; a probe that failed counts only if it started after the peer's
// facts last changed. Until there is one, the settings stay as they are
// on disk, except for a peer whose agent says its own check of its sshd
// passes: it is used on that word, and probed later (see firstProbe). A
// peer in use is probed again every ConnectedReprobe while its agent
// answers (its sshd may stop on its own), every CheckedReprobe when its
// agent checks its own sshd and says what it found (it is withdrawn as
// soon as that says its sshd does not serve), every ProbeRefresh while
// only its sshd answers. A peer that served this host before and is
// withdrawn for its health leaves the host Ready: builds go on locally. A
// peer that went dark FlapTrips times within FlapWindow is used again only
// after a hold-down.
func decide(in peerInput) decision {
	st, pr := in.State, in.Probe
	// A failed probe is stale, too, once the peer told something new (it
	// let this host in, its own check passed): tried again at once.
	fresh := pr.done(in.Tuple) && !pr.Started.Before(st.Since) && !pr.Started.Before(st.Recovered) &&
		(pr.Err == "" || !pr.Started.Before(st.FactsAt))
	served := in.Verified
	check := ownCheck(st)
	reprobe := ConnectedReprobe
	if check != nil {
		reprobe = CheckedReprobe
	}
	var d decision
	switch {
	case !st.Connected && st.NoAnswer && !served:
		d.verdict = verdict{State: status.PeerWaitingForFacts,
			Message: fmt.Sprintf("its agent does not answer%s (%s), and it never served this host", since(st.Since), st.LastError)}
	case !st.Connected && st.NoAnswer:
		d.verdict = verdict{State: status.PeerUnreachable, Ready: true,
			Message: fmt.Sprintf("its agent stopped answering%s (%s); its substituter is withdrawn and builds go on locally until it answers again",
				since(st.Since), st.LastError)}
	case check != nil && !check.Serving:
		d.verdict = verdict{State: status.PeerProbeFailed, Ready: served,
			Message: fmt.Sprintf("its agent says its own sshd does not serve nix-ssh (%s); its substituter is withdrawn and builds go on locally until it does", check.Reason)}
	case fresh && pr.Err == "" && st.Connected:
		d.verdict = verdict{Use: true, State: status.PeerServing, Ready: true, Message: "serves this host; verified"}
		d.Probe, d.Requeue = due(in.Now, pr.Ended.Add(scaled(reprobe, in.Spread)))
	case fresh && pr.Err == "":
		d.verdict = verdict{Use: true, State: status.PeerServing, Ready: true,
			Message: fmt.Sprintf("its agent is unreachable (%s), but its sshd serves this host; probed again every %v", st.LastError, ProbeRefresh)}
		d.Probe, d.Requeue = due(in.Now, pr.Ended.Add(scaled(ProbeRefresh, in.Spread)))
	case fresh && !served:
		d.verdict = verdict{State: status.PeerProbeFailed, Message: probeFailure(pr, in.Spread)}
		d.Probe, d.Requeue = due(in.Now, pr.Ended.Add(scaled(jobRetry.Delay(pr.Failures), in.Spread)))
	case fresh && st.Connected:
		d.verdict = verdict{State: status.PeerProbeFailed, Ready: true,
			Message: "its agent answers, but its sshd no longer serves this host: " + probeFailure(pr, in.Spread) + "; its substituter is withdrawn and builds go on locally"}
		d.Probe, d.Requeue = due(in.Now, pr.Ended.Add(scaled(jobRetry.Delay(pr.Failures), in.Spread)))
	case fresh:
		d.verdict = verdict{State: status.PeerUnreachable, Ready: true,
			Message: fmt.Sprintf("its agent is unreachable%s (%s) and its sshd does not serve: %s; its substituter is withdrawn and builds go on locally",
				since(st.Since), st.LastError, probeFailure(pr, in.Spread))}
		d.Probe, d.Requeue = due(in.Now, pr.Ended.Add(scaled(jobRetry.Delay(pr.Failures), in.Spread)))
	case check != nil && check.Serving && st.Connected && !pr.done(in.Tuple) && !pr.Running:
		// Its agent's word, over a connection that proved its host key:
		// its sshd serves nix-ssh, and it lets this host's key in. A
		// consumer start costs the serving host nothing; this host's own
		// probe (a login and a Nix handshake there) follows, spread over
		// CheckedReprobe so that a fleet started at once does not probe
		// at once, and withdraws the peer if it fails.
		d.verdict = verdict{Use: true, State: status.PeerServing, Ready: true,
			Message: "its agent's own check of its sshd passes; this host probes it too, within " + CheckedReprobe.String()}
		d.Probe, d.Requeue = due(in.Now, st.Since.Add(firstProbe(in.Spread)))
	default:
		// Not probed since the connection last changed: probe, and keep
		// the settings as they are meanwhile.
		d.verdict = verdict{Use: in.InUse, State: status.PeerProbing, Ready: in.InUse || served, Message: "probing its sshd"}
		d.Probe = !pr.Running
	}
	d.Verify = fresh && pr.Err == "" && !in.Verified && (check == nil || check.Serving)
	if d.Use && !in.InUse {
		if until, n := holdDown(in.Trips, in.Now); in.Now.Before(until) {
			d.verdict = verdict{State: status.PeerUnreachable, Ready: true,
				Message: fmt.Sprintf("it went dark %d times in the last %v; it is used again from %s", n, FlapWindow, until.UTC().Format(time.RFC3339))}
			d.Requeue = until.Sub(in.Now)
		}
	}
	// Withdrawn for its health, not for a setting: that counts as a trip.
	d.Trip = !d.Use && in.InUse && d.Ready
	return d
}

// firstProbe is when, after it connected, this host first probes a peer
// whose own check says it serves: from 0 to CheckedReprobe, placed by
// spread (see spread; 0 is CheckedReprobe).
func firstProbe(spread float64) time.Duration {
	if spread == 0 {
		return CheckedReprobe
	}
	return time.Duration(float64(CheckedReprobe) * (spread - 0.75) * 4)
}

// ownCheck is what a connected peer's agent last said of its own sshd,
// nil when it says nothing (or is not connected).
func ownCheck(st peering.State) *peer.ServeCheck {
	if !st.Connected || st.Facts == nil || st.Facts.Serve == nil {
		return nil
	}
	return st.Facts.Serve.Check
}

// probeFailure says why the last probe failed and when the next one is.
func probeFailure(pr jobState, spread float64) string {
	return fmt.Sprintf("%s (probed again from %s)", pr.Err, pr.Ended.Add(scaled(jobRetry.Delay(pr.Failures), spread)).UTC().Format(time.RFC3339))
}

// due reports whether t has come, or else how long until it does.
func due(now, t time.Time) (bool, time.Duration) {
	if !now.Before(t) {
		return true, 0
	}
	return false, t.Sub(now)
}

// holdDown is until when a peer that tripped at trips (oldest first) is
// held down, and how many trips of FlapWindow count.
func holdDown(trips []time.Time, now time.Time) (time.Time, int) {
	recent := recentTrips(trips, now)
	if len(recent) < FlapTrips {
		return time.Time{}, len(recent)
	}
	hold := backoff.Policy{Base: FlapHold, Cap: FlapHoldMax}.Delay(len(recent) - FlapTrips + 1)
	return recent[len(recent)-1].Add(hold), len(recent)
}

// tripsRecord is the breaker's memory once the settings that withdraw
// tripped are written: those peers added, old trips forgotten; changed
// is false when it stays as it is.
func tripsRecord(o *Observation, tripped []string) (trips map[string][]time.Time, changed bool) {
	trips = map[string][]time.Time{}
	changed = len(tripped) > 0
	for name, t := range o.Trips {
		if r := recentTrips(t, o.Now); len(r) > 0 {
			trips[name] = r
		}
		changed = changed || len(trips[name]) != len(t)
	}
	for _, name := range tripped {
		trips[name] = append(trips[name], o.Now)
	}
	return trips, changed
}

// recentTrips are the trips within FlapWindow of now.
func recentTrips(trips []time.Time, now time.Time) []time.Time {
	for i, t := range trips {
		if now.Sub(t) < FlapWindow {
			return trips[i:]
		}
	}
	return nil
}

func since(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return " since " + t.UTC().Format(time.RFC3339)
}
