// Package testenv runs the real programs nixpeer talks to, a nix-daemon and
// an OpenSSH sshd, as child processes of a test, on loopback addresses,
// private sockets and temporary directories, so that tests exercise Nix and
// SSH themselves instead of imitations.
//
// Every helper takes a testing.TB, bounds what it waits for with a deadline,
// and registers its cleanup with t.Cleanup. When a program or the nix-ssh
// user is missing, tests are skipped with a message saying how to install
// it, or fail with the same message when the environment variable CI is
// "true".
package testenv

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nixpeer/nixpeer/internal/launch"
)

// NixSSHUser is launch.NixSSHUser, the user a store is served to over SSH.
const NixSSHUser = launch.NixSSHUser

// NixUsersGroup is launch.NixUsersGroup, the group that reaches the daemon.
const NixUsersGroup = launch.NixUsersGroup

// CreateNixSSHUserCommand creates NixSSHUser the way the tests need it: a
// shell that runs commands (sshd runs forced commands through it), primary
// group nix-users (to reach the daemon socket), and the password field "*"
// instead of useradd's "!": with "UsePAM no" sshd refuses every login of an
// account whose password field starts with "!" ("account is locked"), even
// a login with a key.
const CreateNixSSHUserCommand = "useradd --system --gid nix-users --shell /bin/bash --home-dir /var/empty --password '*' nix-ssh"

// debianPackages names the Debian package that ships each program.
var debianPackages = map[string]string{
	"nix": "nix-bin", "nix-build": "nix-bin", "nix-daemon": "nix-bin", "nix-store": "nix-bin", "nix-instantiate": "nix-bin",
	"sshd": "openssh-server", "ssh": "openssh-client", "ssh-keygen": "openssh-client",
	"systemd-analyze": "systemd", "iptables": "iptables", "go": "golang-go", "setpriv": "util-linux",
	"zsh": "zsh", "fish": "fish", "lintian": "lintian", "man": "man-db",
}

// integration skips a test that needs root or real programs under
// "go test -short", the unit tests alone: asked for, so never a failure,
// CI=true or not. The test command runs without -short.
func integration(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skipf("testenv: an integration test (real programs or root): not run with -short")
	}
}

// unavailable skips the test, or fails it when CI=true, with msg.
func unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := "testenv: " + fmt.Sprintf(format, args...)
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s (CI=true: not skipping)", msg)
		return
	}
	t.Skipf("%s (skipping; with CI=true this fails)", msg)
}

// must returns a function that returns v, or fails t with err: a call's
// results pass straight in, as in must(launch.FreePort(address))(t).
func must[T any](v T, err error) func(testing.TB) T {
	return func(t testing.TB) T {
		t.Helper()
		if err != nil {
			t.Fatalf("testenv: %v", err)
		}
		return v
	}
}

// LookPath finds program in PATH, then in /usr/sbin and /sbin (where sshd
// lives, often outside an ordinary user's PATH).
func LookPath(program string) (string, error) {
	if p, err := exec.LookPath(program); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		p := filepath.Join(dir, program)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found in PATH, /usr/sbin or /sbin", program)
}

// Require makes sure every program can be found (see LookPath). A missing
// one skips the test, or fails it when CI=true, naming the program and its
// Debian package.
func Require(t testing.TB, programs ...string) {
	t.Helper()
	integration(t)
	for _, prog := range programs {
		if _, err := LookPath(prog); err != nil {
			pkg, ok := debianPackages[prog]
			if !ok {
				pkg = "the Debian package that ships it"
			}
			unavailable(t, "program %s is missing: %v; install Debian package %s (apt-get install -y %s)", prog, err, pkg, pkg)
			return
		}
	}
}

// RequireRoot makes sure the test runs as root (needed to start sshd and a
// nix-daemon that owns /nix/store). Otherwise it skips, or fails when CI=true.
func RequireRoot(t testing.TB) {
	t.Helper()
	integration(t)
	if os.Geteuid() != 0 {
		unavailable(t, "this test must run as root (it starts sshd and nix-daemon); euid is %d", os.Geteuid())
	}
}

