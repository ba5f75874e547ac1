package peer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync/atomic"
	"time"

	"github.com/nixpeer/nixpeer/pkg/backoff"
	"golang.org/x/crypto/ssh"
)

// Defaults of WatchOptions' reconnect policy.
const (
	DefaultBackoffBase = 200 * time.Millisecond
	DefaultBackoffCap  = 30 * time.Second
	DefaultResetAfter  = 30 * time.Second
)

// WatchOptions tune Watch. Zero fields take the defaults.
type WatchOptions struct {
	// Keepalive is the peer's keepalive interval (DefaultKeepalive): a
	// connection that sends no line for 3×Keepalive is dropped.
	Keepalive time.Duration
	// DialTimeout bounds the TCP connect, and then the SSH handshake
	// (DefaultDialTimeout).
	DialTimeout time.Duration
	// Backoff is the reconnect policy, jittered (DefaultBackoffBase,
	// DefaultBackoffCap).
	Backoff backoff.Policy
	// ResetAfter: a connection that lived this long ends the run of
	// failures, as does one that delivered a document
	// (DefaultResetAfter).
	ResetAfter time.Duration
	// Rand returns a number in [0, 1) for the jitter; default
	// math/rand/v2.Float64.
	Rand func() float64
	// LocalIP, when set, is the address the watch dials from: the host's
	// own, so that the peer sees who connects.
	LocalIP net.IP
	// Identity, when set, gives the key the watch authenticates with:
	// the host's own host key, by which a peer that knows it reserves it
	// room. Without one (or while it gives nil) the watch is anonymous.
	Identity func() ssh.Signer
	// Wake, when it receives, ends a wait between attempts and starts the
	// next one at once, the run of failures forgotten: the peer showed
	// that it is back (it connected to this host).
	Wake <-chan struct{}
	// Light is how often, while the peer cannot be connected to at all
	// (its host dark, or nothing listening), a bare TCP connect tries it
	// (DefaultLight; negative: never, and the watch backs off instead):
	// the first one that connects starts the next attempt, so a peer that
	// comes back is watched again within about Light.
	Light time.Duration
	// Certificates asks the peer for its host certificate (trust: ca).
	Certificates bool
	// Conn, when set, is given the connection of each watch once its
	// session runs, and nil when it ends: turns (see Turn) are asked for
	// on it.
	Conn func(*ssh.Client)
	// Tell, when set, subscribes to this host's own facts (Own.Subscribe):
	// the watch tells them to the peer over its connection, so that a
	// peer this host fetches from needs no watch of this host.
	Tell func() (<-chan []byte, func())
}

func (o WatchOptions) withDefaults() WatchOptions {
	orDefault(&o.Keepalive, DefaultKeepalive)
	orDefault(&o.DialTimeout, DefaultDialTimeout)
	if o.Light == 0 {
		o.Light = DefaultLight
	}
	orDefault(&o.Backoff.Base, DefaultBackoffBase)
	orDefault(&o.Backoff.Cap, DefaultBackoffCap)
	orDefault(&o.ResetAfter, DefaultResetAfter)
	if o.Rand == nil {
		o.Rand = rand.Float64
	}
	return o
}

// ErrNoAnswer is wrapped by the error of a watch whose peer stopped
// answering: a connection that went silent past its keepalive deadline,
// or a connect or handshake that timed out. A peer that refuses or closes
// the connection answers; one that drops packets does not.
var ErrNoAnswer = errors.New("no answer")

// NoAnswer reports whether err means the peer did not answer at all (see
// ErrNoAnswer), as opposed to refusing or failing in another way.
func NoAnswer(err error) bool {
	var ne net.Error
	return errors.Is(err, ErrNoAnswer) || errors.Is(err, context.DeadlineExceeded) ||
		errors.As(err, &ne) && ne.Timeout()
}

