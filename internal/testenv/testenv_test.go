package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nixpeer/nixpeer/internal/launch"
)

// recordingTB records Skipf and Fatalf instead of ending the test.
type recordingTB struct {
	testing.TB
	skipped, failed bool
	msg             string
}

func (r *recordingTB) Helper() {}
func (r *recordingTB) Skipf(format string, args ...any) {
	r.skipped, r.msg = true, fmt.Sprintf(format, args...)
}
func (r *recordingTB) Fatalf(format string, args ...any) {
	r.failed, r.msg = true, fmt.Sprintf(format, args...)
}

func TestRequireMissingProgram(t *testing.T) {
	if testing.Short() {
		t.Skip("under -short, Require skips before it checks anything")
	}
	for _, ci := range []string{"", "true"} {
		t.Run("CI="+ci, func(t *testing.T) {
			t.Setenv("CI", ci)
			r := &recordingTB{TB: t}
			Require(r, "sh", "nix-daemon-that-does-not-exist")
			if r.skipped == (ci == "true") || r.failed != (ci == "true") {
				t.Errorf("skipped=%v failed=%v, want a skip without CI and a failure with CI=true", r.skipped, r.failed)
			}
			if !strings.Contains(r.msg, "nix-daemon-that-does-not-exist") {
				t.Errorf("message %q does not name the program", r.msg)
			}
		})
	}
}

func TestRequireNamesDebianPackage(t *testing.T) {
	if testing.Short() {
		t.Skip("under -short, Require skips before it checks anything")
	}
	t.Setenv("PATH", t.TempDir()) // nothing found in PATH
	r := &recordingTB{TB: t}
	Require(r, "nix-store")
	if !r.skipped && !r.failed {
		t.Fatal("nix-store found with an empty PATH")
	}
	if !strings.Contains(r.msg, "nix-bin") {
		t.Errorf("message %q does not name package nix-bin", r.msg)
	}
}

func TestRequireFindsPrograms(t *testing.T) {
	if testing.Short() {
		t.Skip("under -short, Require skips before it checks anything")
	}
	t.Parallel()
	r := &recordingTB{TB: t}
	Require(r, "sh")
	if r.skipped || r.failed {
		t.Fatalf("Require(sh): %s", r.msg)
	}
}

func TestMakeTraversable(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := filepath.Join(dir, "a", "b", "keys")
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	MakeTraversable(t, file)
	for _, p := range []string{file, filepath.Dir(file), filepath.Join(dir, "a"), dir, filepath.Dir(dir)} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		want := os.FileMode(0o044)
		if fi.IsDir() {
			want = 0o055
		}
		if fi.Mode().Perm()&want != want {
			t.Errorf("%s has mode %v, want at least %v", p, fi.Mode().Perm(), want)
		}
	}
	if err := makeTraversable("/etc"); !errors.Is(err, errNotTemp) {
		t.Errorf("makeTraversable(/etc) = %v, want errNotTemp", err)
	}
}