// RequireNixSSHUser makes sure the system user nix-ssh exists with a shell
// that runs commands, is in group nix-users, and is not locked for sshd.
// Otherwise it skips, or fails when CI=true, with the command that creates
// the user (CreateNixSSHUserCommand).
func RequireNixSSHUser(t testing.TB) {
	t.Helper()
	integration(t)
	if err := checkNixSSHUser(); err != nil {
		unavailable(t, "%v", err)
	}
}

func checkNixSSHUser() error {
	fix := "create it with: " + CreateNixSSHUserCommand
	u, err := user.Lookup(NixSSHUser)
	if err != nil {
		return fmt.Errorf("system user %s is missing (%v); %s", NixSSHUser, err, fix)
	}
	shell, err := colonFileField("/etc/passwd", NixSSHUser, 6)
	if err != nil {
		return fmt.Errorf("read the shell of %s: %v; %s", NixSSHUser, err, fix)
	}
	switch filepath.Base(shell) {
	case "bash", "sh", "dash":
	default:
		return fmt.Errorf("user %s has shell %q, which does not run the forced command; fix with: usermod --shell /bin/bash %s", NixSSHUser, shell, NixSSHUser)
	}
	g, err := user.LookupGroup(NixUsersGroup)
	if err != nil {
		return fmt.Errorf("group %s is missing (%v): install Debian package nix-bin, then %s", NixUsersGroup, err, fix)
	}
	gids, err := u.GroupIds()
	if err != nil {
		return fmt.Errorf("list the groups of %s: %v", NixSSHUser, err)
	}
	if u.Gid != g.Gid && !slices.Contains(gids, g.Gid) {
		return fmt.Errorf("user %s is not in group %s, so it cannot reach the nix-daemon socket; fix with: usermod --append --groups %s %s", NixSSHUser, NixUsersGroup, NixUsersGroup, NixSSHUser)
	}
	// Only root can read /etc/shadow; without it the lock cannot be checked.
	if pw, err := colonFileField("/etc/shadow", NixSSHUser, 1); err == nil && strings.HasPrefix(pw, "!") {
		return fmt.Errorf("user %s is locked (password field %q): sshd with UsePAM no refuses it even with a key; fix with: usermod --password '*' %s", NixSSHUser, pw, NixSSHUser)
	}
	return nil
}

// colonFileField returns field i (0-based) of name's line in path, a
// colon-separated file such as /etc/passwd.
func colonFileField(path, name string, i int) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ":")
		if len(fields) > i && fields[0] == name {
			return fields[i], nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	return "", fmt.Errorf("%s has no line for %s", path, name)
}

// MakeTraversable lets other users (sshd reading authorized keys as
// nix-ssh, nix-ssh reaching a daemon socket) reach path: path and each of
// its parent directories below the temporary directory root (os.TempDir)
// get read and execute permission for group and others when they lack it
// (so t.TempDir's 0700 becomes 0755); a regular file gets read permission.
// A path outside the temporary directory fails the test: system
// directories are never changed.
func MakeTraversable(t testing.TB, path string) {
	t.Helper()
	if err := makeTraversable(path); err != nil {
		t.Fatalf("testenv: make %s traversable: %v", path, err)
	}
}

func makeTraversable(path string) error {
	root, err := filepath.EvalSymlinks(os.TempDir())
	if err != nil {
		return fmt.Errorf("resolve temporary directory: %w", err)
	}
	p, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	if p, err = filepath.EvalSymlinks(p); err != nil {
		return err
	}
	rel, err := filepath.Rel(root, p)
	if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return fmt.Errorf("%s: %w %s", p, errNotTemp, root)
	}
	for ; p != root; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		keep := fi.Mode() & (fs.ModePerm | fs.ModeSticky | fs.ModeSetgid | fs.ModeSetuid)
		want := keep | 0o044
		if fi.IsDir() {
			want |= 0o011
		}
		if want != keep {
			if err := os.Chmod(p, want); err != nil {
				return err
			}
		}
	}
	return nil
}

// WaitFor calls cond every interval until it returns nil, and fails the
// test if it still has not after timeout; the message names what was
// awaited and cond's last error.
func WaitFor(t testing.TB, timeout, interval time.Duration, what string, cond func() error) {
	t.Helper()
	if err := launch.WaitFor(timeout, interval, cond); err != nil {
		t.Fatalf("testenv: waiting for %s: %v", what, err)
	}
}

// errNotTemp says a path is not below the temporary directory.
var errNotTemp = errors.New("not below the temporary directory")
