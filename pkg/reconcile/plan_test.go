package reconcile

import (
	"bytes"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nixpeer/nixpeer/internal/testenv"
	"github.com/nixpeer/nixpeer/pkg/desired"
	"github.com/nixpeer/nixpeer/pkg/layout"
	"github.com/nixpeer/nixpeer/pkg/nix"
	"github.com/nixpeer/nixpeer/pkg/peer"
	"github.com/nixpeer/nixpeer/pkg/peering"
	"github.com/nixpeer/nixpeer/pkg/sshkeys"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// The plan is a pure function of an Observation: these tests build
// observations by hand and check what the plan writes, starts and reports.

var t0 = time.Date(2026, 12, 1, 3, 0, 0, 0, time.UTC)

func newKey(t *testing.T) sshkeys.Key {
	k := testenv.NewKey(t)
	return sshkeys.Key{Public: k.PublicKey(), Signer: k.Signer}
}

func newCacheKey(t *testing.T, name string) nix.PublicKey {
	t.Helper()
	_, pub, err := nix.GenerateCacheKey(name)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

const fleetYAML = `apiVersion: nixpeer/v1
hosts:
  - name: stage
    address: 127.0.0.2
    platform: nix
    apply: ["true"]
    serve: {}
  - name: prod
    address: 127.0.0.3
    platform: nix
    apply: ["true"]
    substituteFrom: [stage]
`

// world is a fleet as one host sees it; obs makes its observation.
type world struct {
	t       *testing.T
	l       layout.Layout
	client  sshkeys.Key
	host    sshkeys.Key
	stage   sshkeys.Key // staging's host key
	stageCK nix.PublicKey
	prodCK  sshkeys.Key // production's client key, as staging learns it
}

func newWorld(t *testing.T) *world {
	return &world{t: t, l: layout.New("/r", "", ""), client: newKey(t), host: newKey(t),
		stage: newKey(t), stageCK: newCacheKey(t, "127.0.0.2"), prodCK: newKey(t)}
}

// obs observes host self of the desired state in yaml, with keys in
// place and nothing else on disk.
func (w *world) obs(yaml, self string) *Observation {
	w.t.Helper()
	f, err := desired.Parse("desired.yaml", []byte(yaml))
	if err != nil {
		w.t.Fatal(err)
	}
	o := &Observation{Now: t0, Layout: w.l, File: f, Generation: 1,
		ClientKey: KeyObs{Key: w.client}, HostKey: KeyObs{Key: w.host},
		KeysDirMode: 0o700, Files: map[string]FileObs{},
		Peers: map[string]peering.State{}, Probes: map[string]jobState{}, Trips: map[string][]time.Time{},
		Verified: map[string]string{}}
	o.Self, o.HostCAs = f.Host(self), hostCAs(f)
	if o.Self == nil {
		w.t.Fatalf("no host %s", self)
	}
	if o.Self.Serve != nil {
		ck := newCacheKey(w.t, o.Self.Serve.KeyName)
		o.CacheKey = CacheKeyObs{CacheKeyState: nix.CacheKeyState{Name: ck.Name(), Public: ck}}
		o.NextCacheKey = CacheKeyObs{CacheKeyState: nix.CacheKeyState{Missing: true}}
		o.SignedWith = ck.String()
	}
	return o
}

// stageServes makes staging's agent known to production: trusted, and
// authorizing production's client key, applied.
func (w *world) stageServes(o *Observation) {
	o.Peers["stage"] = peering.State{Name: "stage", Trust: status.TrustTOFU, HostKey: w.stage.Public,
		Connected: true, Since: t0.Add(-time.Minute), FactsAt: t0.Add(-time.Minute),
		Facts: &peer.Facts{Name: "stage", Address: "127.0.0.2", ClientKey: newKey(w.t).AuthorizedLine(),
			Serve: &peer.ServeFacts{Protocol: "ssh", CacheKey: w.stageCK.String(), Authorized: []peer.AuthorizedFact{
				{Host: "prod", Fingerprint: w.client.Fingerprint(), Applied: true}}}}}
}

// probed says the last probe of staging passed, after the connection
// came up.
func (w *world) probed(o *Observation, p *Plan, failed string) {
	tuple := w.tuple(o)
	o.Probes["stage"] = jobState{Key: tuple, Started: t0.Add(-30 * time.Second), Ended: t0.Add(-29 * time.Second), Err: failed}
}

func (w *world) tuple(o *Observation) string {
	pl := &planner{o: o, self: o.Self, file: o.File}
	tuple, _ := pl.tuple(o.File.Host("stage"), peerKeys{HostKey: w.stage.Public})
	return tuple
}

// inUse puts staging's substituter in production's nixpeer.conf on disk.
func (w *world) inUse(o *Observation) string {
	u, err := nix.SubstituterURL("ssh", "127.0.0.2", 22, w.l.ClientKey, w.stage.Public, 10)
	if err != nil {
		w.t.Fatal(err)
	}
	o.Files[w.l.NixpeerConf] = FileObs{Exists: true, Mode: 0o644, Content: []byte("extra-substituters = " + u + "\n")}
	return u
}

func resource(p *Plan, typ string) *Resource {
	for _, r := range p.Resources {
		if r.Type == typ {
			return r
		}
	}
	return nil
}

func file(r *Resource, path string) []byte {
	for _, f := range r.Files {
		if f.path == path {
			return f.content
		}
	}
	return nil
}

// planned is the resource that writes path, and the content it plans
// for it; nil when none does.
func planned(p *Plan, path string) (*Resource, []byte) {
	for _, r := range p.Resources {
		for _, f := range r.Files {
			if f.path == path {
				return r, f.content
			}
		}
	}
	return nil, nil
}

func recordOf(p *Plan, key string) any {
	for _, r := range p.Resources {
		for _, rec := range r.Records {
			if rec.key == key {
				return rec.value
			}
		}
	}
	return nil
}

func peerOf(p *Plan, name string) status.Peer {
	for _, ps := range p.PeerStatus {
		if ps.Name == name {
			return ps
		}
	}
	return status.Peer{}
}

func wantCondition(t *testing.T, p *Plan, typ string, ok bool, reason string) *Resource {
	t.Helper()
	r := resource(p, typ)
	if r == nil {
		t.Fatalf("no %s in the plan", typ)
	}
	if r.Status != ok || r.Reason != reason {
		t.Fatalf("%s = %v %s (%s); want %v %s", typ, r.Status, r.Reason, r.Message, ok, reason)
	}
	return r
}

func noCondition(t *testing.T, p *Plan, types ...string) {
	t.Helper()
	for _, typ := range types {
		if r := resource(p, typ); r != nil {
			t.Errorf("the plan still has %s (%v %s: %s)", typ, r.Status, r.Reason, r.Message)
		}
	}
}

func TestPlanRoleChanges(t *testing.T) {
	w := newWorld(t)
	alone := `apiVersion: nixpeer/v1
hosts:
  - name: stage
    address: 127.0.0.2
    platform: nix
    apply: ["true"]
  - name: prod
    address: 127.0.0.3
    platform: nix
    apply: ["true"]
`
	t.Run("substituteFrom removed while its peer is away", func(t *testing.T) {
		o := w.obs(alone, "prod")
		kh := []byte("# BEGIN nixpeer managed block: do not edit, the agent rewrites it\n127.0.0.2 " + w.stage.AuthorizedLine() + "\n# END nixpeer managed block\nmine\n")
		o.Files[w.l.KnownHosts] = FileObs{Exists: true, Mode: 0o600, Content: kh}
		p := plan(o)
		noCondition(t, p, status.SubstitutersReady, status.PeersTrusted, status.CacheKeyReady, status.ServeReady)
		if got := file(resource(p, status.KnownHostsReady), w.l.KnownHosts); string(got) != "mine\n" {
			t.Errorf("known_hosts = %q, want the block gone and the rest kept", got)
		}
		conf := file(resource(p, status.NixSettingsApplied), w.l.NixpeerConf)
		if bytes.Contains(conf, []byte("substituters")) || bytes.Contains(conf, []byte("fallback")) {
			t.Errorf("nixpeer.conf of a host that fetches from nobody:\n%s", conf)
		}
	})
	t.Run("serve removed", func(t *testing.T) {
		o := w.obs(alone, "stage")
		ak := filepath.Join(w.l.AuthorizedKeysDir, "nix-ssh")
		o.Files[ak] = FileObs{Exists: true, Mode: 0o644, Content: []byte("command=\"nix-store --serve\",restrict " + w.prodCK.AuthorizedLine() + "\n")}
		p := plan(o)
		noCondition(t, p, status.CacheKeyReady, status.ServeReady, status.SubstitutersReady)
		if r, got := planned(p, ak); r == nil || bytes.Contains(got, []byte("ssh-ed25519")) {
			t.Fatalf("the authorized keys of a host that no longer serves are not revoked: %+v", r)
		}
		if conf := file(resource(p, status.NixSettingsApplied), w.l.NixpeerConf); bytes.Contains(conf, []byte("secret-key-files")) {
			t.Errorf("nixpeer.conf of a host that no longer serves signs:\n%s", conf)
		}
	})
	t.Run("serve added", func(t *testing.T) {
		o := w.obs(fleetYAML, "stage")
		o.CacheKey = CacheKeyObs{CacheKeyState: nix.CacheKeyState{Missing: true}}
		p := plan(o)
		r := wantCondition(t, p, status.CacheKeyReady, false, "KeyCreated")
		if len(r.Keys) != 1 || r.Keys[0].kind != keyCache || r.Keys[0].name != "127.0.0.2" {
			t.Fatalf("serve added: keys %+v, want the cache key 127.0.0.2 created", r.Keys)
		}
		if p.Requeue != soon {
			t.Errorf("requeue %v after creating a key, want at once", p.Requeue)
		}
		wantCondition(t, p, status.NixSettingsApplied, false, "WaitingForCacheKey")
		if n := len(resource(p, status.NixSettingsApplied).Files); n != 0 {
			t.Errorf("Nix settings written (%d files) before the signing key exists", n)
		}
	})
	t.Run("platform changed", func(t *testing.T) {
		o := w.obs(strings.ReplaceAll(fleetYAML, "platform: nix", "platform: nixos"), "stage")
		p := plan(o)
		r := resource(p, status.NixSettingsApplied)
		if file(r, w.l.StateNixConf) == nil || file(r, w.l.NixpeerConf) != nil {
			t.Fatalf("nixos host writes %v, want %s only", r.Files, w.l.StateNixConf)
		}
		if r, got := planned(p, filepath.Join(w.l.StateAuthorizedKeysDir, "nix-ssh")); r == nil || got == nil {
			t.Fatalf("nixos host's authorized keys are not in the state directory: %+v", r)
		}
	})
}

// TestPlanKeyNameChangedKeepsSigning: serve.keyName changes under a key
// made with the old name. The key is not touched and CacheKeyReady says
// why; the Nix settings go on naming the key file there is (still
// signing), and go on following the host's peers: a dark one is
// withdrawn.
func TestPlanKeyNameChangedKeepsSigning(t *testing.T) {
	w := newWorld(t)
	yaml := strings.Replace(fleetYAML, "serve: {}", "serve: {keyName: stage-2}", 1)
	yaml = strings.Replace(yaml, "  - name: prod", "  - name: other\n    address: 127.0.0.4\n    serve: {}\n  - name: prod", 1)
	yaml = strings.Replace(yaml, "    serve: {keyName: stage-2}\n", "    serve: {keyName: stage-2}\n    substituteFrom: [other]\n", 1)
	o := w.obs(yaml, "stage")
	old := newCacheKey(t, "127.0.0.2")
	o.CacheKey = CacheKeyObs{CacheKeyState: nix.CacheKeyState{Name: old.Name(), Public: old}}
	// other served, and went dark.
	o.Peers["other"] = peering.State{Name: "other", Trust: status.TrustTOFU, HostKey: w.stage.Public, Since: t0.Add(-time.Second), NoAnswer: true,
		Facts: &peer.Facts{Name: "other", Address: "127.0.0.4", Serve: &peer.ServeFacts{Protocol: "ssh", CacheKey: newCacheKey(t, "127.0.0.4").String(),
			Authorized: []peer.AuthorizedFact{{Host: "stage", Fingerprint: w.client.Fingerprint(), Applied: true}}}}}
	pl := &planner{o: o, self: o.Self, file: o.File}
	tuple, url := pl.tuple(o.File.Host("other"), peerKeys{HostKey: w.stage.Public})
	o.Verified["other"] = tuple
	o.Files[w.l.NixpeerConf] = FileObs{Exists: true, Mode: 0o644, Content: []byte("extra-substituters = " + url + "\n")}

	p := plan(o)
	r := wantCondition(t, p, status.CacheKeyReady, false, "KeyNameMismatch")
	if !strings.Contains(r.Message, `"127.0.0.2"`) || !strings.Contains(r.Message, `"stage-2"`) || len(r.Keys) != 0 || !r.Failed {
		t.Fatalf("CacheKeyReady %+v: want both names, a failure, and no key touched", r)
	}
	conf := file(resource(p, status.NixSettingsApplied), w.l.NixpeerConf)
	if !bytes.Contains(conf, []byte("extra-secret-key-files = /r/var/lib/nixpeer/keys/cache-priv-key.pem")) {
		t.Fatalf("the Nix settings no longer sign with the key there is:\n%s", conf)
	}
	if bytes.Contains(conf, []byte(url)) || len(p.Trips) != 1 {
		t.Fatalf("a dark peer stays a substituter (trips %v):\n%s", p.Trips, conf)
	}
}

// TestPlanRefusesACacheKeyUnderAnotherName: Nix keeps one trusted key per
// name, so a serving peer publishing a key named after another host (here
// prod's own name for its key) is not trusted: nothing reaches the Nix
// settings, and the peer's message says why.
func TestPlanRefusesACacheKeyUnderAnotherName(t *testing.T) {
	w := newWorld(t)
	o := w.obs(fleetYAML, "prod")
	w.stageServes(o)
	w.probed(o, nil, "")
	st := o.Peers["stage"]
	f := *st.Facts
	s := *f.Serve
	s.CacheKey = newCacheKey(t, "cache.nixos.org-1").String()
	f.Serve, st.Facts = &s, &f
	o.Peers["stage"] = st
	p := plan(o)
	ps := peerOf(p, "stage")
	if ps.State != status.PeerWaitingForFacts || !strings.Contains(ps.Message, `named "cache.nixos.org-1", not its keyName "127.0.0.2"`) {
		t.Fatalf("peer %+v; want it waiting, the names said", ps)
	}
	if conf := file(resource(p, status.NixSettingsApplied), w.l.NixpeerConf); bytes.Contains(conf, []byte("cache.nixos.org-1")) || bytes.Contains(conf, []byte("ssh://")) {
		t.Fatalf("the Nix settings take the key:\n%s", conf)
	}
}

func TestPlanSubstituterFollowsItsPeer(t *testing.T) {
	w := newWorld(t)
	t.Run("verified serving", func(t *testing.T) {
		o := w.obs(fleetYAML, "prod")
		w.stageServes(o)
		w.probed(o, nil, "")
		p := plan(o)
		if ps := peerOf(p, "stage"); ps.State != status.PeerServing {
			t.Fatalf("peer %+v, want Serving", ps)
		}
		// Trusted on first use, which the file asked for: said so.
		if r := wantCondition(t, p, status.PeersTrusted, true, "Trusted"); !strings.Contains(r.Message, "stage (tofu: trusted on first use, vouched for by nobody") {
			t.Errorf("PeersTrusted %q does not say that nobody vouched for stage's key", r.Message)
		}
		conf := file(resource(p, status.NixSettingsApplied), w.l.NixpeerConf)
		if !bytes.Contains(conf, []byte("ssh://nix-ssh@127.0.0.2?")) || !bytes.Contains(conf, []byte(w.stageCK.String())) {
			t.Fatalf("nixpeer.conf lacks staging:\n%s", conf)
		}
		wantCondition(t, p, status.SubstitutersReady, true, "Configured")
		if v, _ := recordOf(p, recVerified).(map[string]string); v["stage"] != w.tuple(o) {
			t.Errorf("verified record %v: a passing probe is not recorded", recordOf(p, recVerified))
		}
	})
	t.Run("authorized but not probed yet", func(t *testing.T) {
		o := w.obs(fleetYAML, "prod")
		w.stageServes(o)
		p := plan(o)
		if ps := peerOf(p, "stage"); ps.State != status.PeerProbing || len(p.Probes) != 1 {
			t.Fatalf("peer %+v, probes %d; want Probing and one probe", ps, len(p.Probes))
		}
		if conf := file(resource(p, status.NixSettingsApplied), w.l.NixpeerConf); bytes.Contains(conf, []byte("ssh://")) {
			t.Fatalf("staging used before its probe:\n%s", conf)
		}
		wantCondition(t, p, status.SubstitutersReady, false, "WaitingForPeer")
	})
	t.Run("host key refused", func(t *testing.T) {
		o := w.obs(fleetYAML, "prod")
		w.stageServes(o)
		w.probed(o, nil, "")
		url := w.inUse(o)
		st := o.Peers["stage"]
		st.Refused = &peering.Refusal{Reason: peering.RefusedChanged, Offered: "SHA256:new", Trusted: w.stage.Fingerprint()}
		o.Peers["stage"] = st
		p := plan(o)
		if ps := peerOf(p, "stage"); ps.State != status.PeerHostKeyRefused {
			t.Fatalf("peer %+v, want HostKeyRefused", ps)
		}
		wantCondition(t, p, status.PeersTrusted, false, peering.RefusedChanged)
		if conf := file(resource(p, status.NixSettingsApplied), w.l.NixpeerConf); bytes.Contains(conf, []byte(url)) {
			t.Fatal("a peer whose host key is refused stays a substituter")
		}
		if kh := file(resource(p, status.KnownHostsReady), w.l.KnownHosts); !bytes.Contains(kh, []byte(w.stage.AuthorizedLine())) {
			t.Fatalf("known_hosts lost the trusted key:\n%s", kh)
		}
	})
	t.Run("goes dark", func(t *testing.T) {
		o := w.obs(fleetYAML, "prod")
		w.stageServes(o)
		w.probed(o, nil, "")
		o.Verified["stage"] = w.tuple(o)
		url := w.inUse(o)
		st := o.Peers["stage"]
		st.Connected, st.NoAnswer, st.Since, st.LastError = false, true, t0.Add(-time.Second), "no document or keepalive for 6s"
		o.Peers["stage"] = st
		p := plan(o)
		if ps := peerOf(p, "stage"); ps.State != status.PeerUnreachable {
			t.Fatalf("peer %+v, want Unreachable", ps)
		}
		r := resource(p, status.NixSettingsApplied)
		if bytes.Contains(file(r, w.l.NixpeerConf), []byte(url)) {
			t.Fatal("a dark peer stays a substituter")
		}
		if r.Apply == nil || len(r.Apply.withdrawn) != 1 || r.Apply.withdrawn[0] != url {
			t.Fatalf("apply %+v: want the dark peer's URL checked gone from the live settings", r.Apply)
		}
		wantCondition(t, p, status.SubstitutersReady, true, "PeerUnreachable")
		if len(p.Trips) != 1 || p.Trips[0] != "stage" {
			t.Errorf("trips %v, want stage", p.Trips)
		}
	})
	t.Run("dark and never verified", func(t *testing.T) {
		o := w.obs(fleetYAML, "prod")
		w.stageServes(o)
		st := o.Peers["stage"]
		st.Connected, st.NoAnswer, st.Since = false, true, t0.Add(-time.Second)
		o.Peers["stage"] = st
		p := plan(o)
		wantCondition(t, p, status.SubstitutersReady, false, "WaitingForPeer")
	})
	t.Run("comes back", func(t *testing.T) {
		o := w.obs(fleetYAML, "prod")
		w.stageServes(o)
		o.Verified["stage"] = w.tuple(o)
		o.Trips["stage"] = []time.Time{t0.Add(-5 * time.Minute)}
		st := o.Peers["stage"]
		st.Since = t0.Add(-2 * time.Second) // reconnected
		o.Peers["stage"] = st
		o.Probes["stage"] = jobState{Key: w.tuple(o), Started: t0.Add(-time.Second), Ended: t0.Add(-time.Second / 2)}
		p := plan(o)
		if !bytes.Contains(file(resource(p, status.NixSettingsApplied), w.l.NixpeerConf), []byte("ssh://nix-ssh@127.0.0.2?")) {
			t.Fatal("a peer that answers and passes its probe again is not used again")
		}
	})
	t.Run("flapping is held down", func(t *testing.T) {
		o := w.obs(fleetYAML, "prod")
		w.stageServes(o)
		o.Verified["stage"] = w.tuple(o)
		o.Trips["stage"] = []time.Time{t0.Add(-3 * time.Minute), t0.Add(-2 * time.Minute), t0.Add(-10 * time.Second)}
		st := o.Peers["stage"]
		st.Since = t0.Add(-2 * time.Second)
		o.Peers["stage"] = st
		o.Probes["stage"] = jobState{Key: w.tuple(o), Started: t0.Add(-time.Second), Ended: t0.Add(-time.Second / 2)}
		p := plan(o)
		if bytes.Contains(file(resource(p, status.NixSettingsApplied), w.l.NixpeerConf), []byte("ssh://")) {
			t.Fatal("a peer that went dark 3 times in 3 minutes is used again at once")
		}
		if ps := peerOf(p, "stage"); ps.State != status.PeerUnreachable || !strings.Contains(ps.Message, "used again from") {
			t.Fatalf("peer %+v", ps)
		}
		if want := 20 * time.Second; p.Requeue != want {
			t.Errorf("requeue %v, want %v (the end of the 30s hold-down)", p.Requeue, want)
		}
	})
	t.Run("agent gone, sshd refuses", func(t *testing.T) {
		o := w.obs(fleetYAML, "prod")
		w.stageServes(o)
		o.Verified["stage"] = w.tuple(o)
		url := w.inUse(o)
		st := o.Peers["stage"]
		st.Connected, st.Since, st.LastError = false, t0.Add(-10*time.Second), "connection refused"
		o.Peers["stage"] = st
		// Not probed since it went away: probe, keep it meanwhile.
		p := plan(o)
		if ps := peerOf(p, "stage"); ps.State != status.PeerProbing || len(p.Probes) != 1 {
			t.Fatalf("peer %+v, %d probes; want Probing", ps, len(p.Probes))
		}
		if !bytes.Contains(file(resource(p, status.NixSettingsApplied), w.l.NixpeerConf), []byte(url)) {
			t.Fatal("the substituter left before the probe said anything")
		}
		// The probe fails: withdrawn.
		o.Probes["stage"] = jobState{Key: w.tuple(o), Started: t0.Add(-time.Second), Ended: t0, Err: "connection refused", Failures: 1}
		p = plan(o)
		if bytes.Contains(file(resource(p, status.NixSettingsApplied), w.l.NixpeerConf), []byte(url)) {
			t.Fatal("the substituter stays after its sshd stopped serving")
		}
		if ps := peerOf(p, "stage"); ps.State != status.PeerUnreachable {
			t.Fatalf("peer %+v, want Unreachable", ps)
		}
	})
}

// onDisk puts the files r plans on disk, as written at when.
func onDisk(o *Observation, r *Resource, when time.Time) {
	for _, f := range r.Files {
		o.Files[f.path] = FileObs{Exists: true, Mode: 0o644, Content: f.content, ModTime: when}
	}
}

// checking is st with facts whose serve check is c.
func checking(st peering.State, c *peer.ServeCheck) peering.State {
	st.Facts = &peer.Facts{Serve: &peer.ServeFacts{Check: c}}
	return st
}

// TestDecide walks the breaker through what a peer in use can do.
func TestDecide(t *testing.T) {
	const tuple = "t"
	connected := peering.State{Connected: true, Since: t0.Add(-time.Hour)}
	ok := func(ended time.Time) jobState {
		return jobState{Key: tuple, Started: ended.Add(-100 * time.Millisecond), Ended: ended}
	}
	failed := func(ended time.Time) jobState {
		s := ok(ended)
		s.Err, s.Failures = "connection refused", 1
		return s
	}
	for _, c := range []struct {
		name      string
		in        peerInput
		use       bool
		state     status.PeerState
		ready     bool
		probe     bool
		requeue   time.Duration
		trip      bool
		verifyRec bool
	}{
		{name: "serving, probed a while ago: probed again while its agent answers",
			in:  peerInput{State: connected, Probe: ok(t0.Add(-ConnectedReprobe)), InUse: true, Verified: true},
			use: true, state: status.PeerServing, ready: true, probe: true},
		{name: "serving, probed 10s ago",
			in:  peerInput{State: connected, Probe: ok(t0.Add(-10 * time.Second)), InUse: true, Verified: true},
			use: true, state: status.PeerServing, ready: true, requeue: ConnectedReprobe - 10*time.Second},
		{name: "a refresh probe runs: the last result stands",
			in: peerInput{State: connected, Probe: func() jobState {
				s := ok(t0.Add(-ConnectedReprobe))
				s.Running, s.RunningKey = true, tuple
				return s
			}(), InUse: true, Verified: true},
			use: true, state: status.PeerServing, ready: true, probe: true},
		{name: "its sshd stopped while its agent answers: withdrawn, host stays Ready",
			in:  peerInput{State: connected, Probe: failed(t0.Add(-time.Second)), InUse: true, Verified: true},
			use: false, state: status.PeerProbeFailed, ready: true, probe: true, trip: true},
		{name: "its sshd never served",
			in:  peerInput{State: connected, Probe: failed(t0.Add(-time.Second))},
			use: false, state: status.PeerProbeFailed, ready: false, probe: true},
		{name: "failed before the peer told something new: probed again at once",
			in: peerInput{State: func() peering.State {
				st := connected
				st.FactsAt = t0.Add(-100 * time.Millisecond)
				return st
			}(), Probe: failed(t0.Add(-150 * time.Millisecond))},
			use: false, state: status.PeerProbing, ready: false, probe: true},
		{name: "passed before the peer told something new: stands",
			in: peerInput{State: func() peering.State {
				st := connected
				st.FactsAt = t0.Add(-100 * time.Millisecond)
				return st
			}(), Probe: ok(t0.Add(-150 * time.Millisecond)), InUse: true, Verified: true},
			use: true, state: status.PeerServing, ready: true, requeue: ConnectedReprobe - 150*time.Millisecond},
		{name: "back after it served: probing keeps the host Ready",
			in:  peerInput{State: peering.State{Connected: true, Since: t0.Add(-time.Second)}, Probe: ok(t0.Add(-time.Minute)), Verified: true},
			use: false, state: status.PeerProbing, ready: true, probe: true},
		{name: "back and probed",
			in:  peerInput{State: peering.State{Connected: true, Since: t0.Add(-time.Second)}, Probe: ok(t0), Verified: true},
			use: true, state: status.PeerServing, ready: true, requeue: ConnectedReprobe},
		{name: "first probe passes: recorded as verified",
			in:  peerInput{State: connected, Probe: ok(t0)},
			use: true, state: status.PeerServing, ready: true, requeue: ConnectedReprobe, verifyRec: true},
		{name: "dark",
			in:  peerInput{State: peering.State{NoAnswer: true, Since: t0.Add(-time.Second)}, Probe: ok(t0.Add(-time.Minute)), InUse: true, Verified: true},
			use: false, state: status.PeerUnreachable, ready: true, trip: true},
		{name: "its agent checks its own sshd: probed again only every CheckedReprobe",
			in:  peerInput{State: checking(connected, &peer.ServeCheck{Serving: true}), Probe: ok(t0.Add(-ConnectedReprobe)), InUse: true, Verified: true},
			use: true, state: status.PeerServing, ready: true, requeue: CheckedReprobe - ConnectedReprobe},
		{name: "its agent says its own sshd stopped: withdrawn at once, without a probe",
			in:  peerInput{State: checking(connected, &peer.ServeCheck{Reason: "refused"}), Probe: ok(t0.Add(-time.Second)), InUse: true, Verified: true},
			use: false, state: status.PeerProbeFailed, ready: true, trip: true},
		{name: "its agent says its own sshd does not serve, and it never served this host",
			in:  peerInput{State: checking(connected, &peer.ServeCheck{Reason: "refused"}), Probe: ok(t0.Add(-time.Second))},
			use: false, state: status.PeerProbeFailed, ready: false},
		{name: "its sshd serves again: a probe from before does not count",
			in: peerInput{State: func() peering.State {
				s := checking(connected, &peer.ServeCheck{Serving: true})
				s.Recovered = t0.Add(-time.Second)
				return s
			}(), Probe: ok(t0.Add(-time.Minute)), Verified: true},
			use: false, state: status.PeerProbing, ready: true, probe: true},
		{name: "its agent says its own sshd serves, and this host never probed it: used on its word, probed later",
			in:  peerInput{State: checking(peering.State{Connected: true, Since: t0.Add(-time.Second)}, &peer.ServeCheck{Serving: true}), Spread: 0.875},
			use: true, state: status.PeerServing, ready: true, requeue: CheckedReprobe/2 - time.Second},
		{name: "used on its word: the probe comes due",
			in:  peerInput{State: checking(peering.State{Connected: true, Since: t0.Add(-CheckedReprobe)}, &peer.ServeCheck{Serving: true}), InUse: true},
			use: true, state: status.PeerServing, ready: true, probe: true},
		{name: "used on its word, and the probe fails: withdrawn",
			in:  peerInput{State: checking(connected, &peer.ServeCheck{Serving: true}), Probe: failed(t0.Add(-time.Second)), InUse: true},
			use: false, state: status.PeerProbeFailed, probe: true},
		{name: "its sshd serves again and this host probed it since",
			in: peerInput{State: func() peering.State {
				s := checking(connected, &peer.ServeCheck{Serving: true})
				s.Recovered = t0.Add(-time.Second)
				return s
			}(), Probe: ok(t0), Verified: true},
			use: true, state: status.PeerServing, ready: true, requeue: CheckedReprobe},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.in.Now, c.in.Tuple = t0, tuple
			d := decide(c.in)
			if d.Use != c.use || d.State != c.state || d.Ready != c.ready || d.Probe != c.probe || d.Requeue != c.requeue || d.Trip != c.trip || d.Verify != c.verifyRec {
				t.Fatalf("decide = use %v %s ready %v probe %v requeue %v trip %v verify %v (%s); want use %v %s ready %v probe %v requeue %v trip %v verify %v",
					d.Use, d.State, d.Ready, d.Probe, d.Requeue, d.Trip, d.Verify, d.Message, c.use, c.state, c.ready, c.probe, c.requeue, c.trip, c.verifyRec)
			}
		})
	}
}

