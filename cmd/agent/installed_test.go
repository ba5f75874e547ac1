package main

import (
	"bufio"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/nixpeer/nixpeer/internal/testenv"
)

// unitPath is the systemd unit the .deb installs; the tests start agents
// with its UMask and CapabilityBoundingSet, read from the file itself so
// that the two cannot drift apart.
const unitPath = "../../systemd/nixpeer.service"

var (
	unitOnce  sync.Once
	unitUmask string
	unitCaps  []string
	unitErr   error
)

// readUnitLimits reads UMask= and CapabilityBoundingSet= of the unit.
func readUnitLimits() (umask string, caps []string, err error) {
	f, err := os.Open(unitPath)
	if err != nil {
		return "", nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
		switch {
		case !ok:
		case k == "UMask":
			if _, err := strconv.ParseUint(v, 8, 32); err != nil {
				return "", nil, err
			}
			umask = v
		case k == "CapabilityBoundingSet":
			caps = append(caps, strings.Fields(v)...)
		}
	}
	return umask, caps, sc.Err()
}

// asInstalled returns the command that runs nixpeer with args the way the
// unit runs it: under the unit's umask and, as root, with its capability
// bounding set (setpriv). Other settings of the unit (the file-system
// protections) need systemd and are checked by systemd-analyze instead.
func asInstalled(t testing.TB, args ...string) *exec.Cmd {
	t.Helper()
	unitOnce.Do(func() { unitUmask, unitCaps, unitErr = readUnitLimits() })
	if unitErr != nil || unitUmask == "" {
		t.Fatalf("read UMask of %s: %v (UMask %q)", unitPath, unitErr, unitUmask)
	}
	argv := []string{"/bin/sh", "-c", `umask "$0" && exec "$@"`, unitUmask}
	if os.Geteuid() == 0 && len(unitCaps) > 0 {
		testenv.Require(t, "setpriv")
		set := "-all"
		for _, c := range unitCaps {
			set += ",+" + strings.ToLower(strings.TrimPrefix(c, "CAP_"))
		}
		argv = append(argv, "setpriv", "--bounding-set", set, "--")
	}
	argv = append(argv, binary(t))
	return exec.Command(argv[0], append(argv[1:], args...)...)
}
