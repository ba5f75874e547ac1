package reconcile

import (
	"cmp"
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"golang.org/x/crypto/ssh"

	"github.com/nixpeer/nixpeer/pkg/layout"
	"github.com/nixpeer/nixpeer/pkg/peer"
	"github.com/nixpeer/nixpeer/pkg/peering"
	"github.com/nixpeer/nixpeer/pkg/probe"
	"github.com/nixpeer/nixpeer/pkg/state"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// A whole pass with fakes for Nix, the probe, peering and the peer port,
// and real files and a real store under a temporary root.

// fakeNix is a Nix daemon whose live settings are those of conf (a
// nixpeer.conf) as it was at the last apply.
type fakeNix struct {
	conf string

	mu       sync.Mutex
	applyErr error
	applies  int
	live     map[string]string
	// gate, when set, holds every apply until it is closed.
	gate chan struct{}
}

func (f *fakeNix) ShowConfig(context.Context) (map[string]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.live, nil
}

func (f *fakeNix) SignClosure(context.Context, string, string) error { return nil }

func (f *fakeNix) Resign(context.Context, string, string, bool) (int, error) { return 0, nil }

func (f *fakeNix) Apply(context.Context, []string) (string, error) {
	f.mu.Lock()
	gate := f.gate
	f.mu.Unlock()
	if gate != nil {
		<-gate
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.applies++
	if f.applyErr != nil {
		return "", f.applyErr
	}
	raw, _ := os.ReadFile(f.conf)
	f.live = map[string]string{}
	for _, line := range strings.Split(string(raw), "\n") {
		k, v, ok := strings.Cut(line, " = ")
		if ok && !strings.HasPrefix(k, "#") {
			f.live[strings.TrimPrefix(k, "extra-")] = v
		}
	}
	return "", nil
}

type fakeWatches struct{}

func (fakeWatches) Sync([]peering.Target) error              { return nil }
func (fakeWatches) Get(peering.Target) (peering.State, bool) { return peering.State{}, false }
func (fakeWatches) SetIdentity(ssh.Signer)                   {}
func (fakeWatches) Turn(context.Context, string) (func(), error) {
	return nil, peering.ErrNoConnection
}

type fakePort struct {
	mu    sync.Mutex
	facts []peer.Facts
}

func (p *fakePort) Ensure(string, ssh.Signer, *ssh.Certificate) error { return nil }
func (p *fakePort) Publish(f peer.Facts) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.facts = append(p.facts, f)
}

func (p *fakePort) last() peer.Facts {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.facts[len(p.facts)-1]
}

// fakeSSHD is the serving host's own sshd: its probes pass while it is
// up, and are refused while it is down. It counts them.
type fakeSSHD struct {
	down    atomic.Bool
	trusted atomic.Bool // its nix-daemon says it trusts nix-ssh
	probes  atomic.Int32
}

func (f *fakeSSHD) Probe(_ context.Context, t probe.Target) (probe.Result, error) {
	f.probes.Add(1)
	if f.down.Load() {
		return probe.Result{}, &probe.Error{Reason: probe.Refused, Peer: "nix-ssh@" + t.Address, Err: errors.New("connection refused")}
	}
	if f.trusted.Load() {
		return probe.Result{ServerVersion: 0x125, Trusted: probe.Trusted}, nil
	}
	return probe.Result{ServerVersion: 0x205}, nil
}

type harness struct {
	t     *testing.T
	root  string
	l     layout.Layout
	store *state.Store
	nix   *fakeNix
	port  *fakePort
	sshd  *fakeSSHD
	// checkEvery is the host's SSHDCheckInterval (the default when 0).
	checkEvery time.Duration
	// watches are the peers' watches (fakeWatches when nil).
	watches Watches
	host    *Host
	ended   chan string
}

const stageYAML = `apiVersion: nixpeer/v1
hosts:
  - name: stage
    address: 127.0.0.2
    platform: nix
    apply: ["restart"]
    serve: {}
`

func newHarness(t *testing.T, yaml string) *harness { return newHarnessChecking(t, yaml, 0) }

// newHarnessChecking is newHarness with an SSHDCheckInterval.
func newHarnessChecking(t *testing.T, yaml string, checkEvery time.Duration) *harness {
	t.Helper()
	root := t.TempDir()
	l := layout.New(root, "", "")
	h := &harness{t: t, root: root, l: l, nix: &fakeNix{conf: l.NixpeerConf}, port: &fakePort{}, sshd: &fakeSSHD{},
		checkEvery: checkEvery, ended: make(chan string, 16)}
	config := filepath.Join(root, "desired.yaml")
	if err := os.WriteFile(config, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	var err error
	if h.store, _, err = state.Open(h.l.Database, time.Second); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.store.Close() })
	h.start(config)
	return h
}

