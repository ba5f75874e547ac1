package reconcile

import (
	"slices"

	"github.com/nixpeer/nixpeer/pkg/desired"
	"github.com/nixpeer/nixpeer/pkg/hostname"
	"github.com/nixpeer/nixpeer/pkg/knownhosts"
	"github.com/nixpeer/nixpeer/pkg/nix"
	"github.com/nixpeer/nixpeer/pkg/peering"
	"github.com/nixpeer/nixpeer/pkg/sshkeys"
	"golang.org/x/crypto/ssh"
)

// What the peers of a host are to peering: how each is watched and
// trusted.

// watchTargets are the peers self knows through peering: those it
// fetches from, watched, and those that fetch from it, which tell their
// facts over their own connections (Inbound), with the host keys this
// host's managed files remember of them.
func watchTargets(file *desired.File, self *desired.Host, cas []ssh.PublicKey, remembered map[string]ssh.PublicKey) []peering.Target {
	var targets []peering.Target
	from := localIP(self.Address)
	// consumer: the peer fetches from this host (or reads a cache it
	// publishes to) and this host fetches nothing from it: it tells its
	// facts over its own connection (Inbound), as this host tells its own
	// to the peers it is such a consumer of (Tell). Each peer is watched
	// once, in the first role it has.
	seen := map[string]bool{}
	add := func(h *desired.Host, consumer bool) {
		if seen[h.Name] {
			return
		}
		seen[h.Name] = true
		pins, _ := pinnedKeys(h) // validated with the file
		targets = append(targets, peering.Target{Name: h.Name, Address: h.Address, Pin: pins.HostKey,
			PinsRequired: file.Trust == desired.TrustPinned, Approve: file.Trust == desired.TrustApprove, Addr: peerAddr(h), Remembered: remembered[h.Name], From: from, Self: self.Name,
			RequireCert: file.Trust == desired.TrustCA, CAs: cas, Inbound: consumer,
			Tell: !consumer && !slices.Contains(h.SubstituteFrom, self.Name) && !slices.Contains(publishersOf(file, h), self)})
	}
	for _, name := range self.SubstituteFrom {
		add(file.Host(name), false)
	}
	// The publishers of the caches this host reads tell the keys their
	// uploads are signed with; the readers of those it publishes to
	// tell which of its keys they trust.
	for _, pub := range publishersOf(file, self) {
		add(pub, false)
	}
	for _, c := range consumersOf(file, self) {
		add(c, true)
	}
	return targets
}

// hostCAs are the CAs of trust: ca, nil in another mode.
func hostCAs(file *desired.File) []ssh.PublicKey {
	if file.Trust != desired.TrustCA {
		return nil
	}
	var cas []ssh.PublicKey
	for _, line := range file.HostCAs {
		if k, err := sshkeys.ParsePublicLine(line); err == nil { // validated with the file
			cas = append(cas, k)
		}
	}
	return cas
}

// remembered are the host keys that this host's managed files pin for its
// peers, by name: for those it fetches from, the known_hosts block first,
// then the substituter URL in the Nix settings; for its consumers, the
// comments of nix-ssh's authorized keys.
func remembered(o *Observation) map[string]ssh.PublicKey {
	out := map[string]ssh.PublicKey{}
	if o.File.Trust == desired.TrustCA {
		return out // a certificate of a listed CA is the only trust
	}
	if o.Self.Serve != nil {
		for _, c := range o.File.Consumers(o.Self.Name) {
			if k, ok := o.Consumers[c.Name]; ok {
				out[c.Name] = k.HostKey
			}
		}
	}
	entries, _ := knownhosts.Managed(o.Files[o.Layout.KnownHosts].Content)
	urls := nix.PinnedHostKeys(o.Files[o.platform().settingsFile(o.Layout, o.Self)].Content)
	for _, name := range o.Self.SubstituteFrom {
		h := o.File.Host(name)
		addr, _ := hostname.Canonical(h.Address) // validated with the file
		for _, e := range entries {
			if host, err := hostname.Canonical(e.Host); err == nil && host == addr && e.Port == h.SSHPort && !e.CA && !e.Next {
				out[name] = e.Key
			}
		}
		if k, ok := urls[h.Address]; ok && out[name] == nil {
			out[name] = k
		}
	}
	return out
}
