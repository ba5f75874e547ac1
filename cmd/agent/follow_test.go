package main

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nixpeer/nixpeer/internal/testenv"
	"github.com/nixpeer/nixpeer/pkg/state"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// TestStatusWatchAndEvents: `status --watch` redraws the table when an
// edit of the desired state is reconciled, and stops on SIGINT with exit
// 0; `events` shows the history of what changed, as text and JSON.
func TestStatusWatchAndEvents(t *testing.T) {
	port := testenv.FreePort(t, "127.0.0.2")
	root, config := newRoot(t, fleet(port, ""))
	a := startAgent(t, root, config, "stage", noSSHDCheck)
	a.waitFor("Ready", ready)

	out := &syncWriter{}
	watch := exec.Command(binary(t), "status", "--watch", "--socket", a.socket)
	watch.Stdout, watch.Stderr = out, out
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- watch.Wait() }()
	defer watch.Process.Kill()
	waitOutput := func(what string) {
		t.Helper()
		testenv.WaitFor(t, 10*time.Second, 10*time.Millisecond, what, func() error {
			if !strings.Contains(out.String(), what) {
				return fmt.Errorf("not in the output yet:\n%s", out.String())
			}
			return nil
		})
	}
	waitOutput("Generation:  1 (observed 1)")
	renameSave(t, config, fleet(testenv.FreePort(t, "127.0.0.2"), ""))
	waitOutput("Generation:  2 (observed 2)")
	if n := strings.Count(out.String(), "Host:"); n < 2 {
		t.Fatalf("%d tables drawn, want one more after the edit:\n%s", n, out.String())
	}
	watch.Process.Signal(syscall.SIGINT)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("status --watch after SIGINT: %v\n%s", err, out.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("status --watch did not stop on SIGINT")
	}

	code, text, errText := runCLI(t, "events", "--socket", a.socket)
	for _, want := range []string{"generation 1  not Ready", "generation 2  Ready", "wrote " + root, "Ready False", "-> True (AllReady)", "generation 1 -> 2"} {
		if code != 0 || !strings.Contains(text, want) {
			t.Fatalf("events: exit %d, no %q in:\n%s%s", code, want, text, errText)
		}
	}
	code, raw, errText := runCLI(t, "events", "--socket", a.socket, "--json", "--since", "1h")
	var evs []state.Event
	if err := json.Unmarshal([]byte(raw), &evs); code != 0 || err != nil || len(evs) < 2 {
		t.Fatalf("events --json: exit %d, %v, %d events:\n%s%s", code, err, len(evs), raw, errText)
	}
	last := evs[len(evs)-1]
	if last.Generation != 2 || last.Reason != "AllReady" {
		t.Fatalf("newest event %+v, want generation 2 Ready", last)
	}
	// Nothing happened in the last millisecond.
	if code, text, _ := runCLI(t, "events", "--socket", a.socket, "--since", "1ms"); code != 0 || strings.TrimSpace(text) != "no events" {
		t.Fatalf("events --since 1ms: exit %d:\n%s", code, text)
	}
}

// TestWait: `nixpeer wait` returns 0 once the host is Ready, and 3 with
// the reason when it is not Ready in time.
func TestWait(t *testing.T) {
	// No daemon yet: it waits for one, and says so at the timeout.
	code, out, errText := runCLI(t, "wait", "--socket", filepath.Join(t.TempDir(), "none.sock"), "--timeout", "1s")
	if code != exitTimeout || !strings.Contains(errText, "NoDaemon") {
		t.Fatalf("wait with no daemon: exit %d, want 3\n%s%s", code, out, errText)
	}

	port := testenv.FreePort(t, "127.0.0.2")
	root, config := newRoot(t, fleet(port, ""))
	a := startAgent(t, root, config, "stage", noSSHDCheck)
	code, out, errText = runCLI(t, "wait", "--socket", a.socket, "--timeout", "30s")
	if code != 0 {
		t.Fatalf("wait: exit %d\n%s%s", code, out, errText)
	}
	if st := a.waitFor("status", func(status.Status) bool { return true }); !st.Ready {
		t.Fatalf("wait returned 0 but the host is not Ready: %+v", st.Conditions)
	}

	// A serving host whose sshd never answers is not Ready.
	root2, config2 := newRoot(t, fleet(testenv.FreePort(t, "127.0.0.2"), ""))
	b := startAgent(t, root2, config2, "stage", "--sshd-check-interval", "1s")
	code, out, errText = runCLI(t, "wait", "--socket", b.socket, "--timeout", "2s")
	if code != exitTimeout || !strings.Contains(errText, "not Ready after 2s: ") {
		t.Fatalf("wait on a host that is not Ready: exit %d, want 3\n%s%s", code, out, errText)
	}
}