func (h *harness) start(config string) {
	var err error
	h.host, err = NewHost(Config{Log: zap.NewNop(), Layout: h.l, Store: h.store,
		ConfigFile: config, HostName: "stage", Watches: cmp.Or[Watches](h.watches, fakeWatches{}), Port: h.port, Nix: h.nix, Prober: h.sshd,
		SSHDCheckInterval: h.checkEvery, Trigger: func(reason string) { h.ended <- reason }})
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(h.host.Wait)
}

// pass runs one pass and returns the status.
func (h *harness) pass() (status.Status, error) {
	h.t.Helper()
	_, err := h.host.Reconcile(context.Background())
	return h.host.Status(), err
}

// settle runs passes, letting the jobs they start end, until a pass
// changes nothing and no job ended since it began; at most 20.
func (h *harness) settle() (status.Status, error) {
	h.t.Helper()
	var prev status.Status
	for i := 0; i < 20; i++ {
		_, err := h.host.Reconcile(context.Background())
		st := h.host.Status()
		if h.host.jobs.get(slotApply).Running || h.host.jobs.get(slotSign).Running || h.host.jobs.get(probeSlot("stage")).Running {
			select {
			case <-h.ended:
			case <-time.After(10 * time.Second):
				h.t.Fatal("a job did not end")
			}
		} else {
			select {
			case <-h.ended: // a job the pass started ended already
			default:
				if i > 0 && sameStatus(prev, st) {
					return st, err
				}
			}
		}
		prev = st
	}
	h.t.Fatal("the host does not settle")
	return prev, nil
}

// readyHarness is a harness for stageYAML that has settled Ready after
// exactly one apply.
func readyHarness(t *testing.T) *harness {
	t.Helper()
	h := newHarness(t, stageYAML)
	st, err := h.settle()
	if err != nil || !st.Ready {
		t.Fatalf("first settle: ready %v, err %v; conditions %+v", st.Ready, err, st.Conditions)
	}
	if h.nix.applies != 1 {
		t.Fatalf("%d applies for one change, want 1", h.nix.applies)
	}
	return h
}

