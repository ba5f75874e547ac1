// Package filewatch tells when a file's content may have changed (File), or
// an entry of a directory (Dir). File watches the file's directory, not the
// file, so editor saves by rename, `sed -i`, and symlink swaps (Kubernetes
// ConfigMaps) are all seen, and it follows the file through symlinks to the
// directory of its target.
package filewatch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"

	"github.com/fsnotify/fsnotify"
	"github.com/nixpeer/nixpeer/pkg/safefile"
	"go.uber.org/zap"
)

// File calls onChange whenever the content of path differs from the last
// content it saw (a deleted file counts as a change). It reads at most
// limit+1 bytes of it, and only when it is a regular file: a FIFO or a
// device at path never blocks or swells the watcher (such a file counts
// as unreadable). It returns when ctx ends or the watcher fails to start.
func File(ctx context.Context, log *zap.Logger, path string, limit int64, onChange func()) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("start file watcher: %w", err)
	}
	defer w.Close()
	abs, err := filepath.Abs(path)
	if err != nil {
		return fmt.Errorf("resolve %s: %w", path, err)
	}
	path = abs
	watched := map[string]bool{}
	// follow adds watches on path's directory and on the directory of every
	// symlink target along the way.
	follow := func() {
		for _, dir := range dirsOf(path) {
			if watched[dir] {
				continue
			}
			if err := w.Add(dir); err != nil {
				log.Warn("cannot watch directory", zap.String("dir", dir), zap.Error(err))
				continue
			}
			watched[dir] = true
		}
	}
	follow()
	if !watched[filepath.Dir(path)] {
		return fmt.Errorf("watch directory of %s: not watchable", path)
	}
	last := digest(path, limit)
	for {
		select {
		case <-ctx.Done():
			return nil
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			log.Warn("file watcher error", zap.Error(err))
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if ev.Op == fsnotify.Chmod {
				continue
			}
			follow()
			if d := digest(path, limit); !bytes.Equal(d, last) {
				last = d
				onChange()
			}
		}
	}
}

// dirsOf lists the directory of path and of each symlink hop from it.
func dirsOf(path string) []string {
	dirs := []string{filepath.Dir(path)}
	p := path
	for range 16 {
		target, err := os.Readlink(p)
		if err != nil {
			break
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(filepath.Dir(p), target)
		}
		dirs = append(dirs, filepath.Dir(target))
		p = target
	}
	return dirs
}

// digest is the sha256 of the first limit+1 bytes of path or, when it
// cannot be read or is not a regular file, of why: a file that goes from
// missing to a directory (or a FIFO) is a change too.
func digest(path string, limit int64) []byte {
	b, _, err := safefile.Read(path, limit, safefile.Options{})
	if err != nil {
		b = []byte("unreadable\x00" + err.Error())
	}
	h := sha256.Sum256(b)
	return h[:]
}

// Dir calls onChange with the name of each entry of dir that is created,
// written, removed, renamed or has its mode changed (a file made 0600 is
// a change too), and with "" when dir itself appears, goes or is replaced
// (any entry may have changed). dir need not exist: its parent is watched
// until it does.
// It returns when ctx ends or the watcher fails to start.
func Dir(ctx context.Context, log *zap.Logger, dir string, onChange func(name string)) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("start directory watcher: %w", err)
	}
	defer w.Close()
	dir = filepath.Clean(dir)
	if err := w.Add(filepath.Dir(dir)); err != nil {
		return fmt.Errorf("watch %s: %w", filepath.Dir(dir), err)
	}
	watching := w.Add(dir) == nil
	for {
		select {
		case <-ctx.Done():
			return nil
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			log.Warn("directory watcher error", zap.String("dir", dir), zap.Error(err))
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			switch {
			case ev.Name == dir:
				// dir itself came, went or was replaced: watch what is
				// there now.
				watching = w.Add(dir) == nil
				onChange("")
			case watching && filepath.Dir(ev.Name) == dir:
				onChange(filepath.Base(ev.Name))
			}
		}
	}
}
