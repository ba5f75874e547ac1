package reconcile

import (
	"github.com/nixpeer/nixpeer/pkg/peer"
	"github.com/nixpeer/nixpeer/pkg/status"
	"golang.org/x/crypto/ssh"
)

// facts is what this host tells its peers, from a finished pass.
func factsOf(o *Observation, p *Plan, st status.Status, authorizedApplied func(ssh.PublicKey) bool) (peer.Facts, bool) {
	if o.Self == nil || !o.HostKey.Usable() {
		return peer.Facts{}, false
	}
	f := peer.Facts{Version: peer.FactsVersion, Name: o.Self.Name, Address: o.Self.Address,
		Generation: st.Generation, ObservedGeneration: st.ObservedGeneration, Ready: st.Ready,
		HostKeys: []string{o.HostKey.Key.AuthorizedLine()}, TrustedCacheKeys: p.TrustedLive,
		NextHostKey: p.HostKeyRotation.next, NextHostKeyProof: p.HostKeyRotation.proof}
	// Only once the files that ssh reads are written.
	if c := status.Find(st.Conditions, status.KnownHostsReady); c == nil || c.Status == status.True {
		f.AcceptedHostKeys = p.AcceptedHostKeys
	}
	if o.ClientKey.Usable() {
		f.ClientKey = o.ClientKey.Key.AuthorizedLine()
	}
	if o.Self.Serve != nil && o.CacheKey.Err == nil && !o.CacheKey.Missing {
		f.Serve = &peer.ServeFacts{Protocol: o.Self.Serve.Protocol, CacheKey: o.CacheKey.Public.String(),
			NextCacheKey: p.CacheKeyRotation.next, Authorized: []peer.AuthorizedFact{}, Check: p.Serve.check}
		for _, c := range p.Serve.consumers {
			f.Serve.Authorized = append(f.Serve.Authorized, peer.AuthorizedFact{Host: c.Host,
				Fingerprint: ssh.FingerprintSHA256(c.Key), Applied: authorizedApplied(c.Key)})
		}
	}
	return f, true
}
