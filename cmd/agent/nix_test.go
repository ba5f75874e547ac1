package main

// Tests of the Nix layer through the real binary, against real Nix 2.8 and a
// real sshd on loopback addresses.

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nixpeer/nixpeer/internal/testenv"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// facts runs `nixpeer facts --json` on root.
func facts(t *testing.T, root string) hostFacts {
	t.Helper()
	code, out, stderr := runCLI(t, "facts", "--root", root, "--json")
	if code != 0 {
		t.Fatalf("facts: exit %d: %s", code, stderr)
	}
	var f hostFacts
	if err := json.Unmarshal([]byte(out), &f); err != nil {
		t.Fatal(err)
	}
	return f
}

// peeringFleet is the desired state of the acceptance contract: a staging
// host serving over sshd on sshPort and a production host fetching from
// it, both on plain Nix, with nothing pinned: peering exchanges the keys.
func peeringFleet(sshPort int, protocol string, stageApply []string) string {
	return peeringFleetAt("127.0.0.2", "127.0.0.3", sshPort, protocol, stageApply)
}

// peeringFleetAt is peeringFleet with staging and production at the
// addresses given.
func peeringFleetAt(stageAddr, prodAddr string, sshPort int, protocol string, stageApply []string) string {
	apply, _ := json.Marshal(stageApply)
	return fmt.Sprintf(`apiVersion: nixpeer/v1
trust: tofu
hosts:
  - name: stage
    address: %s
    peerPort: %d
    sshPort: %d
    platform: nix
    apply: %s
    serve:
      protocol: %s
  - name: prod
    address: %s
    peerPort: %d
    platform: nix
    apply: ["true"]
    substituteFrom: [stage]
`, stageAddr, peerPortOf(stageAddr), sshPort, apply, protocol, prodAddr, peerPortOf(prodAddr))
}

// condition returns the condition of type typ, or fails.
func condition(t *testing.T, st status.Status, typ string) status.Condition {
	t.Helper()
	c := status.Find(st.Conditions, typ)
	if c == nil {
		t.Fatalf("no %s condition in %+v", typ, st.Conditions)
	}
	return *c
}

// fleetRun is a staging and a production agent with staging's real
// nix-daemon and sshd.
type fleetRun struct {
	config, S, P string
	stageAddr    string
	stage, prod  *agent
	daemon       *testenv.NixDaemon
	sshd         *testenv.SSHD
	port         int
	started      time.Time // when both agents were started
	// sshdExtra are more sshd_config lines for staging's sshd; sshOpts
	// more NIX_SSHOPTS for production's fetches.
	sshdExtra, sshOpts []string
}

// prepareFleet writes the desired state and the operators' own nix.conf
// (no internet, no sandbox here) for both hosts, and starts staging's
// nix-daemon, which the staging agent's apply restarts.
func prepareFleet(t testing.TB, sshPort int, protocol string) *fleetRun {
	return prepareFleetAt(t, "127.0.0.2", "127.0.0.3", sshPort, protocol)
}

// prepareFleetAt is prepareFleet with staging and production at the
// addresses given.
func prepareFleetAt(t testing.TB, stageAddr, prodAddr string, sshPort int, protocol string) *fleetRun {
	f := &fleetRun{config: filepath.Join(t.TempDir(), "desired.yaml"), S: t.TempDir(), P: t.TempDir(), port: sshPort, stageAddr: stageAddr}
	for _, root := range []string{f.S, f.P} {
		os.MkdirAll(filepath.Join(root, "etc/nix"), 0o755)
		testenv.WriteNixConf(t, filepath.Join(root, "etc/nix"))
	}
	var restart []string
	f.daemon, restart = testenv.StartRestartableNixDaemon(t, filepath.Join(f.S, "etc/nix"))
	os.WriteFile(f.config, []byte(peeringFleetAt(stageAddr, prodAddr, sshPort, protocol, restart)), 0o644)
	return f
}

// startSSHD starts staging's sshd as the contract says: its host key is
// the staging agent's, its authorized keys the staging agent's file.
func (f *fleetRun) startSSHD(t testing.TB) {
	testenv.WaitFor(t, 20*time.Second, 10*time.Millisecond, "staging's host key", func() error {
		_, err := os.Stat(filepath.Join(f.S, "etc/ssh/ssh_host_ed25519_key.pub"))
		return err
	})
	testenv.MakeTraversable(t, filepath.Join(f.S, "etc/ssh"))
	f.sshd = testenv.StartSSHD(t, testenv.SSHDConfig{
		Address: f.stageAddr, Port: f.port, HostKeyFile: filepath.Join(f.S, "etc/ssh/ssh_host_ed25519_key"),
		AuthorizedKeysFile: filepath.Join(f.S, "etc/ssh/authorized_keys.d/%u"), Daemon: f.daemon,
		ExtraConfig: f.sshdExtra,
	})
}

