package reconcile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/nixpeer/nixpeer/pkg/safefile"
)

// Reading the files a pass manages, and refusing the ones that are not
// safe to read or replace.

// maxManagedFile bounds what is read of a file the agent manages or
// shares with people: far more than any known_hosts or nix.conf.
const maxManagedFile = 4 << 20

// checkDir refuses a directory the agent writes into that is a symbolic
// link (it would write where the link points: known_hosts, nix-ssh's keys
// or a private key out of place) or not a directory, and one below a
// directory that another user could change (see checkAncestors). A
// missing one is fine: it is created.
func checkDir(dir string) error {
	st, err := os.Lstat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return err
	case st.Mode()&fs.ModeSymlink != 0:
		target, _ := os.Readlink(dir)
		return fmt.Errorf("%s is a symbolic link (to %s); nixpeer does not follow a directory it manages elsewhere: make it a real directory", dir, target)
	case !st.IsDir():
		return fmt.Errorf("%s is %s, not a directory", dir, safefile.Kind(st.Mode()))
	}
	return checkAncestors(dir)
}

// checkAncestors refuses a path with a directory above it that another
// user could change: a symbolic link, or a directory that is neither
// root's nor this agent's user's, or that group or others may write to
// (but for a sticky one such as /tmp, where nobody may replace what is not
// theirs). Otherwise a prepared "etc -> /etc" under --root, say, would
// have root write the real /etc/nix/nix.conf.
func checkAncestors(path string) error {
	for p := filepath.Dir(filepath.Clean(path)); ; p = filepath.Dir(p) {
		st, err := os.Lstat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return err
		case st.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			return fmt.Errorf("%s, above %s, is a symbolic link (to %s); nixpeer does not write below a link: make it a real directory", p, path, target)
		case !st.IsDir():
			return fmt.Errorf("%s, above %s, is %s, not a directory", p, path, safefile.Kind(st.Mode()))
		default:
			if sys, ok := st.Sys().(*syscall.Stat_t); ok && sys.Uid != 0 && int(sys.Uid) != os.Geteuid() {
				return fmt.Errorf("%s, above %s, belongs to uid %d: another user could change what nixpeer writes; make it root's", p, path, sys.Uid)
			}
			if st.Mode().Perm()&0o022 != 0 && st.Mode()&fs.ModeSticky == 0 {
				return fmt.Errorf("%s, above %s, is writable by group or others (%04o); make it 0755", p, path, st.Mode().Perm())
			}
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

// readObserved reads a regular file of at most maxManagedFile bytes. A
// symlink, a FIFO, a device or a directory is refused without being
// opened, so that nothing at a managed path can block or swell the agent.
func readObserved(path string) FileObs {
	if err := checkDir(filepath.Dir(path)); err != nil {
		return FileObs{Err: err}
	}
	data, st, err := safefile.Read(path, maxManagedFile, safefile.Options{NoFollow: true})
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return FileObs{}
	case errors.Is(err, safefile.ErrNotRegular):
		return FileObs{Err: fmt.Errorf("%w; refusing to read or replace it", err)}
	case err != nil:
		return FileObs{Err: fmt.Errorf("read %s: %w", path, err)}
	case len(data) > maxManagedFile:
		return FileObs{Err: fmt.Errorf("%s is larger than %d MiB; refusing to read or replace it", path, maxManagedFile>>20)}
	}
	return FileObs{Exists: true, Content: data, Mode: st.Mode().Perm(), ModTime: st.ModTime()}
}
