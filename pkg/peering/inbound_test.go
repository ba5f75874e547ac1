package peering

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"golang.org/x/crypto/ssh"

	"github.com/nixpeer/nixpeer/pkg/peer"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// prodAddr is the address the consumer "prod" has in the desired state.
const prodAddr = "127.0.0.6"

func prodFacts(key ssh.PublicKey, client ssh.Signer, gen int64) peer.Facts {
	return peer.Facts{Version: peer.FactsVersion, Name: "prod", Address: prodAddr, Generation: gen,
		HostKeys: []string{keyLine(key)}, ClientKey: keyLine(client.PublicKey())}
}

// dialling reports whether m's watch of name connects to it.
func dialling(m *Manager, name string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	w := m.peers[name]
	return w != nil && w.dialing != nil
}

func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("no %s within 10s", what)
	}
	panic("unreachable")
}

// told returns a next function for Told that gives docs, then blocks
// until end is closed, then ends.
func told(end <-chan struct{}, docs ...peer.Facts) func() (peer.Facts, error) {
	return func() (peer.Facts, error) {
		if len(docs) > 0 {
			f := docs[0]
			docs = docs[1:]
			return f, nil
		}
		<-end
		return peer.Facts{}, io.EOF
	}
}

// TestToldStandsInForAWatch: the facts a consumer tells over its own
// connection are taken only with the host key trusted for it, and then
// stand in for a watch of it; anything else is refused, and the consumer
// is watched so that the watch checks the key it offers.
func TestToldStandsInForAWatch(t *testing.T) {
	ctx, cancel, store, _, _ := fixture(t)
	defer cancel()
	prodKey, client := newSigner(t), newSigner(t)
	// prod's peer port: the watch, when it runs, trusts its key on first
	// use and gets its facts.
	// It listens only once the refusals before trust are checked, so
	// that the watch cannot trust it first.
	prodPort := NewPort(ctx, zaptest.NewLogger(t), peer.ServerOptions{}, func(string) {})
	t.Cleanup(prodPort.Close)
	listen := freeAddrOn(t, prodAddr)
	prodPort.Publish(prodFacts(prodKey.PublicKey(), client, 1))

	m, wait := managerWith(t, ctx, store, peer.WatchOptions{})
	target := Target{Name: "prod", Address: prodAddr, Addr: listen, Inbound: true}
	m.Sync([]Target{target, {Name: "stage", Address: addr, Addr: freeAddr(t)}})
	if !dialling(m, "prod") {
		t.Fatal("a consumer whose key is not trusted yet is not watched")
	}
	// Only an Inbound peer tells. A session the test expects refused
	// ends at its second document, so that one taken by mistake fails
	// the test instead of hanging it.
	once := make(chan struct{})
	close(once)
	stageKey := newSigner(t)
	stageFacts := peer.Facts{Version: peer.FactsVersion, Name: "stage", Address: addr, HostKeys: []string{keyLine(stageKey.PublicKey())}}
	if err := m.Told(ctx, stageKey.PublicKey(), told(once, stageFacts)); err == nil {
		t.Error("a peer that is not Inbound told its facts")
	}
	if err := m.Told(ctx, prodKey.PublicKey(), told(once, peer.Facts{Name: "nobody"})); err == nil {
		t.Error("a host nobody watches told its facts")
	}
	// A document that is not valid is refused, and says why.
	invalid := func() (peer.Facts, error) { return peer.Facts{}, fmt.Errorf("%w: no version", peer.ErrInvalidFacts) }
	if err := m.Told(ctx, prodKey.PublicKey(), invalid); !errors.Is(err, peer.ErrInvalidFacts) {
		t.Errorf("an invalid document: %v", err)
	}
	// Before its key is trusted, what it tells is refused.
	if err := m.Told(ctx, prodKey.PublicKey(), told(once, prodFacts(prodKey.PublicKey(), client, 1))); err == nil {
		t.Error("facts told with a key not trusted yet were taken")
	}
	if err := prodPort.Ensure(listen, prodKey, nil); err != nil {
		t.Fatal(err)
	}
	wait("prod", "prod trusted on first use by the watch", func(s State) bool { return s.Connected && s.Trust == status.TrustTOFU })

	// Trusted now: its facts over its own connection are taken, and the
	// watch stops.
	// What prod's port gives a watch is what prod tells, as an agent
	// does.
	end := make(chan struct{})
	newClient := newSigner(t)
	prodPort.Publish(prodFacts(prodKey.PublicKey(), newClient, 3))
	done := make(chan error, 1)
	go func() {
		done <- m.Told(ctx, prodKey.PublicKey(), told(end, prodFacts(prodKey.PublicKey(), client, 2), prodFacts(prodKey.PublicKey(), newClient, 3)))
	}()
	st := wait("prod", "the told facts taken", func(s State) bool {
		return s.Facts != nil && s.Facts.ClientKey == keyLine(newClient.PublicKey()) && !dialling(m, "prod")
	})
	if !st.Connected || st.LastError != "" {
		t.Fatalf("while it tells: %+v", st)
	}
	// Another key, claiming to be prod, is refused and changes nothing;
	// the watch checks what prod's address offers.
	impostor := newSigner(t)
	m.mu.Lock()
	w := m.peers["prod"]
	dialledAt := w.toldDialAt
	m.mu.Unlock()
	if err := m.Told(ctx, impostor.PublicKey(), told(once, prodFacts(impostor.PublicKey(), impostor, 4))); err == nil {
		t.Error("an impostor's facts were taken")
	}
	if st, _ := stateOf(m, "prod"); !sameKey(st.HostKey, prodKey.PublicKey()) || st.Facts.ClientKey != keyLine(newClient.PublicKey()) {
		t.Fatalf("after an impostor told: %+v, facts %+v", st, *st.Facts)
	}
	// (The dial may have found prod's key and stopped already: prod
	// tells.)
	m.mu.Lock()
	started := w.toldDialAt.After(dialledAt)
	m.mu.Unlock()
	if !started {
		t.Error("a refused key did not start the watch that checks it")
	}
	// The watch stops once the peer's own connection tells, as it does
	// again with a new client key.
	end2 := make(chan struct{})
	done2 := make(chan error, 1)
	newer := newSigner(t)
	prodPort.Publish(prodFacts(prodKey.PublicKey(), newer, 5))
	go func() {
		done2 <- m.Told(ctx, prodKey.PublicKey(), told(end2, prodFacts(prodKey.PublicKey(), newer, 5)))
	}()
	wait("prod", "the watch stopped again", func(s State) bool {
		return s.Facts.ClientKey == keyLine(newer.PublicKey()) && !dialling(m, "prod")
	})
	// A document that a dial read before is older than what the peer
	// tells: it does not replace it.
	if err := m.accept(w.ctx, zaptest.NewLogger(t), w, connection{key: prodKey.PublicKey()}, prodFacts(prodKey.PublicKey(), newClient, 3)); err != nil {
		t.Fatal(err)
	}
	if st, _ := stateOf(m, "prod"); st.Facts.Generation != 5 || st.Facts.ClientKey != keyLine(newer.PublicKey()) {
		t.Fatalf("a dial's older document replaced what prod tells: %+v", *st.Facts)
	}

	// Its facts with another address are refused, and end the session.
	wrong := prodFacts(prodKey.PublicKey(), newClient, 6)
	wrong.Address = "127.0.0.7"
	if err := m.Told(ctx, prodKey.PublicKey(), told(once, wrong)); err == nil || !strings.Contains(err.Error(), "desired state has prod at "+prodAddr) {
		t.Errorf("facts with another address: %v", err)
	}

	// Its connections end: it is disconnected once the last has, its
	// facts kept.
	close(end)
	if err := recv(t, done, "the first session's end"); err != nil {
		t.Fatalf("a tell session that ended: %v", err)
	}
	if st, _ := stateOf(m, "prod"); !st.Connected {
		t.Fatalf("disconnected while a session is open: %+v", st)
	}
	close(end2)
	if err := recv(t, done2, "the second session's end"); err != nil {
		t.Fatalf("a tell session that ended: %v", err)
	}
	st = wait("prod", "prod disconnected", func(s State) bool { return !s.Connected })
	if st.Facts == nil || st.Facts.Generation != 5 || !strings.Contains(st.LastError, "connection to this host ended") {
		t.Fatalf("after it left: %+v", st)
	}
	if dialling(m, "prod") {
		t.Error("a consumer that left is dialled: it tells again when it is back")
	}

	// A session open while the peer comes to be watched another way (a
	// Sync with a changed target) ends, so that it tells again.
	done3 := make(chan error, 1)
	prodPort.Publish(prodFacts(prodKey.PublicKey(), newClient, 7))
	go func() {
		done3 <- m.Told(ctx, prodKey.PublicKey(), told(make(chan struct{}), prodFacts(prodKey.PublicKey(), newClient, 7)))
	}()
	wait("prod", "the third session's facts", func(s State) bool { return s.Facts.Generation == 7 })
	changed := target
	changed.Self = "stage"
	m.Sync([]Target{changed})
	if err := recv(t, done3, "the third session's end"); err == nil || !strings.Contains(err.Error(), "watched another way") {
		t.Errorf("a session across a changed target: %v", err)
	}

	// A restarted agent trusts it from the store, and waits for it to tell.
	ctx2, cancel2 := context.WithCancel(ctx)
	m2, _ := managerWith(t, ctx2, store, peer.WatchOptions{})
	m2.Sync([]Target{changed})
	if st, _ := stateOf(m2, "prod"); dialling(m2, "prod") || !sameKey(st.HostKey, prodKey.PublicKey()) {
		t.Errorf("after a restart: dialling %v, %+v", dialling(m2, "prod"), st)
	}
	cancel2()
	m2.Wait()
}

