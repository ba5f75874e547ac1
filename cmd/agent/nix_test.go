package main

// Tests of the Nix layer through the real binary, against real Nix 2.8 and a
// real sshd on loopback addresses.

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nixpeer/nixpeer/pkg/status"
	"github.com/nixpeer/nixpeer/pkg/testenv"
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

// nixFleet is a staging host serving over sshd on sshPort and a production
// host fetching from it, on plain Nix; pins fills in keys by peering's hand.
func nixFleet(sshPort int, protocol string, pins map[string]string) string {
	pin := func(k, indent string) string {
		if v := pins[k]; v != "" {
			return fmt.Sprintf("\n%s%s: %q", indent, k, v)
		}
		return ""
	}
	return fmt.Sprintf(`apiVersion: nixpeer/v1
hosts:
  - name: stage
    address: 127.0.0.2
    sshPort: %d
    platform: nix
    apply: ["true"]%s
    serve:
      protocol: %s%s
  - name: prod
    address: 127.0.0.3
    platform: nix
    apply: ["true"]%s
    substituteFrom: [stage]
`, sshPort, pin("hostKey", "    "), protocol, pin("publicKey", "      "), pin("clientKey", "    "))
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

// TestStagingServesProductionWithAgentFiles goes through the tutorial with
// the agents' files only: staging signs what it builds and lets production's
// key in; production trusts staging's key and fetches a path from it, and
// builds through fallback when staging is gone.
func TestStagingServesProductionWithAgentFiles(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.Require(t, "nix", "nix-store", "nix-daemon", "nix-build", "sshd")
	testenv.RequireNixSSHUser(t)
	for _, protocol := range []string{"ssh", "ssh-ng"} {
		t.Run(protocol, func(t *testing.T) { stagingServesProduction(t, protocol) })
	}
}

func stagingServesProduction(t *testing.T, protocol string) {
	port := testenv.FreePort(t, "127.0.0.2")
	config := filepath.Join(t.TempDir(), "desired.yaml")
	os.WriteFile(config, []byte(nixFleet(port, protocol, nil)), 0o644)
	S, P := t.TempDir(), t.TempDir()
	// The operators' own nix.conf: no internet, no sandbox here.
	for _, root := range []string{S, P} {
		os.MkdirAll(filepath.Join(root, "etc/nix"), 0o755)
		testenv.WriteNixConf(t, filepath.Join(root, "etc/nix"))
	}
	stage := startAgent(t, S, config, "stage")
	prod := startAgent(t, P, config, "prod")
	stage.waitFor("staging Ready", ready)
	st := prod.waitFor("production waiting for staging's keys", func(s status.Status) bool {
		c := status.Find(s.Conditions, status.SubstitutersReady)
		return c != nil && c.Reason == "WaitingForPeer"
	})
	if st.Ready {
		t.Fatal("production is Ready without knowing staging's keys")
	}

	// What peering will exchange, pinned by hand here.
	sf, pf := facts(t, S), facts(t, P)
	if sf.CacheKey == nil {
		t.Fatalf("staging facts lack the cache key: %+v", sf)
	}
	renameSave(t, config, nixFleet(port, protocol, map[string]string{
		"hostKey": sf.HostKey.PublicKey, "publicKey": sf.CacheKey.PublicKey, "clientKey": pf.ClientKey.PublicKey}))
	stage.waitFor("staging Ready at generation 2", func(s status.Status) bool { return ready(s) && s.Generation == 2 })
	st = prod.waitFor("production Ready at generation 2", func(s status.Status) bool { return ready(s) && s.Generation == 2 })
	if c := condition(t, st, status.NixSettingsApplied); c.Reason != "Applied" {
		t.Fatalf("NixSettingsApplied = %+v", c)
	}

	// Staging's daemon reads the agent's nix.conf: it signs what it builds.
	daemon := testenv.StartNixDaemon(t, filepath.Join(S, "etc/nix"))
	authorized := filepath.Join(S, "etc/ssh/authorized_keys.d/nix-ssh")
	testenv.MakeTraversable(t, authorized)
	sshd := testenv.StartSSHD(t, testenv.SSHDConfig{
		Address: "127.0.0.2", Port: port, HostKeyFile: filepath.Join(S, "etc/ssh/ssh_host_ed25519_key"),
		AuthorizedKeysFile: filepath.Join(S, "etc/ssh/authorized_keys.d/%u"), Daemon: daemon,
	})
	path := testenv.BuildPath(t, daemon, "nixpeer-"+protocol, fmt.Sprintf("built on staging %d", port))
	sigs, err := exec.Command("nix", "--extra-experimental-features", "nix-command", "path-info", "--sigs", path).CombinedOutput()
	if err != nil || !strings.Contains(string(sigs), "127.0.0.2:") {
		t.Fatalf("staging did not sign %s with its key: %v\n%s", path, err, sigs)
	}

	// Production fetches it into a store of its own with only the agent's
	// files: nix.conf, the client key, and (for the port) root's ssh config.
	store := t.TempDir()
	prodEnv := append(os.Environ(), "NIX_CONF_DIR="+filepath.Join(P, "etc/nix"),
		"NIX_SSHOPTS=-F "+filepath.Join(P, "root/.ssh/config"))
	fetch := exec.Command("nix-store", "--store", store, "-r", path)
	fetch.Env = prodEnv
	if out, err := fetch.CombinedOutput(); err != nil || !strings.Contains(string(out), "copying path") {
		t.Fatalf("production fetch: %v\n%s\nsshd log:\n%s", err, out, sshd.Logs())
	}

	// Staging is gone: a production build still succeeds by building
	// locally (fallback = true), instead of failing at the substituter.
	sshd.Stop(t)
	// (A local build needs the machine's store: a --store DIR build would
	// need a sandbox, which this machine has not.)
	build := func(name string, extra ...string) ([]byte, error) {
		args := append([]string{"--no-out-link", "-E", fmt.Sprintf(
			`derivation { name = "%s-%s"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo %s > $out" ]; }`,
			name, protocol, filepath.Base(store))}, extra...)
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
hosts:
  - name: stage
    address: stage.example.com
    hostKey: %q
    serve: {publicKey: %q}
  - name: prod
    address: prod.example.com
    apply: ["true"]
    substituteFrom: [stage]
`, hostKey, cacheKey)), 0o644)
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
	st = prod.waitFor("Ready once wired", ready)
	conf, _ := os.ReadFile(filepath.Join(P, "var/lib/nixpeer/nix.conf"))
	if !strings.Contains(string(conf), "extra-trusted-public-keys = "+cacheKey) || !strings.Contains(string(conf), "ssh://nix-ssh@stage.example.com?") {
		t.Fatalf("/var/lib/nixpeer/nix.conf:\n%s", conf)
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
hosts:
  - name: stage
    address: stage.example.com
    hostKey: %q
    serve: {publicKey: "stage.example.com:bhoMZTXP8eQ17q4jPSiyxegQyCIMw8URAxjtMvuNNdU="}
  - name: prod
    address: prod.example.com
    platform: nixos-module
    substituteFrom: [stage]
`, hostKey)), 0o644)
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