func TestPlanApply(t *testing.T) {
	w := newWorld(t)
	o := w.obs(fleetYAML, "stage")
	p := plan(o)
	r := wantCondition(t, p, status.NixSettingsApplied, false, "Applying")
	if r.Apply == nil {
		t.Fatal("new settings, and no apply")
	}
	hash, key := r.Apply.hash, r.Apply.key()
	written := t0.Add(-time.Minute)
	onDisk(o, r, written)

	o.Apply = jobState{Running: true, RunningKey: key, RunningSince: t0}
	if r := wantCondition(t, plan(o), status.NixSettingsApplied, false, "Applying"); r.Apply != nil {
		t.Fatal("a second apply while one runs")
	}

	o.Apply = jobState{Key: key, Started: t0, Ended: t0, Reason: "ApplyFailed", Err: "exit status 1", Failures: 1}
	p = plan(o)
	r = wantCondition(t, p, status.NixSettingsApplied, false, "ApplyFailed")
	if want := scaled(time.Second, spread("stage")); !r.Failed || r.Apply != nil || p.Requeue != want {
		t.Fatalf("a failed apply: failed %v, apply %v, requeue %v; want a failure retried in %v", r.Failed, r.Apply, p.Requeue, want)
	}
	o.Now = t0.Add(time.Second)
	if r := resource(plan(o), status.NixSettingsApplied); r.Apply == nil {
		t.Fatal("a failed apply is not retried once its delay passed")
	}

	o.Now = t0
	o.Apply = jobState{Key: key, Started: t0, Ended: t0}
	r = wantCondition(t, plan(o), status.NixSettingsApplied, true, "Applied")
	if a, ok := r.Records[0].value.(appliedRecord); len(r.Records) != 1 || !ok || a.Hash != hash || !a.At.Equal(t0) {
		t.Fatalf("records %+v, want the applied hash and when its apply began", r.Records)
	}
	o.Applied = appliedRecord{Hash: hash, At: t0}
	if r := wantCondition(t, plan(o), status.NixSettingsApplied, true, "Applied"); r.Apply != nil || len(r.Records) != 0 {
		t.Fatal("settings applied already, and the plan applies or records again")
	}

	t.Run("a file changed behind the agent's back is applied again", func(t *testing.T) {
		o := *o
		o.Files = map[string]FileObs{}
		for k, v := range o.Files {
			o.Files[k] = v
		}
		onDisk(&o, r, written)
		o.Files[w.l.NixConf] = FileObs{Exists: true, Mode: 0o644, Content: []byte("# a package upgrade wrote this\n"), ModTime: t0.Add(time.Minute)}
		o.Now = t0.Add(2 * time.Minute)
		if r := wantCondition(t, plan(&o), status.NixSettingsApplied, false, "Applying"); r.Apply == nil {
			t.Fatal("nix.conf is written back and not applied")
		}
		// Written back, by the agent or by a person: the old apply does
		// not count for it.
		onDisk(&o, r, t0.Add(time.Minute))
		if r := wantCondition(t, plan(&o), status.NixSettingsApplied, false, "Applying"); r.Apply == nil {
			t.Fatal("settings written after their last apply count as applied")
		}
	})
}

