package nix

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// maxKeyNameLen is the longest key name accepted.
const maxKeyNameLen = 255

// SecretKey is a Nix binary-cache signing key: a name and a 64-byte ed25519
// secret key. Its String and GoString methods never show the secret, so a
// SecretKey can be logged by accident without leaking it.
type SecretKey struct {
	name string
	key  ed25519.PrivateKey
}

// PublicKey is the public half of a binary-cache signing key, the value that
// goes into trusted-public-keys.
type PublicKey struct {
	name string
	key  ed25519.PublicKey
}

// GenerateCacheKey makes a new signing key pair called name, as
// `nix-store --generate-binary-cache-key NAME ...` would.
func GenerateCacheKey(name string) (SecretKey, PublicKey, error) {
	if err := ValidateKeyName(name); err != nil {
		return SecretKey{}, PublicKey{}, fmt.Errorf("generate cache key: %w", err)
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return SecretKey{}, PublicKey{}, fmt.Errorf("generate cache key %s: %w", name, err)
	}
	return SecretKey{name: name, key: priv}, PublicKey{name: name, key: pub}, nil
}

// ValidateKeyName checks a key name against [A-Za-z0-9][A-Za-z0-9._-]*,
// at most 255 bytes. The error never repeats an invalid name, since a
// damaged secret key file could put secret bytes where the name belongs.
func ValidateKeyName(name string) error {
	switch {
	case name == "":
		return errors.New("key name is empty")
	case len(name) > maxKeyNameLen:
		return fmt.Errorf("key name is %d bytes long, longer than %d", len(name), maxKeyNameLen)
	case !isAlnum(name[0]):
		return errors.New("key name does not start with a letter or digit")
	}
	for i := 1; i < len(name); i++ {
		c := name[i]
		if !isAlnum(c) && c != '.' && c != '_' && c != '-' {
			return fmt.Errorf("key name has a byte other than A-Z a-z 0-9 . _ - at offset %d", i)
		}
	}
	return nil
}

// ParseSecretKey parses the content of a secret key file: NAME:BASE64 where
// BASE64 encodes the 64-byte ed25519 secret key (seed then public key). One
// trailing newline is accepted, as Nix accepts it. The public half must match
// the seed. Errors say what is wrong but never contain any part of text.
func ParseSecretKey(text string) (SecretKey, error) {
	name, raw, err := splitKey(text, ed25519.PrivateKeySize, "secret")
	if err != nil {
		return SecretKey{}, err
	}
	want := ed25519.NewKeyFromSeed(raw[:ed25519.SeedSize])
	if !bytes.Equal(want, raw) {
		return SecretKey{}, errors.New("secret key is inconsistent: its public half does not belong to its seed")
	}
	return SecretKey{name: name, key: want}, nil
}

// ParsePublicKey parses a public key as written in trusted-public-keys or a
// public key file: NAME:BASE64 of 32 bytes. One trailing newline is accepted.
func ParsePublicKey(text string) (PublicKey, error) {
	name, raw, err := splitKey(text, ed25519.PublicKeySize, "public")
	return PublicKey{name: name, key: raw}, err
}

// splitKey parses NAME:BASE64 with a decoded length of size. Its errors never
// quote text.
func splitKey(text string, size int, kind string) (string, []byte, error) {
	text = strings.TrimSuffix(text, "\n")
	if text == "" {
		return "", nil, fmt.Errorf("%s key is empty", kind)
	}
	name, b64, ok := strings.Cut(text, ":")
	if !ok {
		return "", nil, fmt.Errorf("%s key has no ':' between its name and its base64 data", kind)
	}
	if err := ValidateKeyName(name); err != nil {
		return "", nil, fmt.Errorf("%s key: %w", kind, err)
	}
	wantLen := base64.StdEncoding.EncodedLen(size)
	if len(b64) != wantLen {
		return "", nil, fmt.Errorf("%s key %s: base64 data is %d characters long, want %d (a %d-byte ed25519 key)", kind, name, len(b64), wantLen, size)
	}
	raw, err := base64.StdEncoding.Strict().DecodeString(b64)
	if err != nil {
		// The error of encoding/base64 names only an offset, no data.
		return "", nil, fmt.Errorf("%s key %s: invalid base64: %w", kind, name, err)
	}
	if len(raw) != size {
		return "", nil, fmt.Errorf("%s key %s: decodes to %d bytes, want %d", kind, name, len(raw), size)
	}
	return name, raw, nil
}

// Name is the key's name, the part before the colon.
func (k SecretKey) Name() string { return k.name }

// Public returns the public half of k.
func (k SecretKey) Public() PublicKey {
	if k.key == nil {
		return PublicKey{}
	}
	return PublicKey{name: k.name, key: k.key.Public().(ed25519.PublicKey)}
}

// Encode returns the content of a secret key file, NAME:BASE64 without a
// trailing newline, byte for byte what nix-store writes.
func (k SecretKey) Encode() []byte {
	return []byte(k.name + ":" + base64.StdEncoding.EncodeToString(k.key))
}

// String describes the key without its secret.
func (k SecretKey) String() string { return "nix cache secret key " + k.name + " (redacted)" }

// GoString describes the key without its secret, for %#v.
func (k SecretKey) GoString() string {
	return fmt.Sprintf("nix.SecretKey{name: %q, key: redacted}", k.name)
}

// Sign signs a fingerprint (see Fingerprint) and returns NAME:BASE64, the
// form Nix stores in a path's signatures.
func (k SecretKey) Sign(fingerprint string) string {
	sig := ed25519.Sign(k.key, []byte(fingerprint))
	return k.name + ":" + base64.StdEncoding.EncodeToString(sig)
}

// Name is the key's name, the part before the colon.
func (k PublicKey) Name() string { return k.name }

// Key returns the raw ed25519 public key.
func (k PublicKey) Key() ed25519.PublicKey { return k.key }

// String returns NAME:BASE64, the form of trusted-public-keys and of the
// public key file (without a trailing newline).
func (k PublicKey) String() string {
	return k.name + ":" + base64.StdEncoding.EncodeToString(k.key)
}

// Equal reports whether k and o are the same key with the same name.
func (k PublicKey) Equal(o PublicKey) bool {
	return k.name == o.name && bytes.Equal(k.key, o.key)
}

// Verify reports whether sig, in the form NAME:BASE64, is a signature of
// fingerprint by this key. A signature made under another name is not.
func (k PublicKey) Verify(fingerprint, sig string) bool {
	name, b64, ok := strings.Cut(sig, ":")
	if !ok || name != k.name || len(k.key) != ed25519.PublicKeySize {
		return false
	}
	raw, err := base64.StdEncoding.Strict().DecodeString(b64)
	if err != nil || len(raw) != ed25519.SignatureSize {
		return false
	}
	return ed25519.Verify(k.key, []byte(fingerprint), raw)
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}