// Watch keeps a watch open to the peer at addr until ctx ends, and only
// then returns. It calls onFacts with every valid document, and onError
// with every failure (connection refused, host key refused, a garbled,
// oversized or invalid document, silence, the peer closing), each naming
// the peer. After a failure it reconnects with Backoff. A document that
// is not valid is never passed on: the connection is dropped instead, as
// it is when onFacts refuses a document by returning an error.
// Both callbacks run on Watch's goroutine, one at a time, and never after
// Watch returned.
func Watch(ctx context.Context, addr string, check HostKeyCheck, opts WatchOptions, onFacts func(Facts) error, onError func(error)) {
	opts = opts.withDefaults()
	failures := 0
	for {
		began := time.Now()
		delivered, err := watchOnce(ctx, addr, check, opts, onFacts)
		if ctx.Err() != nil {
			return
		}
		onError(fmt.Errorf("peer %s: watch facts: %w", addr, err))
		if delivered || time.Since(began) >= opts.ResetAfter {
			failures = 0
		}
		failures++
		t := time.NewTimer(opts.Backoff.Jittered(failures, opts.Rand()))
		lctx, stopLight := context.WithCancel(ctx)
		var lit <-chan struct{}
		backoff := t.C
		if (errors.Is(err, errConnect) || errors.Is(err, ErrNoAnswer)) && opts.Light > 0 {
			// Nothing answers: the next attempt is when its port accepts
			// a connection, not a backed-off dial that would hang the dial
			// timeout on a dark host while it comes back.
			lit, backoff = light(lctx, addr, opts), nil
		}
		select {
		case <-ctx.Done():
		case <-backoff:
		case <-lit:
			// Its port accepts again: watched at once, the run of
			// failures kept (it may still fail further on).
		case <-opts.Wake:
			failures = 0
		}
		t.Stop()
		stopLight()
		if ctx.Err() != nil {
			return
		}
	}
}

// DefaultLight is WatchOptions.Light's default.
const DefaultLight = 500 * time.Millisecond

// light starts a TCP connect to addr every opts.Light, each bounded by
// opts.Light, until one connects (the returned channel is closed) or ctx
// ends. It sends nothing: the connection is closed at once.
func light(ctx context.Context, addr string, opts WatchOptions) <-chan struct{} {
	lit := make(chan struct{})
	go func() {
		d := net.Dialer{Timeout: opts.Light}
		if opts.LocalIP != nil {
			d.LocalAddr = &net.TCPAddr{IP: opts.LocalIP}
		}
		next := time.Now().Add(opts.Light)
		for {
			if !sleep(ctx, max(time.Until(next), 0)) {
				return
			}
			next = time.Now().Add(opts.Light)
			if c, err := d.DialContext(ctx, "tcp", addr); err == nil {
				c.Close()
				close(lit)
				return
			}
		}
	}()
	return lit
}

// sleep waits for d or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// watchOnce runs one connection's watch. It always ends with an error,
// unless ctx ended; delivered tells whether onFacts took a document.
func watchOnce(ctx context.Context, addr string, check HostKeyCheck, opts WatchOptions, onFacts func(Facts) error) (delivered bool, err error) {
	var identity ssh.Signer
	if opts.Identity != nil {
		identity = opts.Identity()
	}
	client, err := dial(ctx, addr, opts.LocalIP, identity, check, opts.DialTimeout, opts.Certificates)
	if err != nil {
		return false, err
	}
	defer client.Close()
	stop := context.AfterFunc(ctx, func() { client.Close() })
	defer stop()

	silence := 3 * opts.Keepalive
	var silent atomic.Bool
	timer := time.AfterFunc(silence, func() {
		silent.Store(true)
		client.Close()
	})
	defer timer.Stop()

	_, lines, stderr, err := start(client, cmdWatch)
	if err != nil {
		return false, err
	}
	if opts.Conn != nil {
		opts.Conn(client)
		defer opts.Conn(nil)
	}
	if opts.Tell != nil {
		tctx, stopTelling := context.WithCancel(ctx)
		told := make(chan struct{})
		go func() {
			defer close(told)
			tell(tctx, client, opts)
		}()
		defer func() {
			stopTelling()
			client.Close()
			<-told
		}()
	}
	for {
		line, err := lines.next()
		switch {
		case ctx.Err() != nil:
			return delivered, ctx.Err()
		case silent.Load():
			return delivered, fmt.Errorf("%w: no document or keepalive for %v; dropped the connection", ErrNoAnswer, silence)
		case errors.Is(err, io.EOF):
			return delivered, fmt.Errorf("connection closed by the peer%s", stderr.suffix())
		case err != nil:
			return delivered, err
		}
		timer.Reset(silence)
		if isKeepalive(line) {
			continue
		}
		f, err := DecodeFacts(line)
		if err != nil {
			return delivered, err
		}
		if err := onFacts(f); err != nil {
			return delivered, err
		}
		delivered = true
	}
}