// startSSHDFirst gives staging an SSH host key and starts its sshd before
// any agent runs, as on a host installed with its host key.
func (f *fleetRun) startSSHDFirst(t testing.TB) {
	key := filepath.Join(f.S, "etc/ssh/ssh_host_ed25519_key")
	if err := os.MkdirAll(filepath.Dir(key), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	f.startSSHD(t)
}

// startFleet starts both agents at once, then staging's sshd, and waits
// until both are Ready with nothing copied by hand.
func startFleet(t testing.TB, sshPort int, protocol string, extra ...string) *fleetRun {
	f := prepareFleet(t, sshPort, protocol)
	f.started = time.Now()
	f.stage = startAgent(t, f.S, f.config, "stage", extra...)
	f.prod = startAgent(t, f.P, f.config, "prod", extra...)
	f.startSSHD(t)
	f.stage.waitFor("staging Ready", ready)
	f.prod.waitFor("production Ready", ready)
	return f
}

// fetch substitutes path from staging into an empty store, with only the
// production agent's files, and returns nix-store's output.
func (f *fleetRun) fetch(t testing.TB, path string) (string, string) {
	store, out, err := f.tryFetch(t.TempDir(), path)
	if err != nil {
		sigs, _ := exec.Command("nix", "--extra-experimental-features", "nix-command", "path-info", "--sigs", path).CombinedOutput()
		conf, _ := os.ReadFile(filepath.Join(f.P, "etc/nix/nixpeer.conf"))
		t.Fatalf("production fetch of %s: %v\n%s\nsignatures on staging: %s\nproduction nixpeer.conf:\n%s\nsshd log:\n%s", path, err, out, sigs, conf, f.sshd.Logs())
	}
	return store, out
}

// fetchLoop fetches path from staging into a new store, with only the
// production agent's files, again and again until the returned function
// is called; that returns how many fetches there were and why those that
// failed did. It is called at the test's end at the latest.
func (f *fleetRun) fetchLoop(t testing.TB, path string) func() (int, []string) {
	stop, stores := make(chan struct{}), t.TempDir()
	done := make(chan struct{})
	var fetches int
	var failures []string
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			store, err := os.MkdirTemp(stores, "store")
			if err != nil {
				failures = append(failures, err.Error())
				return
			}
			if _, out, err := f.tryFetch(store, path); err != nil {
				failures = append(failures, err.Error()+": "+out)
			}
			fetches++
		}
	}()
	end := sync.OnceFunc(func() { close(stop); <-done })
	t.Cleanup(end) // before stores is removed
	return func() (int, []string) {
		end()
		return fetches, failures
	}
}

// tryFetch is fetch into store, with an error for a fetch that failed or
// copied nothing.
func (f *fleetRun) tryFetch(store, path string) (string, string, error) {
	cmd := exec.Command("nix-store", "--store", store, "-r", path)
	cmd.Env = append(os.Environ(), "NIX_CONF_DIR="+filepath.Join(f.P, "etc/nix"))
	opts := f.sshOpts
	if f.port != 22 {
		// Nix 2.8 takes no port from the URL: root's ssh config has it.
		opts = append(opts, "-F", filepath.Join(f.P, "root/.ssh/config"))
	}
	if len(opts) > 0 {
		cmd.Env = append(cmd.Env, "NIX_SSHOPTS="+strings.Join(opts, " "))
	}
	out, err := cmd.CombinedOutput()
	if err == nil && !strings.Contains(string(out), "copying path") {
		err = errors.New("nothing was copied")
	}
	return store, string(out), err
}

// TestStagingServesProductionWithNothingCopiedByHand is the acceptance
// contract: two agents, staging's real sshd and nix-daemon on 127.0.0.2,
// no key copied by hand. Both become Ready; a path staging's daemon builds
// is signed with the agent's key, and production fetches it, signature
// checked, with only the files its agent wrote; with staging gone, a
// production build still succeeds through fallback.
func TestStagingServesProductionWithNothingCopiedByHand(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.Require(t, "nix", "nix-store", "nix-daemon", "nix-build", "sshd")
	testenv.RequireNixSSHUser(t)
	// ssh:// on port 22 as the contract has it; ssh-ng:// on another port,
	// which goes through root's ssh config.
	t.Run("ssh", func(t *testing.T) { stagingServesProduction(t, 22, "ssh") })
	t.Run("ssh-ng", func(t *testing.T) { stagingServesProduction(t, testenv.FreePort(t, "127.0.0.2"), "ssh-ng") })
}

