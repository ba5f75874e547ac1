// Package atomicfile writes files so that a reader, or a crash, sees either
// the old content or the new one, never a mix: WriteFile replaces a file,
// CreateExclusive creates one that must not exist yet.
package atomicfile

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// WriteFile replaces path with data and mode perm: a temporary file in the
// same directory is written, chmod-ed, fsync-ed and renamed over path, and
// the directory is fsync-ed so the rename itself survives a crash.
func WriteFile(path string, data []byte, perm fs.FileMode) error {
	tmp, err := writeTemp(path, data, perm)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("rename %s to %s: %w", tmp, path, err)
	}
	return SyncDir(filepath.Dir(path))
}

// CreateExclusive writes data to a new file path with mode perm, never
// replacing an existing one: the content goes to a temporary file in the
// same directory, is fsync-ed, and is linked to path, which fails with an
// error matching fs.ErrExist if path exists; the directory is fsync-ed so
// the link survives a crash. A reader or a crash never sees a half-written
// file at path. Use it where WriteFile's rename could replace a file that
// another process created meanwhile, such as a key.
func CreateExclusive(path string, data []byte, perm fs.FileMode) error {
	tmp, err := writeTemp(path, data, perm)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := os.Link(tmp, path); err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	return SyncDir(filepath.Dir(path))
}

// writeTemp writes data with mode perm to a new temporary file beside
// path, fsync-ed and closed, and returns its name; on error it leaves
// none. The temporary files of path that a writer killed mid-way left
// are removed first: each path has one writer at a time.
func writeTemp(path string, data []byte, perm fs.FileMode) (string, error) {
	RemoveStale(path)
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return "", fmt.Errorf("create temporary file for %s: %w", path, err)
	}
	tmp := f.Name()
	fail := func(op string, err error) (string, error) {
		f.Close()
		os.Remove(tmp)
		return "", fmt.Errorf("%s %s: %w", op, tmp, err)
	}
	if _, err := f.Write(data); err != nil {
		return fail("write", err)
	}
	if err := f.Chmod(perm); err != nil {
		return fail("chmod", err)
	}
	if err := f.Sync(); err != nil {
		return fail("fsync", err)
	}
	if err := f.Close(); err != nil {
		return fail("close", err)
	}
	return tmp, nil
}

// RemoveStale removes the temporary files of path (".NAME.tmp-*" beside
// it) that a writer killed mid-way left, and reports the first error.
func RemoveStale(path string) error {
	stale, err := filepath.Glob(filepath.Join(filepath.Dir(path), "."+escapeGlob.Replace(filepath.Base(path))+".tmp-*"))
	for _, s := range stale {
		if rerr := os.Remove(s); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) && err == nil {
			err = rerr
		}
	}
	return err
}

// escapeGlob quotes the pattern characters of a name for filepath.Match.
var escapeGlob = strings.NewReplacer("*", `\*`, "?", `\?`, "[", `\[`, `\`, `\\`)

// WriteIfChanged writes data to path only when the file's content or mode
// differs, so a reconcile that finds everything in place touches nothing.
// It reports whether it wrote.
func WriteIfChanged(path string, data []byte, perm fs.FileMode) (bool, error) {
	old, err := os.ReadFile(path)
	switch {
	case err == nil:
		st, serr := os.Stat(path)
		if serr != nil {
			return false, fmt.Errorf("stat %s: %w", path, serr)
		}
		if bytes.Equal(old, data) {
			if st.Mode().Perm() == perm {
				return false, nil
			}
			if err := os.Chmod(path, perm); err != nil {
				return false, fmt.Errorf("chmod %s: %w", path, err)
			}
			return true, nil
		}
	case errors.Is(err, fs.ErrNotExist):
	default:
		return false, fmt.Errorf("read %s: %w", path, err)
	}
	if err := WriteFile(path, data, perm); err != nil {
		return false, err
	}
	return true, nil
}

// SyncDir fsyncs dir, so that the renames and links made in it survive a
// crash.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	return nil
}

// MkdirAll creates path and every missing parent, each with exactly mode
// perm whatever the process's umask (the agent runs under UMask=0077, and
// sshd reads some of its directories as another user). Directories that
// exist keep their mode.
func MkdirAll(path string, perm fs.FileMode) error {
	fi, err := os.Stat(path)
	switch {
	case err == nil && fi.IsDir():
		return nil
	case err == nil:
		return fmt.Errorf("create directory %s: %w", path, syscall.ENOTDIR)
	case !errors.Is(err, fs.ErrNotExist):
		return err
	}
	if parent := filepath.Dir(path); parent != path {
		if err := MkdirAll(parent, perm); err != nil {
			return err
		}
	}
	if err := os.Mkdir(path, perm); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return MkdirAll(path, perm) // made meanwhile: it must be a directory
		}
		return err
	}
	// Not by name: a symbolic link put there meanwhile is not followed.
	d, err := os.OpenFile(path, os.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Chmod(perm)
}

// KeepDirMode sets the directory path to mode perm when it has another,
// and says whether it changed it: for a directory the agent owns, whose
// mode another program depends on (sshd reading nix-ssh's keys as nix-ssh).
func KeepDirMode(path string, perm fs.FileMode) (bool, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return false, err
	}
	if !fi.IsDir() {
		return false, fmt.Errorf("%s is not a directory", path)
	}
	if fi.Mode().Perm() == perm {
		return false, nil
	}
	if err := os.Chmod(path, perm); err != nil {
		return false, err
	}
	return true, nil
}
