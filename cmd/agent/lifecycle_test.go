package main

// Tests of what a pass reports and leaves on disk when the desired state
// or the host changes under a running agent, through the real binary.

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nixpeer/nixpeer/internal/testenv"
	"github.com/nixpeer/nixpeer/pkg/peer"
	"github.com/nixpeer/nixpeer/pkg/state"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// hostYAML is a desired state with one serving host and, optionally, a
// second one that fetches from it.
func hostYAML(peerPort int, serve, apply string, withProd bool) string {
	s := fmt.Sprintf(`apiVersion: nixpeer/v1
trust: tofu
hosts:
  - name: stage
    address: 127.0.0.2
    peerPort: %d
    platform: nix
    apply: %s
%s`, peerPort, apply, serve)
	if withProd {
		s += fmt.Sprintf(`  - name: prod
    address: 127.0.0.3
    peerPort: %d
    platform: nix
    apply: ["true"]
    substituteFrom: [stage]
`, peerPortOf("127.0.0.3"))
	}
	return s
}

func noCondition(t *testing.T, st status.Status, types ...string) {
	t.Helper()
	for _, typ := range types {
		if c := status.Find(st.Conditions, typ); c != nil {
			t.Errorf("%s is still reported: %+v", typ, *c)
		}
	}
}

func hasCondition(typ string, s status.ConditionStatus, reason string) func(status.Status) bool {
	return func(st status.Status) bool {
		c := status.Find(st.Conditions, typ)
		return c != nil && c.Status == s && c.Reason == reason
	}
}

