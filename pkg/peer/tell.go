package peer

import (
	"context"
	"fmt"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// Own holds the host's own facts as it tells them to the peers it
// connects to (see WatchOptions.Tell): whom it lets in is left out, as it
// is for an anonymous client of the peer port. The zero value is ready.
type Own struct {
	mu   sync.Mutex
	doc  []byte
	subs map[slot]struct{}
}

// Set makes f the document told from now on; a document Validate refuses
// is dropped, and the previous one stays.
func (o *Own) Set(f Facts) error {
	doc, err := encodeFacts(seenBy(f, ""))
	if err != nil {
		return err
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if string(doc) == string(o.doc) {
		return nil
	}
	o.doc = doc
	for s := range o.subs {
		s.set(doc)
	}
	return nil
}

// Subscribe returns a channel that holds the current document, if any,
// and then each new one (only the newest when several came since it was
// read), and the function that ends the subscription.
func (o *Own) Subscribe() (<-chan []byte, func()) {
	s := make(slot, 1)
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.subs == nil {
		o.subs = map[slot]struct{}{}
	}
	o.subs[s] = struct{}{}
	if o.doc != nil {
		s.set(o.doc)
	}
	return s, func() {
		o.mu.Lock()
		defer o.mu.Unlock()
		delete(o.subs, s)
	}
}

// tell tells the peer on client this host's own facts until ctx ends or
// the connection does: each new document, and a keepalive every
// opts.Keepalive. A peer that refuses them (it does not trust this host's
// key yet, or takes them another way) is told again after opts.Backoff.
func tell(ctx context.Context, client *ssh.Client, opts WatchOptions) {
	failures := 0
	for {
		began := time.Now()
		err := tellOnce(ctx, client, opts)
		if ctx.Err() != nil || err == nil {
			return
		}
		if time.Since(began) >= opts.ResetAfter {
			failures = 0
		}
		failures++
		if !sleep(ctx, opts.Backoff.Jittered(failures, opts.Rand())) {
			return
		}
	}
}

// tellOnce runs one "tell" session. It returns nil when the connection
// ended (nothing more can be told on it), or why the session ended.
func tellOnce(ctx context.Context, client *ssh.Client, opts WatchOptions) error {
	sess, err := client.NewSession()
	if err != nil {
		return nil // the connection is gone: its watch starts a new one
	}
	defer sess.Close()
	stdin, err := sess.StdinPipe()
	if err != nil {
		return fmt.Errorf("open tell session: %w", err)
	}
	stderr := &stderrTail{}
	sess.Stderr = stderr
	if err := sess.Start(cmdTell); err != nil {
		return fmt.Errorf("run %q: %w", cmdTell, err)
	}
	ended := make(chan error, 1)
	go func() { ended <- sess.Wait() }()
	docs, unsubscribe := opts.Tell()
	defer unsubscribe()
	tick := time.NewTicker(opts.Keepalive)
	defer tick.Stop()
	for {
		var line []byte
		select {
		case <-ctx.Done():
			return nil
		case err := <-ended:
			return fmt.Errorf("the peer ended the tell session: %v%s", err, stderr.suffix())
		case line = <-docs:
		case <-tick.C:
			line = keepaliveLine
		}
		if _, err := stdin.Write(line); err != nil {
			return fmt.Errorf("tell the peer: %w", err)
		}
	}
}
