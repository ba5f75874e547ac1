package main

// Integration tests: they build the real binary and run it as a subprocess
// under --root in a temporary directory, and talk to it over its socket.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nixpeer/nixpeer/internal/testenv"
	"github.com/nixpeer/nixpeer/pkg/api"
	"github.com/nixpeer/nixpeer/pkg/status"
	"golang.org/x/crypto/ssh"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// binary builds nixpeer once per test process, or takes the one that
// NIXPEER_BIN names: the Nix version matrix runs these tests in a chroot
// with no Go toolchain (scripts/nixmatrix.sh).
func binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		if p := os.Getenv("NIXPEER_BIN"); p != "" {
			binPath = p
			return
		}
		dir, err := os.MkdirTemp("", "nixpeer-bin-")
		if err != nil {
			buildErr = err
			return
		}
		// Other users run it too (the root-only test runs it as nobody).
		if err := os.Chmod(dir, 0o755); err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "nixpeer")
		args := []string{"build", "-o", binPath}
		if raceEnabled {
			args = append(args, "-race")
		}
		if exec.Command("git", "rev-parse", "HEAD").Run() == nil {
			args = append(args, "-buildvcs=true") // for "nixpeer version", whatever GOFLAGS says
		}
		out, err := exec.Command("go", append(args, ".")...).CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// testCacheKey is a binary-cache public key pinned for stage.
const testCacheKey = "127.0.0.2:bhoMZTXP8eQ17q4jPSiyxegQyCIMw8URAxjtMvuNNdU="

// fleet is the desired state most tests use: stage serves, prod fetches.
// With stage's host key given, its host key and cache key are pinned: prod
// knows all it needs of stage without peering and can be Ready (only as
// prod: stage's own key is not the pinned one).
func fleet(stagePeerPort int, stageHostKey string) string {
	pin, cacheKey := "", ""
	if stageHostKey != "" {
		pin = "\n    hostKey: " + stageHostKey
		cacheKey = "publicKey: " + testCacheKey
	}
	return fmt.Sprintf(`apiVersion: nixpeer/v1
trust: tofu
hosts:
  - name: stage
    address: 127.0.0.2
    peerPort: %d
    platform: nix
    apply: []
    serve: {%s}%s
  - name: prod
    address: 127.0.0.3
    peerPort: %d
    platform: nix
    apply: []
    substituteFrom: [stage]
`, stagePeerPort, cacheKey, pin, peerPortOf("127.0.0.3"))
}

var (
	peerPortsMu sync.Mutex
	peerPorts   = map[string]int{}
)

// peerPortOf is the peer port the tests of this process give an agent on
// address: one that was free when first asked for, the same afterwards (a
// desired state written twice must not change).
func peerPortOf(address string) int {
	peerPortsMu.Lock()
	defer peerPortsMu.Unlock()
	if p, ok := peerPorts[address]; ok {
		return p
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(address, "0"))
	if err != nil {
		panic(fmt.Sprintf("pick a free port on %s: %v", address, err))
	}
	p := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	peerPorts[address] = p
	return p
}

// renameSave writes content the way editors do: a new file renamed over
// the old one.
func renameSave(t testing.TB, path, content string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".swp")
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

type agent struct {
	t       testing.TB
	root    string
	config  string
	socket  string
	cmd     *exec.Cmd
	logs    *syncWriter
	done    chan error
	client  *api.Client
	stopped bool
}

// startAgent runs `nixpeer run` for host under root and waits until its
// socket answers.
// noSSHDCheck starts a serving agent that does not check its own sshd:
// for the tests of a serving host with no sshd at all, which would
// otherwise say, rightly, that it does not serve.
const noSSHDCheck = "--sshd-check-interval=0"

func startAgent(t testing.TB, root, config, host string, extra ...string) *agent {
	t.Helper()
	a := &agent{t: t, root: root, config: config, socket: filepath.Join(root, "run/nixpeer/agent.sock"),
		logs: &syncWriter{}, done: make(chan error, 1)}
	args := append([]string{"run", "--config", config, "--host", host, "--root", root, "--log-level", "debug"}, extra...)
	a.cmd = asInstalled(t, args...)
	a.cmd.Stdout = a.logs
	a.cmd.Stderr = a.logs
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { a.done <- a.cmd.Wait() }()
	a.client = api.NewClient(a.socket)
	t.Cleanup(func() {
		a.stop()
		if t.Failed() {
			t.Logf("agent %s log:\n%s", host, a.logs.String())
		}
	})
	a.waitFor("socket answers", func(status.Status) bool { return true })
	return a
}

