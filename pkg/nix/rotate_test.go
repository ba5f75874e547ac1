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

// TestPromoteNextKey: the next key takes the current one's place, the old
// secret is kept 0600 under its name, and a promotion cut short after
// its first rename is finished by running it again.
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
	if err := PromoteNextKey(keys, false); err != nil {
		t.Fatal(err)
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
	if _, err := os.Stat(filepath.Join(keys, NextKeyDir)); !os.IsNotExist(err) {
		t.Fatalf("the next key's directory stays: %v", err)
	}

	// Cut short: the current key retired (revoked), the next not moved.
	third, _, err := EnsureCacheKey(filepath.Join(keys, NextKeyDir), "stage-g3")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(keys, SecretKeyFileName), filepath.Join(keys, RetiredKeyDir, "stage-g2.revoked.pem")); err != nil {
		t.Fatal(err)
	}
	if err := PromoteNextKey(keys, true); err != nil {
		t.Fatal(err)
	}
	if ks, err := InspectCacheKey(keys); err != nil || !ks.Public.Equal(third) {
		t.Fatalf("current key %+v, %v; want stage-g3", ks, err)
	}
	if err := PromoteNextKey(keys, false); err == nil {
		t.Fatal("promoted with no next key")
	}
}

func TestPathsSignedAs(t *testing.T) {
	infos, err := ParsePathInfoJSON([]byte(`{"/nix/store/b-x":{"signatures":["stage:AAAA","cache.nixos.org-1:BBBB"]},"/nix/store/a-y":{"signatures":["stage-g2:CCCC"]},"/nix/store/c-z":{"signatures":["stagex:DDDD"]},"/nix/store/d-w":null}`))
	if err != nil {
		t.Fatal(err)
	}
	if got := PathsSignedAs(infos, "stage"); !slices.Equal(got, []string{"/nix/store/b-x"}) {
		t.Fatalf("signed by stage: %v", got)
	}
}