func stagingServesProduction(t *testing.T, port int, protocol string) {
	f := startFleet(t, port, protocol)
	st := f.prod.waitFor("production Ready", ready)
	if c := condition(t, st, status.NixSettingsApplied); c.Reason != "Applied" {
		t.Fatalf("NixSettingsApplied = %+v", c)
	}
	if len(st.Peers) != 1 || st.Peers[0].State != status.PeerServing || st.Peers[0].Trust != status.TrustTOFU {
		t.Fatalf("production's peer: %+v", st.Peers)
	}
	sf := facts(t, f.S)
	if st.Peers[0].HostKeyFingerprint != sf.HostKey.Fingerprint {
		t.Fatalf("production trusts %s for staging, whose host key is %s", st.Peers[0].HostKeyFingerprint, sf.HostKey.Fingerprint)
	}
	conf, _ := os.ReadFile(filepath.Join(f.P, "etc/nix/nixpeer.conf"))
	if !strings.Contains(string(conf), "extra-trusted-public-keys = "+sf.CacheKey.PublicKey) {
		t.Fatalf("production's nixpeer.conf lacks staging's cache key %s:\n%s", sf.CacheKey.PublicKey, conf)
	}

	// Converged: a reconcile of either agent finds everything in place and
	// writes nothing, probes nothing and runs no command.
	for _, a := range []*agent{f.stage, f.prod} {
		assertNoOpReconcile(t, a)
	}

	// Staging's daemon, restarted by the agent's apply, signs what it builds.
	// Unique content: a path built in an earlier run carries only the
	// signature of that run's key, and would not be built again.
	nonce := strconv.FormatInt(time.Now().UnixNano(), 10)
	path := testenv.BuildPath(t, f.daemon, "nixpeer-"+protocol, "built on staging "+nonce)
	sigs, err := exec.Command("nix", "--extra-experimental-features", "nix-command", "path-info", "--sigs", path).CombinedOutput()
	if err != nil || !strings.Contains(string(sigs), "127.0.0.2:") {
		t.Fatalf("staging did not sign %s with its key: %v\n%s", path, err, sigs)
	}
	store, _ := f.fetch(t, path)
	got, err := exec.Command("nix", "--extra-experimental-features", "nix-command", "path-info", "--store", store, "--sigs", path).CombinedOutput()
	if err != nil || !strings.Contains(string(got), "127.0.0.2:") {
		t.Fatalf("the fetched path carries no signature of staging: %v\n%s", err, got)
	}

	// Staging is gone: a production build still succeeds by building
	// locally (fallback = true), instead of failing at the substituter.
	// The builds use production's settings as they are now, with staging
	// in them: the agent withdraws it soon after.
	confDir := t.TempDir()
	for _, name := range []string{"nix.conf", "nixpeer.conf"} {
		writeFile(t, filepath.Join(confDir, name), readFile(t, filepath.Join(f.P, "etc/nix", name)))
	}
	f.sshd.Stop(t)
	prodEnv := append(os.Environ(), "NIX_CONF_DIR="+confDir,
		"NIX_SSHOPTS=-F "+filepath.Join(f.P, "root/.ssh/config"))
	// (A local build needs the machine's store: a --store DIR build would
	// need a sandbox, which this machine has not.)
	build := func(name string, extra ...string) ([]byte, error) {
		args := append([]string{"--no-out-link", "-E", fmt.Sprintf(
			`derivation { name = "%s-%s"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo %s > $out" ]; }`,
			name, protocol, nonce)}, extra...)
		cmd := exec.Command("nix-build", args...)
		cmd.Env = append(prodEnv, "NIX_REMOTE=")
		return cmd.CombinedOutput()
	}
	if out, err := build("nixpeer-fallback"); err != nil {
		t.Fatalf("production build with staging down: %v\n%s", err, out)
	}
	// Without the agent's fallback = true the same kind of build fails.
	if out, err := build("nixpeer-nofallback", "--option", "fallback", "false"); err == nil {
		t.Fatalf("a build without fallback succeeded with staging down, so this test proves nothing:\n%s", out)
	}
}