// TestWaitForAPath: production's `nixpeer wait --path P`, started before
// staging builds P, returns 0 once staging has built (and signed) it; for
// a path staging never builds it exits 3 and names the path.
func TestWaitForAPath(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.Require(t, "nix", "nix-store", "nix-daemon", "nix-build", "nix-instantiate", "sshd")
	testenv.RequireNixSSHUser(t)
	f := startFleet(t, testenv.FreePort(t, "127.0.0.2"), "ssh")
	instantiate := func(name string) (drv, out string) {
		t.Helper()
		expr := fmt.Sprintf(`derivation { name = "%s"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo %s > $out" ]; }`, name, name)
		cmd := exec.Command("nix-instantiate", "-E", expr)
		cmd.Env = append(cmd.Environ(), f.daemon.Env()...)
		raw, err := cmd.Output()
		if err != nil {
			t.Fatalf("nix-instantiate: %v", err)
		}
		drv = strings.TrimSpace(string(raw))
		raw, err = exec.Command("nix-store", "-q", "--outputs", drv).Output()
		if err != nil {
			t.Fatalf("nix-store -q --outputs: %v", err)
		}
		return drv, strings.TrimSpace(string(raw))
	}
	drv, path := instantiate("nixpeer-wait-" + nonce())

	// Production's logins to staging's sshd with its client key, as sshd
	// logs them: the wait's queries are among them.
	pub, _, _, _, err := ssh.ParseAuthorizedKey(readFile(t, filepath.Join(f.P, "var/lib/nixpeer/keys/ssh_client_ed25519.pub")))
	if err != nil {
		t.Fatal(err)
	}
	logins := func() int {
		n := 0
		for _, line := range strings.Split(f.sshd.Logs(), "\n") {
			if strings.Contains(line, "Accepted publickey for nix-ssh") && strings.Contains(line, ssh.FingerprintSHA256(pub)) {
				n++
			}
		}
		return n
	}
	before := logins()
	waitOut := &syncWriter{}
	wait := exec.Command(binary(t), "wait", "--socket", f.prod.socket, "--path", path, "--timeout", "60s")
	wait.Stdout, wait.Stderr = waitOut, waitOut
	if err := wait.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- wait.Wait() }()
	testenv.WaitFor(t, 20*time.Second, 10*time.Millisecond, "the wait to ask staging", func() error {
		if logins() > before {
			return nil
		}
		return fmt.Errorf("no login of production's key since the wait started")
	})
	select {
	case err := <-done:
		t.Fatalf("wait returned before staging built the path: %v\n%s", err, waitOut.String())
	default:
	}
	build := exec.Command("nix-store", "-r", drv)
	build.Env = append(build.Environ(), f.daemon.Env()...)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build on staging: %v\n%s", err, out)
	}
	built := time.Now()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("wait: %v\n%s", err, waitOut.String())
		}
		t.Logf("wait returned %v after staging built the path", time.Since(built).Round(time.Millisecond))
	case <-time.After(30 * time.Second):
		wait.Process.Kill()
		t.Fatalf("wait did not return after staging built the path:\n%s", waitOut.String())
	}

	_, never := instantiate("nixpeer-never-" + nonce())
	code, out, errText := runCLI(t, "wait", "--socket", f.prod.socket, "--path", never, "--timeout", "2s")
	if code != exitTimeout || !strings.Contains(errText, never) || !strings.Contains(errText, "1 of 1 paths are not on a serving peer") {
		t.Fatalf("wait for a path never built: exit %d, want 3 naming it\n%s%s", code, out, errText)
	}
}
