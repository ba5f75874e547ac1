package nix

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestGenerateCacheKeyFormat(t *testing.T) {
	sk, pk, err := GenerateCacheKey("staging-1")
	if err != nil {
		t.Fatal(err)
	}
	enc := string(sk.Encode())
	if !strings.HasPrefix(enc, "staging-1:") || len(enc) != len("staging-1:")+88 || strings.HasSuffix(enc, "\n") {
		t.Fatalf("secret key encoding has the wrong shape (length %d)", len(enc))
	}
	if s := pk.String(); !strings.HasPrefix(s, "staging-1:") || len(s) != len("staging-1:")+44 {
		t.Fatalf("public key = %q, want staging-1: and 44 base64 characters", s)
	}
	back, err := ParseSecretKey(enc)
	if err != nil {
		t.Fatalf("ParseSecretKey(Encode()): %v", err)
	}
	if !back.Public().Equal(pk) || back.Name() != "staging-1" {
		t.Fatalf("parsed secret key does not match the generated one")
	}
	pk2, err := ParsePublicKey(pk.String())
	if err != nil || !pk2.Equal(pk) {
		t.Fatalf("ParsePublicKey(String()) = %v, %v", pk2, err)
	}
	if _, _, err := GenerateCacheKey("bad name"); err == nil {
		t.Fatal("GenerateCacheKey accepted a name with a space")
	}
}

func TestValidateKeyName(t *testing.T) {
	for _, name := range []string{"a", "Z9", "cache.example.org-1", "x_y-z.1", strings.Repeat("a", 255)} {
		if err := ValidateKeyName(name); err != nil {
			t.Errorf("ValidateKeyName(%q) = %v, want nil", name, err)
		}
	}
	for _, name := range []string{"", "-a", ".a", "_a", "a b", "a:b", "a\nb", "a\"", "a${b}", "é", strings.Repeat("a", 256)} {
		if err := ValidateKeyName(name); err == nil {
			t.Errorf("ValidateKeyName(%q) = nil, want an error", name)
		}
	}
}

func TestParseSecretKeyRefusesDamage(t *testing.T) {
	sk, _, err := GenerateCacheKey("k")
	if err != nil {
		t.Fatal(err)
	}
	good := string(sk.Encode())
	b64 := strings.TrimPrefix(good, "k:")
	raw, _ := base64.StdEncoding.DecodeString(b64)
	inconsistent := slices.Clone(raw)
	inconsistent[40] ^= 1
	for _, tc := range []struct{ name, text, want string }{
		{"empty", "", "empty"},
		{"newline only", "\n", "empty"},
		{"no colon", b64, "no ':'"},
		{"bad name", "-k:" + b64, "key name"},
		{"truncated", good[:len(good)-10], "characters long"},
		{"half written", good[:len(good)/2], "characters long"},
		{"too long", good + "AAAA", "characters long"},
		{"public key instead", "k:" + b64[:44], "characters long"},
		{"not base64", "k:" + strings.Repeat("*", 88), "invalid base64"},
		{"two newlines", good + "\n\n", "characters long"},
		{"inconsistent halves", "k:" + base64.StdEncoding.EncodeToString(inconsistent), "public half"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseSecretKey(tc.text)
			if err == nil {
				t.Fatal("ParseSecretKey accepted it")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
			if strings.Contains(err.Error(), b64[:16]) {
				t.Errorf("error %q holds secret key bytes", err)
			}
		})
	}
	if _, err := ParseSecretKey(good + "\n"); err != nil {
		t.Errorf("ParseSecretKey refused a key with one trailing newline (Nix accepts it): %v", err)
	}
}

func TestParsePublicKey(t *testing.T) {
	_, pk, err := GenerateCacheKey("k")
	if err != nil {
		t.Fatal(err)
	}
	good := pk.String()
	for _, bad := range []string{"", "k", "k:", ":" + good[2:], "k:" + good[2:len(good)-1], good + "=", "k:" + strings.Repeat("A", 43) + "B", "k k:" + good[2:], good + " x"} {
		if _, err := ParsePublicKey(bad); err == nil {
			t.Errorf("ParsePublicKey(%q) accepted it", bad)
		}
	}
	if _, err := ParsePublicKey(good + "\n"); err != nil {
		t.Errorf("ParsePublicKey refused one trailing newline: %v", err)
	}
}

func TestSignVerify(t *testing.T) {
	sk, pk, err := GenerateCacheKey("k")
	if err != nil {
		t.Fatal(err)
	}
	_, other, _ := GenerateCacheKey("k")
	fp := Fingerprint("/nix/store/aaaa-x", "sha256:"+strings.Repeat("0", 52), 120, nil)
	sig := sk.Sign(fp)
	if !strings.HasPrefix(sig, "k:") {
		t.Fatalf("signature %q does not start with the key name", sig)
	}
	if !pk.Verify(fp, sig) {
		t.Fatal("Verify refused a good signature")
	}
	renamed, _ := ParsePublicKey("j:" + strings.TrimPrefix(pk.String(), "k:"))
	for name, ok := range map[string]bool{
		"other fingerprint": pk.Verify(fp+"x", sig),
		"other key":         other.Verify(fp, sig),
		"other name":        renamed.Verify(fp, sig),
		"no name":           pk.Verify(fp, strings.TrimPrefix(sig, "k:")),
		"garbage":           pk.Verify(fp, "k:!!"),
		"zero key":          PublicKey{}.Verify(fp, sig),
	} {
		if ok {
			t.Errorf("Verify accepted a signature with %s", name)
		}
	}
}

