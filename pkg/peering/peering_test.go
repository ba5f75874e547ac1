package peering

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"golang.org/x/crypto/ssh"

	"github.com/nixpeer/nixpeer/pkg/backoff"
	"github.com/nixpeer/nixpeer/pkg/peer"
	"github.com/nixpeer/nixpeer/pkg/sshkeys"
	"github.com/nixpeer/nixpeer/pkg/state"
	"github.com/nixpeer/nixpeer/pkg/status"
)

const addr = "127.0.0.4"

func newSigner(t *testing.T) ssh.Signer {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// servePeer runs a peer port for host "stage" on addr with key, and
// returns its "host:port".
func servePeer(t *testing.T, p *Port, listen string, key ssh.Signer) {
	if err := p.Ensure(listen, key, nil); err != nil {
		t.Fatal(err)
	}
	p.Publish(peer.Facts{Version: peer.FactsVersion, Name: "stage", Address: addr, Generation: 1,
		HostKeys: []string{keyLine(key.PublicKey())}})
}

// fixture is a context, a store, a free peer-port address and a port that
// serves nothing yet; all end with the test.
func fixture(t *testing.T) (context.Context, context.CancelFunc, *state.Store, string, *Port) {
	ctx, cancel := context.WithCancel(context.Background())
	store := openStore(t)
	port := NewPort(ctx, zaptest.NewLogger(t), peer.ServerOptions{}, func(string) {})
	t.Cleanup(port.Close)
	return ctx, cancel, store, freeAddr(t), port
}

func openStore(t *testing.T) *state.Store {
	store, _, err := state.Open(filepath.Join(t.TempDir(), "state.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	return store
}

func freeAddr(t *testing.T) string { return freeAddrOn(t, addr) }

// freeAddrOn is a free "host:port" on ip.
func freeAddrOn(t *testing.T, ip string) string {
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// manager returns a manager on store and a function that waits, with a
// deadline, until what it knows of "stage" satisfies cond.
func manager(t *testing.T, ctx context.Context, store *state.Store) (*Manager, func(string, func(State) bool) State) {
	m, wait := managerWith(t, ctx, store, peer.WatchOptions{})
	return m, func(what string, cond func(State) bool) State { return wait("stage", what, cond) }
}

// managerWith returns a manager on store that reconnects quickly, and a
// function that waits, with a deadline, until what it knows of peer name
// satisfies cond.
func managerWith(t *testing.T, ctx context.Context, store *state.Store, opts peer.WatchOptions) (*Manager, func(name, what string, cond func(State) bool) State) {
	changed := make(chan struct{}, 1)
	opts.Backoff = backoff.Policy{Base: 10 * time.Millisecond, Cap: 50 * time.Millisecond}
	m := New(ctx, zaptest.NewLogger(t), store, opts,
		func(string) {
			select {
			case changed <- struct{}{}:
			default:
			}
		})
	wait := func(name, what string, cond func(State) bool) State {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			st, _ := stateOf(m, name)
			if cond(st) {
				return st
			}
			select {
			case <-changed:
			case <-deadline:
				t.Fatalf("waiting for %s: last state %+v", what, st)
			}
		}
	}
	return m, wait
}

func TestTrustOnFirstUseThenChangeThenReset(t *testing.T) {
	ctx, cancel, store, listen, port := fixture(t)
	defer cancel()
	a, b := newSigner(t), newSigner(t)
	servePeer(t, port, listen, a)
	target := Target{Name: "stage", Address: addr, Addr: listen}

	m, wait := manager(t, ctx, store)
	m.Sync([]Target{target})
	st := wait("facts over a key trusted on first use", func(s State) bool { return s.Facts != nil })
	if st.Trust != status.TrustTOFU || !sameKey(st.HostKey, a.PublicKey()) || !st.Connected {
		t.Fatalf("after first contact: %+v", st)
	}

	// A restarted agent knows the peer before it answers.
	ctx2, cancel2 := context.WithCancel(ctx)
	m2, _ := manager(t, ctx2, store)
	m2.Sync([]Target{{Name: "stage", Address: addr, Addr: freeAddr(t)}}) // nobody there
	if st2, _ := stateOf(m2, "stage"); st2.Facts == nil || !sameKey(st2.HostKey, a.PublicKey()) || st2.Connected {
		t.Fatalf("after a restart: %+v", st2)
	}
	cancel2()
	m2.Wait()

	// The peer comes back with another key: refused, facts kept.
	servePeer(t, port, listen, b)
	st = wait("the new key refused", func(s State) bool { return s.Refused != nil })
	if st.Refused.Reason != RefusedChanged || st.Refused.Offered != ssh.FingerprintSHA256(b.PublicKey()) ||
		st.Refused.Trusted != ssh.FingerprintSHA256(a.PublicKey()) || st.Facts == nil || !sameKey(st.HostKey, a.PublicKey()) {
		t.Fatalf("after the key changed: %+v %+v", st, st.Refused)
	}

	if err := m.ResetTrust("stage"); err != nil {
		t.Fatal(err)
	}
	st = wait("the new key trusted after the reset", func(s State) bool { return s.Connected && sameKey(s.HostKey, b.PublicKey()) })
	if st.Refused != nil || st.Trust != status.TrustTOFU {
		t.Fatalf("after the reset: %+v", st)
	}
	if err := m.ResetTrust("nobody"); err == nil {
		t.Fatal("reset of an unknown peer succeeded")
	}

	// A pin wins over what was trusted on first use, and must match.
	m.Sync([]Target{{Name: "stage", Address: addr, Addr: listen, Pin: a.PublicKey()}})
	st = wait("a key other than the pin refused", func(s State) bool { return s.Refused != nil })
	if st.Refused.Reason != RefusedPinMismatch || st.Trust != status.TrustPinned {
		t.Fatalf("with a pin of the old key: %+v %+v", st, st.Refused)
	}
	cancel()
	m.Wait()
}

func TestPinsRequiredRefusesAnUnpinnedPeer(t *testing.T) {
	ctx, cancel, store, listen, port := fixture(t)
	defer cancel()
	servePeer(t, port, listen, newSigner(t))
	m, wait := manager(t, ctx, store)
	m.Sync([]Target{{Name: "stage", Address: addr, Addr: listen, PinsRequired: true}})
	st := wait("refused", func(s State) bool { return s.Refused != nil })
	if st.Refused.Reason != RefusedNotPinned || st.HostKey != nil || st.Facts != nil {
		t.Fatalf("trust: pinned without a pin: %+v", st)
	}
	var rec record
	if found, _ := store.GetPeer("stage", &rec); found {
		t.Fatalf("an unpinned key was recorded: %+v", rec)
	}
	cancel()
	m.Wait()
}

// TestImpostorIsNotTrustedOnFirstUse: an agent that answers at a peer's
// address under another name is never trusted, so the real peer is not
// refused later.
func TestImpostorIsNotTrustedOnFirstUse(t *testing.T) {
	ctx, cancel, store, listen, port := fixture(t)
	defer cancel()
	impostor := newSigner(t)
	if err := port.Ensure(listen, impostor, nil); err != nil {
		t.Fatal(err)
	}
	port.Publish(peer.Facts{Version: peer.FactsVersion, Name: "prod", Address: addr, HostKeys: []string{keyLine(impostor.PublicKey())}})
	m, wait := manager(t, ctx, store)
	m.Sync([]Target{{Name: "stage", Address: addr, Addr: listen}})
	st := wait("the impostor reported", func(s State) bool { return s.LastError != "" })
	if st.HostKey != nil || st.Trust != status.TrustNone || st.Facts != nil {
		t.Fatalf("an agent calling itself prod is trusted as stage: %+v", st)
	}
	var rec record
	if found, _ := store.GetPeer("stage", &rec); found {
		t.Fatalf("the impostor's key was recorded: %+v", rec)
	}
	// The real peer, later, is trusted.
	servePeer(t, port, listen, newSigner(t))
	wait("the real peer trusted", func(s State) bool { return s.Connected && s.Trust == status.TrustTOFU })
	cancel()
	m.Wait()
}

// TestOtherConsumersCostNothing: a serving peer's facts change each time
// it lets one more consumer in. Only the entry of this host counts: the
// others are dropped, and their coming and going triggers no reconcile
// and no write.
func TestOtherConsumersCostNothing(t *testing.T) {
	ctx, cancel, store, listen, _ := fixture(t)
	defer cancel()
	// This host is a known peer of stage's port: it is told whom stage
	// lets in (an anonymous client is not).
	prodKey := newSigner(t)
	port := NewPort(ctx, zaptest.NewLogger(t), peer.ServerOptions{Known: func(k ssh.PublicKey) (string, bool) {
		return "prod-1", bytes.Equal(k.Marshal(), prodKey.PublicKey().Marshal())
	}}, func(string) {})
	t.Cleanup(port.Close)
	key := newSigner(t)
	if err := port.Ensure(listen, key, nil); err != nil {
		t.Fatal(err)
	}
	cacheKey := "stage-1:" + base64.StdEncoding.EncodeToString(make([]byte, 32))
	entry := func(host string, applied bool) peer.AuthorizedFact {
		return peer.AuthorizedFact{Host: host, Fingerprint: ssh.FingerprintSHA256(newSigner(t).PublicKey()), Applied: applied}
	}
	mine := entry("prod-1", false)
	publish := func(gen int64, authorized ...peer.AuthorizedFact) {
		port.Publish(peer.Facts{Version: peer.FactsVersion, Name: "stage", Address: addr, Generation: gen,
			HostKeys: []string{keyLine(key.PublicKey())},
			Serve:    &peer.ServeFacts{Protocol: "ssh", CacheKey: cacheKey, Authorized: authorized}})
	}
	publish(1, entry("prod-0", true), mine)

	var mu sync.Mutex
	notified := 0
	m := New(ctx, zaptest.NewLogger(t), store, peer.WatchOptions{Backoff: backoff.Policy{Base: 10 * time.Millisecond, Cap: 50 * time.Millisecond}},
		func(string) { mu.Lock(); notified++; mu.Unlock() })
	m.SetIdentity(prodKey)
	m.Sync([]Target{{Name: "stage", Address: addr, Addr: listen, Self: "prod-1"}})
	wait := func(what string, cond func(State) bool) State {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			st, _ := stateOf(m, "stage")
			if cond(st) {
				return st
			}
			if time.Now().After(deadline) {
				t.Fatalf("waiting for %s: last state %+v", what, st)
			}
			time.Sleep(5 * time.Millisecond) // polled: the manager has no event for generation-only changes
		}
	}
	first := wait("the first facts", func(s State) bool { return s.Facts != nil && s.Facts.Generation == 1 })
	if got := first.Facts.Serve.Authorized; len(got) != 1 || got[0] != mine {
		t.Fatalf("kept %+v, want this host's entry alone", got)
	}
	// The first facts are reported once; the report follows the state.
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := notified
		mu.Unlock()
		if n == 1 {
			break
		}
		if n > 1 || time.Now().After(deadline) {
			t.Fatalf("the first facts were reported %d times, want once", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	before := 1

	// Others come and go.
	publish(2, entry("prod-0", true), mine, entry("prod-2", false))
	publish(3, mine, entry("prod-2", true), entry("prod-3", false))
	st := wait("facts of generation 3", func(s State) bool { return s.Facts.Generation == 3 })
	mu.Lock()
	after := notified
	mu.Unlock()
	if !st.FactsAt.Equal(first.FactsAt) || after != before {
		t.Errorf("other consumers changed the facts that matter: FactsAt %v -> %v, notified %d -> %d", first.FactsAt, st.FactsAt, before, after)
	}

	// This host's own entry changes: that matters.
	mine.Applied = true
	publish(4, mine, entry("prod-2", true))
	st = wait("this host's entry applied", func(s State) bool {
		return len(s.Facts.Serve.Authorized) == 1 && s.Facts.Serve.Authorized[0].Applied
	})
	if !st.FactsAt.After(first.FactsAt) {
		t.Errorf("FactsAt did not move when this host's entry changed: %v", st.FactsAt)
	}
	cancel()
	m.Wait()
}

// TestRecovered: only facts saying that the peer's sshd serves again,
// after facts saying it did not, mark a recovery.
func TestRecovered(t *testing.T) {
	facts := func(c *peer.ServeCheck) *peer.Facts {
		return &peer.Facts{Serve: &peer.ServeFacts{Check: c}}
	}
	up, down := &peer.ServeCheck{Serving: true}, &peer.ServeCheck{Reason: "refused"}
	for _, c := range []struct {
		name   string
		before *peer.Facts
		now    *peer.Facts
		want   bool
	}{
		{"down, then up", facts(down), facts(up), true},
		{"first facts", nil, facts(up), false},
		{"no check, then up", facts(nil), facts(up), false},
		{"up, then up", facts(up), facts(up), false},
		{"up, then down", facts(up), facts(down), false},
		{"down, then no check", facts(down), facts(nil), false},
		{"down, then not serving at all", facts(down), &peer.Facts{}, false},
	} {
		if got := recovered(c.before, *c.now); got != c.want {
			t.Errorf("%s: recovered = %v, want %v", c.name, got, c.want)
		}
	}
}

// stateOf is what m knows of peer name, whatever the target it watches.
func stateOf(m *Manager, name string) (State, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	w, ok := m.peers[name]
	if !ok {
		return State{}, false
	}
	return w.st, true
}

// TestGetOnlyForTheWatchedTarget: a pass asking with a target the last
// Sync did not have (here, a pin that changed) sees nothing of the watch.
func TestGetOnlyForTheWatchedTarget(t *testing.T) {
	ctx, cancel, store, listen, _ := fixture(t)
	defer cancel()
	m, _ := manager(t, ctx, store)
	target := Target{Name: "stage", Address: addr, Addr: listen}
	m.Sync([]Target{target})
	if _, ok := m.Get(target); !ok {
		t.Fatal("Get of the watched target found nothing")
	}
	pinned := target
	pinned.Pin = newSigner(t).PublicKey()
	if _, ok := m.Get(pinned); ok {
		t.Fatal("Get with another pin than the watch's found the watch's state")
	}
	remembered := target
	remembered.Remembered = newSigner(t).PublicKey()
	if _, ok := m.Get(remembered); !ok {
		t.Fatal("Get with only another remembered key found nothing: Sync takes it up in place")
	}
	cancel()
	m.Wait()
}

// TestCertifiedTrustHoldsOnlyWhileItsCAAndCertificateDo: a key stored as
// certified is trusted again at a restart (its facts with it) only with
// trust: ca, its CA still listed and its certificate not ended; otherwise
// nothing of it is trusted.
func TestCertifiedTrustHoldsOnlyWhileItsCAAndCertificateDo(t *testing.T) {
	ca, other, host := newSigner(t), newSigner(t), newSigner(t)
	facts := &peer.Facts{Name: "stage", Address: addr}
	for _, c := range []struct {
		name    string
		target  Target
		until   time.Time
		trusted bool
	}{
		{"its CA listed", Target{RequireCert: true, CAs: []ssh.PublicKey{ca.PublicKey()}}, time.Now().Add(time.Hour), true},
		{"no end", Target{RequireCert: true, CAs: []ssh.PublicKey{other.PublicKey(), ca.PublicKey()}}, time.Time{}, true},
		{"its CA no longer listed", Target{RequireCert: true, CAs: []ssh.PublicKey{other.PublicKey()}}, time.Now().Add(time.Hour), false},
		{"its certificate ended", Target{RequireCert: true, CAs: []ssh.PublicKey{ca.PublicKey()}}, time.Now().Add(-time.Minute), false},
		{"trust: approve now", Target{Approve: true}, time.Now().Add(time.Hour), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel, store, _, _ := fixture(t)
			defer cancel()
			if err := store.PutPeer("stage", record{HostKey: keyLine(host.PublicKey()), Trust: status.TrustCertified,
				CA: fingerprint(ca.PublicKey()), Until: c.until, Facts: facts, FactsAt: time.Now()}); err != nil {
				t.Fatal(err)
			}
			m, _ := manager(t, ctx, store)
			target := c.target
			target.Name, target.Address, target.Addr = "stage", addr, freeAddr(t) // nobody there
			m.Sync([]Target{target})
			st, _ := m.Get(target)
			if got := st.HostKey != nil && st.Trust == status.TrustCertified && st.Facts != nil; got != c.trusted {
				t.Fatalf("trusted %v (%+v), want %v", got, st, c.trusted)
			}
			if !c.trusted && (st.HostKey != nil || st.Facts != nil) {
				t.Fatalf("something of the certified key is still trusted: %+v", st)
			}
			cancel()
			m.Wait()
		})
	}
}

// TestHostKeyHandover: a peer whose trusted key hands its name over to a
// next key, in facts over a connection of the trusted key, is trusted
// under the next key once it shows it, as it was trusted before; a key
// without that proof, or with a proof of another key, is refused still.
func TestHostKeyHandover(t *testing.T) {
	ctx, cancel, store, listen, port := fixture(t)
	defer cancel()
	a, b, c := newSigner(t), newSigner(t), newSigner(t)
	publish := func(key ssh.Signer, next ssh.PublicKey, proofBy ssh.Signer) {
		f := peer.Facts{Version: peer.FactsVersion, Name: "stage", Address: addr, Generation: 1, HostKeys: []string{keyLine(key.PublicKey())}}
		if next != nil {
			proof, err := sshkeys.HandoverProof(proofBy, "stage", addr, next)
			if err != nil {
				t.Fatal(err)
			}
			f.NextHostKey, f.NextHostKeyProof = keyLine(next), proof
		}
		if err := port.Ensure(listen, key, nil); err != nil {
			t.Fatal(err)
		}
		port.Publish(f)
	}
	publish(a, nil, nil)
	m, wait := manager(t, ctx, store)
	m.Sync([]Target{{Name: "stage", Address: addr, Addr: listen, Approve: true, Remembered: a.PublicKey()}})
	wait("a trusted", func(s State) bool { return s.Connected && sameKey(s.HostKey, a.PublicKey()) })

	// A proof by another key than the trusted one hands nothing over.
	publish(a, c.PublicKey(), b)
	st := wait("facts with a forged handover", func(s State) bool { return s.Facts != nil && s.Facts.NextHostKey != "" })
	if st.NextHostKey != nil {
		t.Fatalf("a handover signed by another key accepted: %+v", st)
	}
	// Signed by the trusted key: the next key is accepted beside it...
	publish(a, b.PublicKey(), a)
	st = wait("the handover accepted", func(s State) bool { return s.NextHostKey != nil })
	if !sameKey(st.NextHostKey, b.PublicKey()) || !sameKey(st.HostKey, a.PublicKey()) {
		t.Fatalf("after the handover: %+v", st)
	}
	if name, ok := m.Known(b.PublicKey()); !ok || name != "stage" {
		t.Fatalf("the next key is not known as stage's: %q %v", name, ok)
	}
	// ...and trusted in its place once the peer shows it, though this
	// host's files still remember the old one.
	publish(b, nil, nil)
	st = wait("the next key trusted", func(s State) bool { return s.Connected && sameKey(s.HostKey, b.PublicKey()) })
	if st.Refused != nil || st.Trust != status.TrustApproved && st.Trust != status.TrustTOFU || st.NextHostKey != nil {
		t.Fatalf("after the peer showed its next key: %+v", st)
	}
	// A new connection shows it again before the files remember it.
	port.Close()
	port = NewPort(ctx, zaptest.NewLogger(t), peer.ServerOptions{}, func(string) {})
	t.Cleanup(port.Close)
	publish(b, nil, nil)
	before := st.Since
	st = wait("the next key trusted again", func(s State) bool { return s.Connected && s.Since.After(before) && sameKey(s.HostKey, b.PublicKey()) })
	if st.Refused != nil {
		t.Fatalf("a reconnection refused the handed over key: %+v", st.Refused)
	}
	// Stored: a restarted agent trusts it.
	ctx2, cancel2 := context.WithCancel(ctx)
	m2, _ := manager(t, ctx2, store)
	m2.Sync([]Target{{Name: "stage", Address: addr, Addr: freeAddr(t), Approve: true}})
	if st2, _ := stateOf(m2, "stage"); !sameKey(st2.HostKey, b.PublicKey()) {
		t.Fatalf("after a restart: %+v", st2)
	}
	cancel2()
	m2.Wait()
	// A key nobody handed over to is refused, as ever.
	publish(c, nil, nil)
	st = wait("a key without a handover refused", func(s State) bool { return s.Refused != nil })
	if st.Refused.Reason != RefusedChanged || !sameKey(st.HostKey, b.PublicKey()) {
		t.Fatalf("a key without a handover: %+v %+v", st, st.Refused)
	}
	cancel()
	m.Wait()
}
