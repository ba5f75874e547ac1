package nix

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/nixpeer/nixpeer/pkg/atomicfile"
)

// A rotation keeps the next signing key beside the current one, in a
// directory of its own, until it is promoted; a retired key is kept, 0600,
// in another.
const (
	NextKeyDir    = "cache-next"
	RetiredKeyDir = "cache-retired"
)

// MaxKeyGeneration bounds serve.keyGeneration.
const MaxKeyGeneration = 9999

// GenerationName is the name of generation gen of the signing key called
// keyName: keyName itself for the first, keyName-gN after it. Nix keeps
// one trusted key per name, so two generations alive at once need two.
func GenerationName(keyName string, gen int) string {
	if gen <= 1 {
		return keyName
	}
	return keyName + "-g" + strconv.Itoa(gen)
}

// KeyGeneration is the generation that name gives a key of keyName, and
// false when name is not one of keyName's.
func KeyGeneration(keyName, name string) (int, bool) {
	if name == keyName {
		return 1, true
	}
	rest, ok := strings.CutPrefix(name, keyName+"-g")
	if !ok || rest == "" || rest[0] == '0' || strings.Trim(rest, "0123456789") != "" {
		return 0, false
	}
	gen, err := strconv.Atoi(rest)
	if err != nil || gen < 2 || gen > MaxKeyGeneration {
		return 0, false
	}
	return gen, true
}

// PromoteNextKey makes the next key of keysDir (see NextKeyDir) the
// current one: the current secret is kept, 0600, as RetiredKeyDir/NAME.pem
// (".revoked.pem" when revoked; a hard link), then the current file is
// replaced, atomically, by a copy of the next one. The next key's own
// files stay until the Nix settings no longer name them (RemoveNextKey):
// Nix reads every secret key file the live settings name for each path it
// signs, and fails the build on one that is gone. Run again after a
// crash, it finishes; run once more, it does nothing.
func PromoteNextKey(keysDir string, revoked bool) error {
	next, _, err := readSecretKeyFile(filepath.Join(keysDir, NextKeyDir, SecretKeyFileName))
	if err != nil {
		return fmt.Errorf("promote the next signing key: %w", err)
	}
	cur := filepath.Join(keysDir, SecretKeyFileName)
	sk, _, err := readSecretKeyFile(cur)
	switch {
	case err == nil && sk.Public().Equal(next.Public()):
		return nil
	case err == nil:
		if err := retire(keysDir, cur, sk.Name(), revoked); err != nil {
			return err
		}
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("retire the current signing key: %w", err)
	}
	if err := atomicfile.WriteFile(cur, next.Encode(), 0o600); err != nil {
		return fmt.Errorf("promote the next signing key: %w", err)
	}
	return nil
}

// retire keeps the secret key file at path, of the key called name, as
// RetiredKeyDir/NAME.pem (".revoked.pem" when revoked).
func retire(keysDir, path, name string, revoked bool) error {
	dir := filepath.Join(keysDir, RetiredKeyDir)
	if err := ensurePrivateDir(dir); err != nil {
		return err
	}
	suffix := ".pem"
	if revoked {
		suffix = ".revoked.pem"
	}
	if err := os.Link(path, filepath.Join(dir, name+suffix)); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("retire the signing key %s: %w", name, err)
	}
	return atomicfile.SyncDir(dir)
}

// RemoveNextKey removes the next key's directory and what is in it (a
// write killed mid-way included). With revoked, the next key is kept as
// revoked first: it lay beside a key believed stolen.
func RemoveNextKey(keysDir string, revoked bool) error {
	dir := filepath.Join(keysDir, NextKeyDir)
	secret := filepath.Join(dir, SecretKeyFileName)
	if sk, _, err := readSecretKeyFile(secret); err == nil && revoked {
		if err := retire(keysDir, secret, sk.Name(), true); err != nil {
			return err
		}
	}
	for _, name := range []string{SecretKeyFileName, PublicKeyFileName} {
		path := filepath.Join(dir, name)
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		atomicfile.RemoveStale(path)
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return atomicfile.SyncDir(keysDir)
}

// resignBatch is how many paths one `nix store sign` is given.
const resignBatch = 500

// Resign adds a signature of the key in keyFile to every valid path of
// the local store that carries a good signature of the key from (checked
// against the path's fingerprint, not just named), in batches, and
// returns how many it signed; with ultimateOnly, only paths built here
// (after a revoke: a thief could have signed paths that came from
// elsewhere). Paths that carry a signature of the new key already are
// skipped, so an interrupted run goes on where it stopped.
func (c *CLI) Resign(ctx context.Context, keyFile, from string, ultimateOnly bool) (int, error) {
	fromKey, err := ParsePublicKey(from)
	if err != nil {
		return 0, fmt.Errorf("re-sign: the old key: %w", err)
	}
	sk, _, err := readSecretKeyFile(keyFile)
	if err != nil {
		return 0, fmt.Errorf("re-sign: %w", err)
	}
	raw, err := c.run(ctx, "path-info", "--all", "--sigs", "--json")
	if err != nil {
		return 0, fmt.Errorf("list the signed paths: %w", err)
	}
	infos, err := ParsePathInfoJSON(raw)
	if err != nil {
		return 0, fmt.Errorf("list the signed paths: %w", err)
	}
	paths := ToResign(infos, fromKey, sk.Name(), ultimateOnly)
	for batch := range slices.Chunk(paths, resignBatch) {
		if _, err := c.run(ctx, append([]string{"store", "sign", "--key-file", keyFile, "--"}, batch...)...); err != nil {
			return 0, fmt.Errorf("sign %d paths with the new key: %w", len(batch), err)
		}
	}
	return len(paths), nil
}

// ToResign are the paths of infos, sorted, that carry a good signature of
// from and none named newName (with ultimateOnly, of those built here).
func ToResign(infos []PathInfo, from PublicKey, newName string, ultimateOnly bool) []string {
	var paths []string
	for _, i := range infos {
		switch {
		case ultimateOnly && !i.Ultimate:
		case slices.ContainsFunc(i.Signatures, func(s string) bool { return strings.HasPrefix(s, newName+":") }):
		case i.SignedBy([]PublicKey{from}) != "":
			paths = append(paths, i.Path)
		}
	}
	slices.Sort(paths)
	return paths
}
