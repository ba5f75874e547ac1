package reconcile

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/nixpeer/nixpeer/pkg/nix"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// planCacheKey keeps a serving host's binary-cache signing key, rotates
// it when asked (rotation.go), and signs the current system closure with
// a key it has not been signed with: paths built before the key existed
// carry no signature of it. rot.signWith are the secret key files the
// Nix settings name, none while the host has no usable key. Nothing for
// a host that does not serve.
func (pl *planner) planCacheKey() (r *Resource, rot rotationPlan) {
	serve := pl.self.Serve
	if serve == nil {
		return
	}
	o, l := pl.o, pl.o.Layout
	ck := o.CacheKey
	r = &Resource{Type: status.CacheKeyReady}
	secret := filepath.Join(l.KeysDir, nix.SecretKeyFileName)
	switch {
	case ck.Err != nil:
		r.Reason, r.Message, r.Failed = "CacheKeyUnusable", ck.Err.Error(), true
		return
	case ck.Missing && !o.NextCacheKey.Missing && o.NextCacheKey.Err == nil:
		// A promotion was cut short: the next key takes the place.
		r.Keys = []keyWant{{kind: keyPromote, path: l.KeysDir}}
		r.Reason, r.Message = "Rotation"+PhaseRetiring, "making the next signing key "+o.NextCacheKey.Name+" the current one"
		r.Requeue = soon
		return
	case ck.Missing:
		name := nix.GenerationName(serve.KeyName, max(serve.KeyGeneration, o.Rotation.Generation))
		r.Keys = []keyWant{{kind: keyCache, path: l.KeysDir, name: name}}
		r.Reason, r.Message = "KeyCreated", "creating the binary-cache signing key "+name
		r.Requeue = soon
		return
	}
	// The key on disk signs, whatever its name, until it is fixed.
	rot.signWith = []string{secret}
	gen, ok := nix.KeyGeneration(serve.KeyName, ck.Name)
	switch {
	case !ok:
		r.Reason, r.Failed = "KeyNameMismatch", true
		r.Message = fmt.Sprintf("the signing key %s is named %q, but serve.keyName is %q (or a later generation of it, %s): set keyName back to %q, "+
			"or move the key away (mv %s %s.old) to have a new one made (every host that trusts the old key then needs the new one); "+
			"until then the Nix settings stay as they are, signing with the old key",
			secret, ck.Name, serve.KeyName, nix.GenerationName(serve.KeyName, 2), ck.Name, secret, secret)
		return
	case serve.PublicKey != "" && serve.PublicKey != ck.Public.String():
		r.Reason, r.Failed = "CacheKeyMismatch", true
		r.Message = fmt.Sprintf("the desired state pins serve.publicKey %s, but this host's key is %s (%s): pin this one, or put the pinned key's secret in place",
			serve.PublicKey, ck.Public.String(), filepath.Join(l.KeysDir, nix.PublicKeyFileName))
		return
	}
	if ck.NeedsRepair {
		r.Keys = []keyWant{{kind: keyCache, path: l.KeysDir, name: ck.Name}}
	}
	pub := ck.Public.String()
	msg := "binary-cache key " + pub
	r.Status, r.Reason, r.Message = true, "KeyPresent", msg
	if rot = pl.planRotation(r, gen); rot.status != nil || !r.Status {
		return // the closure is signed once the rotation ends
	}
	if o.SignedWith == pub {
		return
	}
	closure := serve.SignClosure
	switch {
	case o.SignTargetErr != "":
		r.Status, r.Reason, r.Message, r.Failed = false, "SigningFailed", msg+"; "+o.SignTargetErr, true
		return
	case o.SignTarget == "":
		r.Records = []record{{recSignedWith, pub}}
		r.Message = msg + "; no " + closure + " to sign"
		return
	}
	key := pub + " " + o.SignTarget
	s := o.Sign
	switch {
	case s.Running:
		r.Status, r.Reason = false, "SigningClosure"
		r.Message = fmt.Sprintf("%s; signing the closure of %s with it (since %s)", msg, closure, s.RunningSince.UTC().Format(time.RFC3339))
		return
	case s.done(key) && s.Err == "":
		r.Records = []record{{recSignedWith, pub}}
		r.Message = msg + "; signed the closure of " + closure
		return
	case s.failed(key):
		r.Status, r.Reason, r.Failed = false, "SigningFailed", true
		r.Message = fmt.Sprintf("%s; sign the closure of %s: %s", msg, closure, s.Err)
		if due := s.Ended.Add(scaled(jobRetry.Delay(s.Failures), spread(pl.self.Name))); o.Now.Before(due) {
			r.Requeue = due.Sub(o.Now)
			return
		}
	default:
		r.Status, r.Reason = false, "SigningClosure"
		r.Message = fmt.Sprintf("%s; signing the closure of %s with it", msg, closure)
	}
	r.Sign = &signRequest{key: key, keyFile: secret, target: o.SignTarget}
	return
}
