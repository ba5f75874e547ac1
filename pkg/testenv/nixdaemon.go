package testenv

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// NixDaemon is a nix-daemon started by StartNixDaemon. It serves the
// machine's /nix/store through its own socket; clients reach it with Env.
type NixDaemon struct {
	// Socket is the path of the daemon's unix socket. Its directory is
	// group nix-users, mode 0750, so nix-ssh can reach it.
	Socket string
	// ConfDir is the NIX_CONF_DIR the daemon reads nix.conf from.
	ConfDir string

	proc    *process
	pidFile string // of a restartable daemon: the current daemon's pid
}

// Env returns the environment variables that send a Nix client (nix-build,
// nix-store, nix) to this daemon with its configuration. Append them to
// os.Environ(): for exec.Cmd the last value of a variable wins.
func (d *NixDaemon) Env() []string {
	return []string{
		"NIX_REMOTE=daemon",
		"NIX_DAEMON_SOCKET_PATH=" + d.Socket,
		"NIX_CONF_DIR=" + d.ConfDir,
	}
}

// Logs returns what the daemon printed so far, for example its
// "accepted connection from pid N, user nix-ssh" lines.
func (d *NixDaemon) Logs() string { return d.proc.logs.String() }

// WriteNixConf writes dir/nix.conf for a machine without internet: no
// substituters, no sandbox (bare derivations call /bin/sh), the nix-command
// feature, then extraLines, one per line. It returns the file's path.
func WriteNixConf(t testing.TB, dir string, extraLines ...string) string {
	t.Helper()
	lines := append([]string{
		"substituters =",
		"sandbox = false",
		"experimental-features = nix-command",
	}, extraLines...)
	path := filepath.Join(dir, "nix.conf")
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatalf("testenv: write nix.conf: %v", err)
	}
	return path
}

// StartNixDaemon starts a nix-daemon with NIX_CONF_DIR=confDir (a fresh
// WriteNixConf directory when confDir is empty) on a socket of its own in a
// new temporary directory, waits until the socket accepts connections, and
// stops the daemon when the test ends. Several may run at once: they share
// /nix/store, which Nix locks.
func StartNixDaemon(t testing.TB, confDir string) *NixDaemon {
	t.Helper()
	return startNixDaemon(t, confDir, false)
}

// StartRestartableNixDaemon is StartNixDaemon for a daemon that an agent's
// apply command restarts, as systemctl restart nix-daemon would on a host:
// a shell keeps the daemon running, and the returned argv ends the current
// daemon so that a new one starts and reads nix.conf again.
func StartRestartableNixDaemon(t testing.TB, confDir string) (*NixDaemon, []string) {
	t.Helper()
	d := startNixDaemon(t, confDir, true)
	return d, []string{"/bin/sh", "-c", "kill $(cat " + d.pidFile + ")"}
}

func startNixDaemon(t testing.TB, confDir string, restartable bool) *NixDaemon {
	t.Helper()
	Require(t, "nix-daemon")
	if confDir == "" {
		confDir = t.TempDir()
		WriteNixConf(t, confDir)
	}
	prog, err := LookPath("nix-daemon")
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	// Not t.TempDir(): a unix socket path must stay below 108 bytes, and
	// test names make t.TempDir() paths long.
	sockDir, err := os.MkdirTemp("", "nixd-")
	if err != nil {
		t.Fatalf("testenv: make socket directory: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	if err := shareWithNixUsers(sockDir); err != nil {
		t.Fatalf("testenv: socket directory %s: %v", sockDir, err)
	}
	d := &NixDaemon{Socket: filepath.Join(sockDir, "socket"), ConfDir: confDir, pidFile: filepath.Join(sockDir, "pid")}

	cmd := exec.Command(prog)
	if restartable {
		// The loop ends with its process group when the test ends.
		cmd = exec.Command("/bin/sh", "-c", `while :; do "$0" & echo $! > "$1"; wait $!; done`, prog, d.pidFile)
	}
	cmd.Env = append(cleanNixEnv(os.Environ()),
		"NIX_CONF_DIR="+confDir,
		"NIX_DAEMON_SOCKET_PATH="+d.Socket,
	)
	d.proc, err = startProcess("nix-daemon", cmd)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	d.proc.cleanup(t)

	WaitFor(t, 15*time.Second, 20*time.Millisecond, "nix-daemon to accept on "+d.Socket, func() error {
		if ended, err := d.proc.exited(); ended {
			return fmt.Errorf("nix-daemon exited (%v): %s: %w", err, d.proc.logs, errStop)
		}
		c, err := net.DialTimeout("unix", d.Socket, time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	})
	return d
}

// shareWithNixUsers makes dir group nix-users, mode 0750, like
// /nix/var/nix/daemon-socket; without that group (or as non-root) the
// directory is made 0755 instead.
func shareWithNixUsers(dir string) error {
	if g, err := user.LookupGroup(NixUsersGroup); err == nil {
		if gid, err := strconv.Atoi(g.Gid); err == nil && os.Chown(dir, -1, gid) == nil {
			return os.Chmod(dir, 0o750)
		}
	}
	return os.Chmod(dir, 0o755)
}

// cleanNixEnv drops the variables that would point a Nix program at another
// daemon or configuration.
func cleanNixEnv(env []string) []string {
	var out []string
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		switch name {
		case "NIX_REMOTE", "NIX_DAEMON_SOCKET_PATH", "NIX_CONF_DIR", "NIX_USER_CONF_FILES", "NIX_CONFIG", "NIX_SSHOPTS":
			continue
		}
		out = append(out, kv)
	}
	return out
}

// BuildPath builds, through d, a bare derivation named name whose output is
// a file holding content and a newline, and returns its store path. name is
// limited to letters, digits and "+._-" (not starting with "."); content to
// letters, digits, spaces and ".,:/+=_-". Nothing is substituted; the build
// is bounded by two minutes.
func BuildPath(t testing.TB, d *NixDaemon, name, content string) string {
	t.Helper()
	Require(t, "nix-build")
	if !regexp.MustCompile(`^[A-Za-z0-9+_-][A-Za-z0-9+._-]{0,99}$`).MatchString(name) {
		t.Fatalf("testenv: BuildPath: unsafe derivation name %q", name)
	}
	if !regexp.MustCompile(`^[A-Za-z0-9 .,:/+=_-]{0,1000}$`).MatchString(content) {
		t.Fatalf("testenv: BuildPath: unsafe content %q", content)
	}
	expr := fmt.Sprintf(`derivation { name = "%s"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo %s > $out" ]; }`, name, content)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	prog, err := LookPath("nix-build")
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	cmd := exec.CommandContext(ctx, prog, "--no-out-link", "--option", "substituters", "", "-E", expr)
	cmd.Env = append(cleanNixEnv(os.Environ()), d.Env()...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("testenv: nix-build %s: %v\n%s", name, err, stderr.String())
	}
	fields := strings.Fields(stdout.String())
	if len(fields) == 0 || !strings.HasPrefix(fields[len(fields)-1], "/nix/store/") {
		t.Fatalf("testenv: nix-build %s printed no store path: %q\n%s", name, stdout.String(), stderr.String())
	}
	return fields[len(fields)-1]
}
