package reconcile

import (
	"fmt"
	"strings"
	"testing"

	"github.com/nixpeer/nixpeer/pkg/desired"
	"github.com/nixpeer/nixpeer/pkg/peer"
	"github.com/nixpeer/nixpeer/pkg/peering"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// TestWhoTellsWhom: a host tells its facts over its own connection to
// the peers it only consumes from (their store, or a cache they publish
// to), and takes its consumers' facts so (Inbound); two hosts that fetch
// from each other watch each other.
func TestWhoTellsWhom(t *testing.T) {
	f, err := desired.Parse("desired.yaml", []byte(strings.Join([]string{
		"apiVersion: nixpeer/v1",
		"caches:",
		`  - {name: fleet, s3: {endpoint: "http://127.0.0.1:8333", bucket: nix}}`,
		`  - {name: builds, s3: {endpoint: "http://127.0.0.1:8333", bucket: builds}}`,
		"hosts:",
		"  - {name: builder, address: 127.0.0.5, serve: {publishTo: [builds]}, substituteFrom: [stage]}",
		"  - {name: stage, address: 127.0.0.2, serve: {publishTo: [fleet]}, substituteFrom: [builds]}",
		"  - {name: prod, address: 127.0.0.3, substituteFrom: [stage]}",
		"  - {name: reader, address: 127.0.0.4, substituteFrom: [fleet]}",
	}, "\n")+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, self := range []string{"builder", "stage", "prod", "reader"} {
		var parts []string
		for _, tg := range watchTargets(f, f.Host(self), nil, nil) {
			parts = append(parts, fmt.Sprintf("%s tell=%v inbound=%v", tg.Name, tg.Tell, tg.Inbound))
		}
		got[self] = strings.Join(parts, "; ")
	}
	want := map[string]string{
		// builder fetches from stage, stage reads the cache builder
		// publishes to: they watch each other.
		"builder": "stage tell=false inbound=false",
		"stage":   "builder tell=false inbound=false; prod tell=false inbound=true; reader tell=false inbound=true",
		"prod":    "stage tell=true inbound=false",
		"reader":  "stage tell=true inbound=false",
	}
	for self, w := range want {
		if got[self] != w {
			t.Errorf("%s watches %q, want %q", self, got[self], w)
		}
	}
}

// TestCachePeerLines: a host tied to another by a cache alone lists it:
// the publisher its readers (what they trust), a reader the publishers
// (their cache key); waiting until their facts say so.
func TestCachePeerLines(t *testing.T) {
	w := newWorld(t)
	yaml := strings.Join([]string{
		"apiVersion: nixpeer/v1",
		"caches:",
		`  - {name: fleet, s3: {endpoint: "http://127.0.0.1:8333", bucket: nix}}`,
		"hosts:",
		"  - {name: stage, address: 127.0.0.2, serve: {publishTo: [fleet]}}",
		"  - {name: reader, address: 127.0.0.4, substituteFrom: [fleet]}",
	}, "\n") + "\n"
	line := func(o *Observation, name string) status.Peer {
		t.Helper()
		for _, ps := range plan(o).PeerStatus {
			if ps.Name == name {
				return ps
			}
		}
		t.Fatalf("no peer line for %s", name)
		return status.Peer{}
	}
	o := w.obs(yaml, "stage")
	if ps := line(o, "reader"); ps.Role != status.RoleReader || ps.State != status.PeerWaitingForFacts || !strings.Contains(ps.Message, "not known yet") {
		t.Errorf("reader before its facts: %+v", ps)
	}
	stageKey := w.stageCK.String()
	o.Peers["reader"] = peering.State{Name: "reader", Connected: true, Trust: status.TrustTOFU, HostKey: w.stage.Public,
		Facts: &peer.Facts{Name: "reader", Address: "127.0.0.4", TrustedCacheKeys: []string{stageKey}}}
	if ps := line(o, "reader"); ps.State != status.PeerKeysKnown || ps.Message != "trusts cache keys 127.0.0.2" {
		t.Errorf("reader with its facts: %+v", ps)
	}

	o = w.obs(yaml, "reader")
	if ps := line(o, "stage"); ps.Role != status.RolePublisher || ps.State != status.PeerWaitingForFacts {
		t.Errorf("publisher before its facts: %+v", ps)
	}
	o.Peers["stage"] = peering.State{Name: "stage", Connected: true, Trust: status.TrustTOFU, HostKey: w.stage.Public,
		Facts: &peer.Facts{Name: "stage", Address: "127.0.0.2", Serve: &peer.ServeFacts{Protocol: "ssh", CacheKey: stageKey}}}
	if ps := line(o, "stage"); ps.State != status.PeerKeysKnown || ps.Message != "cache key 127.0.0.2" {
		t.Errorf("publisher with its facts: %+v", ps)
	}
}