func TestSecretKeyNeverFormatted(t *testing.T) {
	sk, _, err := GenerateCacheKey("k")
	if err != nil {
		t.Fatal(err)
	}
	secret := strings.TrimPrefix(string(sk.Encode()), "k:")
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q"} {
		got := fmt.Sprintf(verb, sk)
		if strings.Contains(got, secret[:12]) || strings.Contains(got, fmt.Sprint([]byte(sk.key)[:4])) {
			t.Errorf("%s of a SecretKey shows the secret: %s", verb, got)
		}
	}
	got := fmt.Sprintf("%v", struct{ K SecretKey }{sk})
	if strings.Contains(got, secret[:12]) {
		t.Errorf("a struct holding a SecretKey shows the secret: %s", got)
	}
}

// storeWithPath makes a store of the test's own under a temporary directory
// and adds a path with two references to it; it returns the store
// directory and the path.
func storeWithPath(t *testing.T, env []string) (string, string) {
	t.Helper()
	store := filepath.Join(t.TempDir(), "store")
	expr := `let a = builtins.toFile "a" "x"; b = builtins.toFile "b" "y"; in builtins.toFile "c" "${b} ${a}"`
	out := runProgram(t, env, "nix-instantiate", "--store", store, "--read-write-mode", "--eval", "--json", "-E", expr)
	var p string
	if err := json.Unmarshal(out, &p); err != nil {
		t.Fatalf("nix-instantiate printed %q: %v", out, err)
	}
	return store, p
}

// signAndRead signs path with keyFile through real Nix and reads back its
// path info.
func signAndRead(t *testing.T, env []string, store, keyFile, path string) PathInfo {
	t.Helper()
	runProgram(t, env, "nix", "store", "sign", "--extra-experimental-features", "nix-command", "--store", store, "--key-file", keyFile, path)
	out := runProgram(t, env, "nix", "path-info", "--extra-experimental-features", "nix-command", "--store", store, "--json", "--sigs", path)
	infos, err := ParsePathInfoJSON(out) // both shapes: a list before 2.19, an object after
	if err != nil || len(infos) != 1 {
		t.Fatalf("nix path-info printed %q: %v", out, err)
	}
	return infos[0]
}

// signatureBy returns the signature named name.
func signatureBy(t *testing.T, info PathInfo, name string) string {
	t.Helper()
	for _, s := range info.Signatures {
		if strings.HasPrefix(s, name+":") {
			return s
		}
	}
	t.Fatalf("no signature by %s among %q", name, info.Signatures)
	return ""
}

// TestGoKeyAcceptedByNix: a key made by EnsureCacheKey signs a path in real
// Nix, and Go verifies that signature with Fingerprint and Verify.
func TestGoKeyAcceptedByNix(t *testing.T) {
	requireNix(t, "nix", "nix-instantiate")
	env := nixEnv(t)
	dir := filepath.Join(t.TempDir(), "keys")
	pk, _, err := EnsureCacheKey(dir, "staging.example-1")
	if err != nil {
		t.Fatal(err)
	}
	store, path := storeWithPath(t, env)
	info := signAndRead(t, env, store, filepath.Join(dir, SecretKeyFileName), path)
	if len(info.References) != 2 {
		t.Fatalf("test path has references %q, want 2", info.References)
	}
	sig := signatureBy(t, info, pk.Name())
	refs := slices.Clone(info.References)
	slices.Reverse(refs) // Fingerprint must sort them itself.
	fp := Fingerprint(info.Path, info.NarHash, info.NarSize, refs)
	if !pk.Verify(fp, sig) {
		t.Fatalf("Go does not verify Nix's signature %q of fingerprint %q", sig, fp)
	}
	if pk.Verify(Fingerprint(info.Path, info.NarHash, info.NarSize+1, refs), sig) {
		t.Fatal("Verify accepted the signature for another NAR size")
	}
}

// TestNixKeyParsedByGo: a key pair made by nix-store parses in Go, its halves
// match, and Go signs exactly as Nix does (ed25519 is deterministic).
func TestNixKeyParsedByGo(t *testing.T) {
	requireNix(t, "nix", "nix-store", "nix-instantiate")
	env := nixEnv(t)
	dir := t.TempDir()
	skFile, pkFile := filepath.Join(dir, "sk"), filepath.Join(dir, "pk")
	runProgram(t, env, "nix-store", "--generate-binary-cache-key", "prod-cache-1", skFile, pkFile)
	skText, _ := os.ReadFile(skFile)
	pkText, _ := os.ReadFile(pkFile)
	sk, err := ParseSecretKey(string(skText))
	if err != nil {
		t.Fatalf("ParseSecretKey(nix's secret key): %v", err)
	}
	pk, err := ParsePublicKey(string(pkText))
	if err != nil {
		t.Fatalf("ParsePublicKey(nix's public key): %v", err)
	}
	if !sk.Public().Equal(pk) || pk.String() != string(pkText) || string(sk.Encode()) != string(skText) {
		t.Fatal("Go's encoding of nix's key pair differs from nix's files")
	}
	fp := Fingerprint("/nix/store/00000000000000000000000000000000-x", "sha256-"+base64.StdEncoding.EncodeToString(make([]byte, 32)), 8, nil)
	if !pk.Verify(fp, sk.Sign(fp)) {
		t.Fatal("a Go signature with nix's secret key does not verify with nix's public key")
	}

	store, path := storeWithPath(t, env)
	info := signAndRead(t, env, store, skFile, path)
	nixSig := signatureBy(t, info, "prod-cache-1")
	goSig := sk.Sign(Fingerprint(info.Path, info.NarHash, info.NarSize, info.References))
	if goSig != nixSig {
		t.Fatalf("Go signature %q differs from Nix's %q for the same key and path", goSig, nixSig)
	}
	if len(sk.key) != ed25519.PrivateKeySize {
		t.Fatal("parsed secret key has the wrong size")
	}
}
