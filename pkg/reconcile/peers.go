package reconcile

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
	"golang.org/x/crypto/ssh"

	"github.com/nixpeer/nixpeer/pkg/desired"
	"github.com/nixpeer/nixpeer/pkg/peer"
	"github.com/nixpeer/nixpeer/pkg/peering"
	"github.com/nixpeer/nixpeer/pkg/probe"
	"github.com/nixpeer/nixpeer/pkg/sshkeys"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// ProbeTimeout bounds the probe of a peer's serve endpoint.
const ProbeTimeout = 10 * time.Second

// recConfigured holds, by peer name, the substituter settings verified
// last: a peer that goes away keeps them (fallback covers the outage).
const recConfigured = "peers/configured"

// Peer states in the status, in the order production goes through them.
const (
	PeerWaitingForFacts         = "WaitingForFacts"
	PeerHostKeyRefused          = "HostKeyRefused"
	PeerWaitingForKnownHosts    = "WaitingForKnownHosts"
	PeerWaitingForAuthorization = "WaitingForAuthorization"
	PeerProbeFailed             = "ProbeFailed"
	PeerServing                 = "Serving"     // a substituter, verified
	PeerUnreachable             = "Unreachable" // verified earlier, its settings are kept
	PeerKeysKnown               = "KeysKnown"   // a consumer whose client key is known
)

// configuredPeer is a peer's substituter as it was verified.
type configuredPeer struct {
	Address   string `json:"address"`
	SSHPort   int    `json:"sshPort"`
	Protocol  string `json:"protocol"`
	HostKey   string `json:"hostKey"`
	CacheKey  string `json:"cacheKey"`
	ClientKey string `json:"clientKey"` // fingerprint of this host's client key
}

// reconcilePeering keeps the peer port listening and a watch open to every
// peer this host fetches from or serves.
func (h *Host) reconcilePeering(p *pass) error {
	var targets []peering.Target
	add := func(peer *desired.Host) error {
		pins, err := pinnedKeys(peer)
		if err != nil {
			return err
		}
		targets = append(targets, peering.Target{Name: peer.Name, Address: peer.Address, Pin: pins.HostKey,
			PinsRequired: p.file.Trust == desired.TrustPinned, Addr: net.JoinHostPort(peer.Address, strconv.Itoa(peer.PeerPort))})
		return nil
	}
	for _, name := range p.self.SubstituteFrom {
		if err := add(p.file.Host(name)); err != nil {
			return err
		}
	}
	for _, c := range p.file.Consumers(p.self.Name) {
		if !slices.Contains(p.self.SubstituteFrom, c.Name) {
			if err := add(c); err != nil {
				return err
			}
		}
	}
	// The watches run whether or not this host's own port listens.
	errs := []error{h.cfg.Peers.Sync(targets)}
	if p.hostKey.Signer == nil {
		p.set(h, status.PeerPortReady, false, "NoHostKey", "the peer port needs this host's SSH host key; see KeysReady")
		return errors.Join(errs...)
	}
	addr := peering.ListenAddr(p.self.Address, p.self.PeerPort)
	if err := h.cfg.Port.Ensure(addr, p.hostKey.Signer); err != nil {
		p.set(h, status.PeerPortReady, false, "ListenFailed", err.Error()+"; is another agent or program on that port?")
		errs = append(errs, err)
	} else {
		p.set(h, status.PeerPortReady, true, "Listening", "peers reach this agent at "+addr)
	}
	return errors.Join(errs...)
}

// reportTrust sets PeersTrusted: False while a peer offers a host key
// that is refused, with both fingerprints.
func (h *Host) reportTrust(p *pass) {
	var refused, trusted []string
	reason := ""
	for _, ps := range p.peers {
		switch {
		case ps.State == PeerHostKeyRefused:
			refused = append(refused, ps.Name+": "+ps.Message)
			if reason == "" {
				reason = ps.Reason
			}
		case ps.Trust != peering.TrustNone:
			trusted = append(trusted, ps.Name+" ("+ps.Trust+")")
		}
	}
	switch {
	case len(refused) > 0:
		p.set(h, status.PeersTrusted, false, reason, strings.Join(refused, "; "))
	case len(trusted) > 0:
		p.set(h, status.PeersTrusted, true, "Trusted", "host keys trusted: "+strings.Join(trusted, ", "))
	default:
		p.set(h, status.PeersTrusted, true, "NothingRefused", "no peer's host key is known or refused yet")
	}
}

