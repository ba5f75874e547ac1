package nix

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestGenerationNames(t *testing.T) {
	for _, c := range []struct {
		keyName, name string
		gen           int
		ok            bool
	}{
		{"cache.example.org-1", "cache.example.org-1", 1, true},
		{"cache.example.org-1", "cache.example.org-1-g2", 2, true},
		{"stage", "stage-g9999", 9999, true},
		{"stage", "stage-g10000", 0, false},
		{"stage", "stage-g1", 0, false}, // generation 1 is the keyName itself
		{"stage", "stage-g02", 0, false},
		{"stage", "stage-g", 0, false},
		{"stage", "stage-gx", 0, false},
		{"stage", "stage-g+2", 0, false}, // found by FuzzKeyGeneration
		{"stage", "stage-g2 ", 0, false},
		{"stage", "stage2", 0, false},
		{"stage", "other-g2", 0, false},
	} {
		gen, ok := KeyGeneration(c.keyName, c.name)
		if gen != c.gen || ok != c.ok {
			t.Errorf("KeyGeneration(%q, %q) = %d, %v; want %d, %v", c.keyName, c.name, gen, ok, c.gen, c.ok)
		}
		if ok && GenerationName(c.keyName, gen) != c.name {
			t.Errorf("GenerationName(%q, %d) = %q; want %q", c.keyName, gen, GenerationName(c.keyName, gen), c.name)
		}
	}
}

// TestPromoteNextKey: the next key takes the current one's place by an
// atomic replace, the old secret is kept 0600 under its name, the next
// key's files stay until RemoveNextKey, and running it again changes
// nothing; a revoke keeps a next key too, as revoked.
func TestPromoteNextKey(t *testing.T) {
	dir := t.TempDir()
	keys := filepath.Join(dir, "keys")
	old, _, err := EnsureCacheKey(keys, "stage")
	if err != nil {
		t.Fatal(err)
	}
	next, _, err := EnsureCacheKey(filepath.Join(keys, NextKeyDir), "stage-g2")
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := PromoteNextKey(keys, false); err != nil {
			t.Fatal(err)
		}
	}
	ks, err := InspectCacheKey(keys)
	if err != nil || !ks.Public.Equal(next) || !ks.NeedsRepair {
		t.Fatalf("current key %+v, %v; want stage-g2, its public file still to rewrite", ks, err)
	}
	retired := filepath.Join(keys, RetiredKeyDir, "stage.pem")
	sk, st, err := readSecretKeyFile(retired)
	if err != nil || !sk.Public().Equal(old) || st.Mode().Perm() != 0o600 {
		t.Fatalf("retired key: %v, %v; want the old key, 0600", sk, err)
	}
	if nk, err := InspectCacheKey(filepath.Join(keys, NextKeyDir)); err != nil || !nk.Public.Equal(next) {
		t.Fatalf("the next key's files are gone before the settings let go of them: %+v %v", nk, err)
	}
	if err := RemoveNextKey(keys, false); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(keys, NextKeyDir)); !os.IsNotExist(err) {
		t.Fatalf("the next key's directory stays: %v", err)
	}
	if err := PromoteNextKey(keys, false); err == nil {
		t.Fatal("promoted with no next key")
	}

	// Revoked with the current key: the next one is kept as revoked too.
	if _, _, err := EnsureCacheKey(filepath.Join(keys, NextKeyDir), "stage-g3"); err != nil {
		t.Fatal(err)
	}
	if err := RemoveNextKey(keys, true); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(keys, RetiredKeyDir, "stage-g3.revoked.pem")); err != nil {
		t.Fatalf("the revoked next key is not kept: %v", err)
	}
}

// TestToResign: only paths with a good signature of the old key, none of
// the new one yet, and with ultimateOnly only paths built here.
func TestToResign(t *testing.T) {
	oldSK, oldPK, _ := GenerateCacheKey("stage")
	forgerSK, _, _ := GenerateCacheKey("stage")
	info := func(path string, ultimate bool, sks ...SecretKey) PathInfo {
		i := PathInfo{Path: path, NarHash: "sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s", NarSize: 120, Ultimate: ultimate}
		for _, sk := range sks {
			i.Signatures = append(i.Signatures, sk.Sign(Fingerprint(i.Path, i.NarHash, i.NarSize, i.References)))
		}
		return i
	}
	newSK, _, _ := GenerateCacheKey("stage-g2")
	infos := []PathInfo{
		info("/nix/store/00000000000000000000000000000001-a", true, oldSK),
		info("/nix/store/00000000000000000000000000000002-b", false, oldSK),
		info("/nix/store/00000000000000000000000000000003-c", true, forgerSK), // named stage, not its key
		info("/nix/store/00000000000000000000000000000004-d", true, oldSK, newSK),
		info("/nix/store/00000000000000000000000000000005-e", true),
	}
	if got := ToResign(infos, oldPK, "stage-g2", false); !slices.Equal(got, []string{"/nix/store/00000000000000000000000000000001-a", "/nix/store/00000000000000000000000000000002-b"}) {
		t.Fatalf("to re-sign: %v", got)
	}
	if got := ToResign(infos, oldPK, "stage-g2", true); !slices.Equal(got, []string{"/nix/store/00000000000000000000000000000001-a"}) {
		t.Fatalf("to re-sign, built here only: %v", got)
	}
}
