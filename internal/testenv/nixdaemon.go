package testenv

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nixpeer/nixpeer/internal/launch"
)

// NixDaemon is a nix-daemon started by StartNixDaemon (see launch).
type NixDaemon = launch.NixDaemon

// WriteNixConf is launch.WriteNixConf, failing the test on an error.
func WriteNixConf(t testing.TB, dir string, extraLines ...string) string {
	t.Helper()
	return must(launch.WriteNixConf(dir, extraLines...))(t)
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
	return d, d.RestartCommand()
}

func startNixDaemon(t testing.TB, confDir string, restartable bool) *NixDaemon {
	t.Helper()
	Require(t, "nix-daemon")
	if confDir == "" {
		confDir = t.TempDir()
		WriteNixConf(t, confDir)
	}
	// Not t.TempDir(): a unix socket path must stay below 108 bytes, and
	// test names make t.TempDir() paths long.
	sockDir, err := os.MkdirTemp("", "nixd-")
	if err != nil {
		t.Fatalf("testenv: make socket directory: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	d := must(launch.StartNixDaemon(confDir, sockDir, restartable))(t)
	cleanup(t, d.Proc, d.Proc.Stop)
	return d
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
	prog := must(LookPath("nix-build"))(t)
	cmd := exec.CommandContext(ctx, prog, "--no-out-link", "--option", "substituters", "", "-E", expr)
	cmd.Env = append(launch.CleanNixEnv(os.Environ()), d.Env()...)
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
