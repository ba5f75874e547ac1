package reconcile

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/nixpeer/nixpeer/pkg/nix"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// A rotation of a serving host's binary-cache signing key, in the order
// that never leaves a consumer trusting none of the host's keys, nor a
// path offered with no signature a consumer trusts:
//
//  1. MakingKey: the next key is made beside the current one
//     (nix.NextKeyDir), named for its generation (nix.GenerationName);
//     the facts publish both, and consumers trust both;
//  2. Trusting: until every consumer's facts say both are live in its
//     Nix settings (an operator may force past one that is away);
//  3. SigningWithBoth: secret-key-files names both keys, until verified
//     live;
//  4. Resigning: every path with a good signature of the current key
//     gets one of the next key;
//  5. Retiring: the current key file is replaced by the next key; the
//     old secret is kept, 0600, in nix.RetiredKeyDir, and consumers drop
//     its public key; the next key's own files go once the settings no
//     longer name them.
//
// Every phase is derived from what is on disk, in the consumers' facts
// and in the store's records, so a restart resumes where it was.
// A revoke (the current key believed stolen) records the re-signing it
// owes, then makes a next key (a next key already there lay beside the
// stolen one, so it is revoked too) and promotes it at once: consumers
// drop the stolen key as soon as they hear, and the new key re-signs what
// the stolen one had signed of the paths built here.
const (
	PhaseMakingKey       = "MakingKey"
	PhaseTrusting        = "Trusting"
	PhaseSigningWithBoth = "SigningWithBoth"
	PhaseResigning       = "Resigning"
	PhaseRetiring        = "Retiring"
	PhaseRevoking        = "Revoking"
)

// rotationRequest is what an operator asked for through the socket
// (nixpeer rotate cache-key, revoke cache-key). Only the API writes it;
// each value is inert once the key it names has moved on.
type rotationRequest struct {
	// Generation is the least key generation to sign with, beside the
	// file's serve.keyGeneration.
	Generation int `json:"generation,omitempty"`
	// Force is the next public key whose wait for consumers is skipped.
	Force string `json:"force,omitempty"`
	// Revoke is the public key revoked, RevokeNext the next key of a
	// rotation under way then, revoked with it.
	Revoke     string `json:"revoke,omitempty"`
	RevokeNext string `json:"revokeNext,omitempty"`
}

// resignRecord is what re-signing is owed or done.
type resignRecord struct {
	// Done is the next public key whose re-signing ended.
	Done string `json:"done,omitempty"`
	// From is, after a revoke, the public key (NAME:BASE64) whose paths
	// the current key still re-signs.
	From string `json:"from,omitempty"`
}

// rotationPlan is a rotation's part of the cache key resource.
type rotationPlan struct {
	// signWith are the secret key files the Nix settings name.
	signWith []string
	// next is the next public key, published beside the current one.
	next string
	// status is the rotation under way; nil when none is.
	status *status.Rotation
	// awaitsLive: the rotation goes on once the settings planned now
	// (with both keys, or after a promotion without the next key's file)
	// are live.
	awaitsLive bool
}

