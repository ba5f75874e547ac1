package bincache

import (
	"io/fs"
	"syscall"
)

// ownerOf returns the uid owning a file.
func ownerOf(st fs.FileInfo) (int, bool) {
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return int(s.Uid), true
	}
	return 0, false
}
