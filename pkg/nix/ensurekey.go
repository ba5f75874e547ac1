package nix

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/nixpeer/nixpeer/pkg/atomicfile"
	"github.com/nixpeer/nixpeer/pkg/safefile"
)

// Names of the key files EnsureCacheKey keeps.
const (
	SecretKeyFileName = "cache-priv-key.pem"
	PublicKeyFileName = "cache-pub-key.pem"
)

// maxKeyFileSize bounds what is read from a key file.
const maxKeyFileSize = 4096

// Result tells what EnsureCacheKey did.
type Result struct {
	// Created is set when a new key pair was generated.
	Created bool
	// PublicRewritten is set when the public key file was (re)written.
	PublicRewritten bool
}

// EnsureCacheKey makes sure dir holds the binary-cache signing key called
// name: dir/cache-priv-key.pem (mode 0600) and dir/cache-pub-key.pem (mode
// 0644), dir itself mode 0700 (so dir must be a directory of its own). It
// returns the public key.
//
// A key is generated only when the secret key file does not exist; it is
// created so that it never replaces a file another process made meanwhile.
// A valid secret key is never regenerated: its public file is rewritten from
// it when missing or different, and its mode is set back to 0600. A secret
// key file that is empty, damaged, half-written or named other than name is
// an error that names the file, says what is wrong and how to fix it; the
// file is left untouched. No error ever holds secret key bytes.
func EnsureCacheKey(dir, name string) (PublicKey, Result, error) {
	var res Result
	if err := ValidateKeyName(name); err != nil {
		return PublicKey{}, res, fmt.Errorf("ensure cache key in %s: %w", dir, err)
	}
	if err := ensurePrivateDir(dir); err != nil {
		return PublicKey{}, res, err
	}
	secretPath := filepath.Join(dir, SecretKeyFileName)
	sk, st, err := readSecretKeyFile(secretPath)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		sk, _, err = GenerateCacheKey(name)
		if err != nil {
			return PublicKey{}, res, err
		}
		if err := atomicfile.CreateExclusive(secretPath, sk.Encode(), 0o600); err != nil {
			return PublicKey{}, res, fmt.Errorf("write new cache signing key: %w", err)
		}
		res.Created = true
	case err != nil:
		return PublicKey{}, res, err
	case sk.Name() != name:
		return PublicKey{}, res, unusableKey(secretPath, fmt.Sprintf("its key is named %q, not %q", sk.Name(), name))
	case st.Mode().Perm() != 0o600:
		if err := os.Chmod(secretPath, 0o600); err != nil {
			return PublicKey{}, res, fmt.Errorf("restrict mode of cache signing key %s: %w", secretPath, err)
		}
	}
	pub := sk.Public()
	changed, err := atomicfile.WriteIfChanged(filepath.Join(dir, PublicKeyFileName), []byte(pub.String()), 0o644)
	if err != nil {
		return PublicKey{}, res, fmt.Errorf("write cache public key: %w", err)
	}
	res.PublicRewritten = changed
	return pub, res, nil
}

// ensurePrivateDir creates dir with mode 0700, or sets an existing one to it.
func ensurePrivateDir(dir string) error {
	if err := atomicfile.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create key directory: %w", err)
	}
	st, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("stat key directory: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("key directory %s is not a directory", dir)
	}
	if st.Mode().Perm() != 0o700 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("make key directory private: %w", err)
		}
	}
	return nil
}

// readSecretKeyFile reads and parses the secret key file, whatever its
// key's name. A missing file gives an error that wraps fs.ErrNotExist;
// every other problem is an error that tells the operator what to do.
func readSecretKeyFile(path string) (SecretKey, fs.FileInfo, error) {
	data, st, err := safefile.Read(path, maxKeyFileSize, safefile.Options{})
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return SecretKey{}, nil, err
	case errors.Is(err, safefile.ErrNotRegular):
		return SecretKey{}, nil, unusableKey(path, "it is not a regular file but "+safefile.Kind(typeOf(path)))
	case err != nil:
		return SecretKey{}, nil, fmt.Errorf("read cache signing key: %w", err)
	case len(data) > maxKeyFileSize:
		return SecretKey{}, nil, unusableKey(path, fmt.Sprintf("it is %d bytes long, far more than a key", st.Size()))
	}
	sk, err := ParseSecretKey(string(data))
	if err != nil {
		return SecretKey{}, nil, unusableKey(path, err.Error())
	}
	return sk, st, nil
}

// CacheKeyState is what InspectCacheKey found.
type CacheKeyState struct {
	// Missing: there is no secret key file.
	Missing bool
	// Name is the existing key's name; Public its public half.
	Name   string
	Public PublicKey
	// NeedsRepair: the key is fine, but its mode, its directory's mode
	// or its public file is not what EnsureCacheKey keeps.
	NeedsRepair bool
}

// InspectCacheKey reads the binary-cache signing key in dir without
// changing anything. A missing key is no error; a file that is not a
// usable key is, as EnsureCacheKey would report it. The key's name is not
// checked: the caller compares it with the one it wants.
func InspectCacheKey(dir string) (CacheKeyState, error) {
	secretPath := filepath.Join(dir, SecretKeyFileName)
	sk, st, err := readSecretKeyFile(secretPath)
	if errors.Is(err, fs.ErrNotExist) {
		return CacheKeyState{Missing: true}, nil
	}
	if err != nil {
		return CacheKeyState{}, err
	}
	ks := CacheKeyState{Name: sk.Name(), Public: sk.Public()}
	pubPath := filepath.Join(dir, PublicKeyFileName)
	dst, derr := os.Stat(dir)
	pub, perr := os.ReadFile(pubPath)
	pst, serr := os.Stat(pubPath)
	ks.NeedsRepair = st.Mode().Perm() != 0o600 || derr != nil || dst.Mode().Perm() != 0o700 ||
		perr != nil || string(pub) != ks.Public.String() || serr != nil || pst.Mode().Perm() != 0o644
	return ks, nil
}

// typeOf is the type of what is at path, for messages.
func typeOf(path string) fs.FileMode {
	if st, err := os.Stat(path); err == nil {
		return st.Mode()
	}
	return fs.ModeIrregular
}

// unusableKey is the error for a secret key file nixpeer must not touch.
func unusableKey(path, what string) error {
	return fmt.Errorf("cache signing key %s is unusable: %s. nixpeer never replaces a signing key by itself, "+
		"since hosts trust its public half: if it is damaged, move it away (mv %s %s.broken) and nixpeer makes a new one "+
		"(then every host that trusts the old key must get the new public key), or put the right key back", path, what, path, path)
}

// ReadSecretKeyFile reads and parses a secret key file, whatever its
// key's name.
func ReadSecretKeyFile(path string) (SecretKey, error) {
	sk, _, err := readSecretKeyFile(path)
	return sk, err
}
