package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/nixpeer/nixpeer/internal/testenv"
	"github.com/nixpeer/nixpeer/pkg/api"
)

// TestStatusFleet: production's view of the fleet names both hosts,
// Ready, with their generations, how it trusts staging and that it hears
// from it now; with staging's agent stopped, staging cannot be asked and
// the view exits 3.
func TestStatusFleet(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.Require(t, "nix", "nix-store", "nix-daemon", "sshd")
	testenv.RequireNixSSHUser(t)
	f := startFleet(t, testenv.FreePort(t, "127.0.0.2"), "ssh")
	code, out, errText := runCLI(t, "status", "--fleet", "--socket", f.prod.socket, "--json")
	var hosts []api.FleetHost
	if err := json.Unmarshal([]byte(out), &hosts); code != 0 || err != nil || len(hosts) != 2 {
		t.Fatalf("status --fleet --json: exit %d, %v\n%s%s", code, err, out, errText)
	}
	stage, prod := hosts[0], hosts[1]
	if stage.Name != "stage" || stage.Role != "serves" || stage.Ready == nil || !*stage.Ready || stage.Generation != 1 ||
		stage.Trust != "tofu" || stage.LastHeard != "now" || stage.Self {
		t.Fatalf("staging as production sees it: %+v", stage)
	}
	if prod.Name != "prod" || !prod.Self || prod.Role != "fetches from stage" || prod.Ready == nil || !*prod.Ready {
		t.Fatalf("production itself: %+v", prod)
	}
	code, text, _ := runCLI(t, "status", "--fleet", "--socket", f.prod.socket)
	if code != 0 || !strings.Contains(text, "HOST") || !strings.Contains(text, "prod (this host)") || !strings.Contains(text, "1 (observed 1)") {
		t.Fatalf("status --fleet: exit %d\n%s", code, text)
	}
	t.Logf("status --fleet:\n%s", text)

	f.stage.stop()
	code, text, _ = runCLI(t, "status", "--fleet", "--socket", f.prod.socket)
	if code != exitNotReady || !strings.Contains(text, "stage: peer 127.0.0.2:") {
		t.Fatalf("status --fleet with staging's agent stopped: exit %d, want 3\n%s", code, text)
	}
}
