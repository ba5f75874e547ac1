package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

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

// TestModesUnderTheUnitsUmask: an agent started as the unit starts it
// (UMask=0077) makes what sshd reads as nix-ssh readable by nix-ssh:
// authorized_keys.d 0755, the file in it 0644; its keys stay private. An
// authorized_keys.d left 0700 by an earlier version is put right.
func TestModesUnderTheUnitsUmask(t *testing.T) {
	root, config := newRoot(t, fleet(testenv.FreePort(t, "127.0.0.2"), ""))
	dir := filepath.Join(root, "etc/ssh/authorized_keys.d")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	// Its sshd check puts its own client key in the file (and fails: there
	// is no sshd here, which this test does not need).
	startAgent(t, root, config, "stage")
	file := filepath.Join(dir, "nix-ssh")
	testenv.WaitFor(t, 20*time.Second, 5*time.Millisecond, "nix-ssh's authorized keys", func() error {
		_, err := os.Stat(file)
		return err
	})
	for path, want := range map[string]os.FileMode{
		dir:  0o755,
		file: 0o644,
		filepath.Join(root, "var/lib/nixpeer/keys"):                    0o700,
		filepath.Join(root, "var/lib/nixpeer/keys/ssh_client_ed25519"): 0o600,
		filepath.Join(root, "var/lib/nixpeer/keys/cache-priv-key.pem"): 0o600,
		filepath.Join(root, "etc/ssh/ssh_host_ed25519_key"):            0o600,
		filepath.Join(root, "etc/ssh/ssh_host_ed25519_key.pub"):        0o644,
	} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Errorf("%v", err)
			continue
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s is %04o, want %04o", path, got, want)
		}
	}
}