// TestHostPassWithFakes: each subtest starts from its own host, settled
// Ready, so that none depends on what another did.
func TestHostPassWithFakes(t *testing.T) {
	t.Run("serves once Ready", func(t *testing.T) {
		h := readyHarness(t)
		if f := h.port.last(); !f.Ready || f.Serve == nil {
			t.Fatalf("facts %+v: want Ready, serving", f)
		}
	})

	t.Run("nothing to do runs nothing", func(t *testing.T) {
		h := readyHarness(t)
		st, err := h.settle()
		if err != nil || !st.Ready || h.nix.applies != 1 {
			t.Fatalf("ready %v err %v applies %d", st.Ready, err, h.nix.applies)
		}
	})

	t.Run("an unreadable record heals", func(t *testing.T) {
		h := readyHarness(t)
		if err := h.store.Commit(state.Pass{Records: map[string]any{recApplied: 42}}); err != nil { // not a string
			t.Fatal(err)
		}
		h.start(h.host.cfg.ConfigFile) // a restart: nothing in memory
		before := h.nix.applies
		st, err := h.settle()
		if err != nil || !st.Ready || h.nix.applies != before+1 {
			t.Fatalf("ready %v err %v applies %d→%d: want one more apply, then Ready", st.Ready, err, before, h.nix.applies)
		}
		var v appliedRecord
		if _, err := h.store.Get(recApplied, &v); err != nil || v.Hash == "" {
			t.Fatalf("record not healed: %+v %v", v, err)
		}
		// A record of verified peers that cannot be read is written anew.
		if err := h.store.Commit(state.Pass{Records: map[string]any{recVerified: "not a map"}}); err != nil {
			t.Fatal(err)
		}
		h.settle()
		var verified map[string]string
		if _, err := h.store.Get(recVerified, &verified); err != nil {
			t.Fatalf("verified record not healed: %v", err)
		}
	})

	t.Run("a failed write holds what needs it", func(t *testing.T) {
		h := readyHarness(t)
		// known_hosts turns into a directory: KnownHostsReady fails.
		kh := h.l.KnownHosts
		os.Remove(kh)
		if err := os.MkdirAll(kh, 0o700); err != nil {
			t.Fatal(err)
		}
		defer os.Remove(kh)
		st, _ := h.pass()
		if c := status.Find(st.Conditions, status.KnownHostsReady); c.Status != status.False || !strings.Contains(c.Message, "not a regular file") {
			t.Fatalf("KnownHostsReady %+v", c)
		}
		if st.Ready {
			t.Fatal("Ready while known_hosts cannot be managed")
		}
	})

	t.Run("a store that cannot be written is not Ready", func(t *testing.T) {
		h := readyHarness(t)
		h.store.Close()
		renameSave(t, h.host.cfg.ConfigFile, stageYAML)
		st, err := h.pass()
		if err == nil || st.Ready {
			t.Fatalf("with the store closed: ready %v err %v", st.Ready, err)
		}
	})

	t.Run("a write to a path the pass did not observe fails loudly", func(t *testing.T) {
		h := readyHarness(t)
		o := h.host.observe()
		stray := filepath.Join(h.root, "stray.conf")
		if err := os.WriteFile(stray, []byte("someone's\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		r := &Resource{Type: "Stray", Files: []fileWant{{path: stray, content: []byte("mine\n")}}}
		a := h.host.act(context.Background(), o, &Plan{Resources: []*Resource{r}})
		if a.again || len(a.errs) != 1 || !strings.Contains(a.errs[0].Error(), "did not observe") || a.failed[r].Reason != "WriteFailed" {
			t.Fatalf("act: again %v, errs %v, problem %+v; want one error naming the unobserved path, no requeue", a.again, a.errs, a.failed[r])
		}
		if got, _ := os.ReadFile(stray); string(got) != "someone's\n" {
			t.Fatalf("the unobserved file was written: %q", got)
		}
	})
}

func TestFailingApplyIsNotReady(t *testing.T) {
	h := newHarness(t, stageYAML)
	h.nix.applyErr = errors.New("exit status 1")
	st, err := h.settle()
	c := status.Find(st.Conditions, status.NixSettingsApplied)
	if err == nil || st.Ready || c.Reason != "ApplyFailed" || h.port.last().Ready {
		t.Fatalf("err %v ready %v %+v facts ready %v; want an error, not Ready, ApplyFailed, facts not ready", err, st.Ready, c, h.port.last().Ready)
	}
	if c := status.Find(st.Conditions, status.Ready); c.Reason != "ApplyFailed" {
		t.Fatalf("Ready %+v: want the failure named", c)
	}
	h.nix.mu.Lock()
	h.nix.applyErr = nil
	h.nix.mu.Unlock()
	// The loop retries it after its delay.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	loop := NewLoop(zap.NewNop(), h.host, time.Hour)
	go func() {
		for range h.ended {
			loop.Trigger("job ended")
		}
	}()
	go loop.Run(ctx)
	for !st.Ready && ctx.Err() == nil {
		st = h.host.WaitReconciled(ctx, st.LastReconcile)
	}
	if !st.Ready || !h.port.last().Ready {
		t.Fatalf("not Ready after the apply works again: %+v", st.Conditions)
	}
}

func TestRoleGoneLeavesNoCondition(t *testing.T) {
	h := newHarness(t, stageYAML)
	h.settle()
	renameSave(t, h.host.cfg.ConfigFile, strings.Replace(stageYAML, "    serve: {}\n", "", 1))
	st, _ := h.settle()
	for _, typ := range []string{status.CacheKeyReady, status.ServeReady} {
		if c := status.Find(st.Conditions, typ); c != nil {
			t.Errorf("%s still reported after serve was removed: %+v", typ, c)
		}
	}
	if !st.Ready {
		t.Fatalf("not Ready after serve was removed: %+v", st.Conditions)
	}
	// A restart reads the stored status back: nothing stale comes back.
	h.start(h.host.cfg.ConfigFile)
	st, _ = h.pass()
	if c := status.Find(st.Conditions, status.CacheKeyReady); c != nil || !st.Ready {
		t.Fatalf("after a restart: ready %v, CacheKeyReady %+v", st.Ready, c)
	}
}

func renameSave(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkNoOpPass measures a pass that finds everything in place.
//
//	go test -run '^$' -bench NoOpPass ./pkg/reconcile/
func BenchmarkNoOpPass(b *testing.B) {
	t := &testing.T{}
	_ = t
	root := b.TempDir()
	l := layout.New(root, "", "")
	config := filepath.Join(root, "desired.yaml")
	os.WriteFile(config, []byte(stageYAML), 0o644)
	store, _, err := state.Open(l.Database, time.Second)
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	nx := &fakeNix{conf: l.NixpeerConf}
	ended := make(chan string, 16)
	host, err := NewHost(Config{Log: zap.NewNop(), Layout: l, Store: store,
		ConfigFile: config, HostName: "stage", Watches: fakeWatches{}, Port: &fakePort{}, Nix: nx, Prober: &fakeSSHD{},
		Trigger: func(reason string) { ended <- reason }})
	if err != nil {
		b.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		host.Reconcile(context.Background())
		if host.jobs.get(slotApply).Running {
			<-ended
		}
	}
	if st := host.Status(); !st.Ready {
		b.Fatalf("not Ready: %+v", st.Conditions)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		host.Reconcile(context.Background())
	}
}

// TestParsedFileParsesOnlyNewContent: the desired-state file is read on
// every pass, and parsed again only when its content changed; a broken
// file keeps its error until it changes.
func TestParsedFileParsesOnlyNewContent(t *testing.T) {
	name := filepath.Join(t.TempDir(), "desired.yaml")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(name, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var p parsedFile
	write(stageYAML)
	first, _, err := p.load(name)
	if err != nil {
		t.Fatal(err)
	}
	again, _, err := p.load(name)
	if err != nil || again != first {
		t.Errorf("the same content was parsed again (%p, then %p, %v)", first, again, err)
	}
	write(stageYAML + "\n# a comment\n")
	changed, raw, err := p.load(name)
	if err != nil || changed == first || !strings.HasSuffix(string(raw), "# a comment\n") {
		t.Errorf("new content was not parsed: %p (first %p), %v", changed, first, err)
	}
	write("hosts: [")
	if f, _, err := p.load(name); err == nil || f != nil {
		t.Errorf("a broken file loaded: %v, %v", f, err)
	}
	if _, _, err := p.load(name); err == nil || !strings.Contains(err.Error(), name) {
		t.Errorf("a broken file's error was lost the second time: %v", err)
	}
	os.Remove(name)
	if _, _, err := p.load(name); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a missing file: %v", err)
	}
}

// TestOwnSSHDCheck: a serving host lets its own client key in and probes
// its own sshd; its facts and ServeReady say what it found, and change
// only when that changes.
func TestOwnSSHDCheck(t *testing.T) {
	h := newHarnessChecking(t, stageYAML, time.Millisecond)
	st, err := h.settle()
	if err != nil || !st.Ready {
		t.Fatalf("first settle: ready %v, err %v; conditions %+v", st.Ready, err, st.Conditions)
	}
	own, err := os.ReadFile(h.l.ClientKey + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	ownKey, _, _, _, err := ssh.ParseAuthorizedKey(own)
	if err != nil {
		t.Fatal(err)
	}
	authorized, err := os.ReadFile(filepath.Join(h.l.AuthorizedKeysDir, nixSSHUser))
	if err != nil || !keysIn(authorized)[string(ownKey.Marshal())] {
		t.Fatalf("the host's own client key is not let in (%v):\n%s", err, authorized)
	}
	f := h.port.last()
	if f.Serve == nil || f.Serve.Check == nil || !f.Serve.Check.Serving || len(f.Serve.Authorized) != 0 {
		t.Fatalf("facts: %+v", f.Serve)
	}
	if c := status.Find(st.Conditions, status.ServeReady); c == nil || c.Status != status.True || !strings.Contains(c.Message, "its own sshd serves") {
		t.Fatalf("ServeReady: %+v", c)
	}

	h.sshd.down.Store(true)
	waitPass := func(what string, cond func(status.Status) bool) status.Status {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			st, _ := h.pass()
			if cond(st) {
				return st
			}
			select {
			case <-h.ended: // a check ended
			case <-time.After(100 * time.Millisecond): // or is due
			}
		}
		t.Fatalf("waiting for %s", what)
		return status.Status{}
	}
	st = waitPass("ServeReady False", func(s status.Status) bool {
		c := status.Find(s.Conditions, status.ServeReady)
		return c != nil && c.Status != status.True
	})
	c := status.Find(st.Conditions, status.ServeReady)
	if c.Reason != "SSHDNotServing" || !strings.Contains(c.Message, "connection refused") || st.Ready {
		t.Fatalf("with its sshd down: ready %v, %+v", st.Ready, c)
	}
	if f := h.port.last(); f.Serve.Check == nil || f.Serve.Check.Serving || f.Serve.Check.Reason != "refused" {
		t.Fatalf("facts with its sshd down: %+v", f.Serve.Check)
	}

	h.sshd.down.Store(false)
	waitPass("Ready again", func(s status.Status) bool { return s.Ready })
	if f := h.port.last(); f.Serve.Check == nil || !f.Serve.Check.Serving {
		t.Fatalf("facts with its sshd back: %+v", f.Serve.Check)
	}
}

// TestOwnSSHDCheckWaitsForTheApply: the apply may restart nix-daemon, so
// the host checks its own sshd only once the apply has ended.
func TestOwnSSHDCheckWaitsForTheApply(t *testing.T) {
	h := newHarnessChecking(t, stageYAML, time.Millisecond)
	gate := make(chan struct{})
	h.nix.mu.Lock()
	h.nix.gate = gate
	h.nix.mu.Unlock()
	release := sync.OnceFunc(func() { close(gate) })
	t.Cleanup(release) // before the host's Wait, which waits for the apply
	for range 5 {      // the key is written, the apply starts and is held
		h.pass()
	}
	if !h.host.jobs.get(slotApply).Running {
		t.Fatal("the apply is not running")
	}
	if n := h.sshd.probes.Load(); n != 0 {
		t.Fatalf("%d checks of its own sshd while the apply runs, want none", n)
	}
	release()
	st, err := h.settle()
	if err != nil || !st.Ready || h.sshd.probes.Load() == 0 {
		t.Fatalf("after the apply: ready %v, err %v, %d checks; %+v", st.Ready, err, h.sshd.probes.Load(), st.Conditions)
	}
}

// TestOwnSSHDNeverServed: a serving host whose sshd has not served yet in
// this run is not Ready, but tells its consumers nothing of it: their own
// probes find an sshd that is still starting.
func TestOwnSSHDNeverServed(t *testing.T) {
	h := newHarnessChecking(t, stageYAML, time.Millisecond)
	h.sshd.down.Store(true)
	var st status.Status
	for range 20 {
		st, _ = h.pass()
		if c := status.Find(st.Conditions, status.ServeReady); c != nil && c.Reason == "SSHDNotServing" {
			break
		}
		select {
		case <-h.ended:
		case <-time.After(100 * time.Millisecond):
		}
	}
	if c := status.Find(st.Conditions, status.ServeReady); c == nil || c.Reason != "SSHDNotServing" || st.Ready {
		t.Fatalf("ready %v, ServeReady %+v", st.Ready, c)
	}
	if f := h.port.last(); f.Serve == nil || f.Serve.Check != nil {
		t.Fatalf("facts tell of a check that never passed: %+v", f.Serve)
	}
}

// TestWarningWhenNixDaemonTrustsNixSSH: a serving host whose own check
// finds its nix-daemon trusting nix-ssh says so in its status, stays
// Ready, and stops saying it once the daemon no longer does.
func TestWarningWhenNixDaemonTrustsNixSSH(t *testing.T) {
	h := newHarnessChecking(t, stageYAML, time.Millisecond)
	h.sshd.trusted.Store(true)
	st, err := h.settle()
	if err != nil || !st.Ready || len(st.Warnings) != 1 || st.Warnings[0] != nixSSHTrusted {
		t.Fatalf("ready %v, err %v, warnings %q: want Ready with the trusted-users warning", st.Ready, err, st.Warnings)
	}
	h.sshd.trusted.Store(false)
	deadline := time.Now().Add(10 * time.Second)
	for len(st.Warnings) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the warning outlived the check that found it: %q", st.Warnings)
		}
		select {
		case <-h.ended: // a check ended
		case <-time.After(100 * time.Millisecond): // or is due
		}
		st, _ = h.pass()
	}
}

// syncedWatches answers Get, as peering does, only for the targets the
// last Sync watched; it has heard nothing from any peer.
type syncedWatches struct {
	mu     sync.Mutex
	synced map[string]peering.Target
}

func (w *syncedWatches) Sync(ts []peering.Target) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.synced = map[string]peering.Target{}
	for _, t := range ts {
		t.Remembered = nil // taken up in place by peering
		w.synced[t.Name] = t
	}
	return nil
}

