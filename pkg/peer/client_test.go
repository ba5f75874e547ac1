package peer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/crypto/ssh"

	"github.com/nixpeer/nixpeer/internal/testenv"
	"github.com/nixpeer/nixpeer/pkg/backoff"
)

func TestWrongHostKeyRefused(t *testing.T) {
	key := newSigner(t)
	s := startServer(t, "127.0.0.3:0", key, ServerOptions{})
	s.publish(validFacts(t, key.PublicKey()))
	other := newSigner(t).PublicKey()

	_, err := Fetch(context.Background(), s.addr, pin(other))
	refused := "host key " + ssh.FingerprintSHA256(key.PublicKey()) + " refused"
	if err == nil || !strings.Contains(err.Error(), refused) {
		t.Fatalf("Fetch with the wrong pin: got %v, want %q", err, refused)
	}
	for _, part := range []string{s.addr, ssh.FingerprintSHA256(key.PublicKey()), ssh.FingerprintSHA256(other)} {
		if !strings.Contains(err.Error(), part) {
			t.Errorf("error %q does not mention %s", err, part)
		}
	}

	w := startWatch(t, s.addr, pin(other), fastWatch)
	for range 3 {
		if err := recv(t, w.errs, "host key error"); err == nil || !strings.Contains(err.Error(), refused) {
			t.Fatalf("Watch with the wrong pin: got %v, want %q", err, refused)
		}
	}
	w.cancel()
	if len(w.facts) != 0 {
		t.Fatal("Watch delivered a document from a peer whose host key it refused")
	}
}

func TestNilHostKeyCheckRefuses(t *testing.T) {
	key := newSigner(t)
	s := startServer(t, "127.0.0.3:0", key, ServerOptions{})
	s.publish(validFacts(t, key.PublicKey()))
	if _, err := Fetch(context.Background(), s.addr, nil); err == nil {
		t.Fatal("Fetch without a host key check succeeded")
	}
}

func TestGarbagePeer(t *testing.T) {
	key := newSigner(t)
	good := validFacts(t, key.PublicKey())
	encode := func(f Facts) string {
		b, err := encodeFacts(f)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	raw := func(mutate func(m string) string) string { return mutate(encode(good)) }
	badKey := good
	badKey.HostKeys = []string{"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGarbage"}
	privKey := privateKeyPEM(t)

	tests := []struct {
		name   string
		output string
		want   string // in the error
	}{
		{"not json", "hello, world\n", "not a JSON object"},
		{"html", "<html><body>502</body></html>\n", "not a JSON object"},
		{"binary", "\x00\x01\x02\xff\n", "not a JSON object"},
		{"oversized", strings.Repeat("a", 2<<20) + "\n", "document too large"},
		{"oversized json", `{"version":1,"name":"` + strings.Repeat("a", 2<<20) + "\"}\n", "document too large"},
		{"wrong version", raw(func(m string) string { return strings.Replace(m, `"version":1`, `"version":2`, 1) }), "version 2 is not supported"},
		{"no version", raw(func(m string) string { return strings.Replace(m, `"version":1,`, ``, 1) }), "no version"},
		{"bad key", encodeUnchecked(t, badKey), "hostKeys[0]"},
		{"private key", raw(func(m string) string {
			return strings.Replace(m, `"name":"stage"`, `"name":`+jsonString(privKey), 1)
		}), "name holds private key material"},
		{"unknown field", raw(func(m string) string { return strings.Replace(m, `"ready":`, `"admin":true,"ready":`, 1) }), `unknown field "admin"`},
		{"cut off", strings.TrimSuffix(encode(good), "\n"), "cut off"},
		{"nothing", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr, hostKey := fakePeer(t, "127.0.0.3:0", func(cmd string, ch ssh.Channel) {
				io.WriteString(ch, tt.output)
				if cmd == cmdWatch && strings.HasSuffix(tt.output, "\n") {
					// Then keepalives, as a live peer would, so that
					// only the garbage can end the connection.
					io.WriteString(ch, "{}\n{}\n")
					ch.CloseWrite()
					io.Copy(io.Discard, ch)
				}
			})
			_, err := Fetch(context.Background(), addr, pin(hostKey.PublicKey()))
			checkErr(t, "Fetch", err, addr, tt.want)

			w := startWatch(t, addr, pin(hostKey.PublicKey()), fastWatch)
			checkErr(t, "Watch", recv(t, w.errs, "watch error"), addr, tt.want)
			w.cancel()
			if len(w.facts) != 0 {
				t.Errorf("Watch delivered %+v", <-w.facts)
			}
		})
	}
}