// learnedKeys adds what peer's agent told, over a trusted connection, to
// the keys the file pins; a pin wins over what the peer says.
func (h *Host) learnedKeys(peer *desired.Host, k PeerKeys) (PeerKeys, peering.State) {
	st, ok := h.cfg.Peers.Get(peer.Name)
	if !ok {
		st = peering.State{Name: peer.Name, Trust: peering.TrustNone}
	}
	if k.HostKey == nil {
		k.HostKey = st.HostKey
	}
	if f := st.Facts; f != nil {
		if k.ClientKey == nil && f.ClientKey != "" {
			k.ClientKey, _ = sshkeys.ParsePublicLine(f.ClientKey) // validated with the facts
		}
		if k.CacheKey == "" && f.Serve != nil {
			k.CacheKey = f.Serve.CacheKey
		}
	}
	return k, st
}

// peerStatus says what the host knows of a peer, for the status.
func peerStatus(peer *desired.Host, role string, k PeerKeys, st peering.State) status.Peer {
	ps := status.Peer{Name: peer.Name, Address: peer.Address, Role: role, Trust: st.Trust, State: PeerWaitingForFacts}
	if k.HostKey != nil {
		ps.HostKeyFingerprint = ssh.FingerprintSHA256(k.HostKey)
	}
	ps.Connected = st.Connected
	if !st.FactsAt.IsZero() {
		t := st.FactsAt
		ps.FactsAt = &t
	}
	if r := st.Refused; r != nil {
		ps.State = PeerHostKeyRefused
		ps.Reason = r.Reason
		ps.RefusedHostKeyFingerprint = r.Offered
		ps.Message = fmt.Sprintf("%s: the peer offers host key %s", r.Reason, r.Offered)
		if r.Trusted != "" {
			ps.Message += ", but " + r.Trusted + " is trusted"
		}
		ps.Message += fmt.Sprintf("; nothing that depends on %s changes until you pin the key you expect as hostKey or run \"nixpeer trust reset %s\"", peer.Name, peer.Name)
		return ps
	}
	if role == "consumer" {
		if k.ClientKey != nil {
			ps.State = PeerKeysKnown
			ps.Message = "client key " + ssh.FingerprintSHA256(k.ClientKey)
			if f := st.Facts; peer.ClientKey != "" && f != nil && f.ClientKey != "" {
				if told, err := sshkeys.ParsePublicLine(f.ClientKey); err == nil && ssh.FingerprintSHA256(told) != ssh.FingerprintSHA256(k.ClientKey) {
					ps.Message += fmt.Sprintf(" (pinned as clientKey; its agent reports %s: update the pin if the host's key changed)", ssh.FingerprintSHA256(told))
				}
			}
		} else {
			ps.Message = unreachableMessage(st, "its client key is not known yet")
		}
	}
	return ps
}

func unreachableMessage(st peering.State, what string) string {
	if st.LastError != "" {
		return what + "; " + st.LastError
	}
	return what
}