func (w *syncedWatches) Get(t peering.Target) (peering.State, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	t.Remembered = nil
	s, ok := w.synced[t.Name]
	if !ok || !reflect.DeepEqual(s, t) {
		return peering.State{}, false
	}
	return peering.State{Name: t.Name, Trust: status.TrustNone}, true
}

func (w *syncedWatches) SetIdentity(ssh.Signer) {}
func (w *syncedWatches) Turn(context.Context, string) (func(), error) {
	return nil, peering.ErrNoConnection
}

// TestPeersWatchedFirstThenReported: with a peer in the file, the pass
// that finds its watch not synced yet syncs it and plans again in the
// same reconcile: every reconcile reports, with the peer, and a new
// desired state is stored in the pass that first sees it (its generation
// is never given to another file).
func TestPeersWatchedFirstThenReported(t *testing.T) {
	const twoHosts = stageYAML + `  - name: prod
    address: 127.0.0.3
    platform: nix
    substituteFrom: [stage]
`
	h := newHarness(t, stageYAML)
	h.watches = &syncedWatches{}
	renameSave(t, h.host.cfg.ConfigFile, twoHosts)
	h.start(h.host.cfg.ConfigFile)
	check := func(what string, gen int64, peers ...string) {
		t.Helper()
		st, _ := h.pass()
		var names []string
		for _, p := range st.Peers {
			names = append(names, p.Name)
		}
		d, err := h.store.Desired()
		if err != nil || d == nil || st.Generation != gen || d.Generation != gen || !slices.Equal(names, peers) {
			t.Fatalf("%s: status generation %d, peers %v; stored desired state %+v, %v; want generation %d and peers %v",
				what, st.Generation, names, d, err, gen, peers)
		}
	}
	check("first pass", 1, "prod")
	renameSave(t, h.host.cfg.ConfigFile, strings.Replace(twoHosts, "substituteFrom: [stage]", "substituteFrom: [stage]\n  - name: qa\n    address: 127.0.0.4\n    substituteFrom: [stage]", 1))
	check("a consumer added", 2, "prod", "qa")
	renameSave(t, h.host.cfg.ConfigFile, twoHosts)
	check("the consumer removed", 3, "prod")
}