func checkErr(t *testing.T, what string, err error, addr, want string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s succeeded, want an error", what)
	}
	if !strings.Contains(err.Error(), addr) || !strings.Contains(err.Error(), want) {
		t.Errorf("%s: got %q, want an error naming %s and saying %q", what, err, addr, want)
	}
	if strings.Contains(err.Error(), "PRIVATE KEY") || strings.Contains(err.Error(), "b3BlbnNzaC1rZXktdjE") {
		t.Errorf("%s error quotes private key material: %v", what, err)
	}
}

func TestNotSSHPeer(t *testing.T) {
	ln := listen(t, "127.0.0.3:0")
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, "HTTP/1.1 400 Bad Request\r\n\r\n"+strings.Repeat("junk", 1000))
			c.Close()
		}
	}()
	_, err := Fetch(context.Background(), ln.Addr().String(), pin(newSigner(t).PublicKey()))
	checkErr(t, "Fetch", err, ln.Addr().String(), "ssh handshake")
	w := startWatch(t, ln.Addr().String(), pin(newSigner(t).PublicKey()), fastWatch)
	checkErr(t, "Watch", recv(t, w.errs, "watch error"), ln.Addr().String(), "ssh handshake")
}

func TestWatchDropsSilentPeer(t *testing.T) {
	key := newSigner(t)
	doc, err := encodeFacts(validFacts(t, key.PublicKey()))
	if err != nil {
		t.Fatal(err)
	}
	hold := make(chan struct{})
	addr, hostKey := fakePeer(t, "127.0.0.3:0", func(cmd string, ch ssh.Channel) {
		ch.Write(doc) // then nothing, not even keepalives
		<-hold
	})
	t.Cleanup(func() { close(hold) })
	opts := fastWatch
	opts.Keepalive = 10 * time.Millisecond
	w := startWatch(t, addr, pin(hostKey.PublicKey()), opts)
	recv(t, w.facts, "document")
	checkErr(t, "Watch", recv(t, w.errs, "silence error"), addr, "no document or keepalive for 30ms")
	recv(t, w.facts, "document after reconnecting")
}

func TestWatchKeepsConnectionWithKeepalives(t *testing.T) {
	key := newSigner(t)
	s := startServer(t, "127.0.0.3:0", key, ServerOptions{Keepalive: 20 * time.Millisecond})
	f := validFacts(t, key.PublicKey())
	s.publish(f)
	opts := fastWatch
	opts.Keepalive = 20 * time.Millisecond
	w := startWatch(t, s.addr, pin(key.PublicKey()), opts)
	recv(t, w.facts, "document")
	// Many keepalive intervals later, a change arrives on the same
	// connection: no error came in between.
	for range 20 {
		f.Generation++
		s.publish(f)
		if got := recv(t, w.facts, "document"); got.Generation != f.Generation {
			t.Fatalf("got generation %d, want %d", got.Generation, f.Generation)
		}
	}
	if len(w.errs) != 0 {
		t.Fatalf("Watch reported %v on a live connection", <-w.errs)
	}
}

func TestWatchPeerUpLater(t *testing.T) {
	// Find a free address, and leave it closed for now.
	ln := listen(t, "127.0.0.4:0")
	addr := ln.Addr().String()
	ln.Close()

	key := newSigner(t)
	w := startWatch(t, addr, pin(key.PublicKey()), fastWatch)
	checkErr(t, "Watch", recv(t, w.errs, "connect error"), addr, "connection refused")

	s := startServer(t, addr, key, ServerOptions{})
	want := validFacts(t, key.PublicKey())
	s.publish(want)
	if diff := cmp.Diff(recv(t, w.facts, "document"), stranger(want)); diff != "" {
		t.Errorf("mismatch (-got +want):\n%s", diff)
	}
}

// TestWatchSeesThePeerComeBack: while nothing listens at the peer's
// address, its port is tried every Light, so the watch is back as soon as
// the peer is, although the backoff has reached an hour.
func TestWatchSeesThePeerComeBack(t *testing.T) {
	ln := listen(t, "127.0.0.4:0")
	addr := ln.Addr().String()
	ln.Close()
	key := newSigner(t)
	opts := WatchOptions{Backoff: backoff.Policy{Base: time.Hour, Cap: time.Hour}, Light: 20 * time.Millisecond}
	w := startWatch(t, addr, pin(key.PublicKey()), opts)
	checkErr(t, "Watch", recv(t, w.errs, "connect error"), addr, "connection refused")

	s := startServer(t, addr, key, ServerOptions{})
	want := validFacts(t, key.PublicKey())
	s.publish(want)
	if diff := cmp.Diff(recv(t, w.facts, "document"), stranger(want)); diff != "" {
		t.Errorf("mismatch (-got +want):\n%s", diff)
	}

	// Not when the peer answers but the watch fails further on (here: its
	// host key is not the one pinned): the backoff holds.
	other := startWatch(t, addr, pin(newSigner(t).PublicKey()), opts)
	checkErr(t, "Watch", recv(t, other.errs, "host key error"), addr, "host key")
	select {
	case err := <-other.errs:
		t.Fatalf("a second attempt within the hour's backoff: %v", err)
	case <-time.After(10 * opts.Light):
	}
}

