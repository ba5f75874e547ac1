package reconcile

import (
	"bytes"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nixpeer/nixpeer/pkg/nix"
	"github.com/nixpeer/nixpeer/pkg/peer"
	"github.com/nixpeer/nixpeer/pkg/peering"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// rotating is staging's observation in a rotation to generation 2 whose
// next key is made; prodTrusts says whether production's facts say it
// trusts the next key live.
func (w *world) rotating(next nix.PublicKey, prodTrusts bool) *Observation {
	o := w.obs(fleetYAML, "stage")
	o.Rotation.Generation = 2
	o.NextCacheKey = CacheKeyObs{CacheKeyState: nix.CacheKeyState{Name: next.Name(), Public: next}}
	f := &peer.Facts{Name: "prod", Address: "127.0.0.3", TrustedCacheKeys: []string{o.CacheKey.Public.String()}}
	if prodTrusts {
		f.TrustedCacheKeys = append(f.TrustedCacheKeys, next.String())
	}
	o.Peers["prod"] = peering.State{Name: "prod", Connected: true, Facts: f}
	return o
}

func signsWith(t *testing.T, p *Plan, w *world) []string {
	t.Helper()
	conf := string(file(resource(p, status.NixSettingsApplied), w.l.NixpeerConf))
	for _, line := range strings.Split(conf, "\n") {
		if v, ok := strings.CutPrefix(line, "extra-secret-key-files = "); ok {
			return slices.Sorted(slices.Values(strings.Fields(v))) // the order says nothing
		}
	}
	t.Fatalf("no extra-secret-key-files in:\n%s", conf)
	return nil
}

// TestPlanRotatesTheCacheKeyInOrder follows a rotation phase by phase:
// each phase is derived from the observation alone, and at no phase does
// staging sign with a key production does not trust, nor drop the old
// key before everything it signed carries the new one's signature.
func TestPlanRotatesTheCacheKeyInOrder(t *testing.T) {
	w := newWorld(t)
	cur := filepath.Join(w.l.KeysDir, nix.SecretKeyFileName)
	nextDir := filepath.Join(w.l.KeysDir, nix.NextKeyDir)
	nextSecret := filepath.Join(nextDir, nix.SecretKeyFileName)
	next := newCacheKey(t, "127.0.0.2-g2")

	// Asked for generation 2: the next key is made beside the current one.
	o := w.obs(fleetYAML, "stage")
	o.Rotation.Generation = 2
	p := plan(o)
	r := wantCondition(t, p, status.CacheKeyReady, true, "RotationMakingKey")
	if len(r.Keys) != 1 || r.Keys[0].kind != keyCache || r.Keys[0].path != nextDir || r.Keys[0].name != "127.0.0.2-g2" {
		t.Fatalf("keys %+v; want the next key 127.0.0.2-g2 made in %s", r.Keys, nextDir)
	}
	if got := signsWith(t, p, w); !slices.Equal(got, []string{cur}) {
		t.Fatalf("signs with %v while the next key is made; want the current key alone", got)
	}
	// The same from the file's serve.keyGeneration.
	o = w.obs(strings.Replace(fleetYAML, "serve: {}", "serve: {keyGeneration: 2}", 1), "stage")
	wantCondition(t, plan(o), status.CacheKeyReady, true, "RotationMakingKey")

	// Made: published beside the current key; production does not
	// trust it yet, so staging waits, signing with the current key.
	o = w.rotating(next, false)
	p = plan(o)
	wantCondition(t, p, status.CacheKeyReady, true, "RotationTrusting")
	if p.CacheKeyRotation.next != next.String() || p.CacheKeyRotation.status == nil || p.CacheKeyRotation.status.Phase != PhaseTrusting || !slices.Equal(p.CacheKeyRotation.status.WaitingOn, []string{"prod"}) {
		t.Fatalf("next %q, rotation %+v; want the next key published, waiting on prod", p.CacheKeyRotation.next, p.CacheKeyRotation.status)
	}
	if got := signsWith(t, p, w); !slices.Equal(got, []string{cur}) {
		t.Fatalf("signs with %v before production trusts the next key", got)
	}
	// An operator may force past a consumer that is away.
	o.Rotation.Force = next.String()
	if got := signsWith(t, plan(o), w); !slices.Equal(got, []string{nextSecret, cur}) {
		t.Fatalf("forced: signs with %v; want both keys", got)
	}

	// Trusted: signing with both, until the settings are verified live.
	o = w.rotating(next, true)
	p = plan(o)
	wantCondition(t, p, status.CacheKeyReady, true, "RotationSigningWithBoth")
	if got := signsWith(t, p, w); !slices.Equal(got, []string{nextSecret, cur}) {
		t.Fatalf("signs with %v; want both keys", got)
	}

	// Verified live in this pass: the next pass goes on at once.
	o.Apply = jobState{Key: resource(p, status.NixSettingsApplied).Apply.key(), Started: t0, Ended: t0}
	if p := plan(o); p.Requeue != soon {
		t.Fatalf("requeue %v once the settings with both keys are live; want at once", p.Requeue)
	}
	o.Apply = jobState{}

	// Live: what the old key signed is re-signed with the next one.
	o.Applied.SigningWith = []string{cur, nextSecret}
	r = wantCondition(t, plan(o), status.CacheKeyReady, true, "RotationResigning")
	if r.Resign == nil || r.Resign.keyFile != nextSecret || r.Resign.from != o.CacheKey.Public.String() || r.Resign.ultimateOnly {
		t.Fatalf("resign %+v; want the paths of 127.0.0.2 signed with %s", r.Resign, nextSecret)
	}
	if len(r.Keys) != 0 {
		t.Fatalf("keys %+v before re-signing ended; want the old key kept", r.Keys)
	}
	o.Resign = jobState{Key: r.Resign.key, Started: t0, Ended: t0}
	p = plan(o)
	if rec, ok := recordOf(p, recResigned).(resignRecord); !ok || rec.Done != next.String() {
		t.Fatalf("resigned record %+v; want the next key's re-signing done", recordOf(p, recResigned))
	}
	o.Resign = jobState{Key: r.Resign.key, Started: t0, Ended: t0, Err: "nix store sign: out of space", Failures: 1}
	r = wantCondition(t, plan(o), status.CacheKeyReady, false, "ResigningFailed")
	if !r.Failed || r.Resign != nil {
		t.Fatalf("a failed re-signing: failed %v, resign %+v; want a failure retried after its delay", r.Failed, r.Resign)
	}

	// Re-signed: the next key becomes the current one, the old retired.
	o.Resign = jobState{}
	o.Resigned.Done = next.String()
	r = wantCondition(t, plan(o), status.CacheKeyReady, true, "RotationRetiring")
	if len(r.Keys) != 1 || r.Keys[0].kind != keyPromote || r.Keys[0].revoked {
		t.Fatalf("keys %+v; want the next key promoted", r.Keys)
	}

	// Promoted by a copy: the next key's files stay while the live
	// settings name them, then go.
	o = w.obs(fleetYAML, "stage")
	o.CacheKey = CacheKeyObs{CacheKeyState: nix.CacheKeyState{Name: next.Name(), Public: next}}
	o.NextCacheKey = o.CacheKey
	o.Applied.SigningWith = []string{cur, nextSecret}
	p = plan(o)
	r = wantCondition(t, p, status.CacheKeyReady, true, "RotationRetiring")
	if len(r.Keys) != 0 || !slices.Equal(signsWith(t, p, w), []string{cur}) {
		t.Fatalf("keys %+v, signs with %v; want the settings without the next key's file first", r.Keys, signsWith(t, p, w))
	}
	o.Applied.SigningWith = []string{cur}
	if r = wantCondition(t, plan(o), status.CacheKeyReady, true, "RotationRetiring"); len(r.Keys) != 1 || r.Keys[0].kind != keyRemoveNext {
		t.Fatalf("keys %+v; want the next key's files removed", r.Keys)
	}

	// Promoted: its public file is rewritten under its own name, and
	// nothing more happens.
	o = w.obs(fleetYAML, "stage")
	o.CacheKey = CacheKeyObs{CacheKeyState: nix.CacheKeyState{Name: next.Name(), Public: next, NeedsRepair: true}}
	o.SignedWith = next.String()
	o.Rotation.Generation = 2
	p = plan(o)
	r = wantCondition(t, p, status.CacheKeyReady, true, "KeyPresent")
	if len(r.Keys) != 1 || r.Keys[0].kind != keyCache || r.Keys[0].name != "127.0.0.2-g2" || p.CacheKeyRotation.status != nil {
		t.Fatalf("keys %+v, rotation %+v; want the promoted key repaired as 127.0.0.2-g2, no rotation", r.Keys, p.CacheKeyRotation.status)
	}

	// A promotion cut short (the current key retired, the next not yet
	// in its place) is finished, not answered with a new key.
	o = w.rotating(next, true)
	o.CacheKey = CacheKeyObs{CacheKeyState: nix.CacheKeyState{Missing: true}}
	r = wantCondition(t, plan(o), status.CacheKeyReady, false, "RotationRetiring")
	if len(r.Keys) != 1 || r.Keys[0].kind != keyPromote {
		t.Fatalf("keys %+v; want the promotion finished", r.Keys)
	}
}

func TestPlanRevokesTheCacheKeyAtOnce(t *testing.T) {
	w := newWorld(t)
	o := w.obs(fleetYAML, "stage")
	o.Rotation.Revoke = o.CacheKey.Public.String()
	r := wantCondition(t, plan(o), status.CacheKeyReady, true, "RotationRevoking")
	if len(r.Keys) != 1 || r.Keys[0].kind != keyCache || r.Keys[0].name != "127.0.0.2-g2" {
		t.Fatalf("keys %+v; want a new key made", r.Keys)
	}
	// Made: the re-signing it owes is stored first, then the key is
	// promoted at once, without waiting for anyone, and not published
	// beside the revoked key.
	next := newCacheKey(t, "127.0.0.2-g2")
	o = w.rotating(next, false)
	revoked := o.CacheKey.Public.String()
	o.Rotation = rotationRequest{Revoke: revoked}
	p := plan(o)
	r = wantCondition(t, p, status.CacheKeyReady, true, "RotationRevoking")
	if rec, ok := recordOf(p, recResigned).(resignRecord); !ok || rec.From != revoked || len(r.Keys) != 0 || p.CacheKeyRotation.next != "" {
		t.Fatalf("resigned record %+v, keys %+v, next %q; want the revoked key's paths owed a new signature before anything moves", recordOf(p, recResigned), r.Keys, p.CacheKeyRotation.next)
	}
	o.Resigned.From = revoked
	p = plan(o)
	r = wantCondition(t, p, status.CacheKeyReady, true, "RotationRevoking")
	if len(r.Keys) != 1 || r.Keys[0].kind != keyPromote || !r.Keys[0].revoked || p.CacheKeyRotation.next != "" {
		t.Fatalf("keys %+v, next %q; want the next key promoted at once, the old one kept as revoked", r.Keys, p.CacheKeyRotation.next)
	}
	// A next key made before the revoke lay beside the stolen one: it is
	// revoked too, and a new one made.
	o.Rotation.RevokeNext = next.String()
	r = wantCondition(t, plan(o), status.CacheKeyReady, true, "RotationRevoking")
	if len(r.Keys) != 1 || r.Keys[0].kind != keyRemoveNext || !r.Keys[0].revoked {
		t.Fatalf("keys %+v; want the next key revoked too", r.Keys)
	}
	// Promoted: the next key's files go (the settings never named them),
	// then the new key re-signs what the revoked one signed here.
	o = w.obs(fleetYAML, "stage")
	o.NextCacheKey = CacheKeyObs{CacheKeyState: nix.CacheKeyState{Name: o.CacheKey.Name, Public: o.CacheKey.Public}}
	o.Resigned.From = revoked
	r = wantCondition(t, plan(o), status.CacheKeyReady, true, "RotationRetiring")
	if len(r.Keys) != 1 || r.Keys[0].kind != keyRemoveNext || r.Keys[0].revoked {
		t.Fatalf("keys %+v; want the next key's files removed", r.Keys)
	}
	o.NextCacheKey = CacheKeyObs{CacheKeyState: nix.CacheKeyState{Missing: true}}
	r = wantCondition(t, plan(o), status.CacheKeyReady, true, "RotationResigning")
	if r.Resign == nil || r.Resign.from != revoked || !r.Resign.ultimateOnly || r.Resign.keyFile != filepath.Join(w.l.KeysDir, nix.SecretKeyFileName) {
		t.Fatalf("resign %+v; want what the revoked key signed here signed with the current key", r.Resign)
	}
}

// TestPlanConsumerTrustsBothKeysOfARotation: production trusts a next key
// staging publishes only when it is a later generation of staging's
// keyName, and says in its facts which keys are live.
func TestPlanConsumerTrustsBothKeysOfARotation(t *testing.T) {
	w := newWorld(t)
	for _, c := range []struct {
		next    string
		trusted bool
	}{
		{newCacheKey(t, "127.0.0.2-g2").String(), true},
		{newCacheKey(t, "127.0.0.2-g7").String(), true},
		{newCacheKey(t, "cache.nixos.org-1").String(), false},
		{newCacheKey(t, "127.0.0.2-g1").String(), false},
	} {
		o := w.obs(fleetYAML, "prod")
		w.stageServes(o)
		w.probed(o, nil, "")
		w.inUse(o)
		o.Peers["stage"].Facts.Serve.NextCacheKey = c.next
		p := plan(o)
		conf := file(resource(p, status.NixSettingsApplied), w.l.NixpeerConf)
		if !bytes.Contains(conf, []byte(w.stageCK.String())) || bytes.Contains(conf, []byte(c.next)) != c.trusted {
			t.Errorf("next key %s: settings\n%s\nwant the current key trusted, the next %v", c.next, conf, c.trusted)
		}
	}
	// While staging rotates, production's facts say what is live: the
	// record of the last verified apply; otherwise they say nothing
	// (older agents refuse the field).
	o := w.obs(fleetYAML, "prod")
	w.stageServes(o)
	o.Applied.Trusted = []string{w.stageCK.String()}
	if p := plan(o); p.TrustedLive != nil {
		t.Fatalf("trusted live %v without a rotation; want none", p.TrustedLive)
	}
	o.Peers["stage"].Facts.Serve.NextCacheKey = newCacheKey(t, "127.0.0.2-g2").String()
	if p := plan(o); !slices.Equal(p.TrustedLive, o.Applied.Trusted) {
		t.Fatalf("trusted live %v; want %v", p.TrustedLive, o.Applied.Trusted)
	}
}
