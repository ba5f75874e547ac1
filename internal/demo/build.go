package demo

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nixpeer/nixpeer/internal/launch"
)

// ClosureExpr is a Nix expression for a closure of n paths: n-1
// derivations and one that refers to them all, each running a shell loop
// of work rounds (a stand-in for a compiler; 100000 is about 0.1 s here)
// and writing nonce, so that every demo (and test) builds anew.
func ClosureExpr(n, work int, nonce string) string {
	return fmt.Sprintf(`let
  mk = name: deps: derivation {
    inherit name deps;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "i=0; while [ $i -lt %d ]; do i=$((i+1)); done; echo %s $name > $out; for d in $deps; do echo $d >> $out; done" ];
  };
  parts = builtins.genList (i: mk "nixpeer-demo-part-${toString i}" [ ]) %d;
in mk "nixpeer-demo-closure" parts
`, work, nonce, n-1)
}

// buildAndFetch has production build a closure itself, measured, and
// forgets it; then staging builds the same closure on its daemon (signed
// there by the key its agent made), and production fetches it into a
// store of its own with only its agent's files, measured too.
func (d *demo) buildAndFetch(ctx context.Context) error {
	expr := ClosureExpr(d.o.Paths, d.o.Work, strconv.FormatInt(time.Now().UnixNano(), 36))
	d.say("\nA closure of %d paths (each derivation runs a shell loop standing in for a compiler).", d.o.Paths)

	// Production builds it itself, with substitution off: what it would
	// pay without staging. Its paths are then deleted, so that staging
	// builds (and signs) them anew.
	own := exec.CommandContext(ctx, "nix-build", "--no-out-link", "--option", "substitute", "false", "-E", expr)
	own.Env = append(launch.CleanNixEnv(os.Environ()), "NIX_CONF_DIR="+filepath.Join(d.P, "etc/nix"), "NIX_REMOTE=local")
	began := time.Now()
	out, err := own.Output()
	builtHere := time.Since(began)
	if err != nil {
		return fmt.Errorf("build on production: %w%s", err, stderrOf(err))
	}
	top := strings.TrimSpace(string(out))
	d.say("$ nix-build --option substitute false -E '...'   # production builds it itself: %.1f s", builtHere.Seconds())
	query := exec.CommandContext(ctx, "nix-store", "-qR", top)
	query.Env = own.Env
	closure, err := query.Output()
	if err != nil {
		return fmt.Errorf("list the closure: %w%s", err, stderrOf(err))
	}
	del := exec.CommandContext(ctx, "nix-store", append([]string{"--delete"}, strings.Fields(string(closure))...)...)
	del.Env = own.Env
	if out, err := del.CombinedOutput(); err != nil {
		return fmt.Errorf("forget production's own build: %w\n%s", err, out)
	}

	build := exec.CommandContext(ctx, "nix-build", "--no-out-link", "-E", expr)
	build.Env = append(launch.CleanNixEnv(os.Environ()), d.daemon.Env()...)
	began = time.Now()
	out, err = build.Output()
	built := time.Since(began)
	if err != nil {
		return fmt.Errorf("build on staging: %w%s", err, stderrOf(err))
	}
	if got := strings.TrimSpace(string(out)); got != top {
		return fmt.Errorf("staging built %s, production %s", got, top)
	}
	d.say("$ nix-build -E '...'   # staging builds it, through its nix-daemon: %.1f s\n%s", built.Seconds(), top)
	sigs, _ := exec.CommandContext(ctx, "nix", "--extra-experimental-features", "nix-command", "path-info", "--sigs", top).CombinedOutput()
	d.say("$ nix path-info --sigs %s\n%s", top, strings.TrimSpace(string(sigs)))

	store := filepath.Join(d.dir, "prod-store")
	fetch := exec.CommandContext(ctx, "nix-store", "--store", store, "-r", top)
	fetch.Env = append(launch.CleanNixEnv(os.Environ()), "NIX_CONF_DIR="+filepath.Join(d.P, "etc/nix"))
	prefix := ""
	if d.sshPort != 22 {
		// Nix before 2.31 takes no port from the URL: root's ssh config has it.
		sshOpts := "-F " + filepath.Join(d.P, "root/.ssh/config")
		fetch.Env = append(fetch.Env, "NIX_SSHOPTS="+sshOpts)
		prefix = "NIX_SSHOPTS='" + sshOpts + "' "
	}
	began = time.Now()
	got, err := fetch.CombinedOutput()
	fetched := time.Since(began)
	d.say("\n$ %sNIX_CONF_DIR=%s nix-store --store %s -r %s   # production fetches it: %.1f s\n%s", prefix, filepath.Join(d.P, "etc/nix"), store, top, fetched.Seconds(), lastLines(string(got), 3))
	if err != nil {
		return fmt.Errorf("production could not fetch %s: %w", top, err)
	}
	paths, err := exec.CommandContext(ctx, "nix-store", "--store", store, "-qR", top).Output()
	if err != nil {
		return fmt.Errorf("list what production fetched: %w%s", err, stderrOf(err))
	}
	n := len(strings.Fields(string(paths)))
	if n != d.o.Paths {
		return fmt.Errorf("production holds %d paths of the closure, want %d", n, d.o.Paths)
	}
	d.say("\nProduction fetched all %d paths from staging, signatures checked, with no key copied by hand:", n)
	d.say("fetching took %.1f s, building them itself %.1f s (%.1fx as long).", fetched.Seconds(), builtHere.Seconds(), builtHere.Seconds()/fetched.Seconds())
	return nil
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = append([]string{"..."}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

// stderrOf returns what a failed command printed, if exec kept it.
func stderrOf(err error) string {
	if ee, ok := err.(*exec.ExitError); ok && len(ee.Stderr) > 0 {
		return "\n" + lastLines(string(ee.Stderr), 10)
	}
	return ""
}
