package bincache

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/nixpeer/nixpeer/pkg/nix"
)

// Resign brings a cache-key rotation to the buckets the host publishes
// to, as nix.CLI.Resign does to its store: every narinfo with a good
// signature of the key from (NAME:BASE64) gets one of the key in
// keyFile. After a revoke (revoked), from's signatures are removed
// instead, and only narinfos of paths built here (the local store holds
// them as ultimate, with the same NAR hash) are signed anew: the rest
// keep the signatures they had of other keys. It returns how many
// narinfos it rewrote.
func (t *Tier) Resign(ctx context.Context, keyFile, from string, revoked bool) (int, error) {
	fromKey, err := nix.ParsePublicKey(from)
	if err != nil {
		return 0, fmt.Errorf("re-sign the caches: the old key: %w", err)
	}
	sk, err := nix.ReadSecretKeyFile(keyFile)
	if err != nil {
		return 0, fmt.Errorf("re-sign the caches: %w", err)
	}
	// No batch of the publisher runs meanwhile: one that began with the
	// keys of before would upload narinfos this pass does not see.
	t.Publisher.batch.Lock()
	defer t.Publisher.batch.Unlock()
	t.mu.Lock()
	var buckets []*Bucket
	for _, name := range slices.Sorted(maps.Keys(t.buckets)) {
		if t.publishing[name] {
			buckets = append(buckets, t.buckets[name].bucket)
		}
	}
	t.mu.Unlock()
	n := 0
	for _, b := range buckets {
		m, err := t.resignBucket(ctx, b, sk, fromKey, revoked)
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func (t *Tier) resignBucket(ctx context.Context, b *Bucket, sk nix.SecretKey, from nix.PublicKey, revoked bool) (int, error) {
	n := 0
	err := b.NarInfos(ctx, func(key string) error {
		body, size, err := b.Get(ctx, key)
		if err != nil {
			return err
		}
		data, err := io.ReadAll(io.LimitReader(body, nix.MaxNarInfoSize+1))
		body.Close()
		if err != nil {
			return fmt.Errorf("cache %s: %s: %w", b.Cache, key, err)
		}
		ni, err := nix.ParseNarInfo(data)
		if err != nil || int64(len(data)) != size {
			return nil // not one of ours: left as it is
		}
		fp := ni.Fingerprint()
		if !slices.ContainsFunc(ni.Sigs, func(s string) bool { return from.Verify(fp, s) }) {
			return nil
		}
		changed := false
		if revoked {
			ni.Sigs = slices.DeleteFunc(ni.Sigs, func(s string) bool { return strings.HasPrefix(s, from.Name()+":") })
			changed = true
			if ok, err := t.builtHere(ctx, ni); err != nil {
				return err
			} else if ok {
				ni.AddSig(sk)
			}
		} else if !slices.ContainsFunc(ni.Sigs, func(s string) bool { return strings.HasPrefix(s, sk.Name()+":") }) {
			changed = ni.AddSig(sk)
		}
		if !changed {
			return nil
		}
		text := ni.Render()
		if err := b.Put(ctx, key, bytes.NewReader(text), int64(len(text)), "text/x-nix-narinfo"); err != nil {
			return err
		}
		n++
		return nil
	})
	return n, err
}

// builtHere says whether the local store holds ni's path as built here,
// with the same NAR.
func (t *Tier) builtHere(ctx context.Context, ni nix.NarInfo) (bool, error) {
	infos, err := t.Publisher.nix.PathInfos(ctx, []string{ni.StorePath})
	if err != nil {
		return false, err
	}
	i, ok := infos[ni.StorePath]
	h, err := nix.NormalizeNarHash(i.NarHash)
	return ok && err == nil && i.Ultimate && h == ni.NarHash, nil
}