func TestWatchReconnectsAfterRestart(t *testing.T) {
	key := newSigner(t)
	s1 := startServer(t, "127.0.0.4:0", key, ServerOptions{})
	f1 := validFacts(t, key.PublicKey())
	s1.publish(f1)
	w := startWatch(t, s1.addr, pin(key.PublicKey()), fastWatch)
	if diff := cmp.Diff(recv(t, w.facts, "first document"), stranger(f1)); diff != "" {
		t.Errorf("mismatch (-got +want):\n%s", diff)
	}

	if err := s1.stop(); err != nil {
		t.Fatal(err)
	}
	checkErr(t, "Watch", recv(t, w.errs, "error when the peer went away"), s1.addr, "")
	s2 := startServer(t, s1.addr, key, ServerOptions{})
	f2 := f1
	f2.Generation, f2.Ready = 4, false
	s2.publish(f2)
	if diff := cmp.Diff(recv(t, w.facts, "document after the restart"), stranger(f2)); diff != "" {
		t.Errorf("mismatch (-got +want):\n%s", diff)
	}
}

func TestFetchHonoursContext(t *testing.T) {
	// A peer that accepts TCP and never says anything.
	ln := listen(t, "127.0.0.3:0")
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := Fetch(ctx, ln.Addr().String(), pin(newSigner(t).PublicKey()))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Fetch from a mute peer: got %v, want the context's deadline", err)
	}
}

func TestLineReader(t *testing.T) {
	tests := []struct {
		in      string
		want    []string
		wantErr string
	}{
		{"a\nbb\n", []string{"a", "bb"}, "EOF"},
		{"\n", []string{""}, "EOF"},
		{"12345\n", []string{"12345"}, "EOF"},
		{"123456\n", nil, "document too large"},
		{"12345", nil, "cut off"},
		{"123456", nil, "document too large"},
		{"a\n" + strings.Repeat("x", 1<<20), []string{"a"}, "document too large"},
	}
	for _, tt := range tests {
		r := newLineReader(strings.NewReader(tt.in), 5)
		var got []string
		var err error
		for {
			var l []byte
			if l, err = r.next(); err != nil {
				break
			}
			got = append(got, string(l))
		}
		if diff := cmp.Diff(got, tt.want); diff != "" {
			t.Errorf("%.20q: lines mismatch (-got +want):\n%s", tt.in, diff)
		}
		if !strings.Contains(fmt.Sprint(err), tt.wantErr) {
			t.Errorf("%.20q: error %v, want %q", tt.in, err, tt.wantErr)
		}
	}
}

// TestWatchReconnectSchedule: Watch waits Backoff's delays between
// attempts on its clock, here synctest's fake time, so the schedule is
// exact and takes no real time. The connects go to a real closed port:
// they fail at once, so nothing waits on the network for long.
func TestWatchReconnectSchedule(t *testing.T) {
	addr := net.JoinHostPort("127.0.0.4", strconv.Itoa(testenv.FreePort(t, "127.0.0.4")))
	check := pin(newSigner(t).PublicKey())
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		opts := WatchOptions{Backoff: backoff.Policy{Base: time.Second, Cap: 4 * time.Second}, Rand: func() float64 { return 0 }, Light: -1}
		start := time.Now()
		var at []time.Duration
		done := make(chan struct{})
		go func() {
			defer close(done)
			Watch(ctx, addr, check, opts, func(Facts) error { return nil }, func(err error) {
				if !strings.Contains(err.Error(), "connection refused") {
					t.Errorf("attempt %d: %v, want connection refused", len(at)+1, err)
				}
				at = append(at, time.Since(start))
			})
		}()
		time.Sleep(10 * time.Second)
		cancel()
		<-done
		// Waits of 0.5s, 1s, 2s, then 2s (the cap of 4s, halved by r = 0).
		want := []time.Duration{0, 500 * time.Millisecond, 1500 * time.Millisecond, 3500 * time.Millisecond,
			5500 * time.Millisecond, 7500 * time.Millisecond, 9500 * time.Millisecond}
		if diff := cmp.Diff(at, want); diff != "" {
			t.Errorf("attempts at (-got +want):\n%s", diff)
		}
	})
}