// syncWriter collects an agent's output from two pipes.
type syncWriter struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncWriter) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (a *agent) stop() {
	if !a.stopped {
		a.sigterm()
	}
}

// sigterm stops the agent with SIGTERM and reports whether it exited
// within 5 s, as systemd expects of it; if not, it is killed.
func (a *agent) sigterm() bool {
	a.stopped = true
	a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
		return true
	case <-time.After(5 * time.Second):
		a.cmd.Process.Kill()
		<-a.done
		return false
	}
}

// kill9 kills the agent the hard way.
func (a *agent) kill9() {
	a.stopped = true
	a.cmd.Process.Kill()
	<-a.done
}

// waitFor polls the status until cond holds, with a deadline of 20 s.
func (a *agent) waitFor(what string, cond func(status.Status) bool) status.Status {
	a.t.Helper()
	return a.waitWithin(20*time.Second, what, cond)
}

// waitWithin polls the status until cond holds, at most d.
func (a *agent) waitWithin(d time.Duration, what string, cond func(status.Status) bool) status.Status {
	a.t.Helper()
	deadline := time.Now().Add(d)
	var last status.Status
	var lastErr error
	for time.Now().Before(deadline) {
		select {
		case err := <-a.done:
			a.done <- err
			a.t.Fatalf("waiting for %s: agent exited: %v\n%s", what, err, a.logs.String())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		var st status.Status
		var err error
		if lastErr == nil && !last.LastReconcile.IsZero() {
			// Long poll: the agent answers when its next reconcile ends.
			st, err = a.client.WaitReconciled(ctx, last.LastReconcile, time.Second)
		} else {
			st, err = a.client.Status(ctx)
		}
		cancel()
		if err == nil && cond(st) {
			return st
		}
		if err != nil {
			// Not listening yet: the socket appears within milliseconds.
			time.Sleep(10 * time.Millisecond)
		}
		last, lastErr = st, err
	}
	a.t.Fatalf("waiting for %s: deadline passed; last status %+v, last error %v", what, last, lastErr)
	return last
}

func ready(st status.Status) bool { return st.Ready && st.ObservedGeneration == st.Generation }

// reconciled: the desired state in force is valid and reconciled in full.
// A production agent alone, without its staging peer, gets this far but
// not to Ready.
func reconciled(st status.Status) bool {
	c := status.Find(st.Conditions, status.DesiredStateValid)
	return c != nil && c.Status == status.True && st.ObservedGeneration == st.Generation && st.Generation > 0
}

// runCLI runs the binary and returns its exit code, stdout and stderr.
func runCLI(t testing.TB, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(binary(t), args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, out.String(), errb.String()
}

func newRoot(t *testing.T, content string) (root, config string) {
	root = t.TempDir()
	config = filepath.Join(root, "etc/nixpeer/desired.yaml")
	os.MkdirAll(filepath.Dir(config), 0o755)
	if err := os.WriteFile(config, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return root, config
}

func TestRenameSaveIsReconciled(t *testing.T) {
	testenv.RequireRoot(t) // it asks the daemon to reconcile
	port := testenv.FreePort(t, "127.0.0.2")
	root, config := newRoot(t, fleet(port, ""))
	a := startAgent(t, root, config, "stage", noSSHDCheck)
	st := a.waitFor("Ready", ready)
	if st.Host != "stage" || st.Generation != 1 {
		t.Fatalf("first status: host %q generation %d, want stage 1", st.Host, st.Generation)
	}
	for i := 1; i <= 5; i++ {
		port = testenv.FreePort(t, "127.0.0.2")
		renameSave(t, config, fleet(port, ""))
		want := int64(1 + i)
		a.waitFor(fmt.Sprintf("generation %d reconciled", want), func(s status.Status) bool {
			return ready(s) && s.Generation == want
		})
	}
	// A comment is no change of meaning: the generation stays.
	before := a.waitFor("still ready", ready)
	renameSave(t, config, "# a comment\n"+fleet(port, ""))
	if err := a.client.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	after := a.waitFor("a later reconcile", func(s status.Status) bool { return s.LastReconcile.After(before.LastReconcile) })
	if after.Generation != 6 {
		t.Fatalf("generation %d after a comment-only edit, want 6", after.Generation)
	}
}

func TestBrokenFileKeepsLastGoodState(t *testing.T) {
	key := hostKeyLine(t)
	port := testenv.FreePort(t, "127.0.0.2")
	root, config := newRoot(t, fleet(port, key))
	a := startAgent(t, root, config, "prod")
	a.waitFor("reconciled", reconciled)
	kh := filepath.Join(root, "root/.ssh/known_hosts")
	good, err := os.ReadFile(kh)
	if err != nil || !strings.Contains(string(good), strings.TrimSpace(key)) {
		t.Fatalf("known_hosts lacks the pinned key: %v\n%s", err, good)
	}

	renameSave(t, config, strings.Replace(fleet(port, key), fmt.Sprintf("peerPort: %d", port), "peerPort: seven", 1))
	st := a.waitFor("DesiredStateValid False", func(s status.Status) bool {
		c := status.Find(s.Conditions, status.DesiredStateValid)
		return c != nil && c.Status == status.False
	})
	c := status.Find(st.Conditions, status.DesiredStateValid)
	if !strings.Contains(c.Message, config+":6:15:") {
		t.Fatalf("condition message %q does not name %s:6:15", c.Message, config)
	}
	if st.Ready || st.Generation != 1 || st.ObservedGeneration != 1 {
		t.Fatalf("broken file: ready %v generation %d/%d, want not ready, last good generation 1 kept", st.Ready, st.Generation, st.ObservedGeneration)
	}
	if code, _, _ := runCLI(t, "status", "--socket", a.socket); code != exitNotReady {
		t.Fatalf("status exit %d for a broken file, want %d", code, exitNotReady)
	}
	now, _ := os.ReadFile(kh)
	if !bytes.Equal(now, good) {
		t.Fatalf("known_hosts changed while the file was broken:\n%s", now)
	}

	// Deleted: the last good state stays too.
	os.Remove(config)
	a.waitFor("FileMissing", func(s status.Status) bool {
		c := status.Find(s.Conditions, status.DesiredStateValid)
		return c != nil && c.Reason == "FileMissing"
	})
	renameSave(t, config, fleet(port, key))
	a.waitFor("valid again", reconciled)
}

func TestKill9ThenRestart(t *testing.T) {
	root, config := newRoot(t, fleet(testenv.FreePort(t, "127.0.0.2"), ""))
	a := startAgent(t, root, config, "stage", noSSHDCheck)
	a.waitFor("Ready", ready)
	code, factsBefore, _ := runCLI(t, "facts", "--root", root, "--json")
	if code != 0 {
		t.Fatalf("facts exit %d", code)
	}
	// Kill it in the middle of reconciling a stream of edits, several times.
	for i := 1; i <= 5; i++ {
		renameSave(t, config, fleet(testenv.FreePort(t, "127.0.0.2"), ""))
		a.kill9()
		a = startAgent(t, root, config, "stage", noSSHDCheck)
		want := int64(1 + i)
		a.waitFor(fmt.Sprintf("Ready at generation %d after kill -9", want), func(s status.Status) bool {
			return ready(s) && s.Generation == want
		})
	}
	// And right after start, before it even answers: key creation and the
	// first writes must survive that too.
	for i := 0; i < 5; i++ {
		cmd := exec.Command(binary(t), "run", "--config", config, "--host", "stage", "--root", root)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmd.Process.Kill()
		cmd.Wait()
	}
	a = startAgent(t, root, config, "stage", noSSHDCheck)
	a.waitFor("Ready after kills at start", ready)
	_, factsAfter, _ := runCLI(t, "facts", "--root", root, "--json")
	if factsAfter != factsBefore {
		t.Fatalf("keys changed across kill -9:\nbefore %s\nafter  %s", factsBefore, factsAfter)
	}
}

func TestSecondDaemonOnSameStateIsRefused(t *testing.T) {
	root, config := newRoot(t, fleet(testenv.FreePort(t, "127.0.0.2"), ""))
	a := startAgent(t, root, config, "stage", noSSHDCheck)
	a.waitFor("Ready", ready)
	code, _, stderr := runCLI(t, "run", "--config", config, "--host", "stage", "--root", root,
		"--socket", filepath.Join(root, "other.sock"))
	if code == 0 || !strings.Contains(stderr, "another process") {
		t.Fatalf("second daemon: exit %d, stderr %q; want a refusal naming the lock", code, stderr)
	}
	code, _, stderr = runCLI(t, "run", "--config", config, "--host", "stage", "--root", root,
		"--state-dir", filepath.Join(root, "other-state"))
	if code == 0 || !strings.Contains(stderr, "another nixpeer daemon answers") {
		t.Fatalf("second daemon on the same socket: exit %d, stderr %q", code, stderr)
	}
	a.waitFor("first daemon still serving", ready)
}

func TestMutatingCallsAreRootOnly(t *testing.T) {
	testenv.RequireRoot(t) // to run a client as another user
	root, config := newRoot(t, fleet(testenv.FreePort(t, "127.0.0.2"), ""))
	// The client runs as nobody, a member of group nogroup, so it may read.
	a := startAgent(t, root, config, "stage", noSSHDCheck, "--socket-group", "nogroup")
	a.waitFor("Ready", ready)
	// Below the temporary directory only: above it (/tmp) a chmod would
	// drop the sticky bit, which nixpeer then rightly refuses.
	testenv.MakeTraversable(t, filepath.Dir(a.socket))
	asNobody := func(args ...string) (int, string) {
		cmd := exec.Command(binary(t), args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), string(out)
		}
		if err != nil {
			t.Fatalf("run %v as nobody: %v", args, err)
		}
		return 0, string(out)
	}
	if code, out := asNobody("status", "--socket", a.socket, "--json"); code != 0 {
		t.Fatalf("status as a group member: exit %d, %s", code, out)
	}
	// Nor may it have the daemon log in to its peers.
	path := "/nix/store/00000000000000000000000000000000-x"
	for _, args := range [][]string{{"reconcile"}, {"plan", path}, {"wait", "--path", path, "--timeout", "10s"}, {"rotate cache-key"}, {"revoke cache-key"}, {"rotate host-key"}, {"publish", path}} {
		code, out := asNobody(append(append(strings.Fields(args[0]), "--socket", a.socket), args[1:]...)...)
		if code != 1 || !strings.Contains(out, "only root may") {
			t.Fatalf("%s as nobody: exit %d, %q; want exit 1 and a refusal", args[0], code, out)
		}
	}
	st, err := os.Stat(a.socket)
	if err != nil || st.Mode().Perm()&0o002 != 0 {
		t.Fatalf("socket mode %v: world-writable", st.Mode())
	}
}

func TestStatusWithoutDaemon(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	code, _, stderr := runCLI(t, "status", "--socket", sock)
	if code != exitNoDaemon || !strings.Contains(stderr, sock) || !strings.Contains(stderr, "no nixpeer daemon") {
		t.Fatalf("exit %d, stderr %q; want 1 and a message naming %s", code, stderr, sock)
	}
}

func TestStatusJSONAndTable(t *testing.T) {
	root, config := newRoot(t, fleet(testenv.FreePort(t, "127.0.0.2"), ""))
	a := startAgent(t, root, config, "stage", noSSHDCheck)
	a.waitFor("Ready", ready)
	code, out, _ := runCLI(t, "status", "--socket", a.socket, "--json")
	if code != exitReady {
		t.Fatalf("status exit %d, want 0", code)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"host", "ready", "generation", "observedGeneration", "conditions", "peers"} {
		if _, ok := m[k]; !ok {
			t.Errorf("status --json lacks %q: %s", k, out)
		}
	}
	conds, _ := m["conditions"].([]any)
	if len(conds) == 0 {
		t.Fatalf("no conditions: %s", out)
	}
	for _, k := range []string{"type", "status", "reason", "message", "lastTransitionTime"} {
		if _, ok := conds[0].(map[string]any)[k]; !ok {
			t.Errorf("condition lacks %q: %v", k, conds[0])
		}
	}
	code, out, _ = runCLI(t, "status", "--socket", a.socket)
	if code != 0 || !strings.Contains(out, "KeysReady") || !strings.Contains(out, "stage") {
		t.Fatalf("status table: exit %d\n%s", code, out)
	}
}

func TestNoOpReconcileWritesNothing(t *testing.T) {
	testenv.RequireRoot(t) // it asks the daemon to reconcile
	root, config := newRoot(t, fleet(testenv.FreePort(t, "127.0.0.2"), hostKeyLine(t)))
	a := startAgent(t, root, config, "prod")
	// Settled: reconciled, the settings verified, and the watch of stage
	// (not running) reported.
	st := a.waitFor("reconciled and settled", func(s status.Status) bool {
		return reconciled(s) && len(s.Peers) == 1 && strings.Contains(s.Peers[0].Message, "refused") &&
			hasCondition(status.NixSettingsApplied, status.True, "Applied")(s)
	})
	old := time.Unix(1_000_000_000, 0)
	var files []string
	for _, f := range st.Files {
		files = append(files, f.Path)
	}
	files = append(files, filepath.Join(root, "var/lib/nixpeer/state.db"))
	if len(files) < 3 {
		t.Fatalf("status lists %d managed files, want at least the two keys and known_hosts", len(st.Files))
	}
	for _, f := range files {
		if err := os.Chtimes(f, old, old); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 3; i++ {
		prev := a.waitFor("reconciled", reconciled)
		if err := a.client.Reconcile(context.Background()); err != nil {
			t.Fatal(err)
		}
		a.waitFor("the reconcile ran", func(s status.Status) bool { return s.LastReconcile.After(prev.LastReconcile) })
	}
	for _, f := range files {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if !fi.ModTime().Equal(old) {
			t.Errorf("%s was rewritten by a reconcile that had nothing to do", f)
		}
	}
}

func TestKnownHostsKeepsEveryForeignLine(t *testing.T) {
	key := hostKeyLine(t)
	port := testenv.FreePort(t, "127.0.0.2")
	root, config := newRoot(t, fleet(port, ""))
	kh := filepath.Join(root, "root/.ssh/known_hosts")
	os.MkdirAll(filepath.Dir(kh), 0o700)
	foreign := "# my hosts\r\n|1|abc=|def= ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n@cert-authority *.example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl  \n\nno-final-newline"
	if err := os.WriteFile(kh, []byte(foreign), 0o644); err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, root, config, "prod")
	a.waitFor("reconciled", func(s status.Status) bool { return s.ObservedGeneration == 1 })
	renameSave(t, config, fleet(port, key))
	a.waitFor("pinned generation", func(s status.Status) bool { return reconciled(s) && s.Generation == 2 })
	got, _ := os.ReadFile(kh)
	if !bytes.HasSuffix(got, []byte(foreign)) || !strings.Contains(string(got), "127.0.0.2 "+strings.TrimSpace(key)) {
		t.Fatalf("known_hosts after pinning:\n%q", got)
	}
	// The pin leaves: the key this host's known_hosts pins is still the
	// one trusted (never a new key on first use), and known_hosts stays.
	renameSave(t, config, fleet(port, ""))
	st := a.waitFor("unpinned generation", func(s status.Status) bool { return s.ObservedGeneration == 3 })
	if len(st.Peers) != 1 || st.Peers[0].HostKeyFingerprint != fingerprintOf(t, key) {
		t.Fatalf("after the pin left, stage's trusted key %+v, want the one known_hosts pins", st.Peers)
	}
	got, _ = os.ReadFile(kh)
	if !bytes.HasSuffix(got, []byte(foreign)) || !strings.Contains(string(got), "127.0.0.2 "+strings.TrimSpace(key)) {
		t.Fatalf("known_hosts after the pin left:\n%q", got)
	}
	// prod no longer fetches from stage: the block goes, every other byte
	// is as it was.
	renameSave(t, config, strings.Replace(fleet(port, ""), "    substituteFrom: [stage]\n", "", 1))
	a.waitFor("substituteFrom removed", func(s status.Status) bool { return s.ObservedGeneration == 4 })
	got, _ = os.ReadFile(kh)
	if string(got) != foreign {
		t.Fatalf("known_hosts after stage left:\n%q\nwant the original bytes\n%q", got, foreign)
	}
}

// fingerprintOf is the SHA256 fingerprint of a public key line.
func fingerprintOf(t *testing.T, line string) string {
	k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	return ssh.FingerprintSHA256(k)
}

func TestSystemdUnitVerifies(t *testing.T) {
	testenv.Require(t, "systemd-analyze")
	sa, err := testenv.LookPath("systemd-analyze")
	if err != nil {
		t.Fatal(err)
	}
	unit, err := os.ReadFile("../../systemd/nixpeer.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Type=notify", "Restart=on-failure", "StateDirectory=nixpeer", "RuntimeDirectory=nixpeer", "ProtectSystem=strict", "WatchdogSec="} {
		if !bytes.Contains(unit, []byte(want)) {
			t.Errorf("unit lacks %s", want)
		}
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "nixpeer.service")
	os.WriteFile(path, bytes.ReplaceAll(unit, []byte("/usr/local/bin/nixpeer"), []byte(binary(t))), 0o644)
	if out, err := exec.Command(sa, "verify", path).CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// hostKeyLine makes a fresh ed25519 public key line.
func hostKeyLine(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", filepath.Join(dir, "k")).CombinedOutput()
	if err != nil {
		t.Fatalf("ssh-keygen: %v %s", err, out)
	}
	pub, err := os.ReadFile(filepath.Join(dir, "k.pub"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(pub))
}

func TestValidateEveryExampleConfig(t *testing.T) {
	files, _ := filepath.Glob("../../configs/*.yaml")
	if len(files) == 0 {
		t.Fatal("no example configs found")
	}
	for _, f := range files {
		code, out, stderr := runCLI(t, "validate", "--config", f)
		if code != 0 || !strings.Contains(out, "valid") {
			t.Errorf("%s: exit %d\n%s%s", f, code, out, stderr)
		}
	}
}

func TestValidateReportsEveryMistakeWithPosition(t *testing.T) {
	dir := t.TempDir()
	cases := []struct{ name, content, want string }{
		{"syntax", "apiVersion: nixpeer/v1\nhosts:\n  - name: [a\n", ":3:"},
		{"unknown field", "apiVersion: nixpeer/v1\nhosts:\n  - name: a\n    address: a.example\n    adress: x\n", ":5:5:"},
		{"wrong type", "apiVersion: nixpeer/v1\nhosts:\n  - name: a\n    address: a.example\n    peerPort: seven\n", ":5:15:"},
		{"unknown host", "apiVersion: nixpeer/v1\nhosts:\n  - name: a\n    address: a.example\n    substituteFrom: [b]\n", ":5:22:"},
		{"injection", "apiVersion: nixpeer/v1\nhosts:\n  - name: a\n    address: \"a.example\\n  - evil\"\n", ":4:14:"},
	}
	for _, c := range cases {
		path := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "-")+".yaml")
		os.WriteFile(path, []byte(c.content), 0o644)
		code, _, stderr := runCLI(t, "validate", "--config", path)
		if code != 1 || !strings.Contains(stderr, path+c.want) {
			t.Errorf("%s: exit %d, stderr %q; want exit 1 and %s%s", c.name, code, stderr, path, c.want)
		}
	}
}

// TestSSHDCheckIntervalBounds: a check more often than every second is
// refused at the start, with the way to turn it off.
func TestSSHDCheckIntervalBounds(t *testing.T) {
	root, config := newRoot(t, fleet(testenv.FreePort(t, "127.0.0.2"), ""))
	code, _, stderr := runCLI(t, "run", "--config", config, "--host", "stage", "--root", root, "--sshd-check-interval", "10ms")
	if code != 2 || !strings.Contains(stderr, "want 0 (no check) or at least 1s") {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
}
