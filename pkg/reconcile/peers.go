package reconcile

import (
	"bytes"
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

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

// substituters is what a pass decides about the peers of this host.
type substituters struct {
	// verdicts say, for each peer this host fetches from, whether it is
	// a substituter in this pass.
	verdicts map[string]verdict
	// peers are the statuses of every peer, substituters first.
	peers  []status.Peer
	probes []probeRequest
	// trips are the peers whose substituter this pass withdraws because
	// they went dark.
	trips []string
	// verified are the probes to record, by peer.
	verified map[string]string
	requeue  time.Duration
	// stores are the stores of the peers whose keys are known, in
	// substituteFrom order.
	stores []PeerStore
}

// planSubstituters decides, for each peer this host fetches from, whether
// it is a substituter: only while it is verified serving. Then the
// consumers' statuses.
func (pl *planner) planSubstituters() substituters {
	out := substituters{verdicts: map[string]verdict{}, verified: map[string]string{}}
	for _, name := range pl.self.SubstituteFrom {
		h := pl.file.Host(name)
		d, tuple, store := pl.substituter(h)
		out.verdicts[name] = d.verdict
		if d.Trip {
			out.trips = append(out.trips, name)
		}
		if d.Verify {
			out.verified[name] = tuple
		}
		if d.Probe {
			out.probes = append(out.probes, probeRequest{peer: name, tuple: tuple, target: store.Target})
		}
		if store.Name != "" {
			out.stores = append(out.stores, store)
		}
		out.requeue = earliest(out.requeue, d.Requeue)
		ps := pl.peerStatus(h, status.RoleSubstituter)
		ps.State, ps.Message = d.State, d.Message
		out.peers = append(out.peers, ps)
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
		out.peers = append(out.peers, ps)
	}
	out.peers = append(out.peers, pl.cachePeers()...)
	return out
}

// cachePeers are the statuses of the hosts this host is tied to by a
// cache alone: those that read a cache it publishes to (their trust in
// its cache keys), and those that publish to a cache it reads (their
// cache key).
func (pl *planner) cachePeers() []status.Peer {
	var out []status.Peer
	line := func(h *desired.Host, role, waiting string, known func(f *peer.Facts) (string, bool)) {
		ps := pl.peerStatus(h, role)
		if ps.State != status.PeerHostKeyRefused {
			if f := pl.o.Peers[h.Name].Facts; f != nil {
				if msg, ok := known(f); ok {
					ps.State, ps.Message = status.PeerKeysKnown, msg
				}
			}
			if ps.State != status.PeerKeysKnown {
				ps.Message = withLastError(pl.o.Peers[h.Name], waiting)
			}
		}
		out = append(out, ps)
	}
	for _, h := range readersOf(pl.file, pl.self) {
		line(h, status.RoleReader, "what it trusts is not known yet", func(f *peer.Facts) (string, bool) {
			names := keyNames(f.TrustedCacheKeys)
			if len(names) == 0 {
				return "", false
			}
			return "trusts cache keys " + strings.Join(names, ", "), true
		})
	}
	for _, h := range publishersOf(pl.file, pl.self) {
		if !slices.Contains(pl.self.SubstituteFrom, h.Name) {
			line(h, status.RolePublisher, "its cache key is not known yet", func(f *peer.Facts) (string, bool) {
				if f.Serve == nil || f.Serve.CacheKey == "" {
					return "", false
				}
				return "cache key " + strings.Join(keyNames([]string{f.Serve.CacheKey, f.Serve.NextCacheKey}), ", "), true
			})
		}
	}
	return out
}

// keyNames are the names of binary-cache public keys ("NAME:BASE64"),
// empty ones left out.
func keyNames(keys []string) []string {
	var names []string
	for _, k := range keys {
		if name, _, ok := strings.Cut(k, ":"); ok {
			names = append(names, name)
		}
	}
	return names
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
	ps := status.Peer{Name: h.Name, Address: h.Address, Role: role, Trust: cmp.Or(st.Trust, status.TrustNone),
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
	} else if r != nil && r.Reason == peering.RefusedNotCertified {
		ps.State, ps.Reason, ps.RefusedHostKeyFingerprint = status.PeerHostKeyRefused, r.Reason, r.Offered
		ps.Message = fmt.Sprintf("%s: %s; nothing is written for %s until it shows a valid certificate", r.Reason, r.Why, h.Name)
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

// planTrust sets PeersTrusted from the peers' statuses: False while a
// peer offers a host key that is refused, with both fingerprints; nil
// without peers.
func planTrust(peers []status.Peer, known map[string]peering.State) *Resource {
	if len(peers) == 0 {
		return nil
	}
	r := &Resource{Type: status.PeersTrusted}
	var refused, trusted, rebuilt []string
	for _, ps := range peers {
		switch {
		case ps.State == status.PeerHostKeyRefused:
			refused = append(refused, ps.Name+": "+ps.Message)
			r.Reason = cmp.Or(r.Reason, ps.Reason)
		case ps.Trust != status.TrustNone:
			how := string(ps.Trust)
			if ps.Trust == status.TrustTOFU {
				how = "tofu: trusted on first use, vouched for by nobody; pin it or use trust: approve"
			}
			trusted = append(trusted, ps.Name+" ("+how+")")
		}
		if known[ps.Name].Rebuilt {
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
	return r
}

// PeerStore is the store of a peer this host fetches from, as this host
// reaches it: its substituter URL, and how to ask it with this host's
// client key and the host key it trusts for it.
type PeerStore struct {
	Name   string
	URL    string
	Target probe.Target
}

// substituter goes through production's steps for peer h: its facts over
// a trusted connection, its keys, this host's client key authorized and
// applied there, its sshd probed; then the circuit breaker: a peer that
// stops answering is withdrawn, and used again once it answers and
// passes the probe. It returns the breaker's decision, the tuple a probe
// verifies and the peer's store (zero while its keys are not known).
func (pl *planner) substituter(h *desired.Host) (decision, string, PeerStore) {
	o := pl.o
	st, k := o.Peers[h.Name], pl.keys[h.Name]
	tuple, url := pl.tuple(h, k)
	v := verdict{url: url}
	// In use: this URL is in the settings, or the one that pins no key,
	// which the peer's host key handover left there.
	settings := o.Files[o.platform().settingsFile(o.Layout, pl.self)].Content
	inUse := url != "" && bytes.Contains(settings, []byte(url))
	if unpinned, err := nix.SubstituterURL(h.Serve.Protocol, h.Address, h.SSHPort, o.Layout.ClientKey, nil, priority(pl.self, h.Name)); url != "" && err == nil && !inUse {
		inUse = bytes.Contains(settings, []byte(unpinned))
	}
	wait := func(state status.PeerState, msg string) (decision, string, PeerStore) {
		v.State, v.Message = state, msg
		return decision{verdict: v}, "", PeerStore{}
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
	return d, tuple, PeerStore{Name: h.Name, URL: v.url, Target: pl.probeTarget(h, k.HostKey)}
}

// tuple is what a probe of h verifies: where it is, how it serves, the
// keys on both ends. A change of any of them needs a new probe. It also
// returns the substituter URL; both are "" while they cannot be made.
func (pl *planner) tuple(h *desired.Host, k peerKeys) (tuple, url string) {
	if k.HostKey == nil || !pl.o.ClientKey.Usable() {
		return "", ""
	}
	pin := k.HostKey
	if pl.file.Trust == desired.TrustCA || k.NextHostKey != nil {
		// ssh checks the certificate against known_hosts' CAs, or takes
		// either key known_hosts lists while the peer hands over to its
		// next one.
		pin = nil
	}
	url, err := nix.SubstituterURL(h.Serve.Protocol, h.Address, h.SSHPort, pl.o.Layout.ClientKey, pin, priority(pl.self, h.Name))
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

// authorizes reports whether a serving peer's facts say it lets the client
// key with fingerprint fp of host in, applied.
func authorizes(f *peer.Facts, host, fp string) bool {
	return f.Serve != nil && slices.ContainsFunc(f.Serve.Authorized, func(a peer.AuthorizedFact) bool {
		return a.Host == host && a.Fingerprint == fp && a.Applied
	})
}

func withLastError(st peering.State, what string) string {
	if st.LastError != "" {
		return what + "; " + st.LastError
	}
	return what
}

// planSubstitutersReady sums up the peers a fetching host substitutes
// from: Ready while each serves, or went dark after it served (its
// substituter withdrawn; builds go on locally).
func (pl *planner) planSubstitutersReady(verdicts map[string]verdict) *Resource {
	if len(pl.self.SubstituteFrom) == 0 {
		return nil
	}
	r := &Resource{Type: status.SubstitutersReady, Needs: []string{status.NixSettingsApplied}}
	var using, dark, waiting []string
	for _, name := range pl.self.SubstituteFrom {
		v := verdicts[name]
		switch {
		case !v.Ready:
			waiting = append(waiting, name+": "+v.Message)
		case v.Use:
			using = append(using, name)
		default:
			dark = append(dark, name)
		}
	}
	if len(waiting) > 0 {
		r.Reason, r.Message = "WaitingForPeer", strings.Join(waiting, "; ")
		return r
	}
	r.Status, r.Reason = true, "Configured"
	r.Message = "substitutes from " + cmp.Or(strings.Join(using, ", "), "nobody yet") + ", with fallback to building locally"
	if len(dark) > 0 {
		r.Reason = "PeerUnreachable"
		r.Message += "; unreachable, substituter withdrawn: " + strings.Join(dark, ", ")
	}
	return r
}

// planVerified records what the passing probes of this pass verified,
// and forgets the peers this host no longer fetches from; nil when the
// record stays as it is.
func (pl *planner) planVerified(verified map[string]string) *Resource {
	next := map[string]string{}
	for _, name := range pl.self.SubstituteFrom {
		if t, ok := pl.o.Verified[name]; ok {
			next[name] = t
		}
	}
	maps.Copy(next, verified)
	if !maps.Equal(next, pl.o.Verified) || pl.o.VerifiedUnreadable {
		return &Resource{Status: true, Records: []record{{recVerified, next}}}
	}
	return nil
}
