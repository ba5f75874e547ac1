package reconcile

import (
	"errors"
	"fmt"

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
		req.Revoke = k.current
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
