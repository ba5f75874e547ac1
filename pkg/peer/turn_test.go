package peer

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// TestTurns: known peers get at most Turns turns at once; one more waits
// until a turn ends, and gets it then; an anonymous client gets none; a
// turn not ended is ended after TurnHold.
func TestTurns(t *testing.T) {
	key := newSigner(t)
	var known []ssh.Signer
	for range 3 {
		known = append(known, newSigner(t))
	}
	isKnown := func(k ssh.PublicKey) (string, bool) {
		for i, s := range known {
			if bytes.Equal(s.PublicKey().Marshal(), k.Marshal()) {
				return fmt.Sprintf("consumer-%d", i), true
			}
		}
		return "", false
	}
	s := startServer(t, "127.0.0.2:0", key, ServerOptions{Known: isKnown, Turns: 2, TurnHold: time.Minute})
	s.publish(validFacts(t, key.PublicKey()))
	dialAs := func(id ssh.Signer) *ssh.Client {
		t.Helper()
		c, err := dial(context.Background(), s.addr, net.ParseIP("127.0.0.1"), id, pin(key.PublicKey()), wait, false)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	var ends []func()
	for i := range 2 {
		end, err := Turn(context.Background(), dialAs(known[i]))
		if err != nil {
			t.Fatalf("known peer %d got no turn: %v", i, err)
		}
		ends = append(ends, end)
	}

	// A peer that asks again, on another connection, gets its turn there:
	// the one it held ends (its old connection may be dead).
	again, err := Turn(context.Background(), dialAs(known[0]))
	if err != nil {
		t.Fatalf("a peer asking again got no turn: %v", err)
	}
	ends[0] = again

	// A third waits: no turn while two are held.
	third := dialAs(known[2])
	short, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	if _, err := Turn(short, third); err == nil {
		t.Fatal("a third turn was given while two were held")
	}
	cancel()
	got := make(chan error, 1)
	go func() {
		end, err := Turn(context.Background(), third)
		if err == nil {
			end()
		}
		got <- err
	}()
	ends[0]()
	if err := recv(t, got, "the third turn once the first ended"); err != nil {
		t.Fatalf("the third turn: %v", err)
	}

	if _, err := Turn(context.Background(), dialAs(nil)); err == nil {
		t.Error("an anonymous client got a turn")
	}
	ends[1]()
}

// TestTurnHold: a turn its peer does not end is ended by the server after
// TurnHold, and the next peer gets it.
func TestTurnHold(t *testing.T) {
	key, a, b := newSigner(t), newSigner(t), newSigner(t)
	isKnown := func(k ssh.PublicKey) (string, bool) {
		return map[bool]string{true: "consumer-a", false: "consumer-b"}[bytes.Equal(k.Marshal(), a.PublicKey().Marshal())], true
	}
	s := startServer(t, "127.0.0.2:0", key, ServerOptions{Known: isKnown, Turns: 1, TurnHold: 100 * time.Millisecond})
	s.publish(validFacts(t, key.PublicKey()))
	ca, err := dial(context.Background(), s.addr, nil, a, pin(key.PublicKey()), wait, false)
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close()
	if _, err := Turn(context.Background(), ca); err != nil { // never ended
		t.Fatal(err)
	}
	cb, err := dial(context.Background(), s.addr, nil, b, pin(key.PublicKey()), wait, false)
	if err != nil {
		t.Fatal(err)
	}
	defer cb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	end, err := Turn(ctx, cb)
	if err != nil {
		t.Fatalf("the turn held past TurnHold was not given to the next peer: %v", err)
	}
	end()
}

// TestTurnForAPeerKnownSinceItConnected: a peer that connected before the
// server knew it (anonymous) gets a turn once it is known, on the same
// connection.
func TestTurnForAPeerKnownSinceItConnected(t *testing.T) {
	key, late := newSigner(t), newSigner(t)
	var known atomic.Bool
	isKnown := func(k ssh.PublicKey) (string, bool) {
		return "late", known.Load() && bytes.Equal(k.Marshal(), late.PublicKey().Marshal())
	}
	s := startServer(t, "127.0.0.2:0", key, ServerOptions{Known: isKnown})
	s.publish(validFacts(t, key.PublicKey()))
	c, err := dial(context.Background(), s.addr, nil, late, pin(key.PublicKey()), wait, false)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := Turn(context.Background(), c); err == nil {
		t.Fatal("a turn for a peer not known")
	}
	known.Store(true)
	end, err := Turn(context.Background(), c)
	if err != nil {
		t.Fatalf("no turn once known: %v", err)
	}
	end()
}