// TestConsumerTellsOverItsWatch: two hosts, each with its peer port and
// its manager. The consumer tells its facts over its watch of the serving
// host; the serving host watches it only until they come.
func TestConsumerTellsOverItsWatch(t *testing.T) {
	ctx, cancel, stageStore, stageListen, stagePort := fixture(t)
	defer cancel()
	stageKey, prodKey, client := newSigner(t), newSigner(t), newSigner(t)

	prodCtx, stopProd := context.WithCancel(ctx)
	defer stopProd()
	prodPort := NewPort(prodCtx, zaptest.NewLogger(t), peer.ServerOptions{}, func(string) {})
	t.Cleanup(prodPort.Close)
	prodListen := freeAddrOn(t, prodAddr)
	prodM, _ := managerWith(t, prodCtx, openStore(t), peer.WatchOptions{Tell: prodPort.Own.Subscribe})
	prodM.SetIdentity(prodKey)
	if err := prodPort.Ensure(prodListen, prodKey, nil); err != nil {
		t.Fatal(err)
	}
	prodPort.Publish(prodFacts(prodKey.PublicKey(), client, 1))

	stageM, wait := managerWith(t, ctx, stageStore, peer.WatchOptions{})
	stagePort.opts.Told, stagePort.opts.Known = stageM.Told, stageM.Known
	servePeer(t, stagePort, stageListen, stageKey)
	stageM.Sync([]Target{{Name: "prod", Address: prodAddr, Addr: prodListen, Inbound: true}})
	prodM.Sync([]Target{{Name: "stage", Address: addr, Addr: stageListen, Tell: true}})

	wait("prod", "prod's facts over its own connection", func(s State) bool {
		return s.Connected && s.Facts != nil && !dialling(stageM, "prod")
	})
	newClient := newSigner(t)
	prodPort.Publish(prodFacts(prodKey.PublicKey(), newClient, 2))
	wait("prod", "prod's new client key", func(s State) bool {
		return s.Facts.ClientKey == keyLine(newClient.PublicKey())
	})
	if dialling(stageM, "prod") {
		t.Error("stage watches prod although prod tells")
	}

	// prod's agent stops: stage sees it leave, and keeps what it told.
	stopProd()
	prodM.Wait()
	st := wait("prod", "prod gone", func(s State) bool { return !s.Connected })
	if st.Facts.ClientKey != keyLine(newClient.PublicKey()) {
		t.Fatalf("after prod left: %+v", st)
	}
}

// TestOwnLeavesOutWhomItLetsIn: what a host tells is its facts without
// its consumers.
func TestOwnLeavesOutWhomItLetsIn(t *testing.T) {
	key := newSigner(t)
	f := prodFacts(key.PublicKey(), newSigner(t), 1)
	f.Serve = &peer.ServeFacts{Protocol: "ssh", CacheKey: "prod-1:" + strings.Repeat("A", 43) + "=",
		Authorized: []peer.AuthorizedFact{{Host: "other", Fingerprint: ssh.FingerprintSHA256(newSigner(t).PublicKey()), Applied: true}}}
	var own peer.Own
	if err := own.Set(f); err != nil {
		t.Fatal(err)
	}
	docs, stop := own.Subscribe()
	defer stop()
	got, err := peer.DecodeFacts(<-docs)
	if err != nil {
		t.Fatal(err)
	}
	if got.Serve == nil || len(got.Serve.Authorized) != 0 || got.ClientKey != f.ClientKey {
		t.Fatalf("told %+v %+v", got, got.Serve)
	}
	bad := f
	bad.Name = "Not A Label"
	if err := own.Set(bad); err == nil {
		t.Error("invalid facts were taken")
	}
}