// factsReady fetches a host's facts from its peer port and returns what
// they say of Ready.
func factsReady(t *testing.T, addr string) bool {
	t.Helper()
	f, err := peer.Fetch(context.Background(), addr, func(ssh.PublicKey) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	return f.Ready
}

// TestSubstituteFromRemovedWhileThePeerIsAway: production waits for a
// staging agent that never comes; once substituteFrom is removed it is
// Ready, reports nothing about substituters, and stays so across a
// restart (no stale status comes back from state.db).
func TestSubstituteFromRemovedWhileThePeerIsAway(t *testing.T) {
	testenv.Require(t, "nix")
	port := testenv.FreePort(t, "127.0.0.2")
	root, config := newRoot(t, hostYAML(port, "    serve: {}\n", "[]", true))
	writeNixConf(t, root)
	a := startAgent(t, root, config, "prod")
	a.waitFor("waiting for staging", hasCondition(status.SubstitutersReady, status.False, "WaitingForPeer"))

	renameSave(t, config, hostYAML(port, "    serve: {}\n", "[]", false)+fmt.Sprintf(`  - name: prod
    address: 127.0.0.3
    peerPort: %d
    platform: nix
    apply: ["true"]
`, peerPortOf("127.0.0.3")))
	st := a.waitFor("Ready without a peer", func(s status.Status) bool { return ready(s) && s.Generation == 2 })
	noCondition(t, st, status.SubstitutersReady, status.PeersTrusted)
	if len(st.Peers) != 0 {
		t.Fatalf("peers %+v, want none", st.Peers)
	}
	a.stop()
	a = startAgent(t, root, config, "prod")
	first, err := a.client.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	noCondition(t, first, status.SubstitutersReady)
	a.waitFor("Ready after a restart", ready)
}

// TestServeRemoved: a host that no longer serves stops saying it does,
// lets nobody in and no longer signs.
func TestServeRemoved(t *testing.T) {
	testenv.Require(t, "nix")
	port := testenv.FreePort(t, "127.0.0.2")
	root, config := newRoot(t, hostYAML(port, "    serve: {}\n", "[]", false))
	writeNixConf(t, root)
	a := startAgent(t, root, config, "stage", noSSHDCheck)
	st := a.waitFor("Ready, serving", ready)
	if c := condition(t, st, status.ServeReady); c.Status != status.True {
		t.Fatalf("ServeReady %+v", c)
	}
	conf := filepath.Join(root, "etc/nix/nixpeer.conf")
	if !bytes.Contains(readFile(t, conf), []byte("extra-secret-key-files")) {
		t.Fatalf("a serving host does not sign:\n%s", readFile(t, conf))
	}
	renameSave(t, config, hostYAML(port, "", "[]", false))
	st = a.waitFor("Ready, not serving", func(s status.Status) bool { return ready(s) && s.Generation == 2 })
	noCondition(t, st, status.CacheKeyReady, status.ServeReady)
	if got := readFile(t, conf); bytes.Contains(got, []byte("secret-key-files")) {
		t.Fatalf("a host that no longer serves still signs:\n%s", got)
	}
	if got := readFile(t, filepath.Join(root, "etc/ssh/authorized_keys.d/nix-ssh")); bytes.Contains(got, []byte("ssh-ed25519")) {
		t.Fatalf("a host that no longer serves lets someone in:\n%s", got)
	}
}

// TestKeyNameChangeKeepsSigning: serve.keyName changes under a key made
// with the old name. The key is not replaced, and the Nix settings stay
// as they are (still signing with the key there is); the host says why it
// is not Ready, in its status and in its facts, until the name is back.
func TestKeyNameChangeKeepsSigning(t *testing.T) {
	testenv.Require(t, "nix")
	port := testenv.FreePort(t, "127.0.0.2")
	root, config := newRoot(t, hostYAML(port, "    serve: {}\n", "[]", false))
	writeNixConf(t, root)
	a := startAgent(t, root, config, "stage", noSSHDCheck)
	a.waitFor("Ready", ready)
	conf := filepath.Join(root, "etc/nix/nixpeer.conf")
	key := filepath.Join(root, "var/lib/nixpeer/keys/cache-priv-key.pem")
	confBefore, keyBefore := readFile(t, conf), readFile(t, key)

	renameSave(t, config, hostYAML(port, "    serve: {keyName: stage-2}\n", "[]", false))
	st := a.waitFor("the mismatch reported", hasCondition(status.CacheKeyReady, status.False, "KeyNameMismatch"))
	c := condition(t, st, status.CacheKeyReady)
	if !strings.Contains(c.Message, `"127.0.0.2"`) || !strings.Contains(c.Message, `"stage-2"`) {
		t.Fatalf("CacheKeyReady does not name both keys: %s", c.Message)
	}
	if c := condition(t, st, status.NixSettingsApplied); c.Status != status.True {
		t.Fatalf("NixSettingsApplied %+v: want the settings live, still signing with the key there is", c)
	}
	if st.Ready {
		t.Fatal("Ready while serve.keyName does not match the signing key")
	}
	if code, _, _ := runCLI(t, "status", "--socket", a.socket); code != exitNotReady {
		t.Fatalf("status exit %d, want %d", code, exitNotReady)
	}
	if factsReady(t, fmt.Sprintf("127.0.0.2:%d", port)) {
		t.Fatal("the facts say Ready while the status does not")
	}
	if !bytes.Equal(readFile(t, conf), confBefore) || !bytes.Equal(readFile(t, key), keyBefore) {
		t.Fatalf("the settings or the key changed:\n%s", readFile(t, conf))
	}

	renameSave(t, config, hostYAML(port, "    serve: {}\n", "[]", false))
	a.waitFor("Ready with the name back", func(s status.Status) bool { return ready(s) && s.Generation == 3 })
}

// TestFailingApplyIsNotReady: an apply that fails is a failure of the
// pass: not Ready, in the status, its exit code and the facts. An
// unreadable record in state.db is written anew by the next agent.
func TestFailingApplyIsNotReady(t *testing.T) {
	testenv.Require(t, "nix")
	port := testenv.FreePort(t, "127.0.0.2")
	root, config := newRoot(t, hostYAML(port, "    serve: {}\n", `["false"]`, false))
	writeNixConf(t, root)
	a := startAgent(t, root, config, "stage", noSSHDCheck)
	st := a.waitFor("the apply failed", hasCondition(status.NixSettingsApplied, status.False, "ApplyFailed"))
	if st.Ready || condition(t, st, status.Ready).Reason != "ApplyFailed" {
		t.Fatalf("Ready %+v after a failed apply", condition(t, st, status.Ready))
	}
	if code, _, _ := runCLI(t, "status", "--socket", a.socket); code != exitNotReady {
		t.Fatalf("status exit %d, want %d", code, exitNotReady)
	}
	if factsReady(t, fmt.Sprintf("127.0.0.2:%d", port)) {
		t.Fatal("the facts say Ready after a failed apply")
	}

	renameSave(t, config, hostYAML(port, "    serve: {}\n", `["true"]`, false))
	a.waitFor("Ready once the apply works", ready)
	a.stop()
	store, _, err := state.Open(filepath.Join(root, "var/lib/nixpeer/state.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Commit(state.Pass{Records: map[string]any{"nix/applied": 42}}); err != nil { // not what the agent writes
		t.Fatal(err)
	}
	store.Close()
	restarted := time.Now()
	a = startAgent(t, root, config, "stage", noSSHDCheck)
	a.waitFor("Ready after the record was damaged", func(s status.Status) bool {
		return ready(s) && s.LastReconcile.After(restarted)
	})
	a.stop()
	store, _, err = state.Open(filepath.Join(root, "var/lib/nixpeer/state.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	var applied struct{ Hash string }
	if _, err := store.Get("nix/applied", &applied); err != nil || len(applied.Hash) != 64 {
		t.Fatalf("the damaged record was not written anew: %+v, %v", applied, err)
	}
}

// TestLongApplyDoesNotHoldTheAgent: while an apply runs for minutes, the
// agent answers its status and reconciles a new desired state; SIGTERM
// stops it within seconds, and the apply with everything it started.
func TestLongApplyDoesNotHoldTheAgent(t *testing.T) {
	testenv.Require(t, "nix")
	port := testenv.FreePort(t, "127.0.0.2")
	dir := t.TempDir()
	apply := fmt.Sprintf(`["/bin/sh", "-c", "echo $$ > %s/apply.pid; sleep 600 & echo $! > %s/child.pid; wait"]`, dir, dir)
	root, config := newRoot(t, hostYAML(port, "    serve: {}\n", apply, false))
	writeNixConf(t, root)
	a := startAgent(t, root, config, "stage", noSSHDCheck)
	a.waitFor("applying", func(s status.Status) bool {
		_, err := os.Stat(filepath.Join(dir, "child.pid"))
		return hasCondition(status.NixSettingsApplied, status.False, "Applying")(s) && err == nil
	})
	renameSave(t, config, hostYAML(port+1, "    serve: {}\n", apply, false))
	a.waitFor("generation 2 observed while the apply runs", func(s status.Status) bool {
		return s.Generation == 2 && s.ObservedGeneration == 2 && hasCondition(status.NixSettingsApplied, status.False, "Applying")(s)
	})
	pids := []int{readPid(t, filepath.Join(dir, "apply.pid")), readPid(t, filepath.Join(dir, "child.pid"))}
	for _, pid := range pids {
		if !processAlive(pid) {
			t.Fatalf("process %d of the apply ended before SIGTERM", pid)
		}
	}
	if !a.sigterm() {
		t.Fatal("the agent did not stop within 5s of SIGTERM while an apply ran")
	}
	testenv.WaitFor(t, 5*time.Second, 10*time.Millisecond, "the apply's processes to end", func() error {
		for _, pid := range pids {
			if processAlive(pid) {
				return fmt.Errorf("process %d is alive", pid)
			}
		}
		return nil
	})
}

func readPid(t *testing.T, path string) int {
	t.Helper()
	pid, err := strconv.Atoi(strings.TrimSpace(string(readFile(t, path))))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// processAlive reports whether pid runs (a zombie does not).
func processAlive(pid int) bool {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// pid (comm) STATE ...
	i := bytes.LastIndexByte(raw, ')')
	return i < 0 || i+2 >= len(raw) || raw[i+2] != 'Z'
}

// writeNixConf gives root the operator's own nix.conf of a machine without
// internet.
func writeNixConf(t *testing.T, root string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(root, "etc/nix"), 0o755); err != nil {
		t.Fatal(err)
	}
	testenv.WriteNixConf(t, filepath.Join(root, "etc/nix"))
}
