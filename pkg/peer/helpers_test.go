package peer

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nixpeer/nixpeer/pkg/backoff"
	"go.uber.org/zap/zaptest"
	"golang.org/x/crypto/ssh"
)

// wait bounds every wait of a test for something that should happen at
// once; nothing sleeps for a fixed time.
const wait = 5 * time.Second

func newSigner(t testing.TB) ssh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func keyLine(k ssh.PublicKey) string {
	return strings.TrimSuffix(string(ssh.MarshalAuthorizedKey(k)), "\n")
}

func cacheKey(t testing.TB, name string) string {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return name + ":" + base64.StdEncoding.EncodeToString(b)
}

// pin accepts exactly want.
func pin(want ssh.PublicKey) HostKeyCheck {
	return func(key ssh.PublicKey) error {
		if !bytes.Equal(key.Marshal(), want.Marshal()) {
			return errors.New("not the pinned key " + ssh.FingerprintSHA256(want))
		}
		return nil
	}
}

// validFacts returns a valid document of a serving host whose host key is
// host.
// stranger is f as an anonymous client gets it: none of the consumers the
// host lets in.
func stranger(f Facts) Facts {
	if f.Serve != nil {
		s := *f.Serve
		s.Authorized = nil
		f.Serve = &s
	}
	return f
}

func validFacts(t testing.TB, host ssh.PublicKey) Facts {
	t.Helper()
	client := newSigner(t).PublicKey()
	prod := newSigner(t).PublicKey()
	return Facts{
		Version:            FactsVersion,
		Name:               "stage",
		Address:            "stage.example.com",
		Generation:         3,
		ObservedGeneration: 3,
		Ready:              true,
		HostKeys:           []string{keyLine(host)},
		ClientKey:          keyLine(client),
		TrustedCacheKeys:   []string{cacheKey(t, "build-1")},
		NextHostKey:        keyLine(newSigner(t).PublicKey()),
		NextHostKeyProof:   "AAAAC3NzaC1lZDI1NTE5AAAAQA==",
		AcceptedHostKeys:   []string{keyLine(prod)},
		Serve: &ServeFacts{
			Protocol:     "ssh-ng",
			CacheKey:     cacheKey(t, "stage-1"),
			NextCacheKey: cacheKey(t, "stage-1-g2"),
			Authorized:   []AuthorizedFact{{Host: "prod", Fingerprint: ssh.FingerprintSHA256(prod), Applied: true}},
		},
	}
}

// listen listens on ip (a loopback address such as 127.0.0.2), port 0
// unless addr gives one.
func listen(t *testing.T, addr string) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// testServer is a Server running on a loopback address.
type testServer struct {
	*Server
	t       *testing.T
	addr    string
	hostKey ssh.Signer
	stop    func() error // ends Serve and returns its error
}

// startServer runs a Server with key on addr ("127.0.0.2:0") until the
// test ends or stop is called.
func startServer(t *testing.T, addr string, key ssh.Signer, opts ServerOptions) *testServer {
	t.Helper()
	ln := listen(t, addr)
	s := NewServer(zaptest.NewLogger(t), key, opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	var once sync.Once
	var serveErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case serveErr = <-done:
			case <-time.After(wait):
				serveErr = errors.New("Serve did not return after its context ended")
			}
		})
		return serveErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Error(err)
		}
	})
	return &testServer{Server: s, t: t, addr: ln.Addr().String(), hostKey: key, stop: stop}
}

// publish publishes f and checks that what the server now gives holds no
// private key: every document a test publishes goes through here.
func (s *testServer) publish(f Facts) {
	s.t.Helper()
	s.Publish(f)
	if doc := s.current(nil); bytes.Contains(doc, []byte("PRIVATE KEY")) {
		s.t.Fatalf("published document holds a private key: %s", doc)
	}
}

