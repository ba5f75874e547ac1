package nix

import (
	"bytes"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestEnsureCacheKeyCreatesThenKeeps(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	pk, res, err := EnsureCacheKey(dir, "staging-1")
	if err != nil {
		t.Fatal(err)
	}
	if !res.Created || !res.PublicRewritten {
		t.Fatalf("first call: result %+v, want Created and PublicRewritten", res)
	}
	secretPath, publicPath := filepath.Join(dir, SecretKeyFileName), filepath.Join(dir, PublicKeyFileName)
	assertMode(t, dir, 0o700)
	assertMode(t, secretPath, 0o600)
	assertMode(t, publicPath, 0o644)
	pub, _ := os.ReadFile(publicPath)
	if string(pub) != pk.String() {
		t.Fatalf("public file %q, want %q", pub, pk.String())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Fatalf("key directory holds %d entries, want the two key files only", len(entries))
	}

	old := time.Unix(1_000_000, 0)
	for _, p := range []string{secretPath, publicPath} {
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
	secretBefore, _ := os.ReadFile(secretPath)
	pk2, res, err := EnsureCacheKey(dir, "staging-1")
	if err != nil {
		t.Fatal(err)
	}
	if res.Created || res.PublicRewritten || !pk2.Equal(pk) {
		t.Fatalf("second call: result %+v, same key %v; want nothing done", res, pk2.Equal(pk))
	}
	for _, p := range []string{secretPath, publicPath} {
		if st, _ := os.Stat(p); !st.ModTime().Equal(old) {
			t.Errorf("%s was touched by the second call", p)
		}
	}
	if secretAfter, _ := os.ReadFile(secretPath); !bytes.Equal(secretBefore, secretAfter) {
		t.Fatal("secret key changed")
	}
}

func TestEnsureCacheKeyRepairsPublicFileAndModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	pk, _, err := EnsureCacheKey(dir, "k")
	if err != nil {
		t.Fatal(err)
	}
	secretPath, publicPath := filepath.Join(dir, SecretKeyFileName), filepath.Join(dir, PublicKeyFileName)
	for name, damage := range map[string]func(){
		"missing": func() { os.Remove(publicPath) },
		"wrong":   func() { os.WriteFile(publicPath, []byte("k:wrong"), 0o644) },
		"modes": func() {
			os.Chmod(secretPath, 0o644)
			os.Chmod(dir, 0o755)
		},
	} {
		damage()
		got, res, err := EnsureCacheKey(dir, "k")
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if res.Created || !got.Equal(pk) {
			t.Fatalf("%s: result %+v, same key %v; want the key kept", name, res, got.Equal(pk))
		}
		if b, _ := os.ReadFile(publicPath); string(b) != pk.String() {
			t.Fatalf("%s: public file %q, want %q", name, b, pk.String())
		}
		assertMode(t, secretPath, 0o600)
		assertMode(t, dir, 0o700)
	}
}

func TestEnsureCacheKeyRefusesDamagedSecret(t *testing.T) {
	sk, _, err := GenerateCacheKey("k")
	if err != nil {
		t.Fatal(err)
	}
	good := sk.Encode()
	secretB64 := strings.TrimPrefix(string(good), "k:")
	raw, _ := base64.StdEncoding.DecodeString(secretB64)
	raw[63] ^= 0x80
	for _, tc := range []struct {
		name    string
		content []byte
		want    string
	}{
		{"empty", nil, "empty"},
		{"half written", good[:len(good)/2], "characters long"},
		{"garbage", []byte("not a key at all"), "no ':'"},
		{"other name", []byte(strings.Replace(string(good), "k:", "j:", 1)), `named "j", not "k"`},
		{"inconsistent", []byte("k:" + base64.StdEncoding.EncodeToString(raw)), "public half"},
		{"huge", bytes.Repeat([]byte("k"), 10000), "bytes long"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			secretPath := filepath.Join(dir, SecretKeyFileName)
			if err := os.WriteFile(secretPath, tc.content, 0o600); err != nil {
				t.Fatal(err)
			}
			_, _, err := EnsureCacheKey(dir, "k")
			if err == nil {
				t.Fatal("EnsureCacheKey accepted it")
			}
			msg := err.Error()
			for _, part := range []string{secretPath, tc.want, "move it away"} {
				if !strings.Contains(msg, part) {
					t.Errorf("error %q does not say %q", msg, part)
				}
			}
			if strings.Contains(msg, secretB64[:16]) || strings.Contains(msg, secretB64[40:56]) {
				t.Errorf("error %q holds secret key bytes", msg)
			}
			if got, _ := os.ReadFile(secretPath); !bytes.Equal(got, tc.content) {
				t.Error("the damaged key file was changed")
			}
			if _, err := os.Stat(filepath.Join(dir, PublicKeyFileName)); err == nil {
				t.Error("a public key file was written for a damaged secret key")
			}
		})
	}
	t.Run("directory in its place", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.Mkdir(filepath.Join(dir, SecretKeyFileName), 0o700); err != nil {
			t.Fatal(err)
		}
		if _, _, err := EnsureCacheKey(dir, "k"); err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Fatalf("err = %v, want one about a non-regular file", err)
		}
	})
	t.Run("bad wanted name", func(t *testing.T) {
		if _, _, err := EnsureCacheKey(t.TempDir(), "bad name"); err == nil {
			t.Fatal("EnsureCacheKey accepted an invalid key name")
		}
	})
}

func assertMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Mode().Perm(); got != want {
		t.Errorf("%s has mode %v, want %v", path, got, want)
	}
}
