package reconcile

import (
	"bytes"
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nixpeer/nixpeer/pkg/backoff"
	"github.com/nixpeer/nixpeer/pkg/desired"
	"github.com/nixpeer/nixpeer/pkg/nix"
	"github.com/nixpeer/nixpeer/pkg/peer"
	"github.com/nixpeer/nixpeer/pkg/peering"
	"github.com/nixpeer/nixpeer/pkg/probe"
	"github.com/nixpeer/nixpeer/pkg/sshkeys"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// verdict is what a pass decides about a peer this host fetches from.
type verdict struct {
	// Use: it is a substituter in the settings this pass writes.
	Use bool
	// url is its substituter URL, "" while its keys are not known.
	url     string
	State   status.PeerState
	Message string
	// Ready: the peer is settled (serving, or dark after it served), so
	// it does not keep the host from Ready.
	Ready bool
	// Trip: the pass withdraws a substituter in use because its peer
	// went dark.
	Trip bool
}

// planSubstituters decides, for each peer this host fetches from, whether
// it is a substituter: only while it is verified serving. Then the
// consumers' statuses, and PeersTrusted.
func (pl *planner) planSubstituters() {
	for _, name := range pl.self.SubstituteFrom {
		h := pl.file.Host(name)
		v := pl.substituter(h)
		pl.verdicts[name] = v
		if v.Trip {
			pl.p.Trips = append(pl.p.Trips, name)
		}
		ps := pl.peerStatus(h, status.RoleSubstituter)
		ps.State, ps.Message = v.State, v.Message
		pl.p.Peers = append(pl.p.Peers, ps)
	}
	for _, c := range pl.file.Consumers(pl.self.Name) {
		ps := pl.peerStatus(c, status.RoleConsumer)
		if ps.State != status.PeerHostKeyRefused {
			if k := pl.keys[c.Name].ClientKey; k != nil {
				ps.State, ps.Message = status.PeerKeysKnown, "client key "+ssh.FingerprintSHA256(k)
				ps.Message += pinDrift(c, pl.o.Peers[c.Name].Facts, k)
			} else {
				ps.Message = withLastError(pl.o.Peers[c.Name], "its client key is not known yet")
			}
		}
		pl.p.Peers = append(pl.p.Peers, ps)
	}
	pl.planTrust()
}

// pinDrift notes a consumer whose agent reports another client key than
// the one the file pins.
func pinDrift(c *desired.Host, f *peer.Facts, pinned ssh.PublicKey) string {
	if c.ClientKey == "" || f == nil || f.ClientKey == "" {
		return ""
	}
	told, err := sshkeys.ParsePublicLine(f.ClientKey)
	if err != nil || ssh.FingerprintSHA256(told) == ssh.FingerprintSHA256(pinned) {
		return ""
	}
	return fmt.Sprintf(" (pinned as clientKey; its agent reports %s: update the pin if the host's key changed)", ssh.FingerprintSHA256(told))
}

// peerStatus is what the host knows of a peer, before a verdict.
func (pl *planner) peerStatus(h *desired.Host, role string) status.Peer {
	st, k := pl.o.Peers[h.Name], pl.keys[h.Name]
	trust := st.Trust
	if trust == "" {
		trust = status.TrustNone
	}
	ps := status.Peer{Name: h.Name, Address: h.Address, Role: role, Trust: trust,
		State: status.PeerWaitingForFacts, Connected: st.Connected}
	if k.HostKey != nil {
		ps.HostKeyFingerprint = ssh.FingerprintSHA256(k.HostKey)
	}
	if !st.FactsAt.IsZero() {
		t := st.FactsAt
		ps.FactsAt = &t
	}
	if !st.Since.IsZero() {
		t := st.Since
		ps.Since = &t
	}
	if r := st.Refused; r != nil && r.Reason == peering.RefusedNotApproved {
		ps.State, ps.Reason, ps.RefusedHostKeyFingerprint, ps.PendingHostKey = status.PeerHostKeyRefused, r.Reason, r.Offered, r.Key
		ps.Message = fmt.Sprintf("%s: the peer offers host key %s, which nobody vouched for; nothing is written for %s until you compare it with what \"nixpeer facts\" prints on %s and run \"nixpeer trust approve %s %s\", or pin it as hostKey",
			r.Reason, r.Offered, h.Name, h.Name, h.Name, r.Offered)
	} else if r != nil {
		ps.State, ps.Reason, ps.RefusedHostKeyFingerprint = status.PeerHostKeyRefused, r.Reason, r.Offered
		ps.Message = fmt.Sprintf("%s: the peer offers host key %s", r.Reason, r.Offered)
		if r.Trusted != "" {
			ps.Message += ", but " + r.Trusted + " is trusted"
		}
		ps.Message += fmt.Sprintf("; nothing that depends on %s changes until you pin the key you expect as hostKey or run \"nixpeer trust reset %s\"", h.Name, h.Name)
	}
	return ps
}

// planTrust sets PeersTrusted: False while a peer offers a host key that
// is refused, with both fingerprints.
func (pl *planner) planTrust() {
	if len(pl.p.Peers) == 0 {
		return
	}
	r := pl.add(&Resource{Type: status.PeersTrusted})
	var refused, trusted []string
	for _, ps := range pl.p.Peers {
		switch {
		case ps.State == status.PeerHostKeyRefused:
			refused = append(refused, ps.Name+": "+ps.Message)
			if r.Reason == "" {
				r.Reason = ps.Reason
			}
		case ps.Trust != status.TrustNone:
			how := string(ps.Trust)
			if ps.Trust == status.TrustTOFU {
				how = "tofu: trusted on first use, vouched for by nobody; pin it or use trust: approve"
			}
			trusted = append(trusted, ps.Name+" ("+how+")")
		}
	}
	var rebuilt []string
	for _, ps := range pl.p.Peers {
		if pl.o.Peers[ps.Name].Rebuilt {
			rebuilt = append(rebuilt, ps.Name)
		}
	}
	switch {
	case len(refused) > 0:
		r.Message = strings.Join(refused, "; ")
	case len(trusted) > 0:
		r.Status, r.Reason, r.Message = true, "Trusted", "host keys trusted: "+strings.Join(trusted, ", ")
	default:
		r.Status, r.Reason, r.Message = true, "NothingRefused", "no peer's host key is known or refused yet"
	}
	if len(rebuilt) > 0 {
		r.Message += "; the state store had no record of " + strings.Join(rebuilt, ", ") +
			": trusted again from this host's known_hosts and Nix settings, never a new key on first use"
	}
}

// substituter goes through production's steps for peer h: its facts over
// a trusted connection, its keys, this host's client key authorized and
// applied there, its sshd probed; then the circuit breaker: a peer that
// stops answering is withdrawn, and used again once it answers and
// passes the probe.
func (pl *planner) substituter(h *desired.Host) verdict {
	o := pl.o
	st, k := o.Peers[h.Name], pl.keys[h.Name]
	tuple, url := pl.tuple(h, k)
	v := verdict{url: url}
	inUse := url != "" && bytes.Contains(o.Files[o.platform().settingsFile(o.Layout, pl.self)].Content, []byte(url))
	wait := func(state status.PeerState, msg string) verdict {
		v.State, v.Message = state, msg
		v.Trip = false
		return v
	}
	switch {
	case st.Refused != nil:
		return wait(status.PeerHostKeyRefused, pl.peerStatus(h, status.RoleSubstituter).Message)
	case k.HostKey == nil:
		return wait(status.PeerWaitingForFacts, withLastError(st, "its SSH host key is not known yet"))
	case k.CacheKey == "":
		return wait(status.PeerWaitingForFacts, withLastError(st, cmp.Or(k.CacheKeyRefused, "its binary-cache public key is not known yet")))
	case st.Facts == nil:
		return wait(status.PeerWaitingForFacts, withLastError(st, "its agent has not told whether it authorizes this host"))
	case !o.ClientKey.Usable():
		return wait(status.PeerWaitingForAuthorization, "this host's client key is not usable yet; see KeysReady")
	}
	mine := o.ClientKey.Key.Fingerprint()
	if !authorizes(st.Facts, pl.self.Name, mine) {
		return wait(status.PeerWaitingForAuthorization, withLastError(st,
			fmt.Sprintf("waiting for %s to authorize this host's client key %s and apply it", h.Name, mine)))
	}
	if v.url == "" {
		return wait(status.PeerWaitingForFacts, "its substituter URL cannot be made; see NixSettingsApplied")
	}
	d := decide(peerInput{Now: o.Now, State: st, Tuple: tuple, Probe: o.Probes[h.Name], InUse: inUse,
		Verified: o.Verified[h.Name] == tuple, Trips: o.Trips[h.Name], Spread: spread(pl.self.Name + "/" + h.Name)})
	d.url = v.url
	if d.Verify {
		pl.verified[h.Name] = tuple
	}
	if d.Probe {
		pl.p.Probes = append(pl.p.Probes, probeRequest{peer: h.Name, tuple: tuple, target: probe.Target{
			Address: h.Address, Port: h.SSHPort, Protocol: h.Serve.Protocol,
			Signer: o.ClientKey.Key.Signer, HostKey: k.HostKey, Timeout: ProbeTimeout, From: localIP(pl.self.Address)}})
	}
	if d.Requeue > 0 {
		pl.requeue(d.Requeue)
	}
	return d.verdict
}

// tuple is what a probe of h verifies: where it is, how it serves, the
// keys on both ends. A change of any of them needs a new probe. It also
// returns the substituter URL; both are "" while they cannot be made.
func (pl *planner) tuple(h *desired.Host, k peerKeys) (tuple, url string) {
	if k.HostKey == nil || !pl.o.ClientKey.Usable() {
		return "", ""
	}
	url, err := nix.SubstituterURL(h.Serve.Protocol, h.Address, h.SSHPort, pl.o.Layout.ClientKey, k.HostKey, priority(pl.self, h.Name))
	if err != nil {
		return "", ""
	}
	return fmt.Sprintf("%s %d %s %s %s", h.Address, h.SSHPort, h.Serve.Protocol,
		ssh.FingerprintSHA256(k.HostKey), pl.o.ClientKey.Key.Fingerprint()), url
}

// priority is the Nix priority of peer among the hosts self fetches from:
// their order in substituteFrom, from 10 on (lower is asked first;
// cache.nixos.org has 40, and the user's own substituters keep theirs).
func priority(self *desired.Host, peer string) int {
	return 10 + slices.Index(self.SubstituteFrom, peer)
}

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
// on disk. A
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

// authorizes reports whether a serving peer's facts say it lets the client
// key with fingerprint fp of host in, applied.
func authorizes(f *peer.Facts, host, fp string) bool {
	if f.Serve == nil {
		return false
	}
	for _, a := range f.Serve.Authorized {
		if a.Host == host && a.Fingerprint == fp && a.Applied {
			return true
		}
	}
	return false
}

func withLastError(st peering.State, what string) string {
	if st.LastError != "" {
		return what + "; " + st.LastError
	}
	return what
}
