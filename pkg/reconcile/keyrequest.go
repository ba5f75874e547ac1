package reconcile

import (
	"errors"
	"fmt"

	"github.com/nixpeer/nixpeer/pkg/desired"
	"github.com/nixpeer/nixpeer/pkg/nix"
	"github.com/nixpeer/nixpeer/pkg/state"
)

// ErrNotServing is the answer to a key request on a host that does not
// serve.
var ErrNotServing = errors.New("this host does not serve (no serve: in the desired state), so it has no binary-cache key")

// RequestCacheKey records an operator's request about this serving
// host's signing key, as the last pass saw it, and returns what it
// starts: rotate (the next generation, or with force, past the
// consumers that do not trust the next key yet) or revoke (the current
// key, at once). The loop carries it out; the caller triggers a pass.
func (h *Host) RequestCacheKey(action string, force bool) (string, error) {
	h.request.Lock()
	defer h.request.Unlock()
	h.mu.Lock()
	o := h.seen
	h.mu.Unlock()
	switch {
	case o == nil || o.Self == nil || o.Self.Serve == nil:
		return "", ErrNotServing
	case o.Self.Serve.PublicKey != "":
		return "", errors.New("the desired state pins this host's serve.publicKey: remove the pin first (consumers then take the key its agent publishes, over the host key they trust), or rotate by hand")
	case o.CacheKey.Err != nil || o.CacheKey.Missing:
		return "", errors.New("this host has no usable signing key yet; see CacheKeyReady in nixpeer status")
	}
	current, next := o.CacheKey.Public.String(), ""
	if o.NextCacheKey.Err == nil && !o.NextCacheKey.Missing {
		next = o.NextCacheKey.Public.String()
	}
	req := readRecord[rotationRequest](h, recRotation)
	var msg string
	switch {
	case action == "revoke":
		req.Revoke, req.RevokeNext = current, next
		msg = "revoking " + current + ": a new key replaces it at once, and consumers drop it as soon as they hear"
	case action != "rotate":
		return "", fmt.Errorf("unknown action %q; want rotate or revoke", action)
	case next != "" && force:
		req.Force = next
		msg = "the rotation to " + next + " goes on without waiting for the consumers that do not trust it yet"
	case next != "":
		return "", fmt.Errorf("a rotation to %s is under way (see nixpeer status); --force goes on without waiting for the consumers that do not trust it yet", next)
	default:
		gen, _ := nix.KeyGeneration(o.Self.Serve.KeyName, o.CacheKey.Name)
		req.Generation = gen + 1
		msg = fmt.Sprintf("rotating to key generation %d; nixpeer status shows each phase", req.Generation)
	}
	if err := h.cfg.Store.Commit(state.Pass{Records: map[string]any{recRotation: req}}); err != nil {
		return "", err
	}
	return msg, nil
}

// RequestHostKeyRotation records an operator's request to rotate this
// host's SSH host key, as the last pass saw it, and returns what it
// starts (see hostkey.go); with force, a rotation under way goes on
// without waiting for the peers that did not accept the next key yet.
func (h *Host) RequestHostKeyRotation(force bool) (string, error) {
	h.request.Lock()
	defer h.request.Unlock()
	h.mu.Lock()
	o, name := h.seen, h.status.Host
	h.mu.Unlock()
	var self *desired.Host
	if o != nil && o.File != nil {
		self = o.File.Host(name)
	}
	switch {
	case self == nil:
		return "", errors.New("this host is not in the desired state yet; see nixpeer status")
	case o.File.Trust == desired.TrustCA:
		return "", errors.New("trust: ca: a new host key needs only a certificate of one of hostCAs (ssh-keygen -s CA_KEY -h ...); nothing is handed over")
	case o.File.Trust == desired.TrustPinned:
		return "", errors.New("trust: pinned: the desired state's hostKey pins are the fleet's trust; a handover cannot change them. Rotate by hand: pin the new key, deploy the file, then replace the key")
	case self.HostKey != "":
		return "", fmt.Errorf("the desired state pins the hostKey of %s: its peers trust that pin, not a handover. Rotate by hand: pin the new key in the file, deploy it, then replace the key", self.Name)
	case self.Serve != nil && len(self.SSHDReload) == 0:
		return "", fmt.Errorf("%s serves: set its sshdReload in the desired state (for example [systemctl, reload, sshd.service]) so that sshd shows the new key when it takes the place of the old one", self.Name)
	case !o.HostKey.Usable():
		return "", errors.New("this host has no usable host key yet; see KeysReady in nixpeer status")
	}
	current := o.HostKey.Key.Fingerprint()
	req := readRecord[hostKeyRequest](h, recHostKeyRotation)
	var msg string
	switch {
	case req.From == current && o.NextHostKey.Usable() && force:
		req.Force = o.NextHostKey.Key.Fingerprint()
		msg = "the host key rotation goes on without waiting for the peers that did not accept the next key; they refuse it until approved again"
	case req.From == current:
		return "", errors.New("a host key rotation is under way (see nixpeer status); --force goes on without waiting for the peers that did not accept the next key yet")
	default:
		req = hostKeyRequest{From: current}
		msg = "rotating the host key " + current + "; nixpeer status shows each phase"
	}
	if err := h.cfg.Store.Commit(state.Pass{Records: map[string]any{recHostKeyRotation: req}}); err != nil {
		return "", err
	}
	return msg, nil
}
