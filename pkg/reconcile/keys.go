package reconcile

import (
	"bytes"
	"cmp"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/nixpeer/nixpeer/pkg/desired"
	"github.com/nixpeer/nixpeer/pkg/nix"
	"github.com/nixpeer/nixpeer/pkg/peer"
	"github.com/nixpeer/nixpeer/pkg/peering"
	"github.com/nixpeer/nixpeer/pkg/probe"
	"github.com/nixpeer/nixpeer/pkg/sshkeys"
	"github.com/nixpeer/nixpeer/pkg/status"
	"golang.org/x/crypto/ssh"
)

// peerKeys is what this host knows, and trusts, of a peer's public keys.
type peerKeys struct {
	HostKey ssh.PublicKey
	// NextHostKey is the key the peer hands itself over to (see
	// peering.State.NextHostKey): trusted beside HostKey.
	NextHostKey ssh.PublicKey
	ClientKey   ssh.PublicKey
	CacheKey    string // NAME:BASE64
	// NextCacheKey is the key that replaces CacheKey in the peer's key
	// rotation: trusted beside it.
	NextCacheKey string
	// CacheKeyRefused says why the cache key a peer published is not
	// taken: its name is not the host's keyName.
	CacheKeyRefused string
}

// learnKeys gathers the keys of every host: the pins of the file, and
// what each peer's agent told over a trusted connection (a pin wins).
func learnKeys(o *Observation) (map[string]peerKeys, error) {
	keys := map[string]peerKeys{}
	for _, h := range o.File.Hosts {
		k, err := pinnedKeys(h)
		if err != nil {
			return nil, err
		}
		st := o.Peers[h.Name]
		if k.HostKey == nil || o.File.Trust == desired.TrustCA {
			k.HostKey = st.HostKey // with trust: ca, the certified key alone
		}
		if sameHostKey(k.HostKey, st.HostKey) {
			k.NextHostKey = st.NextHostKey // handed over to by the key trusted
		}
		if f := st.Facts; f != nil {
			if k.ClientKey == nil && f.ClientKey != "" {
				k.ClientKey, _ = sshkeys.ParsePublicLine(f.ClientKey) // validated with the facts
			}
			if k.CacheKey == "" && f.Serve != nil && h.Serve != nil {
				k.CacheKey, k.NextCacheKey, k.CacheKeyRefused = publishedCacheKeys(h.Serve.KeyName, f.Serve)
			}
		}
		keys[h.Name] = k
	}
	return keys, nil
}

// publishedCacheKeys are the cache keys a serving peer publishes that
// this host trusts: named as a generation of its keyName (Nix keeps one
// trusted key per name: a peer publishing a key under another host's name
// would stand in for it), the next one of a later generation.
func publishedCacheKeys(keyName string, s *peer.ServeFacts) (cur, next, refused string) {
	name, _, _ := strings.Cut(s.CacheKey, ":")
	gen, ok := nix.KeyGeneration(keyName, name)
	if !ok {
		return "", "", fmt.Sprintf("it publishes a binary-cache key named %q, not its keyName %q or a later generation of it (%s); the key is not trusted",
			name, keyName, nix.GenerationName(keyName, 2))
	}
	if s.NextCacheKey != "" {
		nextName, _, _ := strings.Cut(s.NextCacheKey, ":")
		if ngen, ok := nix.KeyGeneration(keyName, nextName); ok && ngen > gen {
			next = s.NextCacheKey
		}
	}
	return s.CacheKey, next, ""
}

// trusted are the cache keys of k this host's Nix settings name.
func (k peerKeys) trusted() []string {
	if k.NextCacheKey == "" {
		return []string{k.CacheKey}
	}
	return []string{k.CacheKey, k.NextCacheKey}
}

func sameHostKey(a, b ssh.PublicKey) bool {
	return a != nil && b != nil && bytes.Equal(a.Marshal(), b.Marshal())
}

// pinnedKeys are the keys of a host that the desired-state file pins.
func pinnedKeys(h *desired.Host) (peerKeys, error) {
	var k peerKeys
	var err error
	if h.HostKey != "" {
		if k.HostKey, err = sshkeys.ParsePublicLine(h.HostKey); err != nil {
			return k, fmt.Errorf("hostKey of %s: %w", h.Name, err)
		}
	}
	if h.ClientKey != "" {
		if k.ClientKey, err = sshkeys.ParsePublicLine(h.ClientKey); err != nil {
			return k, fmt.Errorf("clientKey of %s: %w", h.Name, err)
		}
	}
	if h.Serve != nil {
		k.CacheKey = h.Serve.PublicKey
	}
	return k, nil
}

