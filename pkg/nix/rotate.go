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
	if !ok || rest == "" || rest[0] == '0' {
		return 0, false
	}
	gen, err := strconv.Atoi(rest)
	if err != nil || gen < 2 || gen > MaxKeyGeneration {
		return 0, false
	}
	return gen, true
}

// PromoteNextKey makes the next key of keysDir (see NextKeyDir) the
// current one, and keeps the current one's secret as
// RetiredKeyDir/NAME.pem (suffix ".revoked.pem" when revoked), 0600. The
// secrets move by renames, so that a crash between two leaves either the
// current key or the next one in place, and PromoteNextKey run again
// finishes: a missing current key is no error. The current public key
// file is rewritten by EnsureCacheKey afterwards.
func PromoteNextKey(keysDir string, revoked bool) error {
	cur := filepath.Join(keysDir, SecretKeyFileName)
	next := filepath.Join(keysDir, NextKeyDir, SecretKeyFileName)
	if _, _, err := readSecretKeyFile(next); err != nil {
		return fmt.Errorf("promote the next signing key: %w", err)
	}
	if sk, _, err := readSecretKeyFile(cur); err == nil {
		dir := filepath.Join(keysDir, RetiredKeyDir)
		if err := ensurePrivateDir(dir); err != nil {
			return err
		}
		suffix := ".pem"
		if revoked {
			suffix = ".revoked.pem"
		}
		if err := os.Rename(cur, filepath.Join(dir, sk.Name()+suffix)); err != nil {
			return fmt.Errorf("retire the signing key %s: %w", sk.Name(), err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("retire the current signing key: %w", err)
	}
	// Its public file first: a crash after it leaves a next key that a
	// run again promotes; after the rename, at most an empty directory.
	if err := os.Remove(filepath.Join(keysDir, NextKeyDir, PublicKeyFileName)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := os.Rename(next, cur); err != nil {
		return fmt.Errorf("promote the next signing key: %w", err)
	}
	if err := syncDir(keysDir); err != nil {
		return err
	}
	for _, name := range []string{SecretKeyFileName, PublicKeyFileName} {
		atomicfile.RemoveStale(filepath.Join(keysDir, NextKeyDir, name)) // of a write killed mid-way
	}
	if err := os.Remove(filepath.Join(keysDir, NextKeyDir)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// syncDir makes the renames in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// resignBatch is how many paths one `nix store sign` is given.
const resignBatch = 500

// Resign adds a signature of the key in keyFile to every valid path of
// the local store that carries a signature by a key named oldName, in
// batches, and returns how many paths it signed. Signing a path twice is
// harmless, so an interrupted run is simply run again.
func (c *CLI) Resign(ctx context.Context, keyFile, oldName string) (int, error) {
	raw, err := c.run(ctx, "--extra-experimental-features", "nix-command", "path-info", "--all", "--sigs", "--json")
	if err != nil {
		return 0, fmt.Errorf("list the signed paths: %w", err)
	}
	infos, err := ParsePathInfoJSON(raw)
	if err != nil {
		return 0, fmt.Errorf("list the signed paths: %w", err)
	}
	paths := PathsSignedAs(infos, oldName)
	for batch := range slices.Chunk(paths, resignBatch) {
		args := append([]string{"--extra-experimental-features", "nix-command", "store", "sign", "--key-file", keyFile, "--"}, batch...)
		if _, err := c.run(ctx, args...); err != nil {
			return 0, fmt.Errorf("sign %d paths with the new key: %w", len(batch), err)
		}
	}
	return len(paths), nil
}

// PathsSignedAs are the paths of infos that carry a signature by a key named
// name, sorted.
func PathsSignedAs(infos []PathInfo, name string) []string {
	var paths []string
	for _, i := range infos {
		if slices.ContainsFunc(i.Signatures, func(s string) bool { return strings.HasPrefix(s, name+":") }) {
			paths = append(paths, i.Path)
		}
	}
	slices.Sort(paths)
	return paths
}
