package reconcile

import "syscall"

// syscallNoFollow makes an open fail on a symlink that appeared after the
// Lstat.
const syscallNoFollow = syscall.O_NOFOLLOW | syscall.O_NONBLOCK
