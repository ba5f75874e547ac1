// Package safefile reads the files that people and peers control (the
// desired-state file, known_hosts, nix.conf, keys) without letting them
// block or swell the agent: only a regular file is read, never a FIFO, a
// device, a socket or a directory, and never more than a bound.
package safefile

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
)

// ErrNotRegular is matched by the error for a path that is not a regular
// file; the error says what it is instead.
var ErrNotRegular = errors.New("not a regular file")

// Options say how Read treats path.
type Options struct {
	// NoFollow refuses a symbolic link at path itself (directories above
	// it are followed).
	NoFollow bool
}

// Read reads the regular file at path: at most limit+1 bytes, so that a
// caller tells a file over limit from one at it. Anything that is not a
// regular file is refused before it is opened, and opened without
// blocking in case it was swapped meanwhile; the error matches
// ErrNotRegular and names what it is. It returns the file's information
// as of the read.
func Read(path string, limit int64, opts Options) ([]byte, fs.FileInfo, error) {
	stat := os.Stat
	flags := os.O_RDONLY | syscall.O_NONBLOCK
	if opts.NoFollow {
		stat = os.Lstat
		flags |= syscall.O_NOFOLLOW
	}
	st, err := stat(path)
	if err != nil {
		return nil, nil, err
	}
	if err := regular(path, st); err != nil {
		return nil, nil, err
	}
	f, err := os.OpenFile(path, flags, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, nil, fmt.Errorf("%s is a symbolic link: %w", path, ErrNotRegular)
		}
		return nil, nil, err
	}
	defer f.Close()
	if st, err = f.Stat(); err != nil {
		return nil, nil, err
	}
	if err := regular(path, st); err != nil {
		return nil, nil, err
	}
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", path, err)
	}
	return data, st, nil
}

// regular refuses what is not a regular file, saying what it is.
func regular(path string, st fs.FileInfo) error {
	if st.Mode().IsRegular() {
		return nil
	}
	return fmt.Errorf("%s is %s: %w", path, Kind(st.Mode()), ErrNotRegular)
}

// Kind names the kind of file mode m is, for messages.
func Kind(m fs.FileMode) string {
	switch t := m.Type(); {
	case t == 0:
		return "a regular file"
	case t&fs.ModeDir != 0:
		return "a directory"
	case t&fs.ModeSymlink != 0:
		return "a symbolic link"
	case t&fs.ModeNamedPipe != 0:
		return "a named pipe (FIFO)"
	case t&fs.ModeSocket != 0:
		return "a socket"
	case t&fs.ModeDevice != 0:
		return "a device"
	default:
		return fmt.Sprintf("not a regular file (%v)", t)
	}
}