// substituter decides whether production uses peer as a substituter, in
// the order of peering: facts trusted, host key known (known_hosts has it),
// this host's client key authorized and applied on the peer, the serve
// endpoint probed; only then is it written. A peer verified earlier keeps
// its settings while it is away or refused. It returns the settings to
// use (nil for none), and an error when the probe failed, so that the loop
// retries with backoff.
func (h *Host) substituter(p *pass, peer *desired.Host, ps *status.Peer) (*configuredPeer, error) {
	k, st := p.peerKeys[peer.Name], p.peerStates[peer.Name]
	prev, hadPrev := p.configured[peer.Name]
	keep := func(state, msg string) *configuredPeer {
		ps.State, ps.Message = state, msg
		if hadPrev {
			if state == PeerWaitingForFacts {
				ps.State = PeerUnreachable
			}
			ps.Message += "; keeping the settings verified earlier (fallback covers an outage)"
			return &prev
		}
		return nil
	}
	if ps.State == PeerHostKeyRefused {
		return keep(PeerHostKeyRefused, ps.Message), nil
	}
	switch {
	case k.HostKey == nil:
		return keep(PeerWaitingForFacts, unreachableMessage(st, "its SSH host key is not known yet")), nil
	case k.CacheKey == "":
		return keep(PeerWaitingForFacts, unreachableMessage(st, "its binary-cache public key is not known yet")), nil
	case st.Facts == nil:
		return keep(PeerWaitingForFacts, unreachableMessage(st, "its agent has not told whether it authorizes this host")), nil
	}
	if c := status.Find(p.conds, status.KnownHostsReady); c == nil || c.Status != status.True {
		return keep(PeerWaitingForKnownHosts, "root's known_hosts does not have it yet"), nil
	}
	mine := p.clientKey.Fingerprint()
	if !authorizes(st.Facts, p.self.Name, mine) {
		return keep(PeerWaitingForAuthorization, fmt.Sprintf("waiting for %s to authorize this host's client key %s and apply it", peer.Name, mine)), nil
	}
	cur := configuredPeer{Address: peer.Address, SSHPort: peer.SSHPort, Protocol: string(peer.Serve.Protocol),
		HostKey: sshkeys.Key{Public: k.HostKey}.AuthorizedLine(), CacheKey: k.CacheKey, ClientKey: mine}
	if hadPrev && prev == cur {
		ps.State, ps.Message = PeerServing, "serves this host; verified"
		if !st.Connected {
			ps.State, ps.Message = PeerUnreachable, unreachableMessage(st, "its agent is not reachable")+"; keeping its settings (fallback covers an outage)"
		}
		return &cur, nil
	}
	res, err := h.probe(p.ctx, peer, k.HostKey, p.clientKey.Signer)
	if err != nil {
		keep(PeerProbeFailed, err.Error())
		if hadPrev {
			return &prev, err
		}
		return nil, err
	}
	p.configured[peer.Name] = cur
	p.configuredChanged = true
	h.log.Info("peer serves this host; using it as a substituter", zap.String("peer", peer.Name),
		zap.Duration("probe", res.Elapsed), zap.Uint64("protocolVersion", res.ServerVersion))
	// The same words as a pass that finds it verified: a status that
	// does not change is not written again.
	ps.State, ps.Message = PeerServing, "serves this host; verified"
	return &cur, nil
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

// probe checks that peer serves its store to this host's client key.
func (h *Host) probe(ctx context.Context, peer *desired.Host, hostKey ssh.PublicKey, signer ssh.Signer) (probe.Result, error) {
	if signer == nil {
		return probe.Result{}, errors.New("this host's client key is not usable")
	}
	return probe.Probe(ctx, probe.Target{Address: peer.Address, Port: peer.SSHPort, Protocol: string(peer.Serve.Protocol),
		Signer: signer, HostKey: hostKey, Timeout: ProbeTimeout})
}

// loadConfigured reads the verified substituters, keeping only the peers
// still in substituteFrom.
func (h *Host) loadConfigured(p *pass) error {
	all := map[string]configuredPeer{}
	p.configured = map[string]configuredPeer{}
	if _, err := h.cfg.Store.Get(recConfigured, &all); err != nil {
		// Verified anew: each peer is probed again.
		h.log.Error("the verified substituters are unreadable; verifying every peer again", zap.Error(err))
		p.configuredChanged = true
		return nil
	}
	for name, c := range all {
		if slices.Contains(p.self.SubstituteFrom, name) {
			p.configured[name] = c
		}
	}
	p.configuredChanged = len(p.configured) != len(all)
	return nil
}

func (h *Host) saveConfigured(p *pass) error {
	if !p.configuredChanged {
		return nil
	}
	return h.cfg.Store.Put(recConfigured, p.configured)
}

// facts is what this host tells its peers, from a finished pass.
func (h *Host) facts(p *pass, st status.Status) (peer.Facts, bool) {
	if p.self == nil || p.hostKey.Public == nil {
		return peer.Facts{}, false
	}
	f := peer.Facts{Version: peer.FactsVersion, Name: p.self.Name, Address: p.self.Address,
		Generation: st.Generation, ObservedGeneration: st.ObservedGeneration, Ready: st.Ready,
		HostKeys: []string{p.hostKey.AuthorizedLine()}}
	if p.clientKey.Public != nil {
		f.ClientKey = p.clientKey.AuthorizedLine()
	}
	if p.self.Serve != nil && p.cacheKey != "" {
		f.Serve = &peer.ServeFacts{Protocol: string(p.self.Serve.Protocol), CacheKey: p.cacheKey, Authorized: p.authorized}
		if f.Serve.Authorized == nil {
			f.Serve.Authorized = []peer.AuthorizedFact{}
		}
	}
	return f, true
}
