package reconcile

import (
	"fmt"
	"os"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/nixpeer/nixpeer/pkg/knownhosts"
	"github.com/nixpeer/nixpeer/pkg/peering"
	"github.com/nixpeer/nixpeer/pkg/sshconfig"
	"github.com/nixpeer/nixpeer/pkg/sshkeys"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// SSHConnectTimeout bounds ssh's connect to a peer.
const SSHConnectTimeout = 5 * time.Second

// A step keeps one resource of the host in place and records its condition.
// Steps run in order; each one reads the host as it is (level-triggered).
type step func(h *Host, p *pass) error

var steps = []step{
	(*Host).reconcileKeys,
	(*Host).reconcilePeering,
	(*Host).collectPeerKeys,
	(*Host).reconcileKnownHosts,
	(*Host).reconcileServe,
	(*Host).reconcileNix,
}

// collectPeerKeys gathers what the host trusts of every peer's keys: the
// pins of the file, and what the peers' agents told over trusted
// connections.
func (h *Host) collectPeerKeys(p *pass) error {
	p.peerKeys = map[string]PeerKeys{}
	p.peerStates = map[string]peering.State{}
	p.peers = []status.Peer{}
	for _, host := range p.file.Hosts {
		k, err := pinnedKeys(host)
		if err != nil {
			p.set(h, status.DesiredStateValid, false, "InvalidKey", err.Error())
			return err
		}
		p.peerKeys[host.Name] = k
	}
	for _, name := range p.self.SubstituteFrom {
		peer := p.file.Host(name)
		k, st := h.learnedKeys(peer, p.peerKeys[name])
		p.peerKeys[name], p.peerStates[name] = k, st
		p.peers = append(p.peers, peerStatus(peer, "substituter", k, st))
	}
	for _, c := range p.file.Consumers(p.self.Name) {
		k, st := h.learnedKeys(c, p.peerKeys[c.Name])
		p.peerKeys[c.Name], p.peerStates[c.Name] = k, st
		p.peers = append(p.peers, peerStatus(c, "consumer", k, st))
	}
	h.reportTrust(p)
	return h.loadConfigured(p)
}

// reconcileKeys keeps the host's SSH client key (which it fetches from peers
// with) and reads, or creates where missing, its SSH host key.
func (h *Host) reconcileKeys(p *pass) error {
	l := h.cfg.Layout
	client, cres, err := sshkeys.EnsureClientKey(l.ClientKey, "nixpeer@"+p.self.Name)
	if err != nil {
		p.set(h, status.KeysReady, false, "ClientKeyUnusable", err.Error())
		return fmt.Errorf("client key: %w", err)
	}
	host, hres, err := sshkeys.EnsureHostKey(l.HostKey, "root@"+p.self.Name)
	if err != nil {
		p.set(h, status.KeysReady, false, "HostKeyUnusable", err.Error())
		return fmt.Errorf("host key: %w", err)
	}
	p.clientKey, p.hostKey = client, host
	p.manage(l.ClientKey, cres.Created || cres.ModeFixed || cres.PubRewritten)
	p.manage(l.HostKey, hres.Created || hres.ModeFixed || hres.PubRewritten)
	var did []string
	for _, r := range []struct {
		what string
		res  sshkeys.Result
	}{{"client key", cres}, {"host key", hres}} {
		switch {
		case r.res.Created:
			did = append(did, "created the "+r.what)
		case r.res.ModeFixed:
			did = append(did, "set the "+r.what+" to mode 0600")
		}
	}
	if len(did) > 0 {
		h.log.Info("keys", zap.Strings("actions", did), zap.String("clientKey", client.Fingerprint()), zap.String("hostKey", host.Fingerprint()))
	}
	p.set(h, status.KeysReady, true, "KeysPresent",
		fmt.Sprintf("client key %s, host key %s", client.Fingerprint(), host.Fingerprint()))
	return nil
}

// reconcileKnownHosts keeps the managed block of root's known_hosts: one
// entry for every peer this host fetches from whose host key is known.
func (h *Host) reconcileKnownHosts(p *pass) error {
	var entries []knownhosts.Entry
	var unpinned []string
	for _, name := range p.self.SubstituteFrom {
		peer := p.file.Host(name)
		key := p.peerKeys[name].HostKey
		if key == nil {
			unpinned = append(unpinned, name)
			continue
		}
		entries = append(entries, knownhosts.Entry{Host: peer.Address, Port: peer.SSHPort, Key: key})
	}
	path := h.cfg.Layout.KnownHosts
	if err := os.MkdirAll(strings.TrimSuffix(path, "/known_hosts"), 0o700); err != nil {
		p.set(h, status.KnownHostsReady, false, "WriteFailed", err.Error())
		return fmt.Errorf("create directory of %s: %w", path, err)
	}
	changed, err := knownhosts.Update(path, entries)
	if err != nil {
		p.set(h, status.KnownHostsReady, false, "WriteFailed", err.Error())
		return fmt.Errorf("known_hosts: %w", err)
	}
	p.manage(path, changed)

	// ssh's own connect timeout bounds a connect to a peer that drops
	// packets, and Nix before 2.31 takes no port from the URL.
	var peers []sshconfig.Peer
	for _, name := range p.self.SubstituteFrom {
		peer := p.file.Host(name)
		peers = append(peers, sshconfig.Peer{Address: peer.Address, Port: peer.SSHPort, ConnectTimeout: SSHConnectTimeout})
	}
	changed, err = sshconfig.Update(h.cfg.Layout.SSHConfig, peers)
	if err != nil {
		p.set(h, status.KnownHostsReady, false, "WriteFailed", err.Error())
		return fmt.Errorf("ssh config: %w", err)
	}
	if len(peers) > 0 || changed {
		p.manage(h.cfg.Layout.SSHConfig, changed)
	}
	msg := fmt.Sprintf("%d peer entries in %s", len(entries), path)
	if len(unpinned) > 0 {
		msg += fmt.Sprintf("; host key not known yet: %s", strings.Join(unpinned, ", "))
	}
	p.set(h, status.KnownHostsReady, true, "UpToDate", msg)
	return nil
}