// TestNixOSPlatformNeedsTheModuleOnce: on platform nixos the agent writes
// its files under /var/lib/nixpeer and says exactly which line is missing
// while nixpeer's NixOS module is not wired in; once it is, the settings
// are live without any rebuild.
func TestNixOSPlatformNeedsTheModuleOnce(t *testing.T) {
	testenv.Require(t, "nix")
	hostKey := hostKeyLine(t)
	cacheKey := "stage.example.com:bhoMZTXP8eQ17q4jPSiyxegQyCIMw8URAxjtMvuNNdU="
	config := filepath.Join(t.TempDir(), "desired.yaml")
	os.WriteFile(config, []byte(fmt.Sprintf(`apiVersion: nixpeer/v1
trust: tofu
hosts:
  - name: stage
    address: 127.0.0.2
    hostKey: %q
    serve: {publicKey: %q}
  - name: prod
    address: 127.0.0.3
    peerPort: %d
    apply: ["true"]
    substituteFrom: [stage]
`, hostKey, cacheKey, peerPortOf("127.0.0.3"))), 0o644)
	P := t.TempDir()
	os.MkdirAll(filepath.Join(P, "etc/nix"), 0o755)
	nixConf := testenv.WriteNixConf(t, filepath.Join(P, "etc/nix"))
	prod := startAgent(t, P, config, "prod")
	st := prod.waitFor("NotLive", func(s status.Status) bool {
		c := status.Find(s.Conditions, status.NixSettingsApplied)
		return c != nil && c.Reason == "NotLive"
	})
	msg := condition(t, st, status.NixSettingsApplied).Message
	if !strings.Contains(msg, `"!include /var/lib/nixpeer/nix.conf"`) || !strings.Contains(msg, "services.nixpeer.enable") {
		t.Fatalf("NotLive message does not say which line is missing: %s", msg)
	}
	if st.Ready {
		t.Fatal("Ready while the settings are not live")
	}
	// What the module's nix.extraOptions puts into nix.conf (under --root,
	// the include names the file under the root).
	f, _ := os.OpenFile(nixConf, os.O_APPEND|os.O_WRONLY, 0)
	fmt.Fprintf(f, "!include %s\n", filepath.Join(P, "var/lib/nixpeer/nix.conf"))
	f.Close()
	if err := prod.client.Reconcile(t.Context()); err != nil {
		t.Fatal(err)
	}
	// Live once wired; staging's agent is not running, so production waits
	// for it and does not use it yet.
	st = prod.waitFor("Applied once wired", func(s status.Status) bool {
		c := status.Find(s.Conditions, status.NixSettingsApplied)
		return c != nil && c.Reason == "Applied"
	})
	if st.Ready || st.Peers[0].State != status.PeerWaitingForFacts {
		t.Fatalf("production Ready, or its peer not waiting, with no staging agent: %+v", st.Peers)
	}
	conf, _ := os.ReadFile(filepath.Join(P, "var/lib/nixpeer/nix.conf"))
	if !strings.Contains(string(conf), "fallback = true") || strings.Contains(string(conf), cacheKey) {
		t.Fatalf("/var/lib/nixpeer/nix.conf, want fallback and not yet staging's key:\n%s", conf)
	}
}

// TestNixOSModulePlatformWritesAModuleAndWaitsForTheDeploy: on platform
// nixos-module the agent writes a NixOS module that real Nix parses, and
// reports ApplyPending (no rebuild of its own) until the deploy applies it.
func TestNixOSModulePlatformWritesAModuleAndWaitsForTheDeploy(t *testing.T) {
	testenv.Require(t, "nix", "nix-instantiate")
	hostKey := hostKeyLine(t)
	config := filepath.Join(t.TempDir(), "desired.yaml")
	os.WriteFile(config, []byte(fmt.Sprintf(`apiVersion: nixpeer/v1
trust: tofu
hosts:
  - name: stage
    address: 127.0.0.2
    hostKey: %q
    serve: {publicKey: "stage.example.com:bhoMZTXP8eQ17q4jPSiyxegQyCIMw8URAxjtMvuNNdU="}
  - name: prod
    address: 127.0.0.3
    peerPort: %d
    platform: nixos-module
    substituteFrom: [stage]
`, hostKey, peerPortOf("127.0.0.3"))), 0o644)
	P := t.TempDir()
	os.MkdirAll(filepath.Join(P, "etc/nix"), 0o755)
	testenv.WriteNixConf(t, filepath.Join(P, "etc/nix"))
	prod := startAgent(t, P, config, "prod")
	st := prod.waitFor("ApplyPending", func(s status.Status) bool {
		c := status.Find(s.Conditions, status.NixSettingsApplied)
		return c != nil && c.Reason == "ApplyPending"
	})
	if st.Ready {
		t.Fatal("Ready before the deploy applied the module")
	}
	module := filepath.Join(P, "etc/nixos/nixpeer.nix")
	if out, err := exec.Command("nix-instantiate", "--parse", module).CombinedOutput(); err != nil {
		t.Fatalf("nix-instantiate --parse %s: %v\n%s", module, err, out)
	}
	out, err := exec.Command("nix-instantiate", "--eval", "--strict", "--json", "-E",
		fmt.Sprintf(`(import %s { config = {}; lib = {}; pkgs = {}; }).nix.settings.fallback`, module)).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "true" {
		t.Fatalf("module's nix.settings.fallback = %s (%v), want true", out, err)
	}
}