func TestSpread(t *testing.T) {
	seen := map[float64]bool{}
	for i := range 100 {
		f := spread(fmt.Sprintf("prod-%d/stage", i))
		if f < 0.75 || f >= 1 {
			t.Fatalf("spread %v out of [0.75, 1)", f)
		}
		seen[f] = true
	}
	if len(seen) < 90 {
		t.Fatalf("100 hosts get %d distinct spreads: they would retry in waves", len(seen))
	}
}

func TestPlanKeys(t *testing.T) {
	w := newWorld(t)
	o := w.obs(fleetYAML, "prod")
	o.ClientKey = KeyObs{State: sshkeys.Inspection{Missing: true, PubWrong: true}}
	o.KeysDirMode = 0o755
	p := plan(o)
	r := wantCondition(t, p, status.KeysReady, false, "KeyCreated")
	if len(r.Keys) != 1 || r.Keys[0].kind != keyClient || len(r.Dirs) != 1 || r.Dirs[0].mode != 0o700 {
		t.Fatalf("keys %+v dirs %+v: want the client key created and the directory made 0700", r.Keys, r.Dirs)
	}
	wantCondition(t, p, status.SubstitutersReady, false, "WaitingForPeer")

	o.HostKey = KeyObs{Err: errBroken}
	p = plan(o)
	wantCondition(t, p, status.KeysReady, false, "HostKeyUnusable")
	wantCondition(t, p, status.PeerPortReady, false, "NoHostKey")
	if _, ok := factsOf(o, p, status.Status{}, nil); ok {
		t.Error("facts published without a host key")
	}
}

