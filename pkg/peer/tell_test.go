package peer

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// toldDoc is one document a server's Told got, with the key of its
// session and the session's number.
type toldDoc struct {
	f       Facts
	key     ssh.PublicKey
	session int32
}

// TestTellOverTheWatch: a watch with Tell tells the peer its host's
// facts, authenticated by its identity; a session the peer refuses is
// tried again after the backoff; a new document reaches the peer on the
// same session, which keepalives hold open.
func TestTellOverTheWatch(t *testing.T) {
	key, id := newSigner(t), newSigner(t)
	var sessions atomic.Int32
	var refuse atomic.Bool
	refuse.Store(true)
	docs := make(chan toldDoc, 100)
	refusals := make(chan struct{}, 100)
	told := func(_ context.Context, k ssh.PublicKey, next func() (Facts, error)) error {
		n := sessions.Add(1)
		if refuse.Load() {
			refusals <- struct{}{}
			return errors.New("not trusted here yet")
		}
		for {
			f, err := next()
			if err != nil {
				return nil
			}
			docs <- toldDoc{f, k, n}
		}
	}
	s := startServer(t, "127.0.0.2:0", key, ServerOptions{Told: told, Keepalive: 20 * time.Millisecond})
	s.publish(validFacts(t, key.PublicKey()))

	var own Own
	mine := validFacts(t, id.PublicKey())
	mine.Name = "prod"
	if err := own.Set(mine); err != nil {
		t.Fatal(err)
	}
	opts := fastWatch
	opts.Keepalive = 20 * time.Millisecond
	opts.Identity = func() ssh.Signer { return id }
	opts.Tell = own.Subscribe
	w := startWatch(t, s.addr, pin(key.PublicKey()), opts)
	recv(t, w.facts, "the peer's document")

	// Refused, then asked again.
	recv(t, refusals, "the first tell")
	recv(t, refusals, "the tell asked again")
	refuse.Store(false)
	got := recv(t, docs, "the told document")
	if got.f.Name != "prod" || !bytes.Equal(got.key.Marshal(), id.PublicKey().Marshal()) {
		t.Fatalf("told %s with key %s", got.f.Name, ssh.FingerprintSHA256(got.key))
	}
	if got.f.Serve == nil || len(got.f.Serve.Authorized) != 0 {
		t.Errorf("told whom it lets in: %+v", got.f.Serve)
	}

	// Keepalives hold the session: many intervals later (the peer's own
	// keepalives, read on a watch of it, count them), a new document comes
	// on the same session.
	c, err := dial(context.Background(), s.addr, nil, nil, pin(key.PublicKey()), wait, false)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, lines, _, err := start(c, cmdWatch)
	if err != nil {
		t.Fatal(err)
	}
	for range 10 {
		if _, err := lines.next(); err != nil {
			t.Fatal(err)
		}
	}
	mine.Generation++
	if err := own.Set(mine); err != nil {
		t.Fatal(err)
	}
	again := recv(t, docs, "the new document")
	if again.f.Generation != mine.Generation || again.session != got.session {
		t.Fatalf("new document: generation %d on session %d, want %d on session %d", again.f.Generation, again.session, mine.Generation, got.session)
	}
}

// TestTellRefusals: a server without Told, or a client without a key,
// gets no "tell"; a refusal exits 1 with its reason on stderr; an invalid
// document ends next with an error; a client that tells nothing for
// 3×Keepalive is dropped.
func TestTellRefusals(t *testing.T) {
	key := newSigner(t)
	plain := startServer(t, "127.0.0.2:0", key, ServerOptions{})
	c, err := dial(context.Background(), plain.addr, nil, newSigner(t), pin(key.PublicKey()), wait, false)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if sess, err := c.NewSession(); err != nil {
		t.Fatal(err)
	} else if err := sess.Start(cmdTell); err == nil {
		t.Error("a server without Told took a tell")
	}

	nexts := make(chan error, 10)
	told := func(_ context.Context, _ ssh.PublicKey, next func() (Facts, error)) error {
		f, err := next()
		if err != nil {
			nexts <- err
			return nil
		}
		if f.Name == "refused" {
			return errors.New("refused for a reason")
		}
		_, err = next()
		nexts <- err
		return nil
	}
	s := startServer(t, "127.0.0.2:0", key, ServerOptions{Told: told, Keepalive: 20 * time.Millisecond})
	if anon, err := sshClient(t, s.addr, key.PublicKey()); err != nil {
		t.Fatal(err)
	} else if sess, err := anon.NewSession(); err != nil {
		t.Fatal(err)
	} else if err := sess.Start(cmdTell); err == nil {
		t.Error("a client without a key took a tell")
	}

	tellRaw := func(doc string) (*ssh.Client, *ssh.Session, *bytes.Buffer) {
		t.Helper()
		c, err := dial(context.Background(), s.addr, nil, newSigner(t), pin(key.PublicKey()), wait, false)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		sess, err := c.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		stderr := &bytes.Buffer{}
		sess.Stderr = stderr
		stdin, err := sess.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := sess.Start(cmdTell); err != nil {
			t.Fatal(err)
		}
		if _, err := stdin.Write([]byte(doc)); err != nil {
			t.Fatal(err)
		}
		return c, sess, stderr
	}
	refused := validFacts(t, newSigner(t).PublicKey())
	refused.Name = "refused"
	_, sess, stderr := tellRaw(encodeUnchecked(t, refused))
	var exit *ssh.ExitError
	if err := sess.Wait(); !errors.As(err, &exit) || exit.ExitStatus() != 1 || !strings.Contains(stderr.String(), "refused for a reason") {
		t.Errorf("a refused tell: %v, stderr %q", err, stderr)
	}

	ok := encodeUnchecked(t, validFacts(t, newSigner(t).PublicKey()))
	tellRaw(ok + "{\"version\":1,\"name\":\"x\"}\n")
	if err := recv(t, nexts, "the invalid document's error"); !errors.Is(err, ErrInvalidFacts) {
		t.Errorf("an invalid document: %v", err)
	}

	// Silent after one document: dropped within 3×Keepalive, not waiting
	// for the connection to idle out.
	silent, _, _ := tellRaw(ok)
	ended := make(chan error, 1)
	go func() { ended <- silent.Wait() }()
	recv(t, ended, "the silent client's connection closed")
	if err := recv(t, nexts, "the silent session's end"); err == nil || errors.Is(err, ErrInvalidFacts) {
		t.Errorf("a silent session: %v", err)
	}
}