// sshClient connects to addr as any client would, checking its host key.
func sshClient(t *testing.T, addr string, host ssh.PublicKey) (*ssh.Client, error) {
	t.Helper()
	c, err := ssh.Dial("tcp", addr, &ssh.ClientConfig{
		User:            "test",
		HostKeyCallback: ssh.FixedHostKey(host),
		Timeout:         wait,
	})
	if err == nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}

// readLines runs cmd in a new session of c and sends its output lines on
// the returned channel, which is closed at the end of the output.
func readLines(t *testing.T, c *ssh.Client, cmd string) <-chan string {
	t.Helper()
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	out, err := sess.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := sess.Start(cmd); err != nil {
		t.Fatalf("start %q: %v", cmd, err)
	}
	lines := make(chan string, 100)
	go func() {
		defer close(lines)
		r := newLineReader(out, 4*MaxDocumentSize)
		for {
			l, err := r.next()
			if err != nil {
				return
			}
			lines <- string(l)
		}
	}()
	return lines
}

// recv returns the next value of ch, failing the test when none comes
// within wait.
func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v, ok := <-ch:
		if !ok {
			t.Fatalf("waiting for %s: channel closed", what)
		}
		return v
	case <-time.After(wait):
		t.Fatalf("no %s within %v", what, wait)
	}
	panic("unreachable")
}

// watcher runs Watch until the test ends and reports on channels.
type watcher struct {
	facts  chan Facts
	errs   chan error
	cancel func()
}

func startWatch(t *testing.T, addr string, check HostKeyCheck, opts WatchOptions) *watcher {
	t.Helper()
	w := &watcher{facts: make(chan Facts, 100), errs: make(chan error, 1000)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Watch(ctx, addr, check, opts, func(f Facts) error { w.facts <- f; return nil }, func(err error) {
			select {
			case w.errs <- err:
			default: // a test that does not read errors must not block Watch
			}
		})
	}()
	w.cancel = func() {
		cancel()
		select {
		case <-done:
		case <-time.After(wait):
			t.Error("Watch did not return after its context ended")
		}
	}
	t.Cleanup(w.cancel)
	return w
}

// fastWatch reconnects quickly, for tests.
var fastWatch = WatchOptions{Backoff: backoff.Policy{Base: 10 * time.Millisecond, Cap: 50 * time.Millisecond}}

// fakePeer is an SSH server on addr that runs handle for every exec
// request, for peers that misbehave.
func fakePeer(t *testing.T, addr string, handle func(cmd string, ch ssh.Channel)) (string, ssh.Signer) {
	t.Helper()
	key := newSigner(t)
	config := &ssh.ServerConfig{NoClientAuth: true}
	config.AddHostKey(key)
	ln := listen(t, addr)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, chans, reqs, err := ssh.NewServerConn(c, config)
				if err != nil {
					return
				}
				go ssh.DiscardRequests(reqs)
				for nc := range chans {
					ch, reqs, err := nc.Accept()
					if err != nil {
						continue
					}
					wg.Add(1)
					go func() {
						defer wg.Done()
						defer ch.Close()
						for req := range reqs {
							cmd, ok := execCommand(req)
							req.Reply(ok, nil)
							if ok {
								go ssh.DiscardRequests(reqs)
								handle(cmd, ch)
								return
							}
						}
					}()
				}
			}()
		}
	}()
	return ln.Addr().String(), key
}

// dialRaw opens a TCP connection to addr, closed when the test ends.
func dialRaw(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, wait)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// waitClosed waits until ch is closed, failing the test after wait.
func waitClosed(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(wait):
		t.Fatalf("waiting for %s: not done within %v", what, wait)
	}
}

// encodeUnchecked encodes f without validating it, as a broken peer would.
func encodeUnchecked(t *testing.T, f Facts) string {
	t.Helper()
	b, err := json.Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	return string(b) + "\n"
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// privateKeyPEM returns a fresh OpenSSH private key in PEM form.
func privateKeyPEM(t *testing.T) string {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(block))
}