// planRotation plans what a rotation or a revoke of the usable current
// key ck (generation gen) does in this pass, into r (the cache key
// resource, whose condition stays True while the rotation goes on).
func (pl *planner) planRotation(r *Resource, gen int) rotationPlan {
	o, l, serve := pl.o, pl.o.Layout, pl.self.Serve
	ck, next := o.CacheKey, o.NextCacheKey
	secret := filepath.Join(l.KeysDir, nix.SecretKeyFileName)
	nextDir := filepath.Join(l.KeysDir, nix.NextKeyDir)
	nextSecret := filepath.Join(nextDir, nix.SecretKeyFileName)
	pub := ck.Public.String()
	out := rotationPlan{signWith: []string{secret}}
	phase := func(p, to, msg string) {
		out.status = &status.Rotation{Phase: p, From: ck.Name, To: to, Message: msg}
		r.Reason, r.Message = "Rotation"+p, msg
	}
	target := max(serve.KeyGeneration, o.Rotation.Generation)
	revoked := o.Rotation.Revoke == pub
	if revoked {
		target = max(target, gen+1)
	}

	switch {
	case next.Err != nil:
		r.Status, r.Reason, r.Message, r.Failed = false, "NextCacheKeyUnusable", next.Err.Error(), true
		return out
	case next.Missing && (revoked || gen < target):
		name := nix.GenerationName(serve.KeyName, target)
		r.Keys = append(r.Keys, keyWant{kind: keyCache, path: nextDir, name: name})
		r.Requeue = soon
		p := PhaseMakingKey
		if revoked {
			p = PhaseRevoking
		}
		phase(p, name, "making the next signing key "+name)
		return out
	case next.Missing:
		if o.Resigned.From != "" {
			pl.resign(r, secret, o.Resigned.From, true, resignRecord{}, &out,
				fmt.Sprintf("re-signing with %s what the revoked key signed", ck.Name))
		}
		return out
	case next.Public.Equal(ck.Public):
		// Promoted: the next key's files go once the settings that
		// name them are no longer live (Nix reads every file named for
		// each path it signs, and fails a build on one that is gone).
		phase(PhaseRetiring, ck.Name, "the next key took the current one's place; its own files go once the Nix settings no longer name them")
		if slices.Contains(o.Applied.SigningWith, nextSecret) {
			out.awaitsLive = true
			return out
		}
		r.Keys = append(r.Keys, keyWant{kind: keyRemoveNext, path: l.KeysDir})
		r.Requeue = soon
		return out
	}

	ngen, ok := nix.KeyGeneration(serve.KeyName, next.Name)
	if !ok || ngen <= gen {
		r.Status, r.Reason, r.Failed = false, "NextCacheKeyUnusable", true
		r.Message = fmt.Sprintf("the next signing key in %s is named %q, not a later generation of %q than the current %q: move it away (mv %s %s.old)",
			nextDir, next.Name, serve.KeyName, ck.Name, nextDir, nextDir)
		return out
	}
	if next.NeedsRepair {
		r.Keys = append(r.Keys, keyWant{kind: keyCache, path: nextDir, name: next.Name})
	}
	nextPub := next.Public.String()
	out.next = nextPub
	if revoked {
		out.next = "" // dropped at once, not trusted beside the new key
		r.Requeue = soon
		msg := fmt.Sprintf("the key %s is revoked: %s replaces it now", ck.Name, next.Name)
		switch {
		case nextPub == o.Rotation.RevokeNext:
			// Made before the revoke, beside the stolen key: revoked too.
			r.Keys = append(r.Keys, keyWant{kind: keyRemoveNext, path: l.KeysDir, revoked: true})
			msg = fmt.Sprintf("the key %s is revoked, and the next key %s made before with it", ck.Name, next.Name)
		case o.Resigned.From != pub:
			// The re-signing it owes is stored before the promotion.
			r.Records = append(r.Records, record{recResigned, resignRecord{From: pub}})
		default:
			r.Keys = append(r.Keys, keyWant{kind: keyPromote, path: l.KeysDir, revoked: true})
		}
		phase(PhaseRevoking, next.Name, msg)
		return out
	}

	if waiting := pl.untrusting(nextPub); len(waiting) > 0 && o.Rotation.Force != nextPub {
		phase(PhaseTrusting, next.Name, fmt.Sprintf("waiting for %s to trust the next key %s (nixpeer rotate cache-key --force goes on without them)",
			strings.Join(waiting, ", "), next.Name))
		out.status.WaitingOn = waiting
		return out
	}
	out.signWith = append(out.signWith, nextSecret)
	switch {
	case !slices.Contains(o.Applied.SigningWith, nextSecret):
		out.awaitsLive = true
		phase(PhaseSigningWithBoth, next.Name, fmt.Sprintf("signing with %s and %s: waiting for the Nix settings to be live (see NixSettingsApplied)", ck.Name, next.Name))
	case o.Resigned.Done != nextPub:
		pl.resign(r, nextSecret, pub, false, resignRecord{Done: nextPub}, &out,
			fmt.Sprintf("signing with both; re-signing what %s signed with %s", ck.Name, next.Name))
	default:
		r.Keys = append(r.Keys, keyWant{kind: keyPromote, path: l.KeysDir})
		r.Records = append(r.Records, record{recSignedWith, nextPub})
		r.Requeue = soon
		phase(PhaseRetiring, next.Name, fmt.Sprintf("retiring %s: %s signs alone from now on", ck.Name, next.Name))
	}
	return out
}

// resign plans the re-signing, with the key in keyFile, of what the key
// from (NAME:BASE64) signed (with ultimateOnly, of what was built here);
// done is the record once it ended.
func (pl *planner) resign(r *Resource, keyFile, from string, ultimateOnly bool, done resignRecord, out *rotationPlan, msg string) {
	o := pl.o
	key := keyFile + " " + from + " " + done.Done
	fromName, _, _ := strings.Cut(from, ":")
	out.status = &status.Rotation{Phase: PhaseResigning, From: fromName, To: o.CacheKey.Name, Message: msg}
	if done.Done != "" {
		out.status.To = o.NextCacheKey.Name
	}
	r.Reason, r.Message = "Rotation"+PhaseResigning, msg
	if pl.self.Serve != nil {
		for _, c := range pl.self.Serve.PublishTo {
			if err := o.CacheCreds[c].Err; err != nil {
				// Its narinfos must carry the new key before consumers
				// drop the old one.
				out.status.Message = fmt.Sprintf("%s: waiting for usable credentials of cache %s, whose narinfos are re-signed too (%v)", msg, c, err)
				r.Message = out.status.Message
				return
			}
		}
	}
	s := o.Resign
	switch {
	case s.Running:
		return
	case s.done(key) && s.Err == "":
		r.Records = append(r.Records, record{recResigned, done})
		r.Requeue = soon
		return
	case s.failed(key):
		r.Status, r.Reason, r.Failed = false, "ResigningFailed", true
		r.Message = msg + ": " + s.Err
		if due := s.Ended.Add(scaled(jobRetry.Delay(s.Failures), spread(pl.self.Name))); o.Now.Before(due) {
			r.Requeue = due.Sub(o.Now)
			return
		}
	}
	r.Resign = &resignRequest{key: key, keyFile: keyFile, from: from, ultimateOnly: ultimateOnly}
}

// untrusting are the consumers of this host, and the readers of the
// caches it publishes to, whose facts do not say that they trust key
// live, sorted.
func (pl *planner) untrusting(key string) []string {
	var out []string
	for _, c := range consumersOf(pl.file, pl.self) {
		if f := pl.o.Peers[c.Name].Facts; f == nil || !slices.Contains(f.TrustedCacheKeys, key) {
			out = append(out, c.Name)
		}
	}
	slices.Sort(out)
	return out
}

// resignRequest is the job that adds signatures of the key in keyFile to
// the paths signed by the key named from.
type resignRequest struct {
	key          string
	keyFile      string
	from         string // NAME:BASE64
	ultimateOnly bool
}