// planKeys keeps the host's SSH client key (which it fetches from peers
// with) and its SSH host key, and the private keys' directory at 0700.
func (pl *planner) planKeys() (r *Resource, rot hostKeyRotation) {
	o, l := pl.o, pl.o.Layout
	r = &Resource{Type: status.KeysReady}
	if o.HostKey.State.Missing && o.HostKey.Err == nil && o.NextHostKey.Usable() {
		// A swap cut short: the next key takes the place, no new one.
		r.Keys = []keyWant{{kind: keyHostPromote, path: l.HostKey}}
		r.Reason, r.Message, r.Requeue = "HostKeySwapped", "the next host key takes the place of the current one", soon
		return r, rot
	}
	if o.KeysDirMode != 0 && o.KeysDirMode != 0o700 {
		r.Dirs = append(r.Dirs, dirWant{path: l.KeysDir, mode: 0o700})
	}
	var problems, created []string
	for _, k := range []struct {
		obs          KeyObs
		kind         keyKind
		what, reason string
		path, name   string
	}{
		{o.ClientKey, keyClient, "client key", "ClientKeyUnusable", l.ClientKey, "nixpeer@" + pl.self.Name},
		{o.HostKey, keyHost, "host key", "HostKeyUnusable", l.HostKey, "root@" + pl.self.Name},
	} {
		switch {
		case k.obs.Err != nil:
			r.Reason = cmp.Or(r.Reason, k.reason)
			problems = append(problems, k.obs.Err.Error())
		case k.obs.State.NeedsWork():
			r.Keys = append(r.Keys, keyWant{kind: k.kind, path: k.path, name: k.name})
			if k.obs.State.Missing {
				created = append(created, k.what)
			}
		}
	}
	switch {
	case len(problems) > 0:
		r.Message, r.Failed = strings.Join(problems, "; "), true
	case len(created) > 0:
		// Used from the next pass on, once it is read back.
		r.Reason, r.Message = "KeyCreated", "creating the "+strings.Join(created, " and the ")
		r.Requeue = soon
	default:
		r.Status, r.Reason = true, "KeysPresent"
		r.Message = fmt.Sprintf("client key %s, host key %s", o.ClientKey.Key.Fingerprint(), o.HostKey.Key.Fingerprint())
		if rot = pl.planHostKeyRotation(r); rot.status != nil && !r.Failed {
			r.Reason, r.Message = "HostKeyRotation"+rot.status.Phase, rot.status.Message
		}
		if r.Failed {
			r.Status = false
		}
	}
	return r, rot
}

// planPeerPort keeps the peer port listening with the host key.
func (pl *planner) planPeerPort() *Resource {
	r := &Resource{Type: status.PeerPortReady}
	o := pl.o
	if !o.HostKey.Usable() {
		r.Reason, r.Message = "NoHostKey", "the peer port needs this host's SSH host key; see KeysReady"
		return r
	}
	r.Listen = peering.ListenAddr(pl.self.Address, pl.self.PeerPort)
	switch {
	case pl.file.Trust == desired.TrustCA && o.HostCertErr != nil:
		r.Reason, r.Message, r.Failed = "HostCertificateUnusable", o.HostCertErr.Error(), true
	case pl.file.Trust == desired.TrustCA && o.HostCert != nil && !certValidAt(o.HostCert, o.Now):
		r.Reason, r.Failed = "HostCertificateNotValid", true
		r.Message = fmt.Sprintf("the host certificate %s-cert.pub (%q) is not valid now: peers refuse this host until one of hostCAs signs its host key again", o.Layout.HostKey, o.HostCert.KeyId)
	case pl.file.Trust == desired.TrustCA && o.HostCert == nil:
		r.Reason = "NoHostCertificate"
		r.Message = fmt.Sprintf("trust: ca, and %s-cert.pub is missing: peers refuse this host until one of hostCAs signs its host key for its address (ssh-keygen -s CA_KEY -h -I %s -n %s %s.pub)",
			o.Layout.HostKey, pl.self.Name, pl.self.Address, o.Layout.HostKey)
	default:
		r.Status, r.Reason, r.Message = true, "Listening", "peers reach this agent at "+r.Listen
		if o.HostCert != nil {
			r.Message += fmt.Sprintf(", with its host certificate %q", o.HostCert.KeyId)
		}
	}
	return r
}

// planWatches keeps a watch open to each peer, as the desired state and
// this host's files say now, authenticated with this host's key; nil
// while there is no host key yet.
func (pl *planner) planWatches() *Resource {
	o := pl.o
	if o.HostKey.State.Missing && o.HostKey.Err == nil {
		return nil
	}
	w := &watchWant{targets: o.Watches}
	if o.HostKey.Usable() {
		w.identity = o.HostKey.Key.Signer
	}
	return &Resource{Watch: w, Status: true}
}

// localIP is address when it is a loopback IP literal: an agent on one of
// several loopback addresses dials its peers from its own, so that each
// sees who connects. Other addresses leave the choice to the system.
func localIP(address string) net.IP {
	if ip := net.ParseIP(address); ip != nil && ip.IsLoopback() {
		return ip
	}
	return nil
}

func peerAddr(h *desired.Host) string {
	return net.JoinHostPort(h.Address, strconv.Itoa(h.PeerPort))
}

// probeTarget is how this host reaches the sshd of peer h, whose host key
// it trusts as key (with trust: ca, its CAs' certificate for h).
func (pl *planner) probeTarget(h *desired.Host, key ssh.PublicKey) probe.Target {
	t := probe.Target{Address: h.Address, Port: h.SSHPort, Protocol: h.Serve.Protocol,
		Signer: pl.o.ClientKey.Key.Signer, HostKey: key, NextHostKey: pl.keys[h.Name].NextHostKey, Timeout: ProbeTimeout, From: localIP(pl.self.Address)}
	if pl.o.HostCAs != nil {
		t.HostKey, t.HostCAs = nil, pl.o.HostCAs
	}
	return t
}

// certValidAt reports whether cert's validity period holds at now.
func certValidAt(cert *ssh.Certificate, now time.Time) bool {
	t := uint64(now.Unix())
	return cert.ValidAfter <= t && (cert.ValidBefore == ssh.CertTimeInfinity || t < cert.ValidBefore)
}
