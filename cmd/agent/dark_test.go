package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nixpeer/nixpeer/internal/testenv"
	"github.com/nixpeer/nixpeer/pkg/nix"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// darkFleet starts staging (its agent, sshd and nix-daemon) and production
// on addresses of their own, so that staging can go dark without touching
// other tests, and waits until both are Ready.
func darkFleet(t testing.TB, stageAddr, prodAddr string) *fleetRun {
	testenv.RequireRoot(t)
	testenv.Require(t, "nix", "nix-store", "nix-daemon", "nix-build", "sshd", "iptables")
	testenv.RequireNixSSHUser(t)
	f := prepareFleetAt(t, stageAddr, prodAddr, testenv.FreePort(t, stageAddr), "ssh")
	f.stage = startAgent(t, f.S, f.config, "stage", "--log-level", "info")
	f.prod = startAgent(t, f.P, f.config, "prod", "--log-level", "info")
	f.startSSHD(t)
	f.stage.waitFor("staging Ready", ready)
	f.prod.waitFor("production Ready", ready)
	return f
}

// liveSubstituters are the substituters Nix uses with production's
// settings, as nix show-config says.
func liveSubstituters(t testing.TB, f *fleetRun) string {
	cli := nix.CLI{Env: []string{"NIX_CONF_DIR=" + filepath.Join(f.P, "etc/nix")}}
	cfg, err := cli.ShowConfig(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return cfg["substituters"]
}

// TestDarkStagingIsWithdrawn: staging drops every packet (down, or
// firewalled). Production notices, takes staging out of its live Nix
// settings and stays Ready (a dark staging is not a production failure);
// once staging answers again and passes the probe, it is used again.
func TestDarkStagingIsWithdrawn(t *testing.T) {
	f := darkFleet(t, "127.0.0.12", "127.0.0.13")
	conf := filepath.Join(f.P, "etc/nix/nixpeer.conf")
	serving := readFile(t, conf)
	const url = "ssh://nix-ssh@127.0.0.12?"
	if !bytes.Contains(serving, []byte(url)) || !strings.Contains(liveSubstituters(t, f), url) {
		t.Fatalf("staging is not a live substituter:\n%s", serving)
	}

	light := testenv.Dark(t, "127.0.0.12")
	withdrawn := func(s status.Status) bool {
		return ready(s) && len(s.Peers) == 1 && s.Peers[0].State == status.PeerUnreachable &&
			!bytes.Contains(readFile(t, conf), []byte(url))
	}
	st := f.prod.waitFor("staging withdrawn", withdrawn)
	if live := liveSubstituters(t, f); strings.Contains(live, url) {
		t.Fatalf("staging is still a live substituter while dark: %s", live)
	}
	if c := condition(t, st, status.SubstitutersReady); c.Status != status.True || c.Reason != "PeerUnreachable" {
		t.Fatalf("SubstitutersReady %+v", c)
	}
	if !strings.Contains(st.Peers[0].Message, "stopped answering") || st.Peers[0].Since == nil {
		t.Fatalf("peer %+v: want why and since when", st.Peers[0])
	}

	// A build that staging would have served goes on locally at once.
	out, err := prodBuild(f, "nixpeer-dark-"+nonce(), 3)
	if err != nil {
		t.Fatalf("production build with staging dark: %v\n%s", err, out)
	}
	if bytes.Contains(out, []byte("127.0.0.12")) {
		t.Fatalf("the build still tried staging:\n%s", out)
	}

	light()
	f.prod.waitWithin(60*time.Second, "staging used again", func(s status.Status) bool {
		return ready(s) && s.Peers[0].State == status.PeerServing && bytes.Equal(readFile(t, conf), serving)
	})
	if !strings.Contains(liveSubstituters(t, f), url) {
		t.Fatal("staging is back in the file but not live")
	}
}

func nonce() string { return time.Now().Format("150405.000000000") }

// prodBuild builds on production, with production's settings and ssh
// config, a derivation with n fresh inputs, and returns Nix's output.
func prodBuild(f *fleetRun, name string, n int) ([]byte, error) {
	cmd := exec.Command("nix-build", "--no-out-link", "-E", freshClosure(name, n))
	cmd.Env = append(os.Environ(), "NIX_REMOTE=", "NIX_CONF_DIR="+filepath.Join(f.P, "etc/nix"),
		"NIX_SSHOPTS=-F "+filepath.Join(f.P, "root/.ssh/config"))
	return cmd.CombinedOutput()
}

// freshClosure is a Nix expression of a derivation with n inputs, all
// never built before (name must be unique).
func freshClosure(name string, n int) string {
	return `let leaf = i: derivation { name = "` + name + `-${toString i}"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo ${toString i} > $out" ]; };
in derivation { name = "` + name + `"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "echo ${toString (map leaf (builtins.genList (x: x) ` + strconv.Itoa(n) + `))} > $out" ]; }`
}
