package peer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"golang.org/x/crypto/ssh"
)

func decodeLine(t *testing.T, line string) Facts {
	t.Helper()
	f, err := DecodeFacts([]byte(line))
	if err != nil {
		t.Fatalf("decode %q: %v", line, err)
	}
	return f
}

func TestFactsRoundTrip(t *testing.T) {
	key := newSigner(t)
	s := startServer(t, "127.0.0.2:0", key, ServerOptions{})
	want := validFacts(t, key.PublicKey())
	s.publish(want)

	got, err := Fetch(context.Background(), s.addr, pin(key.PublicKey()))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(got, stranger(want)); diff != "" {
		t.Errorf("Fetch mismatch (-got +want):\n%s", diff)
	}

	// What a plain SSH client sees: one line, exit status 0.
	c, err := sshClient(t, s.addr, key.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	out, err := sess.Output("facts")
	if err != nil {
		t.Fatalf("facts: %v", err)
	}
	if n := strings.Count(string(out), "\n"); n != 1 || !strings.HasSuffix(string(out), "\n") {
		t.Errorf("facts output has %d newlines, want one at the end: %q", n, out)
	}
}

func TestFetchBeforePublish(t *testing.T) {
	key := newSigner(t)
	s := startServer(t, "127.0.0.2:0", key, ServerOptions{})
	_, err := Fetch(context.Background(), s.addr, pin(key.PublicKey()))
	if err == nil || !strings.Contains(err.Error(), "no facts published yet") || !strings.Contains(err.Error(), s.addr) {
		t.Fatalf("Fetch before Publish: got %v, want an error naming the peer and saying no facts are published", err)
	}
}

func TestWatchGetsCurrentAndNewDocuments(t *testing.T) {
	key := newSigner(t)
	s := startServer(t, "127.0.0.2:0", key, ServerOptions{Keepalive: time.Hour})
	f1 := validFacts(t, key.PublicKey())
	s.publish(f1)
	c, err := sshClient(t, s.addr, key.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	lines := readLines(t, c, "watch")
	if diff := cmp.Diff(decodeLine(t, recv(t, lines, "first document")), stranger(f1)); diff != "" {
		t.Errorf("first document mismatch (-got +want):\n%s", diff)
	}

	f2 := f1
	f2.Generation, f2.Ready = 4, false
	start := time.Now()
	s.publish(f2)
	if diff := cmp.Diff(decodeLine(t, recv(t, lines, "second document")), stranger(f2)); diff != "" {
		t.Errorf("second document mismatch (-got +want):\n%s", diff)
	}
	t.Logf("document arrived %v after Publish", time.Since(start))

	// Publishing the same document again sends nothing: the next line is
	// the next change.
	s.publish(f2)
	f3 := f2
	f3.ObservedGeneration = 4
	s.publish(f3)
	if diff := cmp.Diff(decodeLine(t, recv(t, lines, "third document")), stranger(f3)); diff != "" {
		t.Errorf("document after an unchanged Publish mismatch (-got +want):\n%s", diff)
	}
}

func TestWatchBeforePublishWaits(t *testing.T) {
	key := newSigner(t)
	s := startServer(t, "127.0.0.2:0", key, ServerOptions{Keepalive: time.Hour})
	c, err := sshClient(t, s.addr, key.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	lines := readLines(t, c, "watch")
	f := validFacts(t, key.PublicKey())
	s.publish(f)
	if diff := cmp.Diff(decodeLine(t, recv(t, lines, "document")), stranger(f)); diff != "" {
		t.Errorf("mismatch (-got +want):\n%s", diff)
	}
}

func TestWatchKeepalives(t *testing.T) {
	key := newSigner(t)
	// The idle timeout is shorter than the keepalives take: an open watch
	// is not idle.
	s := startServer(t, "127.0.0.2:0", key, ServerOptions{Keepalive: 10 * time.Millisecond, IdleTimeout: 20 * time.Millisecond})
	s.publish(validFacts(t, key.PublicKey()))
	c, err := sshClient(t, s.addr, key.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	lines := readLines(t, c, "watch")
	recv(t, lines, "document")
	for i := range 5 {
		if l := recv(t, lines, "keepalive"); l != "{}" {
			t.Fatalf("line %d after the document is %q, want a keepalive {}", i, l)
		}
	}
}

func TestSlowWatcherBlocksNobody(t *testing.T) {
	key := newSigner(t)
	s := startServer(t, "127.0.0.2:0", key, ServerOptions{Keepalive: time.Hour})
	// About 45 kB per document; an anonymous watcher, as here, is not
	// told whom the host lets in: about 25 kB.
	big := validFacts(t, key.PublicKey())
	for len(big.HostKeys) < maxListLen {
		big.HostKeys = append(big.HostKeys, keyLine(newSigner(t).PublicKey()))
	}
	for len(big.Serve.Authorized) < maxListLen {
		big.Serve.Authorized = append(big.Serve.Authorized, AuthorizedFact{
			Host: fmt.Sprintf("h%d", len(big.Serve.Authorized)), Fingerprint: big.Serve.Authorized[0].Fingerprint})
	}
	s.publish(big)

	// A watcher that does not read its output until the end.
	slowClient, err := sshClient(t, s.addr, key.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	sess, err := slowClient.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	slowOut, err := sess.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := sess.Start("watch"); err != nil {
		t.Fatal(err)
	}
	fast, err := sshClient(t, s.addr, key.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	lines := readLines(t, fast, "watch")
	recv(t, lines, "first document")

	// About 3 MB of documents: more than the slow watcher's channel
	// window (2 MB), so its writer is stuck; Publish and the other
	// watcher must not be.
	const publishes = 120
	done := make(chan struct{})
	last := big
	last.Generation = publishes
	lastDoc, err := encodeFacts(stranger(last)) // as the anonymous watchers see it
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(done)
		f := big
		for i := range publishes {
			f.Generation = int64(i + 1)
			s.Publish(f)
		}
	}()
	waitClosed(t, done, "Publish calls to return")
	for recv(t, lines, "the last document") != string(lastDoc[:len(lastDoc)-1]) {
	}

	// The slow watcher gets the last document too, having skipped some.
	slow := newLineReader(slowOut, MaxDocumentSize)
	got := make(chan int, 1)
	go func() {
		for n := 1; ; n++ {
			l, err := slow.next()
			if err != nil {
				close(got)
				return
			}
			if string(l) == string(lastDoc[:len(lastDoc)-1]) {
				got <- n
				return
			}
		}
	}()
	if n := recv(t, got, "the last document at the slow watcher"); n >= publishes+1 {
		t.Errorf("the slow watcher read %d documents, all of them; want the ones it missed skipped", n)
	} else {
		t.Logf("the slow watcher read %d of %d documents", n, publishes+1)
	}
}

func TestServerRefuses(t *testing.T) {
	key := newSigner(t)
	s := startServer(t, "127.0.0.2:0", key, ServerOptions{})
	s.publish(validFacts(t, key.PublicKey()))
	c, err := sshClient(t, s.addr, key.PublicKey())
	if err != nil {
		t.Fatal(err)
	}

	// Channels other than session.
	if conn, err := c.Dial("tcp", "127.0.0.1:22"); err == nil {
		conn.Close()
		t.Error("direct-tcpip channel was accepted")
	} else if !isRejection(err, ssh.UnknownChannelType) {
		t.Errorf("direct-tcpip: got %v, want an unknown channel type rejection", err)
	}
	for _, typ := range []string{"x11", "forwarded-tcpip", "auth-agent@openssh.com", "tun@openssh.com"} {
		if ch, _, err := c.OpenChannel(typ, nil); err == nil {
			ch.Close()
			t.Errorf("%s channel was accepted", typ)
		}
	}

	// Global requests.
	ok, _, err := c.SendRequest("tcpip-forward", true, ssh.Marshal(struct {
		Addr string
		Port uint32
	}{"127.0.0.2", 0}))
	if err != nil || ok {
		t.Errorf("tcpip-forward: ok %v, err %v; want refused", ok, err)
	}
	if ln, err := c.Listen("tcp", "127.0.0.2:0"); err == nil {
		ln.Close()
		t.Error("remote forwarding was accepted")
	}

	// Requests in a session.
	refusals := map[string]func(*ssh.Session) error{
		"pty-req":      func(s *ssh.Session) error { return s.RequestPty("xterm", 24, 80, ssh.TerminalModes{}) },
		"shell":        func(s *ssh.Session) error { return s.Shell() },
		"env":          func(s *ssh.Session) error { return s.Setenv("LANG", "C") },
		"subsystem":    func(s *ssh.Session) error { return s.RequestSubsystem("sftp") },
		"exec id":      func(s *ssh.Session) error { return s.Start("id") },
		"exec facts;":  func(s *ssh.Session) error { return s.Start("facts; id") },
		"exec facts ":  func(s *ssh.Session) error { return s.Start("facts ") },
		"exec FACTS":   func(s *ssh.Session) error { return s.Start("FACTS") },
		"exec (empty)": func(s *ssh.Session) error { return s.Start("") },
	}
	for name, req := range refusals {
		sess, err := c.NewSession()
		if err != nil {
			t.Fatalf("%s: new session: %v", name, err)
		}
		if err := req(sess); err == nil {
			t.Errorf("%s was accepted", name)
		}
		sess.Close()
	}
	// A second exec after the first is refused too.
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if err := sess.Start("watch"); err != nil {
		t.Fatal(err)
	}
	if ok, err := sess.SendRequest("exec", true, ssh.Marshal(struct{ Command string }{"facts"})); ok || err != nil {
		t.Errorf("second exec in a session: ok %v, err %v; want refused", ok, err)
	}
	sess.Close()

	// After all that, the connection still serves.
	sess, err = c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	out, err := sess.Output("facts")
	if err != nil {
		t.Fatalf("facts after refusals: %v", err)
	}
	decodeLine(t, strings.TrimSuffix(string(out), "\n"))
}

func isRejection(err error, reason ssh.RejectionReason) bool {
	var oe *ssh.OpenChannelError
	return errors.As(err, &oe) && oe.Reason == reason
}

func TestSessionsPerConnection(t *testing.T) {
	key := newSigner(t)
	s := startServer(t, "127.0.0.2:0", key, ServerOptions{MaxChannels: 2})
	c, err := sshClient(t, s.addr, key.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	var open []ssh.Channel
	for range 2 {
		ch, _, err := c.OpenChannel("session", nil)
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, ch)
	}
	if _, _, err := c.OpenChannel("session", nil); !isRejection(err, ssh.ResourceShortage) {
		t.Fatalf("third session: got %v, want a resource shortage rejection", err)
	}
	open[0].Close()
	// The server counts the channel as closed once its close is through:
	// retry until then.
	deadline := time.Now().Add(wait)
	for {
		ch, _, err := c.OpenChannel("session", nil)
		if err == nil {
			ch.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no session after one was closed: %v", err)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestMaxConns(t *testing.T) {
	key := newSigner(t)
	s := startServer(t, "127.0.0.2:0", key, ServerOptions{MaxConns: 2})
	s.publish(validFacts(t, key.PublicKey()))
	var clients []*ssh.Client
	for range 2 {
		c, err := sshClient(t, s.addr, key.PublicKey())
		if !served(c, err) { // served: the server counted it
			t.Fatalf("one of the first two connections was not served: %v", err)
		}
		clients = append(clients, c)
	}
	if served(sshClient(t, s.addr, key.PublicKey())) {
		t.Fatal("a third connection was served with MaxConns 2")
	}
	if _, err := Fetch(context.Background(), s.addr, pin(key.PublicKey())); err == nil {
		t.Fatal("Fetch over a third connection succeeded with MaxConns 2")
	}
	clients[0].Close()
	deadline := time.Now().Add(wait)
	for {
		_, err := Fetch(context.Background(), s.addr, pin(key.PublicKey()))
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no connection after one of two was closed: %v", err)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestMaxConnsPerIP: one address cannot take every slot; another address
// still gets in.
func TestMaxConnsPerIP(t *testing.T) {
	key := newSigner(t)
	s := startServer(t, "127.0.0.2:0", key, ServerOptions{MaxConns: 10, MaxConnsPerIP: 2})
	s.publish(validFacts(t, key.PublicKey()))
	from := func(local string) (*ssh.Client, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: wait}
		c, err := d.Dial("tcp", s.addr)
		if err != nil {
			return nil, err
		}
		sc, chans, reqs, err := ssh.NewClientConn(c, s.addr, &ssh.ClientConfig{User: "test", HostKeyCallback: ssh.FixedHostKey(key.PublicKey()), Timeout: wait})
		if err != nil {
			c.Close()
			return nil, err
		}
		cl := ssh.NewClient(sc, chans, reqs)
		t.Cleanup(func() { cl.Close() })
		return cl, nil
	}
	for range 2 {
		// Served: the server counted it (it counts after the handshake).
		if c, err := from("127.0.0.6"); !served(c, err) {
			t.Fatalf("one of the first two connections from one address was not served: %v", err)
		}
	}
	if served(from("127.0.0.6")) {
		t.Fatal("a third connection from one address was served with MaxConnsPerIP 2")
	}
	if _, err := from("127.0.0.7"); err != nil {
		t.Fatalf("another address was refused: %v", err)
	}
}

// served reports whether a client connection is served: a connection
// refused after its handshake is closed at once, and opens no session.
func served(c *ssh.Client, err error) bool {
	if err != nil {
		return false
	}
	sess, err := c.NewSession()
	if err != nil {
		return false
	}
	sess.Close()
	return true
}

// TestKnownPeersHaveRoomOfTheirOwn: with every anonymous slot taken, from
// one address, a known peer from that same address still gets in, as
// many of them as there are; an anonymous one is closed after its
// lifetime.
func TestKnownPeersHaveRoomOfTheirOwn(t *testing.T) {
	key := newSigner(t)
	var known []ssh.Signer
	for range 10 {
		known = append(known, newSigner(t))
	}
	isKnown := func(k ssh.PublicKey) (string, bool) {
		for i, s := range known {
			if bytes.Equal(s.PublicKey().Marshal(), k.Marshal()) {
				return fmt.Sprintf("peer-%d", i), true
			}
		}
		return "", false
	}
	s := startServer(t, "127.0.0.2:0", key, ServerOptions{MaxConns: 2, MaxConnsPerIP: 2, Known: isKnown, AnonymousLifetime: 300 * time.Millisecond})
	s.publish(validFacts(t, key.PublicKey()))
	dialAs := func(id ssh.Signer) (*ssh.Client, error) {
		return dial(context.Background(), s.addr, net.ParseIP("127.0.0.1"), id, pin(key.PublicKey()), wait, false)
	}
	var anonymous []*ssh.Client
	for range 2 {
		c, err := dialAs(nil)
		if !served(c, err) {
			t.Fatalf("an anonymous client was not served: %v", err)
		}
		anonymous = append(anonymous, c)
	}
	if served(dialAs(nil)) {
		t.Fatal("a third anonymous client was served")
	}
	for i, id := range known {
		c, err := dialAs(id)
		if !served(c, err) {
			t.Fatalf("known peer %d, from the address whose anonymous slots are full, was not served: %v", i, err)
		}
		t.Cleanup(func() { c.Close() })
	}
	// The anonymous ones are closed after their lifetime.
	done := make(chan error, 1)
	go func() { done <- anonymous[0].Wait() }()
	select {
	case <-done:
	case <-time.After(wait):
		t.Fatal("an anonymous connection outlived its lifetime")
	}
}

func TestIdleConnectionClosed(t *testing.T) {
	key := newSigner(t)
	s := startServer(t, "127.0.0.2:0", key, ServerOptions{IdleTimeout: 20 * time.Millisecond})
	c, err := sshClient(t, s.addr, key.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	closed := make(chan error, 1)
	go func() { closed <- c.Wait() }()
	recv(t, closed, "the server to close an idle connection")
}

func TestSessionWithoutCommandClosed(t *testing.T) {
	key := newSigner(t)
	s := startServer(t, "127.0.0.2:0", key, ServerOptions{HandshakeTimeout: 20 * time.Millisecond})
	c, err := sshClient(t, s.addr, key.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	ch, reqs, err := c.OpenChannel("session", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	go ssh.DiscardRequests(reqs)
	ended := make(chan error, 1)
	go func() {
		_, err := ch.Read(make([]byte, 1))
		ended <- err
	}()
	recv(t, ended, "the server to close a session that asks for nothing")
}

// TestHandshakeTimeout: a connection that sends nothing is closed by the
// handshake timeout: not before it (then something else closed it), and
// not long after (recv's deadline).
func TestHandshakeTimeout(t *testing.T) {
	key := newSigner(t)
	const timeout = 200 * time.Millisecond
	s := startServer(t, "127.0.0.2:0", key, ServerOptions{HandshakeTimeout: timeout})
	conn := dialRaw(t, s.addr)
	start := time.Now()
	defer func() {
		if took := time.Since(start); took < timeout {
			t.Errorf("closed after %v, before the handshake timeout of %v", took, timeout)
		}
	}()
	ended := make(chan error, 1)
	go func() {
		_, err := conn.Read(make([]byte, 4096)) // the server's version line
		for err == nil {
			_, err = conn.Read(make([]byte, 4096))
		}
		ended <- err
	}()
	recv(t, ended, "the server to close a connection that does not handshake")
}

func TestServeEndsConnections(t *testing.T) {
	key := newSigner(t)
	s := startServer(t, "127.0.0.2:0", key, ServerOptions{Keepalive: time.Hour})
	s.publish(validFacts(t, key.PublicKey()))
	c, err := sshClient(t, s.addr, key.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	lines := readLines(t, c, "watch")
	recv(t, lines, "document")
	if err := s.stop(); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	select {
	case l, ok := <-lines:
		if ok {
			t.Fatalf("got %q after Serve ended, want the watch closed", l)
		}
	case <-time.After(wait):
		t.Fatal("watch still open after Serve ended")
	}
}

func TestPublishInvalidKeepsPrevious(t *testing.T) {
	key := newSigner(t)
	s := startServer(t, "127.0.0.2:0", key, ServerOptions{})
	good := validFacts(t, key.PublicKey())
	s.publish(good)
	bad := good
	bad.Name = "Not A Label"
	s.publish(bad)
	got, err := Fetch(context.Background(), s.addr, pin(key.PublicKey()))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(got, stranger(good)); diff != "" {
		t.Errorf("after an invalid Publish (-got +want):\n%s", diff)
	}
}

// TestPublishedJSONIsPublic checks the encoded documents, as peers see them.
func TestPublishedJSONIsPublic(t *testing.T) {
	key := newSigner(t)
	s := startServer(t, "127.0.0.2:0", key, ServerOptions{})
	f := validFacts(t, key.PublicKey())
	s.publish(f)
	doc := string(s.current(nil))
	for _, field := range []string{`"version":1`, `"hostKeys":["ssh-ed25519 `, `"serve":{"protocol":"ssh-ng"`} {
		if !strings.Contains(doc, field) {
			t.Errorf("document lacks %s: %s", field, doc)
		}
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(doc), &m); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(len(m)); got != "13" {
		t.Errorf("document has %s fields, want 13: %s", got, doc)
	}
	f.Serve = nil
	s.publish(f)
	if doc := string(s.current(nil)); strings.Contains(doc, `"serve"`) {
		t.Errorf("document of a host that does not serve mentions serve: %s", doc)
	}
}

// fakeChannel is a session channel whose writes wait for unblock (nil: they
// return at once). Only Write is implemented.
type fakeChannel struct {
	ssh.Channel
	unblock <-chan struct{}
}

func (c fakeChannel) Write(b []byte) (int, error) {
	if c.unblock == nil {
		return len(b), nil
	}
	<-c.unblock
	return 0, io.EOF
}

// closingConn is a connection that closes closed when it is closed. Only
// Close is implemented.
type closingConn struct {
	ssh.Conn
	closed chan struct{}
}

func (c closingConn) Close() error {
	close(c.closed)
	return nil
}

// TestStallGuard: a write stuck for the timeout closes the connection, on
// the clock the guard is given (synctest's fake time); one that is done in
// time does not.
func TestStallGuard(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		closed := make(chan struct{})
		g := stallGuard{ch: fakeChannel{unblock: closed}, conn: closingConn{closed: closed}, timeout: DefaultIdleTimeout}
		start := time.Now()
		if err := g.write(keepaliveLine); err == nil {
			t.Fatal("a stuck write succeeded")
		}
		if d := time.Since(start); d != DefaultIdleTimeout {
			t.Errorf("a stuck write was ended after %v, want %v", d, DefaultIdleTimeout)
		}
	})
	synctest.Test(t, func(t *testing.T) {
		closed := make(chan struct{})
		g := stallGuard{ch: fakeChannel{}, conn: closingConn{closed: closed}, timeout: DefaultIdleTimeout}
		if err := g.write(keepaliveLine); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * DefaultIdleTimeout)
		synctest.Wait()
		select {
		case <-closed:
			t.Error("a write done in time closed the connection later")
		default:
		}
	})
}

// TestServeFreesItsAddress: once Serve returned, its address can be
// listened on again at once, as a Port does when its key changes. The
// listener's Close could lag behind an Accept that returned: rarely, so
// this tries many times.
func TestServeFreesItsAddress(t *testing.T) {
	key := newSigner(t)
	ln := listen(t, "127.0.0.2:0")
	addr := ln.Addr().String()
	for i := range 2000 {
		s := NewServer(zap.NewNop(), key, ServerOptions{})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- s.Serve(ctx, ln) }()
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("Serve: %v", err)
		}
		var err error
		if ln, err = net.Listen("tcp", addr); err != nil {
			t.Fatalf("listen again after Serve returned, attempt %d: %v", i+1, err)
		}
	}
	ln.Close()
}

// TestAuthorizedOnlyToKnownPeers: whom a serving host lets in (consumers'
// names and key fingerprints) is told to its known peers, each only its
// own entry, and not to anyone who connects.
func TestAuthorizedOnlyToKnownPeers(t *testing.T) {
	key, peerKey, otherKey := newSigner(t), newSigner(t), newSigner(t)
	s := startServer(t, "127.0.0.2:0", key, ServerOptions{Known: func(k ssh.PublicKey) (string, bool) {
		switch {
		case bytes.Equal(k.Marshal(), peerKey.PublicKey().Marshal()):
			return "prod", true
		case bytes.Equal(k.Marshal(), otherKey.PublicKey().Marshal()):
			return "prod2", true
		}
		return "", false
	}})
	want := validFacts(t, key.PublicKey())
	prod2 := AuthorizedFact{Host: "prod2", Fingerprint: ssh.FingerprintSHA256(otherKey.PublicKey()), Applied: true}
	all := want
	serve := *want.Serve
	serve.Authorized = append(slices.Clone(serve.Authorized), prod2)
	all.Serve = &serve
	s.publish(all)

	got, err := Fetch(context.Background(), s.addr, pin(key.PublicKey()))
	if err != nil {
		t.Fatal(err)
	}
	if got.Serve == nil || len(got.Serve.Authorized) != 0 {
		t.Fatalf("an anonymous client was told %+v", got.Serve)
	}
	w := startWatch(t, s.addr, pin(key.PublicKey()), WatchOptions{Identity: func() ssh.Signer { return peerKey }})
	if diff := cmp.Diff(recv(t, w.facts, "document"), want); diff != "" {
		t.Errorf("a known peer's document, its own entry alone (-got +want):\n%s", diff)
	}
	w2 := startWatch(t, s.addr, pin(key.PublicKey()), WatchOptions{Identity: func() ssh.Signer { return otherKey }})
	if got := recv(t, w2.facts, "document"); got.Serve == nil || !slices.Equal(got.Serve.Authorized, []AuthorizedFact{prod2}) {
		t.Errorf("another known peer was told %+v; want its own entry alone", got.Serve)
	}
}

// TestStrangersCannotFillThePeersHandshakes: connections that never
// authenticate, from addresses of no peer, fill every handshake slot of
// strangers; a peer at an address the host peers with still gets in, on
// room of its own, while another stranger does not.
func TestStrangersCannotFillThePeersHandshakes(t *testing.T) {
	key := newSigner(t)
	peerIP := net.ParseIP("127.0.0.7")
	s := startServer(t, "127.0.0.2:0", key, ServerOptions{MaxHandshakes: 4, MaxHandshakesPerIP: 2,
		Reserved: func(ip net.IP) bool { return ip.Equal(peerIP) }})
	s.publish(validFacts(t, key.PublicKey()))
	dialFrom := func(from string) net.Conn {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: wait}
		c, err := d.Dial("tcp", s.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	for _, from := range []string{"127.0.0.50", "127.0.0.50", "127.0.0.51", "127.0.0.51"} {
		dialFrom(from) // says nothing: holds a handshake slot
	}
	// Until the server has counted them, a stranger's connection may still
	// get its SSH banner; once they are, it is closed at once.
	refused := func() bool {
		c := dialFrom("127.0.0.52")
		c.SetReadDeadline(time.Now().Add(wait))
		_, err := c.Read(make([]byte, 1))
		return errors.Is(err, io.EOF)
	}
	deadline := time.Now().Add(wait)
	for !refused() {
		if time.Now().After(deadline) {
			t.Fatal("a stranger still gets in with every handshake slot held")
		}
	}
	w := startWatch(t, s.addr, pin(key.PublicKey()), WatchOptions{LocalIP: peerIP})
	recv(t, w.facts, "the facts, for a peer at a reserved address")
}

func TestSourceOf(t *testing.T) {
	s := NewServer(zaptest.NewLogger(t), newSigner(t), ServerOptions{Reserved: func(ip net.IP) bool { return ip.Equal(net.ParseIP("2001:db8::7")) }})
	conn := func(ip string) net.Conn { return fakeConn{remote: &net.TCPAddr{IP: net.ParseIP(ip), Port: 1}} }
	for _, c := range []struct {
		ip, key  string
		reserved bool
	}{
		{"127.0.0.9", "127.0.0.9", false},
		{"2001:db8::1", "2001:db8::/64", false},
		{"2001:db8::ffff:1234", "2001:db8::/64", false},
		{"2001:db8:0:1::1", "2001:db8:0:1::/64", false},
		{"2001:db8::7", "2001:db8::/64", true},
		{"::ffff:10.0.0.1", "10.0.0.1", false},
	} {
		if got := s.sourceOf(conn(c.ip)); got.key != c.key || got.reserved != c.reserved {
			t.Errorf("sourceOf(%s) = %+v, want %s, reserved %v", c.ip, got, c.key, c.reserved)
		}
	}
}

// fakeConn is a connection from remote.
type fakeConn struct {
	net.Conn
	remote net.Addr
}

func (c fakeConn) RemoteAddr() net.Addr { return c.remote }

// TestOnePeerCannotTakeEveryPeerSlot: a known peer has MaxConnsPerPeer
// connections at most: one more closes its oldest (which may be dead
// without the server knowing); another known peer still gets in.
func TestOnePeerCannotTakeEveryPeerSlot(t *testing.T) {
	key, greedy, other := newSigner(t), newSigner(t), newSigner(t)
	s := startServer(t, "127.0.0.2:0", key, ServerOptions{MaxConnsPerPeer: 2, Known: func(k ssh.PublicKey) (string, bool) {
		return map[bool]string{true: "greedy", false: "other"}[bytes.Equal(k.Marshal(), greedy.PublicKey().Marshal())], true
	}})
	s.publish(validFacts(t, key.PublicKey()))
	connect := func(id ssh.Signer) *ssh.Client {
		c, err := dial(context.Background(), s.addr, nil, id, pin(key.PublicKey()), wait, false)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if _, err := c.NewSession(); err != nil {
			t.Fatal(err)
		}
		return c
	}
	oldest := connect(greedy)
	connect(greedy)
	closed := make(chan error, 1)
	go func() { closed <- oldest.Wait() }()
	connect(greedy)
	select {
	case <-closed:
	case <-time.After(wait):
		t.Fatal("a third connection of a peer with MaxConnsPerPeer 2 left its oldest open")
	}
	connect(other)
}