// assertNoOpReconcile asks a Ready agent to reconcile and checks that no
// managed file nor its state database was written, and that the apply
// command did not run.
func assertNoOpReconcile(t *testing.T, a *agent) {
	t.Helper()
	before := a.waitFor("Ready", ready)
	paths := []string{filepath.Join(a.root, "var/lib/nixpeer/state.db")}
	for _, f := range before.Files {
		paths = append(paths, f.Path)
	}
	mtimes := map[string]time.Time{} // zero: the file does not exist
	for _, p := range paths {
		if st, err := os.Stat(p); err == nil {
			mtimes[p] = st.ModTime()
		} else if !os.IsNotExist(err) {
			t.Fatal(err)
		}
	}
	applies := strings.Count(a.logs.String(), `"msg":"ran apply"`)
	if applies == 0 {
		t.Fatal(`no "ran apply" line in the log, although Ready needed an apply: was the message reworded?`)
	}
	if err := a.client.Reconcile(t.Context()); err != nil {
		t.Fatal(err)
	}
	a.waitFor("the reconcile ran", func(s status.Status) bool { return s.LastReconcile.After(before.LastReconcile) })
	for _, p := range paths {
		var now time.Time
		if st, err := os.Stat(p); err == nil {
			now = st.ModTime()
		}
		if !now.Equal(mtimes[p]) {
			t.Errorf("%s was written by a reconcile that had nothing to do", p)
		}
	}
	if n := strings.Count(a.logs.String(), `"msg":"ran apply"`); n != applies {
		t.Errorf("a reconcile that had nothing to do ran the apply command")
	}
}

// TestStatusWarnsWhenStagingTrustsNixSSH: staging serves over ssh-ng with
// trusted-users naming nix-ssh. Where its nix-daemon says whom it trusts
// (Nix 2.15 and later: the Nix version matrix), staging is Ready with a
// warning that says so; Nix 2.8's daemon does not say, and there is none.
func TestStatusWarnsWhenStagingTrustsNixSSH(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.Require(t, "nix", "nix-store", "nix-daemon", "sshd")
	testenv.RequireNixSSHUser(t)
	f := prepareFleet(t, testenv.FreePort(t, "127.0.0.2"), "ssh-ng")
	// Read by the daemon from the restart of staging's apply on.
	testenv.WriteNixConf(t, filepath.Join(f.S, "etc/nix"), "trusted-users = root "+testenv.NixSSHUser)
	f.stage = startAgent(t, f.S, f.config, "stage")
	f.prod = startAgent(t, f.P, f.config, "prod")
	f.startSSHD(t)
	st := f.stage.waitFor("staging Ready", ready)
	f.prod.waitFor("production Ready", ready)

	out, err := exec.Command("nix-daemon", "--version").Output()
	if err != nil {
		t.Fatal(err)
	}
	var major, minor int
	fmt.Sscanf(strings.TrimSpace(string(out[strings.LastIndexByte(string(out), ')')+1:])), "%d.%d", &major, &minor)
	says := major > 2 || major == 2 && minor >= 15
	t.Logf("%s: the daemon says whom it trusts: %v; warnings %q", strings.TrimSpace(string(out)), says, st.Warnings)
	if major != 2 || minor == 0 {
		t.Fatalf("cannot read the Nix version from %q", out)
	}
	warned := slices.ContainsFunc(st.Warnings, func(w string) bool { return strings.Contains(w, "nix-daemon trusts nix-ssh") })
	if warned != says {
		t.Fatalf("staging's warnings %q; want the trusted-users warning: %v", st.Warnings, says)
	}
	if says {
		code, text, _ := runCLI(t, "status", "--socket", f.stage.socket)
		if code != 0 || !strings.Contains(text, "WARNING:     nix-daemon trusts nix-ssh") {
			t.Fatalf("nixpeer status: exit %d, want 0 and the warning:\n%s", code, text)
		}
	}
}
