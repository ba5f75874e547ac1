package reconcile

import (
	"bytes"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nixpeer/nixpeer/pkg/peer"
	"github.com/nixpeer/nixpeer/pkg/peering"
	"github.com/nixpeer/nixpeer/pkg/sshkeys"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// TestPlanRotatesTheHostKey follows a host key rotation on staging: the
// next key made, published with the current key's handover, the swap only
// once production accepted it and the grace passed, with sshd told to
// read it at once.
func TestPlanRotatesTheHostKey(t *testing.T) {
	w := newWorld(t)
	yaml := strings.Replace(fleetYAML, "    serve: {}\n", "    sshdReload: [systemctl, reload, sshd.service]\n    serve: {}\n", 1)
	o := w.obs(yaml, "stage")
	o.NextHostKey = KeyObs{State: sshkeys.Inspection{Missing: true}}
	o.HostKeyRequest.From = w.host.Fingerprint()
	r := wantCondition(t, plan(o), status.KeysReady, true, "HostKeyRotationMakingKey")
	if len(r.Keys) != 1 || r.Keys[0].kind != keyHost || r.Keys[0].path != w.l.HostKey+sshkeys.NextSuffix {
		t.Fatalf("keys %+v; want the next host key made", r.Keys)
	}

	next := newKey(t)
	o.NextHostKey = KeyObs{Key: next}
	o.Watches = []peering.Target{{Name: "prod", Address: "127.0.0.3"}}
	o.Peers["prod"] = peering.State{Name: "prod", Connected: true, Facts: &peer.Facts{Name: "prod"}, FactsAt: t0.Add(-time.Minute)}
	p := plan(o)
	r = wantCondition(t, p, status.KeysReady, true, "HostKeyRotationAccepting")
	hk := p.HostKeyRotation
	if hk.next != next.AuthorizedLine() || !slices.Equal(hk.status.WaitingOn, []string{"prod"}) || len(r.Keys) != 0 {
		t.Fatalf("rotation %+v, keys %+v; want the next key published, waiting on prod", hk, r.Keys)
	}
	if err := sshkeys.VerifyHandover(w.host.Public, "stage", "127.0.0.2", next.Public, hk.proof); err != nil {
		t.Fatalf("the published handover: %v", err)
	}

	// Accepted just now: the swap waits out the grace.
	o.Peers["prod"] = peering.State{Name: "prod", Connected: true, Facts: &peer.Facts{Name: "prod", AcceptedHostKeys: []string{next.AuthorizedLine()}}, FactsAt: t0}
	p = plan(o)
	wantCondition(t, p, status.KeysReady, true, "HostKeyRotationAccepting")
	if p.Requeue != HostKeyHandoverGrace {
		t.Fatalf("requeue %v; want the swap at the end of the grace", p.Requeue)
	}
	o.Now = t0.Add(HostKeyHandoverGrace)
	r = wantCondition(t, plan(o), status.KeysReady, true, "HostKeyRotationSwapping")
	if len(r.Keys) != 1 || r.Keys[0].kind != keyHostPromote || !slices.Equal(r.Reload, []string{"systemctl", "reload", "sshd.service"}) {
		t.Fatalf("keys %+v, reload %v; want the next key promoted and sshd told at once", r.Keys, r.Reload)
	}
	if rec := recordOf(plan(o), recSSHDReloaded); rec != next.Fingerprint() {
		t.Fatalf("reloaded record %v; want the next key's fingerprint", rec)
	}
}

// TestPlanConsumerAcceptsAHandedOverHostKey: production, which trusts
// staging's key, takes the next one beside it: both in known_hosts, a
// substituter URL that pins neither, probes that take either.
func TestPlanConsumerAcceptsAHandedOverHostKey(t *testing.T) {
	w := newWorld(t)
	o := w.obs(fleetYAML, "prod")
	w.stageServes(o)
	w.probed(o, nil, "")
	w.inUse(o)
	next := newKey(t)
	st := o.Peers["stage"]
	st.NextHostKey = next.Public
	o.Peers["stage"] = st
	p := plan(o)
	kh := file(resource(p, status.KnownHostsReady), w.l.KnownHosts)
	if !bytes.Contains(kh, []byte(w.stage.AuthorizedLine())) || !bytes.Contains(kh, []byte(next.AuthorizedLine())) {
		t.Fatalf("known_hosts:\n%s\nwant both of staging's keys", kh)
	}
	if conf := file(resource(p, status.NixSettingsApplied), w.l.NixpeerConf); !bytes.Contains(conf, []byte("ssh://nix-ssh@127.0.0.2?")) || bytes.Contains(conf, []byte("base64-ssh-public-host-key")) {
		t.Fatalf("settings:\n%s\nwant staging's substituter pinning no key", conf)
	}
	if len(p.Stores) != 1 || p.Stores[0].Target.NextHostKey == nil {
		t.Fatalf("stores %+v; want probes that take the next key too", p.Stores)
	}
}