func TestWaitForTimesOut(t *testing.T) {
	t.Parallel()
	start := time.Now()
	err := launch.WaitFor(100*time.Millisecond, 10*time.Millisecond, func() error { return errors.New("never") })
	if err == nil || !strings.Contains(err.Error(), "never") {
		t.Fatalf("waitFor = %v, want the condition's error", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("waitFor took %v", d)
	}
	err = launch.WaitFor(time.Minute, 10*time.Millisecond, func() error { return fmt.Errorf("dead: %w", launch.ErrStop) })
	if !errors.Is(err, launch.ErrStop) {
		t.Fatalf("waitFor = %v, want launch.ErrStop at once", err)
	}
}

func TestNixDaemonBuildPath(t *testing.T) {
	t.Parallel()
	RequireRoot(t)
	Require(t, "nix-daemon", "nix-build")
	d := StartNixDaemon(t, "")

	fi, err := os.Stat(filepath.Dir(d.Socket))
	if err != nil {
		t.Fatal(err)
	}
	if g, err := user.LookupGroup(NixUsersGroup); err == nil {
		st := fi.Sys().(*syscall.Stat_t)
		if strconv.Itoa(int(st.Gid)) != g.Gid || fi.Mode().Perm() != 0o750 {
			t.Errorf("socket directory: gid %d mode %v, want group %s (%s) mode 0750", st.Gid, fi.Mode().Perm(), NixUsersGroup, g.Gid)
		}
	}

	p := BuildPath(t, d, "testenv-build", "built by testenv")
	got, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "built by testenv\n" {
		t.Errorf("%s holds %q", p, got)
	}
	if !strings.Contains(d.Proc.Logs(), "accepted connection") {
		t.Errorf("daemon log shows no connection:\n%s", d.Proc.Logs())
	}
}

// TestSSHDServesTestDaemon copies a path with the real Nix client from a
// real sshd whose forced command serves the store of this test's daemon.
func TestSSHDServesTestDaemon(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ protocol, command, address string }{
		{"ssh", "nix-store --serve", "127.0.0.2"},
		{"ssh-ng", "nix-daemon --stdio", "127.0.0.3"},
	} {
		t.Run(tc.protocol, func(t *testing.T) {
			t.Parallel()
			RequireRoot(t)
			Require(t, "nix-daemon", "nix-build", "nix-store", "sshd", "ssh")
			RequireNixSSHUser(t)

			d := StartNixDaemon(t, "")
			path := BuildPath(t, d, "testenv-served-"+tc.protocol, "served over "+tc.protocol)
			client := NewKey(t)
			s := StartSSHD(t, SSHDConfig{
				Address:        tc.address,
				Daemon:         d,
				AuthorizedKeys: map[string]string{NixSSHUser: AuthorizedKeyLine(tc.command, client.PublicKey())},
			})

			dir := t.TempDir()
			keyFile := filepath.Join(dir, "id_ed25519")
			client.WritePrivateKey(t, keyFile)
			knownHosts := filepath.Join(dir, "known_hosts")
			if err := os.WriteFile(knownHosts, []byte(s.KnownHostsLine()+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			confDir := filepath.Join(dir, "conf")
			if err := os.Mkdir(confDir, 0o755); err != nil {
				t.Fatal(err)
			}
			WriteNixConf(t, confDir)
			store := filepath.Join(dir, "prod")

			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, "nix-store", "--store", store, "-r", path,
				"--option", "substituters", tc.protocol+"://"+NixSSHUser+"@"+s.Address,
				"--option", "require-sigs", "false")
			cmd.Env = append(launch.CleanNixEnv(os.Environ()),
				"NIX_CONF_DIR="+confDir,
				fmt.Sprintf("NIX_SSHOPTS=-p %d -i %s -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile=%s -o GlobalKnownHostsFile=/dev/null",
					s.Port, keyFile, knownHosts))
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Run(); err != nil {
				t.Fatalf("nix-store -r over %s: %v\n%s\nsshd log:\n%s\ndaemon log:\n%s", tc.protocol, err, out.String(), s.Logs(), d.Proc.Logs())
			}
			got, err := os.ReadFile(filepath.Join(store, path))
			if err != nil {
				t.Fatalf("copied path: %v\n%s", err, out.String())
			}
			if want := "served over " + tc.protocol + "\n"; string(got) != want {
				t.Errorf("copied path holds %q, want %q", got, want)
			}
			// The forced command reached this test's daemon, as nix-ssh.
			WaitFor(t, 5*time.Second, 10*time.Millisecond, "the daemon to log a connection of "+NixSSHUser, func() error {
				if !strings.Contains(d.Proc.Logs(), "user "+NixSSHUser) {
					return fmt.Errorf("daemon log:\n%s", d.Proc.Logs())
				}
				return nil
			})
		})
	}
}

func TestDarkDropsThenLights(t *testing.T) {
	addr := net.JoinHostPort("127.0.0.66", strconv.Itoa(FreePort(t, "127.0.0.66")))
	connect := func() error {
		c, err := net.DialTimeout("tcp", addr, 300*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err
	}
	light := Dark(t, "127.0.0.66")
	var ne net.Error
	if err := connect(); !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("connect to a dark address: %v, want a timeout", err)
	}
	light()
	if err := connect(); err == nil || errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connect after light: %v, want refused at once", err)
	}
}
