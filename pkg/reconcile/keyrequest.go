package reconcile

import (
	"errors"
	"fmt"

	"github.com/nixpeer/nixpeer/pkg/desired"
	"github.com/nixpeer/nixpeer/pkg/nix"
	"github.com/nixpeer/nixpeer/pkg/state"
)

// cacheKeys is what a pass saw of a serving host's signing keys, for
// the operator's requests.
type cacheKeys struct {
	serves, pinned bool
	current, next  string // public keys; "" when there is none
	gen            int
}

func cacheKeysOf(o *Observation) cacheKeys {
	if o.Self == nil || o.Self.Serve == nil {
		return cacheKeys{}
	}
	k := cacheKeys{serves: true, pinned: o.Self.Serve.PublicKey != ""}
	if o.CacheKey.Err == nil && !o.CacheKey.Missing {
		k.current = o.CacheKey.Public.String()
		k.gen, _ = nix.KeyGeneration(o.Self.Serve.KeyName, o.CacheKey.Name)
	}
	if o.NextCacheKey.Err == nil && !o.NextCacheKey.Missing {
		k.next = o.NextCacheKey.Public.String()
	}
	return k
}

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
	k := h.keys
	h.mu.Unlock()
	switch {
	case !k.serves:
		return "", ErrNotServing
	case k.pinned:
		return "", errors.New("the desired state pins this host's serve.publicKey: remove the pin first (consumers then take the key its agent publishes, over the host key they trust), or rotate by hand")
	case k.current == "":
		return "", errors.New("this host has no usable signing key yet; see CacheKeyReady in nixpeer status")
	}
	req := readRecord[rotationRequest](h, recRotation)
	var msg string
	switch {
	case action == "revoke":
		req.Revoke, req.RevokeNext = k.current, k.next
		msg = "revoking " + k.current + ": a new key replaces it at once, and consumers drop it as soon as they hear"
	case action != "rotate":
		return "", fmt.Errorf("unknown action %q; want rotate or revoke", action)
	case k.next != "" && force:
		req.Force = k.next
		msg = "the rotation to " + k.next + " goes on without waiting for the consumers that do not trust it yet"
	case k.next != "":
		return "", fmt.Errorf("a rotation to %s is under way (see nixpeer status); --force goes on without waiting for the consumers that do not trust it yet", k.next)
	default:
		req.Generation = k.gen + 1
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
	f, k, name := h.shown, h.hostKeys, h.status.Host
	h.mu.Unlock()
	var self *desired.Host
	if f != nil {
		self = f.Host(name)
	}
	switch {
	case self == nil:
		return "", errors.New("this host is not in the desired state yet; see nixpeer status")
	case f.Trust == desired.TrustCA:
		return "", errors.New("trust: ca: a new host key needs only a certificate of one of hostCAs (ssh-keygen -s CA_KEY -h ...); nothing is handed over")
	case f.Trust == desired.TrustPinned:
		return "", errors.New("trust: pinned: the desired state's hostKey pins are the fleet's trust; a handover cannot change them. Rotate by hand: pin the new key, deploy the file, then replace the key")
	case self.HostKey != "":
		return "", fmt.Errorf("the desired state pins the hostKey of %s: its peers trust that pin, not a handover. Rotate by hand: pin the new key in the file, deploy it, then replace the key", self.Name)
	case self.Serve != nil && len(self.SSHDReload) == 0:
		return "", fmt.Errorf("%s serves: set its sshdReload in the desired state (for example [systemctl, reload, sshd.service]) so that sshd shows the new key when it takes the place of the old one", self.Name)
	case k.current == "":
		return "", errors.New("this host has no usable host key yet; see KeysReady in nixpeer status")
	}
	req := readRecord[hostKeyRequest](h, recHostKeyRotation)
	var msg string
	switch {
	case req.From == k.current && k.next != "" && force:
		req.Force = k.next
		msg = "the host key rotation goes on without waiting for the peers that did not accept the next key; they refuse it until approved again"
	case req.From == k.current:
		return "", errors.New("a host key rotation is under way (see nixpeer status); --force goes on without waiting for the peers that did not accept the next key yet")
	default:
		req = hostKeyRequest{From: k.current}
		msg = "rotating the host key " + k.current + "; nixpeer status shows each phase"
	}
	if err := h.cfg.Store.Commit(state.Pass{Records: map[string]any{recHostKeyRotation: req}}); err != nil {
		return "", err
	}
	return msg, nil
}

// hostKeysOf is the fingerprints of the host key and the next one, as a
// pass saw them.
func hostKeysOf(o *Observation) (k struct{ current, next string }) {
	if o.HostKey.Usable() {
		k.current = o.HostKey.Key.Fingerprint()
	}
	if o.NextHostKey.Usable() {
		k.next = o.NextHostKey.Key.Fingerprint()
	}
	return k
}