func TestPlanDesiredState(t *testing.T) {
	w := newWorld(t)
	o := &Observation{Now: t0, Layout: w.l, FileProblem: &Problem{Reason: "Invalid", Message: "desired.yaml:3:1: bad"}}
	p := plan(o)
	if len(p.Resources) != 2 || resource(p, status.StateStoreReady) == nil {
		t.Fatalf("with no desired state the plan has %d resources, want DesiredStateValid and StateStoreReady only", len(p.Resources))
	}
	wantCondition(t, p, status.DesiredStateValid, false, "Invalid")

	o = w.obs(fleetYAML, "prod")
	o.FileProblem = &Problem{Reason: "Invalid", Message: "desired.yaml:3:1: bad; keeping the last good desired state"}
	p = plan(o)
	wantCondition(t, p, status.DesiredStateValid, false, "Invalid")
	if resource(p, status.KnownHostsReady) == nil {
		t.Fatal("the last good desired state is not reconciled while the file is broken")
	}
}

var errBroken = errorString("the key is corrupt")

type errorString string

func (e errorString) Error() string { return string(e) }

// TestPlanWarnsOfTOFU: trust: tofu, written explicitly, is warned of in
// the status; the default is not.
func TestPlanWarnsOfTOFU(t *testing.T) {
	w := newWorld(t)
	if p := plan(w.obs(fleetYAML, "prod")); len(p.Warnings) != 0 {
		t.Errorf("warnings with trust: approve (the default): %q", p.Warnings)
	}
	tofu := strings.Replace(fleetYAML, "hosts:", "trust: tofu\nhosts:", 1)
	if p := plan(w.obs(tofu, "prod")); len(p.Warnings) != 1 || p.Warnings[0] != tofuWarning {
		t.Errorf("warnings with trust: tofu: %q, want the tofu warning", p.Warnings)
	}
}
